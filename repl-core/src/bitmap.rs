//! The dirty bitmap: one bit per 4 KiB block that may differ from the peer, stored on disk as
//! little-endian u64 words in 4 KiB pages, with the pages changed since the last write-out.

use std::ops::Range;

use crate::al::{Extent, EXTENT_SHIFT};
use crate::types::Sector;

/// Bytes of storage per bit.
pub const BLOCK_BYTES: u64 = 4096;
/// Bytes per on-disk bitmap page.
pub const PAGE_BYTES: usize = 4096;
/// Bits per on-disk page.
pub const BITS_PER_PAGE: u64 = PAGE_BYTES as u64 * 8;
const WORDS_PER_PAGE: usize = PAGE_BYTES / 8;
const BITS_PER_EXTENT: u64 = 1 << (EXTENT_SHIFT - 12);

/// Misuse of a bitmap: ranges past its end, pages it does not have, sizes that differ.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BitmapError {
    #[error("bits {start}..{end} are outside a bitmap of {bits} bits")]
    OutOfRange { start: u64, end: u64, bits: u64 },
    #[error("page {page} is outside a bitmap of {pages} pages")]
    NoSuchPage { page: u64, pages: u64 },
    #[error("page data is {0} bytes, expected 4096")]
    WrongPageSize(usize),
    #[error("bitmaps of {0} and {1} bits cannot be merged")]
    SizeMismatch(u64, u64),
}

/// A bitmap over a device of `bits` 4 KiB blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    words: Vec<u64>,
    bits: u64,
    /// One bit per page, set when the page changed since `take_dirty_pages`.
    dirty: Vec<u64>,
}

impl Bitmap {
    /// A clean bitmap covering `size` (the last partial block counts).
    pub fn new(size: Sector) -> Bitmap {
        Bitmap::with_bits(size.bytes().div_ceil(BLOCK_BYTES))
    }

    /// A clean bitmap of `bits` bits.
    pub fn with_bits(bits: u64) -> Bitmap {
        let words = bits.div_ceil(64) as usize;
        let pages = words.div_ceil(WORDS_PER_PAGE);
        Bitmap {
            words: vec![0; words],
            bits,
            dirty: vec![0; pages.div_ceil(64)],
        }
    }

    pub fn bits(&self) -> u64 {
        self.bits
    }

    /// On-disk pages this bitmap occupies.
    pub fn pages(&self) -> u64 {
        self.words.len().div_ceil(WORDS_PER_PAGE) as u64
    }

    pub fn test(&self, bit: u64) -> bool {
        bit < self.bits && self.words[(bit / 64) as usize] & (1 << (bit % 64)) != 0
    }

    /// Number of set bits.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Set `bits`; returns how many were newly set.
    ///
    /// # Errors
    /// `OutOfRange` when the range passes the end.
    pub fn set_bits(&mut self, bits: Range<u64>) -> Result<u64, BitmapError> {
        self.update(bits, true)
    }

    /// Clear `bits`; returns how many were set before.
    ///
    /// # Errors
    /// `OutOfRange` when the range passes the end.
    pub fn clear_bits(&mut self, bits: Range<u64>) -> Result<u64, BitmapError> {
        self.update(bits, false)
    }

    /// Mark out of sync every block that `len` bytes at `offset` touch (rounded outward).
    ///
    /// # Errors
    /// `OutOfRange` when the range passes the end.
    pub fn set_bytes(&mut self, offset: u64, len: u64) -> Result<u64, BitmapError> {
        let end = offset.saturating_add(len);
        self.set_bits(offset / BLOCK_BYTES..end.div_ceil(BLOCK_BYTES))
    }

    /// Mark in sync only the blocks that `len` bytes at `offset` cover whole (rounded inward),
    /// so a partial write never clears a block it did not fully transfer.
    ///
    /// # Errors
    /// `OutOfRange` when the range passes the end.
    pub fn clear_bytes(&mut self, offset: u64, len: u64) -> Result<u64, BitmapError> {
        let start = offset.div_ceil(BLOCK_BYTES);
        let end = offset.saturating_add(len) / BLOCK_BYTES;
        self.clear_bits(start..end.max(start))
    }

