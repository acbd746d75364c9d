//! A RAM-backed device: for tests, fuzzing and as the simplest example of the trait.

use std::sync::Mutex;

use bytes::Bytes;

use crate::device::{BlockDevice, BlockSizes, Capabilities, DeviceFuture, Extent, ZeroFlags};
use crate::proto::MAX_PAYLOAD;

/// A volatile device of fixed size; every capability is on and trivially honoured.
pub struct MemoryDevice {
    data: Mutex<Vec<u8>>,
}

impl MemoryDevice {
    pub fn new(size: usize) -> Self {
        Self {
            data: Mutex::new(vec![0; size]),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Vec<u8>) -> T) -> T {
        let mut g = self.data.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    fn range(offset: u64, len: u32) -> std::ops::Range<usize> {
        offset as usize..offset as usize + len as usize
    }
}

impl BlockDevice for MemoryDevice {
    fn size(&self) -> u64 {
        self.with(|d| d.len() as u64)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            block_status: false,
            ..Capabilities::ALL
        }
    }

    fn block_sizes(&self) -> BlockSizes {
        BlockSizes {
            minimum: 1,
            preferred: 4096,
            maximum: MAX_PAYLOAD,
        }
    }

    fn read(&self, offset: u64, len: u32) -> DeviceFuture<'_, Bytes> {
        let b = self.with(|d| Bytes::copy_from_slice(&d[Self::range(offset, len)]));
        Box::pin(async move { Ok(b) })
    }

    fn write(&self, offset: u64, data: Bytes, _fua: bool) -> DeviceFuture<'_, ()> {
        self.with(|d| d[Self::range(offset, data.len() as u32)].copy_from_slice(&data));
        Box::pin(async { Ok(()) })
    }

    fn flush(&self) -> DeviceFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    fn trim(&self, offset: u64, len: u32, _fua: bool) -> DeviceFuture<'_, ()> {
        self.write_zeroes(
            offset,
            len,
            ZeroFlags {
                no_hole: false,
                fast: false,
                fua: false,
            },
        )
    }

    fn write_zeroes(&self, offset: u64, len: u32, _flags: ZeroFlags) -> DeviceFuture<'_, ()> {
        self.with(|d| d[Self::range(offset, len)].fill(0));
        Box::pin(async { Ok(()) })
    }

    fn cache(&self, _offset: u64, _len: u32) -> DeviceFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    fn extents(&self, _offset: u64, len: u32) -> DeviceFuture<'_, Vec<Extent>> {
        Box::pin(async move {
            Ok(vec![Extent {
                length: u64::from(len),
                flags: 0,
            }])
        })
    }
}
