//! A two-volume resource on two daemons, driven through the real `drbdadm`: one connection
//! carries both volumes, each with its own handshake, resync, NBD export (`r0/0`, `r0/1`) and
//! status lines; `RES/VOL` names one volume; a `disk none` volume is served by its peer.

use std::os::unix::fs::FileExt;
use std::process::Command;

use tandem_tests::cluster::{files_equal, Cluster, ClusterNode, ClusterOpts};
use tandem_tests::*;

const MIB: u64 = 1 << 20;
/// What the data areas of 64 MiB backing files are compared over.
const DATA: u64 = 63 * MIB;

/// Waits until `drbdadm WHAT RES` on `node` prints `want`.
fn wait_query(node: &ClusterNode, what: &str, res: &str, want: &str) {
    node.wait_for(&format!("{what} {res} = {want}"), |n| {
        String::from_utf8_lossy(&n.drbdadm(&[what, res]).stdout).trim() == want
    });
}

fn read_at(path: &std::path::Path, offset: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(path).expect("backing file");
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, offset).expect("read");
    b
}

fn two_volumes(diskless: Vec<(usize, u32)>) -> Cluster {
    Cluster::new(ClusterOpts {
        volumes: 2,
        diskless,
        ..ClusterOpts::default()
    })
}

#[test]
fn two_volumes_sync_over_one_connection_and_keep_their_own_data() {
    if !require("qemu-io", "qemu-utils") {
        return;
    }
    let c = two_volumes(vec![]);
    c.up();
    let (a, b) = (c.node(0), c.node(1));
    for n in [a, b] {
        for v in ["r0/0", "r0/1"] {
            wait_query(n, "cstate", v, "Connected");
            wait_query(n, "dstate", v, "Inconsistent/Inconsistent");
        }
    }
    assert_eq!(a.ok(&["cstate", "r0"]), "Connected\nConnected\n");
    a.ok(&["primary", "--force", "r0"]);
    for n in [a, b] {
        for v in ["r0/0", "r0/1"] {
            wait_query(n, "dstate", v, "UpToDate/UpToDate");
        }
    }
    // Each volume ran its own handshake and resync on the one connection.
    let log = b.log();
    assert_eq!(
        log.matches("Began resync as SyncTarget").count(),
        2,
        "{log}"
    );
    assert!(
        log.contains("block drbd0") && log.contains("block drbd1"),
        "{log}"
    );
    assert_eq!(
        a.log().matches("Handshake successful").count(),
        1,
        "one connection for both volumes\n{}",
        a.log()
    );

    // Different data on each volume, through its own export; `r0` is volume 0.
    qemu_io(&a.uri_of("r0/0"), &["w -P 0x11 1M 64k", "flush"]);
    qemu_io(&a.uri_of("r0/1"), &["w -P 0x22 1M 64k", "flush"]);
    qemu_io(&a.uri(), &["r -P 0x11 1M 64k"]);
    qemu_io(&a.uri_of("r0/1"), &["r -P 0x22 1M 64k"]);
    for (v, pattern) in [(0, 0x11u8), (1, 0x22)] {
        for n in [a, b] {
            assert_eq!(
                read_at(&n.disks[v], MIB, 65536),
                vec![pattern; 65536],
                "{}'s volume {v}",
                n.name
            );
        }
        assert!(
            files_equal(&a.disks[v], &b.disks[v], DATA),
            "volume {v} differs between the nodes"
        );
    }

    // Status: one block per minor in /proc/drbd, `volume:N` lines in `status`.
    let proc = a.proc_drbd();
    for minor in [0, 1] {
        assert!(
            proc.contains(&format!(
                " {minor}: cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate C r-----"
            )),
            "{proc}"
        );
    }
    let status = a.ok(&["status", "r0"]);
    assert!(
        status.contains("volume:0 disk:UpToDate") && status.contains("volume:1 disk:UpToDate"),
        "{status}"
    );
    assert!(
        status.contains("volume:1 replication:Established peer-disk:UpToDate"),
        "{status}"
    );
    let json = a.ok(&["status", "--json", "r0"]);
    assert!(
        json.contains("\"minor\": 1") || json.contains("\"minor\":1"),
        "{json}"
    );

    // RES/VOL acts on one volume; whole-resource commands refuse it as drbdadm does.
    assert_eq!(a.ok(&["dstate", "r0/1"]), "UpToDate/UpToDate\n");
    assert_eq!(a.ok(&["role", "r0/1"]), "Primary/Secondary\n");
    a.ok(&["secondary", "r0/1"]);
    assert_eq!(a.ok(&["role", "r0/1"]), "Secondary/Secondary\n");
    assert_eq!(a.ok(&["role", "r0/0"]), "Primary/Secondary\n");
    let o = a.drbdadm(&["disconnect", "r0/1"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(
            "disconnect operates on whole resources, but you specified a specific volume!"
        ),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The Secondary volume is no longer exported; volume 0 still is.
    let o = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "r 0 4k"])
        .arg(a.uri_of("r0/1"))
        .output()
        .expect("qemu-io");
    assert!(
        !o.status.success() || String::from_utf8_lossy(&o.stdout).contains("failed"),
        "a Secondary volume refuses NBD"
    );
    qemu_io(&a.uri_of("r0/0"), &["r -P 0x11 1M 4k"]);

    // Down, then the generation identifiers of each volume agree between the nodes.
    a.ok(&["secondary", "r0"]);
    for n in [a, b] {
        n.ok(&["down", "r0"]);
    }
    for v in ["r0/0", "r0/1"] {
        let (ga, gb) = (a.ok(&["get-gi", v]), b.ok(&["get-gi", v]));
        let current = |g: &str| g.split(':').next().unwrap_or("").to_owned();
        assert_eq!(current(&ga), current(&gb), "{v}: {ga} vs {gb}");
    }
    assert_ne!(
        a.ok(&["get-gi", "r0/0"]).split(':').next(),
        a.ok(&["get-gi", "r0/1"]).split(':').next(),
        "each volume has its own generation"
    );
}

