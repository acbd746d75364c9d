//! The v08 superblock (`struct meta_data_on_disk`): a 4 KiB big-endian block whose fields all
//! lie in its first 512-byte sector, so a torn 4 KiB write still leaves one whole version.

use super::layout::{AlGeometry, Layout, BLOCK_BYTES, BYTES_PER_BIT};
use super::MetaError;
use crate::types::{Sector, Uuid};
use crate::uuid::GenerationUuids;

/// Magic of metadata that was closed cleanly (`DRBD_MD_MAGIC_08`).
pub const MAGIC_CLEAN: u32 = 0x8374_026b;
/// Magic written while attached; needs `apply-al` before the next attach.
pub const MAGIC_UNCLEAN: u32 = 0x8374_026c;
/// `al_nr_extents` that `create-md` writes; the engine rewrites its own at attach.
pub const CREATE_MD_AL_EXTENTS: u32 = 257;

/// The `MDF_*` flags word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MdFlags(pub u32);

impl MdFlags {
    pub const CONSISTENT: MdFlags = MdFlags(0x1);
    pub const PRIMARY_IND: MdFlags = MdFlags(0x2);
    pub const CONNECTED_IND: MdFlags = MdFlags(0x4);
    pub const FULL_SYNC: MdFlags = MdFlags(0x8);
    pub const WAS_UP_TO_DATE: MdFlags = MdFlags(0x10);
    pub const PEER_OUT_DATED: MdFlags = MdFlags(0x20);
    pub const CRASHED_PRIMARY: MdFlags = MdFlags(0x40);
    pub const AL_CLEAN: MdFlags = MdFlags(0x80);
    pub const AL_DISABLED: MdFlags = MdFlags(0x100);

    pub fn contains(self, other: MdFlags) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn with(self, other: MdFlags) -> MdFlags {
        MdFlags(self.0 | other.0)
    }

    pub fn without(self, other: MdFlags) -> MdFlags {
        MdFlags(self.0 & !other.0)
    }
}

/// Whether the superblock says the metadata was closed cleanly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MdState {
    Clean,
    Unclean,
}

/// A decoded superblock. Offsets are in the superblock's own units; [`Layout::of_superblock`]
/// checks them against the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// Last agreed data size (`la_size_sect`).
    pub la_size: Sector,
    pub uuids: GenerationUuids,
    /// Kept and written back unchanged; 8.4 never generates it.
    pub device_uuid: u64,
    pub flags: MdFlags,
    pub state: MdState,
    pub md_size_sect: u32,
    pub al_offset: i32,
    pub al_nr_extents: u32,
    pub bm_offset: i32,
    pub la_peer_max_bio_size: u32,
    pub al: AlGeometry,
}

impl Superblock {
    /// What `create-md` writes: just-created UUID, AL clean, size 0.
    pub fn fresh(layout: &Layout) -> Superblock {
        Superblock {
            la_size: Sector(0),
            uuids: GenerationUuids {
                current: Uuid::JUST_CREATED,
                ..GenerationUuids::default()
            },
            device_uuid: 0,
            flags: MdFlags::AL_CLEAN,
            state: MdState::Clean,
            // Layout constructors bound md_size to i32.
            md_size_sect: layout.md_size.0 as u32,
            al_offset: layout.al_offset,
            al_nr_extents: CREATE_MD_AL_EXTENTS,
            bm_offset: layout.bm_offset,
            la_peer_max_bio_size: 0,
            al: layout.al,
        }
    }

    /// Whether an AL replay must mark the hot extents out of sync (`need_to_apply_al`).
    pub fn must_apply_al(&self) -> bool {
        self.flags.contains(MdFlags::PRIMARY_IND)
    }

    /// The superblock to write when attaching: unclean magic and AL no longer clean, so that a
    /// crash before a clean close forces an AL replay.
    pub fn attached(&self) -> Superblock {
        Superblock {
            state: MdState::Unclean,
            flags: self.flags.without(MdFlags::AL_CLEAN),
            ..self.clone()
        }
    }

    /// What `apply-al` leaves: clean magic and AL clean; `PRIMARY_IND` stays as it was.
    pub fn al_applied(&self) -> Superblock {
        Superblock {
            state: MdState::Clean,
            flags: self.flags.with(MdFlags::AL_CLEAN),
            ..self.clone()
        }
    }

    /// Decode a 4 KiB superblock block. Bytes after the fields are ignored, like drbdmeta does.
    ///
    /// # Errors
    /// `WrongSize`, `BadMagic`, `UnsupportedBytesPerBit`, `BadAlGeometry`.
    pub fn decode(block: &[u8]) -> Result<Superblock, MetaError> {
        let b: &[u8; BLOCK_BYTES as usize] =
            block.try_into().map_err(|_| MetaError::WrongSize {
                expected: BLOCK_BYTES,
                got: block.len() as u64,
            })?;
        let u64_at = |o: usize| u64::from_be_bytes(field(b, o));
        let u32_at = |o: usize| u32::from_be_bytes(field(b, o));
        let i32_at = |o: usize| i32::from_be_bytes(field(b, o));
        let state = match u32_at(60) {
            MAGIC_CLEAN => MdState::Clean,
            MAGIC_UNCLEAN => MdState::Unclean,
            other => return Err(MetaError::BadMagic(other)),
        };
        let bytes_per_bit = u32_at(80);
        if u64::from(bytes_per_bit) != BYTES_PER_BIT {
            return Err(MetaError::UnsupportedBytesPerBit(bytes_per_bit));
        }
        let al = match (u32_at(88), u32_at(92)) {
            (0, 0) => AlGeometry::default(),
            (stripes, size) => AlGeometry::new(stripes, size)?,
        };
        Ok(Superblock {
            la_size: Sector(u64_at(0)),
            uuids: GenerationUuids {
                current: Uuid(u64_at(8)),
                bitmap: Uuid(u64_at(16)),
                history: [Uuid(u64_at(24)), Uuid(u64_at(32))],
            },
            device_uuid: u64_at(40),
            flags: MdFlags(u32_at(56)),
            state,
            md_size_sect: u32_at(64),
            al_offset: i32_at(68),
            al_nr_extents: u32_at(72),
            bm_offset: i32_at(76),
            la_peer_max_bio_size: u32_at(84),
            al,
        })
    }

