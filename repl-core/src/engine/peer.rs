//! The engine's peer half: the connect-time handshake (sizes, UUIDs, states, the UUID rules,
//! the bitmap exchange), mirrored writes with their acks and epochs on the Primary, and the
//! Secondary's side of them. The resync itself is in [`super::resync`].
//!
//! The daemon establishes the link (versions, authentication, `P_PROTOCOL` agreement, see
//! [`crate::link`]) and then calls [`Engine::peer_connected`]; it feeds every later packet to
//! [`Engine::receive`] and reports a broken link with [`Engine::peer_lost`].

use std::collections::BTreeMap;

use bytes::Bytes;

use super::resync::Resync;
use super::{After, Engine, OpFor, Output, ReqId, Request};
use crate::bitmap::BLOCK_BYTES;
use crate::state::{
    lost_contact_to_peer_data, ConnState, DiskState, NodeState, Role, StateChangeError,
};
use crate::types::{Sector, Uuid};
use crate::uuid::{
    uuid_compare, CompareOptions, Correction, GenerationUuids, HandshakeSide, UuidFlags,
};
use crate::wire::{
    AckKind, DataFlags, DataKind, IntegrityAlg, Packet, PeerState, Protocol, MAX_VERSION,
};

/// The `net` options the engine uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    pub protocol: Protocol,
    pub two_primaries: bool,
    pub integrity: Option<IntegrityAlg>,
    /// `resync-rate` in KiB/s (`c-plan-ahead 0` semantics: a fixed rate).
    pub resync_rate_kib: u64,
    /// `timeout`: how long the peer may take to answer, in 0.1 s units (DRBD's unit, kept
    /// for its log lines).
    pub timeout_ds: u32,
    /// `ko-count`: a request the peer has not answered within `ko-count * timeout` drops the
    /// connection (`request_timer_fn`); 0 disables the check.
    pub ko_count: u32,
}

impl NetConfig {
    /// `ko-count * timeout`, or `None` when either is 0 (the request timer is off).
    pub fn effective_timeout(&self) -> Option<std::time::Duration> {
        let ds = u64::from(self.timeout_ds) * u64::from(self.ko_count);
        (ds > 0).then(|| std::time::Duration::from_millis(ds * 100))
    }
}

/// What the link agreed on, handed to [`Engine::peer_connected`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkParams {
    pub protocol: Protocol,
    pub integrity: Option<IntegrityAlg>,
    /// This node breaks ties in the handshake (DRBD: the node that holds the
    /// resolve-conflicts flag); exactly one side sets it.
    pub resolve_conflicts: bool,
    /// `--discard-my-data` was given here.
    pub discard_my_data: bool,
    /// The agreed wire protocol version ([`crate::link::PeerInfo::version`]).
    pub version: u32,
}

/// Handler scripts of the `handlers` section the engine asks the daemon to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Handler {
    InitialSplitBrain,
    SplitBrain,
    BeforeResyncTarget,
    BeforeResyncSource,
    AfterResyncTarget,
    LocalIoError,
}

impl Handler {
    /// The handler's name in the config.
    pub fn name(self) -> &'static str {
        match self {
            Handler::InitialSplitBrain => "initial-split-brain",
            Handler::SplitBrain => "split-brain",
            Handler::BeforeResyncTarget => "before-resync-target",
            Handler::BeforeResyncSource => "before-resync-source",
            Handler::AfterResyncTarget => "after-resync-target",
            Handler::LocalIoError => "local-io-error",
        }
    }
}

/// Identifies a handler call until [`Engine::handler_returned`] reports its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallId(pub u64);

/// Where a request's network part stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Net {
    /// Not mirrored (no peer, a read, or the link went away).
    NotSent,
    /// Sent; the ack the protocol asks for has not arrived.
    Waiting,
    /// The protocol's condition is met; waiting for the epoch's barrier ack.
    Acked,
    /// The peer could not write it (`P_NEG_ACK`); its range goes out of sync.
    Failed,
    /// The epoch was confirmed (`NET_DONE`).
    Done,
}

impl Net {
    /// The protocol's condition for completing to the block layer holds.
    pub(super) fn satisfied(self) -> bool {
        self != Net::Waiting
    }

    /// Nothing more will arrive for it.
    pub(super) fn finished(self) -> bool {
        matches!(self, Net::NotSent | Net::Done)
    }

    /// The peer holds (or will hold, under A and B) the data.
    pub(super) fn peer_has_data(self) -> bool {
        matches!(self, Net::Acked | Net::Done)
    }

    pub(super) fn is_mirrored(self) -> bool {
        self != Net::NotSent
    }

    /// Counts in `pe:`.
    pub(super) fn pending(self) -> bool {
        matches!(self, Net::Waiting | Net::Acked)
    }
}

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Waiting for the peer's sizes, UUIDs and state.
    ReportParams,
    /// Bitmaps are being exchanged before a resync in this direction.
    Bitmaps { source: bool },
    /// The target waits for the source's sync UUID.
    WaitSyncUuid,
    /// `before-resync-target` or `before-resync-source` runs; the resync starts when it
    /// returned 0 (`drbd_start_resync`).
    BeforeResync { source: bool, call: CallId },
    /// Connected, syncing or not.
    Running,
}

/// What the peer told us in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PeerUuids {
    pub uuids: GenerationUuids,
    pub bits: u64,
    pub flags: UuidFlags,
}

/// One established connection.
#[derive(Debug)]
pub(super) struct Peer {
    pub gen: u64,
    pub params: LinkParams,
    pub phase: Phase,
    pub sizes: Option<u64>,
    pub uuids: Option<PeerUuids>,
    pub state: Option<PeerState>,
    pub bitmap_received: bool,
    pub bitmap_sent: bool,
    /// The epoch new writes join, and how many were sent in it.
    pub epoch: u32,
    pub epoch_writes: u32,
    /// The Secondary's view of the Primary's epochs.
    pub epochs: BTreeMap<u32, RecvEpoch>,
    /// Epochs whose flush is running: `(epoch, writes)`, acked when it completes.
    pub acking: Vec<(u32, u32)>,
    pub resync: Option<Resync>,
    /// Reads the peer asked for (`P_DATA_REQUEST`) that wait for an overlapping write to
    /// finish here, so that they return its data.
    pub deferred_reads: Vec<(u64, Sector, u32)>,
    /// The bitmap count in our last `P_UUIDS`: both sides judge leftover bits from the same
    /// two numbers.
    pub sent_bits: u64,
    /// When the last `P_BARRIER` went out (`last_sent_barrier_jif`).
    pub barrier_sent_at: Option<crate::time::Instant>,
    /// The request whose epoch has not been closed for `ko-count * timeout` already got its
    /// warning.
    pub unsent_barrier_warned: Option<ReqId>,
    /// Our resync as source ended and the target has not yet sent the UUIDs of its own end:
    /// until then its Inconsistent disk is the resync still finishing there (a stale range
    /// re-requested), not a reason for a new handshake.
    pub target_finishing: bool,
    /// `P_STATE_CHG_REQ`s sent and `P_STATE_CHG_REPLY`s received on this link.
    pub state_reqs_sent: u64,
    pub state_replies: u64,
    /// Resync request ids below this belong to a resync aborted on this connection (this
    /// node lost its disk): their late replies are dropped, and a later resync numbers its
    /// requests from here.
    pub rs_stale_below: u64,
}

/// An epoch of writes received from the Primary.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct RecvEpoch {
    pub received: u32,
    pub done: u32,
    /// `P_BARRIER` arrived (every barrier is flushed; the flag says the Primary asked).
    pub barrier: Option<bool>,
}

/// A write from the peer (a mirrored write or resync data), waiting for an overlapping write
/// or in flight on the local disk.
#[derive(Debug, Clone)]
pub(super) struct PeerWrite {
    pub link: u64,
    pub id: u64,
    pub epoch: u32,
    pub offset: u64,
    pub len: u64,
    pub kind: DataKind,
    pub flags: DataFlags,
    pub data: Bytes,
    /// Resync data (`P_RS_DATA_REPLY`) rather than a mirrored write.
    pub resync: bool,
    pub issued: bool,
    /// This disk holds the only copy: the write waits until the bitmap recording it is
    /// durable (this mark), so that no crash leaves its blocks changed and unmarked.
    pub bits_first: Option<u64>,
    /// The sender had no disk of its own to hold it (Diskless, or one being attached): this
    /// node records it as out of sync for the peer.
    pub sender_lacks: bool,
}

