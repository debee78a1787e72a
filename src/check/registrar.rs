//! `check --as agent --registrar URL`: the agent pod with just-in-time registration holds no
//! identity, so instead of Entra and ADO it checks what its init container needs: the
//! registrar's CA, the projected token's audience and service account, and that the registrar
//! answers over TLS that CA vouches for. No token is sent and nothing is registered.

use std::path::PathBuf;

use super::{Report, Status};
use crate::{agent::prepare, auth::AssertionClaims, registrar::wire::TOKEN_AUDIENCE};

pub const REGISTRAR_CA: &str = "registrar CA";
pub const REGISTRAR_TOKEN: &str = "registrar token";
pub const REGISTRAR_REACHABLE: &str = "registrar reachable";

/// What `agent prepare` is given.
#[derive(Debug, Clone)]
pub struct RegistrarProbe {
    pub url: String,
    pub token_file: PathBuf,
    pub ca_file: PathBuf,
}

pub async fn check_registrar(probe: &RegistrarProbe, expected_sa: &str, report: &mut Report) {
    token(probe, expected_sa, report);
    let url = match prepare::registrar_url(&probe.url) {
        Ok(url) => url,
        Err(e) => {
            report.fail(
                REGISTRAR_REACHABLE,
                e.to_string(),
                "pass --registrar https://SERVICE.NAMESPACE.svc:9443",
            );
            report.skip(&[REGISTRAR_CA]);
            return;
        }
    };
    let http = match std::fs::read(&probe.ca_file)
        .map_err(|e| format!("{}: {e}", probe.ca_file.display()))
        .and_then(|pem| {
            crate::auth::pinned_http_client(&pem, "--registrar-ca-file").map_err(|e| e.to_string())
        }) {
        Ok(http) => {
            report.pass(REGISTRAR_CA, probe.ca_file.display().to_string());
            http
        }
        Err(e) => {
            report.fail(
                REGISTRAR_CA,
                e,
                "mount the ConfigMap ado-scaler-registrar-ca (the scaler publishes it once its registrar runs)",
            );
            report.skip(&[REGISTRAR_REACHABLE]);
            return;
        }
    };
    // A GET without a token: any HTTP answer proves the address and the certificate.
    match http.get(url.clone()).send().await {
        Ok(answer) => report.pass(
            REGISTRAR_REACHABLE,
            format!(
                "{url} answered over TLS its CA vouches for (HTTP {})",
                answer.status().as_u16()
            ),
        ),
        Err(e) => {
            let fix = if prepare::is_certificate_error(&e) {
                "the registrar's certificate is not signed by this CA: mount the current ado-scaler-registrar-ca"
            } else {
                "is the scaler running with --registrar-addr, and does the NetworkPolicy admit this namespace to 9443?"
            };
            report.fail(REGISTRAR_REACHABLE, format!("{url}: {e}"), fix);
        }
    }
}

/// The token's claims (never the token): audience, expiry, service account.
fn token(probe: &RegistrarProbe, expected_sa: &str, report: &mut Report) {
    let Some(claims) = AssertionClaims::from_file(&probe.token_file) else {
        report.fail(
            REGISTRAR_TOKEN,
            format!(
                "{} is missing, unreadable or not a JWT",
                probe.token_file.display()
            ),
            format!("mount a projected serviceAccountToken with audience {TOKEN_AUDIENCE} there"),
        );
        return;
    };
    let expected_sub = format!("system:serviceaccount:{expected_sa}");
    let shown = format!("sub={}, aud={}", claims.sub, claims.aud.join(" "));
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (status, fix) = if !claims.aud.iter().any(|a| a == TOKEN_AUDIENCE) {
        (
            Status::Fail,
            Some(format!(
                "set the projected token's audience to {TOKEN_AUDIENCE}: the registrar refuses any other"
            )),
        )
    } else if claims.exp.is_some_and(|exp| exp <= now) {
        (
            Status::Fail,
            Some("the kubelet refreshes the projected token; check the volume".to_owned()),
        )
    } else if claims.sub != expected_sub {
        (
            Status::Fail,
            Some(format!(
                "run the pod as {expected_sa}, or add its account to --registrar-service-accounts"
            )),
        )
    } else {
        (Status::Pass, None)
    };
    report.push(status, REGISTRAR_TOKEN, shown, fix);
}
