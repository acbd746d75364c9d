//! One node's engine for one volume: requests in, disk operations out, in DRBD's order.
//!
//! No I/O and no clock. The daemon calls [`Engine::submit`], [`Engine::disk_done`] and
//! [`Engine::command`], then drains [`Engine::poll_output`] after every call. This first engine
//! runs a node without a peer (StandAlone or waiting for one): every write goes through the
//! activity log and marks the bitmap, metadata updates are ordered as DRBD orders them, and the
//! state rules of [`crate::state`] decide role changes. The peer link arrives with replication.
//!
//! Metadata ordering: metadata writes go out one at a time, each durable (FUA) before the
//! next, so that bitmap pages precede the AL transaction that evicts their extents, and a
//! superblock that records a role change precedes the writes it covers.

mod cluster;
mod detach;
mod io;
mod peer;
mod resync;
mod timer;

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

pub use peer::{CallId, Handler, LinkParams, NetConfig};
pub use resync::ResyncStatus;

pub use io::{
    sectors, DiskOp, DiskResult, OpId, Output, ReqId, Request, RequestError, SubmitError,
    MAX_REQUEST_BYTES,
};

use crate::al::{self, ActivityLog, Admission};
use crate::bitmap::Bitmap;
use crate::meta::{Layout, MdFlags, MdState, Superblock};
use crate::rng::Rng;
use crate::state::{AttachMeta, ConnState, Context, DiskState, NodeState, Role, StateChangeError};
use crate::status::{Counters, Status};
use crate::time::Instant;
use crate::types::Sector;
use crate::uuid::GenerationUuids;

/// What the engine is configured with (the effective options of its resource and volume).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub resource: String,
    pub volume: u32,
    pub minor: u32,
    /// `al-extents`, already clamped to what the ring can hold.
    pub al_extents: u16,
    pub context: Context,
    /// Seeds generation UUIDs (the daemon passes entropy, the simulator a seed).
    pub seed: u64,
    /// The `net` section; `None` keeps the node StandAlone.
    pub net: Option<NetConfig>,
    /// `on-io-error`: what a local disk error does.
    pub on_io_error: OnIoError,
}

/// The `on-io-error` disk option (`__drbd_chk_io_error_`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnIoError {
    /// Report the error upwards and keep the disk.
    PassOn,
    /// Run the `local-io-error` handler, keep the disk.
    CallLocalIoError,
    /// Detach the disk; serve from the peer when it has the data (DRBD's default).
    #[default]
    Detach,
}

/// A deliberate engine defect that `repl-sim` must catch (feature `sim-bugs`, tests only).
#[cfg(feature = "sim-bugs")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// Protocol C completes a mirrored write once the local write is done, without waiting
    /// for the peer's ack.
    AckBeforePeer,
}

/// The metadata and bitmap read from disk at attach time.
#[derive(Debug, Clone)]
pub struct OnDisk {
    pub layout: Layout,
    pub superblock: Superblock,
    /// The whole AL ring, `layout.al_bytes()` long.
    pub al_ring: Vec<u8>,
    /// The on-disk bitmap, covering `layout.max_usable` (see [`OnDisk::bitmap_bits`]). The
    /// reader decodes it page by page, so that its bytes are never held beside it (32 MiB for
    /// a 1 TiB volume).
    pub bitmap: Bitmap,
}

impl OnDisk {
    /// The bits of the bitmap of a disk laid out as `layout`: one per block of its usable size.
    pub fn bitmap_bits(layout: &Layout) -> u64 {
        layout
            .max_usable
            .bytes()
            .div_ceil(crate::bitmap::BLOCK_BYTES)
    }
}

/// Why the metadata cannot be attached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    #[error("activity log: {0}")]
    Al(#[from] al::AlError),
    #[error("bitmap: {0}")]
    Bitmap(#[from] crate::bitmap::BitmapError),
    #[error("{0}")]
    State(#[from] StateChangeError),
    /// `ERR_DATA_NOT_CURRENT`: a disconnected Primary serves the peer's data, which this disk
    /// may not hold.
    #[error("Failure: (150) Can only attach to the data we lost last (see kernel log).")]
    DataNotCurrent,
    /// `ERR_DISK_TOO_SMALL`.
    #[error(
        "Failure: (111) Low.dev. smaller than requested DRBD-dev. size ({disk} < {device} bytes)"
    )]
    TooSmall { disk: u64, device: u64 },
}

/// A command from the operator (`drbdadm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Primary {
        force: bool,
    },
    Secondary,
    NewCurrentUuid {
        clear_bitmap: bool,
    },
    Outdate,
    /// `connect`: StandAlone to WFConnection (needs a `net` configuration).
    Connect,
    /// `disconnect`: drop the link and stay StandAlone.
    Disconnect,
    /// `invalidate`: StandAlone and Secondary, the disk becomes Inconsistent and every block
    /// out of sync, so that the next connection makes this node the target of a full resync;
    /// connected, a full sync from the peer starts at once (cluster-wide).
    Invalidate,
    /// `invalidate-remote`: StandAlone and Primary, the peer's disk is taken as Inconsistent
    /// and every block out of sync; connected, a full sync to the peer starts at once
    /// (cluster-wide).
    InvalidateRemote,
    /// Stop taking requests, finish those in flight, persist the bitmap and a clean
    /// superblock, then report [`Event::Down`].
    Down,
    /// `detach`: new requests wait while those on the disk finish, the bitmap and a clean
    /// superblock are written, then the disk goes Failed and Diskless ([`Event::Detached`]).
    /// The node stays up and connected, serving from the peer as after an I/O error.
    Detach,
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    State(#[from] StateChangeError),
    #[error(
        "the fence-peer handler is needed for this promotion and handlers are not supported yet"
    )]
    FencePeerUnsupported,
    #[error("the device is going down")]
    GoingDown,
    #[error("no net configuration: the resource has no peer to connect to")]
    NoNetConfig,
}

/// Things users see, worded as DRBD logs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    StateChanged {
        old: NodeState,
        new: NodeState,
    },
    /// A line for the log (DRBD's wording where it has one).
    Log(String),
    /// The superblock (and so the role, flags and UUIDs) is durable: status may be published.
    MetadataWritten,
    /// After [`Command::Down`]: nothing is in flight and the metadata is clean.
    Down,
    /// Run this handler script from the `handlers` section (DRBD's names).
    Handler(Handler),
    /// Run this handler and report its exit status with [`Engine::handler_returned`]: the
    /// engine waits for it before going on (`before-resync-target`, `before-resync-source`).
    /// No handler configured counts as exit status 0, as with drbdadm.
    HandlerCall {
        handler: Handler,
        call: CallId,
    },
    /// The disk was detached, after an I/O error (`on-io-error detach`) or by
    /// [`Command::Detach`]; the daemon may close the backing device.
    Detached,
    /// The result of the command that waited for the peer ([`Engine::command_pending`]).
    CommandDone {
        result: Result<(), CommandError>,
    },
}