    /// [`Self::set_bytes`] in sectors.
    ///
    /// # Errors
    /// `OutOfRange` when the range passes the end.
    pub fn set_sectors(&mut self, start: Sector, len: u64) -> Result<u64, BitmapError> {
        let (offset, len) = sector_span(start, len);
        self.set_bytes(offset, len)
    }

    /// [`Self::clear_bytes`] in sectors.
    ///
    /// # Errors
    /// `OutOfRange` when the range passes the end.
    pub fn clear_sectors(&mut self, start: Sector, len: u64) -> Result<u64, BitmapError> {
        let (offset, len) = sector_span(start, len);
        self.clear_bytes(offset, len)
    }

    /// Mark a whole AL extent out of sync, clipped to the end (AL replay after a crash).
    pub fn set_extent(&mut self, extent: Extent) -> u64 {
        let start = (u64::from(extent.0) * BITS_PER_EXTENT).min(self.bits);
        let end = (start + BITS_PER_EXTENT).min(self.bits);
        // Clipped to the bitmap, so always in range.
        self.set_bits(start..end).unwrap_or(0)
    }

    /// The page holding the bits of `extent` (written out before the AL evicts it).
    pub fn page_of_extent(extent: Extent) -> u64 {
        u64::from(extent.0) * BITS_PER_EXTENT / BITS_PER_PAGE
    }