/// How many 64-bit words one `P_BITMAP` carries.
const BITMAP_WORDS_PER_PACKET: u64 = 4096;

impl Engine {
    /// The wire protocol version agreed with the peer, 0 when unconnected. UUID rules that
    /// depend on DRBD versions see DRBD's newest (tandem implements all of them).
    pub(super) fn agreed_pro_version(&self) -> u32 {
        if self.peer.is_some() {
            crate::uuid::PRO_VERSION_MAX
        } else {
            0
        }
    }

    pub(super) fn send(&mut self, packet: Packet) {
        self.out.push_back(Output::Send(packet));
    }

    /// Sends `P_UUIDS` when connected.
    pub(super) fn send_uuids(&mut self, extra: UuidFlags) {
        if self.peer.is_none() {
            return;
        }
        let mut flags = extra.0;
        if self.crashed_primary {
            flags |= UuidFlags::CRASHED_PRIMARY.0;
        }
        if self.state.disk == DiskState::Inconsistent
            || self.negotiating == Some(DiskState::Inconsistent)
        {
            flags |= UuidFlags::INCONSISTENT.0;
        }
        if self.peer.as_ref().is_some_and(|p| p.params.discard_my_data) {
            flags |= UuidFlags::DISCARD_MY_DATA.0;
        }
        let bits = self.bitmap.count();
        if let Some(p) = self.peer.as_mut() {
            p.sent_bits = bits;
        }
        let packet = Packet::Uuids {
            uuids: self.sb.uuids,
            bitmap_bits: bits,
            flags,
        };
        self.send(packet);
    }

    /// Sends `P_STATE` when connected.
    pub(super) fn send_state(&mut self) {
        if self.peer.is_none() {
            return;
        }
        let s = PeerState {
            role: self.state.role,
            disk: self.state.disk,
        };
        self.send(Packet::State(s));
    }

    /// Applies a state change the network imposes (DRBD's hard changes), sanitized.
    pub(super) fn force_state(&mut self, f: impl FnOnce(&mut NodeState)) {
        let mut ns = self.state;
        f(&mut ns);
        let ns = self.state.sanitize(ns);
        self.set_state(ns);
    }

    pub(super) fn connect_command(&mut self) -> Result<(), super::CommandError> {
        if self.cfg.net.is_none() {
            return Err(super::CommandError::NoNetConfig);
        }
        if self.state.conn == ConnState::StandAlone {
            self.force_state(|s| s.conn = ConnState::Unconnected);
            self.force_state(|s| s.conn = ConnState::WFConnection);
        }
        Ok(())
    }

    /// Drops the link (if any) and goes StandAlone.
    pub(super) fn disconnect_command(&mut self) {
        if self.state.conn == ConnState::StandAlone {
            return;
        }
        if self.peer.is_some() {
            self.send(Packet::Disconnect);
            self.out.push_back(Output::Disconnect { reconnect: false });
            self.link_lost(ConnState::Disconnecting);
        }
        self.force_state(|s| s.conn = ConnState::StandAlone);
    }

    /// Whether the daemon should keep (re)connecting the link.
    pub fn wants_link(&self) -> bool {
        self.state.conn >= ConnState::Unconnected && !self.going_down
    }

    /// The link is established and agreed (see [`crate::link`]): exchange sizes, UUIDs and
    /// states; the handshake decision follows when the peer's have arrived.
    pub fn peer_connected(&mut self, params: LinkParams) {
        if self.peer.is_some() || !self.wants_link() {
            self.out.push_back(Output::Disconnect { reconnect: false });
            return;
        }
        self.link_gen += 1;
        self.peer = Some(Peer {
            gen: self.link_gen,
            params,
            phase: Phase::ReportParams,
            sizes: None,
            uuids: None,
            state: None,
            bitmap_received: false,
            bitmap_sent: false,
            epoch: 0,
            epoch_writes: 0,
            epochs: BTreeMap::new(),
            acking: Vec::new(),
            resync: None,
            sent_bits: 0,
            deferred_reads: Vec::new(),
            barrier_sent_at: None,
            unsent_barrier_warned: None,
            state_reqs_sent: 0,
            state_replies: 0,
            target_finishing: false,
            rs_stale_below: 0,
        });
        self.force_state(|s| s.conn = ConnState::WFReportParams);
        let backing = if self.state.disk > DiskState::Diskless {
            self.size
        } else {
            0
        };
        self.send(Packet::Sizes {
            backing,
            requested: 0,
            current: self.size,
        });
        // An Inconsistent disk not yet durable is reported once it is (`announce_disk`).
        if !self.announce_pending {
            self.send_uuids(UuidFlags::default());
            self.send_state();
        }
    }

    /// The superblock that made the disk Inconsistent is durable: the peer hears of it now,
    /// and a handshake that waited for our report runs.
    pub(super) fn announce_disk(&mut self) {
        if !std::mem::take(&mut self.announce_pending) {
            return;
        }
        self.send_uuids(UuidFlags::default());
        self.send_state();
        if self
            .peer
            .as_ref()
            .is_some_and(|p| p.phase == Phase::ReportParams)
        {
            self.maybe_handshake();
        }
    }

    /// The link broke (`NetworkFailure`); the node waits for the peer again.
    pub fn peer_lost(&mut self) {
        if self.peer.is_none() {
            return;
        }
        self.link_lost(ConnState::NetworkFailure);
        if self.state.conn != ConnState::StandAlone {
            self.force_state(|s| s.conn = ConnState::Unconnected);
            self.force_state(|s| s.conn = ConnState::WFConnection);
        }
        self.release_held();
    }

    /// Ends a connection because of a protocol violation; the link reconnects.
    pub(super) fn protocol_error(&mut self, what: String) {
        self.log(format!("protocol error: {what}"));
        self.out.push_back(Output::Disconnect { reconnect: true });
        self.link_lost(ConnState::ProtocolError);
        self.force_state(|s| s.conn = ConnState::Unconnected);
        self.force_state(|s| s.conn = ConnState::WFConnection);
    }

    /// Ends a connection for good (split brain, unrelated data, a refused size): StandAlone
    /// until the operator connects again.
    pub(super) fn abort_connection(&mut self, why: &str) {
        self.log(why.to_owned());
        self.out.push_back(Output::Disconnect { reconnect: false });
        self.link_lost(ConnState::Disconnecting);
        self.force_state(|s| s.conn = ConnState::StandAlone);
    }

    /// Forgets the connection: whatever the peer did not confirm is out of sync, requests
    /// waiting for the peer complete on their local result, a Primary that loses its peer's
    /// data starts a new generation.
    pub(super) fn link_lost(&mut self, via: ConnState) {
        let Some(_peer) = self.peer.take() else {
            return;
        };
        self.net_log.clear();
        let old = self.state;
        if self.state.disk == DiskState::Negotiating {
            // The connection broke before the handshake placed the new disk: its data may lack
            // what the peer wrote meanwhile, so it waits to be a resync target.
            self.negotiating = None;
            self.force_state(|s| s.disk = DiskState::Inconsistent);
        }
        let mut lost: Vec<ReqId> = Vec::new();
        for (req, p) in &mut self.requests {
            if p.remote_read && p.local.is_none() {
                p.local = Some(Err(super::RequestError::Io));
                p.net = Net::NotSent;
                lost.push(*req);
                continue;
            }
            if p.net.is_mirrored() && p.net != super::peer::Net::Done {
                if let (true, Some((offset, len))) = (p.request.writes(), p.request.range()) {
                    let _ = self.bitmap.set_bytes(offset, len);
                }
                p.net = Net::NotSent;
                lost.push(*req);
            }
        }
        lost.sort();
        self.force_state(|s| s.conn = via);
        if !self.new_current_on_peer_data_loss(old) {
            self.write_superblock(After::Nothing);
        }
        self.queue_dirty_pages();
        self.pump_meta();
        for req in lost {
            self.maybe_complete(req);
        }
        self.admit_peer_writes();
        self.release_writes_held_for_sync();
        self.state_request_link_lost();
    }

