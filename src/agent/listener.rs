//! Running the agent's listener for one job and stopping it the way the real agent expects.
//!
//! The listener shuts down gracefully only on SIGINT: it cancels its running job through
//! `Agent.Worker`, reports it, and exits. SIGTERM gives it 30 s at most, and a SIGTERM that
//! reaches the worker kills the job's processes without the graceful cancel (the pipeline then
//! shows a lost agent). So on SIGTERM/SIGINT this module optionally lets a running job finish
//! (`--drain-timeout`), then sends SIGINT to the `Agent.Listener` process only, waits for the
//! listener *and every process of its group*, and kills the group only at `--cancel-timeout`.

use std::{path::Path, process::Command, time::Duration};

use nix::{
    sys::signal::{Signal, kill, killpg},
    unistd::Pid,
};
use tokio::time::Instant;

use super::{
    exit_code,
    proctable::ProcTable,
    reaper::Reaper,
    signals::{Signals, signal_code},
};
use crate::error::Result;

/// How a stop request is carried out.
#[derive(Debug, Clone, Copy)]
pub struct StopPolicy {
    /// On a signal while a job runs, how long the job may go on before it is cancelled.
    pub drain: Duration,
    /// From the SIGINT to the listener until its group is killed.
    pub cancel: Duration,
    /// No job started this long after the listener came up: stop. Zero waits forever.
    pub idle: Duration,
}

/// How the listener's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The listener exited by itself (its `--once` job is done, or it failed).
    Finished,
    /// A stop was requested while a job ran, and the job finished within the drain.
    Drained,
    /// The listener was interrupted and exited within the cancel timeout.
    Cancelled,
    /// No job came; the listener was interrupted and exited.
    Idle,
    /// The listener's group was still there at the cancel timeout and was killed.
    Killed,
}

impl Ending {
    pub fn as_str(self) -> &'static str {
        match self {
            Ending::Finished => "finished",
            Ending::Drained => "drained",
            Ending::Cancelled => "cancelled",
            Ending::Idle => "idle",
            Ending::Killed => "killed",
        }
    }
}

/// Why we stopped the listener, if we did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    None,
    Signal(Signal),
    Idle,
}

/// What happened to the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub ending: Ending,
    pub cause: Cause,
    /// The listener's own exit code (absent if it never exited by itself).
    pub listener_code: Option<u8>,
    /// Whether a job (an `Agent.Worker`) was ever seen.
    pub job_seen: bool,
}

impl Outcome {
    /// The listener's code when it ended by itself (a drained job included), 128 + signal when
    /// we stopped it because of a signal, 0 when no job came.
    pub fn exit_code(&self) -> u8 {
        match (self.ending, self.cause) {
            (Ending::Finished | Ending::Drained, _) => self.listener_code.unwrap_or(1),
            (_, Cause::Idle) => 0,
            (_, Cause::Signal(sig)) => signal_code(sig),
            (_, Cause::None) => self.listener_code.unwrap_or(1),
        }
    }
}

/// The listener's exit code for "run-once agent updating": start it again, as `run.sh` does.
const RUN_ONCE_UPDATING: u8 = 4;
/// How long a self-update may take before we give up (run.sh allows 20 s after the exit).
const UPDATE_LIMIT: Duration = Duration::from_secs(60);
const MAX_UPDATES: u32 = 3;
/// Processes a listener that exited by itself leaves behind get this long before SIGKILL.
const LEFTOVER_GRACE: Duration = Duration::from_secs(5);
/// After SIGKILL, how long to wait for the kernel to tear the group down.
const AFTER_KILL: Duration = Duration::from_secs(5);
const TICK: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Draining { until: Instant },
    Cancelling { until: Instant },
    Killed,
}

impl Phase {
    /// When this phase next needs attention: the end of the drain or of the cancel timeout,
    /// or, while a listener (up since `listening_since`) waits for its first job, the idle
    /// timeout.
    fn deadline(
        self,
        listening_since: Option<Instant>,
        job_seen: bool,
        policy: StopPolicy,
    ) -> Option<Instant> {
        match self {
            Phase::Running if !job_seen && !policy.idle.is_zero() => {
                listening_since.map(|since| since + policy.idle)
            }
            Phase::Draining { until } | Phase::Cancelling { until } => Some(until),
            _ => None,
        }
    }

