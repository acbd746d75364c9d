//! Opening a volume's backing and metadata devices, reading what the engine attaches, and
//! performing the engine's disk operations on them.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use drbdadm_compat::control::ControlError;
use drbdadm_compat::res::resolve::{EffectiveVolume, MetaDisk};
use nbd_server::device::{BlockDevice, ZeroFlags};
use nbd_server::file::{FileDevice, FileOptions};
use repl_core::bitmap::{Bitmap, PAGE_BYTES};
use repl_core::engine::{DiskOp, DiskResult, OnDisk};
use repl_core::meta::{Layout, MetaError, Placement, Superblock, BLOCK_BYTES, MIN_DEVICE_BYTES};
use repl_core::types::Sector;

/// `drbdsetup`'s exit code for `ERR_*` failures.
const EXIT_FAILURE: i32 = 10;

/// A volume's opened devices and its metadata as read at `up`.
pub struct Backing {
    pub data: Arc<FileDevice>,
    /// The data device again for internal metadata.
    pub meta: Arc<FileDevice>,
    pub on_disk: OnDisk,
    /// Usable bytes (what the engine and the export serve).
    pub size: u64,
}

impl std::fmt::Debug for Backing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backing")
            .field("layout", &self.on_disk.layout)
            .field("size", &self.size)
            .finish()
    }
}

fn fail(m: String) -> ControlError {
    ControlError::new(EXIT_FAILURE, m)
}

/// Opens a device read-write and returns it with its size in bytes.
fn open_sized(path: &str, what: &str, res: &str) -> Result<(File, u64), ControlError> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| {
            fail(format!(
                "Failure: (104) Can not open {what} {path}: {e}; check 'disk'/'meta-disk' of {res}"
            ))
        })?;
    let size = f
        .seek(SeekFrom::End(0))
        .map_err(|e| fail(format!("cannot size {what} {path}: {e}")))?;
    Ok((f, size))
}

fn read_at(f: &File, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, ControlError> {
    let len = usize::try_from(len).map_err(|_| fail(format!("{path}: region too large")))?;
    let mut buf = vec![0; len];
    f.read_exact_at(&mut buf, offset)
        .map_err(|e| fail(format!("cannot read meta data on {path}: {e}")))?;
    Ok(buf)
}

/// Reads the bitmap of `layout` a megabyte at a time into its decoded form: the whole area
/// is never in memory twice (a 1 TiB volume's is 32 MiB).
fn read_bitmap(f: &File, path: &str, layout: &Layout) -> Result<Bitmap, ControlError> {
    const CHUNK: u64 = 1 << 20;
    let mut bitmap = Bitmap::with_bits(OnDisk::bitmap_bits(layout));
    let page = PAGE_BYTES as u64;
    let need = bitmap.pages() * page;
    if need > layout.bm_bytes {
        return Err(fail(format!(
            "meta data on {path}: the bitmap area ({} bytes) is smaller than the device needs ({need})",
            layout.bm_bytes
        )));
    }
    let mut done = 0;
    while done < need {
        let n = (need - done).min(CHUNK);
        let bytes = read_at(f, path, layout.bm_start() + done, n)?;
        for (i, p) in bytes.chunks_exact(PAGE_BYTES).enumerate() {
            bitmap
                .decode_page(done / page + i as u64, p)
                .map_err(|e| fail(format!("meta data on {path}: bitmap: {e}")))?;
        }
        done += n;
    }
    Ok(bitmap)
}

/// Opens the devices of `vol` of resource `res` and reads its metadata. Nothing is written.
///
/// # Errors
/// A missing or too small device, metadata that does not decode or does not fit the device,
/// unsupported placements; one line each, naming the device and what to do.
pub fn open_volume(res: &str, vol: &EffectiveVolume) -> Result<Backing, ControlError> {
    let Some(disk) = vol.disk.as_deref() else {
        return Err(fail(format!(
            "{res}: volume {} has no disk ('disk none'); nothing to open",
            vol.vnr
        )));
    };
    let (data_file, data_bytes) = open_sized(disk, "backing device", res)?;
    let create_md = format!("run drbdadm create-md {res} first");
    let (md_path, md_file, md_bytes, placement) = match &vol.meta_disk {
        MetaDisk::Internal => {
            if data_bytes < MIN_DEVICE_BYTES {
                return Err(fail(format!(
                    "Failure: (111) backing device {disk} of {res} is too small ({data_bytes} bytes) for internal meta data; use a device of at least {MIN_DEVICE_BYTES} bytes"
                )));
            }
            (disk.to_string(), None, data_bytes, Placement::Internal)
        }
        MetaDisk::FlexExternal { device } => {
            let (f, n) = open_sized(device, "meta device", res)?;
            if n < MIN_DEVICE_BYTES {
                return Err(fail(format!(
                    "Failure: (112) Meta device too small: {device} of {res} has {n} bytes; use a device of at least {MIN_DEVICE_BYTES} bytes"
                )));
            }
            (device.clone(), Some(f), n, Placement::FlexExternal)
        }
        MetaDisk::Indexed { device, index } => {
            return Err(fail(format!(
                "{res}: indexed meta-disk {device} [{index}] is not supported; use 'meta-disk internal' or a flexible external meta-disk"
            )));
        }
    };
    let mf = md_file.as_ref().unwrap_or(&data_file);
    let sb_offset = match placement {
        Placement::Internal => (md_bytes - BLOCK_BYTES) & !(BLOCK_BYTES - 1),
        Placement::FlexExternal => 0,
    };
    let block = read_at(mf, &md_path, sb_offset, BLOCK_BYTES)?;
    let sb = Superblock::decode(&block).map_err(|e| match e {
        MetaError::BadMagic(_) => fail(format!(
            "Failure: (118) No valid meta data on {md_path}; {create_md}"
        )),
        e => fail(format!(
            "meta data on {md_path} is unusable ({e}); {create_md}"
        )),
    })?;
    let mut layout = Layout::of_superblock(&sb, placement, md_bytes).map_err(|e| {
        fail(format!(
            "meta data on {md_path} does not fit the device ({e}); the device was resized or the meta data belongs elsewhere: {create_md}"
        ))
    })?;
    if placement == Placement::FlexExternal {
        // The bitmap may cover more than the data device holds.
        layout.max_usable = layout.max_usable.min(Sector(data_bytes / Sector::SIZE));
    }
    if layout.max_usable.0 == 0 {
        return Err(fail(format!(
            "Failure: (111) backing device {disk} of {res} leaves no room for data"
        )));
    }
    let al_ring = read_at(mf, &md_path, layout.al_start(), layout.al_bytes())?;
    let bitmap = read_bitmap(mf, &md_path, &layout)?;
    drop(data_file);
    drop(md_file);
    let open = |p: &str| {
        FileDevice::open(Path::new(p), FileOptions::default())
            .map(Arc::new)
            .map_err(|e| fail(format!("Failure: (104) Can not open {p}: {e}")))
    };
    let data = open(disk)?;
    let meta = match placement {
        Placement::Internal => data.clone(),
        Placement::FlexExternal => open(&md_path)?,
    };
    tracing::info!(
        "block drbd{}: disk {disk} ({} I/O), meta data on {md_path}, {} KB usable",
        vol.minor,
        data.engine_name(),
        layout.max_usable.bytes() / 1024
    );
    Ok(Backing {
        data,
        meta,
        size: layout.max_usable.bytes(),
        on_disk: OnDisk {
            layout,
            superblock: sb,
            al_ring,
            bitmap,
        },
    })
}

/// What a disk operation was, for the log line of its failure.
struct OpName(&'static str, Option<(u64, u64)>);

impl std::fmt::Display for OpName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.1 {
            Some((len, offset)) => write!(f, "{} of {len} bytes at {offset}", self.0),
            None => f.write_str(self.0),
        }
    }
}

