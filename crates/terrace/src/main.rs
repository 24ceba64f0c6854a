use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = terrace::Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.worker_threads())
        .enable_all()
        .build()
        .expect("the Tokio runtime starts");
    ExitCode::from(runtime.block_on(terrace::run(cli)))
}
