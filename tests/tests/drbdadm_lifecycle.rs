//! The single-node DRBD workflow through the real `drbdadm` and `tandemd` binaries: create-md,
//! up (which starts the daemon), primary with and without force, I/O over NBD, status in
//! DRBD's formats, secondary, down, and up again with the data kept.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tandem_tests::*;

const MIB: u64 = 1 << 20;

/// A node's scratch directory, config and run directory; its daemon is killed on drop.
struct Node {
    dir: tempfile::TempDir,
    res: PathBuf,
    run: PathBuf,
}

impl Node {
    fn new() -> Node {
        Node::with_size(64 * MIB, "")
    }

    /// A node whose backing file is `size` bytes and whose resource has `extra` (sections such
    /// as `startup { ... }`) in it.
    fn with_size(size: u64, extra: &str) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("tandem-drbdadm-")
            .tempdir()
            .expect("tempdir");
        let disk = dir.path().join("disk.img");
        std::fs::File::create(&disk)
            .and_then(|f| f.set_len(size))
            .expect("disk");
        let res = dir.path().join("r0.res");
        let text = format!(
            "resource r0 {{\n  protocol C;\n{extra}\n  on alpha {{\n    device /dev/drbd0;\n    disk {};\n    \
             address 127.0.0.1:7789;\n    meta-disk internal;\n  }}\n  on beta {{\n    device /dev/drbd0;\n    \
             disk /nonexistent;\n    address 127.0.0.2:7789;\n    meta-disk internal;\n  }}\n}}\n",
            disk.display()
        );
        std::fs::write(&res, text).expect("res");
        let run = dir.path().join("run");
        Node { dir, res, run }
    }

    fn drbdadm(&self, args: &[&str]) -> Output {
        Command::new(bin("drbdadm"))
            .arg("-c")
            .arg(&self.res)
            .args(args)
            .env("TANDEM_NODE", "alpha")
            .env("TANDEM_RUN_DIR", &self.run)
            .output()
            .expect("drbdadm")
    }

    /// Runs drbdadm and returns stdout, failing the test on a non-zero exit.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.drbdadm(args);
        assert!(
            o.status.success(),
            "drbdadm {args:?}: {}\n{}\nlog:\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr),
            self.log()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs drbdadm expecting a failure; returns the exit code and stderr.
    fn fails(&self, args: &[&str]) -> (i32, String) {
        let o = self.drbdadm(args);
        assert!(
            !o.status.success(),
            "drbdadm {args:?} should fail: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.run.join("tandemd.log")).unwrap_or_default()
    }

    fn uri(&self) -> String {
        format!(
            "nbd+unix:///r0?socket={}",
            self.run.join("nbd.sock").display()
        )
    }

    fn disk(&self) -> PathBuf {
        self.dir.path().join("disk.img")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The daemon detached itself; its pid is in the lock file.
        let pid = std::fs::read_to_string(self.run.join("tandemd.lock")).unwrap_or_default();
        if let Ok(pid) = pid.trim().parse::<i32>() {
            // SAFETY: kill on the pid our daemon recorded; at worst it is already gone.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if std::thread::panicking() {
            eprintln!("--- tandemd.log ---\n{}", self.log());
        }
    }
}

fn qemu_io(uri: &str, cmds: &[&str]) -> Output {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw", "-t", "none"]);
    for x in cmds {
        c.args(["-c", x]);
    }
    c.arg(uri).output().expect("qemu-io")
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut b = vec![0u8; len];
    std::fs::File::open(path)
        .and_then(|f| f.read_exact_at(&mut b, offset))
        .expect("read");
    b
}

#[test]
fn first_node_alone_create_md_up_primary_io_down_up() {
    if !require("qemu-io", "qemu-utils") {
        return;
    }
    let n = Node::new();
    let out = n.ok(&["create-md", "r0"]);
    assert!(
        out.contains("New drbd meta data block successfully created."),
        "{out}"
    );
    // A second create-md refuses to overwrite without --force.
    assert!(!n.drbdadm(&["create-md", "r0"]).status.success());

    n.ok(&["up", "r0"]);
    assert_eq!(n.ok(&["role", "r0"]), "Secondary/Unknown\n");
    assert_eq!(n.ok(&["cstate", "r0"]), "WFConnection\n");
    assert_eq!(n.ok(&["dstate", "r0"]), "Inconsistent/DUnknown\n");
    let refused = n.drbdadm(&["primary", "r0"]);
    assert_eq!(refused.status.code(), Some(17));
    let msg = String::from_utf8_lossy(&refused.stderr);
    assert!(
        msg.contains("State change failed: (-2) Need access to UpToDate data"),
        "{msg}"
    );
    // NBD refuses a Secondary.
    assert!(!qemu_io(&n.uri(), &["r 0 4k"]).status.success());

    // The 8.3 spelling of --force.
    n.ok(&["--", "--overwrite-data-of-peer", "primary", "r0"]);
    assert_eq!(
        n.ok(&["status", "r0"]),
        "r0 role:Primary\n  disk:UpToDate\n  peer connection:Connecting\n\n"
    );
    let w = qemu_io(
        &n.uri(),
        &[
            "w -P 0x5c 1M 1M",
            "w -f -P 0x5d 3M 4k",
            "flush",
            "r -P 0x5c 1M 1M",
        ],
    );
    assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stdout));
    let proc = n.ok(&["proc-drbd"]);
    assert!(
        proc.contains(" 0: cs:WFConnection ro:Primary/Unknown ds:UpToDate/DUnknown C r-----"),
        "{proc}"
    );
    // No peer: everything written is out of sync (1 MiB + 4 KiB), and one AL transaction.
    assert!(
        proc.contains("dw:1028 ") && proc.contains(" al:1 ") && proc.contains("oos:1028"),
        "{proc}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&n.ok(&["status", "--json", "r0"])).expect("json");
    assert_eq!(json[0]["role"], "Primary");

    n.ok(&["secondary", "r0"]);
    n.ok(&["down", "r0"]);
    assert_eq!(n.ok(&["role", "r0"]), "Unconfigured\n");
    assert_eq!(read_at(&n.disk(), MIB, 4), [0x5c; 4]);

    // Up again: the data is UpToDate, so promotion needs no force, and the data is there.
    n.ok(&["up", "r0"]);
    assert_eq!(n.ok(&["dstate", "r0"]), "UpToDate/DUnknown\n");
    n.ok(&["primary", "r0"]);
    let r = qemu_io(&n.uri(), &["r -P 0x5c 1M 1M", "r -P 0x5d 3M 4k"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stdout));
    assert!(
        n.ok(&["proc-drbd"]).contains("oos:1028"),
        "the bitmap survived down and up"
    );
    n.ok(&["down", "r0"]);
}