#[test]
fn a_diskless_volume_reads_and_writes_through_its_peer() {
    if !require("qemu-io", "qemu-utils") {
        return;
    }
    // beta's volume 1 is `disk none`.
    let c = two_volumes(vec![(1, 1)]);
    c.up();
    let (a, b) = (c.node(0), c.node(1));
    wait_query(a, "cstate", "r0/1", "Connected");
    wait_query(b, "cstate", "r0/1", "Connected");
    wait_query(a, "dstate", "r0/1", "Inconsistent/Diskless");
    wait_query(b, "dstate", "r0/1", "Diskless/Inconsistent");
    wait_query(b, "dstate", "r0/0", "Inconsistent/Inconsistent");
    a.ok(&["primary", "--force", "r0"]);
    wait_query(b, "dstate", "r0/0", "UpToDate/UpToDate");
    wait_query(b, "dstate", "r0/1", "Diskless/UpToDate");
    assert!(
        !b.log().contains("drbd1: Began resync"),
        "nothing to resync to a diskless volume\n{}",
        b.log()
    );
    a.ok(&["secondary", "r0"]);
    // The demotion reaches the peer with alpha's next P_STATE.
    wait_query(b, "role", "r0/0", "Secondary/Secondary");
    wait_query(b, "role", "r0/1", "Secondary/Secondary");
    b.ok(&["primary", "r0"]);
    let before = read_at(&b.disks[1], 2 * MIB, 4096);
    qemu_io(&b.uri_of("r0/1"), &["w -P 0x5a 2M 64k", "flush"]);
    qemu_io(&b.uri_of("r0/1"), &["r -P 0x5a 2M 64k"]);
    assert_eq!(
        read_at(&a.disks[1], 2 * MIB, 65536),
        vec![0x5a; 65536],
        "the write is on the peer's disk"
    );
    assert_eq!(
        read_at(&b.disks[1], 2 * MIB, 4096),
        before,
        "nothing touched the diskless node's unused file"
    );
    assert_eq!(
        b.ok(&["-d", "adjust", "r0"]),
        "",
        "a `disk none` volume has nothing to attach"
    );
    let proc = b.proc_drbd();
    assert!(
        proc.contains(" 1: cs:Connected ro:Primary/Secondary ds:Diskless/UpToDate C r-----"),
        "{proc}"
    );
    assert!(
        proc.contains(" 0: cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate C r-----"),
        "{proc}"
    );
}

