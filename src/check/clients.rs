//! `check` for KEDA's side of the gRPC port: reads the running scaler's own metrics
//! (`--scaler-metrics-url`; the Deployment points it at the pod's metrics port) and says
//! whether KEDA's calls arrive, which handshakes were refused and why, and whether the
//! ScaledJobs of `--refresh-scaledjobs` are kept refreshed. Counts are since the scaler started.

use std::collections::BTreeMap;

use super::Report;
use crate::scaler::tls::Refusal;

pub const GRPC_CLIENTS: &str = "gRPC clients";
pub const REFRESH: &str = "ScaledJob refresh";
pub const POOL_BOUND: &str = "watched pools";
pub const REFUSED_CALLS: &str = "refused calls";

/// One sample of an OpenMetrics text: its labels and value.
type Sample = (BTreeMap<String, String>, f64);

/// The samples of `name` (exactly: `name{…} value` or `name value`) in an OpenMetrics text.
pub fn samples(text: &str, name: &str) -> Vec<Sample> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(inner) => {
                    let (labels, value) = inner.split_once("} ")?;
                    (parse_labels(labels)?, value)
                }
                None => (BTreeMap::new(), rest.strip_prefix(' ')?),
            };
            let value = value.split_whitespace().next()?.parse().ok()?;
            Some((labels, value))
        })
        .collect()
}

/// `a="x",b="y"` (label values as the scaler writes them: no escaped quotes in them).
fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let (value, after) = after.split_once('"')?;
        labels.insert(key.to_owned(), value.to_owned());
        rest = after.strip_prefix(',').unwrap_or(after);
    }
    Some(labels)
}

fn total(samples: &[Sample], keep: impl Fn(&BTreeMap<String, String>) -> bool) -> f64 {
    samples
        .iter()
        .filter(|(labels, _)| keep(labels))
        .map(|(_, v)| v)
        .sum()
}

