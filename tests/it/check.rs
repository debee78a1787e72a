//! `ado-scaler check` against the simulators: one test per ✗, each with its fix.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use clap::Parser;

use ado_scaler::{
    auth::AuthMode,
    check::{
        self, ACCEPTED, ACCESS_SETTINGS, CheckAs, FEDERATED_TOKEN, JOBS_READABLE, PARALLEL_JOBS,
        POOL_FOUND, REACHABLE, Report, Status, TOKEN_EXCHANGE, TRIGGER_ALLOWED, WI_VARIABLES,
    },
    cli::{AccessArgs, AuthArgs, CheckArgs, Cli, Command, GcArgs},
};
use ado_sim::{Endpoint, Fault, SimCloud};

fn args(sim: &SimCloud, pool: &str) -> CheckArgs {
    CheckArgs {
        org: sim.org_url.clone(),
        pool: pool.into(),
        demands: String::new(),
        capabilities: Vec::new(),
        agent_name_prefix: None,
        placeholder: true,
        as_: CheckAs::Scaler,
        service_account: None,
        scaler_metrics_url: None,
        auth: AuthArgs {
            auth: AuthMode::WorkloadIdentity,
            pat_file: None,
            ca_file: Some(sim.ca_file.clone()),
        },
        gc: gc_args(&[]),
        access: access_args(&["--allowed-orgs", &sim.org_url]),
        scaledjob_namespace: None,
        registrar: None,
        registrar_files: parsed(&[]).registrar_files,
    }
}

/// `check` as clap parses it with these flags (defaults included).
fn parsed(flags: &[&str]) -> CheckArgs {
    let argv = [&["ado-scaler", "check", "--org", "o", "--pool", "p"], flags].concat();
    match Cli::parse_from(argv).command {
        Command::Check(args) => args,
        _ => unreachable!("parsed the check subcommand"),
    }
}

/// The collector's flags as clap parses them (defaults included).
fn gc_args(flags: &[&str]) -> GcArgs {
    parsed(flags).gc
}

/// The access flags as clap parses them (defaults included).
fn access_args(flags: &[&str]) -> AccessArgs {
    parsed(flags).access
}

fn pod_env(sim: &SimCloud) -> HashMap<&'static str, String> {
    sim.pod_env().into_iter().collect()
}

async fn run(args: &CheckArgs, env: &HashMap<&'static str, String>) -> Report {
    check::check(&args.settings(), &|name| env.get(name).cloned()).await
}

fn failed<'a>(report: &'a Report, title: &str) -> &'a check::Item {
    let item = report
        .item(title)
        .unwrap_or_else(|| panic!("no {title} in\n{report}"));
    assert_eq!(item.status, Status::Fail, "{title} should fail:\n{report}");
    assert!(!report.ok());
    item
}

