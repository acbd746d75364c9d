//! The `repl` comparison: two tandem nodes replicating over loopback (protocol C, both backing
//! files on one file system) against single-node peers measured in the same run.
//!
//! 1. fio through the Primary's NBD export against nbdkit's file plugin serving a plain file:
//!    1 MiB sequential writes at depth 8, 4 KiB random writes at depth 1 (rounds alternate the
//!    two; each nbdkit run gets a fresh server, the cluster stays up; dirty pages are written
//!    back between runs).
//! 2. A full resync of a fully out-of-sync volume (`primary --force` on fresh metadata) at the
//!    highest `resync-rate` DRBD accepts, timed from `primary --force` until both nodes are
//!    Connected and UpToDate/UpToDate, against `nbdcopy --flush` copying the same bytes between
//!    two nbdkit exports of the same two files. `--flush`, because a resync ends durable: the
//!    target flushes its data before it writes the metadata that says UpToDate.
//! 3. A full resync at a set `resync-rate`: measured rate over configured rate.
//! 4. Each tandemd's resident memory with 1 TiB sparse backing files, after a short 4 KiB
//!    random-write fio job on the Primary.
//!
//! Everything lives in a scratch directory that is removed, with every daemon and child
//! stopped, on success, error and Ctrl-C alike.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::{self, Binaries, Cluster, ClusterError, RESOURCE};
use crate::fio::{self, FioError, Metric, Row, Sample, Timing, ROWS};
use crate::nbd::{bytes, machine};
use crate::process::{self, ChildGuard, WaitError};
use crate::report::{layout, median, Measure, Summary};
use crate::scratch::{self, ScratchDir};
use crate::server::{Launcher, QemuAio, Server, ServerError};
use crate::signal;

/// Longest path a Unix socket address holds (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;
/// The highest `resync-rate` DRBD 8.4 accepts (4194304 KiB/s).
pub const UNLIMITED_RATE: &str = "4096M";
/// How long two fresh nodes may take to connect, and a promotion to show.
const SETTLE: Duration = Duration::from_secs(60);
/// The rows of part 1.
pub const FIO_ROWS: [Row; 2] = [ROWS[0], ROWS[2]];
/// The fio row of part 4.
pub const MEMORY_ROW: Row = ROWS[3];

/// The targets of the "Performance" section.
pub const SEQ_WRITE_MIN_RATIO: f64 = 0.45;
pub const RAND_WRITE_MAX_P50_RATIO: f64 = 2.0;
pub const RESYNC_MIN_RATIO: f64 = 1.0;
pub const RATE_TOLERANCE: f64 = 0.10;
pub const RSS_MAX_KIB: u64 = 64 * 1024;

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub bins: Binaries,
    /// Where the scratch directory (backing files, run directories, logs) is created.
    pub dir: PathBuf,
    /// Backing file size of parts 1 and 2, in bytes.
    pub size: u64,
    /// Length of each fio run of part 1.
    pub timing: Timing,
    /// How many times each measure of parts 1-3 is taken; medians are shown.
    pub rounds: u32,
    /// Part 3's `resync-rate`, MiB/s.
    pub rate_mib: u64,
    /// About how long part 3's resync should last at that rate (sets its volume size).
    pub rate_secs: u64,
    /// Part 4's sparse backing file size.
    pub huge: u64,
    /// Seconds of part 4's fio job.
    pub memory_runtime: u32,
}

