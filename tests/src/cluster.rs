//! Two tandem nodes on this machine: one `.res` file, a backing file and a run directory per
//! node, the real `drbdadm` and `tandemd` binaries, each node named with `TANDEM_NODE`.
//! Daemons are killed and scratch files removed on drop, also when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::bin;

/// The two node names; `beta` sorts last, so it listens and `alpha` connects.
pub const NODES: [&str; 2] = ["alpha", "beta"];

/// How a cluster is set up.
#[derive(Debug, Clone)]
pub struct ClusterOpts {
    /// Backing file sizes in bytes, per node.
    pub sizes: [u64; 2],
    /// Extra lines for the resource's `net` section, per node (each node has its own copy of
    /// the config file, so they may differ, e.g. in `shared-secret`).
    pub net: [String; 2],
    /// Extra lines for the `disk` section.
    pub disk: String,
    pub protocol: char,
    /// Addresses of the two nodes (`None`: 127.0.0.1 and 127.0.0.2 with a free port).
    pub addresses: Option<[String; 2]>,
    /// Lines for a `handlers` section (none when empty).
    pub handlers: String,
    /// Volumes of the resource (1: the plain `on` section with one device; more: `volume N`
    /// sections with minors 0, 1, ...).
    pub volumes: u32,
    /// `(node, volume)` pairs that have `disk none`.
    pub diskless: Vec<(usize, u32)>,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            sizes: [64 << 20; 2],
            net: [String::new(), String::new()],
            disk: "resync-rate 1000M;".into(),
            protocol: 'C',
            addresses: None,
            handlers: String::new(),
            volumes: 1,
            diskless: Vec::new(),
        }
    }
}

/// One node of a [`Cluster`].
pub struct ClusterNode {
    pub name: &'static str,
    pub res: PathBuf,
    pub run: PathBuf,
    pub disk: PathBuf,
    /// The backing file of each volume (`disk` is volume 0's); `disk none` volumes have one
    /// too, unused.
    pub disks: Vec<PathBuf>,
    /// Command prefix to run this node's processes (e.g. `ip netns exec NS`), if any.
    pub wrapper: Vec<String>,
}

/// Two nodes sharing a scratch directory. The nodes come first so that they drop (and kill
/// their daemons, whose pids are in the run directories) before the directory is removed.
pub struct Cluster {
    pub nodes: [ClusterNode; 2],
    pub dir: tempfile::TempDir,
    /// `(node, volume)` pairs without a disk.
    pub diskless: Vec<(usize, u32)>,
}

