//! A simulated backing device with internal metadata: operations complete after a random
//! latency (so out of order), completed writes sit in a volatile cache until a FLUSH (or a FUA
//! write) makes them durable, and a crash keeps the durable image plus whatever of the cache
//! and of the writes in flight the PRNG lets survive, torn at 512-byte granularity.
//!
//! Two images are kept: `base` (what was written back) and `cur` (what reads see). The cache is
//! the ordered list of completed writes not yet written back; a crash replays the surviving
//! ones over `base` in completion order, FUA writes always surviving, so a sector ends up
//! holding one of the versions it had since its last durable point.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use repl_core::engine::{DiskOp, DiskResult, OnDisk, OpId};
use repl_core::meta::{self, AlGeometry, Layout, MetaWrite, Superblock};

use crate::rng::SimRng;
use crate::workload::SECTOR;

/// Faults switched on for a disk, changed by the simulator over time.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskFaults {
    /// Probability that a data read fails.
    pub read_error: f64,
    /// Probability that a data write (or flush) fails.
    pub write_error: f64,
    /// Probability that a metadata write fails.
    pub meta_error: f64,
    /// Every data write fails (no space left on a thin or file-backed device).
    pub full: bool,
    /// Latency multiplier (1 = normal).
    pub slow: u64,
}

/// Latency parameters of one disk, drawn per run.
#[derive(Debug, Clone, Copy)]
pub struct DiskTiming {
    /// Mean latency of a small operation, ns.
    pub base_ns: u64,
    /// Nanoseconds per KiB transferred.
    pub ns_per_kib: u64,
    /// Extra mean latency of a flush or a FUA write, ns.
    pub flush_ns: u64,
}

/// How a crash treated the volatile state, for the fault counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct CrashOutcome {
    pub cache_lost: u64,
    pub cache_torn: u64,
    pub cache_kept: u64,
    pub inflight_torn: u64,
    pub inflight_applied: u64,
    pub inflight_dropped: u64,
}

/// A completed write whose durability is not yet known.
#[derive(Debug, Clone)]
struct CacheEntry {
    offset: u64,
    len: u64,
    /// `None` writes zeroes.
    data: Option<Bytes>,
    /// FUA or metadata: durable on completion.
    forced: bool,
}

#[derive(Debug, Clone)]
struct InFlight {
    kind: DiskOp,
    /// For a flush: the cache entries completed before it was issued end below this number.
    mark: u64,
}

/// One node's simulated device.
#[derive(Debug)]
pub struct SimDisk {
    pub layout: Layout,
    base: Vec<u8>,
    cur: Vec<u8>,
    cache: VecDeque<CacheEntry>,
    /// Absolute number of `cache[0]`.
    cache_first: u64,
    inflight: BTreeMap<OpId, InFlight>,
    pub faults: DiskFaults,
    pub timing: DiskTiming,
    /// Metadata writes flush what completed before them (the engine's `md-flushes` contract).
    pub preflush_meta: bool,
    /// Granularity of torn metadata writes (one sector).
    pub meta_tear_unit: u64,
}

/// Why an operation could not even be accepted (an engine bug).
pub type OpError = String;

impl SimDisk {
    /// A zeroed device of `device_bytes` after `create-md`.
    ///
    /// # Errors
    /// The layout cannot hold metadata for that size.
    pub fn created(device_bytes: u64, timing: DiskTiming) -> Result<SimDisk, String> {
        let layout =
            Layout::internal(device_bytes, AlGeometry::default()).map_err(|e| e.to_string())?;
        // Freshly allocated zeroes cost nothing until touched; only the metadata is written.
        let created = || {
            let mut img = vec![0u8; device_bytes as usize];
            for w in meta::create_md(&layout, &Superblock::fresh(&layout)) {
                if let MetaWrite::Data { offset, bytes } = w {
                    img[offset as usize..offset as usize + bytes.len()].copy_from_slice(&bytes);
                }
            }
            img
        };
        Ok(SimDisk {
            layout,
            base: created(),
            cur: created(),
            cache: VecDeque::new(),
            cache_first: 0,
            inflight: BTreeMap::new(),
            faults: DiskFaults {
                slow: 1,
                ..DiskFaults::default()
            },
            timing,
            preflush_meta: false,
            meta_tear_unit: SECTOR,
        })
    }

