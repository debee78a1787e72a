#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = ado_scaler::config::Cli::parse();
    // The demo prints its own table; keep the scaler's info logs out of it.
    let default_level = match cli.command {
        ado_scaler::config::Command::Demo(_) => "warn",
        _ => "info",
    };
    ado_scaler::telemetry::init_logging(cli.log_format, default_level);
    match ado_scaler::run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