    /// A packet from the peer.
    pub fn receive(&mut self, packet: Packet, now: crate::time::Instant) {
        self.advance(now);
        self.receive_inner(packet, now);
        self.release_held();
    }

    fn receive_inner(&mut self, packet: Packet, now: crate::time::Instant) {
        if self.peer.is_none() {
            return;
        }
        self.resync_clock(now);
        match packet {
            Packet::Sizes { backing, .. } => self.on_sizes(backing),
            Packet::Uuids {
                uuids,
                bitmap_bits,
                flags,
            } => self.on_uuids(uuids, bitmap_bits, UuidFlags(flags)),
            Packet::State(s) => self.on_state(s),
            Packet::Bitmap {
                offset,
                words,
                last,
            } => self.on_bitmap(offset, &words, last),
            Packet::SyncUuid { uuid } => self.on_sync_uuid(Uuid(uuid)),
            Packet::Data {
                id,
                sector,
                len,
                kind,
                flags,
                epoch,
                digest,
                data,
            } => self.on_data(id, sector, len, kind, flags, epoch, digest, data),
            Packet::Ack {
                kind,
                id,
                sector,
                len,
            } => self.on_ack(kind, id, sector, len),
            Packet::Barrier { epoch, flush } => self.on_barrier(epoch, flush),
            Packet::BarrierAck { epoch, writes } => self.on_barrier_ack(epoch, writes),
            Packet::RsRequest { id, sector, len } => self.on_rs_request(id, sector, len),
            Packet::RsReply {
                id,
                sector,
                digest,
                data,
            } => self.on_rs_reply(id, sector, digest, data, now),
            Packet::RsNegReply { id, sector, len } => self.on_rs_neg_reply(id, sector, len, now),
            Packet::DataRequest { id, sector, len } => self.on_data_request(id, sector, len),
            Packet::DataReply {
                id,
                sector,
                digest,
                data,
            } => self.on_data_reply(id, sector, digest, data),
            Packet::NegDataReply { id, .. } => self.on_neg_data_reply(id),
            Packet::StateChgReq(change) => self.on_state_chg_req(change, now),
            Packet::StateChgReply(result) => self.on_state_chg_reply(result, now),
            Packet::OutOfSync { sector, len } => {
                let _ = self.bitmap.set_bytes(sector.bytes(), u64::from(len));
            }
            Packet::Disconnect => {
                self.log("peer closed the connection".into());
                self.link_lost(ConnState::Disconnecting);
                self.force_state(|s| s.conn = ConnState::Unconnected);
                self.force_state(|s| s.conn = ConnState::WFConnection);
            }
            other => self.protocol_error(format!("unexpected {other:?} on a volume")),
        }
    }

    // ---- handshake ----

    fn on_sizes(&mut self, backing: u64) {
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        peer.sizes = Some(backing);
        if self.state.disk <= DiskState::Diskless {
            // No disk: the device is as large as the peer's (`drbd_set_my_capacity`).
            if backing > 0 && backing != self.size {
                self.size = backing - backing % Sector::SIZE;
                self.log(format!("size = {} KB (the peer's disk)", self.size / 1024));
            }
            return;
        }
        if backing == 0 || backing >= self.size {
            return;
        }
        if self.state.disk >= DiskState::Outdated {
            let why = format!(
                "The peer's disk size is too small! ({} < {} sectors)",
                backing / Sector::SIZE,
                self.size / Sector::SIZE
            );
            self.abort_connection(&why);
            return;
        }
        // Fresh or Inconsistent data: the device takes the smaller size.
        let old = self.size;
        self.size = backing - backing % Sector::SIZE;
        self.sb.la_size = Sector(self.size / Sector::SIZE);
        let first = self.size.div_ceil(BLOCK_BYTES);
        let _ = self.bitmap.clear_bits(first..self.bitmap.bits());
        self.log(format!(
            "size = {} KB (was {} KB): the peer's disk is smaller",
            self.size / 1024,
            old / 1024
        ));
    }

    fn on_uuids(&mut self, uuids: GenerationUuids, bits: u64, flags: UuidFlags) {
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        let received = PeerUuids { uuids, bits, flags };
        let phase = peer.phase;
        peer.uuids = Some(received);
        let no_disk = self.state.disk <= DiskState::Failed;
        if phase == Phase::Running
            && no_disk
            && (self.state.role == Role::Primary || self.state.conn >= ConnState::Connected)
        {
            // A diskless node exposes the peer's data: it follows its generation
            // (`drbd_set_ed_uuid`), which the next connection must match once Primary.
            let primary = u64::from(self.state.role == Role::Primary);
            self.sb.uuids.current = Uuid(uuids.current.masked() | primary);
        }
        peer.target_finishing = false;
        if phase == Phase::Running && self.state.conn == ConnState::Connected {
            let state = self.state;
            if self
                .sb
                .uuids
                .accept_skip_initial_sync(&uuids, flags, &state, MAX_VERSION.max(90))
            {
                self.log("Accepting skip initial sync from peer".into());
                self.skip_initial_sync();
                self.write_superblock(After::Superblock);
                // The peer's copy of our UUIDs still says JUST_CREATED and Inconsistent; a
                // later handshake on this connection (`invalidate`) must see these.
                self.send_uuids(UuidFlags::default());
                self.send_state();
            }
        }
    }

    /// Both disks become UpToDate without a resync (`new-current-uuid --clear-bitmap` on
    /// fresh metadata while connected).
    pub(super) fn skip_initial_sync(&mut self) {
        self.clear_bitmap();
        self.force_state(|s| {
            s.disk = DiskState::UpToDate;
            s.pdsk = DiskState::UpToDate;
        });
    }

    fn on_state(&mut self, s: PeerState) {
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        let first = peer.state.is_none();
        peer.state = Some(s);
        let phase = peer.phase;
        let target_finishing = peer.target_finishing;
        if phase == Phase::ReportParams {
            if first {
                self.maybe_handshake();
            }
            return;
        }
        // The peer's role and disk as it reports them, within what the connection allows.
        let syncing = self.state.conn > ConnState::Connected;
        let old = self.state;
        // A peer disk that fails ends a resync (`sanitize_state`: "Abort resync if a disk
        // fails/detaches"), finished when this target already holds every block; otherwise a
        // resync keeps the peer's disk state it implies.
        let peer_disk_gone = s.disk <= DiskState::Failed;
        if syncing && peer_disk_gone {
            if self.state.conn == ConnState::SyncTarget && self.bitmap.count() == 0 {
                self.finish_resync(true);
            } else {
                self.abort_resync();
            }
        }
        self.force_state(|ns| {
            ns.peer = s.role;
            if !syncing || peer_disk_gone {
                ns.pdsk = s.disk;
            }
        });
        if !syncing && old.pdsk == DiskState::UpToDate && s.disk <= DiskState::Failed {
            // The peer's copy stopped vouching for its data (a disk error): mirrored writes
            // it acked but has not confirmed by P_BARRIER_ACK may be missing there (those
            // still waiting for their ack get a P_NEG_ACK).
            let mut failed = Vec::new();
            for (req, p) in &mut self.requests {
                if p.request.writes() && p.net == Net::Acked {
                    p.net = Net::Failed;
                    failed.push(*req);
                }
            }
            failed.sort();
            for req in failed {
                self.maybe_complete(req);
            }
        }
        if self.new_current_on_peer_data_loss(old) {
            self.send_uuids(UuidFlags::default());
        }
        // While our own Inconsistent disk is not announced yet, the peer decides nothing
        // and neither do we: the announcement starts the resync.
        if phase == Phase::Running
            && self.state.conn == ConnState::Connected
            && !self.announce_pending
            && !target_finishing
        {
            let (me, them) = (self.state.disk, s.disk);
            let inconsistent = DiskState::Inconsistent;
            let negotiating = DiskState::Negotiating;
            if (me == inconsistent && them == DiskState::UpToDate)
                || (me == DiskState::UpToDate && them == inconsistent)
                || me == negotiating
                || them == negotiating
            {
                // One side newly attached a disk (`receive_state`'s "consider resync").
                self.sync_handshake();
                let settled = self.state.conn == ConnState::Connected
                    && self
                        .peer
                        .as_ref()
                        .is_some_and(|p| p.phase == Phase::Running);
                if them == negotiating && settled {
                    // No resync: the attaching side decides on our state too.
                    self.send_state();
                }
            }
        }
        self.recheck_state_request();
    }

