//! No Docker engine runs where these tests run, so the images are not built here. This
//! checks the Dockerfile against the code instead: stage names, entrypoint subcommands that
//! exist, the agent path the entrypoint expects, non-root users, no Azure CLI.

use ado_scaler::cli::Cli;
use clap::CommandFactory;

struct Stage {
    name: String,
    lines: Vec<String>,
}

fn stages() -> Vec<Stage> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap();
    // Join continuation lines, drop comments.
    let joined = text.replace("\\\n", " ");
    let mut stages: Vec<Stage> = Vec::new();
    for line in joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if let Some(rest) = line.strip_prefix("FROM ") {
            let name = rest.split_whitespace().collect::<Vec<_>>();
            let name = match name.as_slice() {
                [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => name.to_string(),
                _ => String::new(),
            };
            stages.push(Stage {
                name,
                lines: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.lines.push(line.to_owned());
        }
    }
    stages
}

fn stage<'a>(stages: &'a [Stage], name: &str) -> &'a Stage {
    stages
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("stage {name} missing"))
}

fn instruction<'a>(stage: &'a Stage, keyword: &str) -> Vec<&'a str> {
    stage
        .lines
        .iter()
        .filter_map(|l| l.strip_prefix(keyword).and_then(|r| r.strip_prefix(' ')))
        .collect()
}

fn entrypoint(stage: &Stage) -> Vec<String> {
    let raw = instruction(stage, "ENTRYPOINT");
    assert_eq!(raw.len(), 1, "one ENTRYPOINT in {}", stage.name);
    serde_json::from_str(raw[0]).expect("exec-form ENTRYPOINT")
}

fn default_of(subcommand: &str, arg: &str) -> String {
    let cli = Cli::command();
    let sub = cli.find_subcommand(subcommand).unwrap();
    let arg = sub.get_arguments().find(|a| a.get_id() == arg).unwrap();
    arg.get_default_values()[0].to_string_lossy().into_owned()
}

#[test]
fn stages_and_entrypoints_match_the_cli() {
    let stages = stages();
    for name in ["builder", "scaler", "agent"] {
        stage(&stages, name);
    }
    let cli = Cli::command();
    for (name, expected) in [
        ("scaler", ["ado-scaler", "serve"]),
        ("agent", ["ado-scaler", "agent"]),
    ] {
        let ep = entrypoint(stage(&stages, name));
        assert_eq!(ep, expected, "{name} ENTRYPOINT");
        assert!(
            cli.find_subcommand(&ep[1]).is_some(),
            "subcommand {} exists",
            ep[1]
        );
        let users = instruction(stage(&stages, name), "USER");
        let user = users.last().unwrap_or_else(|| panic!("{name} sets USER"));
        let uid = user.split(':').next().unwrap();
        assert!(
            uid != "root" && uid != "0",
            "{name} runs as non-root, not {user}"
        );
        let copy = instruction(stage(&stages, name), "COPY");
        assert!(
            copy.iter()
                .any(|c| c.contains("--from=builder") && c.ends_with("/usr/local/bin/ado-scaler"))
        );
    }
}

/// The builder compiles the production package alone: the workspace's simulators and demo
/// are never built into (or for) the image.
#[test]
fn the_builder_builds_only_the_production_package() {
    let stages = stages();
    let builder = stage(&stages, "builder");
    let build = builder
        .lines
        .iter()
        .find(|l| l.contains("cargo build"))
        .expect("the builder runs cargo build");
    for flag in [
        "--profile dist",
        "--locked",
        "--package ado-scaler",
        "--bin ado-scaler",
    ] {
        assert!(build.contains(flag), "{flag} missing in {build}");
    }
    assert!(
        !build.contains("--workspace") && !build.contains("ado-sim"),
        "{build}"
    );
}

#[test]
fn scaler_exposes_the_default_ports() {
    let stages = stages();
    let exposed = instruction(stage(&stages, "scaler"), "EXPOSE").join(" ");
    for flag in ["grpc_addr", "http_addr"] {
        let port = default_of("serve", flag)
            .rsplit(':')
            .next()
            .unwrap()
            .to_owned();
        assert!(
            exposed.split_whitespace().any(|p| p == port),
            "port {port} of --{flag} exposed"
        );
    }
}

#[test]
fn agent_image_bakes_the_agent_where_the_entrypoint_looks() {
    let stages = stages();
    let agent = stage(&stages, "agent");
    let dir = default_of("agent", "agent_dir");
    let all = agent.lines.join("\n");
    assert!(
        instruction(agent, "ARG")
            .iter()
            .any(|a| a.starts_with("AGENT_VERSION")),
        "ARG AGENT_VERSION"
    );
    assert!(
        all.contains(&format!("tar -xz -C {dir}")),
        "agent unpacked into {dir}"
    );
    assert!(
        all.contains(&format!("{dir}/bin/installdependencies.sh")),
        "agent dependencies installed"
    );
    assert!(
        all.contains("${AGENT_VERSION}"),
        "the download uses AGENT_VERSION"
    );
    assert!(
        all.contains("iputils-ping"),
        "the agent's self-update script calls ping"
    );
    // Built for both architectures; `--download` picks the same way at run time.
    for arch in ["amd64) arch=x64", "arm64) arch=arm64"] {
        assert!(all.contains(arch), "{arch}");
    }
    let lower = all.to_lowercase();
    for cli in ["azure-cli", "installazurecli", "pip install azure"] {
        assert!(
            !lower.contains(cli),
            "no Azure CLI in the agent image ({cli})"
        );
    }
    let from = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap();
    assert!(
        from.contains("FROM ubuntu:24.04 AS agent"),
        "Ubuntu LTS base"
    );
}

#[test]
fn dockerignore_keeps_the_build_context_small() {
    let ignore =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.dockerignore")).unwrap();
    assert!(
        ignore
            .lines()
            .any(|l| l.trim().trim_end_matches('/') == "target")
    );
    assert!(
        ignore
            .lines()
            .any(|l| l.trim().trim_end_matches('/') == ".git")
    );
}
