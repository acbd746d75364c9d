//! Bitmap-driven resync at a fixed rate (`c-plan-ahead 0`): the target walks its bitmap in
//! device order, asks for runs of out-of-sync blocks (`P_RS_DATA_REQUEST`, up to 1 MiB), the
//! source reads and answers (`P_RS_DATA_REPLY`), the target writes, clears its bits and acks
//! (`P_RS_WRITE_ACK`) so that the source clears its own.
//!
//! An application write to a range whose resync data is on its way wins: the reply is
//! dropped and the blocks the write did not cover are asked for again.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::peer::{CallId, Handler, PeerWrite, Phase};
use super::{After, DiskOp, DiskResult, Engine, Event, OpFor, Output};
use crate::bitmap::BLOCK_BYTES;
use crate::state::{ConnState, DiskState};
use crate::time::Instant;
use crate::types::Sector;
use crate::wire::{AckKind, DataFlags, DataKind, Packet};

/// The target's planning interval (`SLEEP_TIME`, 100 ms).
pub const TICK: Duration = Duration::from_millis(100);
/// Largest resync request, in 4 KiB blocks (1 MiB, DRBD's max BIO size).
const MAX_RUN_BITS: u64 = 256;
/// Resync requests in flight at most.
const MAX_IN_FLIGHT: usize = 32;
/// Resync request ids start here, apart from request ids: `P_RS_WRITE_ACK` acks both resync
/// data (DRBD's `ID_SYNCER`) and application writes made during a resync.
pub(super) const RS_ID_BASE: u64 = 1 << 63;
/// Progress marks for the recent speed (`DRBD_SYNC_MARK_STEP`, `DRBD_SYNC_MARKS`).
const MARK_STEP: Duration = Duration::from_secs(3);
const MARKS: usize = 8;

/// A resync in progress on this node.
#[derive(Debug)]
pub(super) struct Resync {
    pub source: bool,
    started: Instant,
    last_now: Instant,
    last_tick: Instant,
    /// Out-of-sync blocks when it began.
    total_bits: u64,
    /// Blocks synced so far (for the rate shown).
    synced_bits: u64,
    /// The next block the target looks at.
    pos: u64,
    inflight: HashMap<u64, InFlight>,
    pub(super) next_id: u64,
    /// Bytes the rate allows to request now.
    credit: u64,
    rate_kib: u64,
    /// Blocks the source could not read or the target could not write, this pass.
    failed_bits: u64,
    /// `(when, blocks left)` every [`MARK_STEP`], oldest first.
    marks: std::collections::VecDeque<(Instant, u64)>,
    /// The source's reads that wait for an overlapping local write to finish: read now, they
    /// could miss its data and the target would clear bits for blocks it never got.
    deferred: Vec<(u64, Sector, u32)>,
}

#[derive(Debug)]
struct InFlight {
    bits: Range<u64>,
    /// An application write overlapped it after it was asked for: drop the reply.
    stale: bool,
}

/// Resync progress for status output, in DRBD's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ResyncStatus {
    /// This node is the source.
    pub source: bool,
    /// KiB out of sync when the resync began (`rs_total`).
    pub total_kib: u64,
    /// KiB still out of sync.
    pub left_kib: u64,
    /// KiB synced so far.
    pub synced_kib: u64,
    /// Milliseconds since it began, as of the engine's last input.
    pub elapsed_ms: u64,
    /// KiB that were left at the oldest progress mark, and how long ago that was.
    pub mark_left_kib: u64,
    pub mark_age_ms: u64,
    /// The configured rate (`want:`), KiB/s.
    pub want_kib: u64,
}

