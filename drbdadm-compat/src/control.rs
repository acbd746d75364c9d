//! The control protocol between `drbdadm` and `tandemd`, and a small blocking client.
//!
//! One JSON object per line over `<run-dir>/control.sock`: the client writes a [`Request`], the
//! daemon answers with one [`Response`], and the connection may carry further requests. Both
//! carry [`VERSION`]; a daemon that speaks another version answers with an error naming both,
//! and the client checks the version of every answer before reading the rest of it.
//!
//! ```no_run
//! use drbdadm_compat::control::{Client, Op};
//! let client = Client::new("/run/tandem");
//! match client.call(Op::Primary { resource: "r0".into(), force: false }) {
//!     Ok(_) => {}
//!     Err(e) => {
//!         eprintln!("{e}");
//!         std::process::exit(e.exit_code());
//!     }
//! }
//! ```

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use repl_core::status::Status;
use serde::{Deserialize, Serialize};

use crate::res::parser::E_EXEC_ERROR;

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;

/// How long the client waits for an answer unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The control socket's file name inside the run directory.
pub const CONTROL_SOCKET: &str = "control.sock";
/// The NBD socket's file name inside the run directory.
pub const NBD_SOCKET: &str = "nbd.sock";
/// The `/proc/drbd`-format status file's name inside the run directory.
pub const STATUS_FILE: &str = "proc-drbd";
/// The daemon's log file name inside the run directory.
pub const LOG_FILE: &str = "tandemd.log";
/// The daemon's lock file name inside the run directory.
pub const LOCK_FILE: &str = "tandemd.lock";
/// The run directory when none is given.
pub const DEFAULT_RUN_DIR: &str = "/run/tandem";

/// One request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub version: u32,
    pub op: Op,
}

/// What the daemon is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Op {
    /// Load `resource` from `config` (an absolute path; [`Client::call`] makes it so), open its
    /// disks and attach them.
    Up {
        config: PathBuf,
        resource: String,
    },
    /// Demote if needed, write clean metadata and forget the resource.
    Down {
        resource: String,
    },
    Primary {
        resource: String,
        force: bool,
    },
    Secondary {
        resource: String,
    },
    NewCurrentUuid {
        resource: String,
        clear_bitmap: bool,
    },
    Outdate {
        resource: String,
    },
    /// Connect to the peer (after `disconnect`). `discard_my_data` (`connect
    /// --discard-my-data`) holds for the next connection only: if its handshake finds a split
    /// brain, this node becomes the SyncTarget and its changes since the split are lost.
    Connect {
        resource: String,
        /// Absent in requests of clients that predate it.
        #[serde(default)]
        discard_my_data: bool,
    },
    /// Drop the peer link and stay StandAlone.
    Disconnect {
        resource: String,
    },
    /// `invalidate`: this node's data becomes the target of a full resync.
    Invalidate {
        resource: String,
    },
    /// `invalidate-remote`: the peer's data becomes the target of a full resync from this node
    /// (at once when connected, at the next connection when StandAlone and Primary).
    InvalidateRemote {
        resource: String,
    },
    /// `detach`: finish what is in flight, write clean metadata and close the backing device;
    /// the resource stays configured, Diskless.
    Detach {
        resource: String,
    },
    /// `attach`: open the backing device and metadata of `resource` as `config` (absolute;
    /// [`Client::call`] makes it so) describes them, and attach them to the Diskless resource.
    Attach {
        config: PathBuf,
        resource: String,
    },
    /// `wait-connect`: answer once the connection state is Connected or beyond (or StandAlone,
    /// unless `wait_after_sb`), or refuse with exit code 5 after the timeout drbdsetup would
    /// choose from these (seconds, 0 = forever).
    WaitConnect {
        resource: String,
        timeouts: WaitTimeouts,
        wait_after_sb: bool,
    },
    /// Snapshots of every resource that is up.
    Status,
}

/// The three `startup` timeouts of `wait-connect`, in seconds (0: wait forever). Which one
/// applies is the daemon's choice, made as the kernel makes it: `outdated` when the peer's
/// disk is known Outdated, `degraded` when this node was a Primary without a peer when it went
/// down, else `wfc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WaitTimeouts {
    pub wfc: u32,
    pub degraded: u32,
    pub outdated: u32,
}

