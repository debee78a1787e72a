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

    /// Interrupted at `now`: the cancel timeout runs.
    fn cancelling(now: Instant, policy: StopPolicy) -> Self {
        Phase::Cancelling {
            until: now + policy.cancel,
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
        let pid = self.reaper.spawn(&mut launch())?;
        let mut supervisor = Supervisor {
            run: self,
            me: std::process::id() as i32,
            listener: Listener::Up {
                pid,
                since: Instant::now(),
            },
            group: pid,
            updates: 0,
            job_seen: false,
            cause: Cause::None,
            phase: Phase::Running,
            listener_code: None,
            started: Instant::now(),
        };
        loop {
            let step = match supervisor.next_event().await {
                Event::Exited(code) => supervisor.exited(code),
                Event::Signal(sig) => supervisor.stop_requested(sig),
                Event::Deadline => supervisor.deadline_passed(),
                Event::Tick => supervisor.looked(&launch)?,
            };
            if step == Step::Done {
                break;
            }
        }
        Ok(supervisor.after_exit().await)
    }
}

/// The listener process: up, or gone while it updates itself (`run.sh`'s exit-code-4 loop).
#[derive(Debug, Clone, Copy)]
enum Listener {
    Up { pid: i32, since: Instant },
    Updating { deadline: Instant },
}

impl Listener {
    fn pid(self) -> Option<i32> {
        match self {
            Listener::Up { pid, .. } => Some(pid),
            Listener::Updating { .. } => None,
        }
    }
}

/// What the supervisor reacts to.
enum Event {
    /// The listener exited with this code.
    Exited(u8),
    Signal(Signal),
    /// The current phase's deadline (idle, drain, cancel) passed.
    Deadline,
    /// Time to look at the process table: has a job started, is an update done?
    Tick,
}

#[derive(Debug, PartialEq, Eq)]
enum Step {
    Continue,
    Done,
}

/// The supervision of one listener run: its state, and one named transition per event.
struct Supervisor<'a> {
    run: ListenerRun<'a>,
    me: i32,
    listener: Listener,
    /// The listener's process group (the first listener's pid): worker and job processes.
    group: i32,
    updates: u32,
    job_seen: bool,
    cause: Cause,
    phase: Phase,
    listener_code: Option<u8>,
    started: Instant,
}

