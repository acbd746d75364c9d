//! Scripted single-node scenarios over an in-memory disk with internal metadata.

use super::*;
use crate::meta::{self, AlGeometry, MetaWrite};
use crate::state::{Fencing, FORCED_UP_TO_DATE};

/// The single-node tests do not need time to pass.
const T0: Instant = Instant::from_nanos(0);

#[path = "pair_tests.rs"]
mod pair;

const DEV: u64 = 64 << 20;

/// A backing device in memory: data and internal metadata in one buffer.
struct MemDisk {
    bytes: Vec<u8>,
    layout: Layout,
}

impl MemDisk {
    /// `create-md` on a zeroed device.
    fn created() -> MemDisk {
        MemDisk::created_with(DEV)
    }

    /// `create-md` on a zeroed device of `dev` bytes.
    fn created_with(dev: u64) -> MemDisk {
        let layout = Layout::internal(dev, AlGeometry::default()).unwrap();
        let mut d = MemDisk {
            bytes: vec![0; dev as usize],
            layout,
        };
        for w in meta::create_md(&layout, &Superblock::fresh(&layout)) {
            match w {
                MetaWrite::Data { offset, bytes } => d.put(offset, &bytes),
                MetaWrite::Zeroes { offset, len } => d.put(offset, &vec![0; len as usize]),
            }
        }
        d
    }

    fn put(&mut self, offset: u64, data: &[u8]) {
        let o = offset as usize;
        self.bytes[o..o + data.len()].copy_from_slice(data);
    }

    fn get(&self, offset: u64, len: usize) -> &[u8] {
        &self.bytes[offset as usize..offset as usize + len]
    }

    fn superblock(&self) -> Superblock {
        Superblock::decode(self.get(self.layout.md_offset, 4096)).unwrap()
    }

    fn on_disk(&self) -> OnDisk {
        let l = self.layout;
        OnDisk {
            layout: l,
            superblock: self.superblock(),
            al_ring: self.get(l.al_start(), l.al_bytes() as usize).to_vec(),
            bitmap: Bitmap::from_bytes(
                OnDisk::bitmap_bits(&l),
                self.get(l.bm_start(), l.bm_bytes as usize),
            )
            .unwrap(),
        }
    }

    /// Performs one operation and returns its result.
    fn perform(&mut self, kind: &DiskOp) -> DiskResult {
        match kind {
            DiskOp::Read { offset, len } => {
                DiskResult::Data(Bytes::copy_from_slice(self.get(*offset, *len as usize)))
            }
            DiskOp::Write { offset, data, .. } | DiskOp::MetaWrite { offset, data } => {
                self.put(*offset, data);
                DiskResult::Done
            }
            DiskOp::Trim { offset, len } | DiskOp::WriteZeroes { offset, len, .. } => {
                self.put(*offset, &vec![0; *len as usize]);
                DiskResult::Done
            }
            DiskOp::Flush => DiskResult::Done,
        }
    }
}

fn config(al_extents: u16) -> EngineConfig {
    EngineConfig {
        resource: "r0".into(),
        volume: 0,
        minor: 0,
        al_extents,
        context: Context {
            fencing: Fencing::DontCare,
            ..Context::default()
        },
        seed: 42,
        net: None,
        on_io_error: OnIoError::Detach,
    }
}

/// Everything the engine said that is not a disk operation.
#[derive(Default)]
struct Seen {
    completions: Vec<(ReqId, Result<Option<Bytes>, RequestError>)>,
    events: Vec<Event>,
    disk_ops: Vec<DiskOp>,
}

/// Drains outputs, performing every disk operation at once, until the engine is quiet.
fn settle(e: &mut Engine, d: &mut MemDisk) -> Seen {
    let mut seen = Seen::default();
    while let Some(o) = e.poll_output() {
        match o {
            Output::Disk { op, kind } => {
                let r = d.perform(&kind);
                seen.disk_ops.push(kind);
                e.disk_done(op, r, T0);
            }
            Output::Complete { req, result } => seen.completions.push((req, result)),
            Output::Event(ev) => seen.events.push(ev),
            Output::Send(p) => panic!("a node without a peer sent {p:?}"),
            Output::Disconnect { .. } => panic!("a node without a peer disconnected"),
        }
    }
    seen
}

/// Drains outputs without completing disk operations; returns them in order.
fn pending_ops(e: &mut Engine) -> Vec<(OpId, DiskOp)> {
    let mut ops = vec![];
    while let Some(o) = e.poll_output() {
        if let Output::Disk { op, kind } = o {
            ops.push((op, kind));
        }
    }
    ops
}