impl Engine {
    /// `drbd_start_resync` begins with `before-resync-target` on the target and
    /// `before-resync-source` on the source: the engine asks for the handler and waits in
    /// WFSyncUUID or WFBitMapS for [`Engine::handler_returned`], packets still flowing.
    pub(super) fn call_before_resync(&mut self, source: bool) {
        let call = CallId(self.next_call);
        self.next_call += 1;
        let Some(p) = self.peer.as_mut() else {
            return;
        };
        p.phase = Phase::BeforeResync { source, call };
        let handler = if source {
            Handler::BeforeResyncSource
        } else {
            Handler::BeforeResyncTarget
        };
        self.out
            .push_back(Output::Event(Event::HandlerCall { handler, call }));
    }

    /// A handler the engine waits for ([`Event::HandlerCall`]) exited with `status`, at
    /// `now`. `before-resync-target` (or `before-resync-source`, where 3 is ignored) that
    /// fails drops the connection for good (StandAlone); otherwise the resync starts. Results
    /// for a call the engine no longer waits for (the connection went meanwhile) are ignored.
    pub fn handler_returned(&mut self, call: CallId, status: i32, now: Instant) {
        self.advance(now);
        self.handler_returned_inner(call, status, now);
        self.release_held();
    }

    fn handler_returned_inner(&mut self, call: CallId, status: i32, now: Instant) {
        let Some(Phase::BeforeResync {
            source,
            call: waiting,
        }) = self.peer.as_ref().map(|p| p.phase)
        else {
            return;
        };
        if waiting != call {
            return;
        }
        let name = if source {
            Handler::BeforeResyncSource.name()
        } else {
            Handler::BeforeResyncTarget.name()
        };
        if status != 0 {
            if source && status == 3 {
                self.log(format!(
                    "{name} handler returned {status}, ignoring. Old userland tools?"
                ));
            } else {
                self.abort_connection(&format!(
                    "{name} handler returned {status}, dropping connection."
                ));
                return;
            }
        }
        if self.state.disk <= DiskState::Failed {
            // The disk went while the handler ran: the next handshake decides anew.
            self.log("the disk is gone; no resync on this connection".into());
            self.out.push_back(Output::Disconnect { reconnect: true });
            self.lose_and_reconnect(ConnState::NetworkFailure);
            return;
        }
        if source {
            let random = self.rng.next_u64();
            let sync = self.sb.uuids.start_resync_as_source(random);
            self.write_superblock(After::Nothing);
            self.send(Packet::SyncUuid { uuid: sync.0 });
        }
        self.start_resync(source, now);
    }

    /// Enters SyncSource or SyncTarget with the merged bitmap.
    pub(super) fn start_resync(&mut self, source: bool, now: Instant) {
        let rate_kib = self.cfg.net.map_or(250, |n| n.resync_rate_kib.max(1));
        let total_bits = self.bitmap.count();
        if let Some(p) = self.peer.as_mut() {
            p.phase = Phase::Running;
            let first_id = RS_ID_BASE.max(p.rs_stale_below);
            p.resync = Some(Resync {
                source,
                started: now,
                last_now: now,
                last_tick: now,
                total_bits,
                synced_bits: 0,
                pos: 0,
                inflight: HashMap::new(),
                next_id: first_id,
                credit: rate_kib * 1024 / 10,
                rate_kib,
                failed_bits: 0,
                marks: std::collections::VecDeque::from([(now, total_bits)]),
                deferred: Vec::new(),
            });
        }
        let conn = if source {
            ConnState::SyncSource
        } else {
            ConnState::SyncTarget
        };
        self.force_state(|s| s.conn = conn);
        self.log(format!(
            "Began resync as {} (will sync {} KB [{} bits set]).",
            conn,
            total_bits * 4,
            total_bits
        ));
        self.queue_dirty_pages();
        self.pump_meta();
        if source {
            self.resync_progress();
        } else {
            // A Primary target's writes waited for the sync UUID (`writes_wait_for_sync_uuid`)
            // and, with the handler awaited, for the resync to start.
            self.release_writes_held_for_sync();
            self.request_resync_data();
        }
    }