#[test]
fn drbdadm_errors_are_one_line_and_clear() {
    let n = Node::new();
    // Not running: status names the resource; down has nothing to do.
    let st = n.drbdadm(&["status", "r0"]);
    assert_eq!(
        String::from_utf8_lossy(&st.stderr),
        "r0: No such resource\n"
    );
    assert!(n.drbdadm(&["down", "r0"]).status.success());
    let unknown = n.drbdadm(&["up", "nosuch"]);
    assert!(!unknown.status.success());
    assert_eq!(
        String::from_utf8_lossy(&unknown.stderr),
        "'nosuch' not defined in your config (for this host).\n"
    );
    // No metadata yet: up fails with DRBD's code and says what to do, then names the step
    // that failed as drbdadm does.
    let up = n.drbdadm(&["up", "r0"]);
    assert_eq!(up.status.code(), Some(10));
    let msg = String::from_utf8_lossy(&up.stderr);
    let lines: Vec<&str> = msg.lines().collect();
    assert_eq!(lines.len(), 2, "{msg}");
    assert!(lines[0].contains("create-md"), "{msg}");
    let disk = n.disk();
    assert_eq!(
        lines[1],
        format!(
            "Command 'drbdsetup-84 attach 0 {} {} internal' terminated with exit code 10",
            disk.display(),
            disk.display()
        )
    );
}

