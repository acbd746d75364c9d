//! The `nbd` comparison: one backing file, tandem-nbd against nbdkit and qemu-nbd, every fio row
//! run against each server in turn (A B C, repeated for each round), medians per cell.
//!
//! Each fio run gets a freshly started server, and dirty pages are written back between runs, so
//! that no run inherits another's state. Everything lives in a scratch directory that is removed,
//! with every child stopped, on success, error and Ctrl-C alike.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::fio::{self, FioError, Metric, Row, Timing, ROWS};
use crate::process::{self, WaitError};
use crate::report::{Measure, RowResult, Summary};
use crate::scratch::{self, ScratchDir};
use crate::server::{Launcher, QemuAio, Server, ServerError};
use crate::signal;

/// Longest path a Unix socket address holds (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;
/// A server slower than this to exit after SIGTERM gets a note.
const SLOW_EXIT: Duration = Duration::from_secs(1);

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The `tandem-nbd` binary to measure.
    pub tandem_nbd: PathBuf,
    /// Where the scratch directory (backing file, sockets, logs) is created.
    pub dir: PathBuf,
    /// Backing file size in bytes.
    pub size: u64,
    /// Length of each fio run.
    pub timing: Timing,
    /// How many times each (row, server) cell is measured.
    pub rounds: u32,
}

/// Why the comparison stopped.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("`{program}` not found in PATH: install the Debian package `{package}` (apt-get install {package})")]
    Missing {
        program: &'static str,
        package: &'static str,
    },
    #[error("{} is not an executable file: build it with `cargo build --release -p nbd-server`, or pass --tandem-nbd PATH", .0.display())]
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
    #[error("{row} against {server}: {source}")]
    Fio {
        row: &'static str,
        server: Server,
        source: FioError,
    },
    #[error("{server} died during {row}; its log:\n{log}")]
    ServerDied {
        row: &'static str,
        server: Server,
        log: String,
    },
    #[error("interrupted")]
    Interrupted,
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl From<ServerError> for BenchError {
    fn from(e: ServerError) -> BenchError {
        match e {
            ServerError::Interrupted => BenchError::Interrupted,
            e => BenchError::Server(e),
        }
    }
}

/// The external programs, found and checked.
struct Tools {
    fio: PathBuf,
    nbdkit: PathBuf,
    qemu_nbd: PathBuf,
    tandem_nbd: PathBuf,
}

impl Tools {
    fn find(cfg: &Config) -> Result<Tools, BenchError> {
        let need = |program: &'static str, package: &'static str| {
            process::find_program(program).ok_or(BenchError::Missing { program, package })
        };
        let tools = Tools {
            fio: need("fio", "fio")?,
            nbdkit: need("nbdkit", "nbdkit")?,
            qemu_nbd: need("qemu-nbd", "qemu-utils")?,
            tandem_nbd: cfg.tandem_nbd.clone(),
        };
        if !process::is_executable(&tools.tandem_nbd) {
            return Err(BenchError::NotBuilt(tools.tandem_nbd));
        }
        let engines = Command::new(&tools.fio).arg("--enghelp").output()?;
        if !String::from_utf8_lossy(&engines.stdout)
            .lines()
            .any(|l| l.trim() == "nbd")
        {
            return Err(BenchError::NoNbdEngine);
        }
        Ok(tools)
    }

    /// `(what, version)` lines for the header.
    fn versions(&self) -> Vec<(String, String)> {
        let v = |p: &Path| process::first_line(p, ["--version"]);
        vec![
            ("tandem-nbd".into(), v(&self.tandem_nbd)),
            ("nbdkit".into(), v(&self.nbdkit)),
            ("qemu-nbd".into(), v(&self.qemu_nbd)),
            ("fio".into(), v(&self.fio)),
        ]
    }
}

