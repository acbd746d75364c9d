//! `timeout` and `ko-count` under two daemons on loopback: the Secondary's backing store hangs
//! (nbdkit's pause filter behind nbdfuse) while its process, its link and its pings stay
//! alive. The Primary's mirrored write is never acked; after `ko-count * timeout` the Primary
//! logs DRBD's "Remote failed to finish a request within ...", drops the connection through
//! `Timeout` and goes on alone. Once the store answers again the nodes reconnect by themselves
//! and resync to identical data.
//!
//! Needs root (FUSE): skipped otherwise, a failure in CI.

use std::time::{Duration, Instant};

use tandem_tests::cluster::{Cluster, ClusterNode, ClusterOpts};
use tandem_tests::faults::{put_disk, HangingDisk};
use tandem_tests::*;

const MIB: u64 = 1 << 20;
/// Backing stores are 64 MiB; the data areas are compared over their first 63 MiB.
const DISK: u64 = 64 * MIB;
const DATA: u64 = 63 * MIB;
/// `timeout 10` (1 s) and `ko-count 2`: a request unanswered for 2 s drops the connection.
const NET: &str = "timeout 10;\n    ko-count 2;";
const EFFECTIVE: Duration = Duration::from_secs(2);

/// How many times `node` logged `needle`.
fn count(node: &ClusterNode, needle: &str) -> usize {
    node.log().matches(needle).count()
}

#[test]
fn a_secondary_whose_disk_hangs_is_dropped_after_ko_count_times_timeout() {
    let tools = [
        ("nbdfuse", "libnbd-bin"),
        ("nbdkit", "nbdkit"),
        ("fusermount3", "fuse3"),
        ("qemu-io", "qemu-utils"),
    ];
    if !require_root("FUSE") || !tools.iter().all(|(t, p)| require(t, p)) {
        return;
    }
    // Declared first, dropped last: unmounted once the daemons are gone.
    let disk = HangingDisk::start(DISK);
    let c = Cluster::new(ClusterOpts {
        net: [NET.into(), NET.into()],
        ..ClusterOpts::default()
    });
    let (a, b) = (c.node(0), c.node(1));
    put_disk(b, &disk.file);
    // Dropped before the cluster: a daemon stuck on the paused store could not be killed.
    let _resume = disk.resume_on_drop();
    c.up_skipping_sync();
    a.ok(&["primary", "r0"]);
    qemu_io(&a.uri(), &["w -P 0x11 0 1M"]);
    assert_eq!(count(a, "Remote failed to finish a request"), 0);

    disk.hang();
    let started = Instant::now();
    // Protocol C: the write completes only once the request timer gave up on the peer.
    qemu_io(&a.uri(), &["w -P 0x22 1M 1M"]);
    let waited = started.elapsed();
    assert!(
        waited >= EFFECTIVE,
        "the write completed after {waited:?}, before ko-count * timeout"
    );
    let log = a.log();
    assert!(
        log.contains("Remote failed to finish a request within")
            && log.contains("> ko-count (2) * timeout (10 * 0.1s)"),
        "{log}"
    );
    assert!(log.contains("conn( Connected -> Timeout )"), "{log}");
    // The Secondary's process stayed alive: it answered pings, and its side of the link only
    // went when the Primary closed it.
    assert!(!log.contains("PingAck did not arrive"), "{log}");
    assert!(b.pid().is_some_and(|p| {
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(p, 0) == 0 }
    }));
    // The Primary keeps serving writes (each may wait for the timer again while the link
    // comes back and the store still hangs) and reads.
    qemu_io(&a.uri(), &["w -P 0x33 2M 1M", "r -P 0x22 1M 1M"]);

    disk.resume();
    c.wait_states("Connected", ["UpToDate", "UpToDate"]);
    qemu_io(&a.uri(), &["r -P 0x11 0 1M", "r -P 0x33 2M 1M"]);
    assert!(
        c.data_identical(DATA),
        "the disks differ after the resync (first offset, 4 KiB blocks): {:?}",
        c.differences(DATA)
    );
}