    /// When the resync target plans next.
    pub(super) fn next_resync_tick(&self) -> Option<Instant> {
        let r = self.peer.as_ref()?.resync.as_ref()?;
        (!r.source).then(|| r.last_tick + TICK)
    }

    /// The resync target plans its next requests.
    pub(super) fn resync_tick(&mut self, now: Instant) {
        let Some(r) = self.peer.as_mut().and_then(|p| p.resync.as_mut()) else {
            return;
        };
        if r.source || now < r.last_tick {
            return;
        }
        let dt = u128::from((now - r.last_tick).as_nanos() as u64);
        let earned = (u128::from(r.rate_kib) * 1024 * dt / 1_000_000_000) as u64;
        let cap = (r.rate_kib * 1024 / 5).max(MAX_RUN_BITS * BLOCK_BYTES);
        r.credit = r.credit.saturating_add(earned).min(cap);
        r.last_tick = now;
        self.resync_clock(now);
        self.request_resync_data();
    }

    /// Time as of the latest input, and a progress mark every [`MARK_STEP`].
    pub(super) fn resync_clock(&mut self, now: Instant) {
        let left = self.bitmap.count();
        let Some(r) = self.peer.as_mut().and_then(|p| p.resync.as_mut()) else {
            return;
        };
        r.last_now = r.last_now.max(now);
        if r.marks.back().is_none_or(|(t, _)| now - *t >= MARK_STEP) {
            r.marks.push_back((now, left));
            if r.marks.len() > MARKS {
                r.marks.pop_front();
            }
        }
    }

    /// Asks for the next runs of out-of-sync blocks, within the rate and in-flight limits.
    fn request_resync_data(&mut self) {
        let end_bit = self.size.div_ceil(BLOCK_BYTES);
        let mut requests = Vec::new();
        {
            let Some(r) = self.peer.as_mut().and_then(|p| p.resync.as_mut()) else {
                return;
            };
            if r.source {
                return;
            }
            while r.inflight.len() < MAX_IN_FLIGHT && r.credit >= BLOCK_BYTES {
                let affordable = (r.credit / BLOCK_BYTES).min(MAX_RUN_BITS);
                let Some(run) = self.bitmap.next_run(r.pos, affordable) else {
                    r.pos = end_bit;
                    break;
                };
                if run.start >= end_bit {
                    r.pos = end_bit;
                    break;
                }
                let run = run.start..run.end.min(end_bit);
                let (offset, len) = (run.start * BLOCK_BYTES, (run.end - run.start) * BLOCK_BYTES);
                let len = len.min(self.size - offset);
                r.pos = run.end;
                r.credit -= (run.end - run.start) * BLOCK_BYTES;
                let id = r.next_id;
                r.next_id += 1;
                r.inflight.insert(
                    id,
                    InFlight {
                        bits: run,
                        stale: false,
                    },
                );
                requests.push((id, offset, len));
            }
        }
        for (id, offset, len) in requests {
            self.send(Packet::RsRequest {
                id,
                sector: Sector(offset / Sector::SIZE),
                len: len as u32,
            });
        }
        self.resync_progress();
    }

    /// The source reads what the target asked for.
    pub(super) fn on_rs_request(&mut self, id: u64, sector: Sector, len: u32) {
        let offset = sector.bytes();
        let in_range = offset
            .checked_add(u64::from(len))
            .is_some_and(|end| end <= self.size);
        if !in_range || len == 0 || u64::from(len) > MAX_RUN_BITS * BLOCK_BYTES {
            self.protocol_error(format!(
                "P_RS_DATA_REQUEST {offset}+{len} is not a valid range"
            ));
            return;
        }
        let Some(link) = self.peer.as_ref().map(|p| p.gen) else {
            return;
        };
        if self.state.disk < DiskState::UpToDate || self.detaching() {
            self.send(Packet::RsNegReply { id, sector, len });
            return;
        }
        if self.local_write_unfinished_over(offset, u64::from(len)) {
            if let Some(r) = self.peer.as_mut().and_then(|p| p.resync.as_mut()) {
                r.deferred.push((id, sector, len));
                return;
            }
        }
        self.op(
            OpFor::RsRead { link, id, sector },
            DiskOp::Read { offset, len },
        );
    }