/// What a metadata write unblocks when it is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Nothing,
    /// An AL transaction: its writes may go.
    AlTransaction(u32),
    /// A superblock: writes gated on it may go.
    Superblock,
    /// The clean superblock written by `Down`.
    Down,
    /// The clean superblock written by `Detach`: the disk may go.
    Detach,
    /// Bitmap pages up to this mark are durable: peer writes that wait for them may be acked.
    BitmapMark(u64),
    /// A superblock that makes the disk Inconsistent: only now does the peer hear of it, so
    /// that a crash before it leaves no peer counting on a state this disk never recorded.
    AnnounceDisk,
}

/// A metadata write waiting for its turn.
#[derive(Debug, Clone)]
struct MetaStep {
    offset: u64,
    data: Bytes,
    after: After,
}

/// A request the engine holds, from submission until the peer confirmed it (`NET_DONE`).
#[derive(Debug)]
struct Pending {
    request: Request,
    /// The AL references it took (writes only), released when the request is destroyed.
    al_held: bool,
    /// Sent to the local disk (past the AL and overlap checks).
    issued: bool,
    /// A read served by the peer (`P_DATA_REQUEST`).
    remote_read: bool,
    /// The local disk's result, once it answered.
    local: Option<Result<Option<Bytes>, RequestError>>,
    net: peer::Net,
    /// Its epoch on the wire (writes and flushes sent to the peer).
    epoch: u32,
    /// `Complete` was emitted.
    completed: bool,
}

impl Pending {
    fn new(request: Request) -> Pending {
        Pending {
            request,
            al_held: false,
            issued: false,
            remote_read: false,
            local: None,
            net: peer::Net::NotSent,
            epoch: 0,
            completed: false,
        }
    }
}

/// What a disk operation in flight is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpFor {
    Request(ReqId),
    Meta(After),
    /// A write received from the peer (key into `peer_writes`).
    PeerWrite(u64),
    /// A resync read for the peer (`P_RS_DATA_REQUEST`).
    RsRead {
        link: u64,
        id: u64,
        sector: Sector,
    },
    /// The flush a `P_BARRIER` asked for.
    PeerFlush {
        link: u64,
        epoch: u32,
    },
    /// A read the peer asked for (`P_DATA_REQUEST`).
    PeerRead {
        link: u64,
        id: u64,
        sector: Sector,
    },
}

/// One node's replication engine for one volume.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    layout: Layout,
    sb: Superblock,
    state: NodeState,
    al: ActivityLog,
    bitmap: Bitmap,
    /// Usable size in bytes.
    size: u64,
    rng: Rng,
    next_req: u64,
    next_op: u64,
    requests: HashMap<ReqId, Pending>,
    ops: HashMap<OpId, OpFor>,
    /// Writes not yet admitted by the activity log, oldest first.
    waiting: VecDeque<ReqId>,
    /// The write whose AL transaction is being persisted.
    staged: Option<(u32, ReqId)>,
    meta_queue: VecDeque<MetaStep>,
    meta_busy: bool,
    /// Superblock writes in the queue that writes must wait for.
    gating_superblocks: u32,
    going_down: bool,
    /// Where a `detach` stands (see [`Command::Detach`]).
    detach: detach::Detach,
    counters: Counters,
    out: VecDeque<Output>,
    /// The connection, from link establishment until it is lost.
    peer: Option<peer::Peer>,
    /// Counts established links, so late completions from an old one are ignored.
    link_gen: u64,
    /// Writes received from the peer, waiting or in flight on the local disk.
    peer_writes: HashMap<u64, peer::PeerWrite>,
    /// Peer writes done on disk whose ack waits for the bitmap page that records them (the
    /// peer has no disk, so this bitmap is the only record of what it lacks): `(mark, write)`.
    acks_after_bitmap: Vec<(u64, peer::PeerWrite)>,
    next_bitmap_mark: u64,
    /// Every bitmap mark below this one is durable.
    bitmap_marks_durable: u64,
    /// The disk went Inconsistent and the superblock saying so is not durable yet: the peer
    /// is not told until it is (After::AnnounceDisk).
    announce_pending: bool,
    peer_wait: VecDeque<u64>,
    next_peer_write: u64,
    /// The node was Primary when it crashed (`CRASHED_PRIMARY`), until a resync ends.
    crashed_primary: bool,
    /// A cluster-wide state change waiting for the peer's answer.
    state_req: Option<cluster::StateRequest>,
    /// Writes past their AL transaction that a Primary full-sync target keeps back until the
    /// resync runs ([`Engine::writes_wait_for_sync_uuid`]).
    held_for_sync: Vec<ReqId>,
    /// `Event::Down` went out for a disk that was already gone.
    down_reported: bool,
    /// The latest time an input carried: when something goes out to the peer.
    clock: Instant,
    /// Requests sent to the peer, in sending order, with when they went: the request timer
    /// looks at the oldest still waiting for the peer (entries that no longer wait are
    /// skipped and pruned).
    net_log: VecDeque<(Instant, ReqId)>,
    /// Numbers handler calls whose exit status the engine waits for.
    next_call: u64,
    /// A disk attached while connected shows `Negotiating`: the disk state its metadata gives,
    /// taken once the handshake with the peer decides (DRBD's `new_state_tmp.disk`).
    negotiating: Option<DiskState>,
    /// Requests submitted while the handshake places this node's disk (see
    /// [`Engine::placing_disk`]), issued once it is placed.
    held: VecDeque<ReqId>,
    #[cfg(feature = "sim-bugs")]
    bug: Option<Bug>,
}

/// What a new engine starts from; everything else starts empty.
struct Parts {
    cfg: EngineConfig,
    layout: Layout,
    sb: Superblock,
    state: NodeState,
    al: ActivityLog,
    bitmap: Bitmap,
    size: u64,
    meta_queue: VecDeque<MetaStep>,
    out: VecDeque<Output>,
    crashed_primary: bool,
}