    /// `after_state_ch`, "Lost contact to peer's copy of the data": while a Primary writes,
    /// this copy moves on alone in a new generation. Returns whether one began. tandem also
    /// counts a SyncSource losing its target (which keeps pdsk Inconsistent): the target may
    /// have finished unseen (a one-way partition) and be promoted on its own.
    pub(super) fn new_current_on_peer_data_loss(&mut self, old: NodeState) -> bool {
        let source_lost = matches!(old.conn, ConnState::SyncSource | ConnState::PausedSyncS)
            && self.state.conn < ConnState::Connected;
        // tandem also counts a peer promoted without its disk (detached while Secondary): its
        // writes reach only this copy from now on. 8.4 keeps the generation, and an attach
        // of the peer's disk later finds equal UUIDs and resyncs nothing.
        let diskless_peer_promoted = old.peer != Role::Primary
            && self.state.peer == Role::Primary
            && self.state.pdsk <= DiskState::Failed;
        let lost = lost_contact_to_peer_data(old.pdsk, self.state.pdsk)
            || source_lost
            || diskless_peer_promoted;
        if !(lost && self.sb.uuids.needs_new_current_on_peer_loss(&self.state)) {
            return false;
        }
        let random = self.rng.next_u64();
        self.sb.uuids.begin_generation(random, self.state.role);
        self.log(format!("new current UUID {}", self.sb.uuids.current));
        self.write_superblock(After::Superblock);
        true
    }

    /// Runs the handshake once the peer's sizes, UUIDs and state are in.
    fn maybe_handshake(&mut self) {
        let ready = !self.announce_pending
            && self
                .peer
                .as_ref()
                .is_some_and(|p| p.sizes.is_some() && p.uuids.is_some() && p.state.is_some());
        if ready {
            self.sync_handshake();
        }
    }

    /// DRBD's `drbd_sync_handshake`: the UUID rules, then disk states, split brain and the
    /// role checks decide between no resync, SyncSource, SyncTarget and dropping the link.
    fn sync_handshake(&mut self) {
        let Some(peer) = self.peer.as_ref() else {
            return;
        };
        let (Some(theirs), Some(their_state)) = (peer.uuids, peer.state) else {
            return;
        };
        let params = peer.params;
        let sent_bits = peer.sent_bits;
        if self.state.disk <= DiskState::Failed
            && self.state.role == Role::Primary
            && theirs.uuids.current.masked() != self.sb.uuids.current.masked()
        {
            // The data this Primary exposed lives only in that generation (`receive_uuids`).
            self.abort_connection(&format!(
                "Can only connect to data with current UUID={:016X}",
                self.sb.uuids.current.masked()
            ));
            return;
        }
        if self.state.disk <= DiskState::Failed || their_state.disk <= DiskState::Failed {
            // No disk on one side: nothing to compare or resync (DRBD runs
            // drbd_sync_handshake only when both sides have a disk).
            if self.refuse_two_primaries(their_state.role) {
                return;
            }
            // A disk attached on this connection takes the state its metadata gives.
            let placed = self.negotiating.take();
            if self.state.disk <= DiskState::Failed {
                // The data this node exposes is the peer's (`drbd_set_ed_uuid`).
                let primary = u64::from(self.state.role == Role::Primary);
                self.sb.uuids.current = Uuid(theirs.uuids.current.masked() | primary);
            }
            if let Some(p) = self.peer.as_mut() {
                p.phase = Phase::Running;
            }
            self.force_state(|s| {
                s.conn = ConnState::Connected;
                s.peer = their_state.role;
                s.pdsk = their_state.disk;
                if let Some(disk) = placed {
                    s.disk = disk;
                }
            });
            self.write_superblock(After::Nothing);
            return;
        }
        let mut my_flags = UuidFlags::default();
        if self.crashed_primary {
            my_flags = UuidFlags(my_flags.0 | UuidFlags::CRASHED_PRIMARY.0);
        }
        let me = HandshakeSide {
            uuids: self.sb.uuids,
            role: self.state.role,
            flags: my_flags,
        };
        let them = HandshakeSide {
            uuids: theirs.uuids,
            role: their_state.role,
            flags: theirs.flags,
        };
        let opts = CompareOptions {
            resolve_conflicts: params.resolve_conflicts,
            ..CompareOptions::default()
        };
        let verdict = uuid_compare(&me, &them, &opts);
        if let Some(note) = verdict.note() {
            self.log(note.to_owned());
        }
        self.log(verdict.to_string());
        match verdict.correction {
            Some(Correction::Mine(fixed)) => {
                self.sb.uuids = fixed;
                self.write_superblock(After::Nothing);
            }
            Some(Correction::Peer(fixed)) => {
                if let Some(p) = self.peer.as_mut() {
                    if let Some(u) = p.uuids.as_mut() {
                        u.uuids = fixed;
                    }
                }
            }
            None => {}
        }
        if let Some(msg) = verdict.abort_message() {
            self.abort_connection(&msg);
            return;
        }
        let mut result = verdict.result;
        // A disk attached on this connection decides with the state its metadata gives; the
        // peer's likewise (`real_peer_disk`).
        let negotiating = self.negotiating.take();
        let my_disk = match (self.state.disk, negotiating) {
            (DiskState::Negotiating, Some(d)) => d,
            (DiskState::Negotiating, None) => DiskState::Inconsistent,
            (d, _) => d,
        };
        let peer_disk = if theirs.flags.contains(UuidFlags::INCONSISTENT) {
            DiskState::Inconsistent
        } else if their_state.disk == DiskState::Negotiating {
            DiskState::Consistent
        } else {
            their_state.disk
        };
        let inconsistent = DiskState::Inconsistent;
        if (my_disk == inconsistent && peer_disk > inconsistent)
            || (peer_disk == inconsistent && my_disk > inconsistent)
        {
            let full = result == -100 || result.abs() == 2;
            let sign = if my_disk > inconsistent { 1 } else { -1 };
            result = sign * if full { 2 } else { 1 };
            self.log(format!(
                "Becoming sync {} due to disk states.",
                if sign > 0 { "source" } else { "target" }
            ));
        } else {
            if result.abs() == 100 {
                self.emit_handler(super::Handler::InitialSplitBrain);
            }
            if result == -100 || result == 100 {
                let mine = params.discard_my_data;
                let theirs_discard = theirs.flags.contains(UuidFlags::DISCARD_MY_DATA);
                // A split brain (-100) shares the bitmap UUID: the OR-merged bitmaps cover
                // both sides' changes, so a bitmap resync is enough; without a common base
                // (100) everything is copied.
                let how = if result == -100 { 1 } else { 2 };
                if mine && !theirs_discard {
                    result = -how;
                    self.log("Split-Brain detected, manually solved. Sync from peer node".into());
                } else if theirs_discard && !mine {
                    result = how;
                    self.log("Split-Brain detected, manually solved. Sync from this node".into());
                } else {
                    self.log("Split-Brain detected but unresolved, dropping connection!".into());
                    self.emit_handler(super::Handler::SplitBrain);
                    self.abort_connection("Split-Brain detected, dropping connection!");
                    return;
                }
            }
        }
        if result == 0 && my_disk == DiskState::UpToDate && peer_disk == DiskState::UpToDate {
            // Same generation, yet one side has bits: writes whose confirmation the link lost
            // (DRBD 8.4 logs "No resync, but N bits in bitmap!" and keeps them). The side
            // with bits holds those writes; resync them from it, unless the target is Primary.
            let (mine, theirs_bits) = (sent_bits, theirs.bits);
            if mine > 0 && theirs_bits == 0 && their_state.role != Role::Primary {
                result = 1;
            } else if mine == 0 && theirs_bits > 0 && self.state.role != Role::Primary {
                result = -1;
            }
            if result != 0 {
                self.log(format!(
                    "Bits left in the {} bitmap: resync them as {}.",
                    if result > 0 { "local" } else { "peer's" },
                    if result > 0 {
                        "SyncSource"
                    } else {
                        "SyncTarget"
                    }
                ));
            }
        }
        if result > 0 && my_disk == inconsistent {
            self.abort_connection("I shall become SyncSource, but I am inconsistent!");
            return;
        }
        // By intention the state's disk, not `my_disk`: a Primary that attaches a disk while
        // connected may become the SyncTarget of its peer.
        if result < 0 && self.state.role == Role::Primary && self.state.disk >= DiskState::Outdated
        {
            self.abort_connection("I shall become SyncTarget, but I am primary!");
            return;
        }
        if self.refuse_two_primaries(their_state.role) {
            return;
        }
        if result.abs() >= 2 {
            self.log(
                "Writing the whole bitmap, full sync required after drbd_sync_handshake.".into(),
            );
            self.set_all_bits_within_size();
        }
        if self.state.disk == DiskState::Negotiating && result >= 0 {
            self.force_state(|s| s.disk = my_disk);
        }
        match result {
            0 => {
                if self.bitmap.count() > 0 {
                    let n = self.bitmap.count();
                    self.log(format!("No resync, but {n} bits in bitmap!"));
                }
                if let Some(p) = self.peer.as_mut() {
                    p.phase = Phase::Running;
                }
                self.force_state(|s| {
                    s.conn = ConnState::Connected;
                    s.peer = their_state.role;
                    s.pdsk = peer_disk;
                });
                self.write_superblock(After::Nothing);
            }
            r => self.start_bitmap_exchange(r > 0, their_state, peer_disk),
        }
    }