    /// Reads the deferred resync and peer read requests that no unfinished write overlaps
    /// any more.
    pub(super) fn retry_deferred_rs_reads(&mut self) {
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        let reads = std::mem::take(&mut peer.deferred_reads);
        let rs = peer
            .resync
            .as_mut()
            .map(|r| std::mem::take(&mut r.deferred))
            .unwrap_or_default();
        for (id, sector, len) in reads {
            self.on_data_request(id, sector, len);
        }
        let any = !rs.is_empty();
        for (id, sector, len) in rs {
            self.on_rs_request(id, sector, len);
        }
        if any {
            self.resync_progress();
        }
    }

    /// Whether a write that went to the disk (or a mirrored write from the peer, which came
    /// before the request on the same stream) has not finished there and overlaps.
    pub(super) fn local_write_unfinished_over(&self, offset: u64, len: u64) -> bool {
        self.requests.values().any(|p| {
            p.issued
                && p.local.is_none()
                && p.request.writes()
                && p.request
                    .range()
                    .is_some_and(|r| super::overlaps(r, (offset, len)))
        }) || self
            .peer_writes
            .values()
            .any(|w| !w.resync && super::overlaps((w.offset, w.len), (offset, len)))
    }

    pub(super) fn rs_read_done(&mut self, link: u64, id: u64, sector: Sector, result: DiskResult) {
        if self.peer.as_ref().is_none_or(|p| p.gen != link) {
            return;
        }
        match result {
            DiskResult::Data(data) => self.send_read_data(data, |digest, data| Packet::RsReply {
                id,
                sector,
                digest,
                data,
            }),
            _ => {
                self.log(format!("resync read error at sector {}", sector.0));
                self.local_io_error(&format!("a resync read at sector {}", sector.0));
                // The length is what was asked for; a failed read carries none, so ask the
                // target to retry the smallest unit it may have requested.
                self.send(Packet::RsNegReply {
                    id,
                    sector,
                    len: BLOCK_BYTES as u32,
                });
            }
        }
    }

    /// The target receives resync data: write it unless an application write overtook it.
    pub(super) fn on_rs_reply(
        &mut self,
        id: u64,
        sector: Sector,
        digest: Option<u32>,
        data: Bytes,
        now: Instant,
    ) {
        if !self.digest_ok(digest, &data) {
            self.protocol_error("resync data integrity check failed".into());
            return;
        }
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        let link = peer.gen;
        // A reply to a request of a resync this node aborted (a disk failed).
        let stale = id < peer.rs_stale_below;
        let Some(r) = peer.resync.as_mut().filter(|r| !r.source) else {
            // A reply to a request of a resync that was aborted is dropped: its bits stay set.
            let aborted = stale || (peer.resync.is_none() && id >= RS_ID_BASE);
            if !aborted {
                self.protocol_error("P_RS_DATA_REPLY while not SyncTarget".into());
            }
            return;
        };
        r.last_now = now;
        let Some(inflight) = r.inflight.get(&id) else {
            if !stale {
                self.protocol_error(format!("P_RS_DATA_REPLY for unknown request {id}"));
            }
            return;
        };
        let offset = inflight.bits.start * BLOCK_BYTES;
        let expect =
            ((inflight.bits.end - inflight.bits.start) * BLOCK_BYTES).min(self.size - offset);
        if sector.bytes() != offset || data.len() as u64 != expect {
            self.protocol_error(format!(
                "P_RS_DATA_REPLY {}+{} does not answer request {id} ({offset}+{expect})",
                sector.bytes(),
                data.len()
            ));
            return;
        }
        self.counters.nr += data.len() as u64 / 1024;
        if inflight.stale {
            r.inflight.remove(&id);
            // The blocks the application write did not cover are still set; look again.
            r.pos = 0;
            self.request_resync_data();
            return;
        }
        let key = self.next_peer_write;
        self.next_peer_write += 1;
        self.peer_writes.insert(
            key,
            PeerWrite {
                link,
                id,
                epoch: 0,
                offset,
                len: data.len() as u64,
                kind: DataKind::Write,
                flags: DataFlags::default(),
                data,
                resync: true,
                issued: false,
                bits_first: None,
                sender_lacks: false,
            },
        );
        self.peer_wait.push_back(key);
        self.admit_peer_writes();
    }

