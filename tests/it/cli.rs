//! The command line's contracts, checked on clap's own description of it, and what the
//! production binary is made of.

use ado_scaler::cli::Cli;
use clap::CommandFactory;

/// The contract: every flag of every subcommand can also be set through the environment.
#[test]
fn every_flag_has_an_environment_variable() {
    let cli = Cli::command();
    let mut checked = 0;
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
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} flags seen");
    let log_format = cli
        .get_arguments()
        .find(|a| a.get_id() == "log_format")
        .expect("--log-format is a global flag");
    assert_eq!(
        log_format.get_env().and_then(|e| e.to_str()),
        Some("ADO_SCALER_LOG_FORMAT")
    );
}

/// The image runs `serve`, `agent` and `check`; the demo is a crate of its own.
#[test]
fn the_production_binary_has_no_demo() {
    let names: Vec<_> = Cli::command()
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    assert_eq!(names, ["serve", "agent", "check"]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ado-scaler"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("serve") && help.contains("check"), "{help}");
    assert!(!help.contains("demo"), "{help}");
}

/// What cargo links into the production binary: no simulator, no demo, none of the
/// simulators' own dependencies (`rcgen` mints the simulated certificates).
#[test]
fn the_production_crate_links_no_simulator() {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "--locked",
            "--package=ado-scaler",
            "--edges=normal,build",
            "--prefix=none",
            "--format={p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).unwrap();
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        crates.contains(&"ado-scaler") && crates.contains(&"tonic"),
        "{tree}"
    );
    // (rcgen is production code since the registrar makes its own CA without cert-manager.)
    for forbidden in ["ado-sim", "ado-demo", "proptest", "criterion"] {
        assert!(
            !crates.contains(&forbidden),
            "{forbidden} is linked:\n{tree}"
        );
    }
}

/// The README's two commands: the demo's names the demo's package, the tests' runs every
/// member of the workspace.
#[test]
fn the_readme_commands_run_the_demo_and_every_test() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(
        readme.contains("cargo run --release -p ado-demo"),
        "demo command"
    );
    assert!(readme.contains("scripts/test"), "test command");
    let script = std::fs::read_to_string(root.join("scripts/test")).unwrap();
    assert!(script.contains("cargo test --workspace"), "{script}");
    let demo = std::fs::read_to_string(root.join("crates/ado-demo/Cargo.toml")).unwrap();
    assert!(demo.contains("name = \"ado-demo\""), "{demo}");
}
