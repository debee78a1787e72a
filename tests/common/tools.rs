//! External tools the deploy and monitoring tests run. They are installed by
//! `scripts/install-test-deps.sh` (called by `scripts/test`); a missing tool fails the test
//! with that instruction, it never skips it.
#![allow(dead_code)]

use std::{path::Path, process::Command};

pub fn require(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} is not installed: run scripts/install-test-deps.sh (scripts/test does)"
    );
}

/// Runs a tool and returns its stdout, failing the test with its stderr.
pub fn run(tool: &str, args: &[&str], dir: &Path) -> String {
    require(tool);
    let out = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `kubectl kustomize deploy/` as JSON documents.
pub fn rendered() -> Vec<serde_json::Value> {
    rendered_in(root())
}

/// `kubectl kustomize deploy/` of a tree laid out as the project's (`deploy/`, `dashboards/`).
pub fn rendered_in(tree: &Path) -> Vec<serde_json::Value> {
    let yaml = run("kubectl", &["kustomize", "deploy/"], tree);
    serde_yaml_ng::Deserializer::from_str(&yaml)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .collect()
}

pub fn find<'a>(docs: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name} not rendered"))
}
