//! Leader election on a `coordination.k8s.io/v1` Lease, with client-go's rules: update with
//! the `resourceVersion` just read (a 409 means someone else wrote first), judge another
//! holder's lease expired only after seeing its record unchanged for a whole lease duration
//! on our own clock (no trust in other nodes' clocks), step down when renewals have failed
//! for `renew_deadline` (shorter than the lease, so that we stop before anyone may take
//! over), and on shutdown hand the lease back so that another replica takes it at once.
//!
//! Hand-written over `kube`'s typed API: `kube-lease-manager` writes with server-side apply
//! (needs the `patch` verb and is not the get/update protocol other controllers use), and
//! `kube-leader-election` patches without a `resourceVersion`, so two replicas can both win.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{Api, Client, api::PostParams};
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

use super::api_error;
use crate::error::Result;

/// Timing of the election; the defaults are client-go's, with a faster renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a holder's lease lasts after its last renewal.
    pub duration: Duration,
    /// How often the holder renews, and candidates try.
    pub renew_every: Duration,
    /// A holder whose renewals failed this long steps down; must be shorter than `duration`.
    pub renew_deadline: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(2),
            renew_deadline: Duration::from_secs(10),
        }
    }
}

/// One candidate for one Lease.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// Unique among candidates: the pod name.
    pub identity: String,
    pub timing: LeaseTiming,
}

/// The outcome of one try.
enum Attempt {
    Held(bool),
    /// Someone wrote the Lease between our read and our write.
    Conflict,
}

pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The last record read and when it was first seen (our clock).
    observed: Option<(LeaseSpec, Instant)>,
    /// When the last successful renewal was sent.
    renewed_at: Option<Instant>,
}

impl Elector {
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
            renewed_at: None,
        }
    }

    /// Campaigns until `shutdown`, publishing whether we lead on `leader`; then releases the
    /// lease if we hold it.
    pub async fn run(mut self, leader: watch::Sender<bool>, shutdown: CancellationToken) {
        let timing = self.settings.timing;
        let mut ticker = tokio::time::interval(timing.renew_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures_logged = false;
        loop {
            let step_down_at = self.step_down_at();
            tokio::select! {
                _ = ticker.tick() => {}
                () = sleep_until(step_down_at) => {
                    self.step_down(&leader, "renewals failed for the renew deadline");
                    continue;
                }
                () = shutdown.cancelled() => break,
            }
            let started = Instant::now();
            let limit = step_down_at.map_or(started + timing.renew_deadline, |at| {
                at.min(started + timing.renew_deadline)
            });
            let attempt = tokio::select! {
                a = tokio::time::timeout_at(limit, self.try_acquire_or_renew()) => a,
                () = shutdown.cancelled() => break,
            };
            match attempt {
                Ok(Ok(true)) => {
                    self.renewed_at = Some(started);
                    failures_logged = false;
                    if !*leader.borrow() {
                        tracing::info!(lease = %self.settings.name, namespace = %self.settings.namespace, identity = %self.settings.identity, "acquired the lease: this replica collects");
                        leader.send_replace(true);
                    }
                }
                Ok(Ok(false)) => self.step_down(&leader, "another replica holds the lease"),
                Ok(Err(e)) if !failures_logged => {
                    tracing::warn!(lease = %self.settings.name, error = %e, "lease request failed");
                    failures_logged = true;
                }
                Ok(Err(e)) => {
                    tracing::debug!(lease = %self.settings.name, error = %e, "lease request failed")
                }
                Err(_) => tracing::warn!(lease = %self.settings.name, "lease request timed out"),
            }
        }
        if *leader.borrow() {
            leader.send_replace(false);
            self.renewed_at = None;
            match tokio::time::timeout(timing.renew_every, self.release()).await {
                Ok(Ok(())) => tracing::info!(lease = %self.settings.name, "released the lease"),
                Ok(Err(e)) => {
                    tracing::warn!(lease = %self.settings.name, error = %e, "could not release the lease; it expires by itself")
                }
                Err(_) => {
                    tracing::warn!(lease = %self.settings.name, "releasing the lease timed out; it expires by itself")
                }
            }
        }
    }

    fn step_down_at(&self) -> Option<Instant> {
        self.renewed_at
            .map(|at| at + self.settings.timing.renew_deadline)
    }

    fn step_down(&mut self, leader: &watch::Sender<bool>, why: &str) {
        self.renewed_at = None;
        if *leader.borrow() {
            tracing::warn!(lease = %self.settings.name, reason = why, "lost the lease: this replica stops collecting");
            leader.send_replace(false);
        }
    }

    /// One round: read, then create or update. A conflict is retried once at once: it may be
    /// a write that left us the holder (a label, a renewal that was applied though its answer
    /// was lost).
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool> {
        for _ in 0..2 {
            if let Attempt::Held(held) = self.attempt().await? {
                return Ok(held);
            }
        }
        Ok(false)
    }

    async fn attempt(&mut self) -> Result<Attempt> {
        let name = self.settings.name.clone();
        let current = self
            .api
            .get_opt(&name)
            .await
            .map_err(|e| api_error(&format!("get lease {name}"), e))?;
        let Some(mut lease) = current else {
            let lease = Lease {
                // The namespace comes from the URL, as for any namespaced create.
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.next_spec(None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(created.spec.unwrap_or_default());
                    Ok(Attempt::Held(true))
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Conflict),
                Err(e) => Err(api_error(&format!("create lease {name}"), e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        self.observe(spec.clone());
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let ours = holder == Some(self.settings.identity.as_str());
        if holder.is_some() && !ours && !self.observed_expired(&spec) {
            return Ok(Attempt::Held(false));
        }
        lease.spec = Some(self.next_spec(Some(&spec)));
        match self
            .api
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observe(updated.spec.unwrap_or_default());
                Ok(Attempt::Held(true))
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Conflict),
            Err(e) => Err(api_error(&format!("update lease {name}"), e)),
        }
    }

    /// Hands the lease back (no holder, a one-second duration), as client-go does on release.
    pub async fn release(&mut self) -> Result<()> {
        let name = &self.settings.name;
        let Some(mut lease) = self
            .api
            .get_opt(name)
            .await
            .map_err(|e| api_error(&format!("get lease {name}"), e))?
        else {
            return Ok(());
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        let now = MicroTime(jiff::Timestamp::now());
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(String::new()),
            lease_duration_seconds: Some(1),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: spec.lease_transitions,
            ..LeaseSpec::default()
        });
        self.api
            .replace(name, &PostParams::default(), &lease)
            .await
            .map(drop)
            .map_err(|e| api_error(&format!("release lease {name}"), e))
    }

    fn next_spec(&self, previous: Option<&LeaseSpec>) -> LeaseSpec {
        next_spec(
            &self.settings.identity,
            self.settings.timing.duration,
            previous,
            MicroTime(jiff::Timestamp::now()),
        )
    }

    fn observe(&mut self, spec: LeaseSpec) {
        if self.observed.as_ref().is_none_or(|(seen, _)| *seen != spec) {
            self.observed = Some((spec, Instant::now()));
        }
    }

    fn observed_expired(&self, spec: &LeaseSpec) -> bool {
        self.observed.as_ref().is_some_and(|(_, since)| {
            expired(spec, *since, self.settings.timing.duration, Instant::now())
        })
    }
}

/// Our record: a renewal keeps the acquire time and count, a takeover counts a transition.
fn next_spec(
    identity: &str,
    duration: Duration,
    previous: Option<&LeaseSpec>,
    now: MicroTime,
) -> LeaseSpec {
    let ours = previous.is_some_and(|p| p.holder_identity.as_deref() == Some(identity));
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)),
        acquire_time: if ours {
            previous.and_then(|p| p.acquire_time.clone())
        } else {
            Some(now.clone())
        },
        renew_time: Some(now),
        lease_transitions: Some(if ours || previous.is_none() {
            transitions
        } else {
            transitions + 1
        }),
        ..LeaseSpec::default()
    }
}

