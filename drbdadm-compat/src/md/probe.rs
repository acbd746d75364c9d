//! What the start of a device already holds, as drbdmeta's `check_for_existing_data` guesses
//! it from the first 68 KiB: swap, LVM2, ext2/3/4, XFS, JFS, ReiserFS, or unknown data.

/// Bytes drbdmeta inspects (`SO_MUCH`).
pub const PROBE_BYTES: usize = 68 * 1024;

/// Something found at the start of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A file system: its name as drbdmeta prints it and the bytes it claims.
    FileSystem { what: &'static str, bytes: u64 },
    /// Content whose size cannot be known (swap, an LVM2 physical volume): always refused.
    Unsized { what: &'static str },
    /// Non-zero bytes of no known kind.
    SomeData,
}

impl Found {
    /// drbdmeta's name for it ("ext3 filesystem", "some data", ...).
    pub fn what(&self) -> &'static str {
        match self {
            Found::FileSystem { what, .. } | Found::Unsized { what } => what,
            Found::SomeData => "some data",
        }
    }
}

fn le16(d: &[u8], o: usize) -> u64 {
    d.get(o..o + 2)
        .map_or(0, |b| u64::from(u16::from_le_bytes([b[0], b[1]])))
}

fn le32(d: &[u8], o: usize) -> u64 {
    d.get(o..o + 4).map_or(0, |b| {
        u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    })
}

fn be32(d: &[u8], o: usize) -> u64 {
    d.get(o..o + 4).map_or(0, |b| {
        u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    })
}

fn u64_at(d: &[u8], o: usize, big: bool) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = d.get(o..o + 8) {
        b.copy_from_slice(s);
    }
    if big {
        u64::from_be_bytes(b)
    } else {
        u64::from_le_bytes(b)
    }
}

fn has(d: &[u8], o: usize, magic: &[u8]) -> bool {
    d.get(o..o + magic.len()) == Some(magic)
}

/// Classifies the first [`PROBE_BYTES`] of a device; `None` when they are all zero.
pub fn probe(data: &[u8]) -> Option<Found> {
    if data.iter().all(|&b| b == 0) {
        return None;
    }
    let swap = [4096usize, 8192]
        .iter()
        .any(|&end| has(data, end - 10, b"SWAP-SPACE") || has(data, end - 10, b"SWAPSPACE2"));
    if swap {
        return Some(Found::Unsized {
            what: "swap space signature",
        });
    }
    if has(data, 0x218, b"LVM2") {
        return Some(Found::Unsized {
            what: "LVM2 physical volume signature",
        });
    }
    if le16(data, 0x438) == 0xEF53 {
        // Bit 2 of the low byte of s_feature_compat: has_journal.
        let journal = data.get(0x45c).is_some_and(|b| b & 4 != 0);
        let blocks = le32(data, 0x404);
        let bsize = match le32(data, 0x418) {
            0 => 1024,
            1 => 2048,
            _ => 4096,
        };
        let what = if journal {
            "ext3 filesystem"
        } else {
            "ext2 filesystem"
        };
        return Some(fs(what, blocks, bsize));
    }
    if has(data, 0, b"XFSB") {
        return Some(fs("xfs filesystem", u64_at(data, 8, true), be32(data, 4)));
    }
    if has(data, 0x8000, b"JFS1") {
        return Some(fs(
            "JFS filesystem",
            u64_at(data, 0x8008, false),
            le32(data, 0x8018),
        ));
    }
    if has(data, 0x10034, b"ReIsErFs") || has(data, 0x10034, b"ReIsEr2Fs") {
        return Some(fs(
            "reiser filesystem",
            le32(data, 0x10000),
            le16(data, 0x1002c),
        ));
    }
    Some(Found::SomeData)
}

fn fs(what: &'static str, blocks: u64, bsize: u64) -> Found {
    if blocks == 0 {
        // drbdmeta treats a zero block count like unknown data.
        return Found::SomeData;
    }
    Found::FileSystem {
        what,
        bytes: blocks.saturating_mul(bsize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_superblocks() {
        let mut d = vec![0u8; PROBE_BYTES];
        assert_eq!(probe(&d), None);
        d[0x438..0x43a].copy_from_slice(&0xEF53u16.to_le_bytes());
        d[0x404..0x408].copy_from_slice(&1000u32.to_le_bytes());
        d[0x418] = 2;
        assert_eq!(
            probe(&d),
            Some(Found::FileSystem {
                what: "ext2 filesystem",
                bytes: 4_096_000
            })
        );
        d[0x45c] = 4;
        assert_eq!(probe(&d).map(|f| f.what()), Some("ext3 filesystem"));
        let mut x = vec![0u8; PROBE_BYTES];
        x[..4].copy_from_slice(b"XFSB");
        x[4..8].copy_from_slice(&4096u32.to_be_bytes());
        x[8..16].copy_from_slice(&10u64.to_be_bytes());
        assert_eq!(
            probe(&x),
            Some(Found::FileSystem {
                what: "xfs filesystem",
                bytes: 40960
            })
        );
        let mut s = vec![0u8; PROBE_BYTES];
        s[4086..4096].copy_from_slice(b"SWAPSPACE2");
        assert!(matches!(probe(&s), Some(Found::Unsized { .. })));
        let mut g = vec![0u8; PROBE_BYTES];
        g[77] = 1;
        assert_eq!(probe(&g), Some(Found::SomeData));
        // Short input does not panic.
        assert_eq!(probe(&[1, 2, 3]), Some(Found::SomeData));
    }
}
