//! The activity log: the 4 MiB extents that may hold writes the peer has not confirmed.
//! Holds the on-disk transaction codec, ring placement, the in-memory active set that decides
//! which transaction must be persisted before a write may go, and crash replay.

use std::collections::HashMap;
use std::ops::Range;

use crate::meta::{AlGeometry, BLOCK_BYTES};
use crate::types::Sector;

/// One extent is 4 MiB.
pub const EXTENT_SHIFT: u32 = 22;
pub const EXTENT_SECTORS: u64 = 1 << (EXTENT_SHIFT - 9);
/// Slot changes one transaction can carry.
pub const UPDATES_PER_TRANSACTION: usize = 64;
/// Slots of the rolling snapshot one transaction carries.
pub const CONTEXT_PER_TRANSACTION: usize = 919;
/// Magic of every transaction block.
pub const MAGIC: u32 = 0x69cb_65a2;
/// Most slots (`al-extents`) the format allows.
pub const MAX_SLOTS: u16 = 65534;

const BLOCK: usize = BLOCK_BYTES as usize;
const FREE: u32 = u32::MAX;
const FREE_SLOT: u16 = u16::MAX;
const TYPE_UPDATE: u16 = 0;
const TYPE_INITIALIZED: u16 = 0xffff;
const UPDATE_SLOTS_AT: usize = 36;
const UPDATE_EXTENTS_AT: usize = UPDATE_SLOTS_AT + 2 * UPDATES_PER_TRANSACTION;
const CONTEXT_AT: usize = UPDATE_EXTENTS_AT + 4 * UPDATES_PER_TRANSACTION;

/// What is wrong with an AL block, ring or request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlError {
    #[error("AL data is {got} bytes, expected {expected}")]
    WrongSize { expected: usize, got: usize },
    #[error("bad AL transaction magic {0:#010x}")]
    BadMagic(u32),
    #[error("AL transaction checksum {stored:#010x} does not match {computed:#010x}")]
    BadChecksum { stored: u32, computed: u32 },
    #[error("unknown AL transaction type {0:#06x}")]
    UnknownType(u16),
    #[error("{0} slot updates do not fit one transaction")]
    TooManyUpdates(usize),
    #[error("context of {got} slots does not match the {expected} the header implies")]
    BadContext { expected: usize, got: usize },
    #[error("al-extents {slots} is out of range for a ring of {ring_blocks} blocks")]
    BadSlotCount { slots: u32, ring_blocks: u32 },
    #[error("a write over {0} extents does not fit the activity log")]
    RangeTooLarge(u64),
    #[error("sector {0} is beyond the last addressable extent")]
    OutOfRange(u64),
    #[error("no valid AL transaction in the ring")]
    NoValidTransaction,
    #[error("{corrupt} corrupt AL blocks and no update transaction")]
    Corrupt { corrupt: u32 },
    #[error("transaction {0} is not the one in flight")]
    UnknownTransaction(u32),
    #[error("extent {0} has no write in flight")]
    NotActive(u32),
}

/// An AL extent number (4 MiB of the device).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Extent(pub u32);

impl Extent {
    pub fn first_sector(self) -> Sector {
        Sector(u64::from(self.0) * EXTENT_SECTORS)
    }

    /// The extents a request of `len` sectors at `start` touches (empty when `len` is 0).
    ///
    /// # Errors
    /// `OutOfRange` when an extent number would not fit the format.
    pub fn covering(start: Sector, len: u64) -> Result<Range<u32>, AlError> {
        if len == 0 {
            return Ok(0..0);
        }
        let last_sector = start
            .0
            .checked_add(len - 1)
            .ok_or(AlError::OutOfRange(start.0))?;
        let first = start.0 / EXTENT_SECTORS;
        let last = last_sector / EXTENT_SECTORS;
        // FREE is reserved, so the last usable extent is FREE - 1.
        if last >= u64::from(FREE) {
            return Err(AlError::OutOfRange(last_sector));
        }
        Ok(first as u32..last as u32 + 1)
    }
}

/// Whether a transaction records changes or only marks a block as initialized (`create-md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionKind {
    Update,
    Initialized,
}

/// Slot `slot` now holds `extent` (`None`: the slot became free).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotUpdate {
    pub slot: u16,
    pub extent: Option<Extent>,
}

