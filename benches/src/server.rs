//! The three NBD servers under comparison, started on a Unix socket over one backing file with
//! equivalent settings (host page cache, writeback, no zero detection), and stopped on drop.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::process::{self, ChildGuard, Stopped};
use crate::signal;

/// How long a server may take to accept its first connection.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of a server's log an error quotes.
const LOG_TAIL: usize = 2000;

/// One of the servers under comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Tandem,
    Nbdkit,
    QemuNbd,
}

impl Server {
    /// All servers, in the order each round runs them.
    pub const ALL: [Server; 3] = [Server::Tandem, Server::Nbdkit, Server::QemuNbd];

    /// The name used in tables and file names.
    pub fn label(self) -> &'static str {
        match self {
            Server::Tandem => "tandem-nbd",
            Server::Nbdkit => "nbdkit",
            Server::QemuNbd => "qemu-nbd",
        }
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// qemu-nbd's `--aio` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QemuAio {
    IoUring,
    Threads,
}

impl QemuAio {
    fn arg(self) -> &'static str {
        match self {
            QemuAio::IoUring => "io_uring",
            QemuAio::Threads => "threads",
        }
    }
}

/// Why a server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot start {server}: {source}")]
    Spawn { server: Server, source: io::Error },
    #[error("{server} exited ({status}) before accepting connections; its log:\n{log}")]
    Exited {
        server: Server,
        status: ExitStatus,
        log: String,
    },
    #[error("{server} did not accept an NBD connection within {READY_TIMEOUT:?}; its log:\n{log}")]
    NotReady { server: Server, log: String },
    #[error("interrupted")]
    Interrupted,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// How to start each server.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub tandem_nbd: PathBuf,
    pub nbdkit: PathBuf,
    pub qemu_nbd: PathBuf,
    pub qemu_aio: QemuAio,
}

impl Launcher {
    /// The command line that serves `file` on `socket`.
    pub fn command(&self, server: Server, file: &Path, socket: &Path) -> Command {
        let mut c;
        match server {
            Server::Tandem => {
                // Page cache (no --direct), io_uring when the kernel allows it.
                c = Command::new(&self.tandem_nbd);
                c.arg("serve")
                    .arg(file)
                    .arg("--socket")
                    .arg(socket)
                    .args(["--io-engine", "auto"]);
            }
            Server::Nbdkit => {
                // The file plugin's default cache=default: page cache, pread/pwrite on nbdkit's
                // worker threads (16 by default, parallel thread model).
                c = Command::new(&self.nbdkit);
                c.args(["--foreground", "--exit-with-parent", "--unix"])
                    .arg(socket)
                    .arg("file")
                    .arg(file);
            }
            Server::QemuNbd => {
                // Persistent, up to 8 clients, page cache in writeback mode.
                c = Command::new(&self.qemu_nbd);
                c.args([
                    "--persistent",
                    "--shared=8",
                    "--format=raw",
                    "--cache=writeback",
                ])
                .arg(format!("--aio={}", self.qemu_aio.arg()))
                .args(["--detect-zeroes=off", "--discard=ignore", "--socket"])
                .arg(socket)
                .arg(file);
            }
        }
        c
    }

    /// A one-line summary of the settings each server runs with.
    pub fn describe(&self, server: Server) -> String {
        match server {
            Server::Tandem => "page cache, --io-engine auto (io_uring if available)".to_owned(),
            Server::Nbdkit => {
                "file plugin, cache=default (page cache), parallel threads".to_owned()
            }
            Server::QemuNbd => format!(
                "--cache=writeback --aio={} --shared=8 --persistent --detect-zeroes=off",
                self.qemu_aio.arg()
            ),
        }
    }

    /// Starts `server` on `<dir>/<label>.sock` and waits until it speaks NBD there.
    ///
    /// # Errors
    /// The server would not start, exited, or did not answer within the timeout.
    pub fn start(&self, server: Server, file: &Path, dir: &Path) -> Result<Running, ServerError> {
        let socket = dir.join(format!("{}.sock", server.label()));
        let log = dir.join(format!("{}.log", server.label()));
        remove_if_exists(&socket)?;
        let out = File::create(&log)?;
        let mut cmd = self.command(server, file, &socket);
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let guard =
            ChildGuard::spawn(&mut cmd).map_err(|source| ServerError::Spawn { server, source })?;
        let mut running = Running {
            server,
            guard,
            socket,
            log,
        };
        running.wait_ready()?;
        Ok(running)
    }
}

/// A started server; dropping it stops the process and removes its socket.
pub struct Running {
    server: Server,
    guard: ChildGuard,
    socket: PathBuf,
    log: PathBuf,
}

impl Running {
    /// The Unix socket the server listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// CPU time the server has used so far.
    ///
    /// # Errors
    /// `/proc` could not be read (the server may have died).
    pub fn cpu_time(&self) -> io::Result<Duration> {
        process::cpu_time(self.guard.id())
    }

    /// Whether the server is still running.
    ///
    /// # Errors
    /// `waitpid` failed.
    pub fn alive(&mut self) -> io::Result<bool> {
        Ok(self.guard.try_wait()?.is_none())
    }

    /// The tail of the server's stdout and stderr.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// Stops the server (SIGTERM, then SIGKILL after a grace period) and removes its socket.
    ///
    /// # Errors
    /// `waitpid` failed; the socket is still removed.
    pub fn stop(mut self) -> io::Result<Stopped> {
        let stopped = self.guard.stop();
        let _ = remove_if_exists(&self.socket);
        stopped
    }

    /// Polls for the socket, connects, and reads the server's `NBDMAGIC` greeting.
    fn wait_ready(&mut self) -> Result<(), ServerError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.guard.try_wait()? {
                return Err(ServerError::Exited {
                    server: self.server,
                    status,
                    log: self.log_tail(),
                });
            }
            if signal::interrupted() {
                return Err(ServerError::Interrupted);
            }
            if greets(&self.socket) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ServerError::NotReady {
                    server: self.server,
                    log: self.log_tail(),
                });
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.guard.stop();
        let _ = remove_if_exists(&self.socket);
    }
}

/// Whether an NBD server answers on `socket` with the newstyle greeting's first 8 bytes.
fn greets(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let mut magic = [0u8; 8];
    s.set_read_timeout(Some(Duration::from_secs(2))).is_ok()
        && s.read_exact(&mut magic).is_ok()
        && &magic == b"NBDMAGIC"
}

fn remove_if_exists(p: &Path) -> io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn log_tail(path: &Path) -> String {
    let text = fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(LOG_TAIL);
    let tail = String::from_utf8_lossy(&text[start..]);
    if tail.trim().is_empty() {
        "(empty)".to_owned()
    } else {
        tail.into_owned()
    }
}