/// Judges the scaler's metrics text into the report.
pub fn judge(text: &str, report: &mut Report) {
    let calls = total(&samples(text, "ado_scaler_grpc_requests_total"), |_| true);
    let handshakes = samples(text, "ado_scaler_tls_handshakes_total");
    let refused: Vec<(Refusal, f64)> = Refusal::ALL
        .iter()
        .map(|r| {
            let n = total(&handshakes, |l| {
                l.get("result").map(String::as_str) == Some(r.label())
            });
            (*r, n)
        })
        .filter(|(_, n)| *n > 0.0)
        .collect();
    let listed = refused
        .iter()
        .map(|(r, n)| format!("{}: {n}", r.label()))
        .collect::<Vec<_>>()
        .join(", ");
    let transport = if handshakes.is_empty() {
        "plaintext"
    } else {
        "TLS"
    };
    match (calls > 0.0, refused.iter().max_by(|a, b| a.1.total_cmp(&b.1))) {
        (_, None) => report.pass(
            GRPC_CLIENTS,
            format!("{calls} calls served over {transport}, no handshake refused"),
        ),
        (true, Some(_)) => report.push(
            super::Status::Info,
            GRPC_CLIENTS,
            format!(
                "{calls} calls served over {transport}; handshakes refused ({listed}): a client other than the one served, or one that has since reconnected"
            ),
            None,
        ),
        (false, Some((most, _))) => report.fail(
            GRPC_CLIENTS,
            format!("no call served, handshakes refused ({listed})"),
            most.advice(),
        ),
    }

    judge_refusals(text, report);

    let refreshes = samples(text, "ado_scaler_scaledjob_refreshes_total");
    let mut by_job: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for (labels, value) in &refreshes {
        let job = format!(
            "{}/{}",
            labels.get("namespace").map_or("?", String::as_str),
            labels.get("scaledjob").map_or("?", String::as_str)
        );
        let result = labels.get("result").cloned().unwrap_or_default();
        *by_job.entry(job).or_default().entry(result).or_default() += value;
    }
    for (job, results) in by_job {
        let n = |r: &str| results.get(r).copied().unwrap_or(0.0);
        let counts = results
            .iter()
            .filter(|(_, v)| **v > 0.0)
            .map(|(r, v)| format!("{r}: {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let title = format!("{REFRESH} {job}");
        if n("refreshed") + n("unchanged") > 0.0 {
            report.pass(&title, counts);
        } else if n("not_gradual") > 0.0 {
            report.fail(
                &title,
                counts,
                "set spec.rollout.strategy: gradual on the ScaledJob (KEDA's default rollout deletes running Jobs on any change)",
            );
        } else if n("error") > 0.0 {
            report.fail(
                &title,
                counts,
                "see the scaler's log for the API's answer; deploy/mtls/rbac.yaml lists the rights",
            );
        } else {
            report.push(
                super::Status::Info,
                &title,
                if counts.is_empty() {
                    "not checked yet".to_owned()
                } else {
                    counts
                },
                None,
            );
        }
    }
}

/// The pools watched against `--max-pools`, and the calls the access settings refused.
fn judge_refusals(text: &str, report: &mut Report) {
    let denied = samples(text, "ado_scaler_denied_total");
    let by_reason = |reason: &str| {
        total(&denied, |l| {
            l.get("reason").map(String::as_str) == Some(reason)
        })
    };
    let watched = total(&samples(text, "ado_scaler_watched_pools"), |_| true);
    let max = total(&samples(text, "ado_scaler_max_pools"), |_| true);
    let over = by_reason("too_many_pools");
    if over > 0.0 {
        report.fail(
            POOL_BOUND,
            format!("{watched} of --max-pools {max} watched; {over} calls refused for a pool past the bound"),
            "raise --max-pools (ADO_SCALER_MAX_POOLS) if the pools are real, or find the ScaledJobs naming unknown pools in the scaler's log (one line per ScaledJob)",
        );
    } else {
        report.pass(
            POOL_BOUND,
            format!("{watched} of --max-pools {max} watched"),
        );
    }
    let refused: Vec<String> = [
        "namespace_not_allowed",
        "org_not_allowed",
        "pool_not_allowed",
    ]
    .iter()
    .map(|reason| (reason, by_reason(reason)))
    .filter(|(_, n)| *n > 0.0)
    .map(|(reason, n)| format!("{reason}: {n}"))
    .collect();
    report.push(
        super::Status::Info,
        REFUSED_CALLS,
        if refused.is_empty() {
            "none refused by --allowed-namespaces, --allowed-orgs or --allowed-pools".to_owned()
        } else {
            format!(
                "{} (the scaler's log names each ScaledJob once)",
                refused.join(", ")
            )
        },
        None,
    );
}

/// Reads `url` and judges it; an unreachable scaler is said, not failed (check may run
/// before the scaler does).
pub async fn check_clients(url: &str, report: &mut Report) {
    let text = match fetch(url).await {
        Ok(text) => text,
        Err(e) => {
            report.push(
                super::Status::Info,
                GRPC_CLIENTS,
                format!("not checked: the scaler's metrics at {url} could not be read ({e})"),
                None,
            );
            return;
        }
    };
    judge(&text, report);
}

/// The scaler's metrics text, through the one HTTP client setup (no redirects, timeouts).
async fn fetch(url: &str) -> std::result::Result<String, String> {
    let http = crate::auth::http_client(None).map_err(|e| e.to_string())?;
    let answer = http.get(url).send().await.map_err(|e| e.to_string())?;
    let answer = answer.error_for_status().map_err(|e| e.to_string())?;
    answer.text().await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Status;

    const REFUSING: &str = "# TYPE ado_scaler_tls_handshakes counter
ado_scaler_tls_handshakes_total{result=\"success\"} 0
ado_scaler_tls_handshakes_total{result=\"no_client_certificate\"} 12
ado_scaler_tls_handshakes_total{result=\"untrusted\"} 0
ado_scaler_tls_handshakes_total{result=\"rejected_by_client\"} 3
ado_scaler_tls_reloads_total{result=\"success\"} 0
ado_scaler_scaledjob_refreshes_total{namespace=\"ado-agents\",scaledjob=\"ado-agent\",result=\"waiting\"} 4
ado_scaler_scaledjob_refreshes_total{namespace=\"ado-agents\",scaledjob=\"ado-agent\",result=\"refreshed\"} 0
ado_scaler_scaledjob_refreshes_total{namespace=\"ado-agents\",scaledjob=\"gpu\",result=\"not_gradual\"} 2
ado_scaler_scaledjob_refreshes_total{namespace=\"ado-agents\",scaledjob=\"ok\",result=\"unchanged\"} 9
ado_scaler_scaledjob_refreshes_total{namespace=\"ado-agents\",scaledjob=\"broken\",result=\"error\"} 1
# EOF
";

    #[test]
    fn the_pool_bound_and_refused_calls_are_judged() {
        let mut report = Report::default();
        judge(
            "ado_scaler_watched_pools 12\nado_scaler_max_pools 50\n# EOF\n",
            &mut report,
        );
        let bound = item(&report, POOL_BOUND);
        assert_eq!(bound.status, Status::Pass);
        assert_eq!(bound.detail, "12 of --max-pools 50 watched");
        assert_eq!(
            item(&report, REFUSED_CALLS).detail,
            "none refused by --allowed-namespaces, --allowed-orgs or --allowed-pools"
        );

        let mut report = Report::default();
        judge(
            "ado_scaler_watched_pools 50
ado_scaler_max_pools 50
ado_scaler_denied_total{reason=\"too_many_pools\"} 3
ado_scaler_denied_total{reason=\"namespace_not_allowed\"} 4
ado_scaler_denied_total{reason=\"org_not_allowed\"} 0
ado_scaler_denied_total{reason=\"pool_not_allowed\"} 1
# EOF
",
            &mut report,
        );
        let bound = item(&report, POOL_BOUND);
        assert_eq!(bound.status, Status::Fail);
        assert_eq!(
            bound.detail,
            "50 of --max-pools 50 watched; 3 calls refused for a pool past the bound"
        );
        assert!(bound.fix.as_deref().unwrap().contains("--max-pools"));
        let refused = item(&report, REFUSED_CALLS);
        assert_eq!(refused.status, Status::Info);
        assert_eq!(
            refused.detail,
            "namespace_not_allowed: 4, pool_not_allowed: 1 (the scaler's log names each ScaledJob once)"
        );
    }

    fn item<'r>(report: &'r Report, title: &str) -> &'r crate::check::Item {
        report
            .item(title)
            .unwrap_or_else(|| panic!("{title} missing: {report}"))
    }

    #[test]
    fn samples_are_read_by_exact_name_with_their_labels() {
        let found = samples(REFUSING, "ado_scaler_tls_handshakes_total");
        assert_eq!(found.len(), 4);
        assert_eq!(found[1].0["result"], "no_client_certificate");
        assert_eq!(found[1].1, 12.0);
        assert!(samples(REFUSING, "ado_scaler_tls_handshakes").is_empty());
        assert_eq!(samples("up 1\nupper 2", "up"), vec![(BTreeMap::new(), 1.0)]);
        let two = samples("m{a=\"x\",b=\"y\"} 3.5 1700000000", "m");
        assert_eq!(two[0].0.len(), 2);
        assert_eq!(two[0].0["b"], "y");
        assert_eq!(two[0].1, 3.5);
        assert!(samples("m{a=\"x} 1", "m").is_empty(), "unterminated");
        assert!(samples("m{a} 1", "m").is_empty());
        assert!(samples("m nan-ish", "m").is_empty());
    }

    #[test]
    fn refused_handshakes_with_no_call_fail_with_the_commonest_cause_s_fix() {
        let mut report = Report::default();
        judge(REFUSING, &mut report);
        let clients = item(&report, GRPC_CLIENTS);
        assert_eq!(clients.status, Status::Fail);
        assert_eq!(
            clients.detail,
            "no call served, handshakes refused (no_client_certificate: 12, rejected_by_client: 3)"
        );
        assert_eq!(
            clients.fix.as_deref(),
            Some(Refusal::NoClientCertificate.advice())
        );
        let refresh = |job: &str| item(&report, &format!("{REFRESH} ado-agents/{job}")).status;
        assert_eq!(refresh("ado-agent"), Status::Info);
        assert_eq!(
            item(&report, &format!("{REFRESH} ado-agents/ado-agent")).detail,
            "waiting: 4"
        );
        assert_eq!(refresh("gpu"), Status::Fail);
        assert_eq!(refresh("ok"), Status::Pass);
        assert_eq!(refresh("broken"), Status::Fail);
        assert!(!report.ok());
    }

    #[test]
    fn refusals_beside_served_calls_are_information_and_none_is_a_pass() {
        let served = format!(
            "{REFUSING}ado_scaler_grpc_requests_total{{method=\"GetMetrics\",code=\"OK\"}} 40\n"
        );
        let mut report = Report::default();
        judge(&served, &mut report);
        let clients = item(&report, GRPC_CLIENTS);
        assert_eq!(clients.status, Status::Info);
        assert!(clients.detail.starts_with("40 calls served over TLS; handshakes refused (no_client_certificate: 12, rejected_by_client: 3)"), "{}", clients.detail);

        let mut report = Report::default();
        judge(
            "ado_scaler_grpc_requests_total{method=\"IsActive\",code=\"OK\"} 2\nado_scaler_grpc_requests_total{method=\"GetMetrics\",code=\"OK\"} 3\n",
            &mut report,
        );
        let clients = item(&report, GRPC_CLIENTS);
        assert_eq!(clients.status, Status::Pass);
        assert_eq!(
            clients.detail,
            "5 calls served over plaintext, no handshake refused"
        );
        assert!(
            report
                .item(&format!("{REFRESH} ado-agents/ado-agent"))
                .is_none()
        );
        assert!(report.ok());
    }
}
