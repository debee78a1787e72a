#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = ado_demo::cli::DemoArgs::parse();
    ado_scaler::telemetry::init_logging(args.log_format, "warn");
    match ado_demo::run(args).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