#[tokio::test]
async fn a_good_setup_passes_and_explains_the_queue() {
    let sim = SimCloud::start().await.unwrap();
    let pool = sim.ado.add_pool("linux");
    sim.ado.register_offline_agent(
        pool,
        "template",
        &[("maven", ""), ("gpu", "")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    sim.ado.enqueue(pool, &["maven"]);
    sim.ado.enqueue(pool, &["maven", "gpu"]);
    let running = sim.ado.enqueue(pool, &[]);
    sim.ado.assign_next(pool, "agent-1", &Default::default());
    let mut a = args(&sim, "linux");
    a.demands = "maven".into();
    let report = run(&a, &pod_env(&sim)).await;
    let text = report.to_string();
    println!("{text}");
    assert!(report.ok(), "{text}");
    for title in [
        WI_VARIABLES,
        FEDERATED_TOKEN,
        TOKEN_EXCHANGE,
        REACHABLE,
        ACCEPTED,
        POOL_FOUND,
        JOBS_READABLE,
    ] {
        assert_eq!(
            report.item(title).unwrap().status,
            Status::Pass,
            "{title}\n{text}"
        );
    }
    assert!(
        text.contains("sub=system:serviceaccount:ado-scaler:ado-scaler"),
        "{text}"
    );
    assert!(text.contains("aud=api://AzureADTokenExchange"), "{text}");
    assert!(
        text.contains("3 unfinished: 2 queued, 1 in flight"),
        "{text}"
    );
    assert!(text.contains("counted"), "{text}");
    assert!(
        text.contains("not counted: job demand `gpu` is not in `demands`"),
        "{text}"
    );
    assert!(
        !text.contains(&format!("job {running}")),
        "in-flight jobs are not listed: {text}"
    );
    assert!(text.ends_with("all checks passed"));
    // The placeholder of a `demands: maven` trigger is registered, as serve would.
    assert!(
        sim.ado
            .agents(pool)
            .iter()
            .any(|a| a.name.starts_with("ado-scaler-placeholder-")
                && a.user_capabilities.contains_key("maven")),
        "{text}"
    );
    // Neither the assertion nor the access token is ever printed.
    let assertion = std::fs::read_to_string(&sim.token_file).unwrap();
    assert!(
        !text.contains(assertion.trim()) && !text.contains(assertion.rsplit('.').next().unwrap())
    );
    for token in sim.issued_tokens() {
        assert!(!text.contains(&token));
    }
}

#[tokio::test]
async fn missing_webhook_variables() {
    let sim = SimCloud::start().await.unwrap();
    let mut env = pod_env(&sim);
    env.remove("AZURE_TENANT_ID");
    let report = run(&args(&sim, "linux"), &env).await;
    let item = failed(&report, WI_VARIABLES);
    assert!(item.detail.contains("AZURE_TENANT_ID"), "{report}");
    assert!(
        item.fix
            .as_ref()
            .unwrap()
            .contains("azure.workload.identity/use")
    );
    assert_eq!(report.item(TOKEN_EXCHANGE).unwrap().status, Status::Skipped);
    assert_eq!(sim.entra.requests(), 0);
}

#[tokio::test]
async fn unreadable_token_file() {
    let sim = SimCloud::start().await.unwrap();
    let mut env = pod_env(&sim);
    env.insert(
        "AZURE_FEDERATED_TOKEN_FILE",
        PathBuf::from("/nonexistent/token").display().to_string(),
    );
    let report = run(&args(&sim, "linux"), &env).await;
    let item = failed(&report, FEDERATED_TOKEN);
    assert!(item.detail.contains("/nonexistent/token"), "{report}");
}

#[tokio::test]
async fn token_of_another_service_account() {
    let sim = SimCloud::start().await.unwrap();
    sim.ado.add_pool("linux");
    let mut a = args(&sim, "linux");
    a.as_ = CheckAs::Agent;
    let report = run(&a, &pod_env(&sim)).await;
    let item = failed(&report, FEDERATED_TOKEN);
    assert!(
        item.detail
            .contains("expected sub=system:serviceaccount:ado-agents:ado-agent"),
        "{report}"
    );
    assert!(
        item.fix
            .as_ref()
            .unwrap()
            .contains("system:serviceaccount:ado-scaler:ado-scaler"),
        "{report}"
    );
}

#[tokio::test]
async fn no_matching_federated_credential() {
    let sim = SimCloud::start().await.unwrap();
    sim.entra.refuse_assertions(true);
    let report = run(&args(&sim, "linux"), &pod_env(&sim)).await;
    println!("{report}");
    let item = failed(&report, TOKEN_EXCHANGE);
    assert!(item.detail.contains("AADSTS700213"), "{report}");
    // What the pod presents in the detail, what to change in the fix (the typed hint).
    assert!(
        item.detail
            .contains("subject 'system:serviceaccount:ado-scaler:ado-scaler'")
            && item
                .detail
                .contains("issuer 'https://oidc.sim.local/cluster/'"),
        "{report}"
    );
    let fix = item.fix.as_ref().unwrap();
    assert!(
        fix.starts_with("add a federated credential") && !fix.contains("to fix"),
        "{report}"
    );
    assert_eq!(report.item(REACHABLE).unwrap().status, Status::Skipped);
}

#[tokio::test]
async fn unknown_client_id() {
    let sim = SimCloud::start().await.unwrap();
    let mut env = pod_env(&sim);
    env.insert(
        "AZURE_CLIENT_ID",
        "11111111-2222-4333-8444-555555555555".into(),
    );
    let report = run(&args(&sim, "linux"), &env).await;
    let item = failed(&report, TOKEN_EXCHANGE);
    assert!(item.detail.contains("AADSTS700016"), "{report}");
    assert!(
        item.fix
            .as_ref()
            .unwrap()
            .contains("azure.workload.identity/client-id"),
        "{report}"
    );
}

#[tokio::test]
async fn organisation_unreachable() {
    let sim = SimCloud::start().await.unwrap();
    // An address nothing listens on any more.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut a = args(&sim, "linux");
    a.org = format!("https://{closed}/contoso");
    let report = run(&a, &pod_env(&sim)).await;
    let item = failed(&report, REACHABLE);
    assert!(item.detail.contains("could not connect"), "{report}");
    assert_eq!(report.item(TOKEN_EXCHANGE).unwrap().status, Status::Pass);
}

#[tokio::test]
async fn identity_not_in_the_organisation() {
    let sim = SimCloud::start().await.unwrap();
    sim.ado.add_pool("linux");
    sim.ado.accept_tokens(false);
    let report = run(&args(&sim, "linux"), &pod_env(&sim)).await;
    let item = failed(&report, ACCEPTED);
    assert!(item.detail.contains("HTTP 203"), "{report}");
    assert!(
        item.fix.as_ref().unwrap().contains("add the identity"),
        "{report}"
    );
    assert_eq!(report.item(REACHABLE).unwrap().status, Status::Pass);
}

#[tokio::test]
async fn pool_not_found() {
    let sim = SimCloud::start().await.unwrap();
    sim.ado.add_pool("linux");
    let report = run(&args(&sim, "windows"), &pod_env(&sim)).await;
    let item = failed(&report, POOL_FOUND);
    assert!(item.detail.contains("agent pool `windows`"), "{report}");
    assert!(
        item.fix
            .as_ref()
            .unwrap()
            .contains("give the identity a role"),
        "{report}"
    );
}

#[tokio::test]
async fn job_requests_forbidden() {
    let sim = SimCloud::start().await.unwrap();
    sim.ado.add_pool("linux");
    sim.ado.add_fault(Fault::status(Endpoint::JobRequests, 403));
    let report = run(&args(&sim, "linux"), &pod_env(&sim)).await;
    let item = failed(&report, JOBS_READABLE);
    assert!(item.detail.contains("HTTP 403"), "{report}");
    assert!(
        item.fix.as_ref().unwrap().contains("role on pool linux"),
        "{report}"
    );
}

#[test]
fn the_binary_exits_non_zero_on_a_failed_check() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ado-scaler"))
        .args([
            "check",
            "--org",
            "https://dev.azure.com/contoso",
            "--pool",
            "linux",
        ])
        .env_remove("AZURE_CLIENT_ID")
        .env_remove("AZURE_TENANT_ID")
        .env_remove("AZURE_FEDERATED_TOKEN_FILE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("✗ workload identity variables: AZURE_CLIENT_ID is not set"),
        "{stdout}"
    );
    assert!(stdout.contains("fix: "), "{stdout}");
}

#[tokio::test]
async fn unclaimed_jobs_and_a_missing_pool_role_are_explained() {
    let sim = SimCloud::start().await.unwrap();
    let pool = sim.ado.add_pool("linux");
    sim.ado.register_offline_agent(
        pool,
        "template",
        &[("docker", ""), ("java", "17"), ("gpu", "")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    let both = sim.ado.enqueue(pool, &["docker"]);
    let java = sim.ado.enqueue(pool, &["docker", "java -equals 17"]);
    let gpu = sim.ado.enqueue(pool, &["gpu"]);
    sim.ado.reader_only(true);
    let mut a = args(&sim, "linux");
    a.capabilities = vec!["docker".into(), "docker,java=17".into()];
    a.agent_name_prefix = Some("team-".into());
    let report = run(&a, &pod_env(&sim)).await;
    let text = report.to_string();
    println!("{text}");
    assert!(text.contains(&format!("job {both} (ci)")), "{text}");
    assert!(
        text.contains("counted by --capabilities #1 and --capabilities #2: each starts an agent"),
        "{text}"
    );
    assert!(!text.contains(&format!("{java}: not counted")), "{text}");
    assert!(
        text.contains("--capabilities #1: job demand `gpu` is not met by `capabilities`"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "1 queued job(s) no trigger counts, no agent will start for them: {gpu}"
        )),
        "{text}"
    );
    let item = failed(&report, "placeholder registration team-placeholder");
    assert!(
        item.fix
            .as_deref()
            .unwrap()
            .contains("Administrator role on pool linux"),
        "{text}"
    );
    assert_eq!(sim.ado.agents(pool).len(), 1, "nothing registered");

    sim.ado.reader_only(false);
    let report = run(&a, &pod_env(&sim)).await;
    assert!(report.ok(), "{report}");
    assert_eq!(
        sim.ado.agents(pool).len(),
        2,
        "one placeholder: both triggers share the prefix"
    );
}

/// With the collector's flags, `check` reads what the collector reads and lists what its next
/// run would delete, deleting nothing.
#[tokio::test]
async fn the_collector_check_lists_what_the_next_run_deletes() {
    use ado_sim::{SIM_AGENT_NAMESPACE, kube::Grant};
    let sim = SimCloud::start().await.unwrap();
    let pool = sim.ado.add_pool("linux");
    for name in ["ado-agent-oom", "ado-agent-evicted", "ado-agent-running"] {
        sim.ado.register_agent(pool, name, &Default::default());
        sim.ado.age_agent(pool, name, Duration::from_secs(3600));
    }
    for name in ["ado-agent-oom", "ado-agent-evicted"] {
        sim.ado.set_agent_online(pool, name, false);
        sim.ado.age_agent(pool, name, Duration::from_secs(3600));
    }
    let kubeconfig = sim.kubeconfig.display().to_string();
    let pools = format!("{}=linux", sim.org_url);
    let mut a = args(&sim, "linux");
    a.gc = gc_args(&[
        "--gc",
        "--gc-namespace",
        SIM_AGENT_NAMESPACE,
        "--gc-agent-prefix",
        "ado-agent-",
        "--gc-pools",
        &pools,
        "--gc-lease-identity",
        "check",
        "--kubeconfig",
        &kubeconfig,
    ]);
    let report = run(&a, &pod_env(&sim)).await;
    assert!(report.ok(), "{report}");
    for title in [
        check::GC_SETTINGS,
        check::GC_API,
        check::GC_PODS,
        check::GC_LEASE,
    ] {
        assert_eq!(report.item(title).unwrap().status, Status::Pass, "{report}");
    }
    let stale = &report.item(check::GC_STALE).unwrap().detail;
    assert!(stale.starts_with("the next run deletes 2: "), "{stale}");
    assert!(stale.contains("ado-agent-oom (id ") && stale.contains("ado-agent-evicted"));
    assert!(!stale.contains("ado-agent-running"), "{stale}");
    assert!(sim.ado.deletions().is_empty(), "check deletes nothing");

    // Without the rights on pods: ✗ with the Role to apply.
    sim.kube.enforce_rbac(vec![Grant {
        namespace: "ado-scaler".into(),
        api_group: "coordination.k8s.io".into(),
        resource: "leases".into(),
        verbs: vec!["get".into()],
        resource_names: vec![],
    }]);
    let report = run(&a, &pod_env(&sim)).await;
    let pods = failed(&report, check::GC_PODS);
    assert!(pods.detail.contains("403"), "{}", pods.detail);
    assert!(
        pods.fix
            .as_deref()
            .unwrap()
            .contains("deploy/scaler/rbac.yaml"),
        "{report}"
    );

    // Flags the collector would refuse are refused here too, naming the flag.
    a.gc = gc_args(&["--gc", "--gc-namespace", SIM_AGENT_NAMESPACE]);
    let report = run(&a, &pod_env(&sim)).await;
    let settings = failed(&report, check::GC_SETTINGS);
    assert!(
        settings.detail.contains("--gc-agent-prefix"),
        "{}",
        settings.detail
    );
}

#[tokio::test]
async fn the_access_settings_are_printed_and_a_refused_trigger_is_named() {
    let sim = SimCloud::start().await.unwrap();
    let linux = sim.ado.add_pool("linux");
    let gpu = sim.ado.add_pool("gpu");
    let allowed_pools = format!("{}=linux", sim.org_url);
    let access = access_args(&[
        "--allowed-orgs",
        &sim.org_url,
        "--allowed-namespaces",
        "ado-agents",
        "--allowed-pools",
        &allowed_pools,
        "--max-pools",
        "7",
    ]);
    let env = pod_env(&sim);
    let judged = |pool: &str, namespace: Option<&str>| {
        let mut a = args(&sim, pool);
        a.access = access.clone();
        a.scaledjob_namespace = namespace.map(str::to_owned);
        a
    };
    let refused = format!("{TRIGGER_ALLOWED} (--demands)");

    // Another namespace: named, with the flag; nothing registered in the pool.
    let report = run(&judged("gpu", Some("team-b")), &env).await;
    let settings = report.item(ACCESS_SETTINGS).unwrap();
    assert_eq!(settings.status, Status::Info);
    assert_eq!(
        settings.detail,
        format!(
            "--allowed-namespaces: ado-agents; --allowed-pools: {allowed_pools}; --max-pools: 7"
        )
    );
    let item = failed(&report, &refused);
    assert!(item.detail.contains("\"team-b\""), "{report}");
    assert!(item.detail.contains("--allowed-namespaces"), "{report}");
    // The identity checks still run: they need no trigger.
    assert_eq!(report.item(POOL_FOUND).unwrap().status, Status::Pass);

    // The agents' namespace, a pool not listed.
    let report = run(&judged("gpu", Some("ado-agents")), &env).await;
    let item = failed(&report, &refused);
    assert!(item.detail.contains("agent pool gpu"), "{report}");
    assert!(item.detail.contains("--allowed-pools"), "{report}");
    assert!(sim.ado.agents(gpu).is_empty(), "serve would not register");

    // A bad capability is the trigger's fault, named by its key.
    let mut bad = judged("linux", None);
    bad.capabilities = vec!["docker,ja\u{7}va".into()];
    let report = run(&bad, &env).await;
    let item = failed(&report, &format!("{TRIGGER_ALLOWED} (--capabilities)"));
    assert!(item.detail.contains("`capabilities`"), "{report}");

    // Allowed: passes, and the placeholder is checked as before.
    let report = run(&judged("linux", None), &env).await;
    assert!(report.ok(), "{report}");
    let item = report.item(TRIGGER_ALLOWED).unwrap();
    assert_eq!(item.status, Status::Pass);
    assert!(
        item.detail
            .contains("in ado-agents (pass --namespace to check one)"),
        "{report}"
    );
    assert_eq!(sim.ado.agents(linux).len(), 1, "placeholder registered");

    // A setting serve would refuse is named.
    let mut broken = judged("linux", None);
    broken.access = access_args(&["--allowed-orgs", &sim.org_url, "--max-pools", "0"]);
    let report = run(&broken, &env).await;
    assert!(
        failed(&report, ACCESS_SETTINGS)
            .detail
            .contains("--max-pools must be at least 1")
    );
}

/// The organisation's parallel jobs, and how many of the pool's queued jobs wait for one;
/// usage that cannot be read is said so, and fails nothing (serve caps nothing then).
#[tokio::test]
async fn the_organisations_parallel_jobs_are_printed() {
    let sim = SimCloud::start().await.unwrap();
    let pool = sim.ado.add_pool("linux");
    sim.ado.register_offline_agent(
        pool,
        "template",
        &[("maven".to_string(), String::new())].into_iter().collect(),
    );
    sim.ado.set_parallel_jobs(Some(2));
    for _ in 0..4 {
        sim.ado.enqueue(pool, &["maven"]);
    }
    sim.ado.assign_next(
        pool,
        "agent-1",
        &[("maven".to_string(), String::new())].into_iter().collect(),
    );
    let a = args(&sim, "linux");
    let report = run(&a, &pod_env(&sim)).await;
    let item = report.item(PARALLEL_JOBS).expect("parallel jobs checked");
    assert_eq!(item.status, Status::Info, "{report}");
    assert_eq!(
        item.detail,
        "2 self-hosted parallel job(s): 1 running, 1 free; 2 of this pool's queued job(s) wait for one and are not counted"
    );
    assert!(report.ok(), "{report}");

    sim.ado
        .add_fault(Fault::status(Endpoint::ResourceUsage, 403));
    let report = run(&a, &pod_env(&sim)).await;
    let item = report.item(PARALLEL_JOBS).unwrap();
    assert!(item.detail.contains("cannot be read"), "{report}");
    assert!(item.detail.contains("uncapped"), "{report}");
    assert!(report.ok(), "an unreadable usage fails nothing:\n{report}");
}