    /// Bytes of the data area (what the engine may use for data).
    pub fn usable(&self) -> u64 {
        self.layout.max_usable.bytes()
    }

    /// The data area as reads see it now.
    pub fn data(&self) -> &[u8] {
        &self.cur[..self.usable() as usize]
    }

    /// The whole device as reads see it now.
    pub fn image(&self) -> &[u8] {
        &self.cur
    }

    /// No operation is in flight.
    pub fn idle(&self) -> bool {
        self.inflight.is_empty()
    }

    pub fn inflight_ops(&self) -> usize {
        self.inflight.len()
    }

    /// Byte ranges of data writes in flight (their blocks may change at any moment).
    pub fn inflight_writes(&self) -> Vec<(u64, u64)> {
        self.inflight
            .values()
            .filter_map(|f| match &f.kind {
                DiskOp::Write { offset, data, .. } => Some((*offset, data.len() as u64)),
                DiskOp::Trim { offset, len } | DiskOp::WriteZeroes { offset, len, .. } => {
                    Some((*offset, u64::from(*len)))
                }
                _ => None,
            })
            .collect()
    }

    /// Accepts an operation and returns its latency in nanoseconds.
    ///
    /// # Errors
    /// A duplicate id or a range outside the area the operation may touch.
    pub fn submit(&mut self, op: OpId, kind: DiskOp, rng: &mut SimRng) -> Result<u64, OpError> {
        if self.inflight.contains_key(&op) {
            return Err(format!("disk operation {} issued twice", op.0));
        }
        let usable = self.usable();
        let dev = self.cur.len() as u64;
        let (range, bytes, flushy) = match &kind {
            DiskOp::Read { offset, len } => (Some((*offset, u64::from(*len), usable)), *len, false),
            DiskOp::Write { offset, data, fua } => (
                Some((*offset, data.len() as u64, usable)),
                data.len() as u32,
                *fua,
            ),
            DiskOp::Trim { offset, len } => (Some((*offset, u64::from(*len), usable)), 0, false),
            DiskOp::WriteZeroes { offset, len, fua } => {
                (Some((*offset, u64::from(*len), usable)), 0, *fua)
            }
            DiskOp::MetaWrite { offset, data } => {
                if *offset < usable {
                    return Err(format!(
                        "metadata write at {offset} inside the data area (< {usable})"
                    ));
                }
                (
                    Some((*offset, data.len() as u64, dev)),
                    data.len() as u32,
                    true,
                )
            }
            DiskOp::Flush => (None, 0, true),
        };
        if let Some((offset, len, end)) = range {
            let aligned = offset % SECTOR == 0 && len % SECTOR == 0;
            if len == 0 || !aligned || offset.checked_add(len).is_none_or(|e| e > end) {
                return Err(format!("disk operation {kind_name} {offset}+{len} is out of range or unaligned (limit {end})", kind_name = kind_name(&kind)));
            }
        }
        let t = self.timing;
        let mut lat = rng.exp(t.base_ns) + t.ns_per_kib * u64::from(bytes) / 1024;
        if flushy {
            lat += rng.exp(t.flush_ns);
        }
        lat = lat.max(1_000) * self.faults.slow.max(1);
        let mark = self.cache_first + self.cache.len() as u64;
        self.inflight.insert(op, InFlight { kind, mark });
        Ok(lat)
    }