#[test]
fn invalidate_a_secondary_refuse_a_primary_and_queries_in_json() {
    let n = Node::new();
    n.ok(&["create-md", "r0"]);
    n.ok(&["up", "r0"]);
    n.ok(&["primary", "--force", "r0"]);
    // Only a StandAlone Secondary is invalidated alone; a Primary asks for a full sync from
    // its peer (StartingSyncT), which needs the connection. drbdadm hands invalidate's error
    // through without naming the step.
    let (code, err) = n.fails(&["invalidate", "r0"]);
    assert_eq!(code, 11);
    assert_eq!(
        err,
        "0: State change failed: (-15) Need a connection to start verify or resync\n"
    );
    assert_eq!(n.ok(&["dstate", "r0"]), "UpToDate/DUnknown\n");

    n.ok(&["secondary", "r0"]);
    // Waiting for its peer (WFConnection) is not StandAlone: refused the same way.
    let (code, err) = n.fails(&["invalidate", "r0"]);
    assert_eq!((code, err.contains("(-15)")), (11, true), "{err}");
    n.ok(&["disconnect", "r0"]);
    n.ok(&["invalidate", "r0"]);
    assert_eq!(n.ok(&["dstate", "r0"]), "Inconsistent/DUnknown\n");
    n.ok(&["connect", "r0"]);
    let status: serde_json::Value =
        serde_json::from_str(&n.ok(&["status", "--json", "r0"])).expect("status json");
    let kib = status[0]["devices"][0]["size"].as_u64().expect("size");
    assert!(kib > 60 * 1024, "{status}");
    let proc = n.ok(&["proc-drbd"]);
    assert!(
        proc.contains("ds:Inconsistent/DUnknown") && proc.contains(&format!("oos:{kib}\n")),
        "every block out of sync: {proc}"
    );
    // Promotion needs UpToDate data now; drbdadm names the failed drbdsetup call.
    let (code, err) = n.fails(&["primary", "r0"]);
    assert_eq!(code, 17);
    assert_eq!(
        err,
        "0: State change failed: (-2) Need access to UpToDate data\n\
         Command 'drbdsetup-84 primary 0' terminated with exit code 17\n"
    );

    // The 8.4 queries and /proc/drbd as JSON, with the text forms' values.
    let j = |args: &[&str]| -> serde_json::Value {
        serde_json::from_str(&n.ok(args)).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    };
    let role = j(&["role", "--json", "r0"]);
    assert_eq!(role[0]["name"], "r0");
    assert_eq!(role[0]["minor"], 0);
    assert_eq!(role[0]["role"], "Secondary");
    assert_eq!(role[0]["peer-role"], "Unknown");
    assert_eq!(
        j(&["cstate", "--json", "r0"])[0]["connection-state"],
        "WFConnection"
    );
    let d = j(&["dstate", "--json", "r0"]);
    assert_eq!(
        (
            d[0]["disk-state"].as_str(),
            d[0]["peer-disk-state"].as_str()
        ),
        (Some("Inconsistent"), Some("DUnknown"))
    );
    let p = j(&["proc-drbd", "--json"]);
    assert_eq!(p["version"], "8.4.11");
    assert_eq!(p["devices"][0]["name"], "r0");
    assert_eq!(p["devices"][0]["disk-state"], "Inconsistent");
    assert_eq!(p["devices"][0]["protocol"], "C");
    assert_eq!(p["devices"][0]["oos"], kib);

    // The invalidation is in the metadata: it survives down and up.
    n.ok(&["down", "r0"]);
    assert_eq!(
        j(&["role", "--json", "r0"])[0]["role"],
        "Unconfigured",
        "a resource that is down"
    );
    n.ok(&["up", "r0"]);
    assert_eq!(n.ok(&["dstate", "r0"]), "Inconsistent/DUnknown\n");
    n.ok(&["down", "r0"]);
}

