//! Backing stores that fail under two daemons on loopback, driven through the real `drbdadm`:
//! a sparse backing file on a tmpfs smaller than it (writes fail with ENOSPC once it is
//! full), and a backing store that starts failing every read and write with EIO (nbdkit's
//! error filter behind nbdfuse: as a regular file, and under a loop device, where buffered
//! writes succeed and the error only surfaces at the next fsync).
//!
//! `on-io-error detach` (the default, section 8 of the reference): the node whose disk fails
//! goes Diskless; a Primary goes on serving reads and writes through its peer, and no write
//! acknowledged to the NBD client is lost. Once the store works again, `drbdadm attach` brings
//! the disk back on the live connection: the node keeps its role, rejoins as a resync target,
//! and both disks end up equal. `call-local-io-error` detaches too and runs the
//! `local-io-error` handler; `pass_on` keeps the disk as Inconsistent.
//!
//! Needs root (mounts, FUSE, loop devices): skipped otherwise, a failure in CI.

use std::path::Path;
use std::process::Command;

use tandem_tests::cluster::{Cluster, ClusterNode, ClusterOpts};
use tandem_tests::faults::{put_disk, sparse_file, ErrorDisk, LoopDev, Tmpfs};
use tandem_tests::*;

const MIB: u64 = 1 << 20;
/// Backing stores are 64 MiB (the usable part ends at 65,496 KiB).
const DISK: u64 = 64 * MIB;
/// The tmpfs that holds a 64 MiB sparse backing file: it is full after about this much.
const TMPFS: u64 = 16 * MIB;
/// What data areas are compared over (the metadata sits in the last 40 KiB).
const DATA: u64 = 63 * MIB;
/// What fio writes (three times what the tmpfs holds).
const WRITTEN: u64 = 48 * MIB;

/// Waits until `node` reports its own disk UpToDate and its peer's gone (`UpToDate/Diskless`).
fn wait_peer_disk_gone(node: &ClusterNode) {
    node.wait_for("the peer's disk gone", |n| {
        n.ok(&["dstate", "r0"]) == "UpToDate/Diskless\n"
    });
}

/// Both nodes up and UpToDate without an initial sync (nothing is written to the backing
/// stores but metadata), node 0 Primary.
fn synced_primary(c: &Cluster) {
    c.up_skipping_sync();
    c.node(0).ok(&["primary", "r0"]);
}