/// Node beta is configured with volume 0 only: alpha's volume 1 stays in WFReportParams (no
/// peer ever reports on it), volume 0 replicates.
#[test]
fn a_volume_the_peer_lacks_waits_and_the_others_work() {
    if !require("qemu-io", "qemu-utils") {
        return;
    }
    let c = two_volumes(vec![]);
    let (a, b) = (c.node(0), c.node(1));
    // beta's configuration has volume 0 only.
    let text = std::fs::read_to_string(&b.res).expect("res");
    let one: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("volume 1 "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&b.res, one).expect("res");
    c.up();
    wait_query(a, "cstate", "r0/0", "Connected");
    wait_query(b, "cstate", "r0", "Connected");
    // DRBD's receiver ignores configuration packets for a volume it does not have.
    b.wait_for("the warning", |n| {
        n.log()
            .contains("packet received for volume 1, which is not configured locally")
    });
    assert_eq!(a.ok(&["cstate", "r0/1"]), "WFReportParams\n");
    a.ok(&["primary", "--force", "r0/0"]);
    wait_query(b, "dstate", "r0", "UpToDate/UpToDate");
    qemu_io(&a.uri_of("r0/0"), &["w -P 0x33 0 64k", "flush"]);
    assert_eq!(read_at(&b.disks[0], 0, 65536), vec![0x33; 65536]);
    assert_eq!(a.ok(&["cstate", "r0/1"]), "WFReportParams\n");
}

/// Detaching one volume leaves it in the connection, Diskless (DRBD's Connected/Diskless);
/// attaching it brings it back, and what was written meanwhile is resynced.
#[test]
fn one_volume_detaches_and_attaches_while_the_other_works() {
    if !require("qemu-io", "qemu-utils") {
        return;
    }
    let c = two_volumes(vec![]);
    c.up();
    let (a, b) = (c.node(0), c.node(1));
    wait_query(b, "dstate", "r0/1", "Inconsistent/Inconsistent");
    a.ok(&["new-current-uuid", "--clear-bitmap", "r0/0"]);
    a.ok(&["new-current-uuid", "--clear-bitmap", "r0/1"]);
    for v in ["r0/0", "r0/1"] {
        wait_query(b, "dstate", v, "UpToDate/UpToDate");
    }
    a.ok(&["primary", "r0"]);
    b.ok(&["detach", "r0/1"]);
    assert_eq!(
        b.ok(&["dstate", "r0/1"]),
        "Diskless/UpToDate
"
    );
    assert_eq!(
        b.ok(&["cstate", "r0/1"]),
        "Connected
"
    );
    wait_query(a, "dstate", "r0/1", "UpToDate/Diskless");
    assert_eq!(
        a.ok(&["cstate", "r0"]),
        "Connected
Connected
"
    );
    assert!(
        !b.log().contains("reconnecting") && !a.log().contains("connection lost"),
        "the connection stays: {}",
        b.log()
    );
    let proc = b.proc_drbd();
    assert!(
        proc.contains(" 1: cs:Connected ro:Secondary/Primary ds:Diskless/UpToDate C r-----"),
        "{proc}"
    );
    qemu_io(&a.uri_of("r0/0"), &["w -P 0x44 0 64k", "flush"]);
    assert_eq!(read_at(&b.disks[0], 0, 65536), vec![0x44; 65536]);
    qemu_io(&a.uri_of("r0/1"), &["w -P 0x55 0 64k", "flush"]);
    assert_eq!(read_at(&b.disks[1], 0, 65536), vec![0u8; 65536]);
    assert!(a.proc_drbd().contains("oos:64"), "{}", a.proc_drbd());
    // `adjust` attaches just the detached volume.
    let plan = b.ok(&["-d", "adjust", "r0"]);
    assert!(
        plan.contains("attach 1 ") && !plan.contains("attach 0 "),
        "{plan}"
    );
    b.ok(&["adjust", "r0"]);
    wait_query(b, "dstate", "r0/1", "UpToDate/UpToDate");
    wait_query(b, "cstate", "r0/1", "Connected");
    assert_eq!(read_at(&b.disks[1], 0, 65536), vec![0x55; 65536]);
    assert!(files_equal(&a.disks[1], &b.disks[1], DATA));
    qemu_io(&a.uri_of("r0/0"), &["w -P 0x66 64k 64k", "flush"]);
    assert_eq!(read_at(&b.disks[0], 65536, 65536), vec![0x66; 65536]);
}

