//! A file or block device as a [`BlockDevice`], with I/O through io_uring (one ring thread per
//! file) or, where io_uring is unavailable, positional reads and writes on blocking threads.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::device::{BlockDevice, BlockSizes, Capabilities, DeviceFuture, Extent, ZeroFlags};
use crate::proto::{MAX_PAYLOAD, STATE_HOLE, STATE_ZERO};
use crate::uring::{Op, OpKind, OpOutput, Ring};

/// Buffer and request alignment under O_DIRECT.
const DIRECT_ALIGN: usize = 4096;
/// Chunk size when zeroes must be written out.
const ZERO_CHUNK: usize = 1 << 20;

/// Which disk I/O path to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoEngine {
    /// io_uring when the kernel allows it, else threads.
    #[default]
    Auto,
    /// pread/pwrite on blocking threads.
    Threads,
}

/// How to open the backing store.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileOptions {
    pub read_only: bool,
    /// Bypass the page cache (`O_DIRECT`); requests must then be 4 KiB aligned.
    pub direct: bool,
    pub engine: IoEngine,
}

/// A regular file or block device serving as an export's storage.
pub struct FileDevice {
    file: Arc<File>,
    size: u64,
    block_device: bool,
    direct: bool,
    ring: Option<Ring>,
    /// The file system refused `RWF_NOWAIT` writes (ext4 does): stop asking.
    nowait_writes_unsupported: AtomicBool,
}

impl FileDevice {
    /// Opens `path` and starts its disk thread.
    ///
    /// # Errors
    /// The file cannot be opened or sized, or is neither a regular file nor a block device.
    pub fn open(path: &Path, opts: FileOptions) -> io::Result<FileDevice> {
        let mut oo = OpenOptions::new();
        oo.read(true).write(!opts.read_only);
        if opts.direct {
            oo.custom_flags(libc::O_DIRECT);
        }
        let mut file = oo.open(path)?;
        let ft = file.metadata()?.file_type();
        if !ft.is_file() && !ft.is_block_device() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file or block device",
            ));
        }
        let size = file.seek(SeekFrom::End(0))?;
        let file = Arc::new(file);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ring = match opts.engine {
            IoEngine::Threads => None,
            IoEngine::Auto => match Ring::start(file.clone(), &name) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!("io_uring unavailable ({e}); using pread/pwrite threads");
                    None
                }
            },
        };
        Ok(FileDevice {
            file,
            size,
            block_device: ft.is_block_device(),
            direct: opts.direct,
            ring,
            nowait_writes_unsupported: AtomicBool::new(false),
        })
    }

    /// "io_uring" or "pread/pwrite threads", for the startup log.
    pub fn engine_name(&self) -> &'static str {
        if self.ring.is_some() {
            "io_uring"
        } else {
            "pread/pwrite threads"
        }
    }

    fn align(&self) -> usize {
        if self.direct {
            DIRECT_ALIGN
        } else {
            1
        }
    }

    async fn ring_op(ring: &Ring, kind: OpKind) -> io::Result<OpOutput> {
        let (done, rx) = oneshot::channel();
        ring.submit(Op { kind, done });
        rx.await
            .map_err(|_| io::Error::other("disk thread dropped a request"))?
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&File) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || f(&file))
            .await
            .map_err(|e| io::Error::other(format!("disk thread: {e}")))?
    }

    async fn sync(&self) -> io::Result<()> {
        match &self.ring {
            Some(r) => Self::ring_op(r, OpKind::Sync).await.map(drop),
            None => self.blocking(|f| f.sync_data()).await,
        }
    }

    async fn fallocate(&self, offset: u64, len: u64, mode: i32) -> io::Result<()> {
        match &self.ring {
            Some(r) => Self::ring_op(r, OpKind::Fallocate { offset, len, mode })
                .await
                .map(drop),
            None => {
                self.blocking(move |f| {
                    // SAFETY: fallocate on an fd we own; no memory is passed.
                    let rc =
                        unsafe { libc::fallocate(f.as_raw_fd(), mode, offset as i64, len as i64) };
                    if rc < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(())
                    }
                })
                .await
            }
        }
    }

    async fn write_at(&self, offset: u64, data: Bytes, fua: bool) -> io::Result<()> {
        if !self.direct && !fua {
            return self.write_inline(offset, &data);
        }
        let data = if !(data.as_ptr() as usize).is_multiple_of(self.align()) {
            aligned_copy(&data, self.align())
        } else {
            data
        };
        match &self.ring {
            Some(r) => Self::ring_op(
                r,
                OpKind::Write {
                    offset,
                    data,
                    dsync: fua,
                },
            )
            .await
            .map(drop),
            None => {
                self.blocking(move |f| {
                    f.write_all_at(&data, offset)?;
                    if fua {
                        f.sync_data()?;
                    }
                    Ok(())
                })
                .await
            }
        }
    }

    /// A buffered write done on the calling thread, as a threaded server does: a page-cache
    /// copy costs less than the hops to the ring thread and io_uring's worker (ext4 cannot
    /// write without blocking, so io_uring punts every buffered write to a worker thread).
    /// `RWF_NOWAIT` first where the file system supports it, then a plain pwrite, which can
    /// hold this runtime worker while the kernel throttles dirty pages (measured in
    /// `tandem-bench nbd`: `block_in_place` around it cost a fifth of the 4 KiB write rate).
    fn write_inline(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut done = 0;
        if !self.nowait_writes_unsupported.load(Ordering::Relaxed) {
            match rw_nowait(
                &self.file,
                offset,
                data.as_ptr().cast_mut(),
                data.len(),
                true,
            ) {
                Ok(n) if n == data.len() => return Ok(()),
                Ok(n) => done = n,
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
                Err(e) if unsupported(&e) => self
                    .nowait_writes_unsupported
                    .store(true, Ordering::Relaxed),
                Err(e) => return Err(e),
            }
        }
        let rest = &data[done..];
        self.file.write_all_at(rest, offset + done as u64)
    }

    async fn write_zero_run(&self, offset: u64, len: u32) -> io::Result<()> {
        let chunk = zero_chunk(self.align());
        let mut done = 0u64;
        while done < u64::from(len) {
            let n = (u64::from(len) - done).min(chunk.len() as u64) as usize;
            self.write_at(offset + done, chunk.slice(..n), false)
                .await?;
            done += n as u64;
        }
        Ok(())
    }
}

