//! Backing storage that fails, for process-level disk-fault tests: a small tmpfs that fills
//! up (writes fail with ENOSPC), a file whose reads and writes fail with EIO on demand
//! (nbdkit's error filter on a file, shown as a regular file by nbdfuse), and a loop device
//! over such a file (a block device whose write errors surface at writeback, i.e. at fsync).
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
    mountpoint: PathBuf,
    fuse: Proc,
    dir: tempfile::TempDir,
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
        let mountpoint = dir.path().join("fuse");
        std::fs::create_dir(&mountpoint).expect("mkdir");
        let trigger = dir.path().join("fail-now");
        let pidfile = dir.path().join("nbdfuse.pid");
        let file = mountpoint.join("disk");
        let log = std::fs::File::create(dir.path().join("nbdfuse.log")).expect("log");
        // nbdfuse starts nbdkit itself (socket activation) and ends it when unmounted.
        let child = Command::new("nbdfuse")
            .arg("-P")
            .arg(&pidfile)
            .arg(&file)
            .args(["[", "nbdkit", "--filter=error", "file"])
            .arg(&image)
            .args(["error=EIO", "error-rate=100%"])
            .arg(format!("error-file={}", trigger.display()))
            .arg("]")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nbdfuse");
        let fuse = Proc {
            child,
            name: "nbdfuse".into(),
        };
        let disk = ErrorDisk {
            file,
            image,
            trigger,
            mountpoint,
            fuse,
            dir,
        };
        assert!(
            wait_for_path(&pidfile, Duration::from_secs(30)),
            "nbdfuse did not become ready: {}",
            disk.log()
        );
        disk
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
        std::fs::read_to_string(self.dir.path().join("nbdfuse.log")).unwrap_or_default()
    }
}

impl Drop for ErrorDisk {
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