impl Supervisor<'_> {
    async fn next_event(&mut self) -> Event {
        let policy = self.run.policy;
        let listening_since = match self.listener {
            Listener::Up { since, .. } => Some(since),
            Listener::Updating { .. } => None,
        };
        let deadline = self.phase.deadline(listening_since, self.job_seen, policy);
        let pid = self.listener.pid();
        let exited = async {
            match pid {
                Some(pid) => self.run.reaper.wait(pid).await,
                None => std::future::pending().await,
            }
        };
        let look = !self.job_seen || pid.is_none();
        tokio::select! {
            status = exited => Event::Exited(exit_code(status)),
            sig = self.run.signals.recv() => Event::Signal(sig),
            () = until(deadline) => Event::Deadline,
            () = tokio::time::sleep(TICK), if look => Event::Tick,
        }
    }

    /// The listener exited: by itself to update (start it again once the update is done),
    /// or for good.
    fn exited(&mut self, code: u8) -> Step {
        if code == RUN_ONCE_UPDATING && self.cause == Cause::None && self.updates < MAX_UPDATES {
            self.updates += 1;
            self.listener = Listener::Updating {
                deadline: Instant::now() + UPDATE_LIMIT,
            };
            tracing::info!(
                attempt = self.updates,
                "the listener exited to update itself; starting it again once the update is done"
            );
            return Step::Continue;
        }
        self.listener_code = Some(code);
        tracing::info!(
            code,
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            "listener exited"
        );
        Step::Done
    }

    /// SIGTERM or SIGINT: let a running job drain, else interrupt; a second one cuts the
    /// drain short.
    fn stop_requested(&mut self, sig: Signal) -> Step {
        let policy = self.run.policy;
        match self.phase {
            Phase::Running => {
                self.cause = Cause::Signal(sig);
                let running = ProcTable::read().job_running(self.me);
                self.job_seen |= running;
                if self.listener.pid().is_none() {
                    tracing::info!(signal = %sig, "stop requested while the agent updates itself");
                    return Step::Done;
                } else if running && !policy.drain.is_zero() {
                    tracing::info!(signal = %sig, drain = ?policy.drain, "stop requested while a job runs: letting it finish");
                    self.phase = Phase::Draining {
                        until: Instant::now() + policy.drain,
                    };
                } else {
                    tracing::info!(signal = %sig, job_running = running, "stop requested");
                    self.interrupt();
                }
            }
            Phase::Draining { .. } => {
                tracing::info!(signal = %sig, "second stop request: cancelling the job now");
                self.interrupt();
            }
            Phase::Cancelling { .. } | Phase::Killed => {
                tracing::info!(signal = %sig, "already stopping");
            }
        }
        Step::Continue
    }

    /// The idle timeout (unless a job has just started), the end of the drain, or the end of
    /// the cancel timeout (kill the group).
    fn deadline_passed(&mut self) -> Step {
        let policy = self.run.policy;
        match self.phase {
            Phase::Running => {
                if ProcTable::read().job_running(self.me) {
                    self.job_seen = true;
                } else {
                    tracing::info!(idle = ?policy.idle, "no job came: stopping the agent");
                    self.cause = Cause::Idle;
                    self.interrupt();
                }
            }
            Phase::Draining { .. } => {
                tracing::info!(drain = ?policy.drain, "drain timeout: cancelling the job");
                self.interrupt();
            }
            Phase::Cancelling { .. } => {
                tracing::warn!(cancel = ?policy.cancel, "the listener did not stop in time: killing its process group");
                let _ = killpg(Pid::from_raw(self.group), Signal::SIGKILL);
                self.phase = Phase::Killed;
            }
            Phase::Killed => {}
        }
        Step::Continue
    }

    /// A look at the process table: a job has started; an update is done (start the
    /// listener again) or has taken too long.
    fn looked(&mut self, launch: &impl Fn() -> Command) -> Result<Step> {
        let table = ProcTable::read();
        if !self.job_seen && table.job_running(self.me) {
            self.job_seen = true;
            if let Listener::Up { since, .. } = self.listener {
                tracing::info!(after_ms = since.elapsed().as_millis() as u64, "job started");
            }
        }
        let Listener::Updating { deadline } = self.listener else {
            return Ok(Step::Continue);
        };
        // The update script runs in the listener's group and swaps `bin/`; start again once
        // it is gone and a listener is in place.
        if table.group(self.group).is_empty()
            && is_executable(&self.run.agent_dir.join("bin/Agent.Listener"))
        {
            let pid = self.run.reaper.spawn(&mut launch())?;
            self.listener = Listener::Up {
                pid,
                since: Instant::now(),
            };
            self.group = pid;
            tracing::info!("listener started again after its update");
        } else if Instant::now() > deadline {
            tracing::error!(limit = ?UPDATE_LIMIT, "the agent did not update in time");
            self.listener_code = Some(1);
            return Ok(Step::Done);
        }
        Ok(Step::Continue)
    }

    /// SIGINT to the listener process alone: never SIGTERM, never the worker or the group.
    fn interrupt(&mut self) {
        if let Some(child) = self.listener.pid() {
            let target = ProcTable::read().listener_of(self.me, child);
            tracing::info!(pid = target, "sending SIGINT to the listener");
            let _ = kill(Pid::from_raw(target), Signal::SIGINT);
        }
        self.phase = Phase::cancelling(Instant::now(), self.run.policy);
    }

    /// The listener has exited; its group (worker, job processes) must be gone too.
    async fn after_exit(mut self) -> Outcome {
        let group = self.group;
        let deadline = self.phase.group_deadline(Instant::now(), self.run.policy);
        if !wait_group_empty(group, deadline).await {
            let left = ProcTable::read().group(group).len();
            tracing::warn!(
                processes = left,
                "processes of the agent's group are still running: killing them"
            );
            let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
            if matches!(self.phase, Phase::Cancelling { .. }) {
                self.phase = Phase::Killed;
            }
            wait_group_empty(group, Instant::now() + AFTER_KILL).await;
        }
        Outcome {
            ending: self.phase.ending(self.cause),
            cause: self.cause,
            listener_code: self.listener_code,
            job_seen: self.job_seen,
        }
    }
}

/// Sleeps until `deadline`; never returns without one.
pub(crate) async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
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
        let now = Instant::now();
        assert_eq!(
            Phase::cancelling(now, policy()),
            Phase::Cancelling {
                until: now + Duration::from_secs(120)
            }
        );
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
