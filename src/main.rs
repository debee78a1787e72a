#![forbid(unsafe_code)]

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = ado_scaler::config::Cli::parse();
    ado_scaler::telemetry::init_logging(cli.log_format);
    ado_scaler::run(cli).await?;
    Ok(())
}