fn primary(al_extents: u16) -> (Engine, MemDisk) {
    let mut d = MemDisk::created();
    let mut e = Engine::attach(config(al_extents), d.on_disk()).unwrap();
    settle(&mut e, &mut d);
    e.command(Command::Primary { force: true }, false).unwrap();
    settle(&mut e, &mut d);
    (e, d)
}

fn write(offset: u64, byte: u8, len: usize) -> Request {
    Request::Write {
        offset,
        data: Bytes::from(vec![byte; len]),
        fua: false,
    }
}

#[test]
fn fresh_metadata_attaches_inconsistent_and_needs_force() {
    let mut d = MemDisk::created();
    let mut e = Engine::attach(config(61), d.on_disk()).unwrap();
    settle(&mut e, &mut d);
    assert_eq!(e.state().disk, DiskState::Inconsistent);
    assert_eq!(e.state().conn, ConnState::StandAlone);
    assert_eq!(
        d.superblock().state,
        MdState::Unclean,
        "attached metadata is marked unclean"
    );
    let err = e
        .command(Command::Primary { force: false }, false)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "State change failed: (-2) Need access to UpToDate data"
    );
    assert_eq!(e.submit(write(0, 1, 512), T0), Err(SubmitError::NotPrimary));
    let before = e.uuids().current;
    e.command(Command::Primary { force: true }, false).unwrap();
    let seen = settle(&mut e, &mut d);
    assert!(seen.events.contains(&Event::Log(FORCED_UP_TO_DATE.into())));
    assert_eq!(
        (e.state().role, e.state().disk),
        (Role::Primary, DiskState::UpToDate)
    );
    assert_ne!(
        e.uuids().current,
        before,
        "a forced promotion starts a new generation"
    );
    let sb = d.superblock();
    assert_eq!(sb.uuids, e.uuids());
    assert!(sb.flags.contains(MdFlags::PRIMARY_IND) && sb.flags.contains(MdFlags::CONSISTENT));
    assert_eq!(sb.la_size, Sector(DEV / 512).min(d.layout.max_usable));
}

#[test]
fn a_write_to_a_cold_extent_waits_for_its_al_transaction() {
    let (mut e, mut d) = primary(61);
    let req = e.submit(write(5 << 20, 7, 4096), T0).unwrap();
    let ops = pending_ops(&mut e);
    assert_eq!(ops.len(), 1, "only the AL transaction goes first: {ops:?}");
    let (op, kind) = &ops[0];
    assert!(
        matches!(kind, DiskOp::MetaWrite { offset, .. } if *offset == d.layout.al_block_offset(0))
    );
    let r = d.perform(kind);
    e.disk_done(*op, r, T0);
    let seen = settle(&mut e, &mut d);
    assert!(matches!(seen.disk_ops[..], [DiskOp::Write { offset, .. }] if offset == 5 << 20));
    assert_eq!(seen.completions, vec![(req, Ok(None))]);
    assert_eq!(d.get(5 << 20, 4096), &[7; 4096][..]);
    // A second write to the same extent goes straight to the disk.
    e.submit(write((5 << 20) + 8192, 8, 512), T0).unwrap();
    let ops = pending_ops(&mut e);
    assert!(matches!(ops[..], [(_, DiskOp::Write { .. })]), "{ops:?}");
    let st = e.status();
    assert_eq!(st.counters.al, 1);
    assert_eq!(st.counters.dw, 4);
    assert_eq!(
        e.out_of_sync_blocks(),
        2,
        "no peer: written blocks are out of sync"
    );
}

#[test]
fn writes_wait_for_the_superblock_that_records_the_promotion() {
    let mut d = MemDisk::created();
    let mut e = Engine::attach(config(61), d.on_disk()).unwrap();
    settle(&mut e, &mut d);
    e.command(Command::Primary { force: true }, false).unwrap();
    e.submit(write(0, 1, 512), T0).unwrap();
    let ops = pending_ops(&mut e);
    assert!(
        matches!(ops[..], [(_, DiskOp::MetaWrite { offset, .. })] if offset == d.layout.md_offset),
        "nothing but the superblock before it is durable: {ops:?}"
    );
    let r = d.perform(&ops[0].1);
    e.disk_done(ops[0].0, r, T0);
    let seen = settle(&mut e, &mut d);
    assert_eq!(seen.completions.len(), 1);
}

