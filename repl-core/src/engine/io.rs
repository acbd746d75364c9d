//! What goes in and out of the engine: requests from the block layer, disk operations for the
//! daemon to perform, and their completions.

use bytes::Bytes;

use crate::types::Sector;

/// Identifies a block-layer request until its `Complete` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReqId(pub u64);

/// Identifies a disk operation until its `DiskDone` input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u64);

/// Largest range one request may cover; the block layer splits larger TRIMs and zeroings.
pub const MAX_REQUEST_BYTES: u64 = 32 << 20;

/// A request from the block layer (NBD), in bytes of the replicated volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Read { offset: u64, len: u32 },
    Write { offset: u64, data: Bytes, fua: bool },
    Flush,
    Trim { offset: u64, len: u32 },
    WriteZeroes { offset: u64, len: u32, fua: bool },
}

impl Request {
    /// The byte range a data request touches (`None` for FLUSH).
    pub fn range(&self) -> Option<(u64, u64)> {
        match self {
            Request::Read { offset, len }
            | Request::Trim { offset, len }
            | Request::WriteZeroes { offset, len, .. } => Some((*offset, u64::from(*len))),
            Request::Write { offset, data, .. } => Some((*offset, data.len() as u64)),
            Request::Flush => None,
        }
    }

    /// Whether it changes data (and so needs the activity log and the Primary role).
    pub fn writes(&self) -> bool {
        !matches!(self, Request::Read { .. } | Request::Flush)
    }
}

/// Why a request was refused before anything was done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the device is not Primary")]
    NotPrimary,
    #[error("no local disk with usable data ({0})")]
    NoData(crate::state::DiskState),
    #[error("range {offset}+{len} beyond the end ({size} bytes)")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("request of {0} bytes above the {MAX_REQUEST_BYTES}-byte limit")]
    TooLarge(u64),
    #[error("the device is going down")]
    Down,
    #[error("range {offset}+{len} is not aligned to 512-byte sectors")]
    Unaligned { offset: u64, len: u64 },
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("I/O error on the backing device")]
    Io,
    #[error("the disk was detached")]
    Detached,
}

/// A disk operation for the daemon. Data offsets are bytes of the backing device; metadata
/// offsets are bytes of the metadata device (the same device for internal metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskOp {
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        data: Bytes,
        fua: bool,
    },
    Flush,
    Trim {
        offset: u64,
        len: u32,
    },
    WriteZeroes {
        offset: u64,
        len: u32,
        fua: bool,
    },
    /// A metadata block write: every data write completed before it is made durable first
    /// (a preflush, DRBD's `md-flushes`), then the block itself (FUA).
    MetaWrite {
        offset: u64,
        data: Bytes,
    },
}

/// The result of a disk operation as the daemon reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskResult {
    Done,
    /// The bytes of a completed `Read`.
    Data(Bytes),
    Failed,
}

/// Something the engine wants done or reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Perform this disk operation and report it with [`crate::engine::Engine::disk_done`].
    Disk { op: OpId, kind: DiskOp },
    /// A request finished: data for a read, nothing for the others.
    Complete {
        req: ReqId,
        result: Result<Option<Bytes>, RequestError>,
    },
    /// Something users see: state changes and notable events, in DRBD's wording.
    Event(crate::engine::Event),
    /// Send this packet to the peer, in order.
    Send(crate::wire::Packet),
    /// Close the peer link (after sending what was queued); reconnect when `reconnect`.
    /// The engine already treats the link as gone.
    Disconnect { reconnect: bool },
}

/// `(first sector, sector count)` covering a byte range.
pub fn sectors(offset: u64, len: u64) -> (Sector, u64) {
    let first = offset / Sector::SIZE;
    let end = (offset + len).div_ceil(Sector::SIZE);
    (Sector(first), end - first)
}
