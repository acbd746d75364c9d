//! Runs the scripts of a resource's `handlers` section when the engine asks, with the
//! environment DRBD's helpers get (`DRBD_RESOURCE`, `DRBD_MINOR`, `DRBD_VOLUME`, `DRBD_PEER`).
//!
//! Handlers run in the background, never blocking the resource task. Most are
//! fire-and-forget (their exit code is logged); those the engine waits for
//! (`before-resync-target`, `before-resync-source`) report their exit status back through
//! [`Handlers::call`], and a handler that is not configured counts as exit status 0, as with
//! drbdadm.

use std::collections::BTreeMap;

use repl_core::engine::Handler;
use tracing::{info, warn};

/// Handler commands of one resource and what they are told.
#[derive(Debug, Clone, Default)]
pub struct Handlers {
    pub resource: String,
    pub minor: u32,
    pub volume: u32,
    pub peer: String,
    pub commands: BTreeMap<String, String>,
}

/// What a handler that could not be started reports: the shell's status for a command it
/// cannot run.
const CANNOT_RUN: i32 = 127;

impl Handlers {
    /// Starts the configured command for `h`, if any; logs as DRBD does
    /// (`helper command: /sbin/drbdadm split-brain minor-0`).
    pub fn run(&self, h: Handler) {
        self.call(h, |_| {});
    }

    /// Runs `h` like [`Handlers::run`] and hands its exit status to `report` once it exited
    /// (at once with 0 when none is configured; 128 + N for a handler killed by signal N).
    pub fn call(&self, h: Handler, report: impl FnOnce(i32) + Send + 'static) {
        let name = h.name();
        let Some(cmd) = self.commands.get(name).cloned() else {
            info!("block drbd{}: no {name} handler configured", self.minor);
            report(0);
            return;
        };
        info!(
            "block drbd{}: helper command: {cmd} {name} minor-{}",
            self.minor, self.minor
        );
        let mut c = tokio::process::Command::new("/bin/sh");
        c.arg("-c")
            .arg(&cmd)
            .env("DRBD_RESOURCE", &self.resource)
            .env("DRBD_MINOR", self.minor.to_string())
            .env("DRBD_VOLUME", self.volume.to_string())
            .env("DRBD_PEER", &self.peer)
            .stdin(std::process::Stdio::null());
        let minor = self.minor;
        match c.spawn() {
            Ok(mut child) => {
                tokio::spawn(async move {
                    let status = match child.wait().await {
                        Ok(status) => {
                            let code = exit_status(status);
                            info!(
                                "block drbd{minor}: helper command: {cmd} {name} minor-{minor} exit code {code}"
                            );
                            code
                        }
                        Err(e) => {
                            warn!("block drbd{minor}: {name} handler: {e}");
                            CANNOT_RUN
                        }
                    };
                    report(status);
                });
            }
            Err(e) => {
                warn!("block drbd{minor}: cannot run the {name} handler '{cmd}': {e}");
                report(CANNOT_RUN);
            }
        }
    }
}

/// The exit code, or 128 + the signal for a handler killed by one (as shells report it).
fn exit_status(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handlers(cmd: &str) -> Handlers {
        Handlers {
            resource: "r0".into(),
            commands: BTreeMap::from([("before-resync-target".into(), cmd.into())]),
            ..Handlers::default()
        }
    }

    async fn status_of(h: &Handlers, which: Handler) -> i32 {
        let (tx, rx) = tokio::sync::oneshot::channel();
        h.call(which, move |s| {
            let _ = tx.send(s);
        });
        rx.await.expect("reported")
    }

    #[tokio::test]
    async fn a_called_handler_reports_its_exit_status() {
        let h = handlers("test \"$DRBD_RESOURCE\" = r0 && exit 4");
        assert_eq!(status_of(&h, Handler::BeforeResyncTarget).await, 4);
        assert_eq!(
            status_of(&h, Handler::BeforeResyncSource).await,
            0,
            "not configured: 0, as with drbdadm"
        );
        let h = handlers("kill -TERM $$");
        assert_eq!(status_of(&h, Handler::BeforeResyncTarget).await, 128 + 15);
    }
}