impl Engine {
    /// An engine from its parts, with no request, peer or operation yet.
    fn assemble(p: Parts) -> Engine {
        Engine {
            rng: Rng::new(p.cfg.seed),
            cfg: p.cfg,
            layout: p.layout,
            sb: p.sb,
            state: p.state,
            al: p.al,
            bitmap: p.bitmap,
            size: p.size,
            next_req: 0,
            next_op: 0,
            requests: HashMap::new(),
            ops: HashMap::new(),
            waiting: VecDeque::new(),
            staged: None,
            meta_queue: p.meta_queue,
            meta_busy: false,
            gating_superblocks: 0,
            going_down: false,
            detach: detach::Detach::No,
            counters: Counters::default(),
            out: p.out,
            peer: None,
            link_gen: 0,
            peer_writes: HashMap::new(),
            acks_after_bitmap: Vec::new(),
            next_bitmap_mark: 0,
            bitmap_marks_durable: 0,
            announce_pending: false,
            peer_wait: VecDeque::new(),
            next_peer_write: 0,
            crashed_primary: p.crashed_primary,
            state_req: None,
            held_for_sync: Vec::new(),
            down_reported: false,
            clock: Instant::default(),
            net_log: VecDeque::new(),
            next_call: 0,
            negotiating: None,
            held: VecDeque::new(),
            #[cfg(feature = "sim-bugs")]
            bug: None,
        }
    }

    /// Attaches the metadata read from disk: replays the activity log when the metadata was
    /// not closed cleanly (marking hot extents out of sync when the node was Primary), then
    /// records the attach in the superblock. Drain [`Engine::poll_output`] afterwards: the
    /// metadata writes must be performed before the node serves writes.
    ///
    /// # Errors
    /// A ring or bitmap that cannot be used, or a refused attach.
    pub fn attach(cfg: EngineConfig, disk: OnDisk) -> Result<Engine, AttachError> {
        let size = disk.layout.max_usable.bytes();
        let Loaded {
            layout,
            sb,
            bitmap,
            al,
            meta_queue,
            out,
            crashed_primary,
            meta,
        } = Loaded::read(&cfg, disk, size)?;
        let down = NodeState {
            conn: ConnState::StandAlone,
            ..NodeState::DOWN
        };
        let attached = down.attach(meta, &cfg.context)?;
        let mut engine = Engine::assemble(Parts {
            cfg,
            layout,
            sb: sb.attached(),
            state: down,
            al,
            bitmap,
            size,
            meta_queue,
            out,
            crashed_primary,
        });
        engine.sb.la_size = Sector(size / Sector::SIZE);
        engine.set_state(attached.state);
        engine.write_superblock(After::Superblock);
        Ok(engine)
    }

    /// `attach` of a Diskless node (after an I/O error detached its disk, or a `disk none`
    /// node given one): replays the activity log of `disk` as [`Engine::attach`] does and
    /// records the attach in the superblock; [`Event::MetadataWritten`] follows when it is
    /// durable. While connected the disk shows `Negotiating` and the handshake with the peer
    /// runs again on this connection (sizes, UUIDs, state), which brings the disk back as
    /// DRBD does: no resync, or a resync from the peer of what changed meanwhile.
    ///
    /// # Errors
    /// The node has a disk, is going down, in the middle of a handshake or still waiting for
    /// operations on the lost disk; a Primary that is
    /// not connected (its data is the peer's: DRBD attaches only current data then); a disk
    /// smaller than the device; a ring or bitmap that cannot be used.
    pub fn reattach(&mut self, disk: OnDisk) -> Result<(), AttachError> {
        if self.state.disk > DiskState::Diskless {
            return Err(StateChangeError::DiskConfigured.into());
        }
        if self.going_down || !self.ops.is_empty() {
            // DRBD waits for the old disk's last references too (`local_cnt`): a late
            // completion from the failed disk must not reach the new one.
            return Err(StateChangeError::InTransientState.into());
        }
        let connected = self.state.conn == ConnState::Connected
            && self
                .peer
                .as_ref()
                .is_some_and(|p| p.phase == peer::Phase::Running);
        if self.state.conn > ConnState::StandAlone
            && self.state.conn != ConnState::WFConnection
            && !connected
        {
            return Err(StateChangeError::InTransientState.into());
        }
        if self.state.role == Role::Primary && !connected {
            return Err(AttachError::DataNotCurrent);
        }
        let usable = disk.layout.max_usable.bytes();
        let size = if connected && self.size > 0 {
            if usable < self.size {
                return Err(AttachError::TooSmall {
                    disk: usable,
                    device: self.size,
                });
            }
            self.size
        } else {
            usable
        };
        let loaded = Loaded::read(&self.cfg, disk, size)?;
        let ctx = self.cfg.context;
        let attached = self.state.attach(loaded.meta, &ctx)?;
        self.layout = loaded.layout;
        self.sb = loaded.sb.attached();
        // What this node marked while it had no disk (the failed writes among it) stays out of
        // sync on top of what the disk recorded.
        let old = std::mem::replace(&mut self.bitmap, loaded.bitmap);
        let n = old.word_count().min(self.bitmap.word_count());
        let _ = self.bitmap.or_words(0, old.words(0..n));
        let first = size.div_ceil(crate::bitmap::BLOCK_BYTES);
        let _ = self.bitmap.clear_bits(first..self.bitmap.bits());
        self.al = loaded.al;
        // Requests still in flight took their activity-log references in the lost disk's log.
        for p in self.requests.values_mut() {
            p.al_held = false;
        }
        self.meta_queue = loaded.meta_queue;
        self.meta_busy = false;
        self.gating_superblocks = 0;
        self.out.extend(loaded.out);
        self.crashed_primary = loaded.crashed_primary;
        self.size = size;
        self.sb.la_size = Sector(size / Sector::SIZE);
        self.down_reported = false;
        self.set_state(attached.state);
        self.write_superblock(After::Superblock);
        if attached.state.disk == DiskState::Negotiating {
            self.negotiating = Some(attached.disk_after_handshake);
            // DRBD's last part of attaching while connected: the peer learns the disk.
            self.send(crate::wire::Packet::Sizes {
                backing: size,
                requested: 0,
                current: size,
            });
            self.send_uuids(crate::uuid::UuidFlags::default());
            self.send_state();
        }
        Ok(())
    }