/// A shared run of zeroes, aligned for O_DIRECT.
fn zero_chunk(align: usize) -> Bytes {
    static ZEROS: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    ZEROS
        .get_or_init(|| aligned_copy(&vec![0u8; ZERO_CHUNK], DIRECT_ALIGN.max(align)))
        .clone()
}

/// An empty buffer whose spare capacity starts at an `align`-aligned address, padded with
/// zeroes up to it; reads go after the padding.
fn aligned_buffer(len: usize, align: usize) -> Vec<u8> {
    let mut v: Vec<u8> = Vec::with_capacity(len + align - 1);
    let pad = v.as_ptr().align_offset(align);
    v.resize(pad, 0);
    v
}

/// `data` copied into an `align`-aligned buffer.
fn aligned_copy(data: &[u8], align: usize) -> Bytes {
    let mut v = aligned_buffer(data.len(), align);
    let pad = v.len();
    v.extend_from_slice(data);
    Bytes::from(v).slice(pad..)
}

/// One `preadv2`/`pwritev2` with `RWF_NOWAIT`: completes from the page cache or fails with
/// `EAGAIN` (or `EOPNOTSUPP` where the file system cannot avoid blocking).
fn rw_nowait(f: &File, offset: u64, ptr: *mut u8, len: usize, write: bool) -> io::Result<usize> {
    let iov = libc::iovec {
        iov_base: ptr.cast(),
        iov_len: len,
    };
    // SAFETY: `iov` points at `len` bytes the caller owns for the duration of the call
    // (readable for a write, writable for a read); the fd stays open through `f`.
    let n = unsafe {
        if write {
            libc::pwritev2(f.as_raw_fd(), &iov, 1, offset as i64, libc::RWF_NOWAIT)
        } else {
            libc::preadv2(f.as_raw_fd(), &iov, 1, offset as i64, libc::RWF_NOWAIT)
        }
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::ENOTTY)
    )
}