/// `create-md` of every volume on both nodes, nothing up.
fn two_volumes_created() -> Cluster {
    let c = two_volumes(vec![]);
    for i in 0..2 {
        c.node(i).ok(&["create-md", "--force", "r0"]);
    }
    c
}

/// `up r0/1` brings up volume 1 alone (its task, its export, its status lines, the resource's
/// connection); `up r0/0` later adds volume 0 to the running resource, and a second `up` of a
/// volume that is up is refused as a second `up r0` is.
#[test]
fn one_volume_comes_up_alone_and_the_other_joins_it_later() {
    if !require("qemu-io", "qemu-utils") {
        return;
    }
    let c = two_volumes_created();
    let (a, b) = (c.node(0), c.node(1));
    for n in [a, b] {
        n.ok(&["up", "r0/1"]);
    }
    for n in [a, b] {
        wait_query(n, "cstate", "r0/1", "Connected");
        wait_query(n, "dstate", "r0/1", "Inconsistent/Inconsistent");
    }
    // Only volume 1 shows: the per-volume queries say volume 0 is not configured.
    assert_eq!(a.ok(&["cstate", "r0"]), "Unconfigured\nConnected\n");
    assert_eq!(a.ok(&["cstate", "r0/0"]), "Unconfigured\n");
    let proc = a.proc_drbd();
    assert!(
        proc.contains(" 1: cs:Connected ro:Secondary/Secondary ds:Inconsistent/Inconsistent C")
            && !proc.contains(" 0: cs:"),
        "{proc}"
    );
    let status = a.ok(&["status", "r0"]);
    assert!(
        status.contains("volume:1 disk:Inconsistent") && !status.contains("volume:0"),
        "{status}"
    );
    a.ok(&["new-current-uuid", "--clear-bitmap", "r0/1"]);
    for n in [a, b] {
        wait_query(n, "dstate", "r0/1", "UpToDate/UpToDate");
    }
    a.ok(&["primary", "r0/1"]);
    qemu_io(&a.uri_of("r0/1"), &["w -P 0x77 1M 64k", "flush"]);
    assert_eq!(read_at(&b.disks[1], MIB, 65536), vec![0x77; 65536]);

    // A second `up` of the volume is refused, naming its minor.
    let o = a.drbdadm(&["up", "r0/1"]);
    assert_eq!(o.status.code(), Some(10));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines[0],
        "1: Failure: (124) Device is attached to a disk (use detach first); r0/1 is already up",
        "{err}"
    );
    // Then the step drbdadm names, as for any failed attach.
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[1].starts_with(&format!(
            "Command 'drbdsetup-84 attach 1 {}",
            a.disks[1].display()
        )),
        "{err}"
    );

    // Volume 0 joins the running resource on both nodes (`adjust` on one, which plans just
    // it): one connection again, both volumes in it, volume 1 still Primary with its data.
    let plan = b.ok(&["-d", "adjust", "r0"]);
    assert!(
        plan.starts_with("drbdsetup-84 new-minor r0 0 0\n")
            && plan.contains("attach 0 ")
            && !plan.contains("attach 1 ")
            && !plan.contains("connect"),
        "{plan}"
    );
    a.ok(&["up", "r0/0"]);
    b.ok(&["adjust", "r0"]);
    for n in [a, b] {
        for v in ["r0/0", "r0/1"] {
            wait_query(n, "cstate", v, "Connected");
        }
        wait_query(n, "dstate", "r0/0", "Inconsistent/Inconsistent");
    }
    assert!(
        a.log()
            .contains("volume 0 joins the connection; reconnecting"),
        "{}",
        a.log()
    );
    wait_query(a, "dstate", "r0/1", "UpToDate/UpToDate");
    assert_eq!(a.ok(&["role", "r0/1"]), "Primary/Secondary\n");
    qemu_io(&a.uri_of("r0/1"), &["r -P 0x77 1M 64k"]);
    a.ok(&["new-current-uuid", "--clear-bitmap", "r0/0"]);
    wait_query(b, "dstate", "r0/0", "UpToDate/UpToDate");
    a.ok(&["primary", "r0/0"]);
    qemu_io(&a.uri_of("r0/0"), &["w -P 0x78 0 64k", "flush"]);
    qemu_io(&a.uri_of("r0/1"), &["w -P 0x79 2M 64k", "flush"]);
    assert_eq!(read_at(&b.disks[0], 0, 65536), vec![0x78; 65536]);
    assert_eq!(read_at(&b.disks[1], 2 * MIB, 65536), vec![0x79; 65536]);
    assert_eq!(read_at(&b.disks[1], MIB, 65536), vec![0x77; 65536]);
    assert!(files_equal(&a.disks[1], &b.disks[1], DATA));
    // Every volume is up now: `up r0` is refused as before.
    let o = a.drbdadm(&["up", "r0"]);
    assert_eq!(o.status.code(), Some(10));
    assert!(
        String::from_utf8_lossy(&o.stderr).starts_with(
            "0: Failure: (124) Device is attached to a disk (use detach first); r0 is already up\n"
        ),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let status = a.ok(&["status", "r0"]);
    assert!(
        status.contains("volume:0 disk:UpToDate") && status.contains("volume:1 disk:UpToDate"),
        "{status}"
    );
}