    /// Two Primaries without `allow-two-primaries`: `is_valid_state` refuses the connected
    /// state (SS_TWO_PRIMARIES) once the handshake found no split brain, and DRBD drops the
    /// connection. Returns whether it did.
    fn refuse_two_primaries(&mut self, their_role: Role) -> bool {
        let allowed = self.cfg.net.as_ref().is_some_and(|n| n.two_primaries);
        if allowed || self.state.role != Role::Primary || their_role != Role::Primary {
            return false;
        }
        self.abort_connection(&StateChangeError::TwoPrimaries.to_string());
        true
    }

    pub(super) fn emit_handler(&mut self, h: super::Handler) {
        self.out.push_back(Output::Event(super::Event::Handler(h)));
    }

    pub(super) fn set_all_bits_within_size(&mut self) {
        let bits = self.size.div_ceil(BLOCK_BYTES);
        let _ = self.bitmap.set_bits(0..bits);
        self.queue_dirty_pages();
        self.pump_meta();
    }

    /// WFBitMapS/T: send our bitmap (only the words with bits set, then `last`).
    fn start_bitmap_exchange(&mut self, source: bool, their: PeerState, peer_disk: DiskState) {
        let conn = if source {
            ConnState::WFBitMapS
        } else {
            ConnState::WFBitMapT
        };
        if let Some(p) = self.peer.as_mut() {
            p.phase = Phase::Bitmaps { source };
            p.bitmap_sent = true;
        }
        self.force_state(|s| {
            s.conn = conn;
            s.peer = their.role;
            s.pdsk = peer_disk;
            if source {
                s.pdsk = DiskState::Inconsistent;
            } else {
                s.disk = DiskState::Inconsistent;
            }
        });
        if !source {
            // No write of the source's generation may reach this disk before the superblock
            // that calls it Inconsistent: peer writes wait for it (admit_peer_writes).
            self.write_superblock(After::Superblock);
        }
        let words = self.bitmap.word_count();
        let mut at = 0;
        while at < words {
            let end = (at + BITMAP_WORDS_PER_PACKET).min(words);
            let chunk = self.bitmap.words(at..end);
            if chunk.iter().any(|w| *w != 0) {
                let packet = Packet::Bitmap {
                    offset: at,
                    words: chunk.to_vec(),
                    last: false,
                };
                self.send(packet);
            }
            at = end;
        }
        self.send(Packet::Bitmap {
            offset: words,
            words: Vec::new(),
            last: true,
        });
        self.maybe_bitmaps_done();
    }

    fn on_bitmap(&mut self, offset: u64, words: &[u64], last: bool) {
        let Some(peer) = self.peer.as_ref() else {
            return;
        };
        match peer.phase {
            Phase::Bitmaps { .. } => {}
            // The peer decided first (after an invalidate or a forced promotion): decide
            // too; the same inputs give the mirrored verdict.
            Phase::Running if self.state.conn == ConnState::Connected => {
                self.sync_handshake();
                if !matches!(
                    self.peer.as_ref().map(|p| p.phase),
                    Some(Phase::Bitmaps { .. })
                ) {
                    self.protocol_error("P_BITMAP while no resync was decided".into());
                    return;
                }
            }
            _ => {
                self.protocol_error("P_BITMAP outside the bitmap exchange".into());
                return;
            }
        }
        let mine = self.bitmap.word_count();
        if offset < mine {
            let n = words.len().min((mine - offset) as usize);
            let _ = self.bitmap.or_words(offset, &words[..n]);
            let first = self.size.div_ceil(BLOCK_BYTES);
            let _ = self.bitmap.clear_bits(first..self.bitmap.bits());
        }
        if last {
            if let Some(p) = self.peer.as_mut() {
                p.bitmap_received = true;
            }
            self.queue_dirty_pages();
            self.pump_meta();
            self.maybe_bitmaps_done();
        }
    }

    /// After both bitmaps crossed: the source starts with a new sync UUID, the target waits
    /// for it.
    fn maybe_bitmaps_done(&mut self) {
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        let Phase::Bitmaps { source } = peer.phase else {
            return;
        };
        if !(peer.bitmap_sent && peer.bitmap_received) {
            return;
        }
        peer.bitmap_sent = false;
        peer.bitmap_received = false;
        if source {
            self.call_before_resync(true);
        } else {
            if let Some(p) = self.peer.as_mut() {
                p.phase = Phase::WaitSyncUuid;
            }
            self.force_state(|s| s.conn = ConnState::WFSyncUUID);
        }
    }

    fn on_sync_uuid(&mut self, uuid: Uuid) {
        if self.state.disk <= DiskState::Failed {
            // The disk went (an I/O error) while a full sync towards it was being agreed:
            // our P_STATE tells the source, which ends the resync it began.
            self.log("P_SYNC_UUID ignored: no disk to sync to".into());
            return;
        }
        if self.peer.as_ref().map(|p| p.phase) != Some(Phase::WaitSyncUuid) {
            self.protocol_error("P_SYNC_UUID while not waiting for it".into());
            return;
        }
        let role = self.state.role;
        self.sb.uuids.receive_sync_uuid(uuid, role);
        self.write_superblock(After::Superblock);
        self.call_before_resync(false);
    }

    // ---- the Primary's side of mirrored writes ----

    /// Whether writes go to the peer now (`drbd_should_do_remote`).
    fn mirroring(&self) -> bool {
        self.peer
            .as_ref()
            .is_some_and(|p| p.phase == Phase::Running)
            && self.state.conn >= ConnState::Connected
            && self.state.pdsk >= DiskState::Inconsistent
            && self.state.pdsk != DiskState::DUnknown
    }