/// A free TCP port on 127.0.0.2 (the listening node's address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.2:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Cluster {
    pub fn new(opts: ClusterOpts) -> Cluster {
        Cluster::with_wrappers(opts, [vec![], vec![]])
    }

    /// A cluster whose node `i` runs its commands under `wrappers[i]`.
    pub fn with_wrappers(opts: ClusterOpts, wrappers: [Vec<String>; 2]) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("tandem-2n-")
            .tempdir()
            .expect("tempdir");
        let addresses = opts.addresses.clone().unwrap_or_else(|| {
            let port = free_port();
            [format!("127.0.0.1:{port}"), format!("127.0.0.2:{port}")]
        });
        let volumes = opts.volumes.max(1);
        let per_volume: Vec<Vec<PathBuf>> = NODES
            .iter()
            .map(|n| {
                (0..volumes)
                    .map(|v| match v {
                        0 => dir.path().join(format!("{n}.img")),
                        v => dir.path().join(format!("{n}-{v}.img")),
                    })
                    .collect()
            })
            .collect();
        let disks: Vec<PathBuf> = per_volume.iter().map(|d| d[0].clone()).collect();
        let mut nodes = Vec::new();
        for (i, (name, wrapper)) in NODES.iter().zip(wrappers).enumerate() {
            for d in &per_volume[i] {
                std::fs::File::create(d)
                    .and_then(|f| f.set_len(opts.sizes[i]))
                    .expect("backing file");
            }
            let mut text = format!(
                "resource r0 {{\n  protocol {};\n  net {{\n    connect-int 1;\n    ping-int 1;\n    ping-timeout 5;\n{}\n  }}\n  disk {{\n    {}\n  }}\n",
                opts.protocol, opts.net[i], opts.disk
            );
            if !opts.handlers.is_empty() {
                text.push_str(&format!("  handlers {{\n    {}\n  }}\n", opts.handlers));
            }
            for (j, host) in NODES.iter().enumerate() {
                if volumes == 1 {
                    text.push_str(&format!(
                        "  on {host} {{\n    device /dev/drbd0;\n    disk {};\n    address {};\n    meta-disk internal;\n  }}\n",
                        disks[j].display(),
                        addresses[j]
                    ));
                    continue;
                }
                text.push_str(&format!("  on {host} {{\n"));
                for (v, d) in per_volume[j].iter().enumerate() {
                    let disk = if opts.diskless.contains(&(j, v as u32)) {
                        "disk none; meta-disk internal;".to_string()
                    } else {
                        format!("disk {}; meta-disk internal;", d.display())
                    };
                    text.push_str(&format!(
                        "    volume {v} {{ device /dev/drbd{v}; {disk} }}\n"
                    ));
                }
                text.push_str(&format!("    address {};\n  }}\n", addresses[j]));
            }
            text.push_str("}\n");
            let res = dir.path().join(format!("{name}.res"));
            std::fs::write(&res, text).expect("res");
            nodes.push(ClusterNode {
                name,
                res,
                run: dir.path().join(format!("run-{name}")),
                disk: disks[i].clone(),
                disks: per_volume[i].clone(),
                wrapper,
            });
        }
        let nodes: [ClusterNode; 2] = match nodes.try_into() {
            Ok(n) => n,
            Err(_) => unreachable!("two nodes"),
        };
        Cluster {
            nodes,
            dir,
            diskless: opts.diskless,
        }
    }

    pub fn node(&self, i: usize) -> &ClusterNode {
        &self.nodes[i]
    }

    /// `create-md` (of each volume with a disk) and `up` on both nodes.
    pub fn up(&self) {
        for (i, n) in self.nodes.iter().enumerate() {
            if self.diskless.iter().all(|&(node, _)| node != i) {
                n.ok(&["create-md", "--force", "r0"]);
                continue;
            }
            for v in 0..n.disks.len() as u32 {
                if !self.diskless.contains(&(i, v)) {
                    n.ok(&["create-md", "--force", &format!("r0/{v}")]);
                }
            }
        }
        for n in &self.nodes {
            n.ok(&["up", "r0"]);
        }
    }

    /// [`Cluster::up`], then seed 004's skip of the initial sync from node 0: both nodes
    /// Connected and UpToDate, nothing written to the backing stores but metadata.
    pub fn up_skipping_sync(&self) {
        self.up();
        self.wait_states("Connected", ["Inconsistent", "Inconsistent"]);
        self.nodes[0].ok(&["new-current-uuid", "--clear-bitmap", "r0"]);
        self.wait_states("Connected", ["UpToDate", "UpToDate"]);
    }

    /// Waits until both nodes report these connection and disk states.
    pub fn wait_states(&self, cstate: &str, dstates: [&str; 2]) {
        for (n, d) in self.nodes.iter().zip(dstates) {
            n.wait_for(&format!("cstate {cstate}, dstate {d}"), |n| {
                n.query("cstate") == cstate && n.query("dstate") == d
            });
        }
    }

    /// Whether the first `len` bytes of both backing files are equal.
    pub fn data_identical(&self, len: u64) -> bool {
        files_equal(&self.nodes[0].disk, &self.nodes[1].disk, len)
    }

    /// Where the two backing files first differ within `len` bytes, and how many 4 KiB
    /// blocks differ in all (for a failed [`Cluster::data_identical`]).
    pub fn differences(&self, len: u64) -> Option<(u64, u64)> {
        use std::os::unix::fs::FileExt;
        let (fa, fb) = (
            std::fs::File::open(&self.nodes[0].disk).ok()?,
            std::fs::File::open(&self.nodes[1].disk).ok()?,
        );
        let (mut ba, mut bb) = (vec![0u8; 4096], vec![0u8; 4096]);
        let (mut first, mut count) = (None, 0);
        for off in (0..len).step_by(4096) {
            let (ra, rb) = (fa.read_at(&mut ba, off), fb.read_at(&mut bb, off));
            if ra.ok() != rb.ok() || ba != bb {
                first.get_or_insert(off);
                count += 1;
            }
        }
        first.map(|f| (f, count))
    }

    /// For a failed fio verify: what each node's disk holds at the offsets fio names (the
    /// first eight), and where the two disks differ over `len` bytes.
    pub fn mismatch_report(&self, fio_stderr: &str, len: u64) -> String {
        use std::os::unix::fs::FileExt;
        let offsets: Vec<u64> = fio_stderr
            .lines()
            .filter(|l| l.contains("verify") && l.contains("offset "))
            .filter_map(|l| {
                l.split("offset ")
                    .nth(1)
                    .and_then(|r| r.split([',', ' ']).next())
                    .and_then(|n| n.parse().ok())
            })
            .take(8)
            .collect();
        let mut out = String::new();
        for offset in offsets {
            for n in &self.nodes {
                let mut b = [0u8; 16];
                let r = std::fs::File::open(&n.disk).and_then(|f| f.read_exact_at(&mut b, offset));
                out.push_str(&format!("{} at {offset}: {r:?} {b:02x?}\n", n.name));
            }
        }
        out.push_str(&match self.differences(len) {
            Some((first, blocks)) => {
                format!("the disks differ in {blocks} 4 KiB blocks, the first at {first}\n")
            }
            None => "the disks are identical\n".into(),
        });
        out
    }
}