/// Why the comparison stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    #[error("`{program}` not found in PATH: install the Debian package `{package}` (apt-get install {package})")]
    Missing {
        program: &'static str,
        package: &'static str,
    },
    #[error("{} is not an executable file: build it with `cargo build --release -p tandemd -p drbdadm-compat`, or pass --tandemd/--drbdadm", .0.display())]
    NotBuilt(PathBuf),
    #[error("fio has no nbd engine (`fio --enghelp` does not list it): install Debian's `fio` package, which is built with libnbd")]
    NoNbdEngine,
    #[error("cannot create a scratch directory in {}: {source}", dir.display())]
    Scratch { dir: PathBuf, source: io::Error },
    #[error("cannot create the backing file {}: {source}", path.display())]
    BackingFile { path: PathBuf, source: io::Error },
    #[error("socket path {} is longer than {MAX_SOCKET_PATH} bytes: choose a shorter --dir", .0.display())]
    SocketPath(PathBuf),
    #[error(transparent)]
    Server(ServerError),
    #[error(transparent)]
    Cluster(ClusterError),
    #[error("{row} against {target}: {source}")]
    Fio {
        row: &'static str,
        target: &'static str,
        source: FioError,
    },
    #[error("nbdkit died during {what}; its log:\n{log}")]
    ServerDied { what: &'static str, log: String },
    #[error("nbdcopy: {0}")]
    Nbdcopy(String),
    #[error("{0}")]
    Unexpected(String),
    #[error("interrupted")]
    Interrupted,
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl From<ServerError> for ReplError {
    fn from(e: ServerError) -> ReplError {
        match e {
            ServerError::Interrupted => ReplError::Interrupted,
            e => ReplError::Server(e),
        }
    }
}

impl From<ClusterError> for ReplError {
    fn from(e: ClusterError) -> ReplError {
        match e {
            ClusterError::Interrupted => ReplError::Interrupted,
            e => ReplError::Cluster(e),
        }
    }
}

fn fio_error(row: &'static str, target: &'static str, source: FioError) -> ReplError {
    match source {
        FioError::Wait(WaitError::Interrupted) => ReplError::Interrupted,
        source => ReplError::Fio {
            row,
            target,
            source,
        },
    }
}

/// Part 1, one row: medians of each side.
#[derive(Debug, Clone, PartialEq)]
pub struct FioResult {
    pub row: Row,
    pub tandem: Summary,
    /// Median CPU use of alpha's and beta's tandemd during the runs, percent of one core.
    pub tandem_cpu: [f64; 2],
    pub nbdkit: Summary,
}

/// Part 2: medians over rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct ResyncResult {
    /// KiB the resync moved (the usable size: the backing file less internal metadata).
    pub kib: u64,
    pub tandem_secs: f64,
    pub tandem_mib_s: f64,
    /// alpha's and beta's tandemd CPU during the resync, percent of one core.
    pub tandem_cpu: [f64; 2],
    /// Bytes nbdcopy copied (the whole backing file).
    pub copy_bytes: u64,
    pub nbdcopy_secs: f64,
    pub nbdcopy_mib_s: f64,
    /// CPU of the source nbdkit, the destination nbdkit and nbdcopy during the copy, percent
    /// of one core.
    pub nbdcopy_cpu: [f64; 3],
}

/// One timed `nbdcopy` run.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CopyRun {
    secs: f64,
    /// Source nbdkit, destination nbdkit, nbdcopy: percent of one core.
    cpu: [f64; 3],
}

/// Part 3: medians over rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct RateResult {
    pub configured_mib_s: f64,
    pub kib: u64,
    pub secs: f64,
    pub measured_mib_s: f64,
}

/// Part 4.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryResult {
    pub volume: u64,
    /// VmRSS of alpha's and beta's tandemd after `up` and the promotion, before fio, KiB.
    pub idle_kib: [u64; 2],
    /// VmHWM (peak resident) at that point, KiB.
    pub idle_hwm_kib: [u64; 2],
    /// VmRSS after the fio job, KiB.
    pub rss_kib: [u64; 2],
    /// VmHWM (peak resident) after the fio job, KiB.
    pub hwm_kib: [u64; 2],
    /// What the fio job did, and for how many seconds.
    pub fio: Sample,
    pub runtime: u32,
    /// alpha's counters after the job: KiB written (`dw:`), activity-log transactions (`al:`)
    /// and bitmap pages written (`bm:`).
    pub dw_kib: u64,
    pub al: u64,
    pub bm: u64,
}

/// Everything one run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Results {
    pub fio: Vec<FioResult>,
    pub resync: ResyncResult,
    pub rate: RateResult,
    pub memory: MemoryResult,
}

/// The external programs, found and checked.
struct Tools {
    fio: PathBuf,
    nbdkit: PathBuf,
    nbdcopy: PathBuf,
}

impl Tools {
    fn find(cfg: &Config) -> Result<Tools, ReplError> {
        let need = |program: &'static str, package: &'static str| {
            process::find_program(program).ok_or(ReplError::Missing { program, package })
        };
        let tools = Tools {
            fio: need("fio", "fio")?,
            nbdkit: need("nbdkit", "nbdkit")?,
            nbdcopy: need("nbdcopy", "libnbd-bin")?,
        };
        for p in [&cfg.bins.tandemd, &cfg.bins.drbdadm] {
            if !process::is_executable(p) {
                return Err(ReplError::NotBuilt(p.clone()));
            }
        }
        let engines = Command::new(&tools.fio).arg("--enghelp").output()?;
        if !String::from_utf8_lossy(&engines.stdout)
            .lines()
            .any(|l| l.trim() == "nbd")
        {
            return Err(ReplError::NoNbdEngine);
        }
        Ok(tools)
    }

    fn launcher(&self) -> Launcher {
        // Only nbdkit is started here; the other servers of the `nbd` comparison are unused.
        Launcher {
            tandem_nbd: PathBuf::new(),
            nbdkit: self.nbdkit.clone(),
            qemu_nbd: PathBuf::new(),
            qemu_aio: QemuAio::Threads,
        }
    }
}