/// One 4 KiB AL transaction: slot updates plus a snapshot of `context.len()` slots starting at
/// `context_start`, out of `context_size` slots in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub tr_number: u32,
    pub kind: TransactionKind,
    pub updates: Vec<SlotUpdate>,
    pub context_size: u16,
    pub context_start: u16,
    pub context: Vec<Option<Extent>>,
}

impl Transaction {
    /// The block `create-md` writes into every ring slot.
    pub fn initialized() -> Transaction {
        Transaction {
            tr_number: 0,
            kind: TransactionKind::Initialized,
            updates: Vec::new(),
            context_size: 0,
            context_start: 0,
            context: Vec::new(),
        }
    }

    /// Context entries a header implies: the slots from `start` up to `size`, at most 919.
    fn context_len(size: u16, start: u16) -> usize {
        usize::from(size.saturating_sub(start)).min(CONTEXT_PER_TRANSACTION)
    }

    /// Encode with its checksum.
    ///
    /// # Errors
    /// `TooManyUpdates`; `BadContext` when `context` does not match `context_size`/`start`.
    pub fn encode(&self) -> Result<[u8; BLOCK], AlError> {
        if self.updates.len() > UPDATES_PER_TRANSACTION {
            return Err(AlError::TooManyUpdates(self.updates.len()));
        }
        let expected = Transaction::context_len(self.context_size, self.context_start);
        if self.context.len() != expected {
            return Err(AlError::BadContext {
                expected,
                got: self.context.len(),
            });
        }
        let mut b = [0u8; BLOCK];
        let kind = match self.kind {
            TransactionKind::Update => TYPE_UPDATE,
            TransactionKind::Initialized => TYPE_INITIALIZED,
        };
        b[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&self.tr_number.to_be_bytes());
        b[12..14].copy_from_slice(&kind.to_be_bytes());
        // At most 64 updates, checked above.
        b[14..16].copy_from_slice(&(self.updates.len() as u16).to_be_bytes());
        b[16..18].copy_from_slice(&self.context_size.to_be_bytes());
        b[18..20].copy_from_slice(&self.context_start.to_be_bytes());
        if self.kind == TransactionKind::Update {
            for i in 0..UPDATES_PER_TRANSACTION {
                let (slot, extent) = match self.updates.get(i) {
                    Some(u) => (u.slot, extent_to_disk(u.extent)),
                    None => (FREE_SLOT, FREE),
                };
                put(&mut b, UPDATE_SLOTS_AT + 2 * i, &slot.to_be_bytes());
                put(&mut b, UPDATE_EXTENTS_AT + 4 * i, &extent.to_be_bytes());
            }
            for i in 0..CONTEXT_PER_TRANSACTION {
                let extent = self.context.get(i).copied().flatten();
                put(
                    &mut b,
                    CONTEXT_AT + 4 * i,
                    &extent_to_disk(extent).to_be_bytes(),
                );
            }
        }
        let crc = checksum(&b);
        b[8..12].copy_from_slice(&crc.to_be_bytes());
        Ok(b)
    }

    /// Decode and verify one 4 KiB block.
    ///
    /// # Errors
    /// `WrongSize`, `BadMagic`, `BadChecksum` (a torn or foreign block), `UnknownType`.
    pub fn decode(block: &[u8]) -> Result<Transaction, AlError> {
        let b: &[u8; BLOCK] = block.try_into().map_err(|_| AlError::WrongSize {
            expected: BLOCK,
            got: block.len(),
        })?;
        let u16_at = |o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let magic = u32_at(0);
        if magic != MAGIC {
            return Err(AlError::BadMagic(magic));
        }
        let stored = u32_at(8);
        let computed = checksum(b);
        if stored != computed {
            return Err(AlError::BadChecksum { stored, computed });
        }
        let kind = match u16_at(12) {
            TYPE_UPDATE => TransactionKind::Update,
            TYPE_INITIALIZED => {
                return Ok(Transaction {
                    tr_number: u32_at(4),
                    ..Self::initialized()
                })
            }
            other => return Err(AlError::UnknownType(other)),
        };
        let n_updates = usize::from(u16_at(14));
        let (context_size, context_start) = (u16_at(16), u16_at(18));
        // Entries past n_updates count only if they name a slot, as drbdmeta replays them.
        let updates = (0..UPDATES_PER_TRANSACTION)
            .map(|i| (i, u16_at(UPDATE_SLOTS_AT + 2 * i)))
            .filter(|&(i, slot)| i < n_updates || slot != FREE_SLOT)
            .map(|(i, slot)| SlotUpdate {
                slot,
                extent: extent_from_disk(u32_at(UPDATE_EXTENTS_AT + 4 * i)),
            })
            .collect();
        let context = (0..Transaction::context_len(context_size, context_start))
            .map(|i| extent_from_disk(u32_at(CONTEXT_AT + 4 * i)))
            .collect();
        Ok(Transaction {
            tr_number: u32_at(4),
            kind,
            updates,
            context_size,
            context_start,
            context,
        })
    }
}

