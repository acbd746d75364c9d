//! Two tandem nodes on this machine for the `repl` benchmark: a `.res` file, a run directory
//! and a `tandemd` per node (`alpha` on 127.0.0.1, `beta` on 127.0.0.2, one free port), driven
//! through the real `drbdadm` with `TANDEM_NODE` and `TANDEM_RUN_DIR` as an operator would.
//!
//! The harness starts each `tandemd` itself (as `drbdadm up` would, same arguments) so that it
//! is a child in its own process group with SIGTERM as its parent-death signal; `drbdadm up`
//! then finds it answering. On drop every daemon is stopped, also one that is not our child:
//! the pid in `<run-dir>/tandemd.lock` gets SIGTERM, then SIGKILL.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::process::{self, ChildGuard};
use crate::signal;

/// The node names; `beta` sorts last, so it listens and `alpha` connects.
pub const NODES: [&str; 2] = ["alpha", "beta"];
/// The resource every cluster runs.
pub const RESOURCE: &str = "r0";
/// tandemd's files in its run directory (as `drbdadm_compat::control` names them).
const CONTROL_SOCKET: &str = "control.sock";
const NBD_SOCKET: &str = "nbd.sock";
const STATUS_FILE: &str = "proc-drbd";
const LOG_FILE: &str = "tandemd.log";
const LOCK_FILE: &str = "tandemd.lock";
/// How long a daemon may take to answer on its control socket after it was started.
const DAEMON_READY: Duration = Duration::from_secs(10);
/// How long a daemon not our child has to exit after SIGTERM before it gets SIGKILL.
const GRACE: Duration = Duration::from_secs(5);
/// How much of a daemon's log an error quotes.
const LOG_TAIL: usize = 3000;
/// How often the status files are looked at while waiting for a state.
pub const POLL: Duration = Duration::from_millis(10);

/// The programs a cluster runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub tandemd: PathBuf,
    pub drbdadm: PathBuf,
}

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot start {program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error(
        "{node}: `drbdadm {args}` failed ({status}): {stderr}\n{node}'s tandemd.log ends:\n{log}"
    )]
    Drbdadm {
        node: &'static str,
        args: String,
        status: ExitStatus,
        stderr: String,
        log: String,
    },
    #[error("{node}: tandemd exited ({status}); its log ends:\n{log}")]
    DaemonDied {
        node: &'static str,
        status: String,
        log: String,
    },
    #[error("{node}: tandemd did not answer on {} within {DAEMON_READY:?}; its log ends:\n{log}", .socket.display())]
    NotReady {
        node: &'static str,
        socket: PathBuf,
        log: String,
    },
    #[error("timed out after {within:?} waiting for {what}; status now:\n{status}\nalpha's log ends:\n{log_a}\nbeta's log ends:\n{log_b}")]
    Timeout {
        what: String,
        within: Duration,
        status: String,
        log_a: String,
        log_b: String,
    },
    #[error("interrupted")]
    Interrupted,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// What a node's `/proc/drbd`-format status file says about minor 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStatus {
    /// `cs:` (`Connected`, `SyncSource`, ...).
    pub cstate: String,
    /// `ro:` (`Primary/Secondary`).
    pub roles: String,
    /// `ds:` (`UpToDate/UpToDate`).
    pub dstates: String,
    /// `ns:` KiB sent to the peer (resync included); refreshed at most once a second.
    pub ns_kib: u64,
    /// `nr:` KiB received from the peer.
    pub nr_kib: u64,
    /// `dw:` KiB written to the local disk.
    pub dw_kib: u64,
    /// `al:` activity-log transactions written.
    pub al: u64,
    /// `bm:` bitmap pages written.
    pub bm: u64,
}

