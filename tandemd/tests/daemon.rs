//! `tandemd` as a process: driven through its control socket with the `drbdadm` client,
//! written and read through NBD by qemu-io and a raw client, stopped by SIGTERM and by kill -9.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use drbdadm_compat::control::{Client, ClientError, ControlError, Op, Reply};
use repl_core::meta::{self, AlGeometry, Layout, MdState, MetaWrite, Superblock};
use repl_core::state::{DiskState, Role};
use repl_core::status::Status;

const MIB: u64 = 1 << 20;
const DISK: u64 = 64 * MIB;
/// How long a daemon gets to answer its control socket after start.
const READY: Duration = Duration::from_secs(20);

/// Path of the `tandemd` that cargo built for these tests.
fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tandemd"))
}

/// A scratch node: run directory, backing file and `.res` file in one temporary directory.
struct Node {
    dir: tempfile::TempDir,
    name: String,
    disk: PathBuf,
    res: PathBuf,
    run_dir: PathBuf,
}

impl Node {
    /// A node whose `r0` has a `DISK`-byte backing file with fresh internal metadata.
    fn new() -> Node {
        let n = Node::bare(DISK);
        create_md(&n.disk);
        n
    }

    /// A node whose backing file is `size` zero bytes (no metadata).
    fn bare(size: u64) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("tandemd-test-")
            .tempdir()
            .expect("tempdir");
        let disk = dir.path().join("disk.img");
        std::fs::File::create(&disk)
            .and_then(|f| f.set_len(size))
            .expect("disk");
        let n = Node {
            name: "alpha".into(),
            disk: disk.clone(),
            res: dir.path().join("r0.res"),
            run_dir: dir.path().join("run"),
            dir,
        };
        n.write_res(&disk);
        n
    }

    fn write_res(&self, disk: &Path) {
        let text = format!(
            "resource r0 {{\n  device minor 0;\n  disk {};\n  meta-disk internal;\n  \
             on {} {{ address 127.0.0.1:7789; }}\n  on beta {{ address 127.0.0.2:7789; }}\n}}\n",
            disk.display(),
            self.name
        );
        std::fs::write(&self.res, text).expect("res file");
    }

    fn client(&self) -> Client {
        Client::new(&self.run_dir).with_timeout(Duration::from_secs(10))
    }

    fn call(&self, op: Op) -> Result<Reply, ClientError> {
        self.client().call(op)
    }

    fn up(&self) -> Result<Reply, ClientError> {
        self.call(Op::Up {
            config: self.res.clone(),
            resource: "r0".into(),
        })
    }

    fn primary(&self, force: bool) -> Result<Reply, ClientError> {
        self.call(Op::Primary {
            resource: "r0".into(),
            force,
        })
    }

    fn status(&self) -> Vec<Status> {
        match self.call(Op::Status) {
            Ok(Reply::Status { resources }) => resources,
            other => panic!("status: {other:?}"),
        }
    }

    fn nbd_sock(&self) -> PathBuf {
        self.run_dir.join("nbd.sock")
    }

    fn uri(&self) -> String {
        format!("nbd+unix:///r0?socket={}", self.nbd_sock().display())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.run_dir.join("tandemd.log")).unwrap_or_default()
    }

    /// Starts `tandemd` and waits until its control socket answers.
    fn start(&self) -> Daemon {
        let child = Command::new(bin())
            .arg("--run-dir")
            .arg(&self.run_dir)
            .args(["--node", &self.name, "--foreground"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tandemd");
        let mut d = Daemon {
            child,
            log: self.run_dir.join("tandemd.log"),
        };
        let deadline = Instant::now() + READY;
        loop {
            match self.call(Op::Status) {
                Ok(_) => return d,
                Err(ClientError::NotRunning(_) | ClientError::Stale(_)) => {}
                Err(e) => panic!("tandemd does not answer: {e}"),
            }
            if let Ok(Some(st)) = d.child.try_wait() {
                panic!("tandemd exited with {st} before answering:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "tandemd did not answer within {READY:?}:\n{}",
                self.log()
            );
            // Polling the socket that signals readiness; the bound is the deadline above.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A running daemon, killed and reaped when dropped (its log is printed on failure).
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn signal(&mut self, sig: i32) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits at most `limit` for the exit status.
    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            assert!(Instant::now() < deadline, "tandemd did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- tandemd log ---\n{log}");
        }
    }
}

/// `drbdadm create-md` on a file, with repl-core's own plan.
fn create_md(disk: &Path) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .expect("open disk");
    let size = f.metadata().expect("size").len();
    let layout = Layout::internal(size, AlGeometry::default()).expect("layout");
    for w in meta::create_md(&layout, &Superblock::fresh(&layout)) {
        match w {
            MetaWrite::Data { offset, bytes } => f.write_all_at(&bytes, offset),
            MetaWrite::Zeroes { offset, len } => f.write_all_at(&vec![0; len as usize], offset),
        }
        .expect("metadata write");
    }
}

fn superblock(disk: &Path) -> Superblock {
    let f = std::fs::File::open(disk).expect("disk");
    let size = f.metadata().expect("size").len();
    let mut b = vec![0; 4096];
    f.read_exact_at(&mut b, (size - 4096) & !4095)
        .expect("superblock");
    Superblock::decode(&b).expect("decode")
}

fn read_disk(disk: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(disk).expect("disk");
    let mut b = vec![0; len];
    f.read_exact_at(&mut b, offset).expect("read");
    b
}

fn qemu_io(uri: &str, cmds: &[&str]) -> Output {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw", "-t", "none"]);
    for x in cmds {
        c.args(["-c", x]);
    }
    c.arg(uri).output().expect("run qemu-io")
}

fn qemu_io_ok(uri: &str, cmds: &[&str]) -> String {
    let out = qemu_io(uri, cmds);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("failed"),
        "qemu-io {cmds:?}: {text}"
    );
    text
}

