//! The `terrace` command line: argument parsing ([`Cli`]), the commands,
//! and how results are shown (text on a terminal, `--output json` for
//! machines, `--output markdown` for pull-request comments).
//!
//! Exit codes: 0 success (for plan: no changes), 2 plan with changes, 1 an
//! error in the input or in a unit, 101 a bug in terrace.

mod cli;
mod commands;
mod diagnostics;
mod init;
mod output;
mod progress;
pub mod schema;
mod secrets;

pub use cli::Cli;

/// Runs a parsed command line and returns the exit code.
pub async fn run(cli: Cli) -> u8 {
    diagnostics::init_tracing(cli.verbose);
    match commands::dispatch(&cli).await {
        Ok(code) => code,
        Err(e) => {
            diagnostics::report_error(&e, cli.output);
            1
        }
    }
}