impl ClusterNode {
    fn command(&self, program: &Path) -> Command {
        let mut c = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(program);
                c
            }
            None => Command::new(program),
        };
        c.env("TANDEM_NODE", self.name)
            .env("TANDEM_RUN_DIR", &self.run);
        c
    }

    pub fn drbdadm(&self, args: &[&str]) -> Output {
        self.command(&bin("drbdadm"))
            .arg("-c")
            .arg(&self.res)
            .args(args)
            .output()
            .expect("drbdadm")
    }

    /// Runs drbdadm and returns stdout; panics with the log on a non-zero exit.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.drbdadm(args);
        assert!(
            o.status.success(),
            "{}: drbdadm {args:?}: {}\n{}\nlog:\n{}",
            self.name,
            o.status,
            String::from_utf8_lossy(&o.stderr),
            self.log()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `drbdadm <what> r0`, trimmed (`cstate` gives `Connected`, `dstate` the local disk).
    pub fn query(&self, what: &str) -> String {
        let o = self.drbdadm(&[what, "r0"]);
        let s = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        match what {
            "dstate" | "role" => s.split('/').next().unwrap_or("").to_owned(),
            _ => s,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.run.join("tandemd.log")).unwrap_or_default()
    }

    /// `/proc/drbd` as the daemon sees it now (the status file's counters lag up to 1 s).
    pub fn proc_drbd(&self) -> String {
        String::from_utf8_lossy(&self.drbdadm(&["proc-drbd"]).stdout).into_owned()
    }

    /// KiB written to this node's disk (`dw:` of `/proc/drbd`; 0 when unreadable).
    pub fn written_kib(&self) -> u64 {
        self.proc_drbd()
            .split_whitespace()
            .find_map(|w| w.strip_prefix("dw:"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// NBD URI of this node's export.
    pub fn uri(&self) -> String {
        self.uri_of("r0")
    }

    /// NBD URI of export `name` of this node (`r0/1` for volume 1).
    pub fn uri_of(&self, name: &str) -> String {
        format!(
            "nbd+unix:///{name}?socket={}",
            self.run.join("nbd.sock").display()
        )
    }

    /// Polls `cond` until it holds; panics after a minute with what was awaited.
    pub fn wait_for(&self, what: &str, cond: impl Fn(&ClusterNode) -> bool) {
        let end = Instant::now() + Duration::from_secs(60);
        while !cond(self) {
            assert!(
                Instant::now() < end,
                "{}: timed out waiting for {what}\nproc-drbd:\n{}\nlog:\n{}",
                self.name,
                self.proc_drbd(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's pid, from its lock file.
    pub fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.run.join("tandemd.lock"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The 4 KiB block at `offset` of this node's backing file was never written (all zero).
    pub fn untouched(&self, offset: u64) -> bool {
        use std::os::unix::fs::FileExt;
        let mut b = vec![0u8; 4096];
        std::fs::File::open(&self.disk)
            .and_then(|f| f.read_exact_at(&mut b, offset))
            .is_ok()
            && b.iter().all(|&x| x == 0)
    }

    /// kill -9 of this node's daemon; waits until it is gone.
    pub fn kill9(&self) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill on the pid our daemon recorded; at worst it is already gone.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let end = Instant::now() + Duration::from_secs(10);
            // SAFETY: signal 0 only checks that the process exists.
            while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} tandemd.log ---\n{}", self.name, self.log());
        }
        self.kill9();
    }
}

/// Whether two files agree on their first `len` bytes.
pub fn files_equal(a: &Path, b: &Path, len: u64) -> bool {
    use std::io::Read;
    let (Ok(fa), Ok(fb)) = (std::fs::File::open(a), std::fs::File::open(b)) else {
        return false;
    };
    let (mut ra, mut rb) = (fa.take(len), fb.take(len));
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut ra, &mut ba);
        let nb = read_full(&mut rb, &mut bb);
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
}

fn read_full(r: &mut impl std::io::Read, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}
