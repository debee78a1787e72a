#![forbid(unsafe_code)]

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = ado_scaler::config::Cli::parse();
    // The demo prints its own table; keep the scaler's info logs out of it.
    let default_level = match cli.command {
        ado_scaler::config::Command::Demo(_) => "warn",
        _ => "info",
    };
    ado_scaler::telemetry::init_logging(cli.log_format, default_level);
    ado_scaler::run(cli).await?;
    Ok(())
}