/// Performs one of the engine's disk operations; metadata writes are durable (FUA).
pub async fn perform(data: &FileDevice, meta: &FileDevice, kind: DiskOp) -> DiskResult {
    let (what, r) = match kind {
        DiskOp::Read { offset, len } => {
            return match data.read(offset, len).await {
                Ok(b) => DiskResult::Data(b),
                Err(e) => {
                    tracing::error!("read of {len} bytes at {offset}: {e}");
                    DiskResult::Failed
                }
            }
        }
        DiskOp::Write {
            offset,
            data: d,
            fua,
        } => (
            OpName("write", Some((d.len() as u64, offset))),
            data.write(offset, d, fua).await,
        ),
        // With buffered I/O, this is where the errors of earlier writes surface (writeback).
        DiskOp::Flush => (OpName("flush", None), data.flush().await),
        DiskOp::Trim { offset, len } => (
            OpName("trim", Some((u64::from(len), offset))),
            data.trim(offset, len, false).await,
        ),
        DiskOp::WriteZeroes { offset, len, fua } => {
            let flags = ZeroFlags {
                no_hole: false,
                fast: false,
                fua,
            };
            (
                OpName("write-zeroes", Some((u64::from(len), offset))),
                data.write_zeroes(offset, len, flags).await,
            )
        }
        // DRBD's md-flushes: the data written before a metadata update is durable before
        // the update is, so metadata never claims more than the disk holds.
        DiskOp::MetaWrite { offset, data: d } => match data.flush().await {
            Ok(()) => (
                OpName("meta data write", Some((d.len() as u64, offset))),
                meta.write(offset, d, true).await,
            ),
            Err(e) => (OpName("flush before a meta data write", None), Err(e)),
        },
    };
    match r {
        Ok(()) => DiskResult::Done,
        Err(e) => {
            tracing::error!("disk I/O error: {what}: {e}");
            DiskResult::Failed
        }
    }
}
