//! Who is asking, proven by the Kubernetes API alone: a TokenReview says which pod the
//! projected token is bound to (and fails once that pod is gone, which a local JWKS check
//! would not notice); the pod, its Job and the Job's ScaledJob are then read and linked by
//! controller ownerReferences checked by UID. Labels prove nothing: anyone who can create a
//! pod can set them (REALITY.md, "Kubernetes").

use std::collections::HashMap;

use k8s_openapi::{
    api::{
        authentication::v1::{TokenReview, TokenReviewSpec},
        batch::v1::Job,
        core::v1::Pod,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, PostParams},
};

use super::{Refused, wire::TOKEN_AUDIENCE};

/// The `user.extra` keys a pod-bound token's review carries.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// The pod a token was issued to, as the API server vouches for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
    pub pod_uid: String,
}

/// A pod proven to be one of a ScaledJob's agents, with that ScaledJob's triggers.
#[derive(Debug, Clone)]
pub struct Workload {
    pub scaled_job: String,
    /// `(type, metadata)` of each trigger, as the ScaledJob lists them.
    pub triggers: Vec<(String, HashMap<String, String>)>,
}

/// Asks the API server whether `token` is valid for our audience and which pod holds it.
pub async fn review_token(client: &Client, token: &str) -> Result<PodIdentity, Refused> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: Some(vec![TOKEN_AUDIENCE.to_owned()]),
        },
        ..TokenReview::default()
    };
    let answer = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| kubernetes("review the token", e))?;
    identity(answer)
}

/// What a review's status proves; everything else is refused.
fn identity(answer: TokenReview) -> Result<PodIdentity, Refused> {
    let status = answer.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        let why = status
            .error
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "not authenticated".into());
        return Err(Refused::BadToken(bounded(&why)));
    }
    // An API server that ignored `spec.audiences` would say nothing here: refuse.
    if !status
        .audiences
        .unwrap_or_default()
        .iter()
        .any(|a| a == TOKEN_AUDIENCE)
    {
        return Err(Refused::BadToken(format!(
            "the token is not for audience {TOKEN_AUDIENCE}"
        )));
    }
    let user = status.user.unwrap_or_default();
    let (namespace, service_account) = user
        .username
        .as_deref()
        .and_then(|u| u.strip_prefix(SERVICE_ACCOUNT_PREFIX))
        .and_then(|rest| rest.split_once(':'))
        .map(|(ns, sa)| (ns.to_owned(), sa.to_owned()))
        .ok_or(Refused::NotPodBound)?;
    let extra = user.extra.unwrap_or_default();
    let single = |key: &str| match extra.get(key).map(Vec::as_slice) {
        Some([value]) if !value.is_empty() => Some(value.clone()),
        _ => None,
    };
    let (Some(pod_name), Some(pod_uid)) = (single(POD_NAME_EXTRA), single(POD_UID_EXTRA)) else {
        return Err(Refused::NotPodBound);
    };
    Ok(PodIdentity {
        namespace,
        service_account,
        pod_name,
        pod_uid,
    })
}

/// The pod, its Job and the Job's ScaledJob, each the next one's controller by UID.
pub async fn workload(client: &Client, who: &PodIdentity) -> Result<Workload, Refused> {
    let ns = who.namespace.as_str();
    let pod = Api::<Pod>::namespaced(client.clone(), ns)
        .get_opt(&who.pod_name)
        .await
        .map_err(|e| kubernetes("read the pod", e))?
        .filter(|pod| pod.metadata.uid.as_deref() == Some(who.pod_uid.as_str()))
        .ok_or_else(|| Refused::PodGone(who.pod_name.clone()))?;
    let job_ref = controller(&pod.metadata, "batch/v1", "Job").ok_or_else(|| {
        Refused::OwnerChain(format!(
            "pod {} is not controlled by a Job: only a ScaledJob's agent pods are registered",
            who.pod_name
        ))
    })?;
    let job = Api::<Job>::namespaced(client.clone(), ns)
        .get_opt(&job_ref.name)
        .await
        .map_err(|e| kubernetes("read the pod's Job", e))?;
    let job = same_uid(job.map(|j| j.metadata), job_ref, "Job")?;
    let scaled_job_ref = controller(&job, "keda.sh/v1alpha1", "ScaledJob").ok_or_else(|| {
        Refused::OwnerChain(format!(
            "Job {} is not controlled by a KEDA ScaledJob",
            job_ref.name
        ))
    })?;
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledJob"),
        "scaledjobs",
    );
    let scaled_job = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &resource)
        .get_opt(&scaled_job_ref.name)
        .await
        .map_err(|e| kubernetes("read the ScaledJob", e))?;
    let data = scaled_job.as_ref().map(|s| s.data.clone());
    same_uid(scaled_job.map(|s| s.metadata), scaled_job_ref, "ScaledJob")?;
    Ok(Workload {
        scaled_job: scaled_job_ref.name.clone(),
        triggers: triggers(data.as_ref()),
    })
}