    /// Sends a write to the peer; false when it is not mirrored.
    pub(super) fn mirror_write(&mut self, req: ReqId, request: &Request) -> bool {
        if !self.mirroring() {
            return false;
        }
        let Some((offset, len)) = request.range() else {
            return false;
        };
        let (Some(net), Some(peer)) = (self.cfg.net, self.peer.as_mut()) else {
            return false;
        };
        let syncing = self.state.conn.is_sync();
        let mut flags = DataFlags::default();
        let (kind, data, fua) = match request {
            Request::Write { data, fua, .. } => (DataKind::Write, data.clone(), *fua),
            Request::Trim { .. } => (DataKind::Trim, Bytes::new(), false),
            Request::WriteZeroes { fua, .. } => (DataKind::Zeroes, Bytes::new(), *fua),
            _ => return false,
        };
        if fua {
            flags = flags.with(DataFlags::FUA);
        }
        // A node whose own copy is not UpToDate (a SyncTarget, a detached disk) has no
        // authoritative copy of the write but the peer's: it completes on the write ack
        // whatever the protocol, or a lost link would let a resync overwrite it.
        let protocol = if self.state.disk < DiskState::UpToDate {
            Protocol::C
        } else {
            peer.params.protocol
        };
        match protocol {
            Protocol::B => flags = flags.with(DataFlags::SEND_RECV_ACK),
            Protocol::C => flags = flags.with(DataFlags::SEND_WRITE_ACK),
            Protocol::A => {}
        }
        if syncing {
            flags = flags
                .with(DataFlags::SEND_WRITE_ACK)
                .with(DataFlags::MAY_SET_IN_SYNC);
        }
        let epoch = peer.epoch;
        peer.epoch_writes += 1;
        let digest = net.integrity.map(|_| crc32c::crc32c(&data));
        let Ok(len32) = u32::try_from(len) else {
            return false;
        };
        self.counters.ns += len / 1024;
        self.send(Packet::Data {
            id: req.0,
            sector: Sector(offset / Sector::SIZE),
            len: len32,
            kind,
            flags,
            epoch,
            digest,
            data,
        });
        if let Some(p) = self.requests.get_mut(&req) {
            p.epoch = epoch;
            p.net = if protocol == Protocol::A {
                Net::Acked
            } else {
                Net::Waiting
            };
        }
        self.sent_to_peer(req);
        true
    }

    /// A FLUSH closes the epoch with a flushing barrier and completes when the peer acked it.
    pub(super) fn mirror_flush(&mut self, req: ReqId) {
        if !self.mirroring() {
            return;
        }
        let Some(epoch) = self.peer.as_ref().map(|p| p.epoch) else {
            return;
        };
        if let Some(p) = self.requests.get_mut(&req) {
            p.epoch = epoch;
            p.net = Net::Waiting;
        }
        self.sent_to_peer(req);
        self.close_epoch(true);
    }

    /// Sends `P_BARRIER` for the current epoch (when it has writes, or always for a flush).
    pub(super) fn close_epoch(&mut self, flush: bool) {
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        if peer.epoch_writes == 0 && !flush {
            return;
        }
        let epoch = peer.epoch;
        peer.epoch = peer.epoch.wrapping_add(1);
        peer.epoch_writes = 0;
        peer.barrier_sent_at = Some(self.clock);
        self.send(Packet::Barrier { epoch, flush });
    }

    /// During the bitmap exchange the target learns of new writes by `P_OUT_OF_SYNC`.
    pub(super) fn send_out_of_sync(&mut self, offset: u64, len: u64) {
        let exchanging = self.peer.as_ref().is_some_and(|p| {
            matches!(
                p.phase,
                Phase::Bitmaps { .. } | Phase::WaitSyncUuid | Phase::BeforeResync { .. }
            )
        });
        if let (true, Ok(len)) = (exchanging, u32::try_from(len)) {
            self.send(Packet::OutOfSync {
                sector: Sector(offset / Sector::SIZE),
                len,
            });
        }
    }

    fn on_ack(&mut self, kind: AckKind, id: u64, sector: Sector, len: u32) {
        if id >= super::resync::RS_ID_BASE {
            if kind == AckKind::RsWrite {
                // An ack for resync data we sent as source.
                self.rs_write_acked(sector, len);
            }
            return;
        }
        let req = ReqId(id);
        let Some(p) = self.requests.get_mut(&req) else {
            return;
        };
        match kind {
            AckKind::Recv | AckKind::Write if p.net == Net::Waiting => p.net = Net::Acked,
            AckKind::RsWrite => {
                if p.net == Net::Waiting {
                    p.net = Net::Acked;
                }
                let _ = self.bitmap.clear_bytes(sector.bytes(), u64::from(len));
                self.resync_progress();
            }
            AckKind::Neg => {
                p.net = Net::Failed;
                // Out of sync at once (`got_NegAck`), so that a bitmap exchange on this
                // connection (a disk attached meanwhile) carries it; told to the peer when its
                // exchange is already behind us.
                if let Some((offset, len)) = p.request.range().filter(|_| p.request.writes()) {
                    let _ = self.bitmap.set_bytes(offset, len);
                    let exchanged = matches!(
                        self.state.conn,
                        ConnState::WFBitMapS | ConnState::SyncSource | ConnState::PausedSyncS
                    );
                    if let (true, Ok(len)) = (exchanged, u32::try_from(len)) {
                        self.send(Packet::OutOfSync {
                            sector: Sector(offset / Sector::SIZE),
                            len,
                        });
                    }
                }
            }
            _ => {}
        }
        self.maybe_complete(req);
    }

    fn on_barrier_ack(&mut self, epoch: u32, writes: u32) {
        let mut confirmed: Vec<ReqId> = Vec::new();
        let mut count = 0;
        for (req, p) in &mut self.requests {
            if p.net.is_mirrored() && p.net != Net::Done && p.epoch == epoch {
                if p.request.writes() {
                    count += 1;
                }
                if p.net != Net::Failed {
                    p.net = Net::Done;
                }
                confirmed.push(*req);
            }
        }
        if count != writes {
            self.protocol_error(format!(
                "P_BARRIER_ACK for epoch {epoch} counts {writes} writes, {count} were sent"
            ));
            return;
        }
        confirmed.sort();
        for req in confirmed {
            if let Some(p) = self.requests.get_mut(&req) {
                if p.net == Net::Failed {
                    // Marked out of sync when destroyed; nothing more will come.
                    p.net = Net::Done;
                    if let (true, Some((offset, len))) = (p.request.writes(), p.request.range()) {
                        let _ = self.bitmap.set_bytes(offset, len);
                    }
                }
            }
            self.maybe_complete(req);
        }
    }

    // ---- the Secondary's side ----

    #[allow(clippy::too_many_arguments)]
    fn on_data(
        &mut self,
        id: u64,
        sector: Sector,
        len: u32,
        kind: DataKind,
        flags: DataFlags,
        epoch: u32,
        digest: Option<u32>,
        data: Bytes,
    ) {
        let offset = sector.bytes();
        let len64 = u64::from(len);
        if offset.checked_add(len64).is_none_or(|end| end > self.size) {
            self.protocol_error(format!(
                "P_DATA {offset}+{len} beyond the end ({} bytes)",
                self.size
            ));
            return;
        }
        if !self.digest_ok(digest, &data) {
            self.log(format!(
                "Digest integrity check FAILED: {}s +{}",
                sector.0, len
            ));
            self.protocol_error("data integrity check failed".into());
            return;
        }
        self.counters.nr += len64 / 1024;
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        let link = peer.gen;
        peer.epochs.entry(epoch).or_default().received += 1;
        if flags.contains(DataFlags::SEND_RECV_ACK) {
            self.send(Packet::Ack {
                kind: AckKind::Recv,
                id,
                sector,
                len,
            });
        }
        if self.state.disk < DiskState::Inconsistent {
            self.peer_write_finished(link, id, epoch, sector, len, flags, false, false);
            return;
        }
        self.mark_resync_requests_stale(offset, len64);
        // DRBD puts the writes of a cluster whose only disk is here through the AL and
        // marks them out of sync before they are submitted.
        let bits_first = (self.state.pdsk <= DiskState::Failed
            && self.state.disk > DiskState::Failed)
            .then(|| self.persist_bits(offset, len64));
        let key = self.next_peer_write;
        self.next_peer_write += 1;
        let sender_lacks = self.state.pdsk < DiskState::Inconsistent;
        self.peer_writes.insert(
            key,
            PeerWrite {
                link,
                id,
                epoch,
                offset,
                len: len64,
                kind,
                flags,
                data,
                resync: false,
                issued: false,
                bits_first,
                sender_lacks,
            },
        );
        self.peer_wait.push_back(key);
        self.admit_peer_writes();
    }

    /// Sets the bits of a range and queues the pages and a superblock after them; returns
    /// the mark that [`Engine::bitmap_mark_durable`] reports once they are on disk.
    fn persist_bits(&mut self, offset: u64, len: u64) -> u64 {
        let _ = self.bitmap.set_bytes(offset, len);
        self.queue_dirty_pages();
        let mark = self.next_bitmap_mark;
        self.next_bitmap_mark += 1;
        self.meta_queue.push_back(super::MetaStep {
            offset: self.layout.md_offset,
            data: Bytes::copy_from_slice(&self.sb.encode()),
            after: After::BitmapMark(mark),
        });
        self.pump_meta();
        mark
    }