    /// Runs of set bits, ascending.
    pub fn dirty_runs(&self) -> DirtyRuns<'_> {
        DirtyRuns {
            bitmap: self,
            next: 0,
        }
    }

    /// OR `other` into this bitmap (the handshake merge); returns how many bits were newly set.
    ///
    /// # Errors
    /// `SizeMismatch` when the bitmaps cover different sizes.
    pub fn merge_or(&mut self, other: &Bitmap) -> Result<u64, BitmapError> {
        if other.bits != self.bits {
            return Err(BitmapError::SizeMismatch(self.bits, other.bits));
        }
        let mut added = 0;
        for (i, (w, o)) in self.words.iter_mut().zip(&other.words).enumerate() {
            let new = *w | o;
            if new != *w {
                added += u64::from((new ^ *w).count_ones());
                *w = new;
                mark(&mut self.dirty, i / WORDS_PER_PAGE);
            }
        }
        Ok(added)
    }

    /// Number of 64-bit words (the unit of the bitmap exchange).
    pub fn word_count(&self) -> u64 {
        self.words.len() as u64
    }

    /// Words `range` (clamped to the bitmap), for the bitmap exchange.
    pub fn words(&self, range: Range<u64>) -> &[u64] {
        let end = (range.end as usize).min(self.words.len());
        let start = (range.start as usize).min(end);
        &self.words[start..end]
    }

    /// ORs words received from the peer in at word `offset`; returns the bits newly set.
    ///
    /// # Errors
    /// `OutOfRange` when the words reach past the end.
    pub fn or_words(&mut self, offset: u64, words: &[u64]) -> Result<u64, BitmapError> {
        let end = offset.saturating_add(words.len() as u64);
        if end > self.words.len() as u64 {
            return Err(BitmapError::OutOfRange {
                start: offset.saturating_mul(64),
                end: end.saturating_mul(64),
                bits: self.bits,
            });
        }
        let mut added = 0;
        for (i, o) in words.iter().enumerate() {
            let idx = offset as usize + i;
            let new = self.words[idx] | o;
            if new != self.words[idx] {
                added += u64::from((new ^ self.words[idx]).count_ones());
                self.words[idx] = new;
                mark(&mut self.dirty, idx / WORDS_PER_PAGE);
            }
        }
        self.mask_tail();
        Ok(added)
    }

    /// The first run of set bits at or after `from`, at most `max` bits long.
    pub fn next_run(&self, from: u64, max: u64) -> Option<Range<u64>> {
        let runs = DirtyRuns {
            bitmap: self,
            next: from,
        };
        let start = runs.seek(from, true);
        if start >= self.bits {
            return None;
        }
        let end = runs.seek(start, false).min(start.saturating_add(max));
        Some(start..end)
    }

    /// Whether any bit in `bits` is set.
    pub fn any(&self, bits: Range<u64>) -> bool {
        self.next_run(bits.start, 1)
            .is_some_and(|r| r.start < bits.end)
    }

    /// Pages changed since the last call, ascending; clears the record.
    pub fn take_dirty_pages(&mut self) -> Vec<u64> {
        let mut pages = Vec::new();
        for (i, w) in self.dirty.iter_mut().enumerate() {
            let mut bits = std::mem::take(w);
            while bits != 0 {
                pages.push(i as u64 * 64 + u64::from(bits.trailing_zeros()));
                bits &= bits - 1;
            }
        }
        pages
    }

    /// The on-disk bytes of `page`; words past the end are zero.
    ///
    /// # Errors
    /// `NoSuchPage`.
    pub fn encode_page(&self, page: u64) -> Result<[u8; PAGE_BYTES], BitmapError> {
        let words = self.page_words(page)?;
        let mut out = [0u8; PAGE_BYTES];
        for (chunk, w) in out.chunks_exact_mut(8).zip(&self.words[words]) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        Ok(out)
    }

    /// Load `page` from its on-disk bytes; bits past the end are ignored. Does not mark the
    /// page dirty (it is what the disk holds).
    ///
    /// # Errors
    /// `NoSuchPage`, `WrongPageSize`.
    pub fn decode_page(&mut self, page: u64, bytes: &[u8]) -> Result<(), BitmapError> {
        let words = self.page_words(page)?;
        if bytes.len() != PAGE_BYTES {
            return Err(BitmapError::WrongPageSize(bytes.len()));
        }
        for (w, chunk) in self.words[words].iter_mut().zip(bytes.chunks_exact(8)) {
            let mut le = [0u8; 8];
            le.copy_from_slice(chunk);
            *w = u64::from_le_bytes(le);
        }
        self.mask_tail();
        Ok(())
    }

    /// This bitmap with `bits` bits: itself when that is its size (no copy), otherwise the
    /// first `bits` of it, or all of it followed by clean bits.
    pub fn resized(self, bits: u64) -> Bitmap {
        if bits == self.bits {
            return self;
        }
        let mut bm = Bitmap::with_bits(bits);
        let n = bm.words.len().min(self.words.len());
        bm.words[..n].copy_from_slice(&self.words[..n]);
        bm.mask_tail();
        bm
    }

    /// A bitmap of `bits` bits from its on-disk pages, which must cover all of them.
    ///
    /// # Errors
    /// `WrongPageSize` when `bytes` is shorter than the pages needed.
    pub fn from_bytes(bits: u64, bytes: &[u8]) -> Result<Bitmap, BitmapError> {
        let mut bm = Bitmap::with_bits(bits);
        let need = bm.pages() as usize * PAGE_BYTES;
        if bytes.len() < need {
            return Err(BitmapError::WrongPageSize(bytes.len()));
        }
        for (page, chunk) in bytes[..need].chunks_exact(PAGE_BYTES).enumerate() {
            bm.decode_page(page as u64, chunk)?;
        }
        Ok(bm)
    }

    /// All pages, as written to disk.
    pub fn to_bytes(&self) -> Vec<u8> {
        (0..self.pages())
            .flat_map(|p| self.encode_page(p).unwrap_or([0; PAGE_BYTES]))
            .collect()
    }

    fn page_words(&self, page: u64) -> Result<Range<usize>, BitmapError> {
        if page >= self.pages() {
            return Err(BitmapError::NoSuchPage {
                page,
                pages: self.pages(),
            });
        }
        let start = page as usize * WORDS_PER_PAGE;
        Ok(start..(start + WORDS_PER_PAGE).min(self.words.len()))
    }

    fn mask_tail(&mut self) {
        let used = self.bits % 64;
        if let (Some(last), true) = (self.words.last_mut(), used != 0) {
            *last &= (1 << used) - 1;
        }
    }

    fn update(&mut self, bits: Range<u64>, set: bool) -> Result<u64, BitmapError> {
        if bits.start > bits.end || bits.end > self.bits {
            return Err(BitmapError::OutOfRange {
                start: bits.start,
                end: bits.end,
                bits: self.bits,
            });
        }
        let mut changed = 0;
        let mut bit = bits.start;
        while bit < bits.end {
            let word = (bit / 64) as usize;
            let lo = bit % 64;
            let hi = (bits.end - word as u64 * 64).min(64);
            let mask = (u64::MAX >> (64 - (hi - lo))) << lo;
            let old = self.words[word];
            let new = if set { old | mask } else { old & !mask };
            if new != old {
                changed += u64::from((old ^ new).count_ones());
                self.words[word] = new;
                mark(&mut self.dirty, word / WORDS_PER_PAGE);
            }
            bit = (word as u64 + 1) * 64;
        }
        Ok(changed)
    }
}