    /// Performs an operation at its completion time; `None` when it is not in flight (it was
    /// dropped by a crash).
    pub fn complete(&mut self, op: OpId, rng: &mut SimRng) -> Option<DiskResult> {
        let f = self.inflight.remove(&op)?;
        let faults = self.faults;
        let result = match f.kind {
            DiskOp::Read { offset, len } => {
                if rng.chance(faults.read_error) {
                    DiskResult::Failed
                } else {
                    let (o, l) = (offset as usize, len as usize);
                    DiskResult::Data(Bytes::copy_from_slice(&self.cur[o..o + l]))
                }
            }
            DiskOp::Write { offset, data, fua } => {
                let len = data.len() as u64;
                self.write_or_fail(offset, len, Some(data), fua, faults, rng)
            }
            DiskOp::Trim { offset, len } => {
                self.write_or_fail(offset, u64::from(len), None, false, faults, rng)
            }
            DiskOp::WriteZeroes { offset, len, fua } => {
                self.write_or_fail(offset, u64::from(len), None, fua, faults, rng)
            }
            DiskOp::MetaWrite { offset, data } => {
                let len = data.len() as u64;
                if self.preflush_meta {
                    // DRBD's md-flushes: the metadata write carries a preflush.
                    self.make_durable(f.mark);
                }
                if rng.chance(faults.meta_error) {
                    let unit = self.meta_tear_unit;
                    self.tear_into_cache(offset, len, Some(&data), unit, rng);
                    DiskResult::Failed
                } else {
                    self.apply_cached(offset, len, Some(data), true);
                    DiskResult::Done
                }
            }
            DiskOp::Flush => {
                if rng.chance(faults.write_error) {
                    DiskResult::Failed
                } else {
                    self.make_durable(f.mark);
                    DiskResult::Done
                }
            }
        };
        // The device writes its cache back on its own, oldest first.
        if self.cache.len() > 512 || rng.chance(0.02) {
            let n = rng.range(1, self.cache.len() as u64 / 2 + 1);
            let mark = self.cache_first + n;
            self.make_durable(mark);
        }
        Some(result)
    }

    fn write_or_fail(
        &mut self,
        offset: u64,
        len: u64,
        data: Option<Bytes>,
        fua: bool,
        faults: DiskFaults,
        rng: &mut SimRng,
    ) -> DiskResult {
        if faults.full || rng.chance(faults.write_error) {
            // Part of a failed write may have reached the device.
            if !faults.full {
                self.tear_into_cache(offset, len, data.as_ref(), SECTOR, rng);
            }
            return DiskResult::Failed;
        }
        self.apply_cached(offset, len, data, fua);
        DiskResult::Done
    }

    /// A completed write: visible to reads, durable only when `forced`. A forced write stays
    /// in the cache list (a crash always replays it, after the older entries), so that `base`
    /// only ever moves forward in completion order.
    fn apply_cached(&mut self, offset: u64, len: u64, data: Option<Bytes>, forced: bool) {
        put(&mut self.cur, offset, len, data.as_ref());
        self.cache.push_back(CacheEntry {
            offset,
            len,
            data,
            forced,
        });
    }

    /// Some sectors of a write that did not complete properly.
    fn tear_into_cache(
        &mut self,
        offset: u64,
        len: u64,
        data: Option<&Bytes>,
        unit: u64,
        rng: &mut SimRng,
    ) {
        for (o, l) in torn_runs(offset, len, unit, rng) {
            let part = data.map(|d| d.slice((o - offset) as usize..(o - offset + l) as usize));
            self.apply_cached(o, l, part, false);
        }
    }

    /// Every cache entry numbered below `mark` reaches `base`.
    fn make_durable(&mut self, mark: u64) {
        while self.cache_first < mark {
            let Some(e) = self.cache.pop_front() else {
                break;
            };
            self.cache_first += 1;
            put(&mut self.base, e.offset, e.len, e.data.as_ref());
        }
    }

    /// Power loss: the cache and the writes in flight survive in part, chosen by `rng`.
    pub fn power_loss(&mut self, rng: &mut SimRng) -> CrashOutcome {
        let mut out = CrashOutcome::default();
        let lose = rng.unit() * 0.8;
        let tear = rng.unit() * 0.3;
        for e in std::mem::take(&mut self.cache) {
            if e.forced {
                put(&mut self.base, e.offset, e.len, e.data.as_ref());
                continue;
            }
            let x = rng.unit();
            if x < lose {
                out.cache_lost += 1;
            } else if x < lose + tear {
                out.cache_torn += 1;
                apply_torn(
                    &mut self.base,
                    e.offset,
                    e.len,
                    e.data.as_ref(),
                    SECTOR,
                    rng,
                );
            } else {
                out.cache_kept += 1;
                put(&mut self.base, e.offset, e.len, e.data.as_ref());
            }
        }
        self.cache_first = 0;
        for f in std::mem::take(&mut self.inflight).into_values() {
            let Some((offset, len, data)) = write_of(&f.kind) else {
                continue;
            };
            let unit = self.tear_unit(&f.kind);
            match rng.below(3) {
                0 => out.inflight_dropped += 1,
                1 => {
                    out.inflight_applied += 1;
                    put(&mut self.base, offset, len, data.as_ref());
                }
                _ => {
                    out.inflight_torn += 1;
                    apply_torn(&mut self.base, offset, len, data.as_ref(), unit, rng);
                }
            }
        }
        self.cur.copy_from_slice(&self.base);
        out
    }