/// Runs the whole comparison, writing the header to `out` and progress to stderr; returns the
/// medians per row and server.
///
/// # Errors
/// A tool is missing, a server or fio failed, or a stop signal arrived
/// ([`BenchError::Interrupted`]). Children and files are cleaned up in every case.
pub fn run(cfg: &Config, out: &mut dyn Write) -> Result<Vec<RowResult>, BenchError> {
    let tools = Tools::find(cfg)?;
    writeln!(out, "machine: {}", machine())?;
    for (what, version) in tools.versions() {
        writeln!(out, "{what:<10}  {version}")?;
    }

    let scratch = ScratchDir::create(&cfg.dir).map_err(|source| BenchError::Scratch {
        dir: cfg.dir.clone(),
        source,
    })?;
    let longest = scratch.path().join("tandem-nbd.sock");
    if longest.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(BenchError::SocketPath(longest));
    }
    let file = scratch.path().join("disk.img");
    eprintln!(
        "writing the {} backing file {}",
        bytes(cfg.size),
        file.display()
    );
    scratch::fill_file(&file, cfg.size).map_err(|source| {
        if signal::interrupted() {
            BenchError::Interrupted
        } else {
            BenchError::BackingFile {
                path: file.clone(),
                source,
            }
        }
    })?;

    let mut launcher = Launcher {
        tandem_nbd: tools.tandem_nbd.clone(),
        nbdkit: tools.nbdkit.clone(),
        qemu_nbd: tools.qemu_nbd.clone(),
        qemu_aio: QemuAio::IoUring,
    };
    launcher.qemu_aio = qemu_aio(&launcher, &file, scratch.path())?;
    let tandem_engine = tandem_engine(&launcher, &file, scratch.path())?;

    writeln!(
        out,
        "backing file: {} in {} (written, then synced); fio: nbd engine over a Unix socket, \
         {} s runtime after {} s ramp, {} round(s), median per cell",
        bytes(cfg.size),
        cfg.dir.display(),
        cfg.timing.runtime,
        cfg.timing.ramp,
        cfg.rounds
    )?;
    for s in Server::ALL {
        write!(out, "{:<10}  {}", s.label(), launcher.describe(s))?;
        if s == Server::Tandem {
            write!(out, "; it chose: {tandem_engine}")?;
        }
        writeln!(out)?;
    }
    writeln!(out)?;
    out.flush()?;

    let total = ROWS.len() * cfg.rounds as usize * Server::ALL.len();
    let mut done = 0;
    let mut results = Vec::with_capacity(ROWS.len());
    for row in &ROWS {
        let mut measures: [Vec<Measure>; 3] = Default::default();
        for round in 1..=cfg.rounds {
            for (i, &server) in Server::ALL.iter().enumerate() {
                let m = measure(
                    &tools.fio,
                    &launcher,
                    server,
                    row,
                    &file,
                    scratch.path(),
                    cfg.timing,
                )?;
                done += 1;
                eprintln!(
                    "[{done:>2}/{total}] {:<18} round {round}  {:<10}  {}  (server CPU {:.0}%, fio CPU {:.0}%)",
                    row.name,
                    server.label(),
                    headline(row, &m),
                    m.server_cpu_pct,
                    m.sample.cpu_pct
                );
                measures[i].push(m);
            }
        }
        let cells = measures.map(|m| Summary::of(&m));
        let [Some(a), Some(b), Some(c)] = cells else {
            // Unreachable with rounds >= 1; an empty cell would mean no run happened.
            continue;
        };
        results.push(RowResult {
            row: *row,
            cells: [a, b, c],
        });
    }
    Ok(results)
}

