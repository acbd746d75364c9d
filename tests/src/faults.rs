//! Backing storage that fails, for process-level disk-fault tests: a small tmpfs that fills
//! up (writes fail with ENOSPC), a file whose reads and writes fail with EIO on demand
//! (nbdkit's error filter on a file, shown as a regular file by nbdfuse), a file whose
//! requests hang on demand (nbdkit's pause filter), and a loop device over such a file (a
//! block device whose write errors surface at writeback, i.e. at fsync).
//! Every guard undoes its mount, device or process when dropped, also when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::cluster::ClusterNode;
use crate::{run_ok, stdout_of, wait_for_path, Proc};

/// A tmpfs of a fixed size mounted on a directory of its own; unmounted on drop.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` bytes (a multiple of 4 KiB).
    pub fn mount(bytes: u64) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("tandem-tmpfs-")
            .tempdir()
            .expect("tempdir");
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tandem-full"])
                .arg(dir.path()),
        );
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Resizes the tmpfs to `bytes` bytes (room again after it was full).
    pub fn resize(&self, bytes: u64) {
        run_ok(
            Command::new("mount")
                .args(["-o", &format!("remount,size={bytes}")])
                .arg(self.path()),
        );
    }

    /// Bytes still free, as statvfs says.
    pub fn free(&self) -> u64 {
        let out = stdout_of(
            Command::new("stat")
                .args(["-f", "-c", "%a %S"])
                .arg(self.path()),
        );
        let mut it = out.split_whitespace().filter_map(|w| w.parse::<u64>().ok());
        match (it.next(), it.next()) {
            (Some(blocks), Some(size)) => blocks * size,
            _ => panic!("stat -f: {out}"),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        unmount(self.dir.path());
    }
}

/// Unmounts `dir`, lazily if something still holds it (so that the test run goes on).
fn unmount(dir: &Path) {
    let ok = Command::new("umount")
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("cleanup: {} is busy, unmounting lazily", dir.display());
        let _ = Command::new("umount").arg("-l").arg(dir).status();
    }
}

/// A sparse file of `len` bytes.
pub fn sparse_file(path: &Path, len: u64) {
    std::fs::File::create(path)
        .and_then(|f| f.set_len(len))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Makes `target` the backing store of `node`: its configured disk path becomes a symlink
/// to it (the `.res` file keeps naming the path in the cluster's directory).
pub fn put_disk(node: &ClusterNode, target: &Path) {
    std::fs::remove_file(&node.disk).expect("remove the backing file");
    std::os::unix::fs::symlink(target, &node.disk).expect("symlink the backing store");
}

/// A loop device over a file; detached on drop.
pub struct LoopDev {
    pub dev: PathBuf,
}

impl LoopDev {
    pub fn attach(file: &Path) -> LoopDev {
        let dev = stdout_of(Command::new("losetup").args(["--find", "--show"]).arg(file))
            .trim()
            .to_string();
        assert!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
        LoopDev { dev: dev.into() }
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        eprintln!("cleanup: losetup -d {}", self.dev.display());
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A file whose every read and write fails with EIO while [`ErrorDisk::fail`] is in force:
/// `nbdkit --filter=error file IMAGE error-rate=100% error-file=TRIGGER`, mounted as the
/// regular file [`ErrorDisk::file`] by nbdfuse. Unmounted (which ends both processes) on
/// drop.
pub struct ErrorDisk {
    /// The FUSE file to use as a backing store.
    pub file: PathBuf,
    /// The file nbdkit serves; what was written through [`ErrorDisk::file`] ends up here.
    pub image: PathBuf,
    trigger: PathBuf,
    fuse: FuseFile,
}

impl ErrorDisk {
    /// Serves `len` bytes of a sparse image, after `seed` wrote into it what it wants.
    pub fn start(len: u64, seed: impl FnOnce(&Path)) -> ErrorDisk {
        let dir = tempfile::Builder::new()
            .prefix("tandem-eio-")
            .tempdir()
            .expect("tempdir");
        let image = dir.path().join("image");
        sparse_file(&image, len);
        seed(&image);
        let trigger = dir.path().join("fail-now");
        let fuse = FuseFile::start(
            dir,
            &["--filter=error", "file"],
            &[
                "error=EIO".into(),
                "error-rate=100%".into(),
                format!("error-file={}", trigger.display()),
            ],
            &image,
        );
        ErrorDisk {
            file: fuse.file.clone(),
            image,
            trigger,
            fuse,
        }
    }

    /// From now on every read and write fails with EIO.
    pub fn fail(&self) {
        std::fs::write(&self.trigger, b"").expect("trigger");
    }

    /// The disk works again.
    pub fn heal(&self) {
        let _ = std::fs::remove_file(&self.trigger);
    }

    /// What nbdfuse and nbdkit printed.
    pub fn log(&self) -> String {
        self.fuse.log()
    }
}

/// A file whose reads and writes hang on demand while its process and everything else stay
/// alive: `nbdkit --filter=pause file IMAGE pause-control=SOCKET`, mounted as the regular
/// file [`HangingDisk::file`] by nbdfuse. Unmounted on drop; [`HangingDisk::resume_on_drop`]
/// gives a guard to drop before the daemons that use it are killed (a process waiting on a
/// FUSE request that reached its server cannot die until it is answered).
pub struct HangingDisk {
    /// The FUSE file to use as a backing store.
    pub file: PathBuf,
    control: PathBuf,
    fuse: FuseFile,
}

impl HangingDisk {
    /// Serves `len` bytes of a sparse image.
    pub fn start(len: u64) -> HangingDisk {
        let dir = tempfile::Builder::new()
            .prefix("tandem-hang-")
            .tempdir()
            .expect("tempdir");
        let image = dir.path().join("image");
        sparse_file(&image, len);
        let control = dir.path().join("pause.sock");
        let fuse = FuseFile::start(
            dir,
            &["--filter=pause", "file"],
            &[format!("pause-control={}", control.display())],
            &image,
        );
        assert!(
            wait_for_path(&control, Duration::from_secs(30)),
            "nbdkit's pause control socket did not appear: {}",
            fuse.log()
        );
        HangingDisk {
            file: fuse.file.clone(),
            control,
            fuse,
        }
    }

    /// From now on every request hangs (after those in flight finished).
    pub fn hang(&self) {
        self.command(b'p');
    }

    /// Requests are served again, the held ones first.
    pub fn resume(&self) {
        self.command(b'r');
    }

    /// A guard that resumes the disk when dropped.
    pub fn resume_on_drop(&self) -> Resume<'_> {
        Resume(self)
    }

    /// Sends a command to the pause filter and waits for its echo in upper case.
    fn command(&self, c: u8) {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&self.control)
            .unwrap_or_else(|e| panic!("{}: {e}", self.control.display()));
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        s.write_all(&[c]).expect("pause control");
        let mut echo = [0u8; 1];
        s.read_exact(&mut echo).expect("pause control echo");
        assert_eq!(echo[0], c.to_ascii_uppercase(), "pause control answered");
    }

    /// What nbdfuse and nbdkit printed.
    pub fn log(&self) -> String {
        self.fuse.log()
    }
}

/// Resumes a [`HangingDisk`] when dropped.
pub struct Resume<'a>(&'a HangingDisk);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.0.resume()));
    }
}

