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
        let dir = tempfile::Builder::new()
            .prefix("tandem-drbdadm-")
            .tempdir()
            .expect("tempdir");
        let disk = dir.path().join("disk.img");
        std::fs::File::create(&disk)
            .and_then(|f| f.set_len(64 * MIB))
            .expect("disk");
        let res = dir.path().join("r0.res");
        let text = format!(
            "resource r0 {{\n  protocol C;\n  on alpha {{\n    device /dev/drbd0;\n    disk {};\n    \
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
    // No metadata yet: up fails with DRBD's code and says what to do.
    let up = n.drbdadm(&["up", "r0"]);
    assert!(!up.status.success());
    let msg = String::from_utf8_lossy(&up.stderr);
    assert!(msg.contains("create-md"), "{msg}");
    assert_eq!(msg.lines().count(), 1, "{msg}");
}
