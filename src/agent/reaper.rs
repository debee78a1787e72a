//! The entrypoint's children, started and reaped in one place.
//!
//! The entrypoint is PID 1 of its container, so every process the agent's tree orphans (a
//! worker whose listener died, a step's background process) becomes its child. Outside a
//! container it makes itself a child subreaper, so the same holds in tests. One task reaps
//! them all with `waitpid(-1)` and keeps each status for whoever waits on that pid; no other
//! code may wait on children, which is why children are started here and not with
//! `tokio::process`.

use std::{
    collections::HashMap,
    os::unix::process::{CommandExt, ExitStatusExt},
    process::{Command, ExitStatus},
    sync::{Arc, Mutex},
    time::Duration,
};

use nix::{
    errno::Errno,
    sys::wait::{WaitPidFlag, WaitStatus, waitpid},
    unistd::Pid,
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};

use crate::error::{Error, Result};

/// Starts children and collects every exit status, its children's and orphans' alike.
#[derive(Clone)]
pub struct Reaper {
    inner: Arc<Inner>,
}

struct Inner {
    /// Statuses reaped and not yet claimed, by pid.
    exited: Mutex<HashMap<i32, ExitStatus>>,
    /// Bumped after every reap, so waiters look again.
    reaped: watch::Sender<u64>,
    /// Held while std spawns a child: on a failed exec std waits for that child itself, and
    /// must find it unreaped.
    spawning: Mutex<()>,
}

impl Reaper {
    /// Becomes a subreaper (not needed as PID 1) and starts reaping. Call before any child starts.
    pub fn start() -> Result<Self> {
        if std::process::id() != 1 {
            // Not fatal: orphans then go to init, and `ProcTable::group` still finds them.
            if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
                tracing::warn!(error = %e, "cannot become a child subreaper; orphans are reaped by init");
            }
        }
        let mut sigchld = signal(SignalKind::child())
            .map_err(|e| Error::Agent(format!("installing a SIGCHLD handler: {e}")))?;
        let reaper = Self {
            inner: Arc::new(Inner {
                exited: Mutex::default(),
                reaped: watch::Sender::new(0),
                spawning: Mutex::default(),
            }),
        };
        let inner = reaper.inner.clone();
        tokio::spawn(async move {
            loop {
                inner.sweep();
                // SIGCHLD can coalesce; the timer is a backstop, not the mechanism.
                tokio::select! {
                    _ = sigchld.recv() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        });
        Ok(reaper)
    }

    /// Starts `cmd` in a process group of its own and returns its pid.
    pub fn spawn(&self, cmd: &mut Command) -> Result<i32> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let _guard = self.inner.spawning.lock().expect("spawn lock");
        let child = cmd
            // Its own group: a terminal's Ctrl-C does not reach it behind our back, and the
            // whole tree can be killed at once when everything else has failed.
            .process_group(0)
            .spawn()
            .map_err(|e| Error::Agent(format!("cannot start {program}: {e}")))?;
        // The `Child` is dropped unwaited on purpose: its status is reaped by `sweep`.
        Ok(child.id() as i32)
    }

    /// Waits for `pid` (started by [`Reaper::spawn`]) to exit.
    pub async fn wait(&self, pid: i32) -> ExitStatus {
        let mut reaped = self.inner.reaped.subscribe();
        loop {
            if let Some(status) = self.try_wait(pid) {
                return status;
            }
            // The sender lives as long as `self`, so this only returns on a new reap.
            let _ = reaped.changed().await;
        }
    }

    /// The exit status of `pid` if it has exited; claims it.
    pub fn try_wait(&self, pid: i32) -> Option<ExitStatus> {
        self.inner.exited.lock().expect("exited").remove(&pid)
    }
}

impl Inner {
    /// Reaps every child that has exited.
    fn sweep(&self) {
        let _guard = self.spawning.lock().expect("spawn lock");
        let mut any = false;
        loop {
            let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::from_raw(code << 8)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ExitStatus::from_raw(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    break;
                }
            };
            self.exited
                .lock()
                .expect("exited")
                .insert(pid.as_raw(), status);
            any = true;
        }
        if any {
            self.reaped.send_modify(|n| *n += 1);
        }
    }
}
