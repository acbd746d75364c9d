//! Two hosts on one machine: each node lives in its own network namespace, with a veth pair
//! between them and an address of its own, and in its own UTS namespace whose hostname is the
//! node's name, so that drbdadm and tandemd find their `on HOST` section through `uname -n`
//! (no `TANDEM_NODE`) and their `address` among the namespace's interfaces, as on real hosts.
//! Cutting the link is `ip link set ... down`. Needs root; skipped otherwise (a failure in CI).

use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tandem_tests::cluster::{Cluster, ClusterOpts, NODES};
use tandem_tests::*;

const MIB: u64 = 1 << 20;
/// What the two data areas of 64 MiB backing files are compared over (the metadata is at the
/// end, after the usable 65,496 KiB).
const DATA: u64 = 63 * MIB;
/// The fio job: 48 MiB of 4 KiB random writes.
const FIO_SIZE: &str = "--size=48M";
/// Throttles the writer so that it is still writing while the test cuts the link (or kills the
/// Secondary) after 8 MiB and waits for the Primary to notice. Not for a writer whose server
/// dies: fio 3.33 then spins forever in its rate sleep (`io_u_quiesce` retries the dead
/// connection's in-flight I/O), so that writer runs at full speed.
const FIO_RATE: &str = "--rate=6m";
/// Written before the fault is injected.
const BEFORE_FAULT_KIB: u64 = 8 * 1024;

/// Tests in this process number their namespaces, veths and subnets apart.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// Two network namespaces joined by a veth pair, removed on drop (after every process left in
/// them is killed, so that the namespaces really go, and their veth ends with them).
struct Net {
    ns: [String; 2],
    veth: [String; 2],
    addr: [String; 2],
    _cleanup: Cleanup,
}

impl Net {
    fn new() -> Net {
        let pid = std::process::id();
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let ns = NODES.map(|n| format!("tandem-{pid}-{k}-{n}"));
        // Interface names have at most 15 bytes; pids at most 22 bits (6 hex digits).
        let veth = ["a", "b"].map(|s| format!("tv{pid:x}n{k}{s}"));
        let subnet = format!("10.{}.{}", 100 + k % 100, pid % 256);
        let addr = [format!("{subnet}.1"), format!("{subnet}.2")];
        let mut cleanup = Cleanup::default();
        for n in &ns {
            run_ok(Command::new("ip").args(["netns", "add", n]));
            let n = n.clone();
            cleanup.push(&format!("netns {n}"), move || remove_netns(&n));
        }
        // Both ends are created inside their namespaces: nothing appears in the root one.
        run_ok(Command::new("ip").args([
            "link", "add", &veth[0], "netns", &ns[0], "type", "veth", "peer", "name", &veth[1],
            "netns", &ns[1],
        ]));
        for i in 0..2 {
            let ip = |args: &[&str]| {
                run_ok(
                    Command::new("ip")
                        .args(["netns", "exec", &ns[i], "ip"])
                        .args(args),
                )
            };
            ip(&["link", "set", "lo", "up"]);
            ip(&["addr", "add", &format!("{}/24", addr[i]), "dev", &veth[i]]);
            ip(&["link", "set", &veth[i], "up"]);
        }
        Net {
            ns,
            veth,
            addr,
            _cleanup: cleanup,
        }
    }

    /// The command prefix that runs a program as host `i`: in its network namespace, in a
    /// UTS namespace of its own named after the node, without `TANDEM_NODE`.
    fn host(&self, i: usize) -> Vec<String> {
        [
            "ip",
            "netns",
            "exec",
            &self.ns[i],
            "unshare",
            "--uts",
            "env",
            "-u",
            "TANDEM_NODE",
            "sh",
            "-c",
            &format!("hostname {} && exec \"$@\"", NODES[i]),
            "sh",
        ]
        .map(String::from)
        .to_vec()
    }

    /// `ip link set <host i's veth end> up|down`, inside host `i`'s namespace.
    fn link(&self, i: usize, up: bool) {
        run_ok(Command::new("ip").args([
            "netns",
            "exec",
            &self.ns[i],
            "ip",
            "link",
            "set",
            &self.veth[i],
            if up { "up" } else { "down" },
        ]));
    }
}

/// Kills what still runs in a namespace (our daemons, fio), then deletes it.
fn remove_netns(ns: &str) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let pids: Vec<i32> = Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        if pids.is_empty() || Instant::now() >= end {
            break;
        }
        for p in pids {
            // SAFETY: kill on a process inside this test's own namespace.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
}

