//! `--allowed-orgs`: which organisation URLs trigger metadata may name.
//!
//! Without it, anyone who can create a ScaledJob could point the scaler's identity (and
//! its bearer token) at a host of their choosing.

use crate::ado::{OrgUrl, transport_allowed};

/// One pattern: scheme and port must be equal; a `*` host label or path segment matches exactly one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    scheme: String,
    host_labels: Vec<String>,
    port: Option<u16>,
    segments: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgAllowlist {
    patterns: Vec<Pattern>,
}

const WILDCARD: &str = "x-wildcard-x";

pub const DEFAULT_ALLOWED_ORGS: &str = "https://dev.azure.com/*,https://*.visualstudio.com";

impl OrgAllowlist {
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self, String> {
        let mut patterns = Vec::new();
        for raw in items
            .iter()
            .map(AsRef::as_ref)
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            // `*` is not valid in a URL host, so parse with a placeholder and map it back.
            let url = url::Url::parse(&raw.replace('*', WILDCARD))
                .map_err(|e| format!("--allowed-orgs: {raw:?} is not a URL ({e})"))?;
            let scheme = url.scheme().to_owned();
            let host = url.host_str().unwrap_or_default().to_owned();
            if host.is_empty() {
                return Err(format!("--allowed-orgs: {raw:?} has no host"));
            }
            // A wildcard host is never loopback, so plain http needs an explicit one.
            if !transport_allowed(&url) {
                return Err(format!(
                    "--allowed-orgs: {raw:?} must be https (plain http only for an explicit loopback host)"
                ));
            }
            let unwild = |s: &str| {
                if s == WILDCARD {
                    "*".to_owned()
                } else {
                    s.to_owned()
                }
            };
            patterns.push(Pattern {
                scheme,
                host_labels: host.split('.').map(unwild).collect(),
                port: url.port(),
                segments: url
                    .path()
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .map(unwild)
                    .collect(),
            });
        }
        if patterns.is_empty() {
            return Err("--allowed-orgs is empty".into());
        }
        Ok(Self { patterns })
    }

    pub fn default_cloud() -> Self {
        Self::parse(&DEFAULT_ALLOWED_ORGS.split(',').collect::<Vec<_>>())
            .expect("default patterns parse")
    }

    pub fn allows(&self, org: &OrgUrl) -> bool {
        let url = org.url();
        let Some(host) = url.host_str() else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        let labels: Vec<&str> = host.split('.').collect();
        let segments: Vec<&str> = url.path().split('/').filter(|s| !s.is_empty()).collect();
        self.patterns.iter().any(|p| {
            p.scheme == url.scheme()
                && p.port == url.port()
                && p.host_labels.len() == labels.len()
                && p.host_labels
                    .iter()
                    .zip(&labels)
                    .all(|(p, l)| p == "*" || p == l)
                && p.segments.len() == segments.len()
                && p.segments
                    .iter()
                    .zip(&segments)
                    .all(|(p, s)| p == "*" || p.eq_ignore_ascii_case(s))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(list: &OrgAllowlist, org: &str) -> bool {
        list.allows(&OrgUrl::parse(org).unwrap())
    }

    #[test]
    fn default_allows_ado_cloud_only() {
        let list = OrgAllowlist::default_cloud();
        assert!(allows(&list, "https://dev.azure.com/contoso"));
        assert!(allows(&list, "https://dev.azure.com/contoso/"));
        assert!(allows(&list, "https://contoso.visualstudio.com"));
        assert!(!allows(&list, "https://dev.azure.com/contoso/project"));
        assert!(!allows(&list, "https://dev.azure.com"));
        assert!(!allows(&list, "https://evil.example/contoso"));
        assert!(!allows(&list, "https://a.b.visualstudio.com"));
        // Plain http to a remote host is no organisation URL at all.
        assert!(OrgUrl::parse("http://dev.azure.com/contoso").is_err());
        assert!(!allows(&list, "https://dev.azure.com:8443/contoso"));
    }

    #[test]
    fn explicit_entries_and_loopback_http() {
        let list =
            OrgAllowlist::parse(&["https://dev.azure.com/contoso", "http://127.0.0.1:8080/sim"])
                .unwrap();
        assert!(allows(&list, "https://dev.azure.com/Contoso"));
        assert!(!allows(&list, "https://dev.azure.com/fabrikam"));
        assert!(allows(&list, "http://127.0.0.1:8080/sim"));
        assert!(!allows(&list, "http://127.0.0.1:8081/sim"));
        assert!(!allows(&list, "https://127.0.0.1:8080/sim"));
    }

    #[test]
    fn rejects_unsafe_patterns() {
        for bad in [
            vec!["http://dev.azure.com/*"],
            vec!["http://*.0.0.1:80/x"],
            vec!["http://10.0.0.1/x"],
            vec!["dev.azure.com/*"],
            vec!["ftp://x"],
            vec![""],
        ] {
            assert!(OrgAllowlist::parse(&bad).is_err(), "{bad:?}");
        }
    }
}