    pub(super) fn on_rs_neg_reply(&mut self, id: u64, sector: Sector, _len: u32, now: Instant) {
        let Some(r) = self.peer.as_mut().and_then(|p| p.resync.as_mut()) else {
            return;
        };
        r.last_now = now;
        if let Some(f) = r.inflight.remove(&id) {
            r.failed_bits += f.bits.end - f.bits.start;
        }
        self.log(format!(
            "resync: the peer could not read sector {}",
            sector.0
        ));
        self.request_resync_data();
    }

    /// The target wrote resync data: clear the bits, tell the source.
    pub(super) fn rs_write_done(&mut self, link: u64, id: u64, offset: u64, len: u64, ok: bool) {
        if self.peer.as_ref().is_none_or(|p| p.gen != link) {
            return;
        }
        if let Some(r) = self.peer.as_mut().and_then(|p| p.resync.as_mut()) {
            if let Some(f) = r.inflight.remove(&id) {
                if ok {
                    r.synced_bits += f.bits.end - f.bits.start;
                } else {
                    r.failed_bits += f.bits.end - f.bits.start;
                }
            }
        }
        let sector = Sector(offset / Sector::SIZE);
        if ok {
            let _ = self.bitmap.clear_bytes(offset, len);
            self.send(Packet::Ack {
                kind: AckKind::RsWrite,
                id,
                sector,
                len: len as u32,
            });
        } else {
            self.send(Packet::Ack {
                kind: AckKind::Neg,
                id,
                sector,
                len: len as u32,
            });
        }
        self.request_resync_data();
    }

    /// The source hears that the target wrote resync data.
    pub(super) fn rs_write_acked(&mut self, sector: Sector, len: u32) {
        let cleared = self
            .bitmap
            .clear_bytes(sector.bytes(), u64::from(len))
            .unwrap_or(0);
        if let Some(r) = self.peer.as_mut().and_then(|p| p.resync.as_mut()) {
            r.synced_bits += cleared;
        }
        self.resync_progress();
    }

    /// An application write to this range overtakes resync data still on its way, and
    /// resync data received but not yet written: that data is older and is dropped, and the
    /// blocks the write does not cover are asked for again.
    pub(super) fn mark_resync_requests_stale(&mut self, offset: u64, len: u64) {
        let Some(r) = self.peer.as_mut().and_then(|p| p.resync.as_mut()) else {
            return;
        };
        for f in r.inflight.values_mut() {
            let (o, l) = (
                f.bits.start * BLOCK_BYTES,
                (f.bits.end - f.bits.start) * BLOCK_BYTES,
            );
            if super::overlaps((o, l), (offset, len)) {
                f.stale = true;
            }
        }
        let dropped: Vec<u64> = self
            .peer_writes
            .iter()
            .filter(|(_, w)| {
                w.resync && !w.issued && super::overlaps((w.offset, w.len), (offset, len))
            })
            .map(|(k, _)| *k)
            .collect();
        for key in dropped {
            if let Some(w) = self.peer_writes.remove(&key) {
                r.inflight.remove(&w.id);
                r.pos = 0;
            }
            self.peer_wait.retain(|k| *k != key);
        }
    }

