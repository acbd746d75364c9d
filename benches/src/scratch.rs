//! A private working directory for one benchmark run (backing file, sockets, logs, fio output),
//! removed with everything in it when its guard is dropped.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::signal;

/// A directory created for this run and removed on drop.
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates a new, empty `tandem-bench.PID.NANOS` directory inside `parent`.
    ///
    /// # Errors
    /// `parent` does not exist or is not writable.
    pub fn create(parent: &Path) -> io::Result<ScratchDir> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = parent.join(format!("tandem-bench.{}.{nanos}", std::process::id()));
        fs::create_dir(&path)?;
        Ok(ScratchDir { path })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("tandem-bench: cannot remove {}: {e}", self.path.display());
        }
    }
}

/// Creates `path` with `size` bytes of written (not sparse, not unwritten-extent) data and
/// makes it durable, so that no server pays for block allocation during a measurement.
///
/// # Errors
/// Creating, writing or syncing failed, or a stop signal arrived (`ErrorKind::Interrupted`).
pub fn fill_file(path: &Path, size: u64) -> io::Result<()> {
    const CHUNK: usize = 1 << 20;
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    // A non-zero pattern, so that no layer can take the zero-detection shortcut.
    let chunk: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8 | 1).collect();
    let mut left = size;
    while left > 0 {
        if signal::interrupted() {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
        }
        let n = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.sync_all()
}

/// Writes back whatever the last run left dirty in the page cache for `path`.
///
/// # Errors
/// Opening or syncing failed.
pub fn sync_file(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_is_removed_with_contents() {
        let dir = ScratchDir::create(&std::env::temp_dir()).expect("create");
        let p = dir.path().to_path_buf();
        let file = p.join("disk.img");
        fill_file(&file, (1 << 20) + 4096).expect("fill");
        assert_eq!(fs::metadata(&file).expect("stat").len(), (1 << 20) + 4096);
        sync_file(&file).expect("sync");
        drop(dir);
        assert!(!p.exists());
    }
}