    /// The process dies but the machine keeps running: the cache stays, writes in flight
    /// land fully, partly or not at all.
    pub fn process_kill(&mut self, rng: &mut SimRng) -> CrashOutcome {
        let mut out = CrashOutcome::default();
        for f in std::mem::take(&mut self.inflight).into_values() {
            let Some((offset, len, data)) = write_of(&f.kind) else {
                continue;
            };
            let forced = matches!(f.kind, DiskOp::MetaWrite { .. });
            let unit = self.tear_unit(&f.kind);
            match rng.below(3) {
                0 => out.inflight_dropped += 1,
                1 => {
                    out.inflight_applied += 1;
                    self.apply_cached(offset, len, data, forced);
                }
                _ => {
                    out.inflight_torn += 1;
                    self.tear_into_cache(offset, len, data.as_ref(), unit, rng);
                }
            }
        }
        out
    }

    /// `drbdadm create-md` on this device (written through): fresh metadata, data kept.
    pub fn recreate_md(&mut self) {
        for w in meta::create_md(&self.layout, &Superblock::fresh(&self.layout)) {
            let (offset, len, data) = match w {
                MetaWrite::Data { offset, bytes } => {
                    let len = bytes.len() as u64;
                    (offset, len, Some(Bytes::from(bytes)))
                }
                MetaWrite::Zeroes { offset, len } => (offset, len, None),
            };
            self.apply_cached(offset, len, data, true);
        }
        self.flush_completed();
    }

    /// The granularity a torn write of this kind lands in.
    fn tear_unit(&self, kind: &DiskOp) -> u64 {
        if matches!(kind, DiskOp::MetaWrite { .. }) {
            self.meta_tear_unit
        } else {
            SECTOR
        }
    }

    /// Everything completed so far becomes durable (a flush the engine should have issued).
    pub fn flush_completed(&mut self) {
        let mark = self.cache_first + self.cache.len() as u64;
        self.make_durable(mark);
    }

    /// A clean stop: nothing is in flight; the cache stays (the machine keeps running).
    pub fn forget_inflight(&mut self) {
        self.inflight.clear();
    }

    /// The metadata as an attach reads it from the device now.
    ///
    /// # Errors
    /// The superblock does not decode.
    pub fn on_disk(&self) -> Result<OnDisk, String> {
        let l = self.layout;
        let md = &self.cur[l.md_offset as usize..(l.md_offset + 4096) as usize];
        let superblock = Superblock::decode(md).map_err(|e| format!("superblock: {e}"))?;
        let al = &self.cur[l.al_start() as usize..(l.al_start() + l.al_bytes()) as usize];
        let bm = &self.cur[l.bm_start() as usize..(l.bm_start() + l.bm_bytes) as usize];
        let bitmap = repl_core::bitmap::Bitmap::from_bytes(OnDisk::bitmap_bits(&l), bm)
            .map_err(|e| format!("bitmap: {e}"))?;
        Ok(OnDisk {
            layout: l,
            superblock,
            al_ring: al.to_vec(),
            bitmap,
        })
    }
}

fn kind_name(k: &DiskOp) -> &'static str {
    match k {
        DiskOp::Read { .. } => "read",
        DiskOp::Write { .. } => "write",
        DiskOp::Flush => "flush",
        DiskOp::Trim { .. } => "trim",
        DiskOp::WriteZeroes { .. } => "write-zeroes",
        DiskOp::MetaWrite { .. } => "meta-write",
    }
}

