//! fio through its `nbd` engine: the rows of the comparison, the command line for one run, and
//! the parsing of fio's JSON report (external input: every field is checked, nothing unwrapped).

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use serde::Deserialize;

use crate::process::{ChildGuard, WaitError};

/// Extra time a fio run may take beyond its runtime and ramp before it is killed.
const FIO_SLACK: Duration = Duration::from_secs(60);

/// What a row reports: bandwidth for sequential rows, IOPS and latency for random ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Bandwidth,
    Iops,
}

/// One row of the comparison: an access pattern, a block size and a queue depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// The label in the table.
    pub name: &'static str,
    /// fio's `rw=` value.
    pub rw: &'static str,
    /// Bytes per request.
    pub block_size: u32,
    /// Requests in flight.
    pub iodepth: u32,
    /// What the table shows for this row.
    pub metric: Metric,
}

impl Row {
    /// Whether the row writes (and so is read from fio's `write` section).
    pub fn writes(&self) -> bool {
        self.rw.contains("write")
    }
}

/// The rows every run measures, in order.
pub const ROWS: [Row; 5] = [
    Row {
        name: "seq write 1M QD8",
        rw: "write",
        block_size: 1 << 20,
        iodepth: 8,
        metric: Metric::Bandwidth,
    },
    Row {
        name: "seq read 1M QD8",
        rw: "read",
        block_size: 1 << 20,
        iodepth: 8,
        metric: Metric::Bandwidth,
    },
    Row {
        name: "rand write 4k QD1",
        rw: "randwrite",
        block_size: 4096,
        iodepth: 1,
        metric: Metric::Iops,
    },
    Row {
        name: "rand write 4k QD32",
        rw: "randwrite",
        block_size: 4096,
        iodepth: 32,
        metric: Metric::Iops,
    },
    Row {
        name: "rand read 4k QD32",
        rw: "randread",
        block_size: 4096,
        iodepth: 32,
        metric: Metric::Iops,
    },
];

/// What one fio run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Bytes per second.
    pub bw_bytes: f64,
    /// Requests per second.
    pub iops: f64,
    /// Median total latency (submission to completion), microseconds.
    pub lat_p50_us: f64,
    /// fio's own CPU use (user + system), percent of one core.
    pub cpu_pct: f64,
}

