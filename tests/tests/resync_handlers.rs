//! `before-resync-target` under two daemons on loopback (section 5 of the reference): the
//! target runs the handler before it becomes SyncTarget and waits for its exit status, while
//! the daemon goes on answering (pings, status). A non-zero status drops the connection for
//! good (`Disconnecting` -> `StandAlone`), logged as DRBD logs it; 0 lets the resync run.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tandem_tests::cluster::{Cluster, ClusterOpts};
use tandem_tests::*;

/// Writes an executable shell script.
fn script(path: &Path, body: &str) -> PathBuf {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path.to_owned()
}

/// Two nodes whose `before-resync-target` handler is `handler`.
fn cluster(handler: &Path) -> Cluster {
    Cluster::new(ClusterOpts {
        sizes: [16 << 20; 2],
        handlers: format!("before-resync-target \"{}\";", handler.display()),
        ..ClusterOpts::default()
    })
}

/// Both nodes up, connected with fresh (Inconsistent) disks; then node 0 is promoted with
/// `--force`, which makes node 1 the target of a full sync.
fn full_sync_to_beta(c: &Cluster) {
    c.up();
    c.wait_states("Connected", ["Inconsistent", "Inconsistent"]);
    c.node(0).ok(&["primary", "--force", "r0"]);
}

#[test]
fn a_failing_before_resync_target_drops_the_connection_for_good() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fail = script(&dir.path().join("refuse.sh"), "exit 1");
    let c = cluster(&fail);
    full_sync_to_beta(&c);
    let (a, b) = (c.node(0), c.node(1));
    b.wait_for("StandAlone", |n| n.query("cstate") == "StandAlone");
    let log = b.log();
    assert!(
        log.contains("before-resync-target handler returned 1, dropping connection."),
        "{log}"
    );
    assert!(log.contains("-> Disconnecting )"), "{log}");
    assert!(!log.contains("Began resync"), "{log}");
    assert_eq!(b.query("dstate"), "Inconsistent");
    // The source waits for its peer; the target does not come back by itself.
    a.wait_for("WFConnection", |n| n.query("cstate") == "WFConnection");
    assert_eq!(b.query("cstate"), "StandAlone");
}

#[test]
fn before_resync_target_runs_before_the_node_becomes_sync_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mark = dir.path().join("cstate-seen-by-the-handler");
    let handler = dir.path().join("touch.sh");
    let c = cluster(&handler);
    let b = c.node(1);
    // The handler asks the daemon that waits for it which state it is in (it answers: only
    // the resync waits), and records it. It runs with the daemon's environment (its node
    // name and run directory).
    script(
        &handler,
        &format!(
            "{drbdadm} -c {res} cstate r0 > {mark}.tmp && mv {mark}.tmp {mark}",
            drbdadm = bin("drbdadm").display(),
            res = b.res.display(),
            mark = mark.display()
        ),
    );
    full_sync_to_beta(&c);
    c.wait_states("Connected", ["UpToDate", "UpToDate"]);
    let seen = std::fs::read_to_string(&mark).expect("the handler ran");
    assert_eq!(
        seen.trim(),
        "WFSyncUUID",
        "the handler ran before SyncTarget"
    );
    let log = b.log();
    let exited = log
        .find("before-resync-target minor-0 exit code 0")
        .unwrap_or_else(|| panic!("the handler's exit is logged: {log}"));
    let began = log
        .find("Began resync as SyncTarget")
        .unwrap_or_else(|| panic!("the resync ran: {log}"));
    assert!(exited < began, "{log}");
    assert!(c.data_identical(15 << 20));
}