/// One answer line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub version: u32,
    pub result: Result<Reply, ControlError>,
}

/// What a successful request returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    Done,
    Status { resources: Vec<Status> },
}

/// A refusal: the message as the user should see it and `drbdsetup`'s exit code for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ControlError {
    pub code: i32,
    pub message: String,
}

impl ControlError {
    pub fn new(code: i32, message: impl Into<String>) -> ControlError {
        ControlError {
            code,
            message: message.into(),
        }
    }
}

/// Why a request got no answer or a refusal.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("tandemd is not running (no {0}/control.sock)")]
    NotRunning(String),
    #[error("tandemd is not running (nothing listens on {0}/control.sock)")]
    Stale(String),
    #[error("tandemd at {run_dir} did not answer within {within}")]
    Timeout { run_dir: String, within: String },
    #[error("tandemd at {run_dir} speaks control protocol version {theirs}, this client speaks {ours}; use matching tandemd and drbdadm builds")]
    Version {
        run_dir: String,
        ours: u32,
        theirs: u32,
    },
    #[error("talking to tandemd at {run_dir}: {message}")]
    Io { run_dir: String, message: String },
    #[error("cannot start tandemd ({program}): {message}")]
    Spawn { program: String, message: String },
    /// The daemon refused the request.
    #[error("{0}")]
    Refused(ControlError),
}

impl ClientError {
    /// The exit status a command line tool should return.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Refused(e) => e.code,
            _ => E_EXEC_ERROR,
        }
    }
}