    /// Once the listener has exited, how long its group may take to follow.
    fn group_deadline(self, now: Instant, policy: StopPolicy) -> Instant {
        match self {
            Phase::Cancelling { until } => until,
            Phase::Killed => now + AFTER_KILL,
            _ => now + LEFTOVER_GRACE.min(policy.cancel),
        }
    }

    /// How a run that ended in this phase ended.
    fn ending(self, cause: Cause) -> Ending {
        match (self, cause) {
            (Phase::Killed, _) => Ending::Killed,
            (Phase::Running, Cause::None) => Ending::Finished,
            (Phase::Running, _) => Ending::Cancelled,
            (Phase::Draining { .. }, _) => Ending::Drained,
            (Phase::Cancelling { .. }, Cause::Idle) => Ending::Idle,
            (Phase::Cancelling { .. }, _) => Ending::Cancelled,
        }
    }
}

/// One run of the listener: started by `launch`, ended as [`Outcome`] says.
pub struct ListenerRun<'a> {
    pub reaper: &'a Reaper,
    pub signals: &'a mut Signals,
    pub policy: StopPolicy,
    /// The agent directory: `bin/Agent.Listener` must be executable before a restart.
    pub agent_dir: &'a Path,
}

impl ListenerRun<'_> {
    pub async fn run(self, launch: impl Fn() -> Command) -> Result<Outcome> {
        let Self {
            reaper,
            signals,
            policy,
            agent_dir,
        } = self;
        let me = std::process::id() as i32;
        let mut child = Some(reaper.spawn(&mut launch())?);
        let mut group = child.unwrap_or_default();
        let mut up_since = Instant::now();
        let mut updates = 0;
        let mut update_deadline = up_since;
        let mut job_seen = false;
        let mut cause = Cause::None;
        let mut phase = Phase::Running;
        let mut listener_code = None;
        let started = Instant::now();

        loop {
            let deadline = phase.deadline(child.map(|_| up_since), job_seen, policy);
            let pid = child.unwrap_or_default();
            tokio::select! {
                status = reaper.wait(pid), if child.is_some() => {
                    let code = exit_code(status);
                    child = None;
                    if code == RUN_ONCE_UPDATING && cause == Cause::None && updates < MAX_UPDATES {
                        updates += 1;
                        update_deadline = Instant::now() + UPDATE_LIMIT;
                        tracing::info!(attempt = updates, "the listener exited to update itself; starting it again once the update is done");
                        continue;
                    }
                    listener_code = Some(code);
                    tracing::info!(code, elapsed_ms = started.elapsed().as_millis() as u64, "listener exited");
                    break;
                }
                sig = signals.recv() => {
                    match phase {
                        Phase::Running => {
                            cause = Cause::Signal(sig);
                            let running = ProcTable::read().job_running(me);
                            job_seen |= running;
                            if child.is_none() {
                                tracing::info!(signal = %sig, "stop requested while the agent updates itself");
                                break;
                            } else if running && !policy.drain.is_zero() {
                                tracing::info!(signal = %sig, drain = ?policy.drain, "stop requested while a job runs: letting it finish");
                                phase = Phase::Draining { until: Instant::now() + policy.drain };
                            } else {
                                tracing::info!(signal = %sig, job_running = running, "stop requested");
                                phase = interrupt(me, child, policy);
                            }
                        }
                        Phase::Draining { .. } => {
                            tracing::info!(signal = %sig, "second stop request: cancelling the job now");
                            phase = interrupt(me, child, policy);
                        }
                        Phase::Cancelling { .. } | Phase::Killed => {
                            tracing::info!(signal = %sig, "already stopping");
                        }
                    }
                }
                () = until(deadline) => {
                    match phase {
                        Phase::Running => {
                            if ProcTable::read().job_running(me) {
                                job_seen = true;
                            } else {
                                tracing::info!(idle = ?policy.idle, "no job came: stopping the agent");
                                cause = Cause::Idle;
                                phase = interrupt(me, child, policy);
                            }
                        }
                        Phase::Draining { .. } => {
                            tracing::info!(drain = ?policy.drain, "drain timeout: cancelling the job");
                            phase = interrupt(me, child, policy);
                        }
                        Phase::Cancelling { .. } => {
                            tracing::warn!(cancel = ?policy.cancel, "the listener did not stop in time: killing its process group");
                            let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
                            phase = Phase::Killed;
                        }
                        Phase::Killed => {}
                    }
                }
                _ = tokio::time::sleep(TICK), if !job_seen || child.is_none() => {
                    let table = ProcTable::read();
                    if !job_seen && table.job_running(me) {
                        job_seen = true;
                        tracing::info!(after_ms = up_since.elapsed().as_millis() as u64, "job started");
                    }
                    if child.is_none() {
                        // Updating: the update script runs in the listener's group and swaps
                        // `bin/`; start again once it is gone and a listener is in place.
                        if table.group(group).is_empty() && is_executable(&agent_dir.join("bin/Agent.Listener")) {
                            let pid = reaper.spawn(&mut launch())?;
                            (child, group, up_since) = (Some(pid), pid, Instant::now());
                            tracing::info!("listener started again after its update");
                        } else if Instant::now() > update_deadline {
                            tracing::error!(limit = ?UPDATE_LIMIT, "the agent did not update in time");
                            listener_code = Some(1);
                            break;
                        }
                    }
                }
            }
        }

        // The listener has exited; its group (worker, job processes) must be gone too.
        if !wait_group_empty(group, phase.group_deadline(Instant::now(), policy)).await {
            let left = ProcTable::read().group(group).len();
            tracing::warn!(
                processes = left,
                "processes of the agent's group are still running: killing them"
            );
            let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
            if matches!(phase, Phase::Cancelling { .. }) {
                phase = Phase::Killed;
            }
            wait_group_empty(group, Instant::now() + AFTER_KILL).await;
        }

        Ok(Outcome {
            ending: phase.ending(cause),
            cause,
            listener_code,
            job_seen,
        })
    }
}

