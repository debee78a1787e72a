//! deploy/ as a cluster would get it: `kubectl kustomize deploy/` checked for Pod Security
//! `restricted`, matching selectors, the ScaledJob pointing at the Service, identities that
//! match the federated credentials the setup script creates; every object against its schema
//! (Kubernetes, KEDA, prometheus-operator) with unknown fields rejected; the alerts through
//! promtool.

use ado_sim::tools;

use serde_json::Value;
use tools::{edited_copy, find, rendered, root, run};

/// (where, pod template) for every workload.
fn pod_templates(docs: &[Value]) -> Vec<(String, &Value)> {
    docs.iter()
        .filter_map(|d| {
            let name = format!(
                "{}/{}",
                d["kind"].as_str()?,
                d["metadata"]["name"].as_str()?
            );
            match d["kind"].as_str()? {
                "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => {
                    Some((name, &d["spec"]["template"]))
                }
                "ScaledJob" => Some((name, &d["spec"]["jobTargetRef"]["template"])),
                _ => None,
            }
        })
        .collect()
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().expect("selector labels");
    !selector.is_empty() && selector.iter().all(|(k, v)| &labels[k] == v)
}

#[test]
fn every_pod_passes_pod_security_restricted() {
    let docs = rendered();
    let templates = pod_templates(&docs);
    assert_eq!(
        templates.len(),
        2,
        "the scaler Deployment and the agent ScaledJob"
    );
    for (name, template) in templates {
        let spec = &template["spec"];
        let pod = &spec["securityContext"];
        assert_eq!(pod["runAsNonRoot"], true, "{name}");
        assert_eq!(pod["seccompProfile"]["type"], "RuntimeDefault", "{name}");
        assert!(
            pod["runAsUser"].as_u64().is_some_and(|u| u > 0),
            "{name} runs as a non-zero uid"
        );
        for container in spec["containers"].as_array().unwrap() {
            let sc = &container["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(
                sc["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{name}"
            );
            assert!(
                sc["privileged"].is_null() || sc["privileged"] == false,
                "{name}"
            );
        }
        for container in spec["initContainers"].as_array().into_iter().flatten() {
            let sc = &container["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{name} init");
            assert_eq!(
                sc["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{name} init"
            );
        }
        let sa = spec["serviceAccountName"].as_str().unwrap();
        let account = find(&docs, "ServiceAccount", sa);
        let client_id = &account["metadata"]["annotations"]["azure.workload.identity/client-id"];
        if name == "ScaledJob/ado-agent" {
            // Just-in-time registration: the agent pod holds no identity at all.
            assert!(template["metadata"]["labels"]["azure.workload.identity/use"].is_null());
            assert!(client_id.is_null(), "{sa} is not federated");
        } else {
            // Workload identity: the label the webhook looks for, and an annotated account.
            assert_eq!(
                template["metadata"]["labels"]["azure.workload.identity/use"], "true",
                "{name}"
            );
            assert!(
                client_id.as_str().is_some_and(|c| c.len() == 36),
                "{name}: {sa} has the client id"
            );
        }
    }
    let scaler = find(&docs, "Deployment", "ado-scaler");
    let container = &scaler["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    for ns in ["ado-scaler", "ado-agents"] {
        let namespace = find(&docs, "Namespace", ns);
        assert_eq!(
            namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
            "restricted"
        );
    }
    let text = serde_json::to_string(&docs).unwrap();
    assert!(
        !text.contains("set-by-kustomization"),
        "every placeholder replaced"
    );
}

#[test]
fn selectors_probes_and_the_scaled_job_fit_together() {
    let docs = rendered();
    let deployment = find(&docs, "Deployment", "ado-scaler");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert!(labels_match(
        &deployment["spec"]["selector"]["matchLabels"],
        pod_labels
    ));
    assert_eq!(deployment["spec"]["replicas"], 2);
    let service = find(&docs, "Service", "ado-scaler");
    assert!(labels_match(&service["spec"]["selector"], pod_labels));
    let pdb = find(&docs, "PodDisruptionBudget", "ado-scaler");
    assert!(labels_match(
        &pdb["spec"]["selector"]["matchLabels"],
        pod_labels
    ));
    let policy = find(&docs, "NetworkPolicy", "ado-scaler");
    assert!(labels_match(
        &policy["spec"]["podSelector"]["matchLabels"],
        pod_labels
    ));
    let monitor = find(&docs, "ServiceMonitor", "ado-scaler");
    assert!(labels_match(
        &monitor["spec"]["selector"]["matchLabels"],
        &service["metadata"]["labels"]
    ));
    let port_names: Vec<&str> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(port_names.contains(&monitor["spec"]["endpoints"][0]["port"].as_str().unwrap()));

    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let grpc_port = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "grpc")
        .unwrap()["port"]
        .as_u64()
        .unwrap();
    assert_eq!(container["readinessProbe"]["grpc"]["port"], grpc_port);
    assert_eq!(
        container["readinessProbe"]["grpc"]["service"],
        "externalscaler.ExternalScaler"
    );
    assert_eq!(container["livenessProbe"]["grpc"]["port"], grpc_port);

    let settings = &find(&docs, "ConfigMap", "ado-scaler-settings")["data"];
    let job = find(&docs, "ScaledJob", "ado-agent");
    let trigger = &job["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "external");
    let meta = &trigger["metadata"];
    let expected = format!(
        "{}.{}.svc.cluster.local:{grpc_port}",
        service["metadata"]["name"].as_str().unwrap(),
        service["metadata"]["namespace"].as_str().unwrap()
    );
    assert_eq!(meta["scalerAddress"], expected.as_str());
    assert_eq!(meta["organizationURL"], settings["organizationURL"]);
    assert_eq!(meta["poolName"], settings["poolName"]);
    assert_eq!(meta["scaleOnInFlight"], "true");
    // Agents are named after their pods, which KEDA names after the ScaledJob.
    assert_eq!(
        meta["agentNamePrefix"],
        format!("{}-", job["metadata"]["name"].as_str().unwrap()).as_str()
    );
    assert_eq!(job["spec"]["scalingStrategy"]["strategy"], "default");
    assert_eq!(job["spec"]["jobTargetRef"]["backoffLimit"], 0);
    let agent_pod = &job["spec"]["jobTargetRef"]["template"]["spec"];
    let env = |c: &Value, n: &str| {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == n)
            .unwrap_or_else(|| panic!("{n} not set"))["value"]
            .clone()
    };
    assert_agent_lifecycle_is_safe(job, |n| env(&agent_pod["containers"][0], n));
    // The init container reaches the registrar through the Service, and hands the agent
    // container its files through the volume they share.
    let register = &agent_pod["initContainers"][0];
    let registrar_port = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "registrar")
        .expect("the registrar's Service port")["port"]
        .as_u64()
        .unwrap();
    assert_eq!(
        env(register, "AZP_REGISTRAR"),
        format!(
            "https://{}.{}.svc:{registrar_port}",
            service["metadata"]["name"].as_str().unwrap(),
            service["metadata"]["namespace"].as_str().unwrap()
        )
        .as_str()
    );
    assert_eq!(
        env(register, "AZP_CONFIG_DIR"),
        env(&agent_pod["containers"][0], "AZP_CONFIG_DIR")
    );
    assert_eq!(register["args"], serde_json::json!(["prepare"]));
    let scaler_env = |n: &str| env(container, n);
    assert_eq!(
        scaler_env("ADO_SCALER_REGISTRAR_NAMESPACES"),
        job["metadata"]["namespace"]
    );
    assert_eq!(
        scaler_env("ADO_SCALER_REGISTRAR_SERVICE_ACCOUNTS"),
        agent_pod["serviceAccountName"]
    );
    assert!(
        scaler_env("ADO_SCALER_REGISTRAR_ADDR")
            .as_str()
            .unwrap()
            .ends_with(&format!(":{registrar_port}"))
    );
    // The scaler allows exactly the one organisation.
    assert_eq!(
        env(container, "ADO_SCALER_ALLOWED_ORGS"),
        settings["organizationURL"]
    );

    // The images are the ones the Dockerfile builds, renamed in one place.
    assert!(container["image"].as_str().unwrap().contains("ado-scaler"));
    assert!(
        agent_pod["containers"][0]["image"]
            .as_str()
            .unwrap()
            .contains("ado-agent")
    );
}

