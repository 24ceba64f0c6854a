use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

/// mimalloc: units are planned and applied on the blocking pool's
/// threads, where glibc's per-thread arenas grow a page at a time
/// (an `mprotect` and page faults each); allocation was a third of a
/// no-op apply's time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Before any TLS: the build has two rustls providers (see there).
    terrace_kube::tls_provider();
    let cli = match terrace::Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version are answers, not errors; every other refusal is
        // a usage error, exit 1 (2 means only "the plan has changes").
        Err(e) => match e.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            _ => return ExitCode::from(terrace::report_usage_error(&e)),
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.worker_threads())
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return ExitCode::from(terrace::report_runtime_error(&cli, &e)),
    };
    let code = runtime.block_on(terrace::run(cli));
    // Everything the command needed has finished inside `run`. What may
    // still run is background work nothing waits for (a cluster
    // connection started ahead of a plan that then failed, whose exec
    // credential plugin can hang): it is not waited for.
    runtime.shutdown_background();
    ExitCode::from(code)
}
