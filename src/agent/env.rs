//! The agent's environment. Every variable of the agent process becomes an agent capability
//! *and* is visible to every pipeline step, so ours are removed before the agent starts: the
//! entrypoint has read what it needs. `VSO_AGENT_IGNORE` only hides names from capabilities
//! (it keeps a pipeline's demands from matching our configuration), so it is set as well.

/// The pod's identity, as the AKS webhook injects it. Removed unless `--keep-identity-env`.
pub const IDENTITY_VARIABLES: [&str; 4] = [
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
];

/// Our own configuration (`AZP_*`, `ADO_SCALER_*`) and the agent's inputs
/// (`VSTS_AGENT_INPUT_*`, which may hold a token). Always removed.
pub const CONFIG_PREFIXES: [&str; 3] = ["AZP_", "ADO_SCALER_", "VSTS_AGENT_INPUT_"];

const IGNORE: &str = "VSO_AGENT_IGNORE";

/// The environment the agent's processes get, from ours.
pub fn agent_environment(
    ours: impl IntoIterator<Item = (String, String)>,
    keep_identity: bool,
) -> Vec<(String, String)> {
    let mut kept: Vec<(String, String)> = Vec::new();
    let mut ignored: Vec<String> = vec![IGNORE.to_owned()];
    for (name, value) in ours {
        if name == IGNORE {
            ignored.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            );
            continue;
        }
        let is_identity = IDENTITY_VARIABLES.contains(&name.as_str());
        let is_config = CONFIG_PREFIXES.iter().any(|p| name.starts_with(p));
        if is_config || (is_identity && !keep_identity) {
            continue;
        }
        if is_identity || name.starts_with("AZURE_") {
            // Kept for the pipeline, never a capability a job could demand.
            ignored.push(name.clone());
        }
        kept.push((name, value));
    }
    // The token reaches `config.sh` under this name; it must never be a capability either.
    ignored.push("VSTS_AGENT_INPUT_TOKEN".to_owned());
    ignored.sort();
    ignored.dedup();
    kept.push((IGNORE.to_owned(), ignored.join(",")));
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn names(env: &[(String, String)]) -> Vec<&str> {
        env.iter().map(|(k, _)| k.as_str()).collect()
    }

    fn ignore_list(env: &[(String, String)]) -> Vec<&str> {
        env.iter()
            .find(|(k, _)| k == IGNORE)
            .map(|(_, v)| v.split(',').collect())
            .expect("VSO_AGENT_IGNORE is always set")
    }

    fn pod() -> Vec<(String, String)> {
        env(&[
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_TENANT_ID", "t"),
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                "/var/run/secrets/azure/tokens/azure-identity-token",
            ),
            ("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.com/"),
            ("AZURE_EXTENSION_DIR", "/opt/az"),
            ("AZP_URL", "https://dev.azure.com/contoso"),
            ("AZP_DRAIN_TIMEOUT", "10m"),
            ("ADO_SCALER_CA_FILE", "/etc/ca.pem"),
            ("VSTS_AGENT_INPUT_POOL", "linux"),
            ("VSTS_AGENT_INPUT_TOKEN", "secret"),
            ("HOME", "/home/azp"),
            ("PATH", "/usr/bin"),
            ("maven", "3.9"),
            ("VSO_AGENT_IGNORE", "MY_SECRET_SETTING, ,OTHER"),
        ])
    }

    #[test]
    fn configuration_and_identity_are_removed() {
        let out = agent_environment(pod(), false);
        assert_eq!(
            names(&out),
            [
                "AZURE_EXTENSION_DIR",
                "HOME",
                "PATH",
                "maven",
                "VSO_AGENT_IGNORE"
            ]
        );
        assert_eq!(
            ignore_list(&out),
            [
                "AZURE_EXTENSION_DIR",
                "MY_SECRET_SETTING",
                "OTHER",
                "VSO_AGENT_IGNORE",
                "VSTS_AGENT_INPUT_TOKEN"
            ]
        );
        let maven = out.iter().find(|(k, _)| k == "maven").unwrap();
        assert_eq!(maven.1, "3.9", "values pass unchanged");
    }

    #[test]
    fn identity_is_kept_when_asked_but_never_a_capability() {
        let out = agent_environment(pod(), true);
        let kept = names(&out);
        for name in IDENTITY_VARIABLES {
            assert!(kept.contains(&name), "{name} kept");
            assert!(ignore_list(&out).contains(&name), "{name} ignored");
        }
        for name in [
            "AZP_URL",
            "AZP_DRAIN_TIMEOUT",
            "ADO_SCALER_CA_FILE",
            "VSTS_AGENT_INPUT_TOKEN",
        ] {
            assert!(!kept.contains(&name), "{name} removed even so");
        }
    }

    #[test]
    fn an_empty_environment_still_ignores_itself_and_the_token() {
        let out = agent_environment(Vec::new(), false);
        assert_eq!(names(&out), ["VSO_AGENT_IGNORE"]);
        assert_eq!(
            ignore_list(&out),
            ["VSO_AGENT_IGNORE", "VSTS_AGENT_INPUT_TOKEN"]
        );
    }

    #[test]
    fn prefixes_match_only_at_the_start() {
        let out = agent_environment(
            env(&[("MY_AZP_URL", "x"), ("XAZURE_CLIENT_ID", "y")]),
            false,
        );
        assert_eq!(
            names(&out),
            ["MY_AZP_URL", "XAZURE_CLIENT_ID", "VSO_AGENT_IGNORE"]
        );
    }
}