/// Running pipeline jobs survive a ScaledJob change, node scale-downs and pod termination.
fn assert_agent_lifecycle_is_safe(job: &Value, env: impl Fn(&str) -> Value) {
    assert_eq!(
        job["spec"]["rollout"]["strategy"], "gradual",
        "KEDA's default rollout deletes running Jobs"
    );
    let template = &job["spec"]["jobTargetRef"]["template"];
    let annotations = &template["metadata"]["annotations"];
    assert_eq!(
        annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"],
        "false"
    );
    assert_eq!(annotations["karpenter.sh/do-not-disrupt"], "true");
    let seconds = |name: &str| {
        let value = env(name);
        humantime::parse_duration(value.as_str().unwrap())
            .unwrap_or_else(|e| panic!("{name}={value}: {e}"))
            .as_secs()
    };
    let (drain, cancel, remove) = (
        seconds("AZP_DRAIN_TIMEOUT"),
        seconds("AZP_CANCEL_TIMEOUT"),
        seconds("AZP_REMOVE_TIMEOUT"),
    );
    assert!(drain > 0, "a node drain waits for the job");
    assert!(seconds("AZP_IDLE_TIMEOUT") > 0, "idle agents leave");
    let grace = template["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        grace >= drain + cancel + remove,
        "terminationGracePeriodSeconds {grace} < drain {drain} + cancel {cancel} + remove {remove}"
    );
}

