//! Runs the scripts of a resource's `handlers` section when the engine asks, with the
//! environment DRBD's helpers get (`DRBD_RESOURCE`, `DRBD_MINOR`, `DRBD_VOLUME`, `DRBD_PEER`).
//!
//! The handler runs in the background and its exit code is logged. DRBD waits for
//! `before-resync-target` and drops the connection on a non-zero exit; tandem does not wait
//! yet (see the issue notes).

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

impl Handlers {
    /// Starts the configured command for `h`, if any; logs as DRBD does
    /// (`helper command: /sbin/drbdadm split-brain minor-0`).
    pub fn run(&self, h: Handler) {
        let name = h.name();
        let Some(cmd) = self.commands.get(name).cloned() else {
            info!("block drbd{}: no {name} handler configured", self.minor);
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
                    match child.wait().await {
                        Ok(status) => info!(
                            "block drbd{minor}: helper command: {cmd} {name} minor-{minor} exit code {}",
                            status.code().unwrap_or(-1)
                        ),
                        Err(e) => warn!("block drbd{minor}: {name} handler: {e}"),
                    }
                });
            }
            Err(e) => warn!("block drbd{minor}: cannot run the {name} handler '{cmd}': {e}"),
        }
    }
}
