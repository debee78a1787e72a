//! What the refresher decides for one ScaledJob, from the objects it read: pure, so that every
//! case (TriggerAuthentication missing, Certificate not issued yet, renewed, rollout not
//! gradual) is a unit test.
//!
//! The stamp names every input KEDA reads when it builds the trigger's connection: each
//! TriggerAuthentication the triggers name (uid and generation: recreated or edited) and, for
//! each Secret it reads, the revision of the cert-manager Certificate issuing it. KEDA reads
//! them only when the ScaledJob's generation changes (README: "mTLS and install order"), so
//! a new stamp written into the ScaledJob's spec is what makes KEDA read them again.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// The pod-template annotation holding the stamp: a spec field, so writing it bumps the
/// ScaledJob's generation, and one nothing else reads.
pub const STAMP_ANNOTATION: &str = "ado-scaler.io/trigger-auth-revision";

/// What to do with one ScaledJob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No trigger names a TriggerAuthentication: KEDA holds nothing that can go stale.
    NoAuthentication,
    /// An input is not there yet; KEDA would read an empty value.
    Waiting(String),
    /// KEDA last read the inputs as they are now.
    Unchanged,
    /// Write this stamp.
    Refresh { stamp: String },
    /// The stamp changed, but writing it would make KEDA delete the running Jobs.
    NotGradual { stamp: String },
}

/// The TriggerAuthentications (same namespace) the ScaledJob's triggers name, sorted.
/// ClusterTriggerAuthentications are not followed: reading them needs cluster-wide rights.
pub fn authentication_refs(scaled_job: &Value) -> BTreeSet<String> {
    scaled_job["spec"]["triggers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let r = &t["authenticationRef"];
            let kind = r["kind"].as_str().unwrap_or("");
            let name = r["name"].as_str()?;
            (kind.is_empty() || kind == "TriggerAuthentication").then(|| name.to_owned())
        })
        .collect()
}

/// Whether a change to the spec leaves running Jobs alone (KEDA's `gradual` rollout; the
/// deprecated `rolloutStrategy` field still counts, as in KEDA).
pub fn is_gradual(scaled_job: &Value) -> bool {
    let spec = &scaled_job["spec"];
    let strategy = match spec["rolloutStrategy"].as_str() {
        Some(s) if !s.is_empty() => s,
        _ => spec["rollout"]["strategy"].as_str().unwrap_or(""),
    };
    strategy == "gradual"
}

/// The stamp now in the ScaledJob, if any.
pub fn current_stamp(scaled_job: &Value) -> Option<&str> {
    scaled_job["spec"]["jobTargetRef"]["template"]["metadata"]["annotations"][STAMP_ANNOTATION]
        .as_str()
}

/// The JSON merge patch that writes `stamp`.
pub fn stamp_patch(stamp: &str) -> Value {
    serde_json::json!({
        "spec": {"jobTargetRef": {"template": {"metadata": {"annotations": {
            STAMP_ANNOTATION: stamp
        }}}}}
    })
}

/// Decides from the ScaledJob, the TriggerAuthentications it names (`None`: not found) and
/// the Certificates of its namespace.
pub fn decide(
    scaled_job: &Value,
    auths: &BTreeMap<String, Option<Value>>,
    certificates: &[Value],
) -> Decision {
    let refs = authentication_refs(scaled_job);
    if refs.is_empty() {
        return Decision::NoAuthentication;
    }
    let mut parts = Vec::new();
    for name in &refs {
        let Some(Some(auth)) = auths.get(name) else {
            return Decision::Waiting(format!("TriggerAuthentication {name} does not exist"));
        };
        let meta = &auth["metadata"];
        let uid = meta["uid"].as_str().unwrap_or("");
        let generation = meta["generation"].as_i64().unwrap_or(0);
        parts.push(format!(
            "{name}@{}.{generation}",
            uid.get(..8).unwrap_or(uid)
        ));
        for secret in secret_names(auth) {
            match issued_revision(certificates, &secret) {
                Issued::Revision(revision) => parts.push(format!("{secret}#{revision}")),
                Issued::NotReady(certificate) => {
                    return Decision::Waiting(format!(
                        "Certificate {certificate} (Secret {secret}) is not issued yet"
                    ));
                }
                // Not cert-manager's: nothing says when it changes; KEDA reads it with the rest.
                Issued::Unmanaged => parts.push(secret),
            }
        }
    }
    let stamp = parts.join(" ");
    if current_stamp(scaled_job) == Some(stamp.as_str()) {
        Decision::Unchanged
    } else if is_gradual(scaled_job) {
        Decision::Refresh { stamp }
    } else {
        Decision::NotGradual { stamp }
    }
}

