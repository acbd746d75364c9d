//! Where the v08 metadata lives on its device: byte offsets and sizes of the superblock, the
//! activity-log ring and the bitmap, computed the way `drbdmeta` computes them.

use super::superblock::Superblock;
use super::MetaError;
use crate::types::Sector;

/// Metadata I/O unit: superblock, AL transactions and bitmap pages are all 4 KiB blocks.
pub const BLOCK_BYTES: u64 = 4096;
/// Sectors in one metadata block; also the superblock's size and the external AL offset.
const BLOCK_SECTORS: u64 = BLOCK_BYTES / Sector::SIZE;
/// `drbdmeta` refuses devices smaller than this (`SO_MUCH`).
pub const MIN_DEVICE_BYTES: u64 = 68 * 1024;
/// The largest device a bitmap can describe (2^41 sectors = 1 PiB).
pub const MAX_DEVICE_SECTORS: u64 = 1 << 41;
/// Storage bytes per bitmap bit; the only value 8.4 accepts.
pub const BYTES_PER_BIT: u64 = 4096;

/// Shape of the activity-log ring: `stripes` runs of `stripe_size_4k` blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlGeometry {
    stripes: u32,
    stripe_size_4k: u32,
}

impl Default for AlGeometry {
    /// One stripe of 8 blocks: the 32 KiB ring `create-md` makes without options.
    fn default() -> Self {
        AlGeometry {
            stripes: 1,
            stripe_size_4k: 8,
        }
    }
}

impl AlGeometry {
    /// Ring of at least 8 and at most 4 Mi blocks, as the kernel accepts at attach.
    ///
    /// # Errors
    /// `BadAlGeometry` when a value is zero or the ring is outside those bounds.
    pub fn new(stripes: u32, stripe_size_4k: u32) -> Result<Self, MetaError> {
        let blocks = u64::from(stripes) * u64::from(stripe_size_4k);
        if stripes == 0 || stripe_size_4k == 0 || !(8..=4 * 1024 * 1024).contains(&blocks) {
            return Err(MetaError::BadAlGeometry {
                stripes,
                stripe_size_4k,
            });
        }
        Ok(AlGeometry {
            stripes,
            stripe_size_4k,
        })
    }

    pub fn stripes(self) -> u32 {
        self.stripes
    }

    pub fn stripe_size_4k(self) -> u32 {
        self.stripe_size_4k
    }

    /// Number of 4 KiB transaction blocks in the ring.
    pub fn blocks(self) -> u32 {
        // Bounded by `new` to 4 Mi.
        self.stripes * self.stripe_size_4k
    }

    pub fn sectors(self) -> u64 {
        u64::from(self.blocks()) * BLOCK_SECTORS
    }
}

/// Internal metadata sits at the end of the backing device; flexible external metadata fills a
/// device of its own, starting at offset 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Internal,
    FlexExternal,
}

/// The metadata regions of one device, in bytes on the metadata device, plus the offsets in the
/// superblock's own units (sectors relative to the superblock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub placement: Placement,
    /// Byte offset of the superblock.
    pub md_offset: u64,
    /// Total metadata size (`md_size_sect`).
    pub md_size: Sector,
    /// AL ring start, sectors relative to the superblock.
    pub al_offset: i32,
    /// Bitmap start, sectors relative to the superblock.
    pub bm_offset: i32,
    pub al: AlGeometry,
    /// Bytes reserved for the bitmap on disk (a multiple of 4 KiB).
    pub bm_bytes: u64,
    /// Largest data size this metadata can serve (`max_usable_sect`).
    pub max_usable: Sector,
}