impl NodeStatus {
    /// Parses the line of minor 0 and the counters line after it; `None` when there is no
    /// minor 0 (the resource is not up yet).
    pub fn parse(text: &str) -> Option<NodeStatus> {
        let mut lines = text.lines();
        let dev = lines.find(|l| l.trim_start().starts_with("0:"))?;
        let mut s = NodeStatus::default();
        for w in dev.split_whitespace() {
            if let Some(v) = w.strip_prefix("cs:") {
                s.cstate = v.to_owned();
            } else if let Some(v) = w.strip_prefix("ro:") {
                s.roles = v.to_owned();
            } else if let Some(v) = w.strip_prefix("ds:") {
                s.dstates = v.to_owned();
            }
        }
        if let Some(counters) = lines.next() {
            for w in counters.split_whitespace() {
                let Some((key, value)) = w.split_once(':') else {
                    continue;
                };
                let field = match key {
                    "ns" => &mut s.ns_kib,
                    "nr" => &mut s.nr_kib,
                    "dw" => &mut s.dw_kib,
                    "al" => &mut s.al,
                    "bm" => &mut s.bm,
                    _ => continue,
                };
                *field = value.parse().unwrap_or(0);
            }
        }
        Some(s)
    }

    /// Connected, and both disks UpToDate as this node sees them.
    pub fn in_sync(&self) -> bool {
        self.cstate == "Connected" && self.dstates == "UpToDate/UpToDate"
    }
}

/// One node of a [`Cluster`].
pub struct Node {
    pub name: &'static str,
    pub res: PathBuf,
    pub run: PathBuf,
    pub disk: PathBuf,
    daemon: Option<ChildGuard>,
}

impl Node {
    /// This node's NBD export of the resource (served while it is Primary).
    pub fn nbd_socket(&self) -> PathBuf {
        self.run.join(NBD_SOCKET)
    }

    /// The daemon's pid as its lock file records it.
    pub fn lock_pid(&self) -> Option<u32> {
        fs::read_to_string(self.run.join(LOCK_FILE))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The daemon's pid: our child's, else the lock file's.
    pub fn pid(&self) -> Option<u32> {
        self.daemon
            .as_ref()
            .map(ChildGuard::id)
            .or_else(|| self.lock_pid())
    }

    /// The tail of the daemon's log.
    pub fn log_tail(&self) -> String {
        tail(&self.run.join(LOG_FILE), LOG_TAIL)
    }

    /// The whole daemon log.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(self.run.join(LOG_FILE)).unwrap_or_default()).into_owned()
    }

    /// The status file as the daemon last wrote it (state changes at once, counters at most
    /// once a second).
    pub fn status(&self) -> Option<NodeStatus> {
        NodeStatus::parse(&fs::read_to_string(self.run.join(STATUS_FILE)).ok()?)
    }

    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.env("TANDEM_NODE", self.name)
            .env("TANDEM_RUN_DIR", &self.run)
            .stdin(Stdio::null())
            // Ctrl-C on the terminal reaches only the harness, which then cleans up.
            .process_group(0);
        c
    }

    fn check_daemon(&mut self) -> Result<(), ClusterError> {
        if let Some(d) = self.daemon.as_mut() {
            if let Some(status) = d.try_wait()? {
                return Err(ClusterError::DaemonDied {
                    node: self.name,
                    status: status.to_string(),
                    log: self.log_tail(),
                });
            }
        }
        Ok(())
    }

    /// Stops the daemon: our child through its guard, then whatever pid the lock file names
    /// if that is still running (a daemon `drbdadm up` started by itself).
    fn stop(&mut self) {
        let locked = self.lock_pid();
        if let Some(mut d) = self.daemon.take() {
            if let Err(e) = d.stop() {
                eprintln!("tandem-bench: stopping {}'s tandemd: {e}", self.name);
            }
        }
        if let Some(pid) = locked {
            kill_and_wait(pid);
        }
    }
}

/// SIGTERM to `pid` if it is a tandemd, SIGKILL after [`GRACE`]; waits until it is gone.
fn kill_and_wait(pid: u32) {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return;
    };
    let is_tandemd = || {
        fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "tandemd")
            && !fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
    };
    if !is_tandemd() {
        return;
    }
    // SAFETY: kill has no memory-safety preconditions; the pid was checked to be a tandemd.
    unsafe { libc::kill(p, libc::SIGTERM) };
    let start = Instant::now();
    while is_tandemd() {
        if start.elapsed() > GRACE {
            // SAFETY: as above.
            unsafe { libc::kill(p, libc::SIGKILL) };
            let killed = Instant::now();
            while is_tandemd() && killed.elapsed() < GRACE {
                thread::sleep(POLL);
            }
            return;
        }
        thread::sleep(POLL);
    }
}