/// CRC32C as the AL uses it: seed 0, no final inversion, checksum field taken as zero.
pub fn checksum(block: &[u8; BLOCK]) -> u32 {
    // crc32c_append(!0, ..) runs the register from 0 and inverts at the end; undo that.
    let c = crc32c::crc32c_append(!0, &block[..8]);
    let c = crc32c::crc32c_append(c, &[0; 4]);
    !crc32c::crc32c_append(c, &block[12..])
}

fn put(b: &mut [u8; BLOCK], offset: usize, bytes: &[u8]) {
    b[offset..offset + bytes.len()].copy_from_slice(bytes);
}

fn extent_to_disk(e: Option<Extent>) -> u32 {
    e.map_or(FREE, |e| e.0)
}

fn extent_from_disk(v: u32) -> Option<Extent> {
    (v != FREE).then_some(Extent(v))
}

/// Ring block (0-based, 4 KiB units from the ring start) that holds transaction `tr_number`.
pub fn ring_block(geom: AlGeometry, tr_number: u32) -> u32 {
    let t = tr_number % geom.blocks();
    (t % geom.stripes()) * geom.stripe_size_4k() + t / geom.stripes()
}

/// A whole ring of initialized blocks, as `create-md` and `apply-al` leave it.
pub fn initialized_ring(geom: AlGeometry) -> Vec<u8> {
    // An initialized transaction always encodes.
    let block = Transaction::initialized().encode().unwrap_or([0; BLOCK]);
    block.repeat(geom.blocks() as usize)
}

/// What a ring says was active when the node stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// Distinct hot extents, ascending.
    pub hot: Vec<Extent>,
    /// Number of the newest valid update transaction, if any.
    pub newest: Option<u32>,
    /// Blocks that failed magic or checksum (a torn last write shows up here).
    pub corrupt: u32,
}

/// Rebuild the active set from a ring read from disk (`replay_al_84` in drbdmeta): valid
/// update transactions from oldest to newest, each applying its context then its updates.
///
/// # Errors
/// `WrongSize`; `NoValidTransaction` when no block is valid; `Corrupt` when blocks other than
/// a first, torn one are invalid and no update survived.
pub fn replay(ring: &[u8], geom: AlGeometry) -> Result<Replay, AlError> {
    let blocks = geom.blocks();
    let expected = blocks as usize * BLOCK;
    if ring.len() != expected {
        return Err(AlError::WrongSize {
            expected,
            got: ring.len(),
        });
    }
    // Logical position b holds transaction numbers congruent to b modulo the ring size.
    let logical: Vec<Option<Transaction>> = (0..blocks)
        .map(|b| {
            let at = ring_block(geom, b) as usize * BLOCK;
            Transaction::decode(&ring[at..at + BLOCK]).ok()
        })
        .collect();
    let valid = logical.iter().flatten().count() as u32;
    let corrupt = blocks - valid;
    if valid == 0 {
        return Err(AlError::NoValidTransaction);
    }
    let updates: Vec<(usize, u32)> = logical
        .iter()
        .enumerate()
        .filter_map(|(b, t)| t.as_ref().map(|t| (b, t)))
        .filter(|(_, t)| t.kind == TransactionKind::Update)
        .map(|(b, t)| (b, t.tr_number))
        .collect();
    let (Some(oldest), Some(newest)) = (
        updates
            .iter()
            .min_by_key(|&&(_, tr)| tr.wrapping_sub(updates[0].1) as i32),
        updates
            .iter()
            .max_by_key(|&&(_, tr)| tr.wrapping_sub(updates[0].1) as i32),
    ) else {
        let first_torn = corrupt == 1 && logical[0].is_none();
        if corrupt == 0 || first_torn {
            return Ok(Replay {
                hot: Vec::new(),
                newest: None,
                corrupt,
            });
        }
        return Err(AlError::Corrupt { corrupt });
    };
    let mut end = newest.0;
    if end < oldest.0 {
        end += blocks as usize;
    }
    let mut slots: HashMap<u32, u32> = HashMap::new();
    for b in oldest.0..=end {
        let Some(t) = &logical[b % blocks as usize] else {
            continue;
        };
        if t.kind != TransactionKind::Update {
            continue;
        }
        let context = t
            .context
            .iter()
            .enumerate()
            .map(|(i, e)| (u32::from(t.context_start) + i as u32, *e));
        let updates = t.updates.iter().map(|u| (u32::from(u.slot), u.extent));
        for (slot, extent) in context.chain(updates) {
            if slot < u32::from(MAX_SLOTS) {
                slots.insert(slot, extent_to_disk(extent));
            }
        }
    }
    let mut hot: Vec<Extent> = slots.into_values().filter_map(extent_from_disk).collect();
    hot.sort_unstable();
    hot.dedup();
    Ok(Replay {
        hot,
        newest: Some(newest.1),
        corrupt,
    })
}