/// The `oos:` (KiB out of sync) of `node`'s `/proc/drbd`.
fn oos_kib(node: &ClusterNode) -> u64 {
    node.proc_drbd()
        .split_whitespace()
        .find_map(|w| w.strip_prefix("oos:"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// fio's job over the first 48 MiB: every 4 KiB block written once, in a random order that
/// `--randrepeat` makes the same in every run, each with a crc32c verify header.
const FIO_JOB: [&str; 8] = [
    "--name=faults",
    "--rw=randwrite",
    "--bs=4k",
    "--size=48M",
    "--randrepeat=1",
    "--verify=crc32c",
    "--verify_fatal=1",
    "--group_reporting",
];

/// Runs fio's job against `node`'s export: the writes (each must succeed), then fio reads
/// every block back through the export and verifies it.
fn fio_write_and_verify(node: &ClusterNode, work: &Path) {
    let out = Command::new("fio")
        .current_dir(work)
        .args(FIO_JOB)
        .args(["--ioengine=nbd", "--iodepth=16", "--do_verify=1"])
        .arg(format!("--uri={}", node.uri()))
        .output()
        .expect("fio");
    assert!(
        out.status.success(),
        "fio on {}'s export: {}\n{}",
        node.name,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Verifies, without writing, that the first 48 MiB of `image` hold what fio's job wrote.
fn fio_verify_file(image: &Path, work: &Path) {
    let out = Command::new("fio")
        .current_dir(work)
        .args(FIO_JOB)
        .args(["--ioengine=psync", "--verify_only"])
        .arg(format!("--filename={}", image.display()))
        .output()
        .expect("fio");
    assert!(
        out.status.success(),
        "fio verify of {}: {}\n{}",
        image.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a scenario does once the failed node runs diskless.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Then {
    Stop,
    /// The backing store works again and the node rejoins with it.
    Rejoin,
}

/// Node `i`, whose disk failed and works again, is attached again with `drbdadm attach` while
/// it runs diskless, connected and Primary: the disk goes Negotiating, the handshake on the
/// live connection makes it the target of a resync from its peer, the node stays Primary
/// throughout, and both data areas are then equal (`disk` is node `i`'s backing store).
fn rejoin_and_converge(c: &Cluster, i: usize, disk: &Path) {
    let (n, peer) = (c.node(i), c.node(1 - i));
    assert_eq!(n.query("dstate"), "Diskless");
    let role = n.ok(&["role", "r0"]);
    n.ok(&["attach", "r0"]);
    c.wait_states("Connected", ["UpToDate", "UpToDate"]);
    let log = n.log();
    assert!(log.contains("disk( Diskless -> Negotiating )"), "{log}");
    assert!(log.contains("Began resync as SyncTarget"), "{log}");
    assert_eq!(n.ok(&["role", "r0"]), role, "the role stays");
    assert!(
        cluster::files_equal(disk, &peer.disk, DATA),
        "the disks differ after the resync (first offset, 4 KiB blocks): {:?}",
        differences(disk, &peer.disk)
    );
    // A second attach is refused as DRBD refuses it.
    let o = n.drbdadm(&["attach", "r0"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("(124)"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Where two data areas first differ, and in how many 4 KiB blocks.
fn differences(x: &Path, y: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::FileExt;
    let (fx, fy) = (std::fs::File::open(x).ok()?, std::fs::File::open(y).ok()?);
    let (mut bx, mut by) = (vec![0u8; 4096], vec![0u8; 4096]);
    let (mut first, mut count) = (None, 0);
    for off in (0..DATA).step_by(4096) {
        let (rx, ry) = (
            fx.read_exact_at(&mut bx, off),
            fy.read_exact_at(&mut by, off),
        );
        if rx.is_err() || ry.is_err() || bx != by {
            first.get_or_insert(off);
            count += 1;
        }
    }
    first.map(|f| (f, count))
}

/// Whether everything these tests need is here (root, the tools); says SKIP otherwise.
fn prerequisites(tools: &[(&str, &str)]) -> bool {
    require_root("mounts, FUSE and loop devices") && tools.iter().all(|(t, p)| require(t, p))
}

const QEMU: (&str, &str) = ("qemu-io", "qemu-utils");
const EIO_TOOLS: [(&str, &str); 3] = [
    ("nbdfuse", "libnbd-bin"),
    ("nbdkit", "nbdkit"),
    ("fusermount3", "fuse3"),
];

/// The Primary's backing file sits on a full tmpfs: the first write that does not fit fails
/// with ENOSPC, the Primary detaches and every write goes on through the Secondary.
#[test]
fn primary_disk_full_detaches_and_the_primary_serves_through_its_peer() {
    primary_disk_full(Then::Stop);
}

/// The same, then with room again the failed disk rejoins and catches up.
#[test]
fn primary_disk_full_then_rejoins_as_a_sync_target() {
    primary_disk_full(Then::Rejoin);
}

fn primary_disk_full(then: Then) {
    if !prerequisites(&[]) || !require_fio_engine("nbd") {
        return;
    }
    let fs = Tmpfs::mount(TMPFS);
    let c = Cluster::new(ClusterOpts::default());
    let (a, b) = (c.node(0), c.node(1));
    let backing = fs.path().join("alpha.img");
    sparse_file(&backing, DISK);
    put_disk(a, &backing);
    synced_primary(&c);
    assert!(
        fs.free() < WRITTEN,
        "the tmpfs must hold less than is written"
    );
    // Every write succeeds: before the error on both disks, the failed one and every later
    // one on the peer's; then fio reads everything back through the diskless Primary.
    fio_write_and_verify(a, c.dir.path());
    let log = a.log();
    assert!(log.contains("No space left on device"), "{log}");
    assert!(log.contains("on-io-error detach"), "{log}");
    assert!(
        log.contains("the backing device failed and was detached"),
        "{log}"
    );
    assert_eq!(a.ok(&["dstate", "r0"]), "Diskless/UpToDate\n");
    assert_eq!(a.ok(&["role", "r0"]), "Primary/Secondary\n");
    assert_eq!(a.ok(&["cstate", "r0"]), "Connected\n");
    wait_peer_disk_gone(b);
    let proc = a.proc_drbd();
    assert!(
        proc.contains(" 0: cs:Connected ro:Primary/Secondary ds:Diskless/UpToDate C r-----"),
        "{proc}"
    );
    // No acknowledged write is lost: all are on the Secondary's disk.
    fio_verify_file(&b.disk, c.dir.path());
    // The Secondary keeps track of what its diskless Primary lacks.
    assert!(oos_kib(b) > 0, "{}", b.proc_drbd());
    if then == Then::Rejoin {
        fs.resize(2 * DISK);
        rejoin_and_converge(&c, 0, &backing);
    }
}

/// `on-io-error call-local-io-error`: like `detach`, and the `local-io-error` handler runs.
#[test]
fn call_local_io_error_runs_the_handler_and_detaches() {
    if !prerequisites(&[QEMU]) {
        return;
    }
    let marks = tempfile::tempdir().expect("tempdir");
    let fs = Tmpfs::mount(TMPFS);
    let c = Cluster::new(ClusterOpts {
        disk: "resync-rate 1000M;\n    on-io-error call-local-io-error;".into(),
        handlers: format!(
            "local-io-error \"echo $DRBD_RESOURCE $DRBD_MINOR > {}/lio-$$\";",
            marks.path().display()
        ),
        ..ClusterOpts::default()
    });
    let a = c.node(0);
    let backing = fs.path().join("alpha.img");
    sparse_file(&backing, DISK);
    put_disk(a, &backing);
    synced_primary(&c);
    // 24 MiB of writes do not fit; each succeeds through the peer.
    qemu_io(&a.uri(), &["w -P 0x61 0 24M", "flush"]);
    a.wait_for("the handler", |_| {
        std::fs::read_dir(marks.path()).map_or(0, |d| d.count()) > 0
    });
    let log = a.log();
    assert!(
        log.contains("helper command: ") && log.contains("local-io-error minor-0"),
        "{log}"
    );
    assert_eq!(a.ok(&["dstate", "r0"]), "Diskless/UpToDate\n", "{log}");
    qemu_io(&a.uri(), &["r -P 0x61 0 24M"]);
}

/// The Secondary's backing file sits on a full tmpfs: its mirrored writes fail with ENOSPC,
/// it detaches, and the Primary keeps every write on its own disk and in its bitmap.
#[test]
fn secondary_disk_full_detaches_and_the_primary_keeps_every_write() {
    if !prerequisites(&[]) || !require_fio_engine("nbd") {
        return;
    }
    let fs = Tmpfs::mount(TMPFS);
    let c = Cluster::new(ClusterOpts::default());
    let (a, b) = (c.node(0), c.node(1));
    let backing = fs.path().join("beta.img");
    sparse_file(&backing, DISK);
    put_disk(b, &backing);
    synced_primary(&c);
    fio_write_and_verify(a, c.dir.path());
    fio_verify_file(&a.disk, c.dir.path());
    assert!(b.log().contains("No space left on device"), "{}", b.log());
    b.wait_for("the Secondary detached", |n| {
        n.ok(&["dstate", "r0"]) == "Diskless/UpToDate\n"
    });
    wait_peer_disk_gone(a);
    assert_eq!(a.ok(&["cstate", "r0"]), "Connected\n");
    assert!(oos_kib(a) > 0, "{}", a.proc_drbd());
}

/// The Primary's backing store (a regular file) starts failing every read and write with
/// EIO: the Primary detaches at the first error (a read, retried on the peer) and serves
/// reads (also of blocks it never cached) and writes through the peer.
#[test]
fn primary_disk_eio_detaches_and_reads_and_writes_go_through_the_peer() {
    primary_disk_eio(Then::Stop);
}

/// The same, then the store works again and the failed disk rejoins and catches up.
#[test]
fn primary_disk_eio_then_rejoins_as_a_sync_target() {
    primary_disk_eio(Then::Rejoin);
}

fn primary_disk_eio(then: Then) {
    if !prerequisites(&[QEMU, EIO_TOOLS[0], EIO_TOOLS[1], EIO_TOOLS[2]]) {
        return;
    }
    // A block both disks hold from the start (the initial sync is skipped), never read
    // before the fault, so no cache can answer for the failing store.
    let seed = |p: &Path| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .expect("seed");
        f.write_all_at(&[0x5e; 65536], 40 * MIB).expect("seed");
    };
    // Declared before the cluster: dropped (unmounted) after its daemons are gone.
    let disk = ErrorDisk::start(DISK, seed);
    let c = Cluster::new(ClusterOpts::default());
    let (a, b) = (c.node(0), c.node(1));
    seed(&b.disk);
    put_disk(a, &disk.file);
    synced_primary(&c);
    qemu_io(&a.uri(), &["w -P 0x11 0 1M", "flush"]);
    disk.fail();
    // The read fails on the local disk and is retried on the peer.
    qemu_io(&a.uri(), &["r -P 0x5e 40M 64k"]);
    a.wait_for("Diskless", |n| n.query("dstate") == "Diskless");
    let log = a.log();
    assert!(log.contains("Input/output error"), "{log}");
    assert!(log.contains("on-io-error detach"), "{log}");
    wait_peer_disk_gone(b);
    // Writes and flushes go on through the peer; everything reads back right.
    qemu_io(
        &a.uri(),
        &[
            "w -P 0x22 1M 1M",
            "flush",
            "r -P 0x11 0 1M",
            "r -P 0x22 1M 1M",
            "r -P 0x5e 40M 64k",
        ],
    );
    assert_eq!(a.ok(&["role", "r0"]), "Primary/Secondary\n");
    if then == Then::Rejoin {
        disk.heal();
        rejoin_and_converge(&c, 0, &disk.image);
    }
}

/// The Primary's backing store is a block device (a loop device over the failing file) used
/// with buffered I/O: a write into the page cache succeeds and its EIO surfaces at the next
/// fsync (the client's flush). The flush error detaches the disk, the flush itself succeeds
/// through the peer, which holds every acknowledged write, and reads are served from it.
#[test]
fn primary_block_device_eio_at_flush_detaches_and_nothing_is_lost() {
    primary_block_device_eio(Then::Stop);
}

/// The same, then the store works again and the failed disk rejoins: the write whose
/// writeback failed (covered by the activity log) and the ones made while diskless (in the
/// peer's bitmap) are resynced.
#[test]
fn primary_block_device_eio_then_rejoins_as_a_sync_target() {
    primary_block_device_eio(Then::Rejoin);
}

/// Two daemons, node `failing`'s backing store a loop device over a file that can be made to
/// fail with EIO, skip-synced, node 0 Primary; `None` when a tool is missing (SKIP).
fn block_device_cluster(failing: usize) -> Option<BlockDeviceCluster> {
    if !prerequisites(&[
        QEMU,
        EIO_TOOLS[0],
        EIO_TOOLS[1],
        EIO_TOOLS[2],
        ("losetup", "mount"),
    ]) {
        return None;
    }
    let disk = ErrorDisk::start(DISK, |_| {});
    let dev = LoopDev::attach(&disk.file);
    let c = Cluster::new(ClusterOpts::default());
    put_disk(c.node(failing), &dev.dev);
    synced_primary(&c);
    Some(BlockDeviceCluster { c, _dev: dev, disk })
}

/// Fields drop in order: the daemons first, then the loop device, then the failing store.
struct BlockDeviceCluster {
    c: Cluster,
    _dev: LoopDev,
    disk: ErrorDisk,
}

fn primary_block_device_eio(then: Then) {
    // Kept whole: it drops its daemons before the devices under them.
    let Some(bd) = block_device_cluster(0) else {
        return;
    };
    let (c, disk) = (&bd.c, &bd.disk);
    let (a, b) = (c.node(0), c.node(1));
    // The range at 2M is written (and so cached) before the fault: overwriting it later
    // needs no read from the failing device.
    qemu_io(&a.uri(), &["w -P 0x11 0 1M", "w -P 0x22 2M 1M", "flush"]);
    assert_eq!(a.query("dstate"), "UpToDate");
    disk.fail();
    // Into the page cache: the local write succeeds (its 4 MiB extent is already in the
    // activity log, so no metadata write comes with it), so does the peer's; the error
    // surfaces at the flush (qemu-io's, or the one qemu sends when it closes the image).
    qemu_io(&a.uri(), &["w -P 0x33 2M 1M", "flush"]);
    a.wait_for("Diskless", |n| n.query("dstate") == "Diskless");
    let log = a.log();
    assert!(
        log.contains("disk I/O error: flush: Input/output error"),
        "{log}"
    );
    assert!(!log.contains("disk I/O error: write"), "{log}");
    assert!(log.contains("on-io-error detach"), "{log}");
    wait_peer_disk_gone(b);
    qemu_io(
        &a.uri(),
        &[
            "w -P 0x44 3M 1M",
            "flush",
            "r -P 0x11 0 1M",
            "r -P 0x33 2M 1M",
            "r -P 0x44 3M 1M",
        ],
    );
    // The Secondary holds every acknowledged write.
    for (at, byte) in [(0, 0x11u8), (2 * MIB, 0x33), (3 * MIB, 0x44)] {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; MIB as usize];
        std::fs::File::open(&b.disk)
            .and_then(|f| f.read_exact_at(&mut buf, at))
            .expect("read");
        assert!(
            buf.iter().all(|&x| x == byte),
            "the Secondary lacks the write at {at}"
        );
    }
    if then == Then::Rejoin {
        // The write at 2M never reached the failed store (its writeback failed), nor did
        // the one at 3M (made while diskless).
        disk.heal();
        rejoin_and_converge(c, 0, &disk.image);
    }
}

/// The Secondary's backing store is a block device over the failing file: its buffered
/// writes succeed and the EIO surfaces when it flushes an epoch before acking it. It
/// detaches; the Primary keeps every write on its own disk and serves them.
#[test]
fn secondary_block_device_eio_at_flush_detaches_and_the_primary_keeps_every_write() {
    secondary_block_device_eio(Then::Stop);
}

/// The same, then the store works again and the Secondary rejoins: the writes whose
/// writeback failed must be resynced too.
#[test]
fn secondary_block_device_eio_then_rejoins_as_a_sync_target() {
    secondary_block_device_eio(Then::Rejoin);
}

fn secondary_block_device_eio(then: Then) {
    // Kept whole: it drops its daemons before the devices under them.
    let Some(bd) = block_device_cluster(1) else {
        return;
    };
    let (c, disk) = (&bd.c, &bd.disk);
    let (a, b) = (c.node(0), c.node(1));
    // The range at 2M is written (and so cached) before the fault: overwriting it later
    // needs no read from the failing device, so the error surfaces at the epoch's flush.
    qemu_io(&a.uri(), &["w -P 0x11 0 1M", "w -P 0x22 2M 1M", "flush"]);
    disk.fail();
    qemu_io(&a.uri(), &["w -P 0x33 2M 1M", "flush"]);
    b.wait_for("Diskless", |n| n.query("dstate") == "Diskless");
    let log = b.log();
    assert!(
        log.contains("disk I/O error: flush: Input/output error"),
        "{log}"
    );
    assert!(
        log.contains("local disk I/O error on a flush for the peer"),
        "{log}"
    );
    assert!(log.contains("on-io-error detach"), "{log}");
    wait_peer_disk_gone(a);
    qemu_io(
        &a.uri(),
        &[
            "w -P 0x44 3M 1M",
            "flush",
            "r -P 0x11 0 1M",
            "r -P 0x33 2M 1M",
            "r -P 0x44 3M 1M",
        ],
    );
    assert_eq!(a.ok(&["cstate", "r0"]), "Connected\n");
    if then == Then::Rejoin {
        disk.heal();
        rejoin_and_converge(c, 1, &disk.image);
    }
}

/// `on-io-error pass_on`: the error is passed on, the local disk is downgraded to
/// Inconsistent with the failed blocks out of sync, and the request succeeds through the
/// peer; reads of those blocks come from the peer.
#[test]
#[ignore = "open: with on-io-error pass_on the disk becomes Inconsistent and the failed blocks \
            resync from the peer, but the disk is still full, so the resync's writes fail \
            again and the FLUSH that follows reports an error to qemu-io"]
fn pass_on_makes_the_disk_inconsistent_and_reads_come_from_the_peer() {
    if !prerequisites(&[QEMU]) {
        return;
    }
    let fs = Tmpfs::mount(TMPFS);
    let c = Cluster::new(ClusterOpts {
        disk: "resync-rate 1000M;\n    on-io-error pass_on;".into(),
        ..ClusterOpts::default()
    });
    let a = c.node(0);
    let backing = fs.path().join("alpha.img");
    sparse_file(&backing, DISK);
    put_disk(a, &backing);
    synced_primary(&c);
    // 24 MiB of writes do not fit; each succeeds through the peer.
    qemu_io(&a.uri(), &["w -P 0x61 0 24M", "flush"]);
    qemu_io(&a.uri(), &["r -P 0x61 0 24M"]);
    assert_eq!(a.ok(&["dstate", "r0"]), "Inconsistent/UpToDate\n");
}