/// The Secrets a TriggerAuthentication reads, sorted, each once.
fn secret_names(auth: &Value) -> BTreeSet<String> {
    auth["spec"]["secretTargetRef"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str().map(str::to_owned))
        .collect()
}

enum Issued {
    Revision(i64),
    NotReady(String),
    Unmanaged,
}

/// The revision of the Certificate writing `secret`, once it is Ready (cert-manager writes
/// the Secret before it sets Ready and the revision).
fn issued_revision(certificates: &[Value], secret: &str) -> Issued {
    let Some(certificate) = certificates
        .iter()
        .find(|c| c["spec"]["secretName"].as_str() == Some(secret))
    else {
        return Issued::Unmanaged;
    };
    let ready = certificate["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    match certificate["status"]["revision"].as_i64() {
        Some(revision) if ready => Issued::Revision(revision),
        _ => Issued::NotReady(
            certificate["metadata"]["name"]
                .as_str()
                .unwrap_or("?")
                .to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn scaled_job(strategy: &str, stamp: Option<&str>, refs: &[(&str, &str)]) -> Value {
        let triggers: Vec<Value> = refs
            .iter()
            .map(|(kind, name)| {
                json!({"type": "external", "metadata": {}, "authenticationRef": {"kind": kind, "name": name}})
            })
            .chain([json!({"type": "external", "metadata": {}})])
            .collect();
        let mut sj = json!({
            "spec": {
                "rollout": {"strategy": strategy},
                "triggers": triggers,
                "jobTargetRef": {"template": {"metadata": {}}},
            }
        });
        if let Some(stamp) = stamp {
            sj["spec"]["jobTargetRef"]["template"]["metadata"]["annotations"] =
                json!({ STAMP_ANNOTATION: stamp });
        }
        sj
    }

    fn auth(uid: &str, generation: i64, secrets: &[&str]) -> Value {
        let refs: Vec<Value> = secrets
            .iter()
            .flat_map(|s| {
                [
                    json!({"parameter": "caCert", "name": s, "key": "ca.crt"}),
                    json!({"parameter": "tlsClientCert", "name": s, "key": "tls.crt"}),
                ]
            })
            .collect();
        json!({"metadata": {"uid": uid, "generation": generation}, "spec": {"secretTargetRef": refs}})
    }

    fn certificate(name: &str, secret: &str, ready: &str, revision: Option<i64>) -> Value {
        let mut c = json!({
            "metadata": {"name": name},
            "spec": {"secretName": secret},
            "status": {"conditions": [
                {"type": "Issuing", "status": "False"},
                {"type": "Ready", "status": ready},
            ]},
        });
        if let Some(r) = revision {
            c["status"]["revision"] = json!(r);
        }
        c
    }

    fn auths(entries: &[(&str, Option<Value>)]) -> BTreeMap<String, Option<Value>> {
        entries
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.clone()))
            .collect()
    }

    const TA: &[(&str, &str)] = &[("", "grpc-client")];

    #[test]
    fn no_authentication_ref_means_nothing_to_refresh() {
        let sj = scaled_job("gradual", None, &[("ClusterTriggerAuthentication", "x")]);
        assert_eq!(decide(&sj, &auths(&[]), &[]), Decision::NoAuthentication);
        assert!(authentication_refs(&json!({})).is_empty());
    }

    #[test]
    fn waits_for_the_trigger_authentication_and_the_certificate() {
        let sj = scaled_job("gradual", None, TA);
        assert_eq!(
            decide(&sj, &auths(&[("grpc-client", None)]), &[]),
            Decision::Waiting("TriggerAuthentication grpc-client does not exist".into())
        );
        assert!(matches!(
            decide(&sj, &auths(&[]), &[]),
            Decision::Waiting(_)
        ));
        let found = auths(&[("grpc-client", Some(auth("0123456789ab", 1, &["client"])))]);
        for not_ready in [
            certificate("client-cert", "client", "False", Some(1)),
            certificate("client-cert", "client", "True", None),
            certificate("client-cert", "client", "Unknown", None),
        ] {
            assert_eq!(
                decide(&sj, &found, &[not_ready]),
                Decision::Waiting(
                    "Certificate client-cert (Secret client) is not issued yet".into()
                )
            );
        }
    }

    #[test]
    fn a_ready_certificate_gives_a_stamp_that_changes_with_each_input() {
        let sj = scaled_job("gradual", None, TA);
        let stamp = |uid: &str, generation: i64, revision: i64| {
            let found = auths(&[("grpc-client", Some(auth(uid, generation, &["client"])))]);
            let other = certificate("other", "other-secret", "False", None);
            let issued = certificate("client-cert", "client", "True", Some(revision));
            match decide(&sj, &found, &[other, issued]) {
                Decision::Refresh { stamp } => stamp,
                d => panic!("{d:?}"),
            }
        };
        assert_eq!(
            stamp("0123456789ab", 1, 1),
            "grpc-client@01234567.1 client#1"
        );
        assert_ne!(stamp("0123456789ab", 1, 2), stamp("0123456789ab", 1, 1));
        assert_ne!(stamp("0123456789ab", 2, 1), stamp("0123456789ab", 1, 1));
        assert_ne!(stamp("fedcba987654", 1, 1), stamp("0123456789ab", 1, 1));
        assert_eq!(stamp("short", 3, 4), "grpc-client@short.3 client#4");
    }

    #[test]
    fn an_unchanged_stamp_is_left_and_a_secret_without_certificate_still_counts() {
        let found = auths(&[("grpc-client", Some(auth("u", 2, &["b", "a"])))]);
        let certs = [certificate("a-cert", "a", "True", Some(5))];
        let sj = scaled_job("gradual", Some("grpc-client@u.2 a#5 b"), TA);
        assert_eq!(decide(&sj, &found, &certs), Decision::Unchanged);
        let old = scaled_job("gradual", Some("grpc-client@u.2 a#4 b"), TA);
        assert_eq!(
            decide(&old, &found, &certs),
            Decision::Refresh {
                stamp: "grpc-client@u.2 a#5 b".into()
            }
        );
    }

    #[test]
    fn every_named_authentication_is_in_the_stamp() {
        let sj = scaled_job(
            "gradual",
            None,
            &[("TriggerAuthentication", "z"), ("", "a"), ("", "z")],
        );
        let found = auths(&[
            ("a", Some(auth("ua", 1, &[]))),
            ("z", Some(auth("uz", 7, &[]))),
        ]);
        assert_eq!(
            decide(&sj, &found, &[]),
            Decision::Refresh {
                stamp: "a@ua.1 z@uz.7".into()
            }
        );
    }

    #[test]
    fn only_a_gradual_rollout_is_refreshed() {
        let found = auths(&[("grpc-client", Some(auth("u", 1, &[])))]);
        let stamp = "grpc-client@u.1".to_owned();
        for strategy in ["", "immediate"] {
            let sj = scaled_job(strategy, None, TA);
            assert!(!is_gradual(&sj));
            assert_eq!(
                decide(&sj, &found, &[]),
                Decision::NotGradual {
                    stamp: stamp.clone()
                }
            );
        }
        let mut deprecated = scaled_job("", None, TA);
        deprecated["spec"]["rolloutStrategy"] = json!("gradual");
        assert!(is_gradual(&deprecated));
        // An empty deprecated field is no setting (KEDA checks its length).
        let mut empty = scaled_job("gradual", None, TA);
        empty["spec"]["rolloutStrategy"] = json!("");
        assert!(is_gradual(&empty));
        // The deprecated field wins over the new one, as in KEDA.
        let mut both = scaled_job("gradual", None, TA);
        both["spec"]["rolloutStrategy"] = json!("immediate");
        assert!(!is_gradual(&both));
    }

    #[test]
    fn the_patch_writes_what_current_stamp_reads() {
        let mut sj = scaled_job("gradual", None, TA);
        assert_eq!(current_stamp(&sj), None);
        let patch = stamp_patch("s#1");
        sj["spec"]["jobTargetRef"]["template"]["metadata"] =
            patch["spec"]["jobTargetRef"]["template"]["metadata"].clone();
        assert_eq!(current_stamp(&sj), Some("s#1"));
    }
}