/// One fio run against a freshly started server, with the server's CPU use over the run.
fn measure(
    fio: &Path,
    launcher: &Launcher,
    server: Server,
    row: &Row,
    file: &Path,
    dir: &Path,
    timing: Timing,
) -> Result<Measure, BenchError> {
    let mut srv = launcher.start(server, file, dir)?;
    let cpu_before = srv.cpu_time()?;
    let start = Instant::now();
    let result = fio::run(fio, row, srv.socket(), timing, dir);
    let wall = start.elapsed();
    let cpu_after = srv.cpu_time();
    if !srv.alive()? {
        return Err(BenchError::ServerDied {
            row: row.name,
            server,
            log: srv.log_tail(),
        });
    }
    let sample = result.map_err(|source| match source {
        FioError::Wait(WaitError::Interrupted) => BenchError::Interrupted,
        source => BenchError::Fio {
            row: row.name,
            server,
            source,
        },
    })?;
    let cpu = cpu_after?.saturating_sub(cpu_before);
    let stopped = srv.stop()?;
    if stopped.killed {
        eprintln!(
            "note: {server} ignored SIGTERM for {:?} and was killed",
            stopped.took
        );
    } else if stopped.took > SLOW_EXIT {
        eprintln!(
            "note: {server} took {:?} to exit after SIGTERM",
            stopped.took
        );
    }
    scratch::sync_file(file)?;
    if signal::interrupted() {
        return Err(BenchError::Interrupted);
    }
    Ok(Measure {
        sample,
        server_cpu_pct: 100.0 * cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9),
    })
}

/// io_uring if this qemu-nbd was built with it and the kernel allows it, else threads.
fn qemu_aio(launcher: &Launcher, file: &Path, dir: &Path) -> Result<QemuAio, BenchError> {
    match launcher.start(Server::QemuNbd, file, dir) {
        Ok(srv) => {
            srv.stop()?;
            Ok(QemuAio::IoUring)
        }
        Err(ServerError::Exited { .. }) => {
            eprintln!("note: qemu-nbd refused --aio=io_uring; using --aio=threads");
            Ok(QemuAio::Threads)
        }
        Err(e) => Err(e.into()),
    }
}

/// The disk I/O path tandem-nbd logs at startup ("disk I/O: io_uring").
fn tandem_engine(launcher: &Launcher, file: &Path, dir: &Path) -> Result<String, BenchError> {
    let srv = launcher.start(Server::Tandem, file, dir)?;
    let log = srv.log_tail();
    srv.stop()?;
    Ok(log
        .lines()
        .find_map(|l| l.split_once("disk I/O: "))
        .map_or_else(|| "(not logged)".to_owned(), |(_, e)| e.trim().to_owned()))
}

fn headline(row: &Row, m: &Measure) -> String {
    match row.metric {
        Metric::Bandwidth => format!("{:>8.0} MiB/s", m.sample.bw_bytes / f64::from(1 << 20)),
        Metric::Iops => format!(
            "{:>8.0} IOPS, p50 {:.0} µs",
            m.sample.iops, m.sample.lat_p50_us
        ),
    }
}

/// CPU count, CPU model and kernel, for the header.
pub fn machine() -> String {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned());
    format!("nproc {nproc}, {model}, Linux {kernel} (fio shares these CPUs with the server)")
}

/// `n` bytes in the largest binary unit that divides it.
pub fn bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    UNITS
        .iter()
        .find(|(_, u)| n >= *u && n.is_multiple_of(*u))
        .map_or_else(|| format!("{n} B"), |(name, u)| format!("{} {name}", n / u))
}

/// Parses a size such as `1G`, `1GiB`, `512M`, `64MiB`, `4096k` or plain bytes (binary units).
///
/// # Errors
/// Not a number with an optional K/M/G/T suffix, or too large.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 1G or 512M"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" | "kb" => 10,
        "m" | "mib" | "mb" => 20,
        "g" | "gib" | "gb" => 30,
        "t" | "tib" | "tb" => 40,
        _ => return Err(format!("`{s}`: unknown unit (use K, M, G or T)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("64 MiB"), Ok(64 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(bytes(1 << 30), "1 GiB");
        assert_eq!(bytes(64 << 20), "64 MiB");
        assert_eq!(bytes(1000), "1000 B");
    }
}
