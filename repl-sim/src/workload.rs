//! What the block layer asks of the Primary, and the data it writes. Every written sector is
//! self-describing: it names the write (its version) and its own sector number, and the rest is
//! derived from both, so a read or a disk scan tells exactly which write a sector came from.

use bytes::Bytes;

use crate::rng::SimRng;

/// Bytes per sector.
pub const SECTOR: u64 = 512;

/// What a 512-byte sector holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// All zeroes: never written, trimmed or zeroed.
    Zero,
    /// Written by the write with this version.
    Version(u64),
    /// Anything else: a torn, misplaced or corrupted sector.
    Garbage,
}

fn mix(version: u64, sector: u64, k: u64) -> u64 {
    let mut z = version
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(sector.wrapping_mul(0xc2b2_ae3d_27d4_eb4f))
        .wrapping_add(k.wrapping_mul(0x1656_67b1_9e37_79f9));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Word `k` (2..64) of sector `s` of `version`: one hash per sector, varied per word.
fn word_of(seed: u64, k: u64) -> u64 {
    seed ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Fills `buf` (a whole number of sectors starting at `first_sector`) with `version`'s data.
pub fn fill(buf: &mut [u8], version: u64, first_sector: u64) {
    for (i, sector) in buf.chunks_exact_mut(SECTOR as usize).enumerate() {
        let s = first_sector + i as u64;
        let seed = mix(version, s, 0);
        for (k, word) in sector.chunks_exact_mut(8).enumerate() {
            let w = match k {
                0 => version,
                1 => s,
                _ => word_of(seed, k as u64),
            };
            word.copy_from_slice(&w.to_le_bytes());
        }
    }
}

/// The data of a write of `version` over `len` bytes at `offset`.
pub fn data(version: u64, offset: u64, len: u64) -> Bytes {
    let mut v = vec![0u8; len as usize];
    fill(&mut v, version, offset / SECTOR);
    Bytes::from(v)
}

/// Decodes one sector that should hold sector number `sector`.
pub fn decode(bytes: &[u8], sector: u64) -> Content {
    let word = |k: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[k * 8..k * 8 + 8]);
        u64::from_le_bytes(w)
    };
    if bytes.len() != SECTOR as usize {
        return Content::Garbage;
    }
    const ZERO: [u8; SECTOR as usize] = [0; SECTOR as usize];
    let version = word(0);
    if version == 0 {
        return if bytes == ZERO {
            Content::Zero
        } else {
            Content::Garbage
        };
    }
    if word(1) != sector {
        return Content::Garbage;
    }
    // Spot checks keep whole-device scans cheap; corruption the engine should have caught is
    // checked at the packet, not here.
    let seed = mix(version, sector, 0);
    for k in [2, 17, 40, 63] {
        if word(k) != word_of(seed, k as u64) {
            return Content::Garbage;
        }
    }
    Content::Version(version)
}

/// One block-layer request, before it gets a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read { offset: u64, len: u64 },
    Write { offset: u64, len: u64, fua: bool },
    Flush,
    Trim { offset: u64, len: u64 },
    Zeroes { offset: u64, len: u64, fua: bool },
}

/// The request mix of one run (chosen from the seed: "swarm" testing).
#[derive(Debug, Clone)]
pub struct Workload {
    /// Usable sectors of the volume.
    sectors: u64,
    /// Where the next sequential write goes.
    seq_next: u64,
    /// Hot spots: `(first sector, sectors)`.
    hot: Vec<(u64, u64)>,
    /// Weights of read, write, flush, trim, write-zeroes.
    weights: [u64; 5],
    fua: f64,
}

impl Workload {
    /// A mix for a volume of `sectors` sectors, drawn from `rng`.
    pub fn new(sectors: u64, rng: &mut SimRng) -> Workload {
        let hot = (0..rng.range(1, 4))
            .map(|_| {
                let len = rng.range(8, 512).min(sectors);
                let start = rng.below(sectors - len + 1);
                (start, len)
            })
            .collect();
        Workload {
            sectors,
            seq_next: rng.below(sectors),
            hot,
            weights: [
                rng.range(10, 40),
                rng.range(30, 80),
                rng.range(1, 10),
                rng.range(0, 4),
                rng.range(0, 4),
            ],
            fua: [0.0, 0.05, 0.2][rng.below(3) as usize],
        }
    }

    /// A length in bytes between 512 B and 1 MiB, sector aligned, mostly 4 KiB multiples.
    fn len(&self, rng: &mut SimRng) -> u64 {
        let sectors = match rng.weighted(&[20, 50, 20, 10]) {
            0 => rng.range(1, 8),
            1 => rng.range(1, 16) * 8,
            2 => rng.range(16, 64) * 8,
            _ => rng.range(64, 256) * 8,
        };
        sectors.min(self.sectors) * SECTOR
    }

    /// Where a request of `len` bytes goes.
    fn offset(&mut self, len: u64, rng: &mut SimRng) -> u64 {
        let n = len / SECTOR;
        let last = self.sectors - n;
        let first = match rng.weighted(&[40, 30, 30]) {
            0 => {
                let (start, hot_len) = *rng.pick(&self.hot).unwrap_or(&(0, 8));
                start + rng.below(hot_len)
            }
            1 => {
                let s = self.seq_next;
                self.seq_next = if s + n >= self.sectors { 0 } else { s + n };
                s
            }
            _ => {
                if rng.chance(0.7) {
                    rng.below(last / 8 + 1) * 8
                } else {
                    rng.below(last + 1)
                }
            }
        };
        first.min(last) * SECTOR
    }

    /// The next request.
    pub fn next(&mut self, rng: &mut SimRng) -> Op {
        let len = self.len(rng);
        match rng.weighted(&self.weights) {
            0 => Op::Read {
                offset: self.offset(len, rng),
                len,
            },
            1 => Op::Write {
                offset: self.offset(len, rng),
                len,
                fua: rng.chance(self.fua),
            },
            2 => Op::Flush,
            3 => Op::Trim {
                offset: self.offset(len, rng),
                len,
            },
            _ => Op::Zeroes {
                offset: self.offset(len, rng),
                len,
                fua: rng.chance(self.fua),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sectors_name_their_write() {
        let d = data(77, 4096, 2048);
        assert_eq!(decode(&d[..512], 8), Content::Version(77));
        assert_eq!(decode(&d[1536..], 11), Content::Version(77));
        assert_eq!(decode(&d[..512], 9), Content::Garbage, "misplaced");
        let mut torn = d[..512].to_vec();
        torn[17 * 8] ^= 1;
        assert_eq!(decode(&torn, 8), Content::Garbage);
        assert_eq!(decode(&[0; 512], 3), Content::Zero);
    }

    #[test]
    fn requests_fit_the_volume() {
        let mut rng = SimRng::new(1);
        let mut w = Workload::new(20_000, &mut rng);
        for _ in 0..10_000 {
            match w.next(&mut rng) {
                Op::Read { offset, len }
                | Op::Write { offset, len, .. }
                | Op::Trim { offset, len }
                | Op::Zeroes { offset, len, .. } => {
                    assert!((512..=1 << 20).contains(&len) && len % 512 == 0);
                    assert!(offset % 512 == 0 && offset + len <= 20_000 * 512);
                }
                Op::Flush => {}
            }
        }
    }
}