#[test]
fn detach_leaves_the_resource_diskless_and_attach_brings_the_disk_back() {
    if !require("qemu-io", "qemu-utils") {
        return;
    }
    let n = Node::new();
    n.ok(&["create-md", "r0"]);
    n.ok(&["up", "r0"]);
    n.ok(&["primary", "--force", "r0"]);
    let w = qemu_io(&n.uri(), &["w -P 0x3c 2M 1M", "flush"]);
    assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stdout));
    // Without a peer a Primary's disk is its only good data.
    let (code, err) = n.fails(&["detach", "r0"]);
    assert_eq!(code, 17);
    assert_eq!(
        err,
        "0: State change failed: (-2) Need access to UpToDate data\n\
         Command 'drbdsetup-84 detach 0' terminated with exit code 17\n"
    );
    n.ok(&["secondary", "r0"]);
    n.ok(&["detach", "r0"]);
    // DRBD's two steps: the disk fails over to Diskless once the metadata is clean.
    assert!(
        n.log().contains("disk( UpToDate -> Failed )")
            && n.log().contains("disk( Failed -> Diskless )"),
        "{}",
        n.log()
    );
    // Still configured, Diskless; the peer connection waits for a disk.
    assert_eq!(n.ok(&["role", "r0"]), "Secondary/Unknown\n");
    assert_eq!(n.ok(&["dstate", "r0"]), "Diskless/DUnknown\n");
    assert_eq!(n.ok(&["cstate", "r0"]), "WFConnection\n");
    let proc = n.ok(&["proc-drbd"]);
    assert!(
        proc.contains(" 0: cs:WFConnection ro:Secondary/Unknown ds:Diskless/DUnknown C r-----")
            && proc.contains(" oos:0"),
        "{proc}"
    );
    let file = std::fs::read_to_string(n.run.join("proc-drbd")).expect("proc-drbd file");
    assert!(file.contains("ds:Diskless/DUnknown"), "{file}");
    assert_eq!(
        n.ok(&["status", "r0"]),
        "r0 role:Secondary\n  disk:Diskless\n  peer connection:Connecting\n\n"
    );
    // The metadata was closed cleanly: drbdmeta's view (our offline get-gi) reads it.
    assert!(
        n.ok(&["get-gi", "r0"]).contains(":1:1:0:0:"),
        "consistent, was UpToDate"
    );
    // No data to serve, nothing to promote; detach again is nothing to do, as in DRBD.
    let (code, err) = n.fails(&["primary", "r0"]);
    assert_eq!(code, 17, "{err}");
    assert!(!qemu_io(&n.uri(), &["r 0 4k"]).status.success());
    n.ok(&["detach", "r0"]);
    let (code, err) = n.fails(&["invalidate", "r0"]);
    assert_eq!(code, 11);
    assert_eq!(
        err,
        "0: State change failed: (-11) Device is diskless, the requested operation requires a disk\n"
    );

    n.ok(&["attach", "r0"]);
    assert_eq!(n.ok(&["dstate", "r0"]), "UpToDate/DUnknown\n");
    assert_eq!(n.ok(&["cstate", "r0"]), "WFConnection\n");
    let disk = n.disk();
    let (code, err) = n.fails(&["attach", "r0"]);
    assert_eq!(code, 10);
    assert_eq!(
        err,
        format!(
            "0: Failure: (124) Device is attached to a disk (use detach first)\n\
             Command 'drbdsetup-84 attach 0 {d} {d} internal' terminated with exit code 10\n",
            d = disk.display()
        )
    );
    n.ok(&["primary", "r0"]);
    let r = qemu_io(&n.uri(), &["r -P 0x3c 2M 1M"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stdout));
    n.ok(&["secondary", "r0"]);
    // down of a Diskless resource.
    n.ok(&["detach", "r0"]);
    n.ok(&["down", "r0"]);
    assert_eq!(n.ok(&["role", "r0"]), "Unconfigured\n");
}