/// nbdfuse showing an nbdkit export as a regular file; unmounted (which ends both processes)
/// on drop.
struct FuseFile {
    file: PathBuf,
    mountpoint: PathBuf,
    fuse: Proc,
    dir: tempfile::TempDir,
}

impl FuseFile {
    /// Starts `nbdkit FILTER_AND_PLUGIN image PARAMS` under nbdfuse, in `dir`.
    fn start(
        dir: tempfile::TempDir,
        filter_and_plugin: &[&str],
        params: &[String],
        image: &Path,
    ) -> FuseFile {
        let mountpoint = dir.path().join("fuse");
        std::fs::create_dir(&mountpoint).expect("mkdir");
        let pidfile = dir.path().join("nbdfuse.pid");
        let file = mountpoint.join("disk");
        let log = std::fs::File::create(dir.path().join("nbdfuse.log")).expect("log");
        // nbdfuse starts nbdkit itself (socket activation) and ends it when unmounted.
        let child = Command::new("nbdfuse")
            .arg("-P")
            .arg(&pidfile)
            .arg(&file)
            .args(["[", "nbdkit"])
            .args(filter_and_plugin)
            .arg(image)
            .args(params)
            .arg("]")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nbdfuse");
        let fuse = Proc {
            child,
            name: "nbdfuse".into(),
        };
        let f = FuseFile {
            file,
            mountpoint,
            fuse,
            dir,
        };
        assert!(
            wait_for_path(&pidfile, Duration::from_secs(30)),
            "nbdfuse did not become ready: {}",
            f.log()
        );
        f
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nbdfuse.log")).unwrap_or_default()
    }
}

impl Drop for FuseFile {
    fn drop(&mut self) {
        eprintln!("cleanup: fusermount3 -u {}", self.mountpoint.display());
        let ok = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mountpoint)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&self.mountpoint)
                .status();
        }
        if self.fuse.wait_timeout(Duration::from_secs(10)).is_none() {
            eprintln!("cleanup: nbdfuse did not exit; killing it");
        }
        // `Proc`'s drop kills it if it is still there.
    }
}