impl Layout {
    /// Internal metadata for a backing device of `device_bytes`.
    ///
    /// # Errors
    /// `DeviceTooSmall` / `DeviceTooLarge` when the metadata cannot fit or the bitmap would
    /// exceed what v08 can address.
    pub fn internal(device_bytes: u64, al: AlGeometry) -> Result<Layout, MetaError> {
        if device_bytes < MIN_DEVICE_BYTES {
            return Err(MetaError::DeviceTooSmall {
                bytes: device_bytes,
            });
        }
        let sectors = device_bytes / Sector::SIZE;
        if sectors > MAX_DEVICE_SECTORS {
            return Err(MetaError::DeviceTooLarge {
                bytes: device_bytes,
            });
        }
        let md_offset = (device_bytes - BLOCK_BYTES) & !(BLOCK_BYTES - 1);
        let bm_bytes = bitmap_bytes(Sector(sectors));
        let md_sectors = (bm_bytes / Sector::SIZE).next_multiple_of(BLOCK_SECTORS)
            + BLOCK_SECTORS
            + al.sectors();
        let md_size = i32::try_from(md_sectors).map_err(|_| MetaError::DeviceTooLarge {
            bytes: device_bytes,
        })?;
        let al_sectors = i32::try_from(al.sectors()).map_err(|_| MetaError::DeviceTooLarge {
            bytes: device_bytes,
        })?;
        let bm_offset = BLOCK_SECTORS as i32 - md_size;
        let bm_start = md_offset
            .checked_sub(u64::from(bm_offset.unsigned_abs()) * Sector::SIZE)
            .ok_or(MetaError::DeviceTooSmall {
                bytes: device_bytes,
            })?;
        Ok(Layout {
            placement: Placement::Internal,
            md_offset,
            md_size: Sector(md_sectors),
            al_offset: -al_sectors,
            bm_offset,
            al,
            bm_bytes,
            max_usable: Sector(bm_start / Sector::SIZE),
        })
    }

    /// Flexible external metadata occupying a whole device of `md_device_bytes`.
    ///
    /// # Errors
    /// `DeviceTooSmall` when the AL leaves no room for a bitmap; `DeviceTooLarge` when the size
    /// does not fit `md_size_sect`.
    pub fn flex_external(md_device_bytes: u64, al: AlGeometry) -> Result<Layout, MetaError> {
        if md_device_bytes < MIN_DEVICE_BYTES {
            return Err(MetaError::DeviceTooSmall {
                bytes: md_device_bytes,
            });
        }
        let md_sectors = md_device_bytes / Sector::SIZE;
        let too_large = MetaError::DeviceTooLarge {
            bytes: md_device_bytes,
        };
        let bm_offset_sectors = BLOCK_SECTORS + al.sectors();
        i32::try_from(md_sectors).map_err(|_| too_large.clone())?;
        let bm_offset = i32::try_from(bm_offset_sectors).map_err(|_| too_large)?;
        let bm_sectors = md_sectors
            .checked_sub(bm_offset_sectors)
            .filter(|&s| s > 0)
            .ok_or(MetaError::DeviceTooSmall {
                bytes: md_device_bytes,
            })?;
        let bm_bytes = bm_sectors * Sector::SIZE;
        Ok(Layout {
            placement: Placement::FlexExternal,
            md_offset: 0,
            md_size: Sector(md_sectors),
            al_offset: BLOCK_SECTORS as i32,
            bm_offset,
            al,
            bm_bytes,
            // One bit per 4 KiB (8 sectors) of every bitmap byte's 8 bits.
            max_usable: Sector(bm_bytes * 8 * 8),
        })
    }

    /// The layout a superblock read from a device of `device_bytes` claims, checked against the
    /// layout `drbdmeta` would compute for that device.
    ///
    /// # Errors
    /// `OffsetMismatch` naming the first field that disagrees, or the constructors' errors.
    pub fn of_superblock(
        sb: &Superblock,
        placement: Placement,
        device_bytes: u64,
    ) -> Result<Layout, MetaError> {
        let expected = match placement {
            Placement::Internal => Layout::internal(device_bytes, sb.al)?,
            Placement::FlexExternal => Layout::flex_external(device_bytes, sb.al)?,
        };
        let mismatch = |field, expected: i64, found: i64| {
            Err(MetaError::OffsetMismatch {
                field,
                expected,
                found,
            })
        };
        if sb.al_offset != expected.al_offset {
            return mismatch("al_offset", expected.al_offset.into(), sb.al_offset.into());
        }
        if sb.bm_offset != expected.bm_offset {
            return mismatch("bm_offset", expected.bm_offset.into(), sb.bm_offset.into());
        }
        // drbdmeta does not check md_size_sect for external metadata; neither do we, but the
        // regions must still lie inside the device.
        let md_size = u64::from(sb.md_size_sect);
        match placement {
            Placement::Internal if md_size != expected.md_size.0 => {
                return mismatch("md_size_sect", expected.md_size.0 as i64, md_size as i64);
            }
            Placement::FlexExternal if md_size > expected.md_size.0 => {
                return mismatch("md_size_sect", expected.md_size.0 as i64, md_size as i64);
            }
            _ => {}
        }
        Ok(expected)
    }