/// What a write must do before it may be submitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Every extent is active and persisted: submit now.
    Go,
    /// Write the evicted extents' bitmap pages, then this transaction, then call
    /// [`ActivityLog::transaction_written`]; the write may go after that.
    Persist(PendingTransaction),
    /// A transaction is in flight or no slot is free: retry after the next
    /// `transaction_written` or `end_write`. No reference was taken.
    Wait,
}

/// A transaction the engine must persist before the writes waiting on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingTransaction {
    pub transaction: Transaction,
    /// Ring block to write it to ([`crate::meta::Layout::al_block_offset`]).
    pub ring_block: u32,
    /// Extents leaving the log; their bitmap pages must be on disk first.
    pub evicted: Vec<Extent>,
}

#[derive(Debug, Clone, Default)]
struct Slot {
    extent: Option<Extent>,
    refs: u32,
    last_used: u64,
}

/// The in-memory active set of `al-extents` slots, least recently used evicted first.
#[derive(Debug, Clone)]
pub struct ActivityLog {
    geom: AlGeometry,
    slots: Vec<Slot>,
    index: HashMap<Extent, u16>,
    next_tr: u32,
    context_cursor: u16,
    clock: u64,
    /// The transaction in flight and the slots it fills.
    in_flight: Option<(u32, Vec<u16>)>,
}

impl ActivityLog {
    /// An empty log of `slots` slots writing into a ring of `geom`, starting at transaction 0
    /// (the ring is freshly initialized after create-md or a replay).
    ///
    /// # Errors
    /// `BadSlotCount` unless 1 ≤ slots ≤ 919 × (ring blocks − 1), the most a ring can
    /// snapshot while one block may be torn.
    pub fn new(slots: u16, geom: AlGeometry) -> Result<ActivityLog, AlError> {
        let max = CONTEXT_PER_TRANSACTION as u64 * u64::from(geom.blocks() - 1);
        if slots == 0 || slots > MAX_SLOTS || u64::from(slots) > max {
            return Err(AlError::BadSlotCount {
                slots: slots.into(),
                ring_blocks: geom.blocks(),
            });
        }
        Ok(ActivityLog {
            geom,
            slots: vec![Slot::default(); usize::from(slots)],
            index: HashMap::new(),
            next_tr: 0,
            context_cursor: 0,
            clock: 0,
            in_flight: None,
        })
    }

    /// Whether `extent` is active and persisted.
    pub fn is_active(&self, extent: Extent) -> bool {
        self.index
            .get(&extent)
            .is_some_and(|&s| !self.is_pending(s))
    }