/// Why a fio run produced no sample.
#[derive(Debug, thiserror::Error)]
pub enum FioError {
    #[error("cannot start fio: {0}")]
    Spawn(io::Error),
    #[error("fio: {0}")]
    Wait(#[from] WaitError),
    #[error("fio output: {0}")]
    Io(#[from] io::Error),
    #[error("fio failed ({status}): {stderr}")]
    Failed { status: ExitStatus, stderr: String },
    #[error("fio printed no JSON report; it printed: {0}")]
    NoJson(String),
    #[error("fio's JSON report does not parse: {0}")]
    Json(#[from] serde_json::Error),
    #[error("fio's JSON report has no job")]
    NoJob,
    #[error("fio's job reported error {0}")]
    JobError(i64),
    #[error("fio's JSON report has no {0} I/O")]
    NoIo(&'static str),
    #[error("fio's JSON report has no median latency")]
    NoLatency,
}

/// How long each fio run lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Measured seconds.
    pub runtime: u32,
    /// Seconds of warm-up before measuring.
    pub ramp: u32,
}

/// `nbd+unix:///?socket=PATH` with the path percent-encoded where needed.
pub fn nbd_unix_uri(socket: &Path) -> String {
    nbd_unix_export_uri("", socket)
}

/// `nbd+unix:///EXPORT?socket=PATH`, the export name and the path percent-encoded where needed.
pub fn nbd_unix_export_uri(export: &str, socket: &Path) -> String {
    let mut uri = String::from("nbd+unix:///");
    percent_encode(&mut uri, export.as_bytes());
    uri.push_str("?socket=");
    percent_encode(&mut uri, socket.as_os_str().as_bytes());
    uri
}

fn percent_encode(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// fio's arguments for one run of `row` against the server on `socket` (default export).
pub fn args(row: &Row, socket: &Path, timing: Timing) -> Vec<String> {
    args_uri(row, &nbd_unix_uri(socket), timing)
}

/// fio's arguments for one run of `row` against the NBD server at `uri`.
pub fn args_uri(row: &Row, uri: &str, timing: Timing) -> Vec<String> {
    let mut a = vec![
        format!("--name={}", row.name.replace(' ', "-")),
        "--ioengine=nbd".to_owned(),
        format!("--uri={uri}"),
        format!("--rw={}", row.rw),
        format!("--bs={}", row.block_size),
        format!("--iodepth={}", row.iodepth),
        "--time_based".to_owned(),
        format!("--runtime={}", timing.runtime),
        // Random offsets without a coverage map: less fio CPU on a machine it shares.
        "--norandommap".to_owned(),
        "--lat_percentiles=1".to_owned(),
        "--output-format=json".to_owned(),
    ];
    if timing.ramp > 0 {
        a.push(format!("--ramp_time={}", timing.ramp));
    }
    a
}

/// Runs fio for `row` against `socket`, keeping its output in `dir`, and parses the result.
///
/// # Errors
/// fio could not run, failed, overran its time, was interrupted, or printed no usable report.
pub fn run(
    fio: &Path,
    row: &Row,
    socket: &Path,
    timing: Timing,
    dir: &Path,
) -> Result<Sample, FioError> {
    run_uri(fio, row, &nbd_unix_uri(socket), timing, dir)
}

/// Runs fio for `row` against the NBD server at `uri`, keeping its output in `dir`, and parses
/// the result.
///
/// # Errors
/// As [`run`].
pub fn run_uri(
    fio: &Path,
    row: &Row,
    uri: &str,
    timing: Timing,
    dir: &Path,
) -> Result<Sample, FioError> {
    let out_path = dir.join("fio.out");
    let err_path = dir.join("fio.err");
    let mut cmd = Command::new(fio);
    cmd.args(args_uri(row, uri, timing))
        .stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?);
    let mut child = ChildGuard::spawn(&mut cmd).map_err(FioError::Spawn)?;
    let limit = Duration::from_secs(u64::from(timing.runtime + timing.ramp)) + FIO_SLACK;
    let status = child.wait(limit)?;
    let stdout = std::fs::read_to_string(&out_path)?;
    if !status.success() {
        return Err(FioError::Failed {
            status,
            stderr: excerpt(&read_lossy(&err_path)),
        });
    }
    parse(&stdout, row.writes())
}

fn read_lossy(p: &PathBuf) -> String {
    String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()
}

fn excerpt(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(500) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

#[derive(Deserialize)]
struct Report {
    jobs: Vec<Job>,
}

#[derive(Deserialize)]
struct Job {
    #[serde(default)]
    error: i64,
    read: Direction,
    write: Direction,
    usr_cpu: f64,
    sys_cpu: f64,
}

#[derive(Deserialize)]
struct Direction {
    bw_bytes: f64,
    iops: f64,
    total_ios: u64,
    lat_ns: Latency,
    clat_ns: Latency,
}

#[derive(Deserialize)]
struct Latency {
    #[serde(default)]
    percentile: BTreeMap<String, f64>,
}

impl Latency {
    fn median(&self) -> Option<f64> {
        self.percentile.get("50.000000").copied()
    }
}

/// Parses fio's `--output-format=json` stdout for a job that reads (`writes == false`) or
/// writes. Text before the JSON object (the nbd engine prints "fio: connected to NBD server")
/// is skipped.
///
/// # Errors
/// No JSON object, malformed JSON, no job, a job error, no I/O in the expected direction, or no
/// median latency.
pub fn parse(stdout: &str, writes: bool) -> Result<Sample, FioError> {
    let start = if stdout.starts_with('{') {
        Some(0)
    } else {
        stdout.find("\n{").map(|i| i + 1)
    };
    let Some(start) = start else {
        return Err(FioError::NoJson(excerpt(stdout)));
    };
    let report: Report = serde_json::from_str(&stdout[start..])?;
    let job = report.jobs.first().ok_or(FioError::NoJob)?;
    if job.error != 0 {
        return Err(FioError::JobError(job.error));
    }
    let (dir, name) = if writes {
        (&job.write, "write")
    } else {
        (&job.read, "read")
    };
    if dir.total_ios == 0 {
        return Err(FioError::NoIo(name));
    }
    // Total latency when fio was asked for its percentiles, else completion latency.
    let lat_ns = dir
        .lat_ns
        .median()
        .or_else(|| dir.clat_ns.median())
        .ok_or(FioError::NoLatency)?;
    Ok(Sample {
        bw_bytes: dir.bw_bytes,
        iops: dir.iops,
        lat_p50_us: lat_ns / 1000.0,
        cpu_pct: job.usr_cpu + job.sys_cpu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from a real fio 3.33 run of the nbd engine (rand read 4k QD32).
    const SAMPLE: &str = r#"fio: connected to NBD server
{
  "fio version" : "fio-3.33",
  "timestamp" : 1795429096,
  "jobs" : [
    {
      "jobname" : "x",
      "groupid" : 0,
      "error" : 0,
      "job options" : { "ioengine" : "nbd", "rw" : "randread", "bs" : "4k", "iodepth" : "32" },
      "read" : {
        "io_bytes" : 179847168, "bw_bytes" : 89878644, "bw" : 87772, "iops" : 21943.028486,
        "runtime" : 2001, "total_ios" : 43908,
        "slat_ns" : { "min" : 1063, "max" : 91034, "mean" : 4311.2, "stddev" : 2011.0, "N" : 43908 },
        "clat_ns" : { "min" : 90112, "max" : 5210112, "mean" : 1452000.1, "stddev" : 300000.0,
                      "N" : 43908, "percentile" : { "1.000000" : 700416, "50.000000" : 1007616 } },
        "lat_ns" : { "min" : 95000, "max" : 5220000, "mean" : 1456311.3, "stddev" : 300000.0,
                     "N" : 43908, "percentile" : { "1.000000" : 704512, "50.000000" : 1011712,
                     "99.990000" : 4882432 } }
      },
      "write" : {
        "io_bytes" : 0, "bw_bytes" : 0, "bw" : 0, "iops" : 0.000000, "runtime" : 0,
        "total_ios" : 0,
        "slat_ns" : { "min" : 0, "max" : 0, "mean" : 0.0, "stddev" : 0.0, "N" : 0 },
        "clat_ns" : { "min" : 0, "max" : 0, "mean" : 0.0, "stddev" : 0.0, "N" : 0 },
        "lat_ns" : { "min" : 0, "max" : 0, "mean" : 0.0, "stddev" : 0.0, "N" : 0 }
      },
      "usr_cpu" : 8.3,
      "sys_cpu" : 31.55
    }
  ]
}
"#;

    #[test]
    fn parses_read_job() {
        let s = parse(SAMPLE, false).expect("parses");
        assert_eq!(s.bw_bytes, 89878644.0);
        assert_eq!(s.iops, 21943.028486);
        assert_eq!(s.lat_p50_us, 1011.712);
        assert!((s.cpu_pct - 39.85).abs() < 1e-9);
    }

    #[test]
    fn wrong_direction_is_an_error() {
        assert!(matches!(parse(SAMPLE, true), Err(FioError::NoIo("write"))));
    }

    #[test]
    fn falls_back_to_completion_latency() {
        let no_lat_pct = SAMPLE.replace(r#""50.000000" : 1011712,"#, "");
        let s = parse(&no_lat_pct, false).expect("parses");
        assert_eq!(s.lat_p50_us, 1007.616);
    }

    #[test]
    fn bad_output_is_an_error_not_a_panic() {
        assert!(matches!(parse("", false), Err(FioError::NoJson(_))));
        assert!(matches!(
            parse("fio: engine nbd not loadable\n", false),
            Err(FioError::NoJson(_))
        ));
        assert!(matches!(
            parse("{\"jobs\": [", false),
            Err(FioError::Json(_))
        ));
        assert!(matches!(
            parse("{\"jobs\": []}", false),
            Err(FioError::NoJob)
        ));
        let failed = SAMPLE.replace(r#""error" : 0"#, r#""error" : 5"#);
        assert!(matches!(parse(&failed, false), Err(FioError::JobError(5))));
        let bad_type = SAMPLE.replace("21943.028486", "\"fast\"");
        assert!(matches!(parse(&bad_type, false), Err(FioError::Json(_))));
    }

    #[test]
    fn uri_escapes_odd_socket_paths() {
        assert_eq!(
            nbd_unix_uri(Path::new("/var/tmp/a b/x&y.sock")),
            "nbd+unix:///?socket=/var/tmp/a%20b/x%26y.sock"
        );
        assert_eq!(
            nbd_unix_export_uri("r0", Path::new("/run/t/nbd.sock")),
            "nbd+unix:///r0?socket=/run/t/nbd.sock"
        );
        assert_eq!(
            nbd_unix_export_uri("a b?", Path::new("/s")),
            "nbd+unix:///a%20b%3F?socket=/s"
        );
    }

    #[test]
    fn args_name_the_row() {
        let a = args(
            &ROWS[3],
            Path::new("/s"),
            Timing {
                runtime: 10,
                ramp: 2,
            },
        );
        assert!(a.contains(&"--name=rand-write-4k-QD32".to_owned()));
        assert!(a.contains(&"--rw=randwrite".to_owned()));
        assert!(a.contains(&"--iodepth=32".to_owned()));
        assert!(a.contains(&"--ramp_time=2".to_owned()));
    }
}