    /// Issues waiting peer writes that no in-flight write overlaps, in arrival order.
    pub(super) fn admit_peer_writes(&mut self) {
        if self.state.disk <= DiskState::Failed {
            self.refuse_waiting_peer_writes();
            return;
        }
        // A superblock that changes what this disk claims (Inconsistent, a sync UUID) is
        // durable before the writes that depend on it; a detach waits for a quiet disk.
        if self.gating_superblocks > 0 || self.detaching() {
            return;
        }
        let mut still: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
        while let Some(key) = self.peer_wait.pop_front() {
            let Some(w) = self.peer_writes.get(&key) else {
                continue;
            };
            let range = (w.offset, w.len);
            let bits_pending = w.bits_first.is_some_and(|m| m >= self.bitmap_marks_durable)
                && self.state.disk > DiskState::Failed;
            let blocked = bits_pending
                || still.iter().any(|k| {
                    self.peer_writes
                        .get(k)
                        .is_some_and(|o| super::overlaps((o.offset, o.len), range))
                })
                || self.write_in_flight_over(range.0, range.1);
            if blocked {
                still.push_back(key);
                continue;
            }
            let kind = match w.kind {
                DataKind::Write => super::DiskOp::Write {
                    offset: w.offset,
                    data: w.data.clone(),
                    fua: w.flags.contains(DataFlags::FUA),
                },
                DataKind::Trim => super::DiskOp::Trim {
                    offset: w.offset,
                    len: w.len as u32,
                },
                DataKind::Zeroes => super::DiskOp::WriteZeroes {
                    offset: w.offset,
                    len: w.len as u32,
                    fua: w.flags.contains(DataFlags::FUA),
                },
            };
            if let Some(w) = self.peer_writes.get_mut(&key) {
                w.issued = true;
            }
            self.op(OpFor::PeerWrite(key), kind);
        }
        self.peer_wait = still;
    }

    /// The disk went while these peer writes waited for it: refused, as writes that reach a
    /// node without a disk are.
    fn refuse_waiting_peer_writes(&mut self) {
        for key in std::mem::take(&mut self.peer_wait) {
            let Some(w) = self.peer_writes.remove(&key) else {
                continue;
            };
            if w.resync {
                self.rs_write_done(w.link, w.id, w.offset, w.len, false);
            } else {
                self.answer_peer_write(&w, false, false);
            }
        }
    }

    pub(super) fn peer_write_done(&mut self, key: u64, result: super::DiskResult) {
        let Some(w) = self.peer_writes.remove(&key) else {
            return;
        };
        let ok = result != super::DiskResult::Failed;
        if ok {
            self.counters.dw += w.len / 1024;
        } else {
            self.log(format!(
                "local disk I/O error writing {}+{} for the peer",
                w.offset, w.len
            ));
            let _ = self.bitmap.set_bytes(w.offset, w.len);
        }
        if ok && w.sender_lacks && self.state.conn >= ConnState::WFBitMapS {
            // The peer attached its disk since it sent this, and our bitmap already went to
            // it: the peer learns of the block as of any marked after the exchange.
            if let Ok(len) = u32::try_from(w.len) {
                self.send(Packet::OutOfSync {
                    sector: Sector(w.offset / Sector::SIZE),
                    len,
                });
            }
        }
        if w.resync {
            self.rs_write_done(w.link, w.id, w.offset, w.len, ok);
        } else if ok
            && w.bits_first.is_none()
            && self.state.disk > DiskState::Failed
            && (self.state.pdsk <= DiskState::Failed || w.sender_lacks)
        {
            // This disk became the only copy while the write was on its way: the blocks are
            // in our bitmap on disk before the write is acked.
            let mark = self.persist_bits(w.offset, w.len);
            self.acks_after_bitmap.push((mark, w));
        } else {
            self.finish_peer_write(&w, ok);
        }
        if !ok {
            self.local_io_error("a write for the peer");
        }
        self.admit_peer_writes();
        self.admit_waiting();
        self.retry_deferred_rs_reads();
        self.maybe_finish_down();
    }

    /// The bitmap pages queued before `mark` are durable: ack the peer writes they record.
    pub(super) fn bitmap_mark_durable(&mut self, mark: u64) {
        let (ready, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.acks_after_bitmap)
            .into_iter()
            .partition(|(m, _)| *m <= mark);
        self.acks_after_bitmap = wait;
        self.bitmap_marks_durable = self.bitmap_marks_durable.max(mark + 1);
        for (_, w) in ready {
            self.finish_peer_write(&w, true);
        }
        self.admit_peer_writes();
        self.maybe_finish_down();
    }

    /// [`Engine::peer_write_finished`] for a mirrored write that reached the disk (or failed).
    pub(super) fn finish_peer_write(&mut self, w: &PeerWrite, ok: bool) {
        self.answer_peer_write(w, ok, true);
    }

    /// [`Engine::peer_write_finished`] for a queued peer write; `wrote`: it reached the disk.
    fn answer_peer_write(&mut self, w: &PeerWrite, ok: bool, wrote: bool) {
        let sector = Sector(w.offset / Sector::SIZE);
        self.peer_write_finished(
            w.link,
            w.id,
            w.epoch,
            sector,
            w.len as u32,
            w.flags,
            ok,
            wrote,
        );
    }

    /// Acks a mirrored write and counts it into its epoch.
    #[allow(clippy::too_many_arguments)]
    fn peer_write_finished(
        &mut self,
        link: u64,
        id: u64,
        epoch: u32,
        sector: Sector,
        len: u32,
        flags: DataFlags,
        ok: bool,
        wrote: bool,
    ) {
        let current = self.peer.as_ref().is_some_and(|p| p.gen == link);
        if !current {
            return;
        }
        let in_sync =
            ok && wrote && flags.contains(DataFlags::MAY_SET_IN_SYNC) && self.state.conn.is_sync();
        if in_sync {
            let _ = self.bitmap.clear_bytes(sector.bytes(), u64::from(len));
        }
        if ok && wrote && self.state.pdsk <= DiskState::Failed {
            // The Primary has no disk: this node keeps track of what it lacks.
            let _ = self.bitmap.set_bytes(sector.bytes(), u64::from(len));
        }
        let kind = if !ok {
            AckKind::Neg
        } else if in_sync {
            AckKind::RsWrite
        } else {
            AckKind::Write
        };
        if !ok || flags.contains(DataFlags::SEND_WRITE_ACK) {
            self.send(Packet::Ack {
                kind,
                id,
                sector,
                len,
            });
        }
        if let Some(e) = self.peer.as_mut().and_then(|p| p.epochs.get_mut(&epoch)) {
            e.done += 1;
        }
        self.finish_epochs();
        if in_sync {
            self.resync_progress();
        }
    }

    fn on_barrier(&mut self, epoch: u32, flush: bool) {
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        peer.epochs.entry(epoch).or_default().barrier = Some(flush);
        self.finish_epochs();
    }

    /// Acks closed epochs in order once their writes are done and flushed: like DRBD's
    /// write ordering `flush`, a `P_BARRIER_ACK` promises the epoch is on stable storage,
    /// since the Primary then forgets it (and its activity-log reference). Epochs that are
    /// ready together share one flush; while it runs, later ones wait for the next.
    fn finish_epochs(&mut self) {
        let disk = self.state.disk;
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        if !peer.acking.is_empty() {
            return;
        }
        let link = peer.gen;
        while let Some((&epoch, e)) = peer.epochs.iter().next() {
            if e.barrier.is_none() || e.done < e.received {
                break;
            }
            peer.acking.push((epoch, e.received));
            peer.epochs.remove(&epoch);
        }
        let Some(&(last, _)) = peer.acking.last() else {
            return;
        };
        if disk <= DiskState::Failed {
            // Nothing to flush: the writes were refused and the Primary keeps the bits.
            self.send_barrier_acks(link);
            return;
        }
        self.op(OpFor::PeerFlush { link, epoch: last }, super::DiskOp::Flush);
    }

