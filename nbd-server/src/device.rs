//! The storage an export serves: a `BlockDevice` declares what it can do and performs it.
//!
//! The server checks bounds, alignment and read-only-ness before calling a device, so a device
//! only sees requests inside `[0, size)` that its capabilities allow.

use std::future::Future;
use std::io;
use std::pin::Pin;

use bytes::Bytes;

/// A boxed future as the trait's methods return it (object-safe, `Send`).
pub type DeviceFuture<'a, T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send + 'a>>;

/// What a device supports; the server advertises exactly this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// FLUSH makes every completed write durable.
    pub flush: bool,
    /// A write with `fua` is durable when it completes.
    pub fua: bool,
    /// TRIM may discard data.
    pub trim: bool,
    /// WRITE_ZEROES is supported (emulated or native).
    pub write_zeroes: bool,
    /// Zeroing is cheaper than writing zeroes (answers FAST_ZERO truthfully).
    pub fast_zero: bool,
    /// CACHE (prefetch) does something useful.
    pub cache: bool,
    /// FLUSH and FUA on one connection cover writes completed on every other connection.
    pub multi_conn: bool,
    /// Rotational medium (a scheduling hint for clients).
    pub rotational: bool,
    /// `extents` reports holes and zeroes; when false the server reports all-data.
    pub block_status: bool,
}

impl Capabilities {
    /// Every capability on: a device that honours everything (memory, tests).
    pub const ALL: Capabilities = Capabilities {
        flush: true,
        fua: true,
        trim: true,
        write_zeroes: true,
        fast_zero: true,
        cache: true,
        multi_conn: true,
        rotational: false,
        block_status: true,
    };
}

/// Block size constraints, as `NBD_INFO_BLOCK_SIZE` carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    pub minimum: u32,
    pub preferred: u32,
    pub maximum: u32,
}

/// How WRITE_ZEROES may be carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZeroFlags {
    /// The range must stay allocated (`NO_HOLE`).
    pub no_hole: bool,
    /// Fail with `ENOTSUP` rather than fall back to writing zeroes (`FAST_ZERO`).
    pub fast: bool,
    /// Durable on completion (`FUA`).
    pub fua: bool,
}

/// One run of the `base:allocation` map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub length: u64,
    /// `STATE_HOLE` / `STATE_ZERO` bits.
    pub flags: u32,
}

/// Storage behind an export. Offsets and lengths are in bytes and already validated.
pub trait BlockDevice: Send + Sync + 'static {
    /// Size in bytes.
    fn size(&self) -> u64;
    fn capabilities(&self) -> Capabilities;
    fn block_sizes(&self) -> BlockSizes;
    /// Reads exactly `len` bytes at `offset`.
    fn read(&self, offset: u64, len: u32) -> DeviceFuture<'_, Bytes>;
    /// Writes `data` at `offset`; durable on completion when `fua`.
    fn write(&self, offset: u64, data: Bytes, fua: bool) -> DeviceFuture<'_, ()>;
    /// Makes every completed write durable.
    fn flush(&self) -> DeviceFuture<'_, ()>;
    /// Discards a range (advisory).
    fn trim(&self, offset: u64, len: u32, fua: bool) -> DeviceFuture<'_, ()>;
    /// Makes a range read as zeroes.
    fn write_zeroes(&self, offset: u64, len: u32, flags: ZeroFlags) -> DeviceFuture<'_, ()>;
    /// Prefetch hint.
    fn cache(&self, offset: u64, len: u32) -> DeviceFuture<'_, ()>;
    /// The allocation map from `offset`, covering at most `len` bytes and at least one extent.
    fn extents(&self, offset: u64, len: u32) -> DeviceFuture<'_, Vec<Extent>>;
}
