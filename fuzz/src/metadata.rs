//! `metadata_loader`: the v08 superblock decoder, the layout checks against a device, AL
//! transaction decoding and the AL replay (`repl_core::meta`, `repl_core::al`) against
//! arbitrary on-disk bytes.
//!
//! Input layout (big-endian; a spent input reads as zeroes):
//!
//! ```text
//! byte 0     bit0: flexible external metadata (else internal)
//! u64        device (or metadata device) size in bytes
//! byte       AL ring for the replay: 1 + b % 3 stripes
//! byte       of 8 + b % 5 blocks each (8 to 36 blocks)
//! u16 n      then min(n, 4096) superblock bytes, zero-padded to 4096
//! records    patch the ring, which starts initialized, until the input ends:
//!   sel      bits 7-6: 00 update transaction into block sel & 63:
//!                         u32 tr_number, u8 updates (% 65) of (u16 slot, u32 extent),
//!                         u16 context_size, u16 context_start, then one u16 per context
//!                         entry (0xffff: free)
//!                      01 initialized transaction, u32 tr_number, into block sel & 63
//!                      10 raw bytes: u16 offset, u8 len, then len bytes, into block sel & 63
//!                      11 flip the byte at u16 offset of block sel & 63
//! ```
//!
//! Invariants: no panic; a decoded superblock or transaction re-encodes to an equal value;
//! a replay's hot extents are ascending and distinct and its corrupt count fits the ring.

use repl_core::al::{self, SlotUpdate, Transaction, TransactionKind};
use repl_core::meta::{AlGeometry, Layout, Placement, Superblock, BLOCK_BYTES};

use crate::cursor::Cursor;
use crate::seeds::Seed;

const BLOCK: usize = BLOCK_BYTES as usize;

/// The `metadata_loader` target.
pub fn run(data: &[u8]) {
    let mut c = Cursor::new(data);
    let placement = if c.u8() & 1 != 0 {
        Placement::FlexExternal
    } else {
        Placement::Internal
    };
    let device_bytes = c.u64();
    let stripes = 1 + u32::from(c.u8() % 3);
    let stripe_size = 8 + u32::from(c.u8() % 5);
    let geom = AlGeometry::new(stripes, stripe_size).expect("8 to 36 blocks is a valid ring");
    let n = usize::from(c.u16()).min(BLOCK);
    let given = c.take(n);
    superblock(given, placement, device_bytes, geom);
    ring(&mut c, geom);
}

fn superblock(given: &[u8], placement: Placement, device_bytes: u64, geom: AlGeometry) {
    let _ = Superblock::decode(given);
    let mut block = [0u8; BLOCK];
    block[..given.len()].copy_from_slice(given);
    for layout in [
        Layout::internal(device_bytes, geom),
        Layout::flex_external(device_bytes, geom),
    ]
    .into_iter()
    .flatten()
    {
        touch(&layout);
    }
    let Ok(sb) = Superblock::decode(&block) else {
        return;
    };
    let again = Superblock::decode(&sb.encode()).expect("an encoded superblock decodes");
    assert_eq!(again, sb, "superblock round trip");
    for s in [sb.attached(), sb.al_applied()] {
        assert_eq!(Superblock::decode(&s.encode()).as_ref(), Ok(&s));
    }
    let _ = sb.must_apply_al();
    if let Ok(layout) = Layout::of_superblock(&sb, placement, device_bytes) {
        touch(&layout);
    }
}

/// Every offset a layout computes.
fn touch(layout: &Layout) {
    let _ = layout.al_start();
    let _ = layout.bm_start();
    let _ = layout.al_bytes();
    let _ = layout.al_block_offset(layout.al.blocks() - 1);
    let _ = layout.bm_page_offset(layout.bm_bytes / BLOCK_BYTES);
}

fn ring(c: &mut Cursor, geom: AlGeometry) {
    let blocks = geom.blocks() as usize;
    let mut ring = al::initialized_ring(geom);
    while !c.is_empty() {
        let sel = c.u8();
        let at = usize::from(sel & 63) % blocks * BLOCK;
        let block = &mut ring[at..at + BLOCK];
        match sel >> 6 {
            0 => {
                let t = update(c);
                if let Ok(b) = t.encode() {
                    block.copy_from_slice(&b);
                }
            }
            1 => {
                let t = Transaction {
                    tr_number: c.u32(),
                    ..Transaction::initialized()
                };
                if let Ok(b) = t.encode() {
                    block.copy_from_slice(&b);
                }
            }
            2 => {
                let offset = usize::from(c.u16()) % BLOCK;
                let len = usize::from(c.u8()).min(BLOCK - offset);
                let bytes = c.take(len);
                block[offset..offset + bytes.len()].copy_from_slice(bytes);
            }
            _ => {
                let offset = usize::from(c.u16()) % BLOCK;
                block[offset] ^= 0xff;
            }
        }
    }
    for b in ring.chunks_exact(BLOCK) {
        if let Ok(t) = Transaction::decode(b) {
            if let Ok(e) = t.encode() {
                assert_eq!(Transaction::decode(&e).as_ref(), Ok(&t), "AL round trip");
            }
        }
    }
    let _ = al::replay(&ring[..ring.len() - 1], geom);
    if let Ok(r) = al::replay(&ring, geom) {
        assert!(
            r.hot.windows(2).all(|w| w[0] < w[1]),
            "hot extents not ascending: {:?}",
            r.hot
        );
        assert!(
            r.corrupt < geom.blocks(),
            "corrupt {} of {blocks}",
            r.corrupt
        );
    }
}