/// Runs the whole comparison, writing the header to `out` and progress to stderr.
///
/// # Errors
/// A tool is missing, a daemon, server, fio or nbdcopy failed, a state did not come, or a stop
/// signal arrived ([`ReplError::Interrupted`]). Daemons, children and files are cleaned up in
/// every case.
pub fn run(cfg: &Config, out: &mut dyn Write) -> Result<Results, ReplError> {
    let tools = Tools::find(cfg)?;
    writeln!(out, "machine: {}", machine())?;
    let v = |p: &Path| process::first_line(p, ["--version"]);
    writeln!(
        out,
        "tandemd     {} (built {})",
        cfg.bins.tandemd.display(),
        modified(&cfg.bins.tandemd)
    )?;
    for (what, path) in [
        ("tandemd", &cfg.bins.tandemd),
        ("nbdkit", &tools.nbdkit),
        ("nbdcopy", &tools.nbdcopy),
        ("fio", &tools.fio),
    ] {
        writeln!(out, "{what:<10}  {}", v(path))?;
    }
    writeln!(
        out,
        "tandem: alpha (Primary) and beta on 127.0.0.1/127.0.0.2, protocol C, internal metadata, \
         backing files in {}; nbdkit: file plugin, cache=default; nbdcopy --flush",
        cfg.dir.display()
    )?;
    writeln!(
        out,
        "fio: nbd engine over Unix sockets, {} s runtime after {} s ramp; {} round(s), medians",
        cfg.timing.runtime, cfg.timing.ramp, cfg.rounds
    )?;
    writeln!(out)?;
    out.flush()?;

    let scratch = ScratchDir::create(&cfg.dir).map_err(|source| ReplError::Scratch {
        dir: cfg.dir.clone(),
        source,
    })?;
    let longest = scratch
        .path()
        .join("memory")
        .join("run-alpha")
        .join("control.sock");
    if longest.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(ReplError::SocketPath(longest));
    }
    let dir = scratch.path();
    // Private copies, so that a rebuild during the run cannot swap the daemon between parts.
    let bin = dir.join("bin");
    std::fs::create_dir(&bin)?;
    let bins = Binaries {
        tandemd: bin.join("tandemd"),
        drbdadm: bin.join("drbdadm"),
    };
    std::fs::copy(&cfg.bins.tandemd, &bins.tandemd)?;
    std::fs::copy(&cfg.bins.drbdadm, &bins.drbdadm)?;
    let cfg = &Config {
        bins,
        ..cfg.clone()
    };
    let a = dir.join("alpha.img");
    let b = dir.join("beta.img");
    let plain = dir.join("nbdkit.img");
    for f in [&a, &b, &plain] {
        eprintln!(
            "writing the {} backing file {}",
            bytes(cfg.size),
            f.display()
        );
        fill(f, cfg.size)?;
    }

    let fio_results = part_fio(cfg, &tools, dir, [&a, &b], &plain)?;
    let resync = part_resync(cfg, &tools, dir, [&a, &b])?;
    let rate = part_rate(cfg, dir)?;
    let memory = part_memory(cfg, &tools, dir)?;
    Ok(Results {
        fio: fio_results,
        resync,
        rate,
        memory,
    })
}

