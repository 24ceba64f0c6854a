//! Every external program terrace runs (Terraform today; helm, docker
//! compose, ansible and restic next) goes through one builder, so each gets
//! the same treatment without its driver having to remember it:
//!
//! - the binary is found once per process ([`Program::find`]) and a missing
//!   one is reported with what to do about it;
//! - the environment is cleared and only an allow-list is inherited
//!   ([`Exec::environment`]): a variable in the user's shell must not change
//!   what a program acts on, and secrets keys (`SOPS_*`, `TERRACE_*`) never
//!   reach a provider or plugin;
//! - stdin is closed, so a program that would prompt fails instead of
//!   hanging;
//! - output is streamed line by line as it arrives, with every known secret
//!   value redacted, and stderr's tail ends up in the error;
//! - a timeout interrupts the program the way a user would (one SIGINT to
//!   its process group), then kills it after a grace period;
//! - every running program is known to [`children`], so terrace's own
//!   interrupt reaches it, and none starts after it.

pub mod children;
mod error;
mod exec;
mod program;

pub use error::{ExecError, Exit};
pub use exec::{
    DEFAULT_GRACE, Exec, Finished, INHERITED, NEVER_INHERITED, OnLine, STDERR_KEPT, STDOUT_MAX,
    STREAMED_LINE_MAX, Stream,
};
pub use program::Program;
