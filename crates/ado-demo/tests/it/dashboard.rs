//! Every panel of dashboards/ado-scaler.json, evaluated by a real Prometheus that scrapes the
//! scaler while the demo runs: each expression must be valid and return data.

use ado_sim::tools;

use std::{collections::BTreeMap, process::Stdio, time::Duration};

use ado_demo::{Arrivals, DemoConfig, simulate_on};
use serde_json::Value;
use tokio::net::TcpListener;

/// Grafana's variables, as a user with "All" selected would have them.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "15s")
        .replace("$org", ".*")
        .replace("$pool", ".*")
}

fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "row")
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap().to_owned();
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |t| (title.clone(), t["expr"].as_str().unwrap().to_owned()))
        })
        .collect()
}

async fn get_json(http: &reqwest::Client, url: &str, query: (&str, &str)) -> Value {
    http.get(url)
        .query(&[query])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn demo_config() -> DemoConfig {
    DemoConfig {
        duration: Duration::from_secs(60),
        arrivals: Arrivals::Rate(90),
        scaled_jobs: 2,
        teardown_window: Duration::from_millis(800),
        keda_polling: Duration::from_millis(500),
        scaler_poll: Duration::from_millis(500),
        pod_start: Duration::from_millis(800),
        job_run: (Duration::from_millis(800), Duration::from_millis(2500)),
        teardown: Duration::from_millis(800),
        max_replicas: 50,
        idle_timeout: Duration::ZERO,
        cancel_share: 0.0,
        cancel_after: Duration::ZERO,
        drain_limit: Duration::from_secs(10),
        seed: 3,
        live_table: false,
        // Agents killed without deregistering, for the collector's panels.
        chaos_share: 0.3,
        ..DemoConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_returns_data_from_a_real_prometheus() {
    tools::require("prometheus");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(tools::root().join("dashboards/ado-scaler.json")).unwrap(),
    )
    .unwrap();
    let queries = panel_queries(&dashboard);
    assert!(queries.len() >= 15, "{} queries", queries.len());

    // The demo's scaler, with /metrics on a port we know.
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = metrics.local_addr().unwrap();
    let demo = tokio::spawn(simulate_on(demo_config(), metrics));

    // Prometheus picks no free port itself: take one the kernel just gave out.
    let prom_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("ado-scaler-prometheus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: ado-scaler\n    \
             static_configs:\n      - targets: ['{metrics_addr}']\n"
        ),
    )
    .unwrap();
    let mut prometheus = tokio::process::Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let api = format!("http://127.0.0.1:{prom_port}");
    let http = reqwest::Client::new();

    // Ready, and scraping the scaler without errors.
    let mut scraped = false;
    for _ in 0..600 {
        let targets = http.get(format!("{api}/api/v1/targets")).send().await;
        if let Ok(r) = targets
            && let Ok(v) = r.json::<Value>().await
            && let Some(t) = v["data"]["activeTargets"]
                .as_array()
                .and_then(|a| a.first())
            && t["health"] == "up"
        {
            assert_eq!(t["lastError"], "", "scrape errors");
            scraped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(scraped, "Prometheus never scraped the scaler");

    // Evaluate every panel until each returns data (events such as queue waits need a few
    // jobs to have run); an invalid expression fails at once.
    let mut pending: BTreeMap<String, String> = queries
        .iter()
        .map(|(t, e)| (substitute(e), t.clone()))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(50);
    while !pending.is_empty() && tokio::time::Instant::now() < deadline {
        let mut answered = Vec::new();
        for (expr, title) in &pending {
            let v = get_json(&http, &format!("{api}/api/v1/query"), ("query", expr)).await;
            assert_eq!(
                v["status"], "success",
                "panel {title:?}: {expr} is invalid: {v}"
            );
            if v["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
            {
                answered.push(expr.clone());
            }
        }
        for expr in answered {
            pending.remove(&expr);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(pending.is_empty(), "panels without data: {pending:#?}");

    // The template variables resolve too.
    for var in ["org", "pool"] {
        let v = get_json(
            &http,
            &format!("{api}/api/v1/label/{var}/values"),
            ("match[]", "ado_scaler_queue_jobs"),
        )
        .await;
        assert!(
            v["data"].as_array().is_some_and(|a| !a.is_empty()),
            "variable {var}: {v}"
        );
    }

    demo.abort();
    prometheus.kill().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