/// `up r0` on alpha while beta has only `r0/1` up: alpha's volume 0 waits in WFReportParams,
/// beta ignores its configuration packets with DRBD's warning, volume 1 replicates; `up r0`
/// on beta then brings up just the missing volume 0, which connects.
#[test]
fn a_volume_up_on_one_node_only_waits_for_the_peer_to_bring_it_up() {
    if !require("qemu-io", "qemu-utils") {
        return;
    }
    let c = two_volumes_created();
    let (a, b) = (c.node(0), c.node(1));
    b.ok(&["up", "r0/1"]);
    a.ok(&["up", "r0"]);
    wait_query(a, "cstate", "r0/1", "Connected");
    wait_query(b, "cstate", "r0/1", "Connected");
    b.wait_for("the warning", |n| {
        n.log()
            .contains("packet received for volume 0, which is not configured locally")
    });
    assert_eq!(a.ok(&["cstate", "r0/0"]), "WFReportParams\n");
    assert_eq!(b.ok(&["cstate", "r0"]), "Unconfigured\nConnected\n");
    a.ok(&["new-current-uuid", "--clear-bitmap", "r0/1"]);
    wait_query(b, "dstate", "r0/1", "UpToDate/UpToDate");
    a.ok(&["primary", "r0/1"]);
    qemu_io(&a.uri_of("r0/1"), &["w -P 0x3a 0 64k", "flush"]);
    assert_eq!(read_at(&b.disks[1], 0, 65536), vec![0x3a; 65536]);
    assert_eq!(a.ok(&["cstate", "r0/0"]), "WFReportParams\n");

    // `up r0` with volume 1 up brings up volume 0 only.
    b.ok(&["up", "r0"]);
    for n in [a, b] {
        wait_query(n, "cstate", "r0", "Connected\nConnected");
        wait_query(n, "dstate", "r0/0", "Inconsistent/Inconsistent");
    }
    assert_eq!(a.ok(&["role", "r0/1"]), "Primary/Secondary\n");
    qemu_io(&a.uri_of("r0/1"), &["r -P 0x3a 0 64k"]);
}