/// A cluster whose nodes are two hosts. The cluster comes first so that it drops first: its
/// daemons are killed before the namespaces are removed.
struct Hosts {
    c: Cluster,
    net: Net,
    work: PathBuf,
}

impl Hosts {
    /// None (with a visible skip) without root or the tools.
    fn new() -> Option<Hosts> {
        Hosts::with(ClusterOpts::default())
    }

    /// As [`Hosts::new`], with these options (the addresses are the hosts').
    fn with(opts: ClusterOpts) -> Option<Hosts> {
        if !require_root("network namespaces")
            || !require("ip", "iproute2")
            || !require("unshare", "util-linux")
            || !require("hostname", "hostname")
            || !require("fio", "fio")
        {
            return None;
        }
        let net = Net::new();
        let c = Cluster::with_wrappers(
            ClusterOpts {
                addresses: Some(net.addr.clone().map(|a| format!("{a}:7789"))),
                ..opts
            },
            [net.host(0), net.host(1)],
        );
        let work = c.dir.path().join("fio");
        std::fs::create_dir_all(&work).expect("fio dir");
        Some(Hosts { c, net, work })
    }

    /// Both up and connected, the initial sync skipped, alpha Primary.
    fn start(&self) {
        let (a, b) = (self.c.node(0), self.c.node(1));
        self.c.up();
        self.c
            .wait_states("Connected", ["Inconsistent", "Inconsistent"]);
        // The names came from the hostnames, and the connection went over the veth.
        for (n, peer) in [(a, b), (b, a)] {
            let log = n.log();
            assert!(log.contains(&format!("on node {} ready", n.name)), "{log}");
            assert!(
                log.contains(&format!("connected to {}", peer.name)),
                "{log}"
            );
        }
        a.ok(&["new-current-uuid", "--clear-bitmap", "r0"]);
        self.c.wait_states("Connected", ["UpToDate", "UpToDate"]);
        a.ok(&["primary", "r0"]);
    }

    /// fio's nbd engine against alpha's export, run as host alpha, in the work directory
    /// (where the verify state is saved and loaded); its output goes to `<work>/<tag>.out`.
    fn fio(&self, tag: &str, extra: &[&str]) -> Command {
        self.fio_on(0, tag, extra)
    }