/// A file's modification time, UTC, to the second.
fn modified(p: &Path) -> String {
    let Ok(t) = std::fs::metadata(p).and_then(|m| m.modified()) else {
        return "at an unknown time".to_owned();
    };
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 as a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

fn fill(path: &Path, size: u64) -> Result<(), ReplError> {
    scratch::fill_file(path, size).map_err(|source| {
        if signal::interrupted() {
            ReplError::Interrupted
        } else {
            ReplError::BackingFile {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

fn check_interrupt() -> Result<(), ReplError> {
    if signal::interrupted() {
        Err(ReplError::Interrupted)
    } else {
        Ok(())
    }
}

/// Part 1: fio through the Primary's export against nbdkit.
fn part_fio(
    cfg: &Config,
    tools: &Tools,
    dir: &Path,
    disks: [&Path; 2],
    plain: &Path,
) -> Result<Vec<FioResult>, ReplError> {
    eprintln!("part 1: fio through a connected Primary vs nbdkit");
    let mut cluster = Cluster::start(
        &cfg.bins,
        &dir.join("fio"),
        disks,
        &format!("resync-rate {UNLIMITED_RATE};"),
    )?;
    cluster.create_and_connect(SETTLE)?;
    cluster.skip_sync_and_promote(SETTLE)?;
    let uri = fio::nbd_unix_export_uri(RESOURCE, &cluster.nodes[0].nbd_socket());
    let launcher = tools.launcher();
    let total = FIO_ROWS.len() * cfg.rounds as usize * 2;
    let mut done = 0;
    let mut results = Vec::new();
    for row in &FIO_ROWS {
        let (mut t, mut t_cpu, mut n) = (Vec::new(), [Vec::new(), Vec::new()], Vec::new());
        for round in 1..=cfg.rounds {
            // tandem
            let before = cluster.cpu_times()?;
            let start = Instant::now();
            let result = fio::run_uri(&tools.fio, row, &uri, cfg.timing, dir);
            let wall = start.elapsed().as_secs_f64().max(1e-9);
            cluster.check_daemons()?;
            let sample = result.map_err(|e| fio_error(row.name, "tandem", e))?;
            let after = cluster.cpu_times()?;
            let cpu: [f64; 2] =
                std::array::from_fn(|i| 100.0 * (after[i] - before[i]).as_secs_f64() / wall);
            for d in disks {
                scratch::sync_file(d)?;
            }
            check_interrupt()?;
            done += 1;
            eprintln!(
                "[{done:>2}/{total}] {:<18} round {round}  tandem  {}  (tandemd CPU alpha {:.0}% beta {:.0}%, fio {:.0}%)",
                row.name,
                headline(row, &sample),
                cpu[0],
                cpu[1],
                sample.cpu_pct
            );
            t.push(Measure {
                sample,
                server_cpu_pct: cpu[0] + cpu[1],
            });
            t_cpu[0].push(cpu[0]);
            t_cpu[1].push(cpu[1]);

            // nbdkit
            let m = measure_nbdkit(&tools.fio, &launcher, row, plain, dir, cfg.timing)?;
            done += 1;
            eprintln!(
                "[{done:>2}/{total}] {:<18} round {round}  nbdkit  {}  (nbdkit CPU {:.0}%, fio {:.0}%)",
                row.name,
                headline(row, &m.sample),
                m.server_cpu_pct,
                m.sample.cpu_pct
            );
            n.push(m);
        }
        let (Some(tandem), Some(nbdkit), Some(ca), Some(cb)) = (
            Summary::of(&t),
            Summary::of(&n),
            median(t_cpu[0].clone()),
            median(t_cpu[1].clone()),
        ) else {
            return Err(ReplError::Unexpected("no rounds were measured".into()));
        };
        results.push(FioResult {
            row: *row,
            tandem,
            tandem_cpu: [ca, cb],
            nbdkit,
        });
    }
    Ok(results)
}

/// One fio run against a freshly started nbdkit, with its CPU use over the run.
fn measure_nbdkit(
    fio: &Path,
    launcher: &Launcher,
    row: &Row,
    file: &Path,
    dir: &Path,
    timing: Timing,
) -> Result<Measure, ReplError> {
    let mut srv = launcher.start(Server::Nbdkit, file, dir)?;
    let cpu_before = srv.cpu_time()?;
    let start = Instant::now();
    let result = fio::run(fio, row, srv.socket(), timing, dir);
    let wall = start.elapsed();
    let cpu_after = srv.cpu_time();
    if !srv.alive()? {
        return Err(ReplError::ServerDied {
            what: row.name,
            log: srv.log_tail(),
        });
    }
    let sample = result.map_err(|e| fio_error(row.name, "nbdkit", e))?;
    let cpu = cpu_after?.saturating_sub(cpu_before);
    srv.stop()?;
    scratch::sync_file(file)?;
    check_interrupt()?;
    Ok(Measure {
        sample,
        server_cpu_pct: 100.0 * cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9),
    })
}

/// One timed full sync: fresh metadata on both nodes, `primary --force` on alpha, until both
/// are Connected and UpToDate/UpToDate. Returns (KiB synced, seconds, CPU % of each daemon).
fn timed_full_sync(
    cfg: &Config,
    dir: &Path,
    disks: [&Path; 2],
    rate: &str,
    within: Duration,
) -> Result<(u64, f64, [f64; 2]), ReplError> {
    let mut cluster = Cluster::start(&cfg.bins, dir, disks, &format!("resync-rate {rate};"))?;
    cluster.create_and_connect(SETTLE)?;
    cluster.wait("Inconsistent/Inconsistent on both nodes", SETTLE, |s| {
        s.iter()
            .all(|n| n.cstate == "Connected" && n.dstates == "Inconsistent/Inconsistent")
    })?;
    let before = cluster.cpu_times()?;
    let start = Instant::now();
    cluster.drbdadm(0, &["primary", "--force", RESOURCE])?;
    cluster.wait("the full sync to finish", within, |s| {
        s.iter().all(cluster::NodeStatus::in_sync)
    })?;
    let secs = start.elapsed().as_secs_f64();
    let after = cluster.cpu_times()?;
    cluster.confirm_in_sync()?;
    let log = cluster.nodes[1].log();
    let kib = began_sync_kib(&log).ok_or_else(|| {
        ReplError::Unexpected(format!(
            "beta's log has no \"Began resync as SyncTarget (will sync N KB\" line:\n{log}"
        ))
    })?;
    if let Some(done) = log.lines().rev().find(|l| l.contains("Resync done")) {
        let msg = done.split_once("drbd0: ").map_or(done, |(_, m)| m);
        eprintln!("        beta: {msg}");
    }
    cluster.stop();
    for d in disks {
        scratch::sync_file(d)?;
    }
    check_interrupt()?;
    let cpu = std::array::from_fn(|i| 100.0 * (after[i] - before[i]).as_secs_f64() / secs);
    Ok((kib, secs, cpu))
}

/// The KiB of the last "Began resync as SyncTarget (will sync N KB" in a log.
fn began_sync_kib(log: &str) -> Option<u64> {
    const KEY: &str = "Began resync as SyncTarget (will sync ";
    let line = log.lines().rev().find(|l| l.contains(KEY))?;
    let rest = &line[line.find(KEY)? + KEY.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// Part 2: an unlimited full sync against nbdcopy between two nbdkit exports.
fn part_resync(
    cfg: &Config,
    tools: &Tools,
    dir: &Path,
    disks: [&Path; 2],
) -> Result<ResyncResult, ReplError> {
    eprintln!(
        "part 2: full sync of {} at resync-rate {UNLIMITED_RATE} vs nbdcopy between two nbdkit exports",
        bytes(cfg.size)
    );
    // Generous: a resync slower than 2 MiB/s fails the run rather than hanging it.
    let within = SETTLE + Duration::from_secs(cfg.size / (2 << 20));
    let launcher = tools.launcher();
    let (mut kib, mut t_secs, mut t_cpu) = (0, Vec::new(), [Vec::new(), Vec::new()]);
    let (mut c_secs, mut c_cpu) = (Vec::new(), [Vec::new(), Vec::new(), Vec::new()]);
    for round in 1..=cfg.rounds {
        let (k, secs, cpu) = timed_full_sync(
            cfg,
            &dir.join(format!("resync-{round}")),
            disks,
            UNLIMITED_RATE,
            within,
        )?;
        kib = k;
        eprintln!(
            "[{round}/{}] resync  {:>8.1} MiB/s  ({} KiB in {secs:.2} s; tandemd CPU alpha {:.0}% beta {:.0}%)",
            cfg.rounds,
            k as f64 / 1024.0 / secs,
            k,
            cpu[0],
            cpu[1]
        );
        t_secs.push(secs);
        t_cpu[0].push(cpu[0]);
        t_cpu[1].push(cpu[1]);

        let copy = nbdcopy(tools, &launcher, dir, disks, within)?;
        eprintln!(
            "[{round}/{}] nbdcopy {:>8.1} MiB/s  ({} in {:.2} s; CPU nbdkit source {:.0}% destination {:.0}%, nbdcopy {:.0}%)",
            cfg.rounds,
            cfg.size as f64 / f64::from(1 << 20) / copy.secs,
            bytes(cfg.size),
            copy.secs,
            copy.cpu[0],
            copy.cpu[1],
            copy.cpu[2]
        );
        c_secs.push(copy.secs);
        for (v, c) in c_cpu.iter_mut().zip(copy.cpu) {
            v.push(c);
        }
    }
    let (Some(ts), Some(cs), Some(ca), Some(cb)) = (
        median(t_secs),
        median(c_secs),
        median(t_cpu[0].clone()),
        median(t_cpu[1].clone()),
    ) else {
        return Err(ReplError::Unexpected("no rounds were measured".into()));
    };
    let nbdcopy_cpu = c_cpu.map(|v| median(v).unwrap_or(0.0));
    Ok(ResyncResult {
        kib,
        tandem_secs: ts,
        tandem_mib_s: kib as f64 / 1024.0 / ts,
        tandem_cpu: [ca, cb],
        copy_bytes: cfg.size,
        nbdcopy_secs: cs,
        nbdcopy_mib_s: cfg.size as f64 / f64::from(1 << 20) / cs,
        nbdcopy_cpu,
    })
}

/// `nbdcopy --flush` from an nbdkit export of `disks[0]` to one of `disks[1]`: the seconds it
/// took and the CPU each process used.
fn nbdcopy(
    tools: &Tools,
    launcher: &Launcher,
    dir: &Path,
    disks: [&Path; 2],
    within: Duration,
) -> Result<CopyRun, ReplError> {
    let (src_dir, dst_dir) = (dir.join("copy-src"), dir.join("copy-dst"));
    std::fs::create_dir_all(&src_dir)?;
    std::fs::create_dir_all(&dst_dir)?;
    let src = launcher.start(Server::Nbdkit, disks[0], &src_dir)?;
    let dst = launcher.start(Server::Nbdkit, disks[1], &dst_dir)?;
    let err_path = dir.join("nbdcopy.err");
    let mut cmd = Command::new(&tools.nbdcopy);
    cmd.arg("--flush")
        .arg(fio::nbd_unix_uri(src.socket()))
        .arg(fio::nbd_unix_uri(dst.socket()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path)?);
    let servers_before = [src.cpu_time()?, dst.cpu_time()?];
    let children_before = process::reaped_children_cpu_time();
    let start = Instant::now();
    let mut child = ChildGuard::spawn(&mut cmd)
        .map_err(|e| ReplError::Nbdcopy(format!("cannot start: {e}")))?;
    let status = child.wait(within).map_err(|e| match e {
        WaitError::Interrupted => ReplError::Interrupted,
        e => ReplError::Nbdcopy(e.to_string()),
    })?;
    let secs = start.elapsed().as_secs_f64();
    let copy_cpu = process::reaped_children_cpu_time().saturating_sub(children_before);
    let servers_after = [src.cpu_time()?, dst.cpu_time()?];
    if !status.success() {
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        return Err(ReplError::Nbdcopy(format!("{status}: {}", err.trim())));
    }
    let pct = |d: Duration| 100.0 * d.as_secs_f64() / secs.max(1e-9);
    let cpu = [
        pct(servers_after[0].saturating_sub(servers_before[0])),
        pct(servers_after[1].saturating_sub(servers_before[1])),
        pct(copy_cpu),
    ];
    src.stop()?;
    dst.stop()?;
    for d in disks {
        scratch::sync_file(d)?;
    }
    check_interrupt()?;
    Ok(CopyRun { secs, cpu })
}

/// Part 3: a full sync at a set rate.
fn part_rate(cfg: &Config, dir: &Path) -> Result<RateResult, ReplError> {
    // The volume that takes about `rate_secs` at the rate, plus room for internal metadata.
    let size = (cfg.rate_mib << 20) * cfg.rate_secs + (1 << 20);
    eprintln!(
        "part 3: full sync of {} at resync-rate {}M",
        bytes(size),
        cfg.rate_mib
    );
    let a = dir.join("rate-alpha.img");
    let b = dir.join("rate-beta.img");
    fill(&a, size)?;
    fill(&b, size)?;
    let within = SETTLE + Duration::from_secs(cfg.rate_secs * 3);
    let rate = format!("{}M", cfg.rate_mib);
    let (mut kib, mut secs) = (0, Vec::new());
    for round in 1..=cfg.rounds {
        let (k, s, _) = timed_full_sync(
            cfg,
            &dir.join(format!("rate-{round}")),
            [&a, &b],
            &rate,
            within,
        )?;
        kib = k;
        eprintln!(
            "[{round}/{}] resync at {rate}: {:.2} MiB/s  ({k} KiB in {s:.2} s)",
            cfg.rounds,
            k as f64 / 1024.0 / s
        );
        secs.push(s);
    }
    std::fs::remove_file(&a)?;
    std::fs::remove_file(&b)?;
    let s = median(secs).ok_or_else(|| ReplError::Unexpected("no rounds".into()))?;
    Ok(RateResult {
        configured_mib_s: cfg.rate_mib as f64,
        kib,
        secs: s,
        measured_mib_s: kib as f64 / 1024.0 / s,
    })
}

/// Part 4: resident memory with huge sparse backing files.
fn part_memory(cfg: &Config, tools: &Tools, dir: &Path) -> Result<MemoryResult, ReplError> {
    eprintln!(
        "part 4: tandemd memory with {} sparse backing files",
        bytes(cfg.huge)
    );
    let a = dir.join("huge-alpha.img");
    let b = dir.join("huge-beta.img");
    for f in [&a, &b] {
        std::fs::File::create_new(f)
            .and_then(|h| h.set_len(cfg.huge))
            .map_err(|source| ReplError::BackingFile {
                path: f.clone(),
                source,
            })?;
    }
    let result = {
        let mut cluster = Cluster::start(
            &cfg.bins,
            &dir.join("memory"),
            [&a, &b],
            &format!("resync-rate {UNLIMITED_RATE};"),
        )?;
        cluster.create_and_connect(SETTLE * 2)?;
        cluster.skip_sync_and_promote(SETTLE)?;
        let idle = rss(&cluster)?;
        let uri = fio::nbd_unix_export_uri(RESOURCE, &cluster.nodes[0].nbd_socket());
        let timing = Timing {
            runtime: cfg.memory_runtime,
            ramp: 0,
        };
        let result = fio::run_uri(&tools.fio, &MEMORY_ROW, &uri, timing, dir);
        cluster.check_daemons()?;
        let sample = result.map_err(|e| fio_error(MEMORY_ROW.name, "tandem", e))?;
        let after = rss(&cluster)?;
        let counters = cluster.live_status(0)?;
        eprintln!(
            "        {}: {} ; tandemd VmRSS alpha {} KiB, beta {} KiB (peak {} / {} KiB)",
            MEMORY_ROW.name,
            headline(&MEMORY_ROW, &sample),
            after[0].0,
            after[1].0,
            after[0].1,
            after[1].1
        );
        MemoryResult {
            volume: cfg.huge,
            idle_kib: [idle[0].0, idle[1].0],
            idle_hwm_kib: [idle[0].1, idle[1].1],
            rss_kib: [after[0].0, after[1].0],
            hwm_kib: [after[0].1, after[1].1],
            fio: sample,
            runtime: cfg.memory_runtime,
            dw_kib: counters.dw_kib,
            al: counters.al,
            bm: counters.bm,
        }
    };
    std::fs::remove_file(&a)?;
    std::fs::remove_file(&b)?;
    Ok(result)
}

fn rss(cluster: &Cluster) -> Result<[(u64, u64); 2], ReplError> {
    let one = |i: usize| -> Result<(u64, u64), ReplError> {
        let n = &cluster.nodes[i];
        let pid = n
            .lock_pid()
            .ok_or_else(|| ReplError::Unexpected(format!("{}: no pid in tandemd.lock", n.name)))?;
        Ok(cluster::rss_kib(pid)?)
    };
    Ok([one(0)?, one(1)?])
}

fn headline(row: &Row, s: &Sample) -> String {
    match row.metric {
        Metric::Bandwidth => format!("{:>8.0} MiB/s", s.bw_bytes / f64::from(1 << 20)),
        Metric::Iops => format!("{:>8.0} IOPS, p50 {:.0} µs", s.iops, s.lat_p50_us),
    }
}

fn verdict(met: bool) -> String {
    if met { "yes" } else { "MISSED" }.to_owned()
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The targets that were missed, one line each.
pub fn missed(r: &Results) -> Vec<String> {
    let mut m = Vec::new();
    for f in &r.fio {
        match f.row.metric {
            Metric::Bandwidth => {
                let ratio = f.tandem.mib_s / f.nbdkit.mib_s.max(1e-9);
                if ratio < SEQ_WRITE_MIN_RATIO {
                    m.push(format!(
                        "{}: {ratio:.2}x nbdkit, target >= {SEQ_WRITE_MIN_RATIO}x",
                        f.row.name
                    ));
                }
            }
            Metric::Iops => {
                let ratio = f.tandem.lat_p50_us / f.nbdkit.lat_p50_us.max(1e-9);
                if ratio > RAND_WRITE_MAX_P50_RATIO {
                    m.push(format!(
                        "{}: p50 {ratio:.2}x nbdkit's, target <= {RAND_WRITE_MAX_P50_RATIO}x",
                        f.row.name
                    ));
                }
            }
        }
    }
    let resync = r.resync.tandem_mib_s / r.resync.nbdcopy_mib_s.max(1e-9);
    if resync < RESYNC_MIN_RATIO {
        m.push(format!(
            "unlimited resync: {resync:.2}x nbdcopy, target >= {RESYNC_MIN_RATIO}x"
        ));
    }
    let rate = r.rate.measured_mib_s / r.rate.configured_mib_s;
    if (rate - 1.0).abs() > RATE_TOLERANCE {
        m.push(format!(
            "resync-rate adherence: {rate:.2}x configured, target within {:.0}%",
            RATE_TOLERANCE * 100.0
        ));
    }
    let worst = r.memory.rss_kib.iter().max().copied().unwrap_or(0);
    if worst >= RSS_MAX_KIB {
        m.push(format!(
            "tandemd RSS with a {} volume: {}, target < {}",
            bytes(r.memory.volume),
            mib(worst),
            mib(RSS_MAX_KIB)
        ));
    }
    m
}

/// The main table: each measure, tandem's figure, the peer's, the ratio, the target.
pub fn table(r: &Results) -> String {
    let mut rows = vec![vec![
        "measure".to_owned(),
        "tandem".to_owned(),
        "peer".to_owned(),
        "ratio".to_owned(),
        "target".to_owned(),
        "met".to_owned(),
    ]];
    for f in &r.fio {
        match f.row.metric {
            Metric::Bandwidth => {
                let ratio = f.tandem.mib_s / f.nbdkit.mib_s.max(1e-9);
                rows.push(vec![
                    f.row.name.to_owned(),
                    format!("{:.0} MiB/s", f.tandem.mib_s),
                    format!("nbdkit {:.0} MiB/s", f.nbdkit.mib_s),
                    format!("{ratio:.2}x"),
                    format!(">= {SEQ_WRITE_MIN_RATIO:.2}x"),
                    verdict(ratio >= SEQ_WRITE_MIN_RATIO),
                ]);
            }
            Metric::Iops => {
                let ratio = f.tandem.lat_p50_us / f.nbdkit.lat_p50_us.max(1e-9);
                rows.push(vec![
                    f.row.name.to_owned(),
                    format!(
                        "{:.0} IOPS, p50 {:.0} µs",
                        f.tandem.iops, f.tandem.lat_p50_us
                    ),
                    format!(
                        "nbdkit {:.0} IOPS, p50 {:.0} µs",
                        f.nbdkit.iops, f.nbdkit.lat_p50_us
                    ),
                    format!(
                        "p50 {ratio:.2}x, IOPS {:.2}x",
                        f.tandem.iops / f.nbdkit.iops.max(1e-9)
                    ),
                    format!("p50 <= {RAND_WRITE_MAX_P50_RATIO:.0}x"),
                    verdict(ratio <= RAND_WRITE_MAX_P50_RATIO),
                ]);
            }
        }
    }
    let s = &r.resync;
    let ratio = s.tandem_mib_s / s.nbdcopy_mib_s.max(1e-9);
    rows.push(vec![
        format!("full sync, resync-rate {UNLIMITED_RATE}"),
        format!("{:.0} MiB/s ({:.2} s)", s.tandem_mib_s, s.tandem_secs),
        format!(
            "nbdcopy --flush {:.0} MiB/s ({:.2} s)",
            s.nbdcopy_mib_s, s.nbdcopy_secs
        ),
        format!("{ratio:.2}x"),
        format!(">= {RESYNC_MIN_RATIO:.0}x"),
        verdict(ratio >= RESYNC_MIN_RATIO),
    ]);
    let q = &r.rate;
    let ratio = q.measured_mib_s / q.configured_mib_s;
    rows.push(vec![
        format!("full sync, resync-rate {:.0}M", q.configured_mib_s),
        format!("{:.2} MiB/s ({:.2} s)", q.measured_mib_s, q.secs),
        format!("configured {:.0} MiB/s", q.configured_mib_s),
        format!("{ratio:.3}x"),
        format!("{:.2}x-{:.2}x", 1.0 - RATE_TOLERANCE, 1.0 + RATE_TOLERANCE),
        verdict((ratio - 1.0).abs() <= RATE_TOLERANCE),
    ]);
    let m = &r.memory;
    let worst = m.rss_kib.iter().max().copied().unwrap_or(0);
    rows.push(vec![
        format!("tandemd VmRSS, {} sparse", bytes(m.volume)),
        format!("alpha {}, beta {}", mib(m.rss_kib[0]), mib(m.rss_kib[1])),
        format!("peak {} / {}", mib(m.hwm_kib[0]), mib(m.hwm_kib[1])),
        "-".to_owned(),
        format!("< {}", mib(RSS_MAX_KIB)),
        verdict(worst < RSS_MAX_KIB),
    ]);
    layout(&rows)
}

/// Where the time went: CPU use of each side and the sizes involved.
pub fn details(r: &Results) -> String {
    let mut rows = vec![vec![
        "CPU % of one core".to_owned(),
        "tandemd alpha / beta".to_owned(),
        "peer server".to_owned(),
        "fio (tandem / peer)".to_owned(),
    ]];
    for f in &r.fio {
        rows.push(vec![
            f.row.name.to_owned(),
            format!("{:.0} / {:.0}", f.tandem_cpu[0], f.tandem_cpu[1]),
            format!("nbdkit {:.0}", f.nbdkit.server_cpu_pct),
            format!("{:.0} / {:.0}", f.tandem.fio_cpu_pct, f.nbdkit.fio_cpu_pct),
        ]);
    }
    rows.push(vec![
        format!("full sync, resync-rate {UNLIMITED_RATE}"),
        format!(
            "{:.0} / {:.0}",
            r.resync.tandem_cpu[0], r.resync.tandem_cpu[1]
        ),
        format!(
            "nbdkit {:.0} + {:.0}, nbdcopy {:.0}",
            r.resync.nbdcopy_cpu[0], r.resync.nbdcopy_cpu[1], r.resync.nbdcopy_cpu[2]
        ),
        "-".to_owned(),
    ]);
    let mut out = layout(&rows);
    out.push_str(&format!(
        "\nfull sync: tandem moved {} KiB (the backing file less internal metadata), nbdcopy {}; \
         resync-rate {:.0}M moved {} KiB\n",
        r.resync.kib,
        bytes(r.resync.copy_bytes),
        r.rate.configured_mib_s,
        r.rate.kib
    ));
    out.push_str(&format!(
        "memory: VmRSS after up+primary alpha {} / beta {} (peak so far {} / {}); after {} s of {} ({:.0} IOPS) alpha {} / beta {}\n",
        mib(r.memory.idle_kib[0]),
        mib(r.memory.idle_kib[1]),
        mib(r.memory.idle_hwm_kib[0]),
        mib(r.memory.idle_hwm_kib[1]),
        r.memory.runtime,
        MEMORY_ROW.name,
        r.memory.fio.iops,
        mib(r.memory.rss_kib[0]),
        mib(r.memory.rss_kib[1])
    ));
    out.push_str(&format!(
        "memory: during that job alpha wrote {} 4 KiB blocks with {} activity-log transactions and {} bitmap page writes\n",
        r.memory.dw_kib / 4,
        r.memory.al,
        r.memory.bm
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_415), (2025, 11, 23));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn finds_the_synced_amount() {
        let log = "x INFO tandemd::resource: block drbd0: Began resync as SyncTarget (will sync 1048508 KB [262127 bits set]).\n";
        assert_eq!(began_sync_kib(log), Some(1048508));
        assert_eq!(began_sync_kib("nothing"), None);
    }
}