/// Sleeps until `deadline`; never returns without one.
pub(crate) async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// SIGINT to the listener process alone: never SIGTERM, never the worker or the group.
fn interrupt(me: i32, child: Option<i32>, policy: StopPolicy) -> Phase {
    if let Some(child) = child {
        let target = ProcTable::read().listener_of(me, child);
        tracing::info!(pid = target, "sending SIGINT to the listener");
        let _ = kill(Pid::from_raw(target), Signal::SIGINT);
    }
    Phase::Cancelling {
        until: Instant::now() + policy.cancel,
    }
}

/// Waits until no process of `group` is left; `false` if some still are at `deadline`.
async fn wait_group_empty(group: i32, deadline: Instant) -> bool {
    loop {
        if ProcTable::read().group(group).is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(ending: Ending, cause: Cause, code: Option<u8>) -> Outcome {
        Outcome {
            ending,
            cause,
            listener_code: code,
            job_seen: true,
        }
    }

    #[test]
    fn exit_codes_by_ending_and_cause() {
        let term = Cause::Signal(Signal::SIGTERM);
        let int = Cause::Signal(Signal::SIGINT);
        let table = [
            (Ending::Finished, Cause::None, Some(0), 0),
            (Ending::Finished, Cause::None, Some(2), 2),
            (Ending::Finished, Cause::None, None, 1),
            (Ending::Drained, term, Some(0), 0),
            (Ending::Drained, term, Some(1), 1),
            (Ending::Cancelled, term, Some(0), 143),
            (Ending::Cancelled, int, Some(0), 130),
            (Ending::Killed, term, None, 143),
            (Ending::Idle, Cause::Idle, Some(0), 0),
            (Ending::Killed, Cause::Idle, None, 0),
            (Ending::Killed, Cause::None, Some(3), 3),
            (Ending::Killed, Cause::None, None, 1),
        ];
        for (ending, cause, code, expected) in table {
            assert_eq!(
                outcome(ending, cause, code).exit_code(),
                expected,
                "{ending:?} {cause:?} {code:?}"
            );
        }
    }

    fn policy() -> StopPolicy {
        StopPolicy {
            drain: Duration::from_secs(600),
            cancel: Duration::from_secs(120),
            idle: Duration::from_secs(900),
        }
    }

    #[test]
    fn the_next_deadline_of_each_phase() {
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(7);
        let p = policy();
        let no_idle = StopPolicy {
            idle: Duration::ZERO,
            ..p
        };
        let table = [
            // (phase, listening since, job seen, policy, deadline)
            (Phase::Running, Some(t0), false, p, Some(t0 + p.idle)),
            (Phase::Running, Some(t0), true, p, None),
            (Phase::Running, Some(t0), false, no_idle, None),
            (Phase::Running, None, false, p, None),
            (Phase::Draining { until }, Some(t0), true, p, Some(until)),
            (Phase::Cancelling { until }, None, false, p, Some(until)),
            (Phase::Killed, Some(t0), false, p, None),
        ];
        for (phase, since, seen, policy, expected) in table {
            assert_eq!(
                phase.deadline(since, seen, policy),
                expected,
                "{phase:?} {since:?} {seen}"
            );
        }
    }

    #[test]
    fn the_group_gets_the_rest_of_the_cancel_timeout_or_a_short_grace() {
        let now = Instant::now();
        let until = now + Duration::from_secs(42);
        let p = policy();
        assert_eq!(Phase::Cancelling { until }.group_deadline(now, p), until);
        assert_eq!(Phase::Killed.group_deadline(now, p), now + AFTER_KILL);
        assert_eq!(Phase::Running.group_deadline(now, p), now + LEFTOVER_GRACE);
        assert_eq!(
            Phase::Draining { until }.group_deadline(now, p),
            now + LEFTOVER_GRACE
        );
        let short = StopPolicy {
            cancel: Duration::from_secs(1),
            ..p
        };
        assert_eq!(
            Phase::Running.group_deadline(now, short),
            now + Duration::from_secs(1),
            "never longer than the cancel timeout"
        );
        assert_eq!(
            Phase::Killed.group_deadline(now, short),
            now + AFTER_KILL,
            "after SIGKILL, whatever the cancel timeout"
        );
    }

    #[test]
    fn how_a_run_ended_by_its_last_phase_and_cause() {
        let until = Instant::now();
        let term = Cause::Signal(Signal::SIGTERM);
        let table = [
            (Phase::Running, Cause::None, Ending::Finished),
            (Phase::Running, term, Ending::Cancelled),
            (Phase::Draining { until }, term, Ending::Drained),
            (Phase::Cancelling { until }, term, Ending::Cancelled),
            (Phase::Cancelling { until }, Cause::Idle, Ending::Idle),
            (Phase::Killed, Cause::Idle, Ending::Killed),
            (Phase::Killed, term, Ending::Killed),
        ];
        for (phase, cause, expected) in table {
            assert_eq!(phase.ending(cause), expected, "{phase:?} {cause:?}");
        }
    }

    #[test]
    fn interrupting_starts_the_cancel_timeout() {
        let before = Instant::now();
        let Phase::Cancelling { until } = interrupt(1, None, policy()) else {
            panic!("interrupting leads to cancelling");
        };
        assert!(until >= before + policy().cancel && until <= Instant::now() + policy().cancel);
    }

    #[test]
    fn only_executable_files_can_be_started_again() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ado-scaler-exec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, mode: u32| {
            let path = dir.join(name);
            std::fs::write(&path, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        };
        assert!(is_executable(&file("x", 0o755)));
        assert!(is_executable(&file("user-only", 0o700)));
        assert!(!is_executable(&file("plain", 0o644)));
        assert!(!is_executable(&dir), "a directory is not a listener");
        assert!(!is_executable(&dir.join("missing")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn waiting_for_a_group_ends_when_it_is_empty_or_at_the_deadline() {
        let started = Instant::now();
        assert!(wait_group_empty(i32::MAX, started + Duration::from_secs(5)).await);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "an empty group returns at once"
        );

        // This test's own process group is not empty.
        let ours = nix::unistd::getpgrp().as_raw();
        let started = Instant::now();
        let deadline = started + Duration::from_millis(150);
        assert!(!wait_group_empty(ours, deadline).await);
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "waited until the deadline"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn until_a_deadline_or_never() {
        let start = Instant::now();
        until(Some(start + Duration::from_secs(3))).await;
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        let never = tokio::time::timeout(Duration::from_secs(86_400), until(None)).await;
        assert!(never.is_err(), "no deadline: never");
    }

    #[test]
    fn endings_have_names_for_the_log() {
        let names: Vec<&str> = [
            Ending::Finished,
            Ending::Drained,
            Ending::Cancelled,
            Ending::Idle,
            Ending::Killed,
        ]
        .map(Ending::as_str)
        .to_vec();
        assert_eq!(
            names,
            ["finished", "drained", "cancelled", "idle", "killed"]
        );
    }
}
