//! The tests' kit outside the simulators: the external tools the deploy and monitoring tests
//! run, and deploy/ as `kubectl kustomize` renders it. The tools are installed by
//! `scripts/install-test-deps.sh` (called by `scripts/test`); a missing tool fails the test
//! with that instruction, it never skips it.

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

/// The workspace root: deploy/, dashboards/ and the production crate.
pub fn root() -> &'static Path {
    static ROOT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .canonicalize()
            .expect("the workspace root")
    })
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

/// One rule of a namespaced Role, per API group and resource.
#[derive(Debug, Clone)]
pub struct RoleRule {
    pub namespace: String,
    pub api_group: String,
    pub resource: String,
    pub verbs: Vec<String>,
    pub resource_names: Vec<String>,
}

/// The rules of the Roles bound to `service_account` (by RoleBindings), as rendered.
pub fn role_rules(docs: &[serde_json::Value], service_account: &str) -> Vec<RoleRule> {
    let mut rules = Vec::new();
    let bindings = docs.iter().filter(|d| {
        d["kind"] == "RoleBinding"
            && d["subjects"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["name"] == service_account))
    });
    for binding in bindings {
        let namespace = binding["metadata"]["namespace"].as_str().unwrap();
        let role = find(docs, "Role", binding["roleRef"]["name"].as_str().unwrap());
        assert_eq!(
            role["metadata"]["namespace"], namespace,
            "a RoleBinding grants its own namespace"
        );
        for rule in role["rules"].as_array().unwrap() {
            let strings = |k: &str| -> Vec<String> {
                rule[k]
                    .as_array()
                    .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
                    .unwrap_or_default()
            };
            for api_group in strings("apiGroups") {
                for resource in strings("resources") {
                    rules.push(RoleRule {
                        namespace: namespace.to_owned(),
                        api_group: api_group.clone(),
                        resource,
                        verbs: strings("verbs"),
                        resource_names: strings("resourceNames"),
                    });
                }
            }
        }
    }
    rules
}

/// A copy of deploy/ and dashboards/ in a temporary folder, with each `(from, to)` replaced in
/// deploy/kustomization.yaml (each `from` must be there exactly once).
pub fn edited_copy(name: &str, edits: &[(&str, &str)]) -> std::path::PathBuf {
    let tree =
        std::env::temp_dir().join(format!("ado-scaler-deploy-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tree);
    for dir in ["deploy", "dashboards"] {
        copy_dir(&root().join(dir), &tree.join(dir));
    }
    let kustomization = tree.join("deploy/kustomization.yaml");
    let mut text = std::fs::read_to_string(&kustomization).unwrap();
    for (from, to) in edits {
        assert_eq!(text.matches(from).count(), 1, "{from}");
        text = text.replace(from, to);
    }
    std::fs::write(&kustomization, text).unwrap();
    tree
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// deploy/ rendered with the mtls component switched on, in a copy of the tree.
pub fn rendered_with_mtls() -> Vec<serde_json::Value> {
    rendered_with_component("mtls")
}

/// `deploy/` rendered with one of its components enabled.
pub fn rendered_with_component(component: &str) -> Vec<serde_json::Value> {
    let tree = edited_copy(
        &format!("{component}-rendered"),
        &[(
            "# components:\n#   - mtls\n",
            &format!("components:\n  - {component}\n"),
        )],
    );
    let docs = rendered_in(&tree);
    let _ = std::fs::remove_dir_all(&tree);
    docs
}

/// The rules of the Roles bound to `service_account`, as the simulated API server's RBAC.
pub fn grants(docs: &[serde_json::Value], service_account: &str) -> Vec<crate::kube::Grant> {
    role_rules(docs, service_account)
        .into_iter()
        .map(|r| crate::kube::Grant {
            namespace: r.namespace,
            api_group: r.api_group,
            resource: r.resource,
            verbs: r.verbs,
            resource_names: r.resource_names,
        })
        .collect()
}