/// A blocking client of one daemon instance.
#[derive(Debug, Clone)]
pub struct Client {
    run_dir: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client for the daemon of `run_dir`, with [`DEFAULT_TIMEOUT`].
    pub fn new(run_dir: impl Into<PathBuf>) -> Client {
        Client {
            run_dir: run_dir.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The run directory from `TANDEM_RUN_DIR`, else [`DEFAULT_RUN_DIR`].
    pub fn from_env() -> Client {
        Client::new(
            std::env::var_os("TANDEM_RUN_DIR")
                .map_or_else(|| PathBuf::from(DEFAULT_RUN_DIR), PathBuf::from),
        )
    }

    /// The same client with another answer timeout.
    pub fn with_timeout(self, timeout: Duration) -> Client {
        Client { timeout, ..self }
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    pub fn socket(&self) -> PathBuf {
        self.run_dir.join(CONTROL_SOCKET)
    }

    fn dir(&self) -> String {
        self.run_dir.display().to_string()
    }

    /// Sends one request and waits (at most the timeout) for its answer. A relative `Up`
    /// config path is made absolute first.
    ///
    /// # Errors
    /// The daemon is not running, does not answer in time, speaks another version, or
    /// refused ([`ClientError::Refused`] with `drbdsetup`'s exit code).
    pub fn call(&self, op: Op) -> Result<Reply, ClientError> {
        let limit = self.timeout;
        self.call_within(op, Some(limit))
    }

    /// Like [`Client::call`] but waits `limit` for the answer (`None`: until the daemon answers
    /// or closes the connection), for requests that wait on purpose (`WaitConnect`).
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn call_within(&self, op: Op, limit: Option<Duration>) -> Result<Reply, ClientError> {
        let op = match op {
            Op::Up { config, resource } => Op::Up {
                config: std::path::absolute(&config).unwrap_or(config),
                resource,
            },
            Op::Attach { config, resource } => Op::Attach {
                config: std::path::absolute(&config).unwrap_or(config),
                resource,
            },
            other => other,
        };
        let within = limit.unwrap_or(self.timeout);
        let io = |e: std::io::Error| self.io_error(e, within);
        let sock = self.socket();
        let stream = match UnixStream::connect(&sock) {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(ClientError::NotRunning(self.dir()))
            }
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                return Err(ClientError::Stale(self.dir()))
            }
            Err(e) => return Err(io(e)),
        };
        stream.set_read_timeout(limit).map_err(io)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(io)?;
        let mut line = serde_json::to_string(&Request {
            version: VERSION,
            op,
        })
        .map_err(|e| ClientError::Io {
            run_dir: self.dir(),
            message: e.to_string(),
        })?;
        line.push('\n');
        (&stream).write_all(line.as_bytes()).map_err(io)?;
        let mut answer = String::new();
        let n = BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
        if n == 0 {
            return Err(ClientError::Io {
                run_dir: self.dir(),
                message: "the daemon closed the connection without answering".into(),
            });
        }
        decode_response(&answer).map_err(|e| self.decode_error(e))?
    }

    /// Whether a daemon answers a `Status` request now.
    pub fn is_running(&self) -> bool {
        self.call(Op::Status).is_ok()
    }

    /// Starts a daemon for this run directory unless one answers already, then waits (at
    /// most the timeout) until it answers. The daemon detaches itself (`setsid`); its standard
    /// output and error go to `<run-dir>/tandemd.log`.
    ///
    /// # Errors
    /// It cannot be started, or does not answer in time.
    pub fn ensure_daemon(&self, program: &Path, node: Option<&str>) -> Result<(), ClientError> {
        match self.call(Op::Status) {
            Ok(_) => return Ok(()),
            Err(ClientError::NotRunning(_) | ClientError::Stale(_)) => {}
            Err(e) => return Err(e),
        }
        let spawn_err = |e: std::io::Error| ClientError::Spawn {
            program: program.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(&self.run_dir).map_err(spawn_err)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.run_dir.join(LOG_FILE))
            .map_err(spawn_err)?;
        let log2 = log.try_clone().map_err(spawn_err)?;
        let mut cmd = Command::new(program);
        cmd.arg("--run-dir").arg(&self.run_dir);
        if let Some(n) = node {
            cmd.args(["--node", n]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(spawn_err)?;
        let deadline = Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            match self.call(Op::Status) {
                Ok(_) => return Ok(()),
                Err(ClientError::NotRunning(_) | ClientError::Stale(_)) => {}
                Err(e) => return Err(e),
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(ClientError::Spawn {
                    program: program.display().to_string(),
                    message: format!(
                        "it exited with {status}; see {}",
                        self.run_dir.join(LOG_FILE).display()
                    ),
                });
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout {
                    run_dir: self.dir(),
                    within: seconds(self.timeout),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    fn io_error(&self, e: std::io::Error, within: Duration) -> ClientError {
        match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => ClientError::Timeout {
                run_dir: self.dir(),
                within: seconds(within),
            },
            _ => ClientError::Io {
                run_dir: self.dir(),
                message: e.to_string(),
            },
        }
    }

    fn decode_error(&self, e: DecodeError) -> ClientError {
        match e {
            DecodeError::Version(theirs) => ClientError::Version {
                run_dir: self.dir(),
                ours: VERSION,
                theirs,
            },
            DecodeError::Malformed(message) => ClientError::Io {
                run_dir: self.dir(),
                message: format!("malformed answer: {message}"),
            },
        }
    }
}

/// `10 s`, `0.2 s`.
fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// The `tandemd` to start: the one beside the running executable, else `tandemd` on `PATH`.
pub fn default_daemon_program() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("tandemd")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("tandemd"))
}

/// Why a line could not be read as a message of this version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("control protocol version {0}, expected {VERSION}")]
    Version(u32),
    #[error("{0}")]
    Malformed(String),
}

/// The version field of a line, read before the rest so that a newer peer's message is
/// reported as a version mismatch rather than as garbage.
fn version_of(line: &str) -> Result<u32, DecodeError> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    v.get("version")
        .and_then(serde_json::Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| DecodeError::Malformed("no version field".into()))
}

/// Reads a request line (the daemon's side).
///
/// # Errors
/// Another version, or not a request.
pub fn decode_request(line: &str) -> Result<Request, DecodeError> {
    let v = version_of(line)?;
    if v != VERSION {
        return Err(DecodeError::Version(v));
    }
    serde_json::from_str(line).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// Reads a response line (the client's side).
///
/// # Errors
/// Another version, or not a response.
pub fn decode_response(line: &str) -> Result<Result<Reply, ClientError>, DecodeError> {
    let v = version_of(line)?;
    if v != VERSION {
        return Err(DecodeError::Version(v));
    }
    let r: Response =
        serde_json::from_str(line).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    Ok(r.result.map_err(ClientError::Refused))
}

/// Encodes a response as one line, newline included.
pub fn encode_response(result: Result<Reply, ControlError>) -> String {
    let r = Response {
        version: VERSION,
        result,
    };
    let mut s = serde_json::to_string(&r).unwrap_or_else(|e| {
        format!(
            r#"{{"version":{VERSION},"result":{{"Err":{{"code":{E_EXEC_ERROR},"message":"cannot encode the answer: {}"}}}}}}"#,
            e.to_string().replace(['"', '\\'], "'")
        )
    });
    s.push('\n');
    s
}

/// The answer to a request of another version: an error naming both versions.
pub fn version_mismatch(theirs: u32) -> ControlError {
    ControlError::new(
        E_EXEC_ERROR,
        format!(
            "tandemd speaks control protocol version {VERSION}, the client speaks {theirs}; use matching tandemd and drbdadm builds"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_round_trip() {
        let req = Request {
            version: VERSION,
            op: Op::Primary {
                resource: "r0".into(),
                force: true,
            },
        };
        let line = serde_json::to_string(&req).unwrap();
        assert_eq!(
            line,
            r#"{"version":1,"op":{"op":"primary","resource":"r0","force":true}}"#
        );
        assert_eq!(decode_request(&line).unwrap(), req);
        let err = ControlError::new(
            17,
            "0: State change failed: (-2) Need access to UpToDate data",
        );
        let line = encode_response(Err(err.clone()));
        match decode_response(&line).unwrap() {
            Err(ClientError::Refused(e)) => assert_eq!(e, err),
            other => panic!("{other:?}"),
        }
        let line = encode_response(Ok(Reply::Done));
        assert!(matches!(decode_response(&line).unwrap(), Ok(Reply::Done)));
    }

    #[test]
    fn connect_without_discard_my_data_still_decodes() {
        let line = r#"{"version":1,"op":{"op":"connect","resource":"r0"}}"#;
        assert_eq!(
            decode_request(line).unwrap().op,
            Op::Connect {
                resource: "r0".into(),
                discard_my_data: false
            }
        );
        let req = Request {
            version: VERSION,
            op: Op::Connect {
                resource: "r0".into(),
                discard_my_data: true,
            },
        };
        let line = serde_json::to_string(&req).unwrap();
        assert_eq!(
            line,
            r#"{"version":1,"op":{"op":"connect","resource":"r0","discard_my_data":true}}"#
        );
        assert_eq!(decode_request(&line).unwrap(), req);
    }

    #[test]
    fn another_version_is_named_not_misread() {
        let line = r#"{"version":7,"op":{"op":"teleport"}}"#;
        assert_eq!(decode_request(line), Err(DecodeError::Version(7)));
        let line = r#"{"version":2,"result":{"Ok":{"reply":"hologram"}}}"#;
        assert!(matches!(
            decode_response(line),
            Err(DecodeError::Version(2))
        ));
        assert!(matches!(
            decode_request("not json"),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn a_missing_daemon_is_reported_plainly() {
        let dir = std::env::temp_dir().join(format!("tandem-ctl-test-{}", std::process::id()));
        let e = Client::new(&dir).call(Op::Status).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("tandemd is not running (no {}/control.sock)", dir.display())
        );
        assert_eq!(e.exit_code(), E_EXEC_ERROR);
    }

    #[test]
    fn a_silent_daemon_times_out_with_a_clear_message() {
        let dir = std::env::temp_dir().join(format!("tandem-ctl-silent-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join(CONTROL_SOCKET);
        let _ = std::fs::remove_file(&sock);
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let e = Client::new(&dir)
            .with_timeout(Duration::from_millis(200))
            .call(Op::Status)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("tandemd at {} did not answer within 0.2 s", dir.display())
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