    /// Ends the resync when nothing is left (or only blocks that failed).
    pub(super) fn resync_progress(&mut self) {
        let end_bit = self.size.div_ceil(BLOCK_BYTES);
        let resync_writes = self.peer_writes.values().any(|w| w.resync);
        let Some(r) = self.peer.as_mut().and_then(|p| p.resync.as_mut()) else {
            return;
        };
        let left = self.bitmap.count();
        if r.source {
            // Deferred requests are answered first: the target waits for them.
            if left == 0 && r.deferred.is_empty() {
                self.finish_resync(true);
            }
            return;
        }
        if r.pos < end_bit || !r.inflight.is_empty() || resync_writes {
            return;
        }
        if left == 0 {
            self.finish_resync(true);
        } else if r.failed_bits > 0 {
            self.finish_resync(false);
        } else {
            // Blocks marked behind the scan position (P_OUT_OF_SYNC, dropped replies).
            r.pos = 0;
        }
    }

    /// A disk on either side failed mid-resync: the resync ends where it stands, with its
    /// bits kept and no UUID change. Replies still on their way are dropped on arrival.
    pub(super) fn abort_resync(&mut self) {
        let Some(p) = self.peer.as_mut() else {
            return;
        };
        let Some(r) = p.resync.take() else {
            return;
        };
        // A later resync on this connection numbers its requests past the aborted one's.
        p.rs_stale_below = r.next_id;
        self.log(format!(
            "Resync aborted: a disk failed ({} bits left)",
            self.bitmap.count()
        ));
    }

    /// `drbd_resync_finished`: UUIDs and disk states move, the bitmap is written.
    pub(super) fn finish_resync(&mut self, ok: bool) {
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        let Some(r) = peer.resync.take() else {
            return;
        };
        let peer_uuids = peer.uuids.map(|u| u.uuids);
        let secs = (r.last_now - r.started).as_secs().max(1);
        let kib = r.synced_bits * 4;
        self.log(format!(
            "Resync done (total {} sec; paused 0 sec; {} K/sec)",
            (r.last_now - r.started).as_secs(),
            kib / secs
        ));
        if r.source {
            if let Some(p) = self.peer.as_mut() {
                p.target_finishing = true;
            }
            if ok {
                self.sb.uuids.finish_resync_as_source();
            }
            self.force_state(|s| {
                s.conn = ConnState::Connected;
                s.pdsk = if ok {
                    DiskState::UpToDate
                } else {
                    DiskState::Inconsistent
                };
            });
        } else if ok {
            let role = self.state.role;
            if let Some(p) = peer_uuids {
                self.sb.uuids.finish_resync_as_target(&p, role);
            }
            self.set_crashed_primary(false);
            self.force_state(|s| {
                s.conn = ConnState::Connected;
                s.disk = DiskState::UpToDate;
            });
            self.emit_handler(super::Handler::AfterResyncTarget);
        } else {
            self.log(format!(
                "{} KB failed to resync; the disk stays Inconsistent",
                r.failed_bits * 4
            ));
            self.force_state(|s| s.conn = ConnState::Connected);
        }
        self.queue_dirty_pages();
        self.write_superblock(After::Nothing);
        self.send_uuids(crate::uuid::UuidFlags::default());
        self.send_state();
    }

    /// Progress for status output.
    pub(super) fn resync_status(&self) -> Option<ResyncStatus> {
        let r = self.peer.as_ref()?.resync.as_ref()?;
        Some(ResyncStatus {
            source: r.source,
            total_kib: r.total_bits * 4,
            left_kib: self.bitmap.count() * 4,
            synced_kib: r.synced_bits * 4,
            elapsed_ms: (r.last_now - r.started).as_millis() as u64,
            mark_left_kib: r.marks.front().map_or(r.total_bits, |m| m.1) * 4,
            mark_age_ms: r
                .marks
                .front()
                .map_or(0, |m| (r.last_now - m.0).as_millis() as u64),
            want_kib: r.rate_kib,
        })
    }
}
