//! DRBD v08 metadata: the superblock, where each region lives, and the writes that create it.
//! Pure functions over byte slices; the daemon does the reads and writes.

mod layout;
mod superblock;

pub use layout::{
    bitmap_bytes, AlGeometry, Layout, Placement, BLOCK_BYTES, BYTES_PER_BIT, MAX_DEVICE_SECTORS,
    MIN_DEVICE_BYTES,
};
pub use superblock::{
    MdFlags, MdState, Superblock, CREATE_MD_AL_EXTENTS, MAGIC_CLEAN, MAGIC_UNCLEAN,
};

use crate::al;

/// What is wrong with metadata or with the device it is meant for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("metadata block is {got} bytes, expected {expected}")]
    WrongSize { expected: u64, got: u64 },
    #[error("bad superblock magic {0:#010x}")]
    BadMagic(u32),
    #[error("unsupported bm_bytes_per_bit {0} (only 4096)")]
    UnsupportedBytesPerBit(u32),
    #[error("bad activity-log geometry: {stripes} stripes of {stripe_size_4k} blocks")]
    BadAlGeometry { stripes: u32, stripe_size_4k: u32 },
    #[error("device of {bytes} bytes is too small for metadata")]
    DeviceTooSmall { bytes: u64 },
    #[error("device of {bytes} bytes is too large for v08 metadata")]
    DeviceTooLarge { bytes: u64 },
    #[error("{field} is {found}, expected {expected} for this device")]
    OffsetMismatch {
        field: &'static str,
        expected: i64,
        found: i64,
    },
}

/// One write of a metadata plan, at a byte offset of the metadata device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaWrite {
    Data { offset: u64, bytes: Vec<u8> },
    Zeroes { offset: u64, len: u64 },
}

/// The writes that create fresh metadata (`create-md`): zeroed bitmap, initialized AL ring,
/// then the superblock. Apply them in order; the superblock goes last so that a crash part-way
/// leaves no valid magic rather than a superblock over garbage.
pub fn create_md(layout: &Layout, sb: &Superblock) -> Vec<MetaWrite> {
    vec![
        MetaWrite::Zeroes {
            offset: layout.bm_start(),
            len: layout.bm_bytes,
        },
        MetaWrite::Data {
            offset: layout.al_start(),
            bytes: al::initialized_ring(layout.al),
        },
        MetaWrite::Data {
            offset: layout.md_offset,
            bytes: sb.encode().to_vec(),
        },
    ]
}
