//! A status snapshot in DRBD's vocabulary; `drbdadm-compat` renders it as `/proc/drbd` and
//! `drbdadm status`.

use serde::{Deserialize, Serialize};

use crate::meta::MdFlags;
use crate::state::NodeState;
use crate::types::Sector;
use crate::uuid::GenerationUuids;

/// The `/proc/drbd` counters, in KiB where DRBD counts KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counters {
    /// KiB sent to the peer.
    pub ns: u64,
    /// KiB received from the peer.
    pub nr: u64,
    /// KiB written to the local disk.
    pub dw: u64,
    /// KiB read from the local disk.
    pub dr: u64,
    /// Activity-log transactions written.
    pub al: u64,
    /// Bitmap writes (DRBD 8.4.5+ never counts them: always 0).
    pub bm: u64,
    /// Local I/O operations open.
    pub lo: u64,
    /// Requests sent to the peer awaiting an answer.
    pub pe: u64,
    /// Requests from the peer not yet answered.
    pub ua: u64,
    /// Application requests not yet completed.
    pub ap: u64,
}

/// One volume's state as users see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub resource: String,
    pub volume: u32,
    pub minor: u32,
    pub state: NodeState,
    pub uuids: GenerationUuids,
    #[serde(with = "flags_serde")]
    pub flags: MdFlags,
    pub size: Sector,
    /// Out-of-sync KiB (`oos:`).
    pub out_of_sync: u64,
    pub counters: Counters,
    /// Resync progress while SyncSource or SyncTarget.
    #[serde(default)]
    pub resync: Option<crate::engine::ResyncStatus>,
    /// The replication protocol of the net configuration, if there is one.
    #[serde(default)]
    pub protocol: Option<crate::wire::Protocol>,
}

mod flags_serde {
    use super::MdFlags;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(f: &MdFlags, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(f.0)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<MdFlags, D::Error> {
        u32::deserialize(d).map(MdFlags)
    }
}