    /// Encode as a 4 KiB block, zero after the fields.
    pub fn encode(&self) -> [u8; BLOCK_BYTES as usize] {
        let mut b = [0u8; BLOCK_BYTES as usize];
        let magic = match self.state {
            MdState::Clean => MAGIC_CLEAN,
            MdState::Unclean => MAGIC_UNCLEAN,
        };
        let fields: [(usize, &[u8]); 17] = [
            (0, &self.la_size.0.to_be_bytes()),
            (8, &self.uuids.current.0.to_be_bytes()),
            (16, &self.uuids.bitmap.0.to_be_bytes()),
            (24, &self.uuids.history[0].0.to_be_bytes()),
            (32, &self.uuids.history[1].0.to_be_bytes()),
            (40, &self.device_uuid.to_be_bytes()),
            (48, &0u64.to_be_bytes()),
            (56, &self.flags.0.to_be_bytes()),
            (60, &magic.to_be_bytes()),
            (64, &self.md_size_sect.to_be_bytes()),
            (68, &self.al_offset.to_be_bytes()),
            (72, &self.al_nr_extents.to_be_bytes()),
            (76, &self.bm_offset.to_be_bytes()),
            (80, &(BYTES_PER_BIT as u32).to_be_bytes()),
            (84, &self.la_peer_max_bio_size.to_be_bytes()),
            (88, &self.al.stripes().to_be_bytes()),
            (92, &self.al.stripe_size_4k().to_be_bytes()),
        ];
        for (offset, bytes) in fields {
            b[offset..offset + bytes.len()].copy_from_slice(bytes);
        }
        b
    }
}

/// `N` bytes at `offset` of a whole block; offsets are constants well inside it.
fn field<const N: usize>(block: &[u8; BLOCK_BYTES as usize], offset: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&block[offset..offset + N]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_superblock() -> impl Strategy<Value = Superblock> {
        (
            any::<[u64; 6]>(),
            any::<[u32; 5]>(),
            any::<(i32, i32, bool)>(),
            (1u32..64, 8u32..64),
        )
            .prop_map(|(w, d, (al_offset, bm_offset, clean), (stripes, size))| {
                Superblock {
                    la_size: Sector(w[0]),
                    uuids: GenerationUuids {
                        current: Uuid(w[1]),
                        bitmap: Uuid(w[2]),
                        history: [Uuid(w[3]), Uuid(w[4])],
                    },
                    device_uuid: w[5],
                    flags: MdFlags(d[0]),
                    state: if clean {
                        MdState::Clean
                    } else {
                        MdState::Unclean
                    },
                    md_size_sect: d[1],
                    al_offset,
                    al_nr_extents: d[2],
                    bm_offset,
                    la_peer_max_bio_size: d[3],
                    al: AlGeometry::new(stripes, size).unwrap(),
                }
            })
    }

    proptest! {
        #[test]
        fn round_trip(sb in any_superblock()) {
            prop_assert_eq!(Superblock::decode(&sb.encode()).unwrap(), sb);
        }

        #[test]
        fn arbitrary_blocks_do_not_panic(block in proptest::collection::vec(any::<u8>(), 4096)) {
            let _ = Superblock::decode(&block);
        }
    }

    #[test]
    fn fresh_matches_create_md() {
        let layout = Layout::internal(256 << 20, AlGeometry::default()).unwrap();
        let b = Superblock::fresh(&layout).encode();
        let expected: [u32; 10] = [
            0x80,
            MAGIC_CLEAN,
            88,
            (-64i32) as u32,
            257,
            (-80i32) as u32,
            4096,
            0,
            1,
            8,
        ];
        for (i, want) in expected.iter().enumerate() {
            let o = 56 + 4 * i;
            assert_eq!(
                u32::from_be_bytes(b[o..o + 4].try_into().unwrap()),
                *want,
                "offset {o}"
            );
        }
        assert_eq!(u64::from_be_bytes(b[8..16].try_into().unwrap()), 4);
        assert!(b[96..].iter().all(|&x| x == 0));
    }

    #[test]
    fn rejects_bad_fields() {
        let layout = Layout::internal(256 << 20, AlGeometry::default()).unwrap();
        let good = Superblock::fresh(&layout).encode();
        assert!(matches!(
            Superblock::decode(&good[..100]),
            Err(MetaError::WrongSize { .. })
        ));
        let mut bad = good;
        bad[63] = 0;
        assert!(matches!(
            Superblock::decode(&bad),
            Err(MetaError::BadMagic(_))
        ));
        let mut bad = good;
        bad[82] = 0x20;
        assert!(matches!(
            Superblock::decode(&bad),
            Err(MetaError::UnsupportedBytesPerBit(_))
        ));
        let mut bad = good;
        bad[95] = 3;
        assert!(matches!(
            Superblock::decode(&bad),
            Err(MetaError::BadAlGeometry { .. })
        ));
        // Legacy superblocks without stripe fields mean the 32 KiB ring.
        let mut legacy = good;
        legacy[88..96].fill(0);
        assert_eq!(
            Superblock::decode(&legacy).unwrap().al,
            AlGeometry::default()
        );
    }
}
