//! The metadata device: a regular file or a block device, opened read-only for the reading
//! commands and read-write for the others, with its size and positioned reads and writes.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};

use super::{MdError, Target};

/// Zeroes are written in pieces of this size.
const ZERO_CHUNK: u64 = 1 << 20;

/// An open metadata device.
#[derive(Debug)]
pub struct MdDevice {
    file: File,
    /// The name as the config spells it, for messages.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

impl MdDevice {
    /// Opens the metadata device of `target` and finds its size.
    ///
    /// # Errors
    /// `Open` when the path cannot be opened, `NotADevice` for anything but a regular file or
    /// a block device.
    pub fn open(target: &Target, write: bool) -> Result<MdDevice, MdError> {
        let name = target.md_name.clone();
        let open_err = |source| MdError::Open {
            path: name.clone(),
            spec: target.spec.clone(),
            source,
        };
        let not_device = || MdError::NotADevice {
            path: name.clone(),
            spec: target.spec.clone(),
        };
        // Check the type first: opening a FIFO would block.
        let meta = std::fs::metadata(&target.md_path).map_err(open_err)?;
        let ft = meta.file_type();
        if !ft.is_file() && !ft.is_block_device() {
            return Err(not_device());
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(write)
            .open(&target.md_path)
            .map_err(open_err)?;
        let size = if ft.is_file() {
            meta.len()
        } else {
            file.seek(SeekFrom::End(0)).map_err(open_err)?
        };
        Ok(MdDevice { file, name, size })
    }

    fn io_err(&self, op: &'static str, offset: u64, len: u64, source: std::io::Error) -> MdError {
        MdError::Io {
            op,
            path: self.name.clone(),
            offset,
            len,
            source,
        }
    }

    /// `len` bytes at `offset`.
    ///
    /// # Errors
    /// `Io` on a failed or short read (also when the range passes the end).
    pub fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, MdError> {
        let short = || std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(self.io_err("read", offset, len, short()));
        }
        let n = usize::try_from(len).map_err(|_| self.io_err("read", offset, len, short()))?;
        let mut buf = vec![0; n];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|e| self.io_err("read", offset, len, e))?;
        Ok(buf)
    }

    /// Writes `bytes` at `offset`.
    ///
    /// # Errors
    /// `Io`.
    pub fn write(&self, offset: u64, bytes: &[u8]) -> Result<(), MdError> {
        self.file
            .write_all_at(bytes, offset)
            .map_err(|e| self.io_err("write", offset, bytes.len() as u64, e))
    }

    /// Writes `len` zero bytes at `offset`.
    ///
    /// # Errors
    /// `Io`.
    pub fn zero(&self, offset: u64, len: u64) -> Result<(), MdError> {
        let chunk = vec![0u8; ZERO_CHUNK.min(len) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(ZERO_CHUNK) as usize;
            self.write(offset + done, &chunk[..n])?;
            done += n as u64;
        }
        Ok(())
    }

    /// Makes every write so far durable.
    ///
    /// # Errors
    /// `Io`.
    pub fn sync(&self) -> Result<(), MdError> {
        self.file
            .sync_all()
            .map_err(|e| self.io_err("fsync", 0, self.size, e))
    }
}
