//! SIGINT and SIGTERM. The first stops the run cleanly: apply starts no
//! more units, every running child program (Terraform) gets one SIGINT and
//! is waited for, what finished is recorded, locks are released, temporary
//! files are removed, and terrace exits 130 (SIGINT) or 143 (SIGTERM). A
//! second signal forces: children are killed and terrace exits at once
//! (a lock it leaves is taken over by the next run on this host).

use std::sync::atomic::{AtomicI32, Ordering};

use terrace_engine::run::Interrupt;
use tokio::signal::unix::{SignalKind, signal};

use crate::output::errln;

/// The signal that interrupted the run, 0 while none has.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// The exit code an interrupted run ends with (`128 + signal`).
pub fn exit_code() -> Option<u8> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        n => u8::try_from(128 + n).ok(),
    }
}

/// Listens for SIGINT and SIGTERM for the rest of the process. With
/// `graceful` false (commands that hold no lock and run no program) the
/// first signal ends the process at once.
pub fn install(interrupt: Interrupt, graceful: bool) {
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    tokio::spawn(async move {
        loop {
            let n = tokio::select! {
                _ = int.recv() => 2,
                _ = term.recv() => 15,
            };
            let first = RECEIVED
                .compare_exchange(0, n, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok();
            if first && graceful {
                errln!(
                    "interrupted: finishing what is running, then stopping (send it again to force)"
                );
                interrupt.trigger();
                continue;
            }
            interrupt.force();
            std::process::exit(128 + n);
        }
    });
}