#[test]
fn eviction_writes_the_bitmap_page_before_the_transaction() {
    let (mut e, mut d) = primary(1);
    e.submit(write(0, 1, 4096), T0).unwrap();
    settle(&mut e, &mut d);
    e.submit(write(40 << 20, 2, 4096), T0).unwrap();
    let seen = settle(&mut e, &mut d);
    let kinds: Vec<&str> = seen
        .disk_ops
        .iter()
        .map(|k| match k {
            DiskOp::MetaWrite { offset, .. } if *offset >= d.layout.al_start() => "al",
            DiskOp::MetaWrite { .. } => "bitmap",
            DiskOp::Write { .. } => "data",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["bitmap", "al", "data"]);
    // The page on disk already holds the bit of the first write.
    let page = d.get(d.layout.bm_page_offset(0), 8);
    assert_eq!(page[0] & 1, 1);
}

#[test]
fn crash_as_primary_marks_hot_extents_out_of_sync() {
    let (mut e, mut d) = primary(61);
    for (i, off) in [0u64, 9 << 20, 30 << 20].iter().enumerate() {
        e.submit(write(*off, i as u8 + 1, 4096), T0).unwrap();
    }
    settle(&mut e, &mut d);
    // kill -9: the engine is gone, the disk holds what was written.
    drop(e);
    let sb = d.superblock();
    assert_eq!(sb.state, MdState::Unclean);
    assert!(sb.must_apply_al());
    let mut e = Engine::attach(config(61), d.on_disk()).unwrap();
    let seen = settle(&mut e, &mut d);
    assert!(
        seen.events.contains(&Event::Log(
            "Marked additional 12288 KB as out-of-sync based on AL.".into()
        )),
        "{:?}",
        seen.events
    );
    assert_eq!(e.out_of_sync_blocks(), 3 * 1024);
    assert_eq!(
        e.state().disk,
        DiskState::UpToDate,
        "was up to date before the crash"
    );
    assert_eq!(e.state().role, Role::Secondary);
    assert_eq!(
        d.get(9 << 20, 4096),
        &[2; 4096][..],
        "acknowledged data is on disk"
    );
    // The replay's bits reached the on-disk bitmap, and a second crash keeps them.
    drop(e);
    let mut e = Engine::attach(config(61), d.on_disk()).unwrap();
    settle(&mut e, &mut d);
    assert_eq!(e.out_of_sync_blocks(), 3 * 1024);
}

#[test]
fn down_leaves_clean_metadata_with_the_bitmap() {
    let (mut e, mut d) = primary(61);
    e.submit(write(4096, 3, 8192), T0).unwrap();
    settle(&mut e, &mut d);
    e.command(Command::Down, false).unwrap();
    let seen = settle(&mut e, &mut d);
    assert_eq!(seen.events.last(), Some(&Event::Down));
    assert_eq!(e.submit(write(0, 1, 1), T0), Err(SubmitError::Down));
    let sb = d.superblock();
    assert_eq!(sb.state, MdState::Clean);
    assert!(sb.flags.contains(MdFlags::AL_CLEAN));
    assert!(!sb.flags.contains(MdFlags::PRIMARY_IND));
    assert!(sb.flags.contains(MdFlags::WAS_UP_TO_DATE));
    let mut again = Engine::attach(config(61), d.on_disk()).unwrap();
    let seen = settle(&mut again, &mut d);
    assert!(!seen
        .events
        .iter()
        .any(|ev| matches!(ev, Event::Log(l) if l.starts_with("Marked"))));
    assert_eq!(
        again.out_of_sync_blocks(),
        2,
        "the bitmap survived down and up"
    );
    assert_eq!(again.state().disk, DiskState::UpToDate);
}

#[test]
fn secondary_is_refused_while_the_device_is_open() {
    let (mut e, mut d) = primary(61);
    let err = e.command(Command::Secondary, true).unwrap_err();
    assert!(err.to_string().contains("(-12)"), "{err}");
    e.command(Command::Secondary, false).unwrap();
    settle(&mut e, &mut d);
    assert_eq!(e.state().role, Role::Secondary);
    assert!(!d.superblock().flags.contains(MdFlags::PRIMARY_IND));
}

#[test]
fn reads_flush_trim_and_bad_ranges() {
    let (mut e, mut d) = primary(61);
    e.submit(write(1 << 20, 9, 4096), T0).unwrap();
    // In-flight requests have no order among themselves: let the write finish first.
    settle(&mut e, &mut d);
    let r = e
        .submit(
            Request::Read {
                offset: 1 << 20,
                len: 4096,
            },
            T0,
        )
        .unwrap();
    let f = e.submit(Request::Flush, T0).unwrap();
    let seen = settle(&mut e, &mut d);
    let read = seen.completions.iter().find(|(id, _)| *id == r).unwrap();
    assert_eq!(read.1, Ok(Some(Bytes::from(vec![9u8; 4096]))));
    assert!(seen
        .completions
        .iter()
        .any(|(id, res)| *id == f && res.is_ok()));
    assert!(seen.disk_ops.contains(&DiskOp::Flush));
    e.submit(
        Request::Trim {
            offset: 1 << 20,
            len: 4096,
        },
        T0,
    )
    .unwrap();
    settle(&mut e, &mut d);
    assert_eq!(d.get(1 << 20, 4096), &[0; 4096][..]);
    let size = e.status().size.bytes();
    assert!(matches!(
        e.submit(write(size - 512, 1, 1024), T0),
        Err(SubmitError::OutOfRange { .. })
    ));
    assert!(matches!(
        e.submit(write(size - 1024, 1, 100), T0),
        Err(SubmitError::Unaligned { .. })
    ));
    let big = Request::Trim {
        offset: 0,
        len: u32::MAX,
    };
    assert!(matches!(e.submit(big, T0), Err(SubmitError::TooLarge(_))));
}

#[test]
fn failed_disk_io_fails_the_request() {
    let (mut e, mut d) = primary(61);
    e.submit(write(0, 1, 512), T0).unwrap();
    settle(&mut e, &mut d);
    let req = e.submit(write(0, 2, 512), T0).unwrap();
    let ops = pending_ops(&mut e);
    e.disk_done(ops[0].0, DiskResult::Failed, T0);
    let seen = settle(&mut e, &mut d);
    assert_eq!(seen.completions, vec![(req, Err(RequestError::Io))]);
}

#[test]
fn new_current_uuid_clear_bitmap_empties_the_bitmap() {
    let (mut e, mut d) = primary(61);
    e.submit(write(0, 1, 4096), T0).unwrap();
    settle(&mut e, &mut d);
    assert_eq!(e.out_of_sync_blocks(), 1);
    let before = e.uuids().current;
    e.command(Command::NewCurrentUuid { clear_bitmap: true }, false)
        .unwrap();
    settle(&mut e, &mut d);
    assert_eq!(e.out_of_sync_blocks(), 0);
    assert_ne!(e.uuids().current, before);
    assert_eq!(d.superblock().uuids, e.uuids());
}

#[test]
fn invalidate_without_a_peer_marks_everything_out_of_sync() {
    let (mut e, mut d) = primary(61);
    let err = e.command(Command::Invalidate, false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "State change failed: (-15) Need a connection to start verify or resync",
        "a Primary can only be invalidated by a full sync from its peer (StartingSyncT)"
    );
    e.command(Command::Secondary, false).unwrap();
    settle(&mut e, &mut d);
    e.command(Command::Invalidate, false).unwrap();
    settle(&mut e, &mut d);
    assert_eq!(e.state().disk, DiskState::Inconsistent);
    assert_eq!(e.out_of_sync_blocks(), e.bitmap.bits());
    let sb = d.superblock();
    assert!(!sb.flags.contains(MdFlags::CONSISTENT));
    let again = Engine::attach(config(61), d.on_disk()).unwrap();
    assert_eq!(
        again.out_of_sync_blocks(),
        e.bitmap.bits(),
        "bitmap persisted"
    );
    assert_eq!(again.state().disk, DiskState::Inconsistent);
}

#[test]
fn invalidate_remote_without_a_peer_needs_a_standalone_primary() {
    let (mut e, mut d) = primary(61);
    e.command(Command::InvalidateRemote, false).unwrap();
    assert!(!e.command_pending());
    settle(&mut e, &mut d);
    assert_eq!(
        (e.state().disk, e.state().pdsk),
        (DiskState::UpToDate, DiskState::Inconsistent),
        "the next connection makes the peer a full-sync target"
    );
    assert_eq!(e.out_of_sync_blocks(), e.bitmap.bits());
    let again = Engine::attach(config(61), d.on_disk()).unwrap();
    assert_eq!(
        again.out_of_sync_blocks(),
        e.bitmap.bits(),
        "bitmap persisted"
    );

    e.command(Command::Secondary, false).unwrap();
    settle(&mut e, &mut d);
    let err = e.command(Command::InvalidateRemote, false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "State change failed: (-15) Need a connection to start verify or resync"
    );
}