/// Two nodes replicating [`RESOURCE`]; dropping it stops both daemons.
pub struct Cluster {
    pub nodes: [Node; 2],
    bins: Binaries,
}

impl Cluster {
    /// Writes each node's `.res` file into `dir` (created) with the backing files `disks`
    /// (which must exist), protocol C, `disk_options` in the disk section, and starts both
    /// daemons. Nothing is created on the backing files yet: see [`Cluster::up`].
    ///
    /// # Errors
    /// A file cannot be written or a daemon does not start.
    pub fn start(
        bins: &Binaries,
        dir: &Path,
        disks: [&Path; 2],
        disk_options: &str,
    ) -> Result<Cluster, ClusterError> {
        fs::create_dir_all(dir)?;
        let port = free_port()?;
        let addresses = [format!("127.0.0.1:{port}"), format!("127.0.0.2:{port}")];
        let mut text = format!(
            "resource {RESOURCE} {{\n  protocol C;\n  net {{\n    connect-int 1;\n  }}\n  disk {{\n    {disk_options}\n  }}\n"
        );
        for (host, (disk, addr)) in NODES.iter().zip(disks.iter().zip(&addresses)) {
            text.push_str(&format!(
                "  on {host} {{\n    device /dev/drbd0;\n    disk {};\n    address {addr};\n    meta-disk internal;\n  }}\n",
                disk.display()
            ));
        }
        text.push_str("}\n");
        let mut nodes = Vec::with_capacity(2);
        for (name, disk) in NODES.iter().zip(disks) {
            let res = dir.join(format!("{name}.res"));
            fs::write(&res, &text)?;
            let run = dir.join(format!("run-{name}"));
            fs::create_dir_all(&run)?;
            nodes.push(Node {
                name,
                res,
                run,
                disk: disk.to_path_buf(),
                daemon: None,
            });
        }
        let [a, b]: [Node; 2] = match nodes.try_into() {
            Ok(n) => n,
            Err(_) => unreachable!("two nodes"),
        };
        let mut cluster = Cluster {
            nodes: [a, b],
            bins: bins.clone(),
        };
        for i in 0..2 {
            cluster.start_daemon(i)?;
        }
        Ok(cluster)
    }

