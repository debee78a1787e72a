//! `check` for who may make the scaler act: prints `--allowed-namespaces`, `--allowed-orgs`,
//! `--allowed-pools` and `--max-pools` as `serve` reads them, and says whether the trigger
//! `check` was given would be served, through the same [`Access::admit`] as every gRPC call.

use std::collections::HashMap;

use super::{CheckSettings, Report, Status};
use crate::scaler::{
    access::{Access, NamespaceAllowlist},
    metadata::Trigger,
};

pub const ACCESS_SETTINGS: &str = "access settings";
pub const TRIGGER_ALLOWED: &str = "trigger allowed";

/// The trigger metadata of each ScaledJob `check` was told about: one per `--capabilities`,
/// and the `--demands` one (also when nothing else is given).
fn trigger_metadata(args: &CheckSettings) -> Vec<(String, HashMap<String, String>)> {
    let base = |extra: Option<(&str, &str)>| {
        let mut meta = HashMap::from([
            ("organizationURL".to_owned(), args.org.clone()),
            ("poolName".to_owned(), args.pool.clone()),
        ]);
        if let Some(prefix) = &args.agent_name_prefix {
            meta.insert("agentNamePrefix".to_owned(), prefix.clone());
        }
        if let Some((key, value)) = extra {
            meta.insert(key.to_owned(), value.to_owned());
        }
        meta
    };
    let mut triggers: Vec<(String, HashMap<String, String>)> = args
        .capabilities
        .iter()
        .enumerate()
        .map(|(i, list)| {
            let name = if args.capabilities.len() > 1 {
                format!("--capabilities #{}", i + 1)
            } else {
                "--capabilities".to_owned()
            };
            (name, base(Some(("capabilities", list))))
        })
        .collect();
    if !args.demands.trim().is_empty() || triggers.is_empty() {
        triggers.push((
            "--demands".to_owned(),
            base(Some(("demands", &args.demands))),
        ));
    }
    triggers
}

/// Reports the settings and whether each trigger would be served; the triggers, parsed as
/// `serve` parses them, when every one would be (else `None`: the placeholder and queue
/// checks are not run for a trigger `serve` would refuse).
pub fn check_access(args: &CheckSettings, report: &mut Report) -> Option<Vec<(String, Trigger)>> {
    let (access, max_pools) = match (&args.access, &args.max_pools) {
        (Ok(access), Ok(max)) => (access, *max),
        (Err(e), _) | (_, Err(e)) => {
            report.fail(ACCESS_SETTINGS, e.clone(), "fix the flag the message names");
            return None;
        }
    };
    report.push(
        Status::Info,
        ACCESS_SETTINGS,
        format!(
            "--allowed-namespaces: {}; --allowed-pools: {}; --max-pools: {max_pools}",
            access.namespaces, access.pools
        ),
        None,
    );
    // Without --namespace, the namespace is reported, not judged.
    let judged = match &args.namespace {
        Some(_) => access.clone(),
        None => Access {
            namespaces: NamespaceAllowlist::default(),
            ..access.clone()
        },
    };
    let namespace = args.namespace.as_deref().unwrap_or_default();
    let mut admitted = Vec::new();
    let mut allowed = true;
    for (name, meta) in trigger_metadata(args) {
        match judged.admit(namespace, &meta) {
            Ok(trigger) => admitted.push((name, trigger)),
            Err(e) => {
                allowed = false;
                let title = format!("{TRIGGER_ALLOWED} ({name})");
                let fix = if e.is_refusal() {
                    "list it in the setting the message names, on the scaler's Deployment"
                } else {
                    "fix the trigger's metadata as the message says"
                };
                report.fail(&title, e.to_string(), fix);
            }
        }
    }
    if allowed {
        let within = match &args.namespace {
            Some(ns) => format!("a ScaledJob in namespace {ns}"),
            None if access.namespaces.is_open() => "a ScaledJob in any namespace".to_owned(),
            None => format!(
                "a ScaledJob in {} (pass --namespace to check one)",
                access.namespaces
            ),
        };
        report.pass(
            TRIGGER_ALLOWED,
            format!("pool {} of {}, for {within}", args.pool, args.org),
        );
    }
    allowed.then_some(admitted)
}