    fn send_barrier_acks(&mut self, link: u64) {
        let Some(peer) = self.peer.as_mut().filter(|p| p.gen == link) else {
            return;
        };
        let acks = std::mem::take(&mut peer.acking);
        for (epoch, writes) in acks {
            self.send(Packet::BarrierAck { epoch, writes });
        }
        self.finish_epochs();
    }

    pub(super) fn peer_flush_done(&mut self, link: u64, _epoch: u32, result: super::DiskResult) {
        if result == super::DiskResult::Failed {
            self.local_io_error("a flush for the peer");
        }
        self.send_barrier_acks(link);
    }

    // ---- reads served by the peer, and losing the local disk ----

    /// The peer's disk is UpToDate and reachable.
    pub(super) fn peer_has_good_data(&self) -> bool {
        self.mirroring() && self.state.pdsk == DiskState::UpToDate
    }

    /// A read this node's disk cannot answer correctly: no disk, or out-of-sync blocks on an
    /// Inconsistent one (`drbd_may_do_local_read`).
    pub(super) fn local_cannot_serve(&self, req: ReqId) -> bool {
        let Some(p) = self.requests.get(&req) else {
            return false;
        };
        let Request::Read { offset, len } = p.request else {
            return false;
        };
        if self.state.disk < DiskState::Inconsistent {
            // No disk, or one attached whose handshake has not placed it yet.
            return true;
        }
        if self.state.disk >= DiskState::UpToDate {
            return false;
        }
        let first = offset / BLOCK_BYTES;
        let end = (offset + u64::from(len)).div_ceil(BLOCK_BYTES);
        self.bitmap.any(first..end)
    }

    /// Sends a read to the peer (`P_DATA_REQUEST`); false when the peer cannot serve it.
    pub(super) fn read_from_peer(&mut self, req: ReqId) -> bool {
        if !self.peer_has_good_data() {
            return false;
        }
        let Some(p) = self.requests.get_mut(&req) else {
            return false;
        };
        let Request::Read { offset, len } = p.request else {
            return false;
        };
        p.remote_read = true;
        p.local = None;
        self.send(Packet::DataRequest {
            id: req.0,
            sector: Sector(offset / Sector::SIZE),
            len,
        });
        self.sent_to_peer(req);
        true
    }

    /// A write or flush on a node without a disk goes to the peer only.
    pub(super) fn issue_without_disk(&mut self, req: ReqId) {
        let Some(p) = self.requests.get(&req) else {
            return;
        };
        let request = p.request.clone();
        match &request {
            Request::Flush => self.mirror_flush(req),
            Request::Read { .. } => {}
            _ => {
                self.mirror_write(req, &request);
            }
        }
        // No local part: the request succeeds only if the peer acks it (`maybe_complete`).
        if let Some(p) = self.requests.get_mut(&req) {
            p.local = Some(Err(super::RequestError::Detached));
        }
        self.maybe_complete(req);
    }

    /// `__drbd_chk_io_error_`: a local disk error, handled as `on-io-error` says.
    pub(super) fn local_io_error(&mut self, what: &str) {
        self.log(format!("local disk I/O error on {what}"));
        match self.cfg.on_io_error {
            super::OnIoError::PassOn => {
                // The disk stays, but no longer vouches for its data: the failed blocks are
                // out of sync (set by the caller) and the peer resyncs them.
                if self.state.disk > DiskState::Inconsistent {
                    self.log(format!(
                        "disk( {} -> Inconsistent ): on-io-error pass_on",
                        self.state.disk
                    ));
                    self.force_state(|s| s.disk = DiskState::Inconsistent);
                    self.write_superblock(After::Nothing);
                    self.send_uuids(UuidFlags::INCONSISTENT);
                    self.send_state();
                }
            }
            super::OnIoError::CallLocalIoError | super::OnIoError::Detach => {
                // `call-local-io-error` detaches too, then runs the handler.
                if self.state.disk > DiskState::Failed {
                    self.log(format!(
                        "disk( {} -> Failed ): on-io-error detach",
                        self.state.disk
                    ));
                    self.drop_disk();
                    if self.cfg.on_io_error == super::OnIoError::CallLocalIoError {
                        self.emit_handler(super::Handler::LocalIoError);
                    }
                }
            }
        }
    }

    pub(super) fn on_data_request(&mut self, id: u64, sector: Sector, len: u32) {
        let offset = sector.bytes();
        let in_range = offset
            .checked_add(u64::from(len))
            .is_some_and(|end| end <= self.size);
        if !in_range || len == 0 {
            self.protocol_error(format!(
                "P_DATA_REQUEST {offset}+{len} is not a valid range"
            ));
            return;
        }
        let Some(link) = self.peer.as_ref().map(|p| p.gen) else {
            return;
        };
        let first = offset / BLOCK_BYTES;
        let end = (offset + u64::from(len)).div_ceil(BLOCK_BYTES);
        let good = self.state.disk == DiskState::UpToDate
            || (self.state.disk > DiskState::Failed && !self.bitmap.any(first..end));
        if !good || self.detaching() {
            self.send(Packet::NegDataReply { id, sector, len });
            return;
        }
        if self.local_write_unfinished_over(offset, u64::from(len)) {
            if let Some(p) = self.peer.as_mut() {
                p.deferred_reads.push((id, sector, len));
            }
            return;
        }
        self.op(
            OpFor::PeerRead { link, id, sector },
            super::DiskOp::Read { offset, len },
        );
    }

    pub(super) fn peer_read_done(
        &mut self,
        link: u64,
        id: u64,
        sector: Sector,
        result: super::DiskResult,
    ) {
        if self.peer.as_ref().is_none_or(|p| p.gen != link) {
            return;
        }
        match result {
            super::DiskResult::Data(data) => {
                self.send_read_data(data, |digest, data| Packet::DataReply {
                    id,
                    sector,
                    digest,
                    data,
                })
            }
            _ => {
                self.local_io_error(&format!("a read for the peer at sector {}", sector.0));
                self.send(Packet::NegDataReply {
                    id,
                    sector,
                    len: Sector::SIZE as u32,
                });
            }
        }
    }

    fn on_data_reply(&mut self, id: u64, sector: Sector, digest: Option<u32>, data: Bytes) {
        if !self.digest_ok(digest, &data) {
            self.protocol_error("read data integrity check failed".into());
            return;
        }
        let req = ReqId(id);
        let Some(p) = self.requests.get_mut(&req).filter(|p| p.remote_read) else {
            self.protocol_error(format!("P_DATA_REPLY for unknown request {id}"));
            return;
        };
        let Request::Read { offset, len } = p.request else {
            return;
        };
        if sector.bytes() != offset || data.len() != len as usize {
            self.protocol_error(format!("P_DATA_REPLY does not answer request {id}"));
            return;
        }
        self.counters.nr += data.len() as u64 / 1024;
        p.local = Some(Ok(Some(data)));
        p.remote_read = false;
        self.maybe_complete(req);
    }

    fn on_neg_data_reply(&mut self, id: u64) {
        let req = ReqId(id);
        if let Some(p) = self.requests.get_mut(&req).filter(|p| p.remote_read) {
            p.local = Some(Err(super::RequestError::Io));
            p.remote_read = false;
            self.maybe_complete(req);
        }
    }

    /// Sends data read for the peer, with its digest when an integrity algorithm is agreed.
    pub(super) fn send_read_data(
        &mut self,
        data: Bytes,
        packet: impl FnOnce(Option<u32>, Bytes) -> Packet,
    ) {
        self.counters.dr += data.len() as u64 / 1024;
        self.counters.ns += data.len() as u64 / 1024;
        let digest = self
            .cfg
            .net
            .and_then(|n| n.integrity)
            .map(|_| crc32c::crc32c(&data));
        self.send(packet(digest, data));
    }

    /// Whether a payload matches its digest (always, without an agreed integrity algorithm).
    pub(super) fn digest_ok(&self, digest: Option<u32>, data: &[u8]) -> bool {
        match (digest, self.cfg.net.and_then(|n| n.integrity)) {
            (Some(d), Some(_)) => crc32c::crc32c(data) == d,
            _ => true,
        }
    }
}