fn setup_dry_run(args: &[&str]) -> std::process::Output {
    std::process::Command::new("bash")
        .args([
            "deploy/azure/setup.sh",
            "--dry-run",
            "--resource-group",
            "rg",
            "--cluster",
            "aks",
        ])
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

#[test]
fn setup_script_is_clean_and_federates_only_the_pods_that_hold_the_identity() {
    run("shellcheck", &["deploy/azure/setup.sh"], root());
    let printed = |extra: &[&str]| {
        let mut args = vec![
            "--org",
            "https://dev.azure.com/contoso",
            "--pool",
            "aks-linux",
        ];
        args.extend_from_slice(extra);
        let out = setup_dry_run(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    // The subjects it federates are exactly the rendered service accounts of the pods that
    // carry workload identity: the scaler's, and the agents' only in self-registration mode.
    for (docs, printed) in [
        (rendered(), printed(&[])),
        (
            tools::rendered_with_component("self-registration"),
            printed(&["--self-registration"]),
        ),
    ] {
        for (name, template) in pod_templates(&docs) {
            let sa = template["spec"]["serviceAccountName"].as_str().unwrap();
            let account = find(&docs, "ServiceAccount", sa);
            let subject = format!(
                "system:serviceaccount:{}:{sa}",
                account["metadata"]["namespace"].as_str().unwrap()
            );
            let federated = printed.contains(&format!("--subject {subject}"));
            let holds_identity =
                template["metadata"]["labels"]["azure.workload.identity/use"] == "true";
            assert_eq!(federated, holds_identity, "{name}: {subject}:\n{printed}");
        }
    }
    let printed = printed(&[]);
    assert!(
        printed.contains("federated-credential delete --name ado-agents-ado-agent"),
        "{printed}"
    );
    assert!(printed.contains("--audiences api://AzureADTokenExchange"));
    assert!(
        printed.contains("serviceprincipalentitlements"),
        "adds the identity to the organisation"
    );
    assert!(
        printed.contains("distributedtask.agentpoolrole"),
        "gives it a role on the pool"
    );

    let bad = setup_dry_run(&["--pool", "p", "--org", "https://example.com/x"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--org must look like"));
}

#[test]
fn dashboard_config_map_carries_the_dashboard() {
    let docs = rendered();
    let map = find(&docs, "ConfigMap", "ado-scaler-dashboard");
    assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
    let file = std::fs::read_to_string(root().join("dashboards/ado-scaler.json")).unwrap();
    assert_eq!(map["data"]["ado-scaler.json"].as_str().unwrap(), file);
}

#[test]
fn alerts_pass_promtool_and_each_is_unit_tested() {
    let docs = rendered();
    let rule = find(&docs, "PrometheusRule", "ado-scaler");
    let dir = std::env::temp_dir().join(format!("ado-scaler-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let groups = serde_json::json!({ "groups": rule["spec"]["groups"] });
    std::fs::write(
        dir.join("rules.yaml"),
        serde_yaml_ng::to_string(&groups).unwrap(),
    )
    .unwrap();
    let tests = std::fs::read_to_string(root().join("deploy/monitoring/alerts.test.yaml")).unwrap();
    std::fs::write(dir.join("alerts.test.yaml"), &tests).unwrap();

    run("promtool", &["check", "rules", "rules.yaml"], &dir);
    run("promtool", &["test", "rules", "alerts.test.yaml"], &dir);

    let alerts: Vec<&Value> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(alerts.len(), 16);
    let settings = &find(&docs, "ConfigMap", "ado-scaler-settings")["data"];
    let base = settings["runbookBaseURL"].as_str().unwrap();
    // GitHub's anchors: a heading, lower-cased.
    let runbooks = std::fs::read_to_string(root().join("docs/runbooks.md")).unwrap();
    let anchors: Vec<String> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_lowercase())
        .collect();
    assert_eq!(anchors.len(), alerts.len(), "one section per alert");
    for alert in alerts {
        let name = alert["alert"].as_str().unwrap();
        let annotations = &alert["annotations"];
        assert!(
            annotations["runbook"].is_null(),
            "{name}: runbook_url, not runbook"
        );
        let url = annotations["runbook_url"].as_str().unwrap();
        let anchor = url
            .strip_prefix(&format!("{base}#"))
            .unwrap_or_else(|| panic!("{name}: {url} is not under {base}"));
        assert_eq!(anchor, name.to_lowercase(), "{name} links its own section");
        assert!(
            anchors.iter().any(|a| a == anchor),
            "{name}: no section #{anchor}"
        );
        assert!(
            annotations["summary"]
                .as_str()
                .is_some_and(|s| s.len() > 20),
            "{name} has a summary"
        );
        assert!(
            tests.contains(&format!("alertname: {name}")),
            "{name} is unit-tested"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

fn env_of<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("{name} not set"))
}

#[test]
fn the_collector_is_configured_from_the_settings_with_exactly_its_rights() {
    let docs = rendered();
    let deployment = find(&docs, "Deployment", "ado-scaler");
    let scaler_ns = deployment["metadata"]["namespace"].as_str().unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let job = find(&docs, "ScaledJob", "ado-agent");
    let agents_ns = job["metadata"]["namespace"].as_str().unwrap();
    let settings = &find(&docs, "ConfigMap", "ado-scaler-settings")["data"];
    let value = |n: &str| env_of(container, n)["value"].as_str().unwrap().to_owned();

    assert_eq!(value("ADO_SCALER_GC"), "true");
    assert_eq!(value("ADO_SCALER_GC_NAMESPACE"), agents_ns);
    // Exactly the ScaledJob's agents, in the one pool the settings name.
    assert_eq!(
        value("ADO_SCALER_GC_AGENT_PREFIX"),
        job["spec"]["triggers"][0]["metadata"]["agentNamePrefix"]
            .as_str()
            .unwrap()
    );
    assert_eq!(
        value("ADO_SCALER_GC_POOLS"),
        format!(
            "{}={}",
            settings["organizationURL"].as_str().unwrap(),
            settings["poolName"].as_str().unwrap()
        )
    );
    assert_eq!(
        env_of(container, "ADO_SCALER_GC_LEASE_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(
        env_of(container, "ADO_SCALER_GC_LEASE_IDENTITY")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    // The scaler's pod mounts an API token; the agents' pods never do.
    assert_eq!(pod["automountServiceAccountToken"], true);
    assert_eq!(
        job["spec"]["jobTargetRef"]["template"]["spec"]["automountServiceAccountToken"],
        false
    );

    // Rights: namespaced Roles only (but the registrar's TokenReviews, in
    // the_default_agent_pod_holds_no_credential), no wildcard, no delete; pods read in the
    // agents' namespace, the one Lease in the scaler's; the registrar's reads and its own
    // Secret and ConfigMap.
    let cluster_roles: Vec<&str> = docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole")
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(cluster_roles, ["ado-scaler-registrar-tokenreviews"]);
    for binding in docs.iter().filter(|d| d["kind"] == "RoleBinding") {
        assert_eq!(binding["subjects"].as_array().unwrap().len(), 1);
        assert_eq!(binding["subjects"][0]["name"], "ado-scaler");
        assert_eq!(binding["subjects"][0]["namespace"], scaler_ns);
        assert_eq!(binding["roleRef"]["kind"], "Role");
    }
    let mut granted = std::collections::BTreeSet::new();
    for rule in tools::role_rules(&docs, "ado-scaler") {
        for verb in &rule.verbs {
            granted.insert(format!(
                "{} {}/{} {verb} {:?}",
                rule.namespace, rule.api_group, rule.resource, rule.resource_names
            ));
        }
    }
    let expected: std::collections::BTreeSet<String> = [
        format!("{agents_ns} /pods get []"),
        format!("{agents_ns} /pods list []"),
        format!("{agents_ns} /pods watch []"),
        format!("{scaler_ns} coordination.k8s.io/leases create []"),
        format!("{scaler_ns} coordination.k8s.io/leases get [\"ado-scaler-gc\"]"),
        format!("{scaler_ns} coordination.k8s.io/leases update [\"ado-scaler-gc\"]"),
        format!("{agents_ns} batch/jobs get []"),
        format!("{agents_ns} keda.sh/scaledjobs get []"),
        format!("{agents_ns} /configmaps create []"),
        format!("{agents_ns} /configmaps get [\"ado-scaler-registrar-ca\"]"),
        format!("{agents_ns} /configmaps update [\"ado-scaler-registrar-ca\"]"),
        format!("{scaler_ns} /secrets create []"),
        format!("{scaler_ns} /secrets get [\"ado-scaler-registrar-tls\"]"),
        format!("{scaler_ns} /secrets update [\"ado-scaler-registrar-tls\"]"),
    ]
    .into_iter()
    .collect();
    assert_eq!(granted, expected);
}

/// The scaler as deploy/ configures it serves exactly deploy/'s ScaledJob: its namespace and
/// its pool (the same settings as the collector's), and refuses a ScaledJob elsewhere or a
/// trigger for another pool. Judged by serve's own flag parsing and access policy.
#[test]
fn the_scaler_serves_only_the_scaled_jobs_namespace_and_pool() {
    use clap::Parser;
    use std::collections::HashMap;

    let docs = rendered();
    let container =
        &find(&docs, "Deployment", "ado-scaler")["spec"]["template"]["spec"]["containers"][0];
    let value = |n: &str| env_of(container, n)["value"].as_str().unwrap().to_owned();
    assert_eq!(
        value("ADO_SCALER_ALLOWED_POOLS"),
        value("ADO_SCALER_GC_POOLS")
    );
    let argv = [
        "ado-scaler".to_owned(),
        "serve".into(),
        "--allowed-orgs".into(),
        value("ADO_SCALER_ALLOWED_ORGS"),
        "--allowed-namespaces".into(),
        value("ADO_SCALER_ALLOWED_NAMESPACES"),
        "--allowed-pools".into(),
        value("ADO_SCALER_ALLOWED_POOLS"),
        "--max-pools".into(),
        value("ADO_SCALER_MAX_POOLS"),
    ];
    let ado_scaler::cli::Command::Serve(serve) = ado_scaler::cli::Cli::parse_from(argv).command
    else {
        unreachable!("parsed serve");
    };
    let access = serve.access.access().unwrap();
    assert_eq!(serve.access.max_pools().unwrap(), 50);

    let job = find(&docs, "ScaledJob", "ado-agent");
    let namespace = job["metadata"]["namespace"].as_str().unwrap();
    let meta: HashMap<String, String> = job["spec"]["triggers"][0]["metadata"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    let trigger = access.admit(namespace, &meta).unwrap();
    assert_eq!(trigger.pool.label(), meta["poolName"]);

    let err = access.admit("team-b", &meta).unwrap_err();
    assert_eq!(err.reason(), "namespace_not_allowed");
    let mut other_pool = meta.clone();
    other_pool.insert("poolName".into(), "gpu".into());
    let err = access.admit(namespace, &other_pool).unwrap_err();
    assert_eq!(err.reason(), "pool_not_allowed");

    // Editing the settings' pool moves the scaler's allowed pool with it.
    let tree = edited_copy(
        "allowed-pool",
        &[("poolName=aks-linux", "poolName=gpu-pool")],
    );
    let docs = tools::rendered_in(&tree);
    let container =
        &find(&docs, "Deployment", "ado-scaler")["spec"]["template"]["spec"]["containers"][0];
    assert!(
        env_of(container, "ADO_SCALER_ALLOWED_POOLS")["value"]
            .as_str()
            .unwrap()
            .ends_with("=gpu-pool")
    );
    let _ = std::fs::remove_dir_all(&tree);
}

#[test]
fn network_policies_admit_keda_and_prometheus_and_reach_only_dns_and_https() {
    // (The registrar's port from the agents' namespace: the_default_agent_pod_holds_no_credential.)
    let docs = rendered();
    let settings = &find(&docs, "ConfigMap", "ado-scaler-settings")["data"];
    let policy = &find(&docs, "NetworkPolicy", "ado-scaler")["spec"];
    assert_eq!(
        policy["policyTypes"],
        serde_json::json!(["Ingress", "Egress"])
    );
    let from = |i: usize| {
        (
            policy["ingress"][i]["from"][0]["namespaceSelector"]["matchLabels"]
                ["kubernetes.io/metadata.name"]
                .clone(),
            policy["ingress"][i]["ports"].clone(),
        )
    };
    assert_eq!(
        from(0),
        (
            settings["kedaNamespace"].clone(),
            serde_json::json!([{ "port": 9090, "protocol": "TCP" }])
        )
    );
    assert_eq!(
        from(1),
        (
            settings["monitoringNamespace"].clone(),
            serde_json::json!([{ "port": 8080, "protocol": "TCP" }])
        )
    );
    // The third: the registrar's port from the agents' namespace.
    assert_eq!(policy["ingress"].as_array().unwrap().len(), 3);
    // Egress: DNS both ways, then 443 to anywhere (Entra, Azure DevOps, the API server).
    assert_eq!(
        policy["egress"],
        serde_json::json!([
            { "ports": [{ "port": 53, "protocol": "UDP" }, { "port": 53, "protocol": "TCP" }] },
            { "ports": [{ "port": 443, "protocol": "TCP" }] },
        ])
    );

    let agents = find(&docs, "NetworkPolicy", "ado-agents-deny-ingress");
    assert_eq!(agents["metadata"]["namespace"], "ado-agents");
    assert_eq!(agents["spec"]["podSelector"], serde_json::json!({}));
    assert_eq!(
        agents["spec"]["policyTypes"],
        serde_json::json!(["Ingress"])
    );
    assert!(
        agents["spec"]["ingress"].is_null(),
        "no ingress rule: all denied"
    );

    for kind in ["ServiceMonitor", "PrometheusRule"] {
        assert_eq!(
            find(&docs, kind, "ado-scaler")["metadata"]["labels"]["release"],
            settings["prometheusRelease"],
            "{kind}"
        );
    }
}

/// Every leaf of a document as `path = value`.
fn leaves(value: &Value, path: String, out: &mut std::collections::BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                leaves(v, format!("{path}.{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                leaves(v, format!("{path}[{i}]"), out);
            }
        }
        other => {
            out.insert(format!("{path} = {other}"));
        }
    }
}

fn all_leaves(docs: &[Value]) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for d in docs {
        let id = format!(
            "{}/{}",
            d["kind"].as_str().unwrap_or("?"),
            d["metadata"]["name"].as_str().unwrap_or("?")
        );
        leaves(d, id, &mut out);
    }
    out
}

/// Changing one setting in a copy of deploy/ changes exactly the fields it should.
#[test]
fn each_setting_changes_exactly_its_targets() {
    let original = all_leaves(&rendered());
    let cases: [(&str, &str, &[&str]); 3] = [
        (
            "kedaNamespace=keda",
            "kedaNamespace=kube-system",
            &[
                "ConfigMap/ado-scaler-settings.data.kedaNamespace",
                "NetworkPolicy/ado-scaler.spec.ingress[0].from[0].namespaceSelector.matchLabels.kubernetes.io/metadata.name",
            ],
        ),
        (
            "monitoringNamespace=monitoring",
            "monitoringNamespace=observability",
            &[
                "ConfigMap/ado-scaler-settings.data.monitoringNamespace",
                "NetworkPolicy/ado-scaler.spec.ingress[1].from[0].namespaceSelector.matchLabels.kubernetes.io/metadata.name",
            ],
        ),
        (
            "prometheusRelease=kube-prometheus-stack",
            "prometheusRelease=prom",
            &[
                "ConfigMap/ado-scaler-settings.data.prometheusRelease",
                "ServiceMonitor/ado-scaler.metadata.labels.release",
                "PrometheusRule/ado-scaler.metadata.labels.release",
            ],
        ),
    ];
    for (from, to, targets) in cases {
        let tree = edited_copy(to.split('=').next().unwrap(), &[(from, to)]);
        let changed = all_leaves(&tools::rendered_in(&tree));
        let value = to.split('=').nth(1).unwrap();
        let gone: Vec<&String> = original.difference(&changed).collect();
        let added: std::collections::BTreeSet<String> =
            changed.difference(&original).cloned().collect();
        let expected: std::collections::BTreeSet<String> = targets
            .iter()
            .map(|t| format!("{t} = \"{value}\""))
            .collect();
        assert_eq!(added, expected, "{to}");
        assert_eq!(gone.len(), targets.len(), "{to}: {gone:?}");
        let _ = std::fs::remove_dir_all(&tree);
    }
}

/// kubernetes-validate, pinned in the project's virtualenv by scripts/install-test-deps.sh.
fn kubernetes_validate() -> std::path::PathBuf {
    let tool = root().join(".test-deps/venv/bin/kubernetes-validate");
    assert!(
        tool.exists(),
        "kubernetes-validate is not installed: run scripts/install-test-deps.sh (scripts/test does)"
    );
    tool
}

/// Validates `yaml` against the Kubernetes 1.33 OpenAPI schemas, unknown fields rejected.
/// Returns (success, output); kinds without a schema in the tool are listed separately.
fn validate_core(yaml: &str, name: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("ado-scaler-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(name);
    std::fs::write(&file, yaml).unwrap();
    let out = std::process::Command::new(kubernetes_validate())
        .args(["--strict", "--kubernetes-version", "1.33.0", "--no-warn"])
        .arg(&file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(&file);
    (out.status.success(), text)
}

/// Every rendered core object against the Kubernetes 1.33 schemas, unknown fields rejected;
/// and a planted unknown field fails, so the check is real.
#[test]
fn rendered_core_objects_match_the_kubernetes_schemas() {
    let yaml = run("kubectl", &["kustomize", "deploy/"], root());
    let (ok, out) = validate_core(&yaml, "rendered.yaml");
    assert!(ok, "{out}");
    let docs = rendered();
    let core: Vec<String> = docs
        .iter()
        .filter(|d| !is_custom(d))
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap().to_lowercase(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert!(core.len() >= 15, "{core:?}");
    for object in &core {
        assert!(
            out.contains(&format!("passed for resource {object} ")),
            "{object} was not validated:\n{out}"
        );
    }

    let planted = yaml.replacen(
        "      serviceAccountName: ado-scaler\n",
        "      serviceAccountName: ado-scaler\n      serviceAcountName: typo\n",
        1,
    );
    assert_ne!(planted, yaml);
    let (ok, out) = validate_core(&planted, "planted.yaml");
    assert!(!ok, "a planted unknown field passed:\n{out}");
    assert!(out.contains("'serviceAcountName' was unexpected"), "{out}");
}

/// Validates custom resources with tests/schemas/validate.mjs against KEDA's and
/// prometheus-operator's published models, unknown fields rejected. Returns (success, output).
fn validate_custom(docs: &[Value], name: &str) -> (bool, String) {
    let deps = root().join(".test-deps/schemas");
    assert!(
        deps.join("node_modules/typescript").exists(),
        "the custom resources' validators are not installed: run scripts/install-test-deps.sh \
         (scripts/test does)"
    );
    let dir = std::env::temp_dir().join(format!("ado-scaler-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(name);
    std::fs::write(&file, serde_json::to_vec(docs).unwrap()).unwrap();
    let out = std::process::Command::new("node")
        .arg(root().join("tests/schemas/validate.mjs"))
        .arg(&deps)
        .arg(&file)
        .output()
        .expect("node (scripts/install-test-deps.sh installs it)");
    let _ = std::fs::remove_file(&file);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn is_custom(doc: &Value) -> bool {
    doc["apiVersion"].as_str().is_some_and(|v| {
        ["keda.sh/", "monitoring.coreos.com/", "cert-manager.io/"]
            .iter()
            .any(|group| v.starts_with(group))
    })
}

/// The ScaledJob against KEDA's models (and its Job template against the Kubernetes 1.33
/// schema as well), the ServiceMonitor and PrometheusRule against prometheus-operator's;
/// unknown fields rejected at every depth, and planted mistakes each named by their path.
#[test]
fn rendered_custom_resources_match_their_projects_schemas() {
    let custom: Vec<Value> = rendered().into_iter().filter(is_custom).collect();
    let (ok, out) = validate_custom(&custom, "custom.json");
    assert!(ok, "{out}");
    let mut validated: Vec<&str> = out.lines().filter(|l| l.starts_with("ok ")).collect();
    validated.sort_unstable();
    assert_eq!(
        validated,
        [
            "ok PrometheusRule/ado-scaler",
            "ok ScaledJob/ado-agent",
            "ok ServiceMonitor/ado-scaler"
        ],
        "{out}"
    );

    let scaled_job = custom.iter().find(|d| d["kind"] == "ScaledJob").unwrap();
    let job = serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "ado-agent-template", "namespace": "ado-agents"},
        "spec": scaled_job["spec"]["jobTargetRef"],
    });
    let (ok, out) = validate_core(&serde_json::to_string(&job).unwrap(), "job.json");
    assert!(ok, "{out}");
    assert!(
        out.contains("passed for resource job/ado-agent-template"),
        "{out}"
    );

    let mut planted = custom.clone();
    for doc in &mut planted {
        match doc["kind"].as_str().unwrap() {
            "ScaledJob" => {
                let spec = &mut doc["spec"];
                spec["pollingIntreval"] = 5.into();
                spec["jobTargetRef"]["bakoffLimit"] = 0.into();
                spec["jobTargetRef"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] =
                    "Always".into();
                spec["maxReplicaCount"] = "10".into();
            }
            "ServiceMonitor" => doc["spec"]["endpoints"][0]["intervall"] = "30s".into(),
            _ => {}
        }
    }
    let (ok, out) = validate_custom(&planted, "planted.json");
    assert!(!ok, "planted mistakes passed:\n{out}");
    for path in [
        "spec.pollingIntreval: Object literal may only specify known properties",
        "spec.jobTargetRef.bakoffLimit: Object literal may only specify known properties",
        "spec.jobTargetRef.template.spec.containers.0.imagePullPolicyy: Object literal",
        "spec.maxReplicaCount must be integer",
        "spec.endpoints.0.intervall: Object literal may only specify known properties",
    ] {
        assert!(out.contains(path), "{path} not reported:\n{out}");
    }
    assert!(out.contains("ok PrometheusRule/ado-scaler"), "{out}");
}

/// The mtls component, switched on in a copy of deploy/: the scaler serves the certificate
/// cert-manager issues for the name KEDA dials and requires clients of the same CA; KEDA's
/// trigger gets that CA and its own client certificate through a TriggerAuthentication of its
/// namespace; probes no longer use gRPC; and every object passes its schema.
#[test]
fn the_mtls_component_wires_the_scaler_keda_and_cert_manager() {
    let base = rendered();
    let scaler_env = |docs: &[Value]| -> Vec<String> {
        find(docs, "Deployment", "ado-scaler")["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(
        !scaler_env(&base)
            .iter()
            .any(|n| n.starts_with("ADO_SCALER_TLS"))
    );

    let tree = edited_copy(
        "mtls",
        &[
            ("# components:\n#   - mtls\n", "components:\n  - mtls\n"),
            (
                "certManagerNamespace=cert-manager",
                "certManagerNamespace=certs",
            ),
        ],
    );
    let docs = tools::rendered_in(&tree);
    let env = scaler_env(&docs);
    for name in scaler_env(&base) {
        assert!(env.contains(&name), "{name} lost");
    }

    // The scaler: its files from the server certificate's Secret.
    let deployment = find(&docs, "Deployment", "ado-scaler");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let value = |name: &str| {
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
            .unwrap_or_else(|| panic!("{name} not set"))
            .to_owned()
    };
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "grpc-tls")
        .unwrap();
    let dir = mount["mountPath"].as_str().unwrap();
    assert_eq!(mount["readOnly"], true);
    for (variable, file) in [
        ("ADO_SCALER_TLS_CERT", "tls.crt"),
        ("ADO_SCALER_TLS_KEY", "tls.key"),
        ("ADO_SCALER_TLS_CLIENT_CA", "ca.crt"),
    ] {
        assert_eq!(value(variable), format!("{dir}/{file}"));
    }
    let secret = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "grpc-tls")
        .unwrap()["secret"]["secretName"]
        .as_str()
        .unwrap();
    for probe in ["readinessProbe", "livenessProbe"] {
        assert!(container[probe]["grpc"].is_null(), "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], "http", "{probe}");
    }

    // The server certificate: in that Secret, for the host KEDA dials, from the CA issuer.
    let certificates: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Certificate").collect();
    let issued_into = |namespace: &str, secret: &str| {
        *certificates
            .iter()
            .find(|c| c["metadata"]["namespace"] == namespace && c["spec"]["secretName"] == secret)
            .unwrap_or_else(|| panic!("no Certificate for {namespace}/{secret}"))
    };
    let server = issued_into("ado-scaler", secret);
    let scaled_job = find(&docs, "ScaledJob", "ado-agent");
    let trigger = &scaled_job["spec"]["triggers"][0];
    let host = trigger["metadata"]["scalerAddress"]
        .as_str()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .0;
    assert!(
        server["spec"]["dnsNames"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == host),
        "{host} not in {server}"
    );
    assert!(
        server["spec"]["usages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u == "server auth")
    );
    let issuer = server["spec"]["issuerRef"]["name"].as_str().unwrap();
    let ca_issuer = find(&docs, "ClusterIssuer", issuer);
    let ca_secret = ca_issuer["spec"]["ca"]["secretName"].as_str().unwrap();
    let ca = issued_into("certs", ca_secret);
    assert_eq!(
        ca["spec"]["isCA"], true,
        "the CA lives in certManagerNamespace"
    );

    // KEDA: TLS on, the TriggerAuthentication of its namespace, fed from its own certificate.
    assert_eq!(trigger["metadata"]["enableTLS"], "true");
    let auth_name = trigger["authenticationRef"]["name"].as_str().unwrap();
    let auth = find(&docs, "TriggerAuthentication", auth_name);
    let namespace = scaled_job["metadata"]["namespace"].as_str().unwrap();
    assert_eq!(auth["metadata"]["namespace"], namespace);
    let refs = auth["spec"]["secretTargetRef"].as_array().unwrap();
    let mut parameters: Vec<(String, String)> = Vec::new();
    for r in refs {
        let client = issued_into(namespace, r["name"].as_str().unwrap());
        assert_eq!(client["spec"]["issuerRef"]["name"], issuer, "the same CA");
        assert!(
            client["spec"]["usages"]
                .as_array()
                .unwrap()
                .iter()
                .any(|u| u == "client auth")
        );
        parameters.push((
            r["parameter"].as_str().unwrap().into(),
            r["key"].as_str().unwrap().into(),
        ));
    }
    parameters.sort();
    assert_eq!(
        parameters,
        [
            ("caCert".to_owned(), "ca.crt".to_owned()),
            ("tlsClientCert".into(), "tls.crt".into()),
            ("tlsClientKey".into(), "tls.key".into()),
        ]
    );

    // Every object against its schema.
    let yaml = run("kubectl", &["kustomize", "deploy/"], &tree);
    let (ok, out) = validate_core(&yaml, "mtls.yaml");
    assert!(ok, "{out}");
    let custom: Vec<Value> = docs.into_iter().filter(is_custom).collect();
    let (ok, out) = validate_custom(&custom, "mtls.json");
    assert!(ok, "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok ")).count(),
        custom.len(),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&tree);
}

/// A rollout never leaves KEDA without a serving replica: one new replica first, none taken
/// away before it is ready, and voluntary disruptions (a node drain) keep one.
#[test]
fn rollouts_and_drains_keep_a_replica_serving() {
    let docs = rendered();
    let deployment = find(&docs, "Deployment", "ado-scaler");
    let spec = &deployment["spec"];
    assert!(spec["replicas"].as_i64().unwrap() >= 2);
    assert_eq!(spec["strategy"]["type"], "RollingUpdate");
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxSurge"], 1);
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    let pod = &spec["template"]["spec"];
    // The drain (4 s) fits in the grace period, with time for the process to start stopping.
    assert!(pod["terminationGracePeriodSeconds"].as_i64().unwrap() >= 10);
    assert!(!pod["containers"][0]["readinessProbe"].is_null());
    let pdb = find(&docs, "PodDisruptionBudget", "ado-scaler");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert!(labels_match(
        &pdb["spec"]["selector"]["matchLabels"],
        &spec["template"]["metadata"]["labels"]
    ));
}

/// The mtls component lets the scaler refresh exactly the ScaledJob it renders, reading its
/// TriggerAuthentication and the Certificates of its namespace, and nothing else there.
#[test]
fn the_mtls_component_lets_the_scaler_refresh_only_its_scaledjob() {
    let docs = tools::rendered_with_mtls();
    let scaled_job = find(&docs, "ScaledJob", "ado-agent");
    let namespace = scaled_job["metadata"]["namespace"].as_str().unwrap();
    let container =
        &find(&docs, "Deployment", "ado-scaler")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        env_of(container, "ADO_SCALER_REFRESH_SCALEDJOBS")["value"],
        format!("{namespace}/ado-agent")
    );
    let auth = scaled_job["spec"]["triggers"][0]["authenticationRef"]["name"]
        .as_str()
        .unwrap();
    let mut granted: Vec<(String, String, Vec<String>, Vec<String>)> =
        tools::role_rules(&docs, "ado-scaler")
            .into_iter()
            // Beside the collector's pods and the registrar's rights (its own tests).
            .filter(|r| {
                r.namespace == namespace
                    && !["pods", "jobs", "configmaps"].contains(&r.resource.as_str())
                    && !(r.resource == "scaledjobs" && r.resource_names.is_empty())
            })
            .map(|r| (r.api_group, r.resource, r.verbs, r.resource_names))
            .collect();
    granted.sort();
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        granted,
        [
            (
                "cert-manager.io".to_owned(),
                "certificates".to_owned(),
                strings(&["list"]),
                vec![]
            ),
            (
                "keda.sh".into(),
                "scaledjobs".into(),
                strings(&["get", "patch"]),
                strings(&["ado-agent"])
            ),
            (
                "keda.sh".into(),
                "triggerauthentications".into(),
                strings(&["get"]),
                strings(&[auth])
            ),
        ]
    );
    // Without the component, no such right: only the registrar's reading of ScaledJobs.
    assert!(
        tools::role_rules(&rendered(), "ado-scaler")
            .iter()
            .all(|r| {
                r.api_group != "cert-manager.io"
                    && (r.api_group != "keda.sh"
                        || (r.resource == "scaledjobs"
                            && r.verbs == ["get"]
                            && r.resource_names.is_empty()))
            })
    );
}

/// Just-in-time registration as rendered: the token for the registrar (audience ado-scaler,
/// ten minutes, bound to the pod) is mounted in the init container alone; the agent container
/// has no identity label, no token volume, no AZURE_* variable and no federated token path;
/// the registrar is reachable from the agents' namespace on its port and nothing else of the
/// scaler is; the scaler's only cluster-scoped right is creating TokenReviews.
#[test]
fn the_default_agent_pod_holds_no_credential() {
    let docs = rendered();
    let job = find(&docs, "ScaledJob", "ado-agent");
    let pod = &job["spec"]["jobTargetRef"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    let volumes = pod["volumes"].as_array().unwrap();
    let token_volume = volumes
        .iter()
        .find(|v| v["projected"].is_object())
        .expect("the projected token");
    let token = &token_volume["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(token["audience"], "ado-scaler");
    assert_eq!(token["expirationSeconds"], 600);
    let mounts = |c: &Value| -> Vec<String> {
        c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| m["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let token_name = token_volume["name"].as_str().unwrap();
    assert!(mounts(&pod["initContainers"][0]).contains(&token_name.to_owned()));
    let agent = &pod["containers"][0];
    assert_eq!(pod["containers"].as_array().unwrap().len(), 1);
    assert!(!mounts(agent).contains(&token_name.to_owned()));
    let text = serde_json::to_string(agent).unwrap();
    for forbidden in [
        "AZURE_",
        "azure-identity-token",
        "/var/run/secrets",
        "AZP_TOKEN",
    ] {
        assert!(
            !text.contains(forbidden),
            "the agent container shows {forbidden}: {text}"
        );
    }
    // The CA the init container trusts is the ConfigMap the scaler publishes.
    let ca = volumes.iter().find(|v| v["configMap"].is_object()).unwrap();
    assert_eq!(ca["configMap"]["name"], "ado-scaler-registrar-ca");

    let policy = find(&docs, "NetworkPolicy", "ado-scaler");
    let from_agents: Vec<&Value> = policy["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|rule| {
            rule["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                == job["metadata"]["namespace"]
        })
        .collect();
    assert_eq!(from_agents.len(), 1);
    assert_eq!(
        from_agents[0]["ports"],
        serde_json::json!([{ "port": 9443, "protocol": "TCP" }])
    );

    let cluster_rules: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole")
        .flat_map(|d| d["rules"].as_array().unwrap())
        .collect();
    assert_eq!(
        cluster_rules,
        [&serde_json::json!({
            "apiGroups": ["authentication.k8s.io"],
            "resources": ["tokenreviews"],
            "verbs": ["create"],
        })]
    );
    let registrar_rules = tools::role_rules(&docs, "ado-scaler");
    for (group, resource) in [("batch", "jobs"), ("keda.sh", "scaledjobs")] {
        let rule = registrar_rules
            .iter()
            .find(|r| r.api_group == group && r.resource == resource)
            .unwrap_or_else(|| panic!("{resource}"));
        assert_eq!(rule.verbs, ["get"], "{resource}");
        assert_eq!(rule.namespace, "ado-agents");
    }
    for rule in registrar_rules
        .iter()
        .filter(|r| r.resource == "secrets" || r.resource == "configmaps")
    {
        assert!(
            rule.verbs == ["create"] || rule.resource_names.len() == 1,
            "{rule:?}"
        );
    }
}

/// With the mtls component the registrar serves cert-manager's certificate, and the init
/// container trusts that CA: the `ca.crt` of KEDA's client Secret, and no other key of it.
#[test]
fn with_mtls_the_init_container_trusts_cert_managers_ca_alone() {
    let docs = tools::rendered_with_mtls();
    let pod = &find(&docs, "ScaledJob", "ado-agent")["spec"]["jobTargetRef"]["template"]["spec"];
    let ca = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "registrar-ca")
        .unwrap();
    assert_eq!(
        ca["secret"],
        serde_json::json!({
            "secretName": "ado-agent-keda-client",
            "items": [{ "key": "ca.crt", "path": "ca.crt" }],
        })
    );
    let container =
        &find(&docs, "Deployment", "ado-scaler")["spec"]["template"]["spec"]["containers"][0];
    assert!(env_of(container, "ADO_SCALER_TLS_CERT")["value"].is_string());
}

/// The old mode as a component: the token exchange, `config.sh` and the pod's own
/// deregistration, with the agents' workload identity.
#[test]
fn the_self_registration_component_restores_the_token_exchange() {
    let docs = tools::rendered_with_component("self-registration");
    let settings = &find(&docs, "ConfigMap", "ado-scaler-settings")["data"];
    let job = find(&docs, "ScaledJob", "ado-agent");
    let template = &job["spec"]["jobTargetRef"]["template"];
    assert_eq!(
        template["metadata"]["labels"]["azure.workload.identity/use"],
        "true"
    );
    let pod = &template["spec"];
    assert!(pod["initContainers"].is_null() && pod["volumes"].is_null());
    let agent = &pod["containers"][0];
    assert_eq!(
        env_of(agent, "AZP_URL")["value"],
        settings["organizationURL"]
    );
    assert_eq!(env_of(agent, "AZP_POOL")["value"], settings["poolName"]);
    assert!(
        agent["env"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["name"] != "AZP_CONFIG_DIR")
    );
    let account = find(&docs, "ServiceAccount", "ado-agent");
    assert_eq!(
        account["metadata"]["annotations"]["azure.workload.identity/client-id"],
        settings["azureClientID"]
    );
}