    /// As [`Hosts::fio`], against node `i`'s export, run as host `i`.
    fn fio_on(&self, i: usize, tag: &str, extra: &[&str]) -> Command {
        let out = std::fs::File::create(self.work.join(format!("{tag}.out"))).expect("fio out");
        let err = out.try_clone().expect("fio out");
        let mut cmd = Command::new("ip");
        cmd.current_dir(&self.work)
            .args(["netns", "exec", &self.net.ns[i], "fio"])
            .args([
                "--name=netns",
                "--ioengine=nbd",
                &format!("--uri={}", self.c.node(i).uri()),
                "--rw=randwrite",
                "--bs=4k",
                "--iodepth=16",
                FIO_SIZE,
                "--verify=crc32c",
                "--verify_fatal=1",
                "--verify_state_save=1",
                "--randrepeat=1",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        cmd
    }

    fn fio_output(&self, tag: &str) -> String {
        std::fs::read_to_string(self.work.join(format!("{tag}.out"))).unwrap_or_default()
    }

    /// Starts the write pass, with `extra` fio options.
    fn start_writer(&self, extra: &[&str]) -> Proc {
        let child = self
            .fio("write", &[&["--do_verify=0"], extra].concat())
            .spawn()
            .expect("fio");
        Proc {
            child,
            name: "fio write".into(),
        }
    }

    /// Waits for the write pass, which must succeed.
    fn writer_done(&self, writer: &mut Proc) {
        let status = writer
            .wait_timeout(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("fio did not finish:\n{}", self.fio_output("write")));
        self.assert_fio(status, "write");
    }

    /// The verify pass on alpha, against the state the write pass saved.
    fn verify(&self) {
        let status = self
            .fio("verify", &["--verify_only", "--verify_state_load=1"])
            .status()
            .expect("fio verify");
        self.assert_fio(status, "verify");
        let out = self.fio_output("verify");
        assert!(out.contains("READ: bw="), "nothing was verified:\n{out}");
    }

    fn assert_fio(&self, status: ExitStatus, tag: &str) {
        let out = self.fio_output(tag);
        assert!(
            status.success(),
            "fio {tag} failed ({status}):\n{out}\n{}",
            self.c.mismatch_report(&out, DATA)
        );
    }

    /// After every scenario: connected, both UpToDate, byte-identical data.
    fn assert_converged(&self) {
        self.c.wait_states("Connected", ["UpToDate", "UpToDate"]);
        assert!(
            self.c.data_identical(DATA),
            "the data areas differ: {}",
            self.c.mismatch_report("", DATA)
        );
    }
}

/// The KB figure of the last "Began resync as SyncTarget (will sync N KB" in a log.
fn resync_kb(log: &str) -> Option<u64> {
    log.rsplit("Began resync as SyncTarget (will sync ")
        .next()
        .filter(|_| log.contains("Began resync as SyncTarget"))
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
}

#[test]
fn link_cut_during_fio_verify_then_restored() {
    let Some(h) = Hosts::new() else { return };
    let (a, b) = (h.c.node(0), h.c.node(1));
    h.start();
    let mut writer = h.start_writer(&[FIO_RATE]);
    a.wait_for("8 MiB written", |n| n.written_kib() >= BEFORE_FAULT_KIB);
    h.net.link(1, false);
    // The Primary notices within ping-timeout and goes on alone.
    a.wait_for("WFConnection after the cut", |n| {
        n.query("cstate") == "WFConnection"
    });
    assert!(
        a.log().contains("connection lost"),
        "alpha's log says why:\n{}",
        a.log()
    );
    assert!(
        writer.child.try_wait().expect("fio").is_none(),
        "fio finished before the disconnect was seen: the test would prove little\n{}",
        h.fio_output("write")
    );
    let at_cut = a.written_kib();
    a.wait_for("2 MiB more written while disconnected", |n| {
        n.written_kib() >= at_cut + 2048
    });
    let proc = a.proc_drbd();
    assert!(
        proc.contains("cs:WFConnection ro:Primary/Unknown ds:UpToDate/DUnknown"),
        "{proc}"
    );
    assert!(
        !proc.contains("oos:0"),
        "the bitmap records the writes: {proc}"
    );

    h.net.link(1, true);
    // They find each other again by themselves, and beta catches up from the bitmap.
    b.wait_for("the resync", |n| {
        n.log().contains("Began resync as SyncTarget")
    });
    h.writer_done(&mut writer);
    h.verify();
    h.assert_converged();
    let kb = resync_kb(&b.log()).expect("resync size");
    assert!(
        kb > 0 && kb < 65496,
        "a bitmap resync, not a full one: {kb} KB"
    );
}

#[test]
fn secondary_killed_during_fio_verify() {
    let Some(h) = Hosts::new() else { return };
    let (a, b) = (h.c.node(0), h.c.node(1));
    h.start();
    let mut writer = h.start_writer(&[FIO_RATE]);
    a.wait_for("8 MiB written", |n| n.written_kib() >= BEFORE_FAULT_KIB);
    b.kill9();
    a.wait_for("WFConnection after the kill", |n| {
        n.query("cstate") == "WFConnection"
    });
    assert!(
        writer.child.try_wait().expect("fio").is_none(),
        "fio finished before the peer was lost: the test would prove little\n{}",
        h.fio_output("write")
    );
    // The Primary goes on alone: every write succeeds, and reads back right.
    h.writer_done(&mut writer);
    h.verify();
    assert!(
        !a.proc_drbd().contains("oos:0"),
        "the bitmap records the writes: {}",
        a.proc_drbd()
    );
    // beta comes back (in its namespace) and catches up from the bitmap.
    b.ok(&["up", "r0"]);
    h.assert_converged();
    let kb = resync_kb(&b.log()).expect("resync size");
    assert!(
        kb > 0 && kb < 65496,
        "a bitmap resync, not a full one: {kb} KB"
    );
}

#[test]
fn seed_001_full_first_sync_between_hosts() {
    let Some(h) = Hosts::new() else { return };
    let (a, b) = (h.c.node(0), h.c.node(1));
    h.c.up();
    h.c.wait_states("Connected", ["Inconsistent", "Inconsistent"]);
    a.ok(&["primary", "--force", "r0"]);
    h.assert_converged();
    assert!(
        b.log().contains("Began resync as SyncTarget"),
        "{}",
        b.log()
    );
    assert_eq!(a.ok(&["role", "r0"]), "Primary/Secondary\n");
}

#[test]
fn a_wrong_shared_secret_is_refused_between_hosts() {
    let secret = |s: &str| format!("    cram-hmac-alg sha256;\n    shared-secret \"{s}\";");
    let Some(h) = Hosts::with(ClusterOpts {
        net: [secret("right"), secret("wrong")],
        ..ClusterOpts::default()
    }) else {
        return;
    };
    h.c.up();
    h.c.node(1).wait_for("the refusal", |n| {
        n.log().contains("Authentication of peer failed")
    });
    for n in &h.c.nodes {
        assert_eq!(n.query("cstate"), "WFConnection");
    }
}

#[test]
fn a_peer_too_small_is_refused_between_hosts() {
    let Some(h) = Hosts::with(ClusterOpts {
        sizes: [64 * MIB, 32 * MIB],
        ..ClusterOpts::default()
    }) else {
        return;
    };
    for n in &h.c.nodes {
        n.ok(&["create-md", "--force", "r0"]);
    }
    let (a, b) = (h.c.node(0), h.c.node(1));
    a.ok(&["up", "r0"]);
    a.ok(&["primary", "--force", "r0"]);
    b.ok(&["up", "r0"]);
    a.wait_for("the refusal", |n| {
        n.log().contains("The peer's disk size is too small!")
    });
    a.wait_for("StandAlone", |n| n.query("cstate") == "StandAlone");
}

#[test]
fn primary_killed_during_fio_verify_then_the_other_host_is_promoted() {
    let Some(h) = Hosts::new() else { return };
    let (a, b) = (h.c.node(0), h.c.node(1));
    h.start();
    let mut writer = h.start_writer(&[]);
    a.wait_for("8 MiB written", |n| n.written_kib() >= BEFORE_FAULT_KIB);
    a.kill9();
    let status = writer
        .wait_timeout(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("fio did not end:\n{}", h.fio_output("write")));
    assert!(
        !status.success(),
        "fio finished before the kill: the test would prove nothing"
    );
    b.wait_for("the peer gone", |n| n.query("cstate") == "WFConnection");
    b.ok(&["primary", "r0"]);
    // fio verifies, on beta, what its saved state says completed before the crash. It counts
    // the writes that failed when alpha died as written, so at most `iodepth` blocks may be
    // reported, each never written on beta (see two_nodes.rs for the strict check).
    let status = h
        .fio_on(
            1,
            "verify",
            &["--verify_only", "--verify_state_load=1", "--verify_fatal=0"],
        )
        .status()
        .expect("fio verify");
    let out = h.fio_output("verify");
    let bad = fio_mismatched_offsets(&out);
    assert!(
        bad.len() <= 16 && bad.iter().all(|&o| b.untouched(o)),
        "verify on the promoted host failed ({status}):\n{out}"
    );
    assert!(out.contains("READ: bw="), "nothing was verified:\n{out}");
    // The old Primary comes back as the target of a bitmap resync.
    a.ok(&["up", "r0"]);
    h.assert_converged();
    assert!(
        a.log().contains("Began resync as SyncTarget"),
        "{}",
        a.log()
    );
}

#[test]
fn a_cut_link_resyncs_only_the_blocks_written_meanwhile() {
    if !require("qemu-io", "qemu-utils") {
        return;
    }
    let Some(h) = Hosts::new() else { return };
    let (a, b) = (h.c.node(0), h.c.node(1));
    h.start();
    h.net.link(1, false);
    a.wait_for("WFConnection after the cut", |n| {
        n.query("cstate") == "WFConnection"
    });
    // About 1% of the volume, in 64 KiB pieces spread over it.
    let writes: Vec<String> = (0..10)
        .map(|i| format!("w -P {} {}k 64k", i + 1, i * 6 * 1024))
        .collect();
    let cmds: Vec<&str> = writes.iter().map(String::as_str).collect();
    qemu_io(&a.uri(), &cmds);
    assert!(a.proc_drbd().contains("oos:640"), "{}", a.proc_drbd());
    h.net.link(1, true);
    h.assert_converged();
    let log = b.log();
    assert!(log.contains("uuid_compare()=-1 by rule 50"), "{log}");
    assert!(
        log.contains("Began resync as SyncTarget (will sync 640 KB [160 bits set])."),
        "only what changed is resynced: {log}"
    );
}