const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
const ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            flush: true,
            fua: true,
            trim: true,
            write_zeroes: true,
            fast_zero: true,
            cache: true,
            // One file, one page cache: a flush on any connection covers every connection.
            multi_conn: true,
            rotational: false,
            block_status: !self.block_device,
        }
    }

    fn block_sizes(&self) -> BlockSizes {
        let a = self.align() as u32;
        BlockSizes {
            minimum: a,
            preferred: 4096,
            maximum: MAX_PAYLOAD,
        }
    }

    fn read(&self, offset: u64, len: u32) -> DeviceFuture<'_, Bytes> {
        Box::pin(async move {
            let len = len as usize;
            let mut buf = aligned_buffer(len, self.align());
            let pad = buf.len();
            if !self.direct {
                // From the page cache without blocking, when the data is there.
                // SAFETY: the spare capacity holds `len` bytes (aligned_buffer reserved them).
                let spare = unsafe { buf.as_mut_ptr().add(pad) };
                if let Ok(n) = rw_nowait(&self.file, offset, spare, len, false) {
                    if n == len {
                        // SAFETY: preadv2 initialised exactly `len` bytes after the padding.
                        unsafe { buf.set_len(pad + len) };
                        return Ok(Bytes::from(buf).slice(pad..));
                    }
                }
            }
            let buf = match &self.ring {
                Some(r) => match Self::ring_op(r, OpKind::Read { offset, buf, len }).await? {
                    OpOutput::Read(b) => b,
                    OpOutput::Done => return Err(io::Error::other("read returned no buffer")),
                },
                None => {
                    self.blocking(move |f| {
                        let mut buf = buf;
                        buf.resize(pad + len, 0);
                        f.read_exact_at(&mut buf[pad..], offset)?;
                        Ok(buf)
                    })
                    .await?
                }
            };
            Ok(Bytes::from(buf).slice(pad..))
        })
    }

    fn write(&self, offset: u64, data: Bytes, fua: bool) -> DeviceFuture<'_, ()> {
        Box::pin(self.write_at(offset, data, fua))
    }

    fn flush(&self) -> DeviceFuture<'_, ()> {
        Box::pin(self.sync())
    }

    fn trim(&self, offset: u64, len: u32, fua: bool) -> DeviceFuture<'_, ()> {
        Box::pin(async move {
            match self.fallocate(offset, u64::from(len), PUNCH).await {
                Err(e) if unsupported(&e) => return Ok(()), // advisory: nothing to discard
                r => r?,
            }
            if fua {
                self.sync().await?;
            }
            Ok(())
        })
    }

    fn write_zeroes(&self, offset: u64, len: u32, flags: ZeroFlags) -> DeviceFuture<'_, ()> {
        Box::pin(async move {
            let len64 = u64::from(len);
            // Block devices zero a punched range without fallback; ZERO_RANGE may write.
            let modes: &[i32] = match (flags.no_hole, self.block_device && flags.fast) {
                (false, _) => &[PUNCH, ZERO_RANGE],
                (true, false) => &[ZERO_RANGE],
                (true, true) => &[],
            };
            let mut done = false;
            for &mode in modes {
                match self.fallocate(offset, len64, mode).await {
                    Ok(()) => {
                        done = true;
                        break;
                    }
                    Err(e) if unsupported(&e) => continue,
                    Err(e) => return Err(e),
                }
            }
            if !done {
                if flags.fast {
                    return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
                }
                self.write_zero_run(offset, len).await?;
            }
            if flags.fua {
                self.sync().await?;
            }
            Ok(())
        })
    }

    fn cache(&self, offset: u64, len: u32) -> DeviceFuture<'_, ()> {
        Box::pin(self.blocking(move |f| {
            // SAFETY: posix_fadvise takes no memory; an advisory failure is not an error here.
            unsafe {
                libc::posix_fadvise(
                    f.as_raw_fd(),
                    offset as i64,
                    i64::from(len),
                    libc::POSIX_FADV_WILLNEED,
                )
            };
            Ok(())
        }))
    }

    fn extents(&self, offset: u64, len: u32) -> DeviceFuture<'_, Vec<Extent>> {
        Box::pin(self.blocking(move |f| Ok(map_extents(f, offset, u64::from(len)))))
    }
}