fn refused(r: Result<Reply, ClientError>) -> ControlError {
    match r {
        Err(ClientError::Refused(e)) => {
            assert!(!e.message.contains('\n'), "one line: {:?}", e.message);
            e
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The raw NBD option exchange: `OPT_GO` for `name`.
mod raw {
    use super::*;

    pub const REP_ACK: u32 = 1;
    pub const REP_ERR_POLICY: u32 = 0x8000_0002;
    pub const REP_ERR_UNKNOWN: u32 = 0x8000_0006;

    /// Negotiates `name`; on success the stream is in transmission, holding the export open.
    pub fn go(sock: &Path, name: &str) -> Result<UnixStream, (u32, String)> {
        let mut s = UnixStream::connect(sock).expect("connect nbd.sock");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).expect("greeting");
        assert_eq!(&hello[..16], b"NBDMAGICIHAVEOPT");
        s.write_all(&3u32.to_be_bytes()).expect("client flags");
        let mut data = (name.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        let mut m = b"IHAVEOPT".to_vec();
        m.extend_from_slice(&7u32.to_be_bytes()); // NBD_OPT_GO
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(&data);
        s.write_all(&m).expect("OPT_GO");
        loop {
            let mut h = [0u8; 20];
            s.read_exact(&mut h).expect("option reply");
            let t = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
            let n = u32::from_be_bytes([h[16], h[17], h[18], h[19]]) as usize;
            let mut d = vec![0; n];
            s.read_exact(&mut d).expect("reply data");
            if t == REP_ACK {
                return Ok(s);
            }
            if t & 0x8000_0000 != 0 {
                return Err((t, String::from_utf8_lossy(&d).into_owned()));
            }
        }
    }
}

#[test]
fn lifecycle_up_promote_write_demote_down_up_again() {
    let n = Node::new();
    let mut d = n.start();
    n.up().expect("up");
    let st = n.status();
    assert_eq!(st.len(), 1);
    assert_eq!(
        (st[0].state.role, st[0].state.disk),
        (Role::Secondary, DiskState::Inconsistent)
    );
    let file = std::fs::read_to_string(n.run_dir.join("proc-drbd")).expect("proc-drbd");
    assert!(
        file.starts_with("version: 8.4.11 (api:1/proto:86-101)\n"),
        "{file}"
    );
    assert!(
        file.contains(" 0: cs:WFConnection ro:Secondary/Unknown ds:Inconsistent/DUnknown"),
        "{file}"
    );

    let e = refused(n.up());
    assert_eq!(e.code, 10);
    assert!(
        e.message.contains("(124)") && e.message.contains("r0 is already up"),
        "{e}"
    );

    let e = refused(n.primary(false));
    assert_eq!(e.code, 17);
    assert_eq!(
        e.message,
        "0: State change failed: (-2) Need access to UpToDate data"
    );
    n.primary(true).expect("primary --force");
    let st = n.status();
    assert_eq!(
        (st[0].state.role, st[0].state.disk),
        (Role::Primary, DiskState::UpToDate)
    );
    assert!(
        n.log().contains("role( Secondary -> Primary )"),
        "{}",
        n.log()
    );

    qemu_io_ok(
        &n.uri(),
        &[
            "w -P 0xab 0 1M",
            "w -f -P 0xcd 5M 64k",
            "w -z 9M 64k",
            "discard 10M 64k",
            "flush",
            "r -P 0xab 0 1M",
            "r -P 0xcd 5M 64k",
            "r -P 0 9M 64k",
        ],
    );
    assert_eq!(read_disk(&n.disk, 0, 4096), vec![0xab; 4096]);
    assert_eq!(read_disk(&n.disk, 5 * MIB, 4096), vec![0xcd; 4096]);

    // A client holding the export keeps the resource Primary.
    let held = raw::go(&n.nbd_sock(), "r0").expect("open r0");
    let e = refused(n.call(Op::Secondary {
        resource: "r0".into(),
    }));
    assert_eq!(e.code, 11);
    assert_eq!(
        e.message,
        "0: State change failed: (-12) Device is held open by someone"
    );
    let e = refused(n.call(Op::Down {
        resource: "r0".into(),
    }));
    assert!(e.message.contains("(-12)"), "{e}");
    drop(held);
    n.call(Op::Secondary {
        resource: "r0".into(),
    })
    .expect("secondary once the client is gone");

    // A Secondary refuses NBD clients with a clear reason.
    let (t, msg) = raw::go(&n.nbd_sock(), "r0").expect_err("Secondary must refuse");
    assert_eq!(t, raw::REP_ERR_POLICY);
    assert_eq!(
        msg,
        "resource r0 is Secondary; promote it with drbdadm primary r0"
    );
    let (t, _) = raw::go(&n.nbd_sock(), "r7").expect_err("unknown export");
    assert_eq!(t, raw::REP_ERR_UNKNOWN);
    let out = qemu_io(&n.uri(), &["r 0 4k"]);
    assert!(!out.status.success());

    n.call(Op::Down {
        resource: "r0".into(),
    })
    .expect("down");
    assert!(n.status().is_empty());
    assert_eq!(superblock(&n.disk).state, MdState::Clean);
    n.call(Op::Down {
        resource: "r0".into(),
    })
    .expect("down of a resource that is down");

    n.up().expect("up again");
    let st = n.status();
    assert_eq!(st[0].state.disk, DiskState::UpToDate);
    n.primary(false)
        .expect("primary without force: the data is UpToDate");
    qemu_io_ok(&n.uri(), &["r -P 0xab 0 1M", "r -P 0xcd 5M 64k"]);

    // SIGTERM takes the resource down cleanly and exits 0.
    d.signal(libc::SIGTERM);
    let st = d.wait(Duration::from_secs(60));
    assert!(st.success(), "exit status {st}:\n{}", n.log());
    let sb = superblock(&n.disk);
    assert_eq!(sb.state, MdState::Clean);
    assert!(!n.run_dir.join("control.sock").exists());
    let file = std::fs::read_to_string(n.run_dir.join("proc-drbd")).expect("proc-drbd");
    assert!(
        !file.contains("cs:"),
        "no device left after shutdown: {file}"
    );
}

#[test]
fn a_second_daemon_on_the_same_run_dir_is_refused() {
    let n = Node::new();
    let _d = n.start();
    let out = Command::new(bin())
        .arg("--run-dir")
        .arg(&n.run_dir)
        .args(["--node", &n.name, "--foreground"])
        .output()
        .expect("second tandemd");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("another tandemd is running"), "{err}");
    // The first one still answers.
    assert!(n.status().is_empty());
}

#[test]
fn kill_9_while_primary_then_up_replays_the_activity_log() {
    let n = Node::new();
    let mut d = n.start();
    n.up().expect("up");
    n.primary(true).expect("primary --force");
    qemu_io_ok(&n.uri(), &["w -P 0x77 20M 256k", "w -P 0x78 40M 4k"]);
    d.signal(libc::SIGKILL);
    d.wait(Duration::from_secs(10));
    drop(d);
    assert_eq!(superblock(&n.disk).state, MdState::Unclean);

    let _d = n.start();
    n.up().expect("up after the crash");
    let log = n.log();
    assert!(
        log.lines()
            .any(|l| l.contains("Marked additional ")
                && l.contains(" KB as out-of-sync based on AL.")),
        "{log}"
    );
    let st = n.status();
    assert!(st[0].out_of_sync >= 8192, "two hot extents: {:?}", st[0]);
    n.primary(false).expect("primary");
    qemu_io_ok(&n.uri(), &["r -P 0x77 20M 256k", "r -P 0x78 40M 4k"]);
    assert_eq!(read_disk(&n.disk, 20 * MIB, 4096), vec![0x77; 4096]);
}

#[test]
fn bad_inputs_get_one_line_errors_and_touch_nothing() {
    // Unknown resource.
    let n = Node::new();
    let _d = n.start();
    let e = refused(n.call(Op::Up {
        config: n.res.clone(),
        resource: "r9".into(),
    }));
    assert_eq!(e.code, 10);
    assert_eq!(
        e.message,
        "'r9' not defined in your config (for this host)."
    );
    // Commands on a resource that is not up.
    let e = refused(n.primary(true));
    assert_eq!(e.code, 10);
    assert!(e.message.contains("(158) Unknown resource"), "{e}");
    // Missing config file.
    let e = refused(n.call(Op::Up {
        config: n.dir.path().join("nope.res"),
        resource: "r0".into(),
    }));
    assert!(e.message.contains("nope.res"), "{e}");

    // Missing backing file.
    let missing = n.dir.path().join("missing.img");
    n.write_res(&missing);
    let e = refused(n.up());
    assert_eq!(e.code, 10);
    assert!(
        e.message.contains("Can not open backing device") && e.message.contains("missing.img"),
        "{e}"
    );

    // A backing file without metadata.
    let blank = n.dir.path().join("blank.img");
    std::fs::File::create(&blank)
        .and_then(|f| f.set_len(DISK))
        .expect("blank");
    n.write_res(&blank);
    let e = refused(n.up());
    assert_eq!(
        e.message,
        format!(
            "Failure: (118) No valid meta data on {}; run drbdadm create-md r0 first",
            blank.display()
        )
    );
    assert!(read_disk(&blank, DISK - 4096, 4096).iter().all(|b| *b == 0));

    // Too small for internal metadata.
    let tiny = n.dir.path().join("tiny.img");
    std::fs::File::create(&tiny)
        .and_then(|f| f.set_len(16 * 1024))
        .expect("tiny");
    n.write_res(&tiny);
    let e = refused(n.up());
    assert!(e.message.contains("too small"), "{e}");

    // A resource that is not for this node.
    n.write_res(&n.disk);
    let other = Node {
        name: "gamma".into(),
        ..Node::bare(DISK)
    };
    other.write_res(&other.disk);
    let e = refused(n.call(Op::Up {
        config: other.res.clone(),
        resource: "r0".into(),
    }));
    assert!(
        e.message.contains("ignored, since this host (alpha)"),
        "{e}"
    );

    assert!(n.status().is_empty());
    // After all that, the good configuration still comes up.
    n.up().expect("up");
}

#[test]
fn another_protocol_version_gets_a_clear_error() {
    let n = Node::new();
    let _d = n.start();
    let s = UnixStream::connect(n.run_dir.join("control.sock")).expect("connect");
    (&s).write_all(b"{\"version\":99,\"op\":{\"op\":\"status\"}}\n")
        .expect("write");
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).expect("answer");
    let v: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(v["version"], 1);
    let msg = v["result"]["Err"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("version 1") && msg.contains("client speaks 99"),
        "{line}"
    );
}

#[test]
fn the_client_starts_a_detached_daemon_when_none_runs() {
    let n = Node::new();
    let c = n.client();
    assert!(matches!(
        c.call(Op::Status),
        Err(ClientError::NotRunning(_))
    ));
    c.ensure_daemon(&bin(), Some(&n.name))
        .expect("start tandemd");
    let pid: i32 = std::fs::read_to_string(n.run_dir.join("tandemd.lock"))
        .expect("lock file")
        .trim()
        .parse()
        .expect("pid");
    struct Kill(i32);
    impl Drop for Kill {
        fn drop(&mut self) {
            // SAFETY: kill on the pid the daemon wrote into its lock file.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
    let _kill = Kill(pid);
    n.up().expect("up");
    assert_eq!(n.status().len(), 1);
    // A second call finds it running and starts nothing.
    c.ensure_daemon(&bin(), Some(&n.name))
        .expect("already running");
}

#[test]
fn flexible_external_meta_data_keeps_the_data_device_whole() {
    let n = Node::bare(16 * MIB);
    let md = n.dir.path().join("md.img");
    std::fs::File::create(&md)
        .and_then(|f| f.set_len(MIB))
        .expect("md");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&md)
        .expect("open md");
    let layout = Layout::flex_external(MIB, AlGeometry::default()).expect("layout");
    for w in meta::create_md(&layout, &Superblock::fresh(&layout)) {
        match w {
            MetaWrite::Data { offset, bytes } => f.write_all_at(&bytes, offset),
            MetaWrite::Zeroes { offset, len } => f.write_all_at(&vec![0; len as usize], offset),
        }
        .expect("metadata write");
    }
    let text = format!(
        "resource r0 {{\n  device minor 0;\n  disk {};\n  meta-disk {};\n  \
         on {} {{ address 127.0.0.1:7789; }}\n  on beta {{ address 127.0.0.2:7789; }}\n}}\n",
        n.disk.display(),
        md.display(),
        n.name
    );
    std::fs::write(&n.res, text).expect("res file");
    let _d = n.start();
    n.up().expect("up");
    let st = n.status();
    assert_eq!(
        st[0].size.bytes(),
        16 * MIB,
        "the whole data device is usable"
    );
    n.primary(true).expect("primary --force");
    qemu_io_ok(&n.uri(), &["w -P 0x42 15M 1M", "r -P 0x42 15M 1M"]);
    assert_eq!(read_disk(&n.disk, 16 * MIB - 4096, 4096), vec![0x42; 4096]);
    n.call(Op::Down {
        resource: "r0".into(),
    })
    .expect("down");
    let mut b = vec![0; 4096];
    std::fs::File::open(&md)
        .and_then(|f| f.read_exact_at(&mut b, 0))
        .expect("superblock");
    assert_eq!(
        Superblock::decode(&b).expect("decode").state,
        MdState::Clean
    );
}