    /// Byte offset of the first AL ring block.
    pub fn al_start(&self) -> u64 {
        offset_from(self.md_offset, self.al_offset)
    }

    /// Byte offset of the first bitmap page.
    pub fn bm_start(&self) -> u64 {
        offset_from(self.md_offset, self.bm_offset)
    }

    /// Byte offset of ring block `block` (see [`crate::al::ring_block`]).
    pub fn al_block_offset(&self, block: u32) -> u64 {
        self.al_start() + u64::from(block) * BLOCK_BYTES
    }

    /// Byte offset of bitmap page `page`.
    pub fn bm_page_offset(&self, page: u64) -> u64 {
        self.bm_start() + page * BLOCK_BYTES
    }

    /// Bytes of the AL ring.
    pub fn al_bytes(&self) -> u64 {
        u64::from(self.al.blocks()) * BLOCK_BYTES
    }
}

/// On-disk bitmap bytes for a device of `sectors`: one bit per 4 KiB, whole 64-bit words,
/// whole 4 KiB pages (`bm_bytes()` in drbdmeta).
pub fn bitmap_bytes(sectors: Sector) -> u64 {
    let per_bit = BYTES_PER_BIT / Sector::SIZE;
    let bits = sectors.0.div_ceil(per_bit).next_multiple_of(64);
    (bits / 8).next_multiple_of(BLOCK_BYTES)
}

/// `base` moved by `sectors` (negative for internal metadata). Layout constructors guarantee
/// the result is inside the device.
fn offset_from(base: u64, sectors: i32) -> u64 {
    let delta = u64::from(sectors.unsigned_abs()) * Sector::SIZE;
    if sectors < 0 {
        base - delta
    } else {
        base + delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    const GIB: u64 = 1024 * MIB;
    const TIB: u64 = 1024 * GIB;

    /// The table in the reference, section 11 ("Sizes").
    #[test]
    fn internal_sizes_match_reference_table() {
        let rows: [(u64, u64, u64, i32, u64); 6] = [
            (256 * MIB, 8 * KIB, 88, -80, 524_200),
            (GIB, 32 * KIB, 136, -128, 2_097_016),
            (100 * GIB, 3200 * KIB, 6472, -6464, 209_708_728),
            (TIB, 32 * MIB, 65_608, -65_600, 2_147_418_040),
            (4 * TIB, 128 * MIB, 262_216, -262_208, 8_589_672_376),
            (16 * TIB, 512 * MIB, 1_048_648, -1_048_640, 34_358_689_720),
        ];
        for (dev, bm, md, bm_off, usable) in rows {
            let l = Layout::internal(dev, AlGeometry::default()).unwrap();
            assert_eq!(l.bm_bytes, bm, "{dev}");
            assert_eq!(l.md_size, Sector(md), "{dev}");
            assert_eq!(l.al_offset, -64, "{dev}");
            assert_eq!(l.bm_offset, bm_off, "{dev}");
            assert_eq!(l.max_usable, Sector(usable), "{dev}");
        }
        let l = Layout::internal(256 * MIB, AlGeometry::default()).unwrap();
        assert_eq!(
            (l.md_offset, l.al_start(), l.bm_start()),
            (268_431_360, 268_398_592, 268_390_400)
        );
        let l = Layout::internal(TIB, AlGeometry::default()).unwrap();
        assert_eq!(
            (l.md_offset, l.al_start(), l.bm_start()),
            (1_099_511_623_680, 1_099_511_590_912, 1_099_478_036_480)
        );
    }

    #[test]
    fn striped_al_and_external_placement() {
        let al = AlGeometry::new(4, 16).unwrap();
        let l = Layout::internal(GIB, al).unwrap();
        assert_eq!(l.al_offset, -512);
        assert_eq!(l.md_size, Sector(64 + 8 + 512));
        assert_eq!(l.al_bytes(), 256 * KIB);
        let e = Layout::flex_external(64 * MIB, AlGeometry::default()).unwrap();
        assert_eq!(
            (e.md_offset, e.al_start(), e.bm_start()),
            (0, 4096, 4096 + 32 * KIB)
        );
        assert_eq!(e.bm_bytes, 64 * MIB - 36 * KIB);
        assert!(AlGeometry::new(1, 7).is_err());
        assert!(AlGeometry::new(0, 8).is_err());
        assert!(Layout::internal(64 * KIB, AlGeometry::default()).is_err());
    }
}