/// The data/hole map of `[offset, offset+len)` from SEEK_DATA / SEEK_HOLE; all-data where the
/// file system cannot tell.
fn map_extents(f: &File, offset: u64, len: u64) -> Vec<Extent> {
    let fd = f.as_raw_fd();
    let end = offset + len;
    let seek = |pos: u64, whence| {
        // SAFETY: lseek with SEEK_DATA/SEEK_HOLE moves only the file offset, which positional
        // I/O on this fd never uses.
        let r = unsafe { libc::lseek(fd, pos as i64, whence) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as u64)
        }
    };
    let mut out = Vec::new();
    let mut pos = offset;
    while pos < end && out.len() < 1024 {
        let data = match seek(pos, libc::SEEK_DATA) {
            Ok(d) => d.min(end),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => end,
            Err(_) => {
                out.push(Extent {
                    length: end - pos,
                    flags: 0,
                });
                break;
            }
        };
        if data > pos {
            out.push(Extent {
                length: data - pos,
                flags: STATE_HOLE | STATE_ZERO,
            });
            pos = data;
            continue;
        }
        let hole = seek(pos, libc::SEEK_HOLE)
            .map_or(end, |h| h.min(end))
            .max(pos + 1);
        out.push(Extent {
            length: hole - pos,
            flags: 0,
        });
        pos = hole;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(engine: IoEngine, size: u64) -> (tempfile::TempDir, FileDevice) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.img");
        File::create(&p).unwrap().set_len(size).unwrap();
        let d = FileDevice::open(
            &p,
            FileOptions {
                engine,
                ..Default::default()
            },
        )
        .unwrap();
        (dir, d)
    }

    async fn round_trip(engine: IoEngine) {
        let (_d, dev) = device(engine, 1 << 20);
        let data: Vec<u8> = (0..70_000u32).map(|i| (i * 7) as u8).collect();
        dev.write(4097, Bytes::from(data.clone()), true)
            .await
            .unwrap();
        assert_eq!(&dev.read(4097, 70_000).await.unwrap()[..], &data[..]);
        dev.flush().await.unwrap();
        dev.write_zeroes(
            4097,
            10,
            ZeroFlags {
                no_hole: true,
                fast: false,
                fua: true,
            },
        )
        .await
        .unwrap();
        assert!(dev.read(4097, 10).await.unwrap().iter().all(|b| *b == 0));
        dev.trim(0, 1 << 20, false).await.unwrap();
        assert!(dev.read(0, 1 << 20).await.unwrap().iter().all(|b| *b == 0));
        dev.cache(0, 4096).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uring_round_trip() {
        round_trip(IoEngine::Auto).await;
    }

    /// O_DIRECT bypasses the inline page-cache paths, so reads and writes go through the ring.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uring_direct_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.img");
        File::create(&p).unwrap().set_len(1 << 20).unwrap();
        let opts = FileOptions {
            direct: true,
            ..Default::default()
        };
        let dev = FileDevice::open(&p, opts).unwrap();
        assert_eq!(dev.engine_name(), "io_uring");
        assert_eq!(dev.block_sizes().minimum, 4096);
        // An unaligned source buffer is copied into an aligned one before the write.
        let data = Bytes::from(vec![9u8; 8192 + 1]).slice(1..);
        dev.write(4096, data.clone(), false).await.unwrap();
        dev.write(16384, data.clone(), true).await.unwrap();
        assert_eq!(dev.read(4096, 8192).await.unwrap(), data);
        assert_eq!(dev.read(16384, 8192).await.unwrap(), data);
        let back = std::fs::read(&p).unwrap();
        assert!(back[4096..12288].iter().all(|b| *b == 9));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn threads_round_trip() {
        round_trip(IoEngine::Threads).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn extents_report_holes_and_data() {
        let (_d, dev) = device(IoEngine::Auto, 1 << 20);
        dev.write(256 * 1024, Bytes::from(vec![1u8; 4096]), false)
            .await
            .unwrap();
        let ex = dev.extents(0, 1 << 20).await.unwrap();
        assert_eq!(ex.iter().map(|e| e.length).sum::<u64>(), 1 << 20);
        assert_eq!(
            ex[0],
            Extent {
                length: 256 * 1024,
                flags: STATE_HOLE | STATE_ZERO
            }
        );
        assert_eq!(ex[1].flags, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reading_past_a_truncated_end_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.img");
        File::create(&p).unwrap().set_len(8192).unwrap();
        let dev = FileDevice::open(&p, FileOptions::default()).unwrap();
        File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(4096)
            .unwrap();
        assert!(dev.read(0, 8192).await.is_err());
    }

    #[test]
    fn aligned_buffers_are_aligned() {
        for len in [1, 4096, 100_000] {
            let v = aligned_buffer(len, DIRECT_ALIGN);
            assert_eq!((v.as_ptr() as usize + v.len()) % DIRECT_ALIGN, 0);
            assert!(v.capacity() - v.len() >= len);
        }
        let b = aligned_copy(&[1, 2, 3], DIRECT_ALIGN);
        assert_eq!(b.as_ptr() as usize % DIRECT_ALIGN, 0);
        assert_eq!(&b[..], &[1, 2, 3]);
    }
}