/// Whether a holder's record, unchanged since `observed_since` on our clock, has outlived its
/// own duration (ours when it states none).
fn expired(spec: &LeaseSpec, observed_since: Instant, ours: Duration, now: Instant) -> bool {
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(ours, Duration::from_secs);
    now.duration_since(observed_since) >= duration
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> MicroTime {
        MicroTime(jiff::Timestamp::from_second(1_800_000_000 + second).unwrap())
    }

    const FIFTEEN: Duration = Duration::from_secs(15);

    #[test]
    fn renewals_keep_the_record_and_takeovers_count() {
        let created = next_spec("a", FIFTEEN, None, at(0));
        assert_eq!(created.holder_identity.as_deref(), Some("a"));
        assert_eq!(created.lease_duration_seconds, Some(15));
        assert_eq!(created.acquire_time, Some(at(0)));
        assert_eq!(created.lease_transitions, Some(0));

        let renewed = next_spec("a", FIFTEEN, Some(&created), at(2));
        assert_eq!(renewed.acquire_time, Some(at(0)));
        assert_eq!(renewed.renew_time, Some(at(2)));
        assert_eq!(renewed.lease_transitions, Some(0));

        let taken = next_spec("b", FIFTEEN, Some(&renewed), at(20));
        assert_eq!(taken.holder_identity.as_deref(), Some("b"));
        assert_eq!(taken.acquire_time, Some(at(20)));
        assert_eq!(taken.lease_transitions, Some(1));

        // A released lease (no holder) taken again is a transition too, as in client-go.
        let released = LeaseSpec {
            holder_identity: Some(String::new()),
            lease_transitions: Some(4),
            ..LeaseSpec::default()
        };
        assert_eq!(
            next_spec("a", FIFTEEN, Some(&released), at(30)).lease_transitions,
            Some(5)
        );
        let huge = next_spec("a", Duration::from_secs(u64::MAX), None, at(0));
        assert_eq!(huge.lease_duration_seconds, Some(i32::MAX));
    }

    #[test]
    fn expiry_counts_the_holders_duration_on_our_clock() {
        let seen = Instant::now();
        let spec = |seconds| LeaseSpec {
            lease_duration_seconds: seconds,
            ..LeaseSpec::default()
        };
        let after = |s: u64| seen + Duration::from_secs(s);
        assert!(!expired(&spec(Some(5)), seen, FIFTEEN, after(4)));
        assert!(expired(&spec(Some(5)), seen, FIFTEEN, after(5)));
        assert!(!expired(&spec(None), seen, FIFTEEN, after(14)));
        assert!(expired(&spec(None), seen, FIFTEEN, after(15)));
        assert!(!expired(&spec(Some(-1)), seen, FIFTEEN, after(14)));
    }
}
