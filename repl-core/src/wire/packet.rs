//! The packets two tandem nodes exchange, as values. [`super::codec`] turns them into bytes.
//!
//! The set follows DRBD 8.4's (`P_DATA`, `P_WRITE_ACK`, `P_BARRIER`, `P_UUIDS`, …) with
//! tandem's own encoding; tandem speaks only to tandem. Connection-level packets travel on
//! volume 0; the others name their volume in the frame header.

use bytes::Bytes;

use crate::state::{DiskState, Role, StateChange, StateChangeError};
use crate::types::Sector;
use crate::uuid::GenerationUuids;

/// The wire protocol versions this build speaks (the handshake agrees on the highest common).
pub const MIN_VERSION: u32 = 1;
pub const MAX_VERSION: u32 = 2;
/// The first version with cluster-wide state changes ([`Packet::StateChgReq`],
/// [`Packet::StateChgReply`]); with an older peer a node changes its state alone.
pub const STATE_CHG_VERSION: u32 = 2;

/// DRBD's replication protocols (section 1 of the reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Protocol {
    /// Acknowledged once handed to the network.
    A,
    /// Acknowledged once the peer received it (`P_RECV_ACK`).
    B,
    /// Acknowledged once the peer's disk completed it (`P_WRITE_ACK`).
    C,
}

/// What a [`Packet::Data`] asks the peer to do with its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataKind {
    /// Write the packet's payload.
    Write,
    /// Discard the range (no payload).
    Trim,
    /// Write zeroes over the range (no payload).
    Zeroes,
}

/// Per-write flags (`DP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DataFlags(pub u32);

impl DataFlags {
    /// Write through to stable storage (`DP_FUA`).
    pub const FUA: DataFlags = DataFlags(1);
    /// Send [`AckKind::Recv`] when received (protocol B, `DP_SEND_RECEIVE_ACK`).
    pub const SEND_RECV_ACK: DataFlags = DataFlags(2);
    /// Send [`AckKind::Write`] when written (protocol C, `DP_SEND_WRITE_ACK`).
    pub const SEND_WRITE_ACK: DataFlags = DataFlags(4);
    /// Sent during resync: both sides may mark the range in sync once it is written
    /// (`DP_MAY_SET_IN_SYNC`); the peer answers with [`AckKind::RsWrite`].
    pub const MAY_SET_IN_SYNC: DataFlags = DataFlags(8);
    /// Every flag this version knows; others are a protocol error.
    pub const ALL: DataFlags = DataFlags(15);

    pub fn contains(self, other: DataFlags) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn with(self, other: DataFlags) -> DataFlags {
        DataFlags(self.0 | other.0)
    }
}

/// Which acknowledgement an [`Packet::Ack`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckKind {
    /// `P_RECV_ACK`: received (protocol B).
    Recv,
    /// `P_WRITE_ACK`: written to the peer's disk (protocol C).
    Write,
    /// `P_RS_WRITE_ACK`: written, and the range is now in sync on both sides.
    RsWrite,
    /// `P_NEG_ACK`: the peer could not write it; the range stays out of sync.
    Neg,
}

/// The sender's role and disk as the peer should see them (`P_STATE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerState {
    pub role: Role,
    pub disk: DiskState,
}

/// Data integrity algorithm for [`Packet::Data`] and [`Packet::RsReply`] payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntegrityAlg {
    Crc32c,
}

