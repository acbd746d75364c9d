//! Helpers for multi-process tests: find the built binaries, start servers, run clients, and
//! clean up every process, mount and loop device even when a test fails.

pub mod acked;
pub mod cluster;
pub mod faults;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a server gets to say it is listening.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Path of a binary built from this workspace (`cargo build` puts it beside the test's deps).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is not built; run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// Whether an external tool is on PATH. In CI (`CI` set) a missing tool is a failure, since
/// the test command installs them; elsewhere the test is skipped with a visible message.
pub fn require(tool: &str, package: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is missing in CI (Debian package {package})"
        );
        eprintln!("SKIP: {tool} not installed (apt-get install {package})");
    }
    found
}

/// Whether this process runs as root (needed for loop devices and mounts).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether this process runs as root, for a test that needs it (`why` says for what). Like
/// [`require`]: in CI (`CI` set) not being root is a failure, elsewhere a visible skip.
pub fn require_root(why: &str) -> bool {
    let root = is_root();
    if !root {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs this test as root ({why})"
        );
        eprintln!("SKIP: {why} needs root");
    }
    root
}

/// Runs a command to completion, returning its output; panics with stderr on failure.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `qemu-io` uncached on `uri` with each of `cmds` (`-c`) and returns its stdout; a failed
/// command or a pattern mismatch panics (qemu-io reports those on stdout and still exits 0).
pub fn qemu_io(uri: &str, cmds: &[&str]) -> String {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw", "-t", "none"]);
    for x in cmds {
        c.args(["-c", x]);
    }
    let out = String::from_utf8_lossy(&run_ok(c.arg(uri)).stdout).into_owned();
    assert!(
        !out.contains("failed") && !out.contains("Pattern verification"),
        "qemu-io {cmds:?}: {out}"
    );
    out
}

/// Runs a command and returns its stdout as text.
pub fn stdout_of(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run_ok(cmd).stdout).into_owned()
}

/// A child process killed (and reaped) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    /// Sends a signal and waits for the exit status.
    pub fn signal_and_wait(&mut self, sig: i32) -> std::process::ExitStatus {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        self.child.wait().expect("wait")
    }

    /// Waits for the exit status, at most `limit` (polling, so a hung child fails the test
    /// instead of hanging it).
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A running `tandem-nbd serve` and its scratch directory.
pub struct NbdServer {
    pub proc: Proc,
    pub dir: tempfile::TempDir,
    pub image: PathBuf,
    pub socket: PathBuf,
    /// The `nbd://` or `nbd+unix://` URI it printed.
    pub uri: String,
    /// Everything it printed on stdout up to readiness.
    pub banner: String,
}

/// How to start a test server.
#[derive(Default, Clone)]
pub struct ServeOpts {
    pub size: u64,
    pub name: Option<String>,
    pub read_only: bool,
    pub tcp: bool,
    pub extra: Vec<String>,
}

impl NbdServer {
    /// Creates a sparse image of `opts.size` bytes and serves it.
    pub fn start(opts: ServeOpts) -> NbdServer {
        let dir = tempfile::Builder::new()
            .prefix("tandem-test-")
            .tempdir()
            .expect("tempdir");
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(opts.size))
            .expect("image");
        let socket = dir.path().join("nbd.sock");
        let mut cmd = Command::new(bin("tandem-nbd"));
        cmd.arg("serve").arg(&image);
        if opts.tcp {
            cmd.args(["--listen", "127.0.0.1:0"]);
        } else {
            cmd.arg("--socket").arg(&socket);
        }
        if let Some(n) = &opts.name {
            cmd.args(["--name", n]);
        }
        if opts.read_only {
            cmd.arg("--read-only");
        }
        cmd.args(&opts.extra);
        let log = dir.path().join("server.log");
        cmd.stderr(std::fs::File::create(&log).expect("log file"));
        let (proc, banner) = spawn_until(cmd, "serving ");
        let uri = banner
            .split_whitespace()
            .find(|w| w.starts_with("nbd://") || w.starts_with("nbd+unix://"))
            .expect("uri in banner")
            .to_string();
        NbdServer {
            proc,
            dir,
            image,
            socket,
            uri,
            banner,
        }
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The TCP port (for servers started with `tcp`).
    pub fn port(&self) -> u16 {
        let rest = self.uri.trim_start_matches("nbd://");
        let hostport = rest.split('/').next().unwrap_or_default();
        hostport
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in uri")
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- tandem-nbd log ---\n{}", self.log());
        }
    }
}

/// Spawns `cmd` and waits (bounded) until a stdout line starts with `ready`; returns the
/// process and the stdout seen so far. stdout is drained in the background afterwards.
pub fn spawn_until(mut cmd: Command, ready: &str) -> (Proc, String) {
    let name = format!("{cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let stdout = child.stdout.take().expect("stdout");
    let mut proc = Proc { child, name };
    let (tx, rx) = mpsc::channel();
    let ready = ready.to_string();
    std::thread::spawn(move || {
        let mut seen = String::new();
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            seen.push_str(&line);
            seen.push('\n');
            if !sent && line.starts_with(&ready) {
                sent = tx.send(seen.clone()).is_ok();
            }
        }
        if !sent {
            let _ = tx.send(String::new());
        }
    });
    match rx.recv_timeout(READY_TIMEOUT) {
        Ok(s) if !s.is_empty() => (proc, s),
        _ => {
            let status = proc.child.try_wait();
            panic!("{} did not become ready (status {status:?})", proc.name)
        }
    }
}

/// Undo actions run in reverse order on drop: unmounts, loop detaches, kills.
#[derive(Default)]
pub struct Cleanup {
    steps: Vec<(String, Box<dyn FnOnce()>)>,
}

impl Cleanup {
    pub fn push(&mut self, what: &str, f: impl FnOnce() + 'static) {
        self.steps.push((what.to_string(), Box::new(f)));
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        while let Some((what, f)) = self.steps.pop() {
            eprintln!("cleanup: {what}");
            f();
        }
    }
}

/// Waits (bounded, polling a condition that is not time-based) until `path` exists.
pub fn wait_for_path(path: &Path, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// SHA-256 of a file, through `sha256sum`.
pub fn sha256(path: &Path) -> String {
    let out = stdout_of(Command::new("sha256sum").arg(path));
    out.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A file of `len` pseudo-random bytes from a seed (deterministic).
pub fn random_file(path: &Path, len: usize, seed: u64) {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(len);
    std::fs::write(path, v).expect("write random file");
}

/// Whether fio is installed with the I/O engine `engine` (as `fio --enghelp` lists it). Like
/// [`require`]: in CI a missing fio or engine is a failure, elsewhere a visible skip.
pub fn require_fio_engine(engine: &str) -> bool {
    if !require("fio", "fio") {
        return false;
    }
    let listed = Command::new("fio")
        .arg("--enghelp")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .any(|w| w == engine)
        })
        .unwrap_or(false);
    if !listed {
        assert!(
            std::env::var_os("CI").is_none(),
            "fio in CI lacks the {engine} engine (Debian's fio has it)"
        );
        eprintln!("SKIP: fio has no {engine} I/O engine (fio --enghelp)");
    }
    listed
}

/// The offsets of the blocks fio's verify reported as bad (its `verify: ... offset N` lines).
pub fn fio_mismatched_offsets(fio_stderr: &str) -> Vec<u64> {
    fio_stderr
        .lines()
        .filter(|l| l.starts_with("verify:"))
        .filter_map(|l| {
            l.split("offset ")
                .nth(1)
                .and_then(|r| r.split([',', ' ']).next())
                .and_then(|n| n.parse().ok())
        })
        .collect()
}