    /// A node without a disk (`disk none`, DRBD's Diskless): no metadata, no activity log, no
    /// bitmap; the size comes from the peer's `P_SIZES`, and every request is served by the
    /// peer once connected. Drain [`Engine::poll_output`] afterwards (nothing is written).
    ///
    /// # Errors
    /// None in practice (the activity log of a diskless node holds nothing); kept for the
    /// same shape as [`Engine::attach`].
    pub fn diskless(cfg: EngineConfig) -> Result<Engine, AttachError> {
        let al_geometry = crate::meta::AlGeometry::default();
        let layout = Layout::internal(crate::meta::MIN_DEVICE_BYTES, al_geometry)
            .map_err(|_| StateChangeError::NoDisk)?;
        let mut sb = Superblock::fresh(&layout);
        sb.uuids = GenerationUuids::default();
        sb.flags = MdFlags(0);
        let al = ActivityLog::new(cfg.al_extents.max(1), al_geometry)?;
        let state = NodeState {
            conn: ConnState::StandAlone,
            ..NodeState::DOWN
        };
        Ok(Engine::assemble(Parts {
            cfg,
            layout,
            sb,
            state,
            al,
            bitmap: Bitmap::new(Sector(0)),
            size: 0,
            meta_queue: VecDeque::new(),
            out: VecDeque::new(),
            crashed_primary: false,
        }))
    }

    /// Usable bytes: the disk's, or for a diskless node what the peer reported.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Switches on a deliberate defect, so that the simulator can show it catches it.
    #[cfg(feature = "sim-bugs")]
    pub fn inject_bug(&mut self, bug: Bug) {
        self.bug = Some(bug);
    }

    /// The next output, in order; call until `None` after every input.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// A snapshot in DRBD's vocabulary for status output. Without a disk there are no
    /// generation UUIDs, flags or out-of-sync count to show (DRBD reads them from the disk).
    pub fn status(&self) -> Status {
        let disk = self.state.disk > DiskState::Failed;
        Status {
            resource: self.cfg.resource.clone(),
            volume: self.cfg.volume,
            minor: self.cfg.minor,
            state: self.state,
            uuids: if disk {
                self.sb.uuids
            } else {
                GenerationUuids::default()
            },
            flags: if disk { self.sb.flags } else { MdFlags(0) },
            size: Sector(self.size / Sector::SIZE),
            out_of_sync: if disk { self.bitmap.count() * 4 } else { 0 },
            counters: Counters {
                lo: self.ops.len() as u64,
                ap: self.requests.values().filter(|p| !p.completed).count() as u64,
                pe: self.requests.values().filter(|p| p.net.pending()).count() as u64,
                ua: self.peer_writes.len() as u64,
                ..self.counters
            },
            resync: self.resync_status(),
            protocol: self.cfg.net.map(|n| n.protocol),
        }
    }

    /// The node's states.
    pub fn state(&self) -> NodeState {
        self.state
    }

    /// The generation UUIDs as they will be persisted.
    pub fn uuids(&self) -> GenerationUuids {
        self.sb.uuids
    }

    /// Bits set in the dirty bitmap.
    pub fn out_of_sync_blocks(&self) -> u64 {
        self.bitmap.count()
    }

    /// Accepts a block-layer request at `now`; its [`Output::Complete`] follows later.
    ///
    /// # Errors
    /// The node is not Primary, has no usable data, is going down, or the range is bad.
    pub fn submit(&mut self, request: Request, now: Instant) -> Result<ReqId, SubmitError> {
        self.advance(now);
        if self.going_down {
            return Err(SubmitError::Down);
        }
        if self.state.role != Role::Primary {
            return Err(SubmitError::NotPrimary);
        }
        let placing = self.placing_disk();
        if self.state.disk < DiskState::UpToDate
            && !self.peer_has_good_data()
            && !self.writes_wait_for_sync_uuid()
            && !placing
        {
            return Err(SubmitError::NoData(self.state.disk));
        }
        if let Some((offset, len)) = request.range() {
            if len > MAX_REQUEST_BYTES {
                return Err(SubmitError::TooLarge(len));
            }
            if !offset.is_multiple_of(Sector::SIZE) || !len.is_multiple_of(Sector::SIZE) {
                return Err(SubmitError::Unaligned { offset, len });
            }
            if offset.checked_add(len).is_none_or(|end| end > self.size) {
                return Err(SubmitError::OutOfRange {
                    offset,
                    len,
                    size: self.size,
                });
            }
        }
        let req = ReqId(self.next_req);
        self.next_req += 1;
        let writes = request.writes();
        self.requests.insert(req, Pending::new(request));
        if placing {
            self.held.push_back(req);
        } else if writes {
            self.waiting.push_back(req);
            self.admit_waiting();
        } else {
            self.issue(req);
        }
        Ok(req)
    }