/// One packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    // ---- connection level (frame volume 0) ----
    /// First packet each side sends: the versions it speaks and who it is.
    Hello {
        min_version: u32,
        max_version: u32,
        /// The resource this connection is for.
        resource: String,
        /// The sender's node name (`on NAME` in the config).
        node: String,
    },
    /// `cram-hmac-alg`: a random challenge the peer must answer (16 to 64 bytes).
    AuthChallenge {
        nonce: Bytes,
    },
    /// HMAC of the received challenge with the shared secret (at most 64 bytes).
    AuthResponse {
        mac: Bytes,
    },
    /// `P_PROTOCOL`: the net options both sides must agree on.
    Protocol {
        protocol: Protocol,
        two_primaries: bool,
        integrity: Option<IntegrityAlg>,
        /// `connect --discard-my-data` was given on the sender.
        discard_my_data: bool,
    },
    /// `P_PING`: the peer answers [`Packet::PingAck`] at once.
    Ping,
    PingAck,
    /// The sender closes the connection on purpose (`drbdadm disconnect`/`down`).
    Disconnect,

    // ---- per volume ----
    /// `P_SIZES`: sizes in bytes. `backing` is the usable size of the sender's disk (0 when
    /// diskless), `requested` the configured `size` (0 when unset), `current` the size the
    /// sender exports now (0 before it has one).
    Sizes {
        backing: u64,
        requested: u64,
        current: u64,
    },
    /// `P_UUIDS`: generation UUIDs, how many bitmap bits are set and the `UuidFlags`.
    Uuids {
        uuids: GenerationUuids,
        bitmap_bits: u64,
        flags: u64,
    },
    /// `P_STATE`: the sender's role and disk state.
    State(PeerState),
    /// One piece of the sender's bitmap (`P_BITMAP`): 64-bit words starting at word `offset`,
    /// in the on-disk bit order (bit n of word w is block w*64+n). `last` ends the exchange.
    Bitmap {
        offset: u64,
        words: Vec<u64>,
        last: bool,
    },
    /// `P_SYNC_UUID`: the source's new bitmap UUID, which the target takes as current.
    SyncUuid {
        uuid: u64,
    },
    /// `P_DATA`: a mirrored write. `id` identifies it in acks; `epoch` is the barrier
    /// number it belongs to; `len` is the range in bytes (equal to the payload for
    /// [`DataKind::Write`], with no payload otherwise). `digest` is the crc32c of the payload
    /// when an integrity algorithm is agreed.
    Data {
        id: u64,
        sector: Sector,
        len: u32,
        kind: DataKind,
        flags: DataFlags,
        epoch: u32,
        digest: Option<u32>,
        data: Bytes,
    },
    /// `P_RECV_ACK`, `P_WRITE_ACK`, `P_RS_WRITE_ACK`, `P_NEG_ACK` for the write `id`.
    Ack {
        kind: AckKind,
        id: u64,
        sector: Sector,
        len: u32,
    },
    /// `P_BARRIER`: epoch `epoch` is closed; answer with [`Packet::BarrierAck`] once all its
    /// writes are done (and flushed to stable storage when `flush`).
    Barrier {
        epoch: u32,
        flush: bool,
    },
    /// `P_BARRIER_ACK`: every write of `epoch` (`writes` of them) is done on the peer.
    BarrierAck {
        epoch: u32,
        writes: u32,
    },
    /// `P_RS_DATA_REQUEST`: the resync target asks for a range.
    RsRequest {
        id: u64,
        sector: Sector,
        len: u32,
    },
    /// `P_RS_DATA_REPLY`: the source's data for a request.
    RsReply {
        id: u64,
        sector: Sector,
        digest: Option<u32>,
        data: Bytes,
    },
    /// `P_NEG_RS_DREPLY`: the source could not read the range.
    RsNegReply {
        id: u64,
        sector: Sector,
        len: u32,
    },
    /// `P_DATA_REQUEST`: read this range for me; my own disk cannot serve it (it is
    /// Diskless after an I/O error, or the range is out of sync on a SyncTarget).
    DataRequest {
        id: u64,
        sector: Sector,
        len: u32,
    },
    /// `P_DATA_REPLY`: the data for a [`Packet::DataRequest`].
    DataReply {
        id: u64,
        sector: Sector,
        digest: Option<u32>,
        data: Bytes,
    },
    /// `P_NEG_DREPLY`: the peer could not read it either.
    NegDataReply {
        id: u64,
        sector: Sector,
        len: u32,
    },
    /// `P_OUT_OF_SYNC`: the sender marked this range out of sync.
    OutOfSync {
        sector: Sector,
        len: u32,
    },
    /// `P_STATE_CHG_REQ`: the sender asks to make this change to its state (its own point of
    /// view); the peer validates it against its own state and answers
    /// [`Packet::StateChgReply`]. Version [`STATE_CHG_VERSION`] and later.
    StateChgReq(StateChange),
    /// `P_STATE_CHG_REPLY`: the answer to the oldest unanswered [`Packet::StateChgReq`]: done
    /// (the peer already applied it), or DRBD's refusal.
    StateChgReply(Result<(), StateChangeError>),
}

/// A packet with the volume it concerns (0 for connection-level packets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub volume: u16,
    pub packet: Packet,
}
