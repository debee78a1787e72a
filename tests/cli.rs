//! The command line's contracts, checked on clap's own description of it.

use ado_scaler::config::Cli;
use clap::CommandFactory;

/// The contract: every flag of every subcommand can also be set through the environment.
#[test]
fn every_flag_has_an_environment_variable() {
    let cli = Cli::command();
    for sub in cli.get_subcommands() {
        for arg in sub.get_arguments() {
            let id = arg.get_id().as_str();
            if arg.is_positional() || matches!(id, "help" | "version") {
                continue;
            }
            assert!(
                arg.get_env().is_some(),
                "{} --{id} has no environment variable",
                sub.get_name()
            );
        }
    }
    assert!(
        cli.get_arguments()
            .filter(|a| a.get_id() == "log_format")
            .all(|a| a.get_env().is_some())
    );
}

/// The README's `cargo run --release -- demo` needs cargo to know which of the two binaries
/// (`ado-scaler`, `ado-sim-agent`) to run.
#[test]
fn cargo_run_picks_the_scaler() {
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    assert!(
        manifest
            .lines()
            .any(|l| l.trim() == "default-run = \"ado-scaler\""),
        "Cargo.toml has no default-run"
    );
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(readme.contains("cargo run --release -- demo"));
}
