use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

fn main() -> ExitCode {
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
    ExitCode::from(runtime.block_on(terrace::run(cli)))
}
