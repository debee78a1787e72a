//! SIGTERM (Kubernetes) and SIGINT (Ctrl-C), caught from the entrypoint's first moment so that
//! no phase dies without cleaning up.

use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};

use crate::error::{Error, Result};

pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> Result<Self> {
        let install = |kind| {
            signal(kind).map_err(|e| Error::Config(format!("installing signal handler: {e}")))
        };
        Ok(Self {
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
        })
    }

    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::SIGTERM,
            _ = self.int.recv() => Signal::SIGINT,
        }
    }
}

/// The shell convention for a process ended by `sig`.
pub fn signal_code(sig: Signal) -> u8 {
    (128 + sig as i32) as u8
}
