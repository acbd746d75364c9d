//! Two daemons on loopback (127.0.0.1 and 127.0.0.2), driven through the real `drbdadm`:
//! DRBD's first-sync and skip-sync workflows, a reconnect that resyncs only what changed, the
//! Primary killed during a verified fio job, a wrong shared secret, a peer that is too small, a
//! split brain recovered by hand with `connect --discard-my-data`, `invalidate-remote`, and a
//! Primary that detaches and serves through its peer.

use std::process::Command;

use tandem_tests::cluster::{Cluster, ClusterOpts};
use tandem_tests::*;

const MIB: u64 = 1 << 20;
/// What the two data areas of 64 MiB backing files are compared over (the metadata is at the
/// end, after the usable 65,496 KiB).
const DATA: u64 = 63 * MIB;

#[test]
fn seed_001_first_sync_then_every_write_on_both_disks() {
    if !require("qemu-io", "qemu-utils") {
        return;
    }
    let c = Cluster::new(ClusterOpts::default());
    // Something on alpha's disk before anything: only a full sync carries it over.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&c.node(0).disk)
            .expect("disk");
        f.write_all_at(&[0x42; 4096], 10 * MIB).expect("marker");
    }
    c.up();
    c.wait_states("Connected", ["Inconsistent", "Inconsistent"]);
    let (a, b) = (c.node(0), c.node(1));
    assert!(
        a.log().contains("uuid_compare()=0 by rule 10"),
        "{}",
        a.log()
    );
    a.ok(&["primary", "--force", "r0"]);
    c.wait_states("Connected", ["UpToDate", "UpToDate"]);
    assert!(
        b.log().contains("uuid_compare()=-2 by rule 20"),
        "{}",
        b.log()
    );
    assert!(b
        .log()
        .contains("Began resync as SyncTarget (will sync 65496 KB"));
    assert!(a.log().contains("Began resync as SyncSource"));
    assert_eq!(a.ok(&["role", "r0"]), "Primary/Secondary\n");
    assert_eq!(b.ok(&["role", "r0"]), "Secondary/Primary\n");
    assert_eq!(a.ok(&["dstate", "r0"]), "UpToDate/UpToDate\n");
    assert!(c.data_identical(DATA), "the full sync copied alpha's data");

    // Protocol C: qemu-io's writes are on beta's disk when they return.
    qemu_io(
        &a.uri(),
        &["w -P 0x5c 1M 1M", "w -f -P 0x5d 3M 4k", "flush"],
    );
    assert!(c.data_identical(DATA));
    let proc = a.proc_drbd();
    assert!(
        proc.contains(" 0: cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate C r-----"),
        "{proc}"
    );
    assert!(proc.contains("oos:0"), "{proc}");
    // The second primary is refused with DRBD's words.
    let o = b.drbdadm(&["primary", "r0"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Multiple primaries not allowed by config"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let status = a.ok(&["status", "r0"]);
    assert!(
        status.contains("peer role:Secondary") && status.contains("peer-disk:UpToDate"),
        "{status}"
    );
}

#[test]
fn seed_004_both_new_skip_the_initial_sync() {
    let c = Cluster::new(ClusterOpts::default());
    c.up();
    c.wait_states("Connected", ["Inconsistent", "Inconsistent"]);
    c.node(0).ok(&["new-current-uuid", "--clear-bitmap", "r0"]);
    c.wait_states("Connected", ["UpToDate", "UpToDate"]);
    for n in &c.nodes {
        assert!(!n.log().contains("Began resync"), "{}", n.log());
    }
    c.node(1).ok(&["primary", "r0"]);
}

#[test]
fn reconnect_resyncs_only_the_blocks_written_meanwhile() {
    if !require("qemu-io", "qemu-utils") {
        return;
    }
    let c = Cluster::new(ClusterOpts::default());
    c.up();
    c.wait_states("Connected", ["Inconsistent", "Inconsistent"]);
    let (a, b) = (c.node(0), c.node(1));
    a.ok(&["primary", "--force", "r0"]);
    c.wait_states("Connected", ["UpToDate", "UpToDate"]);
    b.ok(&["down", "r0"]);
    a.wait_for("WFConnection", |n| n.query("cstate") == "WFConnection");
    // About 1% of the volume, in 64 KiB pieces spread over it.
    let writes: Vec<String> = (0..10)
        .map(|i| format!("w -P {} {}k 64k", i + 1, i * 6 * 1024))
        .collect();
    let cmds: Vec<&str> = writes.iter().map(String::as_str).collect();
    qemu_io(&a.uri(), &cmds);
    assert!(a.proc_drbd().contains("oos:640"), "{}", a.proc_drbd());
    b.ok(&["up", "r0"]);
    c.wait_states("Connected", ["UpToDate", "UpToDate"]);
    let log = b.log();
    assert!(log.contains("uuid_compare()=-1 by rule 50"), "{log}");
    assert!(
        log.contains("Began resync as SyncTarget (will sync 640 KB [160 bits set])."),
        "only what changed is resynced: {log}"
    );
    assert!(c.data_identical(DATA));
}

#[test]
fn primary_killed_during_fio_verify_then_the_secondary_has_every_acked_write() {
    if !require("fio", "fio") {
        return;
    }
    let c = Cluster::new(ClusterOpts::default());
    c.up_skipping_sync();
    let (a, b) = (c.node(0), c.node(1));
    a.ok(&["primary", "r0"]);
    let work = c.dir.path().join("fio");
    std::fs::create_dir_all(&work).expect("fio dir");
    let fio = |uri: &str, extra: &[&str]| {
        let mut cmd = Command::new("fio");
        cmd.current_dir(&work).args([
            "--name=crash",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--size=48M",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--verify_state_save=1",
            "--randrepeat=1",
        ]);
        cmd.args(extra);
        cmd
    };
    let mut writer = fio(&a.uri(), &["--do_verify=0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("fio");
    // Kill alpha once a good amount has been written and mirrored.
    a.wait_for("8 MiB written", |n| {
        n.proc_drbd()
            .split_whitespace()
            .find_map(|w| w.strip_prefix("dw:"))
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|kib| kib >= 8 * 1024)
    });
    a.kill9();
    let status = writer.wait().expect("fio");
    assert!(
        !status.success(),
        "fio finished before the kill: the test would prove nothing"
    );
    b.wait_for("the peer gone", |n| n.query("cstate") == "WFConnection");
    b.ok(&["primary", "r0"]);
    // fio verifies what its saved state says completed before the crash.
    // fio counts the writes that failed when alpha died as written (its verify state has no
    // record of their failure), so at most `iodepth` blocks may be reported, each one never
    // written on the Secondary. The strict check, with exact acknowledgements, is
    // `primary_killed_mid_write_the_secondary_holds_every_acknowledged_write`.
    let report = work.join("verify.json");
    let output = format!("--output={}", report.display());
    let out = fio(
        &b.uri(),
        &[
            "--verify_only",
            "--verify_state_load=1",
            "--verify_fatal=0",
            "--output-format=json",
            &output,
        ],
    )
    .output()
    .expect("fio verify");
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let bad = fio_mismatched_offsets(&stderr);
    assert!(
        bad.len() <= 16 && bad.iter().all(|&o| b.untouched(o)),
        "verify on the promoted Secondary failed:\n{stderr}\n{}",
        mismatch_report(&c, &stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&text).expect("fio json");
    let verified = v["jobs"][0]["read"]["io_bytes"].as_u64().unwrap_or(0);
    let _ = out;
    assert!(
        verified >= 8 * MIB,
        "fio verified only {verified} bytes: {text}"
    );
    // The old Primary comes back as the target of a bitmap resync.
    a.ok(&["up", "r0"]);
    c.wait_states("Connected", ["UpToDate", "UpToDate"]);
    assert!(
        a.log().contains("Began resync as SyncTarget"),
        "{}",
        a.log()
    );
    assert!(c.data_identical(DATA));
}

#[test]
fn a_wrong_shared_secret_is_refused() {
    let secret = |s: &str| format!("    cram-hmac-alg sha256;\n    shared-secret \"{s}\";");
    let c = Cluster::new(ClusterOpts {
        net: [secret("right"), secret("wrong")],
        ..ClusterOpts::default()
    });
    c.up();
    c.node(1).wait_for("the refusal", |n| {
        n.log().contains("Authentication of peer failed")
    });
    for n in &c.nodes {
        assert_eq!(n.query("cstate"), "WFConnection");
    }
}

#[test]
fn a_peer_too_small_for_the_data_is_refused() {
    let c = Cluster::new(ClusterOpts {
        sizes: [64 * MIB, 32 * MIB],
        ..ClusterOpts::default()
    });
    for n in &c.nodes {
        n.ok(&["create-md", "--force", "r0"]);
    }
    let (a, b) = (c.node(0), c.node(1));
    a.ok(&["up", "r0"]);
    a.ok(&["primary", "--force", "r0"]);
    b.ok(&["up", "r0"]);
    a.wait_for("the refusal", |n| {
        n.log().contains("The peer's disk size is too small!")
    });
    a.wait_for("StandAlone", |n| n.query("cstate") == "StandAlone");
}

/// For a failed fio verify: what each node's disk holds at the offset fio names.
fn mismatch_report(c: &Cluster, fio_stderr: &str) -> String {
    use std::os::unix::fs::FileExt;
    let Some(offset) = fio_stderr
        .split("offset ")
        .nth(1)
        .and_then(|r| r.split([',', ' ']).next())
        .and_then(|n| n.parse::<u64>().ok())
    else {
        return String::new();
    };
    let mut out = String::new();
    for n in &c.nodes {
        let mut b = [0u8; 16];
        let r = std::fs::File::open(&n.disk).and_then(|f| f.read_exact_at(&mut b, offset));
        out.push_str(&format!("{} at {offset}: {r:?} {b:02x?}\n", n.name));
    }
    out
}

#[test]
fn primary_killed_mid_write_the_secondary_holds_every_acknowledged_write() {
    let c = Cluster::new(ClusterOpts::default());
    c.up_skipping_sync();
    let (a, b) = (c.node(0), c.node(1));
    a.ok(&["primary", "r0"]);
    let pid = a.pid().expect("alpha's pid");
    let socket = a.run.join("nbd.sock");
    let acked = tandem_tests::acked::write_until_failure(&socket, "r0", 12 * 1024, 16, 7, |n| {
        if n == 3000 {
            // SAFETY: kill on the pid alpha's daemon recorded.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    assert!(
        (3000..12 * 1024).contains(&acked.len()),
        "the kill came mid-stream: {} acknowledged",
        acked.len()
    );
    b.wait_for("the peer gone", |n| n.query("cstate") == "WFConnection");
    let missing = tandem_tests::acked::missing(&b.disk, &acked);
    assert!(
        missing.is_empty(),
        "{} acknowledged writes are not on the Secondary, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    b.ok(&["primary", "r0"]);
}

#[test]
fn split_brain_is_detected_and_the_handler_runs() {
    if !require("qemu-io", "qemu-utils") {
        return;
    }
    let marks = tempfile::tempdir().expect("tempdir");
    let c = Cluster::new(ClusterOpts {
        handlers: format!(
            "split-brain \"echo $DRBD_RESOURCE > {}/sb-$DRBD_MINOR-$$\";",
            marks.path().display()
        ),
        ..ClusterOpts::default()
    });
    c.up_skipping_sync();
    let (a, b) = (c.node(0), c.node(1));
    for n in &c.nodes {
        n.ok(&["disconnect", "r0"]);
        assert_eq!(n.query("cstate"), "StandAlone");
    }
    a.ok(&["primary", "r0"]);
    b.ok(&["primary", "r0"]);
    qemu_io(&a.uri(), &["w -P 1 0 64k"]);
    qemu_io(&b.uri(), &["w -P 2 1M 64k"]);
    for n in &c.nodes {
        n.ok(&["connect", "r0"]);
    }
    for n in &c.nodes {
        n.wait_for("split brain", |n| {
            n.log()
                .contains("Split-Brain detected but unresolved, dropping connection!")
                && n.query("cstate") == "StandAlone"
        });
        assert!(
            n.log().contains("uuid_compare()=100 by rule 90"),
            "{}",
            n.log()
        );
    }
    // Both handlers ran (one file per run).
    let wait = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_dir(marks.path()).map_or(0, |d| d.count()) < 2 {
        assert!(
            std::time::Instant::now() < wait,
            "split-brain handler did not run twice"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Nothing was merged: each node kept its own write.
    assert!(!c.data_identical(DATA));
}

/// How often this node's engine dropped a connection over a split brain it could not resolve.
fn unresolved_split_brains(n: &tandem_tests::cluster::ClusterNode) -> usize {
    n.log()
        .matches("Split-Brain detected but unresolved, dropping connection!")
        .count()
}

/// How often this node took the peer's data over its own because of `--discard-my-data`.
fn discarded_by_hand(n: &tandem_tests::cluster::ClusterNode) -> usize {
    n.log()
        .matches("Split-Brain detected, manually solved. Sync from peer node")
        .count()
}

/// `len` bytes of this node's backing file at `offset`.
fn bytes_at(n: &tandem_tests::cluster::ClusterNode, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut b = vec![0u8; len];
    std::fs::File::open(&n.disk)
        .and_then(|f| f.read_exact_at(&mut b, offset))
        .expect("read the backing file");
    b
}

/// Whether `len` bytes at `offset` all hold `byte`.
fn filled(n: &tandem_tests::cluster::ClusterNode, offset: u64, len: usize, byte: u8) -> bool {
    bytes_at(n, offset, len).iter().all(|&b| b == byte)
}

/// DRBD's manual split-brain recovery: on the victim `disconnect`, `secondary`,
/// `connect --discard-my-data`, on the survivor `connect`; the victim becomes SyncTarget and its
/// changes since the split are gone. The flag holds for one connection: a later split brain
/// reached by the link's own reconnect, or by a plain `connect`, is not resolved by it again.
#[test]
fn split_brain_recovered_by_hand_with_discard_my_data() {
    if !require("qemu-io", "qemu-utils") {
        return;
    }
    const K64: usize = 64 << 10;
    let c = Cluster::new(ClusterOpts::default());
    c.up();
    c.wait_states("Connected", ["Inconsistent", "Inconsistent"]);
    let (survivor, victim) = (c.node(0), c.node(1));
    survivor.ok(&["new-current-uuid", "--clear-bitmap", "r0"]);
    c.wait_states("Connected", ["UpToDate", "UpToDate"]);

    // A split brain, as in `split_brain_is_detected_and_the_handler_runs`; the victim's first
    // write overlaps the survivor's.
    for n in &c.nodes {
        n.ok(&["disconnect", "r0"]);
    }
    survivor.ok(&["primary", "r0"]);
    victim.ok(&["primary", "r0"]);
    qemu_io(&survivor.uri(), &["w -P 0x11 0 64k", "w -P 0x12 2M 64k"]);
    qemu_io(&victim.uri(), &["w -P 0x21 32k 64k", "w -P 0x22 5M 64k"]);
    for n in &c.nodes {
        n.ok(&["connect", "r0"]);
    }
    for n in &c.nodes {
        n.wait_for("an unresolved split brain", |n| {
            unresolved_split_brains(n) == 1 && n.query("cstate") == "StandAlone"
        });
    }
    assert!(!c.data_identical(DATA));

    // The recovery, in DRBD 8.4's words.
    victim.ok(&["disconnect", "r0"]);
    victim.ok(&["secondary", "r0"]);
    victim.ok(&["connect", "--discard-my-data", "r0"]);
    // Only a connection that starts takes the flag.
    let o = victim.drbdadm(&["connect", "--discard-my-data", "r0"]);
    assert_eq!(o.status.code(), Some(10));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("r0: Failure: (102) Device has a net-config (use disconnect first)"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    survivor.ok(&["connect", "r0"]);
    victim.wait_for("the split brain solved by hand", |n| {
        discarded_by_hand(n) == 1
    });
    // Each side decides on its own; the survivor may log a moment after the victim.
    survivor.wait_for("the survivor's side of it", |n| {
        n.log()
            .contains("Split-Brain detected, manually solved. Sync from this node")
    });
    c.wait_states("Connected", ["UpToDate", "UpToDate"]);
    assert!(
        victim.log().contains("Began resync as SyncTarget"),
        "{}",
        victim.log()
    );
    assert_eq!(survivor.ok(&["role", "r0"]), "Primary/Secondary\n");
    assert!(
        c.data_identical(DATA),
        "the victim's data area differs from the survivor's: {:?} (first offset, 4 KiB blocks)",
        c.differences(DATA)
    );
    // The survivor's writes are there, the victim's are gone.
    assert!(filled(victim, 0, K64, 0x11));
    assert!(filled(victim, 64 << 10, 32 << 10, 0));
    assert!(filled(victim, 2 * MIB, K64, 0x12));
    assert!(filled(victim, 5 * MIB, K64, 0));

    // One-shot: the survivor's `disconnect` sends the victim back to WFConnection, and its link
    // reconnects by itself, with no new `connect` on the victim. A new split brain found on
    // that reconnect is not resolved by the used-up flag.
    survivor.ok(&["disconnect", "r0"]);
    victim.wait_for("WFConnection", |n| n.query("cstate") == "WFConnection");
    victim.ok(&["primary", "r0"]);
    qemu_io(&victim.uri(), &["w -P 0x31 7M 64k"]);
    victim.ok(&["secondary", "r0"]);
    qemu_io(&survivor.uri(), &["w -P 0x13 9M 64k"]);
    survivor.ok(&["connect", "r0"]);
    for n in &c.nodes {
        n.wait_for("a second unresolved split brain", |n| {
            unresolved_split_brains(n) == 2 && n.query("cstate") == "StandAlone"
        });
    }
    // A plain `connect` on both does not discard either.
    for n in &c.nodes {
        n.ok(&["connect", "r0"]);
    }
    for n in &c.nodes {
        n.wait_for("a third unresolved split brain", |n| {
            unresolved_split_brains(n) == 3 && n.query("cstate") == "StandAlone"
        });
    }
    assert_eq!(discarded_by_hand(victim), 1, "{}", victim.log());
    assert_eq!(discarded_by_hand(survivor), 0, "{}", survivor.log());
    // Each side kept its own write.
    assert!(filled(victim, 7 * MIB, K64, 0x31));
    assert!(filled(victim, 9 * MIB, K64, 0));
    assert!(filled(survivor, 9 * MIB, K64, 0x13));
    assert!(filled(survivor, 7 * MIB, K64, 0));
}

#[test]
fn invalidate_remote_on_the_primary_resyncs_the_whole_peer() {
    let c = Cluster::new(ClusterOpts::default());
    c.up();
    c.wait_states("Connected", ["Inconsistent", "Inconsistent"]);
    let (a, b) = (c.node(0), c.node(1));
    a.ok(&["primary", "--force", "r0"]);
    c.wait_states("Connected", ["UpToDate", "UpToDate"]);
    assert!(c.data_identical(DATA));
    // Beta's copy rots behind DRBD's back: no bitmap knows it.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&b.disk)
            .expect("disk");
        f.write_all_at(&[0x77; 8192], 20 * MIB).expect("rot");
        f.sync_all().expect("sync");
    }
    assert!(!c.data_identical(DATA));
    a.ok(&["invalidate-remote", "r0"]);
    b.wait_for("the full sync to begin", |n| {
        n.log()
            .contains("Began resync as SyncTarget (will sync 65496 KB")
    });
    c.wait_states("Connected", ["UpToDate", "UpToDate"]);
    assert!(
        a.log()
            .contains("Began resync as SyncSource (will sync 65496 KB"),
        "{}",
        a.log()
    );
    assert!(b.log().contains("StartingSyncT"), "{}", b.log());
    assert_eq!(a.ok(&["role", "r0"]), "Primary/Secondary\n");
    assert!(c.data_identical(DATA), "the full sync rewrote beta's copy");

    // The second primary is refused with DRBD's message and drbdadm's exit code.
    let o = b.drbdadm(&["primary", "r0"]);
    assert_eq!(o.status.code(), Some(11));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "0: State change failed: (-1) Multiple primaries not allowed by config\n\
         Command 'drbdsetup-84 primary 0' terminated with exit code 11\n"
    );
    // Without a connection, a Secondary cannot invalidate its peer (StartingSyncS needs one).
    b.ok(&["disconnect", "r0"]);
    let o = b.drbdadm(&["invalidate-remote", "r0"]);
    assert_eq!(o.status.code(), Some(11));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "0: State change failed: (-15) Need a connection to start verify or resync\n\
         Command 'drbdsetup-84 invalidate-remote 0' terminated with exit code 11\n"
    );
}

/// `detach` of a Primary whose peer is UpToDate: it stays Primary and Connected, Diskless,
/// and its NBD clients read and write through the peer; `attach` brings the disk back as the
/// target of a resync of what was written meanwhile.
#[test]
fn a_detached_primary_serves_through_its_peer_until_attached_again() {
    if !require("qemu-io", "qemu-utils") {
        return;
    }
    let c = Cluster::new(ClusterOpts::default());
    c.up_skipping_sync();
    let (a, b) = (c.node(0), c.node(1));
    a.ok(&["primary", "r0"]);
    qemu_io(&a.uri(), &["w -P 0x21 1M 64k", "flush"]);
    a.ok(&["detach", "r0"]);
    assert_eq!(a.ok(&["dstate", "r0"]), "Diskless/UpToDate\n");
    assert_eq!(a.ok(&["role", "r0"]), "Primary/Secondary\n");
    assert_eq!(a.ok(&["cstate", "r0"]), "Connected\n");
    qemu_io(&a.uri(), &["r -P 0x21 1M 64k", "w -P 0x32 2M 64k", "flush"]);
    assert!(filled(b, 2 * MIB, 65536, 0x32), "the write is on the peer");
    a.ok(&["attach", "r0"]);
    c.wait_states("Connected", ["UpToDate", "UpToDate"]);
    assert!(
        a.log().contains("Began resync as SyncTarget"),
        "{}",
        a.log()
    );
    assert!(filled(a, 2 * MIB, 65536, 0x32), "and resynced back");
    assert!(c.data_identical(DATA));
}
