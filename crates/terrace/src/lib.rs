//! The `terrace` command line: argument parsing ([`Cli`]), the commands,
//! and how results are shown (text on a terminal, `--output json` for
//! machines, `--output markdown` for pull-request comments).
//!
//! Exit codes: 0 success (for plan: no changes); 1 an error in the command
//! line, the input, a unit, or writing stdout; 2 the plan has changes and
//! nothing else; 101 a bug in terrace; 130 and 143 interrupted by SIGINT
//! and SIGTERM. With `--output json` every error is also one
//! `{"error": {...}}` document on stdout. A reader that closes stdout
//! early (`terrace state list | head -1`) ends the output quietly.

mod ci;
mod cli;
mod commands;
mod diagnostics;
mod init;
mod output;
mod progress;
pub mod schema;
mod secrets;
mod signals;

pub use cli::Cli;

use crate::cli::OutputFormat;
use crate::diagnostics::CliError;
use crate::output::errln;

/// Runs a parsed command line and returns the exit code.
pub async fn run(cli: Cli) -> u8 {
    diagnostics::init_tracing(cli.verbose);
    let code = match commands::dispatch(&cli).await {
        Ok(code) => code,
        Err(e) => {
            diagnostics::report_error(&e, cli.output);
            1
        }
    };
    // A reader that went away early is no failure, and the code stands;
    // any other failure to write stdout lost output the caller asked for.
    match output::stdout_failure() {
        Some(e) => {
            errln!("error: cannot write to stdout: {e}");
            1
        }
        // An interrupted run says so in its exit code.
        None => crate::signals::exit_code().unwrap_or(code),
    }
}

/// Reports a command line that clap refused (not `--help` or `--version`):
/// clap's message on stderr and, when the arguments ask for `--output
/// json`, the error object on stdout. The exit code is 1.
pub fn report_usage_error(e: &clap::Error) -> u8 {
    let format = OutputFormat::from_raw_args(std::env::args_os().skip(1));
    diagnostics::report_usage_error(e, format);
    1
}

/// Reports that the async runtime did not start. The exit code is 1.
pub fn report_runtime_error(cli: &Cli, e: &std::io::Error) -> u8 {
    let error = CliError::message(format!("cannot start the async runtime: {e}"), None);
    diagnostics::report_error(&error, cli.output);
    1
}