/// The range and data a writing operation puts on the device.
fn write_of(k: &DiskOp) -> Option<(u64, u64, Option<Bytes>)> {
    match k {
        DiskOp::Write { offset, data, .. } | DiskOp::MetaWrite { offset, data } => {
            Some((*offset, data.len() as u64, Some(data.clone())))
        }
        DiskOp::Trim { offset, len } | DiskOp::WriteZeroes { offset, len, .. } => {
            Some((*offset, u64::from(*len), None))
        }
        _ => None,
    }
}

fn put(img: &mut [u8], offset: u64, len: u64, data: Option<&Bytes>) {
    let r = offset as usize..(offset + len) as usize;
    match data {
        Some(d) => img[r].copy_from_slice(d),
        None => img[r].fill(0),
    }
}

/// Runs of sectors of a torn write that reached the device: a prefix, or a random subset.
fn torn_runs(offset: u64, len: u64, unit: u64, rng: &mut SimRng) -> Vec<(u64, u64)> {
    let unit = if len.is_multiple_of(unit) {
        unit
    } else {
        SECTOR
    };
    let n = len / unit;
    if rng.chance(0.5) {
        let k = rng.below(n + 1);
        return if k == 0 {
            vec![]
        } else {
            vec![(offset, k * unit)]
        };
    }
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for i in 0..n {
        if rng.chance(0.5) {
            let o = offset + i * unit;
            match runs.last_mut() {
                Some((ro, rl)) if *ro + *rl == o => *rl += unit,
                _ => runs.push((o, unit)),
            }
        }
    }
    runs
}

fn apply_torn(
    img: &mut [u8],
    offset: u64,
    len: u64,
    data: Option<&Bytes>,
    unit: u64,
    rng: &mut SimRng,
) {
    for (o, l) in torn_runs(offset, len, unit, rng) {
        let part = data.map(|d| d.slice((o - offset) as usize..(o - offset + l) as usize));
        put(img, o, l, part.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk() -> SimDisk {
        SimDisk::created(
            4 << 20,
            DiskTiming {
                base_ns: 10_000,
                ns_per_kib: 100,
                flush_ns: 50_000,
            },
        )
        .unwrap()
    }

    fn write(d: &mut SimDisk, rng: &mut SimRng, op: u64, offset: u64, byte: u8, fua: bool) {
        let data = Bytes::from(vec![byte; 4096]);
        d.submit(OpId(op), DiskOp::Write { offset, data, fua }, rng)
            .unwrap();
        assert_eq!(d.complete(OpId(op), rng), Some(DiskResult::Done));
    }

    #[test]
    fn flushed_and_fua_writes_survive_power_loss() {
        for seed in 0..50 {
            let mut rng = SimRng::new(seed);
            let mut d = disk();
            write(&mut d, &mut rng, 1, 0, 1, false);
            d.submit(OpId(2), DiskOp::Flush, &mut rng).unwrap();
            write(&mut d, &mut rng, 3, 8192, 3, false);
            assert_eq!(d.complete(OpId(2), &mut rng), Some(DiskResult::Done));
            write(&mut d, &mut rng, 4, 0, 4, false);
            write(&mut d, &mut rng, 5, 0, 5, true);
            write(&mut d, &mut rng, 6, 16384, 6, false);
            d.power_loss(&mut rng);
            assert_eq!(
                d.data()[0],
                5,
                "FUA write after an unflushed one to the same block"
            );
            assert!([0, 3].contains(&d.data()[8192]));
            assert!([0, 6].contains(&d.data()[16384]));
            assert!(d.on_disk().is_ok());
        }
    }

    #[test]
    fn out_of_range_operations_are_refused() {
        let mut rng = SimRng::new(1);
        let mut d = disk();
        let end = d.usable();
        assert!(d
            .submit(
                OpId(1),
                DiskOp::Read {
                    offset: end,
                    len: 512
                },
                &mut rng
            )
            .is_err());
        assert!(d
            .submit(
                OpId(2),
                DiskOp::MetaWrite {
                    offset: 0,
                    data: Bytes::from(vec![0; 512])
                },
                &mut rng
            )
            .is_err());
    }
}