    fn start_daemon(&mut self, i: usize) -> Result<(), ClusterError> {
        let node = &self.nodes[i];
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.run.join("tandemd.out"))?;
        let mut cmd = Command::new(&self.bins.tandemd);
        cmd.arg("--run-dir")
            .arg(&node.run)
            .args(["--node", node.name])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let guard = ChildGuard::spawn(&mut cmd).map_err(|source| ClusterError::Spawn {
            program: self.bins.tandemd.display().to_string(),
            source,
        })?;
        let node = &mut self.nodes[i];
        node.daemon = Some(guard);
        let socket = node.run.join(CONTROL_SOCKET);
        let deadline = Instant::now() + DAEMON_READY;
        loop {
            node.check_daemon()?;
            if UnixStream::connect(&socket).is_ok() {
                return Ok(());
            }
            if signal::interrupted() {
                return Err(ClusterError::Interrupted);
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::NotReady {
                    node: node.name,
                    socket,
                    log: node.log_tail(),
                });
            }
            thread::sleep(POLL);
        }
    }

    /// `drbdadm -c RES ARGS` on node `i`; its stdout.
    ///
    /// # Errors
    /// drbdadm could not run or exited non-zero (the error quotes its stderr and the log).
    pub fn drbdadm(&self, i: usize, args: &[&str]) -> Result<String, ClusterError> {
        let node = &self.nodes[i];
        let out = node
            .command(&self.bins.drbdadm)
            .arg("-c")
            .arg(&node.res)
            .args(args)
            .output()
            .map_err(|source| ClusterError::Spawn {
                program: self.bins.drbdadm.display().to_string(),
                source,
            })?;
        if !out.status.success() {
            return Err(ClusterError::Drbdadm {
                node: node.name,
                args: args.join(" "),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                log: node.log_tail(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `create-md --force` and `up` on both nodes, then waits until they are connected (both
    /// disks Inconsistent: fresh metadata).
    ///
    /// # Errors
    /// A command failed, a daemon died, or they did not connect within `within`.
    pub fn create_and_connect(&mut self, within: Duration) -> Result<(), ClusterError> {
        for i in 0..2 {
            self.drbdadm(i, &["create-md", "--force", RESOURCE])?;
        }
        for i in 0..2 {
            self.drbdadm(i, &["up", RESOURCE])?;
        }
        self.wait("both nodes Connected", within, |s| {
            s.iter().all(|n| n.cstate == "Connected")
        })
    }

    /// DRBD's "both nodes new" flow: `new-current-uuid --clear-bitmap` on alpha (no initial
    /// sync), then `primary` on alpha once both are UpToDate.
    ///
    /// # Errors
    /// A command failed, a daemon died, or the states did not come within `within`.
    pub fn skip_sync_and_promote(&mut self, within: Duration) -> Result<(), ClusterError> {
        self.drbdadm(0, &["new-current-uuid", "--clear-bitmap", RESOURCE])?;
        self.wait_in_sync(within)?;
        self.drbdadm(0, &["primary", RESOURCE])?;
        self.wait("alpha Primary", within, |s| {
            s[0].roles.starts_with("Primary/")
        })
    }

    /// Waits until both nodes' status files say Connected and UpToDate/UpToDate, then checks
    /// that `drbdadm cstate` and `dstate` say so too.
    ///
    /// # Errors
    /// A daemon died, time ran out, or drbdadm disagrees with the status files.
    pub fn wait_in_sync(&mut self, within: Duration) -> Result<(), ClusterError> {
        self.wait("Connected, UpToDate/UpToDate on both nodes", within, |s| {
            s.iter().all(NodeStatus::in_sync)
        })?;
        self.confirm_in_sync()
    }

    /// `drbdadm cstate` and `dstate` on both nodes say Connected and UpToDate/UpToDate.
    ///
    /// # Errors
    /// They do not, or drbdadm failed.
    pub fn confirm_in_sync(&self) -> Result<(), ClusterError> {
        for (i, name) in NODES.iter().enumerate() {
            let c = self.drbdadm(i, &["cstate", RESOURCE])?;
            let d = self.drbdadm(i, &["dstate", RESOURCE])?;
            if c.trim() != "Connected" || d.trim() != "UpToDate/UpToDate" {
                return Err(ClusterError::Timeout {
                    what: format!(
                        "drbdadm to agree with the status file on {name} (cstate {}, dstate {})",
                        c.trim(),
                        d.trim()
                    ),
                    within: Duration::ZERO,
                    status: self.status_text(),
                    log_a: self.nodes[0].log_tail(),
                    log_b: self.nodes[1].log_tail(),
                });
            }
        }
        Ok(())
    }

    /// Polls both status files every [`POLL`] until `cond` holds for them.
    ///
    /// # Errors
    /// A daemon died, a stop signal arrived, or `within` passed.
    pub fn wait(
        &mut self,
        what: &str,
        within: Duration,
        cond: impl Fn(&[NodeStatus; 2]) -> bool,
    ) -> Result<(), ClusterError> {
        let deadline = Instant::now() + within;
        loop {
            let s = [
                self.nodes[0].status().unwrap_or_default(),
                self.nodes[1].status().unwrap_or_default(),
            ];
            if cond(&s) {
                return Ok(());
            }
            for n in &mut self.nodes {
                n.check_daemon()?;
            }
            if signal::interrupted() {
                return Err(ClusterError::Interrupted);
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout {
                    what: what.to_owned(),
                    within,
                    status: self.status_text(),
                    log_a: self.nodes[0].log_tail(),
                    log_b: self.nodes[1].log_tail(),
                });
            }
            thread::sleep(POLL);
        }
    }

    fn status_text(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "{}: {}",
                    n.name,
                    fs::read_to_string(n.run.join(STATUS_FILE))
                        .unwrap_or_else(|e| format!("(no status file: {e})"))
                        .trim_end()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `/proc/drbd` as node `i`'s daemon sees it now (the status file's counters lag up to
    /// a second).
    ///
    /// # Errors
    /// drbdadm failed or printed no minor 0.
    pub fn live_status(&self, i: usize) -> Result<NodeStatus, ClusterError> {
        let text = self.drbdadm(i, &["proc-drbd", RESOURCE])?;
        NodeStatus::parse(&text).ok_or_else(|| {
            ClusterError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: `drbdadm proc-drbd` shows no minor 0:\n{text}",
                    NODES[i]
                ),
            ))
        })
    }

    /// Both daemons' CPU time (user + system) so far, summed, and per node.
    ///
    /// # Errors
    /// A daemon's `/proc` entry cannot be read.
    pub fn cpu_times(&self) -> Result<[Duration; 2], ClusterError> {
        let one = |n: &Node| -> Result<Duration, ClusterError> {
            let pid = n.pid().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{}: no tandemd pid", n.name),
                )
            })?;
            Ok(process::cpu_time(pid)?)
        };
        Ok([one(&self.nodes[0])?, one(&self.nodes[1])?])
    }

    /// Fails if a daemon has exited.
    ///
    /// # Errors
    /// [`ClusterError::DaemonDied`].
    pub fn check_daemons(&mut self) -> Result<(), ClusterError> {
        for n in &mut self.nodes {
            n.check_daemon()?;
        }
        Ok(())
    }

    /// Stops both daemons (also done on drop).
    pub fn stop(&mut self) {
        for n in &mut self.nodes {
            n.stop();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free TCP port on 127.0.0.2 (the listening node's address).
fn free_port() -> io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.2:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
}

/// `VmRSS` and `VmHWM` (peak) of process `pid`, in KiB.
///
/// # Errors
/// `/proc/PID/status` cannot be read or lacks the fields.
pub fn rss_kib(pid: u32) -> io::Result<(u64, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_rss(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS/VmHWM"))
}

fn parse_rss(status: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        status.lines().find_map(|l| {
            l.strip_prefix(name)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The last `n` bytes of a file, lossily decoded.
fn tail(path: &Path, n: usize) -> String {
    let text = File::open(path)
        .and_then(|mut f| {
            use std::io::{Read, Seek, SeekFrom};
            let len = f.metadata()?.len();
            f.seek(SeekFrom::Start(len.saturating_sub(n as u64)))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            Ok(buf)
        })
        .unwrap_or_default();
    let s = String::from_utf8_lossy(&text);
    if s.trim().is_empty() {
        "(empty)".to_owned()
    } else {
        s.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_file() {
        let text = "version: 8.4.11 (api:1/proto:86-101)\nsrcversion: tandem-0.1.0\n 0: cs:SyncSource ro:Primary/Secondary ds:UpToDate/Inconsistent C r-----\n    ns:1048508 nr:12 dw:0 dr:1048508 al:0 bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:0\n";
        let s = NodeStatus::parse(text).expect("minor 0");
        assert_eq!(s.cstate, "SyncSource");
        assert_eq!(s.roles, "Primary/Secondary");
        assert_eq!(s.dstates, "UpToDate/Inconsistent");
        assert_eq!((s.ns_kib, s.nr_kib), (1048508, 12));
        assert_eq!((s.dw_kib, s.al, s.bm), (0, 0, 0));
        let busy = text.replace("dw:0 dr:1048508 al:0 bm:0", "dw:4096 dr:0 al:7 bm:3");
        let s = NodeStatus::parse(&busy).expect("minor 0");
        assert_eq!((s.dw_kib, s.al, s.bm), (4096, 7, 3));
        assert!(!s.in_sync());
        let done = text
            .replace("SyncSource", "Connected")
            .replace("/Inconsistent", "/UpToDate");
        assert!(NodeStatus::parse(&done).expect("minor 0").in_sync());
        assert_eq!(
            NodeStatus::parse("version: 8.4.11 (api:1/proto:86-101)\n"),
            None
        );
    }

    #[test]
    fn parses_proc_status() {
        let s = "Name:\ttandemd\nVmPeak:\t  400000 kB\nVmHWM:\t   41234 kB\nVmRSS:\t   39876 kB\n";
        assert_eq!(parse_rss(s), Some((39876, 41234)));
        assert_eq!(parse_rss("Name: x\n"), None);
    }
}