    /// Active extents in slot order (including any still in flight).
    pub fn active(&self) -> impl Iterator<Item = Extent> + '_ {
        self.slots.iter().filter_map(|s| s.extent)
    }

    /// Admit a write of `len` sectors at `start`: take a reference on every extent it touches
    /// and say what must be persisted first. Pair every non-`Wait` admission with `end_write`.
    ///
    /// # Errors
    /// `RangeTooLarge` when the write spans more extents than one transaction or the log
    /// holds; `OutOfRange` for sectors past the last extent.
    pub fn begin_write(&mut self, start: Sector, len: u64) -> Result<Admission, AlError> {
        let range = Extent::covering(start, len)?;
        let count = u64::from(range.end - range.start);
        if count > UPDATES_PER_TRANSACTION as u64 || count > self.slots.len() as u64 {
            return Err(AlError::RangeTooLarge(count));
        }
        let mut cold = Vec::new();
        for e in range.clone().map(Extent) {
            match self.index.get(&e) {
                Some(&slot) if self.is_pending(slot) => return Ok(Admission::Wait),
                Some(_) => {}
                None => cold.push(e),
            }
        }
        let admission = if cold.is_empty() {
            Admission::Go
        } else if self.in_flight.is_some() {
            return Ok(Admission::Wait);
        } else {
            match self.stage(&cold, &range) {
                Some(pending) => Admission::Persist(pending),
                None => return Ok(Admission::Wait),
            }
        };
        for e in range.map(Extent) {
            if let Some(&slot) = self.index.get(&e) {
                let s = &mut self.slots[usize::from(slot)];
                s.refs += 1;
                s.last_used = self.clock;
            }
        }
        self.clock += 1;
        Ok(admission)
    }

    /// The transaction `tr_number` is durable: its extents become active.
    ///
    /// # Errors
    /// `UnknownTransaction` when it is not the one in flight.
    pub fn transaction_written(&mut self, tr_number: u32) -> Result<(), AlError> {
        match self.in_flight.take() {
            Some((tr, _)) if tr == tr_number => Ok(()),
            other => {
                self.in_flight = other;
                Err(AlError::UnknownTransaction(tr_number))
            }
        }
    }

    /// A write admitted by `begin_write` is done on both sides: drop its references.
    ///
    /// # Errors
    /// `NotActive` when an extent holds no reference (nothing is changed then).
    pub fn end_write(&mut self, start: Sector, len: u64) -> Result<(), AlError> {
        let range = Extent::covering(start, len)?;
        let mut slots = Vec::with_capacity((range.end - range.start) as usize);
        for e in range.map(Extent) {
            match self.index.get(&e) {
                Some(&slot) if self.slots[usize::from(slot)].refs > 0 => slots.push(slot),
                _ => return Err(AlError::NotActive(e.0)),
            }
        }
        for slot in slots {
            self.slots[usize::from(slot)].refs -= 1;
        }
        Ok(())
    }

    fn is_pending(&self, slot: u16) -> bool {
        self.in_flight
            .as_ref()
            .is_some_and(|(_, slots)| slots.contains(&slot))
    }

    /// Put `cold` into the least recently used free-of-references slots and build the
    /// transaction; `None` when too few slots can be evicted.
    fn stage(&mut self, cold: &[Extent], range: &Range<u32>) -> Option<PendingTransaction> {
        let mut victims: Vec<u16> = (0..self.slots.len() as u16)
            .filter(|&i| {
                let s = &self.slots[usize::from(i)];
                s.refs == 0 && !s.extent.is_some_and(|e| range.contains(&e.0))
            })
            .collect();
        if victims.len() < cold.len() {
            return None;
        }
        // Empty slots first, then the least recently used.
        victims.sort_by_key(|&i| {
            let s = &self.slots[usize::from(i)];
            (s.extent.is_some(), s.last_used)
        });
        victims.truncate(cold.len());
        let mut evicted = Vec::new();
        let mut updates = Vec::with_capacity(cold.len());
        for (&slot, &extent) in victims.iter().zip(cold) {
            let s = &mut self.slots[usize::from(slot)];
            if let Some(old) = s.extent.replace(extent) {
                self.index.remove(&old);
                evicted.push(old);
            }
            self.index.insert(extent, slot);
            updates.push(SlotUpdate {
                slot,
                extent: Some(extent),
            });
        }
        let size = self.slots.len() as u16;
        let start = self.context_cursor;
        let len = Transaction::context_len(size, start);
        let context = self.slots[usize::from(start)..usize::from(start) + len]
            .iter()
            .map(|s| s.extent)
            .collect();
        let next = usize::from(start) + CONTEXT_PER_TRANSACTION;
        self.context_cursor = if next >= usize::from(size) {
            0
        } else {
            next as u16
        };
        let tr_number = self.next_tr;
        self.next_tr = self.next_tr.wrapping_add(1);
        self.in_flight = Some((tr_number, victims));
        Some(PendingTransaction {
            transaction: Transaction {
                tr_number,
                kind: TransactionKind::Update,
                updates,
                context_size: size,
                context_start: start,
                context,
            },
            ring_block: ring_block(self.geom, tr_number),
            evicted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn geom(stripes: u32, size: u32) -> AlGeometry {
        AlGeometry::new(stripes, size).unwrap()
    }

    /// Persist every pending transaction into `ring` at once, as a daemon would.
    fn admit(al: &mut ActivityLog, ring: &mut [u8], start: u64, len: u64) -> Admission {
        let a = al.begin_write(Sector(start), len).unwrap();
        if let Admission::Persist(p) = &a {
            let at = p.ring_block as usize * BLOCK;
            ring[at..at + BLOCK].copy_from_slice(&p.transaction.encode().unwrap());
            al.transaction_written(p.transaction.tr_number).unwrap();
        }
        a
    }

    fn sorted(al: &ActivityLog) -> Vec<Extent> {
        let mut v: Vec<_> = al.active().collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn initialized_block_has_create_md_crc() {
        let b = Transaction::initialized().encode().unwrap();
        assert_eq!(
            u32::from_be_bytes(b[8..12].try_into().unwrap()),
            0x709c_c651
        );
        assert_eq!(Transaction::decode(&b).unwrap(), Transaction::initialized());
    }

    #[test]
    fn ring_placement_with_stripes() {
        let g = geom(1, 8);
        assert_eq!(
            (0..10).map(|t| ring_block(g, t)).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4, 5, 6, 7, 0, 1]
        );
        let g = geom(4, 2);
        assert_eq!(
            (0..9).map(|t| ring_block(g, t)).collect::<Vec<_>>(),
            [0, 2, 4, 6, 1, 3, 5, 7, 0]
        );
    }

    #[test]
    fn lru_evicts_least_recently_used_unreferenced() {
        let g = geom(1, 8);
        let mut ring = initialized_ring(g);
        let mut al = ActivityLog::new(3, g).unwrap();
        for e in 0..3 {
            assert!(matches!(
                admit(&mut al, &mut ring, e * EXTENT_SECTORS, 8),
                Admission::Persist(_)
            ));
            al.end_write(Sector(e * EXTENT_SECTORS), 8).unwrap();
        }
        // Touch extent 0 so that 1 is the least recently used.
        assert_eq!(admit(&mut al, &mut ring, 0, 8), Admission::Go);
        al.end_write(Sector(0), 8).unwrap();
        let Admission::Persist(p) = admit(&mut al, &mut ring, 5 * EXTENT_SECTORS, 8) else {
            panic!("extent 5 was cold")
        };
        assert_eq!(p.evicted, [Extent(1)]);
        assert_eq!(sorted(&al), [Extent(0), Extent(2), Extent(5)]);
        // With every slot referenced, a cold extent has to wait and takes no reference.
        for e in [0, 2, 5] {
            assert_eq!(
                admit(&mut al, &mut ring, e * EXTENT_SECTORS, 8),
                Admission::Go
            );
        }
        assert_eq!(
            al.begin_write(Sector(9 * EXTENT_SECTORS), 8).unwrap(),
            Admission::Wait
        );
        assert_eq!(
            al.end_write(Sector(9 * EXTENT_SECTORS), 8),
            Err(AlError::NotActive(9))
        );
    }

    #[test]
    fn writes_wait_for_the_transaction_in_flight() {
        let g = geom(1, 8);
        let mut al = ActivityLog::new(67, g).unwrap();
        // A write straddling extents 0 and 1.
        let Admission::Persist(p) = al.begin_write(Sector(EXTENT_SECTORS - 8), 16).unwrap() else {
            panic!("cold")
        };
        assert_eq!(p.transaction.updates.len(), 2);
        assert!(!al.is_active(Extent(0)));
        assert_eq!(al.begin_write(Sector(0), 8).unwrap(), Admission::Wait);
        assert_eq!(
            al.begin_write(Sector(7 * EXTENT_SECTORS), 8).unwrap(),
            Admission::Wait
        );
        assert_eq!(
            al.transaction_written(5),
            Err(AlError::UnknownTransaction(5))
        );
        al.transaction_written(p.transaction.tr_number).unwrap();
        assert!(al.is_active(Extent(0)) && al.is_active(Extent(1)));
        assert_eq!(al.begin_write(Sector(0), 8).unwrap(), Admission::Go);
        assert!(matches!(
            al.begin_write(Sector(0), 65 * EXTENT_SECTORS),
            Err(AlError::RangeTooLarge(65))
        ));
    }

    #[test]
    fn replay_rebuilds_active_set_across_wraps_and_context_cycles() {
        // 2000 slots need three transactions for a full snapshot; 8 blocks keep seven.
        let g = geom(2, 4);
        let mut ring = initialized_ring(g);
        let mut al = ActivityLog::new(2000, g).unwrap();
        for i in 0..5000u64 {
            let e = (i * 7919) % 3000;
            admit(&mut al, &mut ring, e * EXTENT_SECTORS, 8);
            al.end_write(Sector(e * EXTENT_SECTORS), 8).unwrap();
        }
        let r = replay(&ring, g).unwrap();
        assert_eq!(r.hot, sorted(&al));
        assert_eq!(r.corrupt, 0);
    }

    #[test]
    fn torn_transaction_falls_back_to_older_ones() {
        let g = geom(1, 8);
        let mut ring = initialized_ring(g);
        let mut al = ActivityLog::new(67, g).unwrap();
        for e in [3, 10, 11] {
            admit(&mut al, &mut ring, e * EXTENT_SECTORS, 8);
        }
        let Admission::Persist(p) = al.begin_write(Sector(20 * EXTENT_SECTORS), 8).unwrap() else {
            panic!("cold")
        };
        // A crash tears the write of transaction 3: first sector new, the rest old.
        let at = p.ring_block as usize * BLOCK;
        ring[at..at + 512].copy_from_slice(&p.transaction.encode().unwrap()[..512]);
        let r = replay(&ring, g).unwrap();
        assert_eq!(r.hot, [Extent(3), Extent(10), Extent(11)]);
        assert_eq!((r.corrupt, r.newest), (1, Some(2)));
    }

    #[test]
    fn replay_of_fresh_and_garbage_rings() {
        let g = geom(1, 8);
        let fresh = replay(&initialized_ring(g), g).unwrap();
        assert!(fresh.hot.is_empty() && fresh.newest.is_none());
        assert_eq!(
            replay(&vec![0; 8 * BLOCK], g),
            Err(AlError::NoValidTransaction)
        );
        let mut two_bad = initialized_ring(g);
        two_bad[BLOCK] ^= 1;
        two_bad[2 * BLOCK] ^= 1;
        assert_eq!(replay(&two_bad, g), Err(AlError::Corrupt { corrupt: 2 }));
        assert!(matches!(
            replay(&[0; 100], g),
            Err(AlError::WrongSize { .. })
        ));
    }

    #[test]
    fn slot_count_bounds() {
        assert!(ActivityLog::new(6433, geom(1, 8)).is_ok());
        assert!(ActivityLog::new(6434, geom(1, 8)).is_err());
        assert!(ActivityLog::new(0, geom(1, 8)).is_err());
    }

    fn any_transaction() -> impl Strategy<Value = Transaction> {
        let update =
            (0u16..MAX_SLOTS, proptest::option::of(0u32..FREE)).prop_map(|(slot, e)| SlotUpdate {
                slot,
                extent: e.map(Extent),
            });
        (
            any::<u32>(),
            proptest::collection::vec(update, 0..=64),
            0u16..3000,
            0u16..3000,
        )
            .prop_flat_map(|(tr, updates, size, start)| {
                let len = Transaction::context_len(size, start);
                let ctx = proptest::collection::vec(proptest::option::of(0u32..FREE), len);
                ctx.prop_map(move |ctx| Transaction {
                    tr_number: tr,
                    kind: TransactionKind::Update,
                    updates: updates.clone(),
                    context_size: size,
                    context_start: start,
                    context: ctx.into_iter().map(|e| e.map(Extent)).collect(),
                })
            })
    }

    proptest! {
        #[test]
        fn transaction_round_trip(t in any_transaction()) {
            prop_assert_eq!(Transaction::decode(&t.encode().unwrap()).unwrap(), t);
        }

        #[test]
        fn any_flipped_bit_fails_the_checksum(t in any_transaction(), bit in 32usize..BLOCK * 8) {
            let mut b = t.encode().unwrap();
            b[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(Transaction::decode(&b).is_err());
        }

        #[test]
        fn arbitrary_blocks_and_rings_do_not_panic(data in proptest::collection::vec(any::<u8>(), BLOCK)) {
            let _ = Transaction::decode(&data);
            let mut ring = initialized_ring(geom(1, 8));
            ring[..BLOCK].copy_from_slice(&data);
            let _ = replay(&ring, geom(1, 8));
        }
    }
}