#[test]
fn adjust_does_only_what_is_missing() {
    let n = Node::new();
    n.ok(&["create-md", "r0"]);
    let disk = n.disk();
    let d = disk.display();
    let attach =
        format!("drbdmeta 0 v08 {d} internal apply-al\ndrbdsetup-84 attach 0 {d} {d} internal\n");
    let connect = "drbdsetup-84 connect r0 ipv4:127.0.0.1:7789 ipv4:127.0.0.2:7789 --protocol=C\n";
    // Nothing runs: the dry run plans all of `up`, in drbdadm's order, and starts nothing.
    assert_eq!(
        n.ok(&["-d", "adjust", "r0"]),
        format!("drbdsetup-84 new-resource r0\ndrbdsetup-84 new-minor r0 0 0\n{attach}{connect}")
    );
    assert!(
        !n.run.join("control.sock").exists(),
        "a dry run starts no daemon"
    );
    assert_eq!(n.ok(&["adjust", "r0"]), "");
    assert_eq!(n.ok(&["dstate", "r0"]), "Inconsistent/DUnknown\n");
    assert_eq!(n.ok(&["cstate", "r0"]), "WFConnection\n");
    // Idempotent: a resource that matches its configuration is left alone.
    assert_eq!(n.ok(&["-d", "adjust", "r0"]), "");
    let before = n.log();
    assert_eq!(n.ok(&["adjust", "all"]), "");
    assert_eq!(n.log(), before, "adjust of a matching resource did nothing");

    n.ok(&["detach", "r0"]);
    assert_eq!(n.ok(&["-d", "adjust", "r0"]), attach);
    n.ok(&["adjust", "r0"]);
    assert_eq!(n.ok(&["dstate", "r0"]), "Inconsistent/DUnknown\n");

    n.ok(&["disconnect", "r0"]);
    assert_eq!(n.ok(&["cstate", "r0"]), "StandAlone\n");
    assert_eq!(n.ok(&["-d", "adjust", "r0"]), connect);
    n.ok(&["adjust", "r0"]);
    assert_eq!(n.ok(&["cstate", "r0"]), "WFConnection\n");
    assert_eq!(n.ok(&["-d", "adjust", "r0"]), "");
    n.ok(&["down", "r0"]);
}

#[test]
fn wait_connect_gives_up_after_the_timeout_with_drbdsetups_code() {
    let n = Node::with_size(64 * MIB, "  startup { wfc-timeout 1; degr-wfc-timeout 1; }");
    n.ok(&["create-md", "r0"]);
    n.ok(&["up", "r0"]);
    assert_eq!(
        n.ok(&["-d", "wait-connect", "r0"]),
        "drbdsetup-84 wait-connect 0 --wfc-timeout=1 --degr-wfc-timeout=1\n"
    );
    // The peer never comes: after wfc-timeout (1 s, from the startup section) drbdsetup's
    // timeout code, 5. The daemon's state-change notifications end the wait; no polling.
    let t0 = std::time::Instant::now();
    let (code, err) = n.fails(&["wait-connect", "r0"]);
    let took = t0.elapsed();
    assert_eq!(code, 5, "{err}");
    assert!(
        err.ends_with("r0: not connected within 1 s (wfc-timeout); the peer did not answer\n"),
        "{err}"
    );
    assert!(
        took >= std::time::Duration::from_secs(1) && took < std::time::Duration::from_secs(15),
        "waited {took:?}"
    );
    // The command line's timeout replaces the configuration's, as drbdsetup's -t does.
    let t0 = std::time::Instant::now();
    let (code, _) = n.fails(&["wait-connect", "-t", "2", "r0"]);
    assert_eq!(code, 5);
    assert!(t0.elapsed() >= std::time::Duration::from_secs(2));
    // A StandAlone resource has nothing to wait for (drbdsetup returns at once, 0).
    n.ok(&["disconnect", "r0"]);
    let t0 = std::time::Instant::now();
    n.ok(&["wait-connect", "-t", "0", "r0"]);
    assert!(t0.elapsed() < std::time::Duration::from_secs(5));
    // Not up: DRBD's unknown-resource refusal, no waiting.
    n.ok(&["down", "r0"]);
    let (code, err) = n.fails(&["wait-connect", "r0"]);
    assert_eq!(code, 10, "{err}");
}