fn update(c: &mut Cursor) -> Transaction {
    let tr_number = c.u32();
    let n = usize::from(c.u8()) % 65;
    let updates = (0..n)
        .map(|_| SlotUpdate {
            slot: c.u16(),
            extent: extent(c.u32()),
        })
        .collect();
    let context_size = c.u16();
    let context_start = c.u16();
    let len =
        usize::from(context_size.saturating_sub(context_start)).min(al::CONTEXT_PER_TRANSACTION);
    let context = (0..len)
        .map(|_| match c.u16() {
            0xffff => None,
            e => Some(al::Extent(u32::from(e))),
        })
        .collect();
    Transaction {
        tr_number,
        kind: TransactionKind::Update,
        updates,
        context_size,
        context_start,
        context,
    }
}

fn extent(v: u32) -> Option<al::Extent> {
    (v != u32::MAX).then_some(al::Extent(v))
}

// ---- seeds ----

fn header(out: &mut Vec<u8>, flex: bool, device_bytes: u64, stripes: u8, size: u8) {
    out.push(u8::from(flex));
    out.extend_from_slice(&device_bytes.to_be_bytes());
    out.push(stripes);
    out.push(size);
}

fn put_update(out: &mut Vec<u8>, block: u8, tr: u32, updates: &[(u16, u32)], ctx: (u16, u16)) {
    out.push(block & 63);
    out.extend_from_slice(&tr.to_be_bytes());
    out.push(updates.len() as u8);
    for (slot, extent) in updates {
        out.extend_from_slice(&slot.to_be_bytes());
        out.extend_from_slice(&extent.to_be_bytes());
    }
    out.extend_from_slice(&ctx.0.to_be_bytes());
    out.extend_from_slice(&ctx.1.to_be_bytes());
    for i in ctx.1..ctx.0 {
        out.extend_from_slice(&(i * 3).to_be_bytes());
    }
}

/// `metadata_loader` seeds: fresh internal and external metadata, and rings with updates,
/// wrap-around, a torn block and raw corruption.
pub fn seeds() -> Vec<Seed> {
    let geom = AlGeometry::default();
    let mut v: Vec<Seed> = Vec::new();
    let device: u64 = 1 << 30;
    let sb_bytes = |layout: Layout| -> Vec<u8> {
        let sb = Superblock::fresh(&layout).attached();
        let mut b = sb.encode().to_vec();
        // Only the fields matter; the zero tail is implied.
        b.truncate(96);
        b
    };
    for (name, flex, layout) in [
        ("internal-fresh", false, Layout::internal(device, geom)),
        (
            "external-fresh",
            true,
            Layout::flex_external(128 << 20, geom),
        ),
    ] {
        let Ok(layout) = layout else { continue };
        let mut b = Vec::new();
        header(&mut b, flex, if flex { 128 << 20 } else { device }, 0, 0);
        let sb = sb_bytes(layout);
        b.extend_from_slice(&(sb.len() as u16).to_be_bytes());
        b.extend_from_slice(&sb);
        v.push((name, b));
    }
    let base = |stripes, size| {
        let mut b = Vec::new();
        header(&mut b, false, device, stripes, size);
        b.extend_from_slice(&0u16.to_be_bytes());
        b
    };
    let mut b = base(0, 0);
    put_update(&mut b, 0, 0, &[(0, 7), (1, 9)], (4, 0));
    put_update(&mut b, 1, 1, &[(1, u32::MAX), (2, 100)], (4, 2));
    v.push(("ring-two-updates", b));
    let mut b = base(1, 1);
    for tr in 0..20u32 {
        put_update(&mut b, tr as u8, tr, &[(tr as u16 % 5, tr * 2)], (0, 0));
    }
    v.push(("ring-wrapped-striped", b));
    let mut b = base(0, 0);
    put_update(&mut b, 0, 10, &[(0, 1)], (2, 0));
    put_update(&mut b, 1, 11, &[(1, 2)], (2, 0));
    b.extend_from_slice(&[0xc1, 0x00, 0x40]);
    v.push(("ring-torn", b));
    let mut b = base(0, 0);
    put_update(&mut b, 3, 0xffff_fffe, &[(0, 1)], (0, 0));
    put_update(&mut b, 4, 0xffff_ffff, &[(1, 2)], (0, 0));
    put_update(&mut b, 5, 0, &[(2, 3)], (0, 0));
    b.extend_from_slice(&[0x82, 0x00, 0x10, 4, 1, 2, 3, 4]);
    b.push(0x46);
    b.extend_from_slice(&7u32.to_be_bytes());
    v.push(("ring-number-wrap-raw", b));
    v
}