    /// When the engine wants [`Engine::tick`] called next: the resync target's next planning
    /// step, or the moment the oldest request sent to the peer exceeds `ko-count * timeout`.
    pub fn next_tick(&self) -> Option<Instant> {
        match (self.next_resync_tick(), self.request_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Time passes: the resync target plans its next requests, and the request timer checks
    /// that the peer answers in time (dropping the connection when it did not).
    pub fn tick(&mut self, now: Instant) {
        self.advance(now);
        self.resync_tick(now);
        self.request_timer(now);
        self.release_held();
    }

    /// Whether the handshake is placing a disk attached on a live connection (`Negotiating`)
    /// or this node is the target of a bitmap exchange: its bitmap does not yet say which of
    /// its blocks are stale, and writes would not reach the peer, so requests wait.
    fn placing_disk(&self) -> bool {
        self.detaching()
            || self.state.disk == DiskState::Negotiating
            || matches!(
                self.state.conn,
                ConnState::WFBitMapT | ConnState::WFSyncUUID
            )
    }

    /// Issues the requests held while the disk was being placed, or fails them when no data
    /// is reachable any more.
    fn release_held(&mut self) {
        // Every entry point ends here: a detach that waited for a quiet disk or for the end
        // of a handshake may go on now.
        self.maybe_finish_detach();
        if self.held.is_empty() || self.placing_disk() {
            return;
        }
        let no_data = self.state.disk < DiskState::UpToDate
            && !self.peer_has_good_data()
            && !self.writes_wait_for_sync_uuid();
        for req in std::mem::take(&mut self.held) {
            let Some(p) = self.requests.get(&req) else {
                continue;
            };
            if no_data {
                self.finish(req, Err(RequestError::Io));
            } else if p.request.writes() {
                self.waiting.push_back(req);
            } else {
                self.issue(req);
            }
        }
        self.admit_waiting();
    }

    /// Reports a disk operation's result, at `now`.
    pub fn disk_done(&mut self, op: OpId, result: DiskResult, now: Instant) {
        self.advance(now);
        self.disk_done_inner(op, result);
        self.release_held();
    }

    fn disk_done_inner(&mut self, op: OpId, result: DiskResult) {
        match self.ops.remove(&op) {
            Some(OpFor::Request(req)) => self.request_done(req, result),
            Some(OpFor::Meta(after)) => self.meta_done(after, result),
            Some(OpFor::PeerWrite(key)) => self.peer_write_done(key, result),
            Some(OpFor::RsRead { link, id, sector }) => self.rs_read_done(link, id, sector, result),
            Some(OpFor::PeerFlush { link, epoch }) => self.peer_flush_done(link, epoch, result),
            Some(OpFor::PeerRead { link, id, sector }) => {
                self.peer_read_done(link, id, sector, result)
            }
            None => self.log(format!("completion for unknown disk operation {}", op.0)),
        }
    }

    /// Runs an operator command. `device_open` says whether a client holds the export open.
    /// A promotion or a full sync while connected needs the peer's consent: then
    /// [`Engine::command_pending`] is true and the result follows as [`Event::CommandDone`].
    ///
    /// # Errors
    /// DRBD's refusal, as `drbdsetup` words it.
    pub fn command(&mut self, cmd: Command, device_open: bool) -> Result<(), CommandError> {
        let r = self.command_inner(cmd, device_open);
        self.release_held();
        r
    }

    fn command_inner(&mut self, cmd: Command, device_open: bool) -> Result<(), CommandError> {
        if self.going_down {
            return Err(CommandError::GoingDown);
        }
        let ctx = Context {
            device_open,
            ..self.cfg.context
        };
        let handshaking = self.state.conn == ConnState::WFReportParams
            || self.state.conn == ConnState::WFBitMapS
            || self.state.conn == ConnState::WFBitMapT
            || self.state.conn == ConnState::WFSyncUUID;
        // DRBD's state mutex: a state change waits for the one in progress.
        if self.state_req.is_some()
            && !matches!(cmd, Command::Connect | Command::Disconnect | Command::Down)
        {
            return Err(StateChangeError::InTransientState.into());
        }
        match cmd {
            // The peer decides the handshake on the UUIDs and role we already sent it: a new
            // generation now would make the two sides decide differently.
            Command::Primary { .. } if handshaking => {
                return Err(StateChangeError::InTransientState.into())
            }
            Command::Primary { force } => {
                self.primary_command(force, false, ctx)?;
            }
            Command::Secondary => {
                if let Some(state) = self.state.demote(&ctx)? {
                    self.sb.uuids.set_role(Role::Secondary);
                    self.set_state(state);
                    self.write_superblock(After::Superblock);
                    self.send_state();
                }
            }
            Command::NewCurrentUuid { clear_bitmap } => {
                let random = self.rng.next_u64();
                let version = self.agreed_pro_version();
                let done =
                    self.sb
                        .uuids
                        .new_current_uuid(clear_bitmap, &self.state, version, random)?;
                if clear_bitmap {
                    self.clear_bitmap();
                }
                self.log(format!("new current UUID {}", self.sb.uuids.current));
                if done.skip_initial_sync {
                    self.log("Preparing to skip initial sync".into());
                    self.skip_initial_sync();
                    self.send_uuids(crate::uuid::UuidFlags::SKIP_INITIAL_SYNC);
                    self.send_state();
                }
                self.write_superblock(After::Superblock);
            }
            Command::Connect => self.connect_command()?,
            Command::Disconnect => self.disconnect_command(),
            Command::Outdate => {
                if let Some(state) = self.state.outdate(&ctx)? {
                    self.set_state(state);
                    self.write_superblock(After::Superblock);
                }
            }
            Command::Invalidate => {
                self.invalidate_command(ctx)?;
            }
            Command::InvalidateRemote => {
                self.invalidate_remote_command(ctx)?;
            }
            Command::Detach => self.detach_command(ctx)?,
            Command::Down => {
                // A refused demotion (the device is open) refuses `down`; otherwise the
                // requests in flight finish first, still mirrored, and the demotion and the
                // disconnect follow once they are done.
                self.state.demote(&ctx)?;
                self.going_down = true;
                // `down` supersedes a detach that waits: it leaves the metadata clean too.
                self.detach = detach::Detach::No;
                self.maybe_finish_down();
            }
        }
        Ok(())
    }

    fn log(&mut self, line: String) {
        self.out.push_back(Output::Event(Event::Log(line)));
    }

    /// Time as an input tells it; it never goes back.
    fn advance(&mut self, now: Instant) {
        self.clock = self.clock.max(now);
    }

    fn set_state(&mut self, new: NodeState) {
        let old = self.state;
        if old != new {
            self.state = new;
            self.sb.flags = md_flags(self.sb.flags, &new);
            if self.writes_unconfirmed() {
                self.sb.flags = self.sb.flags.with(MdFlags::PRIMARY_IND);
            }
            self.out
                .push_back(Output::Event(Event::StateChanged { old, new }));
        }
    }

    fn op(&mut self, purpose: OpFor, kind: DiskOp) {
        let op = OpId(self.next_op);
        self.next_op += 1;
        self.ops.insert(op, purpose);
        self.out.push_back(Output::Disk { op, kind });
    }

    /// Admits waiting writes through the activity log, in order; those that must wait stay.
    fn admit_waiting(&mut self) {
        if self.gating_superblocks > 0 || self.writes_wait_for_sync_uuid() || self.detaching() {
            return;
        }
        let mut still: VecDeque<ReqId> = VecDeque::new();
        while let Some(req) = self.waiting.pop_front() {
            let Some(p) = self.requests.get(&req) else {
                continue;
            };
            let Some((offset, len)) = p.request.range() else {
                continue;
            };
            // An overlapping write still in flight (or waiting ahead of this one) goes first,
            // so that both disks see overlapping writes in the same order. A peer write that
            // arrived earlier and still waits goes first too (it may date from a connection
            // that is gone, and must not land on top of this newer write).
            let earlier_waits = still.iter().any(|w| {
                self.requests
                    .get(w)
                    .and_then(|q| q.request.range())
                    .is_some_and(|r| overlaps(r, (offset, len)))
            });
            let peer_write_waits = self
                .peer_writes
                .values()
                .any(|w| !w.issued && overlaps((w.offset, w.len), (offset, len)));
            if earlier_waits || peer_write_waits || self.write_in_flight_over(offset, len) {
                still.push_back(req);
                continue;
            }
            if self.state.disk <= DiskState::Failed {
                // No disk, no activity log: the write goes to the peer only.
                self.issue(req);
                continue;
            }
            let (start, n) = sectors(offset, len);
            match self.al.begin_write(start, n) {
                Ok(Admission::Go) => {
                    self.hold_al(req);
                    self.issue(req);
                }
                Ok(Admission::Persist(pending)) => {
                    self.hold_al(req);
                    for e in &pending.evicted {
                        let page = Bitmap::page_of_extent(*e);
                        let step = bitmap_page_step(&self.layout, &self.bitmap, page);
                        self.meta_queue.push_back(step);
                    }
                    let tr = pending.transaction.tr_number;
                    match pending.transaction.encode() {
                        Ok(block) => {
                            self.staged = Some((tr, req));
                            self.meta_queue.push_back(MetaStep {
                                offset: self.layout.al_block_offset(pending.ring_block),
                                data: Bytes::copy_from_slice(&block),
                                after: After::AlTransaction(tr),
                            });
                            self.pump_meta();
                        }
                        Err(e) => {
                            self.log(format!("cannot encode AL transaction: {e}"));
                            self.finish(req, Err(RequestError::Io));
                        }
                    }
                }
                Ok(Admission::Wait) => still.push_back(req),
                Err(e) => {
                    self.log(format!("activity log refused a write: {e}"));
                    self.finish(req, Err(RequestError::Io));
                }
            }
        }
        self.waiting = still;
    }

    fn hold_al(&mut self, req: ReqId) {
        if let Some(p) = self.requests.get_mut(&req) {
            p.al_held = true;
        }
    }

    /// Sends a request's disk operation and, for writes and flushes, its packet to the peer;
    /// a write no peer receives marks its blocks out of sync.
    fn issue(&mut self, req: ReqId) {
        let Some(p) = self.requests.get_mut(&req) else {
            return;
        };
        p.issued = true;
        if self.local_cannot_serve(req) && self.read_from_peer(req) {
            return;
        }
        if self.state.disk <= DiskState::Failed {
            self.issue_without_disk(req);
            return;
        }
        let p = &self.requests[&req];
        let kind = match &p.request {
            Request::Read { offset, len } => DiskOp::Read {
                offset: *offset,
                len: *len,
            },
            Request::Write { offset, data, fua } => DiskOp::Write {
                offset: *offset,
                data: data.clone(),
                fua: *fua,
            },
            Request::Flush => DiskOp::Flush,
            Request::Trim { offset, len } => DiskOp::Trim {
                offset: *offset,
                len: *len,
            },
            Request::WriteZeroes { offset, len, fua } => DiskOp::WriteZeroes {
                offset: *offset,
                len: *len,
                fua: *fua,
            },
        };
        let request = p.request.clone();
        self.op(OpFor::Request(req), kind);
        if let Some((offset, len)) = request.range().filter(|_| request.writes()) {
            self.mark_resync_requests_stale(offset, len);
            if !self.mirror_write(req, &request) {
                // The range was checked against the size at submit.
                let _ = self.bitmap.set_bytes(offset, len);
                self.send_out_of_sync(offset, len);
            }
        } else if request == Request::Flush {
            self.mirror_flush(req);
        }
    }

    fn request_done(&mut self, req: ReqId, result: DiskResult) {
        let Some(p) = self.requests.get(&req) else {
            return;
        };
        let is_read = matches!(p.request, Request::Read { .. });
        if result == DiskResult::Failed {
            if let (true, Some((offset, len))) = (p.request.writes(), p.request.range()) {
                // Out of sync now, before `on-io-error` looks at the disk (pass_on resyncs
                // exactly these blocks).
                let _ = self.bitmap.set_bytes(offset, len);
            }
            self.local_io_error(&format!("request {}", req.0));
            if is_read && self.read_from_peer(req) {
                // DRBD retries a failed local read on the peer.
                return;
            }
        }
        let Some(p) = self.requests.get(&req) else {
            return;
        };
        let range = p.request.range();
        let result = match (&p.request, result) {
            (_, DiskResult::Failed) => Err(RequestError::Io),
            (Request::Read { .. }, DiskResult::Data(d)) => Ok(Some(d)),
            (Request::Read { .. }, DiskResult::Done) => Err(RequestError::Io),
            (_, _) => Ok(None),
        };
        if result.is_ok() {
            let kib = range.map_or(0, |(_, len)| len / 1024);
            match p.request {
                Request::Read { .. } => self.counters.dr += kib,
                Request::Flush => {}
                _ => self.counters.dw += kib,
            }
        } else {
            // No peer holds the data either: the request fails. Detaching on I/O errors
            // (`on-io-error`) arrives with the peer, which can serve instead.
        }
        if let Some(p) = self.requests.get_mut(&req) {
            p.local = Some(result);
        }
        self.maybe_complete(req);
        self.retry_deferred_rs_reads();
    }

    /// Fails a request before it reached the disk.
    fn finish(&mut self, req: ReqId, result: Result<Option<Bytes>, RequestError>) {
        if let Some(p) = self.requests.get_mut(&req) {
            p.local = Some(result);
            p.net = peer::Net::NotSent;
        }
        self.maybe_complete(req);
    }

    /// Completes a request to the block layer once its local part and the network part the
    /// protocol demands are done; destroys it once the peer confirmed its epoch.
    fn maybe_complete(&mut self, req: ReqId) {
        #[cfg(feature = "sim-bugs")]
        let early = self.bug == Some(Bug::AckBeforePeer);
        #[cfg(not(feature = "sim-bugs"))]
        let early = false;
        let Some(p) = self.requests.get_mut(&req) else {
            return;
        };
        let Some(local) = &p.local else {
            return;
        };
        let early = early && p.request.writes() && local.is_ok();
        // A copy the peer holds counts only when the peer's disk is a whole copy: on an
        // Inconsistent one (a SyncTarget) the write would be lost to the next resync from here.
        let peer_whole = self.state.pdsk == DiskState::UpToDate;
        // Likewise a write only this node's Inconsistent disk holds (a Primary SyncTarget
        // whose source refused it): the resync from the source would overwrite it.
        let local_whole = self.state.disk >= DiskState::Consistent;
        if !p.completed && (p.net.satisfied() || early) {
            p.completed = true;
            // Success when either side has the data (`drbd_req_complete`).
            let result = match local {
                Err(_) if p.net.peer_has_data() && peer_whole => Ok(None),
                Ok(_) if p.request.writes() && !local_whole && !p.net.peer_has_data() && !early => {
                    Err(RequestError::Io)
                }
                r => r.clone(),
            };
            let wrote = p.request.writes() && p.net.is_mirrored();
            self.out.push_back(Output::Complete { req, result });
            if wrote {
                self.close_epoch(false);
            }
        }
        let p = &self.requests[&req];
        if p.completed && p.net.finished() {
            self.destroy(req);
        }
    }

    /// Forgets a request: marks what did not reach both disks out of sync, releases its AL
    /// references and retries writes that waited.
    fn destroy(&mut self, req: ReqId) {
        let Some(p) = self.requests.remove(&req) else {
            return;
        };
        self.settle_primary_indicator();
        self.prune_net_log();
        let local_ok = matches!(p.local, Some(Ok(_)));
        if let (true, Some((offset, len))) = (p.request.writes(), p.request.range()) {
            if !local_ok || p.net == peer::Net::Failed {
                let _ = self.bitmap.set_bytes(offset, len);
                if self.state.conn == ConnState::SyncSource {
                    // The target's scan may be past these blocks: tell it.
                    if let Ok(len) = u32::try_from(len) {
                        self.send(crate::wire::Packet::OutOfSync {
                            sector: Sector(offset / Sector::SIZE),
                            len,
                        });
                    }
                }
            }
        }
        if p.al_held {
            if let Some((offset, len)) = p.request.range() {
                let (start, n) = sectors(offset, len);
                if let Err(e) = self.al.end_write(start, n) {
                    self.log(format!("activity log: {e}"));
                }
            }
        }
        self.admit_waiting();
        self.admit_peer_writes();
        self.maybe_finish_down();
    }

    /// Writes of this node that the peer has not confirmed yet (they are forgotten only once
    /// it has, or once their blocks are marked out of sync).
    fn writes_unconfirmed(&self) -> bool {
        self.requests.values().any(|p| p.request.writes())
    }

    /// The superblock keeps `PRIMARY_IND` after a demotion while writes from the Primary's
    /// time are unconfirmed: a crash then still replays the activity log that covers them
    /// (drbdmeta applies it only with that flag). The last one to go clears it.
    fn settle_primary_indicator(&mut self) {
        if !self.sb.flags.contains(MdFlags::PRIMARY_IND) || self.writes_unconfirmed() {
            return;
        }
        let flags = md_flags(self.sb.flags, &self.state);
        if !flags.contains(MdFlags::PRIMARY_IND) {
            self.sb.flags = flags;
            self.write_superblock(After::Nothing);
        }
    }

    /// Whether a local write that is admitted (issued, or staged behind its AL transaction)
    /// and not yet completed overlaps the range, or a write from the peer or the resync does.
    fn write_in_flight_over(&self, offset: u64, len: u64) -> bool {
        self.requests.values().any(|p| {
            (p.issued || p.al_held)
                && !p.completed
                && p.request.writes()
                && p.request
                    .range()
                    .is_some_and(|r| overlaps(r, (offset, len)))
        }) || self
            .peer_writes
            .values()
            .any(|w| w.issued && overlaps((w.offset, w.len), (offset, len)))
    }

    /// Queues the superblock as it is now, after the bitmap pages changed since the last
    /// write: a superblock that stops AL replay (a demotion, a clean state) must not be
    /// durable while bits it relies on are only in memory.
    fn write_superblock(&mut self, after: After) {
        if self.state.disk <= DiskState::Failed {
            return;
        }
        self.queue_dirty_pages();
        if matches!(after, After::Superblock | After::AnnounceDisk) {
            self.gating_superblocks += 1;
        }
        self.meta_queue.push_back(MetaStep {
            offset: self.layout.md_offset,
            data: Bytes::copy_from_slice(&self.sb.encode()),
            after,
        });
        self.pump_meta();
    }

    fn pump_meta(&mut self) {
        if self.state.disk <= DiskState::Failed {
            self.meta_queue.clear();
            return;
        }
        if self.meta_busy {
            return;
        }
        if let Some(step) = self.meta_queue.pop_front() {
            self.meta_busy = true;
            self.op(
                OpFor::Meta(step.after),
                DiskOp::MetaWrite {
                    offset: step.offset,
                    data: step.data,
                },
            );
        }
    }

    fn meta_done(&mut self, after: After, result: DiskResult) {
        self.meta_busy = false;
        if result == DiskResult::Failed && self.state.disk > DiskState::Failed {
            // Metadata that cannot be written leaves the disk unusable: DRBD detaches
            // whatever `on-io-error` says.
            self.log("meta data I/O error; the disk is failed".into());
            self.drop_disk();
        }
        match after {
            After::Nothing => {}
            After::AlTransaction(tr) => {
                self.counters.al += 1;
                if let Err(e) = self.al.transaction_written(tr) {
                    self.log(format!("activity log: {e}"));
                }
                if let Some((staged_tr, req)) = self.staged.take() {
                    if staged_tr == tr {
                        if result == DiskResult::Failed {
                            self.finish(req, Err(RequestError::Io));
                        } else if self.writes_wait_for_sync_uuid() {
                            self.held_for_sync.push(req);
                        } else {
                            self.issue(req);
                        }
                    } else {
                        self.staged = Some((staged_tr, req));
                    }
                }
            }
            After::Superblock => {
                self.gating_superblocks = self.gating_superblocks.saturating_sub(1);
                self.out.push_back(Output::Event(Event::MetadataWritten));
                self.admit_peer_writes();
            }
            After::AnnounceDisk => {
                self.gating_superblocks = self.gating_superblocks.saturating_sub(1);
                self.out.push_back(Output::Event(Event::MetadataWritten));
                self.announce_disk();
            }
            After::Down => self.out.push_back(Output::Event(Event::Down)),
            After::Detach => self.detach_written(),
            After::BitmapMark(mark) => self.bitmap_mark_durable(mark),
        }
        self.pump_meta();
        self.admit_waiting();
        self.admit_peer_writes();
    }

    fn clear_bitmap(&mut self) {
        let bits = self.bitmap.bits();
        // The whole range is valid by construction.
        let _ = self.bitmap.clear_bits(0..bits);
        self.queue_dirty_pages();
    }

    /// Sets or clears `CRASHED_PRIMARY` in memory and in the superblock to be written.
    pub(super) fn set_crashed_primary(&mut self, on: bool) {
        self.crashed_primary = on;
        self.sb.flags = if on {
            self.sb.flags.with(MdFlags::CRASHED_PRIMARY)
        } else {
            self.sb.flags.without(MdFlags::CRASHED_PRIMARY)
        };
    }

    fn set_all_bits(&mut self) {
        let bits = self.bitmap.bits();
        // The whole range is valid by construction.
        let _ = self.bitmap.set_bits(0..bits);
        self.queue_dirty_pages();
    }

    /// Queues a metadata write for every bitmap page changed since the last one.
    fn queue_dirty_pages(&mut self) {
        for page in self.bitmap.take_dirty_pages() {
            let step = bitmap_page_step(&self.layout, &self.bitmap, page);
            self.meta_queue.push_back(step);
        }
    }

    /// Once going down and idle: the dirty bitmap, then a clean superblock.
    fn maybe_finish_down(&mut self) {
        if !self.going_down || !self.requests.is_empty() || self.staged.is_some() {
            return;
        }
        if self.state.role == Role::Primary {
            let ctx = self.cfg.context;
            if let Ok(Some(state)) = self.state.demote(&ctx) {
                self.sb.uuids.set_role(Role::Secondary);
                self.set_state(state);
                self.send_state();
            }
        }
        self.disconnect_command();
        if !self.peer_writes.is_empty() {
            return;
        }
        if self.state.disk <= DiskState::Failed {
            // Nothing left to write to.
            if !self.down_reported {
                self.down_reported = true;
                self.out.push_back(Output::Event(Event::Down));
            }
            return;
        }
        if self.meta_queue.iter().any(|s| s.after == After::Down) {
            return;
        }
        self.write_clean_metadata(After::Down);
    }

    /// The dirty bitmap pages, then a superblock with the activity log clean (`down`,
    /// `detach`); `after` follows once it is durable.
    fn write_clean_metadata(&mut self, after: After) {
        self.queue_dirty_pages();
        let clean = self.sb.al_applied();
        self.meta_queue.push_back(MetaStep {
            offset: self.layout.md_offset,
            data: Bytes::copy_from_slice(&clean.encode()),
            after,
        });
        self.sb = clean;
        self.pump_meta();
    }
}

/// A disk's metadata made ready for an engine: the AL replayed into the bitmap, the metadata
/// writes that replay and a fresh ring need, and the facts the attach state rule reads.
struct Loaded {
    layout: Layout,
    sb: Superblock,
    bitmap: Bitmap,
    al: ActivityLog,
    meta_queue: VecDeque<MetaStep>,
    out: VecDeque<Output>,
    crashed_primary: bool,
    meta: AttachMeta,
}

impl Loaded {
    /// Reads `disk` for a device of `size` bytes.
    fn read(cfg: &EngineConfig, disk: OnDisk, size: u64) -> Result<Loaded, AttachError> {
        let OnDisk {
            layout,
            superblock,
            al_ring,
            bitmap,
        } = disk;
        // No copy unless the device is smaller than the disk (a re-attach while connected).
        let mut bitmap = bitmap.resized(size.div_ceil(crate::bitmap::BLOCK_BYTES));
        let mut out = VecDeque::new();
        let mut sb = superblock;
        // MDF_CRASHED_PRIMARY keeps the fact across clean restarts until a resync or a
        // promotion settles it.
        let crashed_primary = (sb.state == MdState::Unclean && sb.must_apply_al())
            || sb.flags.contains(MdFlags::CRASHED_PRIMARY);
        if crashed_primary {
            sb.flags = sb.flags.with(MdFlags::CRASHED_PRIMARY);
        }
        let mut meta_queue = VecDeque::new();
        if sb.state == MdState::Unclean {
            let replay = al::replay(&al_ring, layout.al)?;
            if sb.must_apply_al() {
                let before = bitmap.count();
                for e in &replay.hot {
                    bitmap.set_extent(*e);
                }
                let kib = (bitmap.count() - before) * 4;
                out.push_back(Output::Event(Event::Log(format!(
                    "Marked additional {kib} KB as out-of-sync based on AL."
                ))));
            }
            for page in bitmap.take_dirty_pages() {
                meta_queue.push_back(bitmap_page_step(&layout, &bitmap, page));
            }
            // Clean before the ring is rewritten: a crash that tears the rewrite then leaves
            // a superblock that does not ask for a replay.
            sb = sb.al_applied();
            meta_queue.push_back(MetaStep {
                offset: layout.md_offset,
                data: Bytes::copy_from_slice(&sb.encode()),
                after: After::Nothing,
            });
        }
        // Every attach starts a fresh ring, as `drbdmeta apply-al` does before every kernel
        // attach: transaction numbers restart at 0, so older ones must not survive to be
        // replayed as newer after the next crash.
        meta_queue.push_back(MetaStep {
            offset: layout.al_start(),
            data: Bytes::from(al::initialized_ring(layout.al)),
            after: After::Nothing,
        });
        let al = ActivityLog::new(cfg.al_extents, layout.al)?;
        let meta = AttachMeta {
            consistent: sb.flags.contains(MdFlags::CONSISTENT),
            was_up_to_date: sb.flags.contains(MdFlags::WAS_UP_TO_DATE),
            peer_outdated: sb.flags.contains(MdFlags::PEER_OUT_DATED),
        };
        Ok(Loaded {
            layout,
            sb,
            bitmap,
            al,
            meta_queue,
            out,
            crashed_primary,
            meta,
        })
    }
}

/// Whether two byte ranges `(offset, len)` share a byte.
fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}

/// A metadata step writing one bitmap page as it is in memory now.
fn bitmap_page_step(layout: &Layout, bitmap: &Bitmap, page: u64) -> MetaStep {
    // Pages come from the bitmap itself, so they are in range.
    let data = bitmap
        .encode_page(page)
        .map(|p| Bytes::copy_from_slice(&p))
        .unwrap_or_default();
    MetaStep {
        offset: layout.bm_page_offset(page),
        data,
        after: After::Nothing,
    }
}

/// The superblock flags that follow from a state (`drbd_md_set_flag` callers in DRBD).
fn md_flags(old: MdFlags, s: &NodeState) -> MdFlags {
    let set =
        |f: MdFlags, on: bool, flags: MdFlags| if on { flags.with(f) } else { flags.without(f) };
    if s.disk <= DiskState::Attaching {
        return old;
    }
    let mut f = old;
    f = set(MdFlags::CONSISTENT, s.disk > DiskState::Inconsistent, f);
    f = set(MdFlags::WAS_UP_TO_DATE, s.disk == DiskState::UpToDate, f);
    f = set(MdFlags::PRIMARY_IND, s.role == Role::Primary, f);
    f = set(MdFlags::CONNECTED_IND, s.conn >= ConnState::Connected, f);
    if s.pdsk == DiskState::Outdated {
        f = f.with(MdFlags::PEER_OUT_DATED);
    } else if s.pdsk >= DiskState::Inconsistent && s.pdsk != DiskState::DUnknown {
        f = f.without(MdFlags::PEER_OUT_DATED);
    }
    f
}

#[cfg(test)]
mod tests;
