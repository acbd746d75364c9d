//! `<run-dir>/proc-drbd`: every resource's status, rewritten atomically after each change.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
// loom's for the model in `tests/loom_status.rs`, which compiles this file.
#[cfg(all(tandem_loom, test))]
use loom::sync::Mutex;
#[cfg(not(all(tandem_loom, test)))]
use std::sync::Mutex;

use drbdadm_compat::control::STATUS_FILE;
use drbdadm_compat::status::{proc_drbd, DeviceView, VersionInfo};
use repl_core::status::Status;

/// The latest snapshot of every resource, and the file they are published to.
#[derive(Debug)]
pub struct StatusBoard {
    run_dir: PathBuf,
    /// By (minor, resource), so the file lists devices in minor order like `/proc/drbd`.
    entries: Mutex<BTreeMap<(u32, String), Status>>,
}

impl StatusBoard {
    pub fn new(run_dir: &Path) -> StatusBoard {
        StatusBoard {
            run_dir: run_dir.to_path_buf(),
            entries: Mutex::new(BTreeMap::new()),
        }
    }

    /// Records a resource's snapshot and rewrites the file.
    pub fn update(&self, status: Status) {
        self.edit(|m| {
            m.insert((status.minor, status.resource.clone()), status);
        });
    }

    /// Forgets a resource (after `down`) and rewrites the file.
    pub fn remove(&self, resource: &str) {
        self.edit(|m| m.retain(|(_, r), _| r != resource));
    }

    /// Forgets one volume of a resource (its minor) and rewrites the file.
    pub fn remove_minor(&self, resource: &str, minor: u32) {
        self.edit(|m| {
            m.remove(&(minor, resource.to_string()));
        });
    }

    /// Rewrites the file as it is (at startup: no resources).
    pub fn publish(&self) {
        self.edit(|_| {});
    }

    fn edit(&self, f: impl FnOnce(&mut BTreeMap<(u32, String), Status>)) {
        // A writer that panicked left a whole map behind; keep using it.
        let mut m = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut m);
        let all: Vec<Status> = m.values().cloned().collect();
        // Written under the lock so that files are renamed in the order of the changes.
        if let Err(e) = write_status(&self.run_dir, &all) {
            tracing::warn!("cannot write {}/{STATUS_FILE}: {e}", self.run_dir.display());
        }
    }
}

/// What `proc-drbd` holds for these resources: DRBD 8.4's `/proc/drbd`. No resource has a
/// network configuration yet, so the protocol column stays blank as DRBD leaves it. State
/// changes rewrite it at once; counters at most once a second.
pub fn render_status(statuses: &[Status]) -> String {
    let views: Vec<DeviceView> = statuses.iter().cloned().map(DeviceView::new).collect();
    proc_drbd(&views, &version())
}

/// The version lines: the DRBD release whose behaviour tandem follows, and tandem's own.
pub fn version() -> VersionInfo {
    VersionInfo::v84(
        "8.4.11",
        format!("srcversion: tandem-{}", env!("CARGO_PKG_VERSION")),
    )
}

/// Writes `<run_dir>/proc-drbd` atomically (a temporary file renamed over it).
///
/// # Errors
/// The file cannot be written or renamed.
pub fn write_status(run_dir: &Path, statuses: &[Status]) -> std::io::Result<()> {
    #[cfg(all(tandem_loom, test))]
    let _fs = loom_file_system();
    let text = render_status(statuses);
    let tmp = run_dir.join(format!(".{STATUS_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    drop(f);
    std::fs::rename(&tmp, run_dir.join(STATUS_FILE))
}

/// The file system as loom sees it: one shared object, so that the model explores the order of
/// the writes against the board's lock.
#[cfg(all(tandem_loom, test))]
fn loom_file_system() -> loom::sync::MutexGuard<'static, ()> {
    loom::lazy_static! {
        static ref FS: Mutex<()> = Mutex::new(());
    }
    FS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