/// The controller reference of the expected kind, if there is one.
fn controller<'a>(
    meta: &'a ObjectMeta,
    api_version: &str,
    kind: &str,
) -> Option<&'a OwnerReference> {
    meta.owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|r| r.controller == Some(true))
        .filter(|r| r.api_version == api_version && r.kind == kind)
}

/// The owner read by name must be the one the reference names by UID: a namesake created
/// after the original was deleted is not.
fn same_uid(
    found: Option<ObjectMeta>,
    reference: &OwnerReference,
    kind: &str,
) -> Result<ObjectMeta, Refused> {
    found
        .filter(|meta| meta.uid.as_deref() == Some(reference.uid.as_str()))
        .ok_or_else(|| {
            Refused::OwnerChain(format!(
                "the {kind} {} that controls the pod's chain no longer exists",
                reference.name
            ))
        })
}

/// `spec.triggers[*]` as `(type, metadata)`; metadata values that are not strings are left
/// out (KEDA passes only strings to an external scaler).
fn triggers(data: Option<&serde_json::Value>) -> Vec<(String, HashMap<String, String>)> {
    let Some(list) = data.and_then(|d| d["spec"]["triggers"].as_array()) else {
        return Vec::new();
    };
    list.iter()
        .map(|t| {
            let kind = t["type"].as_str().unwrap_or_default().to_owned();
            let meta = t["metadata"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default();
            (kind, meta)
        })
        .collect()
}

fn kubernetes(what: &str, e: kube::Error) -> Refused {
    Refused::Kubernetes(crate::k8s::api_error(what, e).to_string())
}

/// The API server's words, cut short: they reach the caller's body.
fn bounded(text: &str) -> String {
    text.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};

    fn review(authenticated: bool, audiences: &[&str], extra: &[(&str, &str)]) -> TokenReview {
        TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(authenticated),
                audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
                user: Some(UserInfo {
                    username: Some("system:serviceaccount:agents:ado-agent".into()),
                    extra: Some(std::collections::BTreeMap::from_iter(
                        extra
                            .iter()
                            .map(|(k, v)| (k.to_string(), vec![v.to_string()])),
                    )),
                    ..UserInfo::default()
                }),
                error: None,
            }),
            ..TokenReview::default()
        }
    }

    const BOUND: [(&str, &str); 2] = [(POD_NAME_EXTRA, "agent-1"), (POD_UID_EXTRA, "uid-1")];

    #[test]
    fn a_pod_bound_token_for_our_audience_names_its_pod() {
        let who = identity(review(true, &[TOKEN_AUDIENCE], &BOUND)).unwrap();
        assert_eq!(
            who,
            PodIdentity {
                namespace: "agents".into(),
                service_account: "ado-agent".into(),
                pod_name: "agent-1".into(),
                pod_uid: "uid-1".into(),
            }
        );
    }

    #[test]
    fn refusals() {
        assert!(matches!(
            identity(review(false, &[TOKEN_AUDIENCE], &BOUND)),
            Err(Refused::BadToken(_))
        ));
        assert!(matches!(
            identity(review(true, &["https://kubernetes.default.svc"], &BOUND)),
            Err(Refused::BadToken(_))
        ));
        assert!(matches!(
            identity(review(true, &[TOKEN_AUDIENCE], &BOUND[..1])),
            Err(Refused::NotPodBound)
        ));
        let mut user = review(true, &[TOKEN_AUDIENCE], &BOUND);
        user.status
            .as_mut()
            .unwrap()
            .user
            .as_mut()
            .unwrap()
            .username = Some("alice".into());
        assert!(matches!(identity(user), Err(Refused::NotPodBound)));
        // An empty pod name or UID is no binding.
        assert!(matches!(
            identity(review(
                true,
                &[TOKEN_AUDIENCE],
                &[(POD_NAME_EXTRA, ""), (POD_UID_EXTRA, "uid-1")]
            )),
            Err(Refused::NotPodBound)
        ));
        // The API server's reason reaches the caller, cut to 200 characters.
        let mut failed = review(false, &[], &[]);
        failed.status.as_mut().unwrap().error = Some("x".repeat(500));
        match identity(failed) {
            Err(Refused::BadToken(why)) => assert_eq!(why, "x".repeat(200)),
            other => panic!("{other:?}"),
        }
    }

    fn owned_by(refs: &[(&str, &str, &str, bool)]) -> ObjectMeta {
        ObjectMeta {
            owner_references: Some(
                refs.iter()
                    .map(|(api_version, kind, uid, controller)| OwnerReference {
                        api_version: (*api_version).into(),
                        kind: (*kind).into(),
                        name: format!("{kind}-1"),
                        uid: (*uid).into(),
                        controller: Some(*controller),
                        ..OwnerReference::default()
                    })
                    .collect(),
            ),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn only_the_controller_of_the_expected_kind_counts() {
        let job = ("batch/v1", "Job", "uid-j", true);
        let found = |refs: &[(&str, &str, &str, bool)]| {
            controller(&owned_by(refs), "batch/v1", "Job")
                .map(|r| r.uid.clone())
                .unwrap_or_default()
        };
        assert_eq!(found(&[job]), "uid-j");
        // An owner that does not control, or a controller of another kind or version.
        assert_eq!(found(&[("batch/v1", "Job", "uid-j", false)]), "");
        assert_eq!(found(&[("batch/v1", "CronJob", "uid-c", true)]), "");
        assert_eq!(found(&[("batch/v2", "Job", "uid-j", true)]), "");
        // The controller is the one with `controller: true`, wherever it is listed.
        assert_eq!(found(&[("batch/v1", "Job", "uid-x", false), job]), "uid-j");
        assert_eq!(found(&[]), "");
    }

    #[test]
    fn an_owner_is_the_one_referenced_by_uid() {
        let meta = owned_by(&[("batch/v1", "Job", "uid-j", true)]);
        let reference = controller(&meta, "batch/v1", "Job").unwrap();
        let with_uid = |uid: &str| ObjectMeta {
            uid: Some(uid.into()),
            ..ObjectMeta::default()
        };
        assert!(same_uid(Some(with_uid("uid-j")), reference, "Job").is_ok());
        match same_uid(Some(with_uid("uid-namesake")), reference, "Job") {
            Err(Refused::OwnerChain(why)) => assert!(why.contains("Job Job-1"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(same_uid(None, reference, "Job").is_err());
    }

    #[test]
    fn triggers_keep_their_type_and_string_metadata() {
        let data = serde_json::json!({"spec": {"triggers": [
            {"type": "external", "metadata": {"poolName": "linux", "targetQueueLength": 1}},
            {"type": "cron"},
        ]}});
        assert_eq!(
            triggers(Some(&data)),
            [
                (
                    "external".to_owned(),
                    HashMap::from([("poolName".to_owned(), "linux".to_owned())])
                ),
                ("cron".to_owned(), HashMap::new()),
            ]
        );
        assert!(triggers(Some(&serde_json::json!({"spec": {}}))).is_empty());
        assert!(triggers(None).is_empty());
    }
}