/// The `dw:` counter of `/proc/drbd` (KiB written to the local disk).
fn written_kib(proc: &str) -> u64 {
    proc.split_whitespace()
        .find_map(|w| w.strip_prefix("dw:"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// kill -9 of tandemd while fio writes through NBD, `up` again: fio verifies every write it saw
/// acknowledged, and the activity log was applied.
///
/// What fio 3.33's verify state promises: it records how many writes it issued and the offsets
/// of its last `iodepth` successful completions; `--verify_state_load` replays the same write
/// sequence, verifies every write issued before the last `iodepth` ones unconditionally, and in
/// that last window only those it saw complete. With more than one write in flight a write can
/// stay unacknowledged while `iodepth` later ones complete (a write to a cold extent waits for
/// its AL transaction), and fio would then verify a write that was never acknowledged. With
/// `iodepth=1` the record is exact: every write before the last was acknowledged, the last one
/// is verified only if it was. So a write tandemd acknowledged but lost fails this test; and
/// fio must verify at least what `dw:` showed written before the kill, so a verify that checks
/// nothing cannot pass either.
#[test]
fn kill_9_during_fio_writes_then_up_and_fio_verifies_every_acknowledged_write() {
    if !require_fio_engine("nbd") {
        return;
    }
    const KILL_AT_KIB: u64 = 16 * 1024;
    let n = Node::with_size(256 * MIB, "");
    n.ok(&["create-md", "r0"]);
    n.ok(&["up", "r0"]);
    n.ok(&["primary", "--force", "r0"]);
    let work = n.dir.path().join("fio");
    std::fs::create_dir_all(&work).expect("fio dir");
    let fio = |extra: &[&str]| {
        let mut cmd = Command::new("fio");
        cmd.current_dir(&work).args([
            "--name=crash",
            "--ioengine=nbd",
            &format!("--uri={}", n.uri()),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=1",
            "--size=192M",
            "--verify=crc32c",
            "--verify_state_save=1",
            "--randrepeat=1",
        ]);
        cmd.args(extra);
        cmd
    };
    let log = |name: &str| std::fs::File::create(work.join(name)).expect("fio log");
    let child = fio(&["--do_verify=0"])
        .stdout(log("write.out"))
        .stderr(log("write.err"))
        .spawn()
        .expect("fio");
    let mut writer = Proc {
        child,
        name: "fio write".into(),
    };
    // Kill once fio has had a good amount acknowledged (bounded wait on the counter).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let kib = written_kib(&n.ok(&["proc-drbd"]));
        if kib >= KILL_AT_KIB {
            break;
        }
        assert!(
            writer.child.try_wait().expect("fio status").is_none(),
            "fio ended before {KILL_AT_KIB} KiB were written ({kib} KiB):\n{}",
            std::fs::read_to_string(work.join("write.err")).unwrap_or_default()
        );
        assert!(
            std::time::Instant::now() < deadline,
            "fio wrote only {kib} KiB in 120 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid: i32 = std::fs::read_to_string(n.run.join("tandemd.lock"))
        .expect("lock file")
        .trim()
        .parse()
        .expect("pid");
    // SAFETY: kill on the pid our daemon recorded in its lock file.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let status = writer
        .wait_timeout(std::time::Duration::from_secs(60))
        .expect("fio did not end after the server died");
    assert!(
        !status.success(),
        "fio finished before the kill: the test would prove nothing"
    );
    let state = std::fs::read_dir(&work)
        .expect("fio dir")
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().ends_with("verify.state"));
    assert!(state, "fio saved no verify state");

    // up starts a new daemon; the metadata was not closed, so the AL is applied.
    n.ok(&["up", "r0"]);
    let marked = n
        .log()
        .lines()
        .find_map(|l| {
            l.split("Marked additional ")
                .nth(1)?
                .strip_suffix(" KB as out-of-sync based on AL.")?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no AL replay in the log:\n{}", n.log()));
    assert!(marked > 0, "hot extents become out of sync");
    // A Primary that went down without a peer: wait-connect uses degr-wfc-timeout, as the
    // kernel chooses it for a degraded cluster's restart.
    let (code, err) = n.fails(&[
        "wait-connect",
        "--wfc-timeout=300",
        "--degr-wfc-timeout=1",
        "--outdated-wfc-timeout=1",
        "r0",
    ]);
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains("r0: not connected within 1 s (degr-wfc-timeout)"),
        "{err}"
    );
    n.ok(&["primary", "r0"]);
    let report = work.join("verify.json");
    let out = fio(&[
        "--verify_only",
        "--verify_state_load=1",
        "--verify_fatal=1",
        "--output-format=json",
        &format!("--output={}", report.display()),
    ])
    .output()
    .expect("fio verify");
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    assert!(
        out.status.success(),
        "verify after the crash failed:\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&text).expect("fio json");
    let verified = v["jobs"][0]["read"]["io_bytes"].as_u64().unwrap_or(0);
    assert!(
        verified >= KILL_AT_KIB * 1024,
        "fio verified only {verified} bytes: {text}"
    );
    n.ok(&["secondary", "r0"]);
    n.ok(&["down", "r0"]);
}