fn mark(dirty: &mut [u64], page: usize) {
    dirty[page / 64] |= 1 << (page % 64);
}

fn sector_span(start: Sector, len: u64) -> (u64, u64) {
    (
        start.0.saturating_mul(Sector::SIZE),
        len.saturating_mul(Sector::SIZE),
    )
}

/// Iterator over runs of set bits; see [`Bitmap::dirty_runs`].
#[derive(Debug, Clone)]
pub struct DirtyRuns<'a> {
    bitmap: &'a Bitmap,
    next: u64,
}

impl DirtyRuns<'_> {
    /// First bit at or after `from` whose value is `value`, or the bitmap's end.
    fn seek(&self, from: u64, value: bool) -> u64 {
        let words = &self.bitmap.words;
        let mut word = (from / 64) as usize;
        let mut mask = u64::MAX << (from % 64);
        while word < words.len() {
            let w = if value { words[word] } else { !words[word] } & mask;
            if w != 0 {
                return (word as u64 * 64 + u64::from(w.trailing_zeros())).min(self.bitmap.bits);
            }
            word += 1;
            mask = u64::MAX;
        }
        self.bitmap.bits
    }
}

impl Iterator for DirtyRuns<'_> {
    type Item = Range<u64>;

    fn next(&mut self) -> Option<Range<u64>> {
        if self.next >= self.bitmap.bits {
            return None;
        }
        let start = self.seek(self.next, true);
        if start >= self.bitmap.bits {
            self.next = start;
            return None;
        }
        let end = self.seek(start, false);
        self.next = end;
        Some(start..end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn resized_keeps_the_first_bits_and_cleans_the_rest() {
        let mut a = Bitmap::with_bits(300);
        a.set_bits(0..300).unwrap();
        let shrunk = a.clone().resized(130);
        assert_eq!((shrunk.bits(), shrunk.count()), (130, 130));
        let grown = shrunk.resized(1000);
        assert_eq!((grown.bits(), grown.count()), (1000, 130));
        assert!(!grown.any(130..1000));
        let same = a.clone().resized(300);
        assert_eq!(same.words(0..same.word_count()), a.words(0..a.word_count()));
    }

    #[test]
    fn word_exchange_and_run_scanning() {
        let mut a = Bitmap::with_bits(200);
        a.set_bits(3..5).unwrap();
        a.set_bits(130..140).unwrap();
        let mut b = Bitmap::with_bits(200);
        assert_eq!(b.or_words(0, a.words(0..4)).unwrap(), 12);
        assert_eq!(b, {
            let mut c = a.clone();
            c.take_dirty_pages();
            c.dirty = b.dirty.clone();
            c
        });
        assert!(b.or_words(3, &[0, 0]).is_err());
        assert_eq!(b.next_run(0, 100), Some(3..5));
        assert_eq!(b.next_run(5, 100), Some(130..140));
        assert_eq!(b.next_run(131, 4), Some(131..135));
        assert_eq!(b.next_run(140, 100), None);
        assert!(b.any(0..4) && !b.any(5..130) && b.any(139..200));
        // Bits past the end never appear, even when the peer sends them.
        let mut t = Bitmap::with_bits(70);
        t.or_words(1, &[u64::MAX]).unwrap();
        assert_eq!(t.count(), 6);
    }

    #[test]
    fn ranges_round_outward_on_set_and_inward_on_clear() {
        let mut bm = Bitmap::new(Sector(1000)); // 125 blocks
        assert_eq!(bm.bits(), 125);
        assert_eq!(bm.set_sectors(Sector(7), 2).unwrap(), 2);
        assert!(bm.test(0) && bm.test(1) && !bm.test(2));
        assert_eq!(
            bm.clear_bytes(100, 8000).unwrap(),
            0,
            "covers no whole block"
        );
        assert_eq!(bm.clear_bytes(4096, 4096).unwrap(), 1);
        assert_eq!(bm.count(), 1);
        assert!(matches!(
            bm.set_bits(120..126),
            Err(BitmapError::OutOfRange { .. })
        ));
        assert_eq!(bm.set_bytes(124 * 4096, 10).unwrap(), 1);
    }

    #[test]
    fn extents_runs_and_pages() {
        let mut bm = Bitmap::with_bits(100_000);
        assert_eq!(bm.pages(), 4);
        assert_eq!(bm.set_extent(Extent(3)), 1024);
        assert_eq!(bm.set_extent(Extent(97)), 100_000 - 97 * 1024);
        assert_eq!(bm.set_extent(Extent(500)), 0);
        bm.set_bits(64..65).unwrap();
        let runs: Vec<_> = bm.dirty_runs().collect();
        assert_eq!(runs, [64..65, 3072..4096, 97 * 1024..100_000]);
        assert_eq!(bm.take_dirty_pages(), [0, 3]);
        assert!(bm.take_dirty_pages().is_empty());
        assert_eq!(Bitmap::page_of_extent(Extent(97)), 3);
        let page = bm.encode_page(0).unwrap();
        assert_eq!(page[8], 1, "bit 64 is byte 8, bit 0 (little-endian words)");
        assert_eq!(page[384..512], [0xff; 128]);
    }

    #[test]
    fn merge_and_decode() {
        let mut a = Bitmap::with_bits(70);
        let mut b = Bitmap::with_bits(70);
        a.set_bits(0..3).unwrap();
        b.set_bits(2..69).unwrap();
        assert_eq!(a.merge_or(&b).unwrap(), 66);
        assert_eq!(a.count(), 69);
        assert!(a.merge_or(&Bitmap::with_bits(71)).is_err());
        // Bits past the end in the on-disk page are dropped.
        let c = Bitmap::from_bytes(70, &[0xff; PAGE_BYTES]).unwrap();
        assert_eq!(c.count(), 70);
        assert!(Bitmap::from_bytes(70, &[0; 10]).is_err());
        assert!(matches!(
            c.encode_page(1),
            Err(BitmapError::NoSuchPage { .. })
        ));
    }

    proptest! {
        #[test]
        fn set_matches_a_naive_model(bits in 1u64..5000, ops in proptest::collection::vec((any::<bool>(), 0u64..5000, 0u64..300), 0..20)) {
            let mut bm = Bitmap::with_bits(bits);
            let mut model = vec![false; bits as usize];
            for (set, start, len) in ops {
                let start = start % bits;
                let end = (start + len).min(bits);
                let r = if set { bm.set_bits(start..end) } else { bm.clear_bits(start..end) };
                let changed = model[start as usize..end as usize].iter().filter(|&&b| b != set).count();
                prop_assert_eq!(r.unwrap(), changed as u64);
                model[start as usize..end as usize].fill(set);
            }
            prop_assert_eq!(bm.count(), model.iter().filter(|&&b| b).count() as u64);
            let from_runs: u64 = bm.dirty_runs().map(|r| r.end - r.start).sum();
            prop_assert_eq!(from_runs, bm.count());
            for r in bm.dirty_runs() {
                prop_assert!(model[r.start as usize..r.end as usize].iter().all(|&b| b));
            }
            let back = Bitmap::from_bytes(bits, &bm.to_bytes()).unwrap();
            prop_assert_eq!(back.words, bm.words);
        }

        #[test]
        fn arbitrary_pages_do_not_panic(bits in 0u64..70_000, page in proptest::collection::vec(any::<u8>(), PAGE_BYTES)) {
            if let Ok(bm) = Bitmap::from_bytes(bits, &page.repeat(3)) {
                prop_assert!(bm.count() <= bits);
            }
        }
    }
}
