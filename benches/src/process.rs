//! Child processes that cannot outlive the harness: each runs in its own process group (so a
//! terminal's Ctrl-C reaches only the harness, which then stops them in order), gets SIGTERM if
//! the harness dies, and is stopped and reaped when its guard is dropped.

use std::ffi::OsStr;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use crate::signal;

/// How often waits look at the child and the interrupt flag.
const POLL: Duration = Duration::from_millis(10);
/// How long a child has to exit after SIGTERM before it gets SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

/// Why a wait for a child ended without the child exiting.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("interrupted")]
    Interrupted,
    #[error("still running after {0:?}")]
    TimedOut(Duration),
    #[error("wait: {0}")]
    Io(#[from] io::Error),
}

/// A running child that is stopped (SIGTERM, then SIGKILL after a grace period) and reaped on drop.
pub struct ChildGuard {
    child: Child,
    exited: Option<ExitStatus>,
}

impl ChildGuard {
    /// Spawns `cmd` in a new process group with SIGTERM as its parent-death signal.
    ///
    /// # Errors
    /// The program could not be started.
    pub fn spawn(cmd: &mut Command) -> io::Result<ChildGuard> {
        let parent = std::process::id();
        cmd.process_group(0);
        // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
        // functions (prctl, getppid, raise); it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() as u32 != parent {
                    libc::raise(libc::SIGTERM);
                }
                Ok(())
            });
        }
        Ok(ChildGuard {
            child: cmd.spawn()?,
            exited: None,
        })
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the child has exited (reaping it), else `None`.
    ///
    /// # Errors
    /// `waitpid` failed.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait()?;
        }
        Ok(self.exited)
    }

    /// Waits for the child to exit by itself, up to `timeout` or until a stop signal arrives.
    ///
    /// # Errors
    /// The timeout passed, the harness was interrupted, or `waitpid` failed; the child is then
    /// still running and the guard still owns it.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus, WaitError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if signal::interrupted() {
                return Err(WaitError::Interrupted);
            }
            if Instant::now() >= deadline {
                return Err(WaitError::TimedOut(timeout));
            }
            thread::sleep(POLL);
        }
    }

    /// Sends SIGTERM to the child's process group, waits up to the grace period, then sends
    /// SIGKILL; returns how long the child took to go and whether it needed SIGKILL.
    ///
    /// # Errors
    /// `waitpid` failed.
    pub fn stop(&mut self) -> io::Result<Stopped> {
        let start = Instant::now();
        if self.try_wait()?.is_some() {
            return Ok(Stopped {
                took: Duration::ZERO,
                killed: false,
            });
        }
        self.signal_group(libc::SIGTERM);
        while start.elapsed() < GRACE {
            if self.try_wait()?.is_some() {
                return Ok(Stopped {
                    took: start.elapsed(),
                    killed: false,
                });
            }
            thread::sleep(POLL);
        }
        self.signal_group(libc::SIGKILL);
        self.exited = Some(self.child.wait()?);
        Ok(Stopped {
            took: start.elapsed(),
            killed: true,
        })
    }

    fn signal_group(&self, sig: libc::c_int) {
        // The child is not reaped yet (try_wait said so), so its pid, which is also its process
        // group id, cannot have been reused.
        let Ok(pgid) = libc::pid_t::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// How a child went when asked to stop.
#[derive(Debug, Clone, Copy)]
pub struct Stopped {
    /// Time from SIGTERM to exit.
    pub took: Duration,
    /// The child ignored SIGTERM for the whole grace period and was killed.
    pub killed: bool,
}

/// The first executable named `name` on `PATH`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// Whether `path` is a regular file with an execute bit set.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The first non-empty line `program args` prints on stdout, or a note saying why there is none.
pub fn first_line<I, S>(program: &Path, args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    match Command::new(program).args(args).output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map_or_else(|| "(no version output)".to_owned(), str::to_owned),
        Err(e) => format!("(cannot run: {e})"),
    }
}

/// User plus system CPU time that process `pid` (all its threads) has used so far.
///
/// # Errors
/// `/proc/PID/stat` cannot be read or has an unexpected shape.
pub fn cpu_time(pid: u32) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_cpu_time(&stat, clock_ticks())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/PID/stat"))
}

/// User plus system CPU time of this process's children that have exited and been waited for
/// (`RUSAGE_CHILDREN`); the difference around one child's run is that child's CPU time.
pub fn reaped_children_cpu_time() -> Duration {
    // SAFETY: an all-zero rusage is a valid value, and getrusage only writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// utime + stime from a `/proc/PID/stat` line; the command name may hold spaces and parentheses,
/// so fields are counted from the last `)`.
fn parse_cpu_time(stat: &str, ticks_per_sec: u64) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: state(3) ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
    // cmajflt utime(14) stime(15).
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime + stime;
    Some(Duration::from_nanos(
        ticks.saturating_mul(1_000_000_000) / ticks_per_sec,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_with_odd_name() {
        let line = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0";
        assert_eq!(parse_cpu_time(line, 100), Some(Duration::from_millis(3000)));
        assert_eq!(parse_cpu_time("garbage", 100), None);
    }

    #[test]
    fn child_is_stopped_on_drop() {
        let mut g = ChildGuard::spawn(Command::new("sleep").arg("30")).expect("spawn sleep");
        let pid = g.id();
        assert!(g.try_wait().expect("try_wait").is_none());
        drop(g);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}
