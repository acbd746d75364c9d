//! KNOWN ENGINE BUGS: seeds of the CI and test ranges that fail because of engine bugs the
//! simulator found and reported, not fixed yet, so that those runs stay meaningful. Only a few
//! were analysed one by one; the rest fail the same invariants and are most likely the same
//! bugs. Regenerate after any change to the simulator or the engine: a seed's run changes
//! with either.

use crate::{FaultLevel, KnownFailure};

/// The source reads for a `P_RS_DATA_REQUEST` while a local write to the same blocks is still
/// in flight, so the target gets (and both sides clear the bits for) the older data.
const RESYNC_READ_RACE: &str = "resync read served while an overlapping local write is in flight";
/// Under protocol A/B a write during a resync completes without the write ack it asked for; a
/// Primary SyncTarget that loses the link then has the write overwritten by the next resync.
const SYNC_TARGET_ACK: &str = "writes during a resync do not wait for the write ack they ask for";
/// A write waiting for its AL transaction is invisible to the overlap check, so an overlapping
/// later write is issued first and both end up in flight: the copies apply them in different
/// orders.
const STAGED_OVERLAP: &str =
    "a write staged behind its AL transaction is overtaken by an overlapping one";
/// A SyncTarget writes resync data before the superblock that makes it Inconsistent (and the
/// merged bitmap) is durable; a crash brings it back UpToDate with a half-synced copy.
const TARGET_META_LATE: &str =
    "resync target writes data before its Inconsistent superblock is durable";
/// After `new-current-uuid --clear-bitmap`, the side that accepted the skip never re-sends its
/// UUIDs, so its peer keeps JUST_CREATED and the INCONSISTENT flag for it; an `invalidate` on
/// that connection then re-runs the handshake on the stale copy (rule 30, "I shall become
/// SyncSource, but I am inconsistent!") and `on_bitmap` reports a protocol error after the
/// abort, overriding StandAlone with WFConnection.
const STALE_PEER_UUIDS: &str = "the peer's UUIDs are stale after a skipped initial sync";
/// `primary --force` on a SyncTarget whose connected peer is Primary is accepted.
const FORCED_TWO_PRIMARIES: &str = "a forced promotion makes two Primaries on one connection";
/// Not analysed one by one.
const UNANALYSED: &str = "unanalysed; fails an invariant the reported engine bugs break";

const fn k(
    seed: u64,
    faults: FaultLevel,
    steps: u64,
    invariant: &'static str,
    issue: &'static str,
) -> KnownFailure {
    KnownFailure {
        seed,
        faults,
        steps,
        invariant,
        issue,
    }
}

/// Seeds that currently fail for a reported reason: the test ranges (600 steps, seeds 0..200)
/// and the CI ranges (3000 steps, seeds 0..1500) of each fault level.
pub const KNOWN_FAILURES: &[KnownFailure] = &[
    k(
        150,
        FaultLevel::None,
        600,
        "copies-identical",
        STAGED_OVERLAP,
    ),
    k(63, FaultLevel::Heavy, 600, "acked-write-lost", UNANALYSED),
    k(66, FaultLevel::Heavy, 600, "acked-write-lost", UNANALYSED),
    k(74, FaultLevel::Heavy, 600, "bitmap-coverage", UNANALYSED),
    k(76, FaultLevel::Heavy, 600, "acked-write-lost", UNANALYSED),
    k(126, FaultLevel::Heavy, 600, "split-brain", UNANALYSED),
    k(
        7,
        FaultLevel::None,
        3000,
        "acked-write-lost",
        RESYNC_READ_RACE,
    ),
    k(
        9,
        FaultLevel::None,
        3000,
        "acked-write-lost",
        RESYNC_READ_RACE,
    ),
    k(
        126,
        FaultLevel::None,
        3000,
        "read-your-writes",
        SYNC_TARGET_ACK,
    ),
    k(301, FaultLevel::None, 3000, "acked-write-lost", UNANALYSED),
    k(322, FaultLevel::None, 3000, "acked-write-lost", UNANALYSED),
    k(340, FaultLevel::None, 3000, "acked-write-lost", UNANALYSED),
    k(
        364,
        FaultLevel::None,
        3000,
        "engine-sanity",
        STALE_PEER_UUIDS,
    ),
    k(
        438,
        FaultLevel::None,
        3000,
        "engine-sanity",
        STALE_PEER_UUIDS,
    ),
    k(588, FaultLevel::None, 3000, "acked-write-lost", UNANALYSED),
    k(
        612,
        FaultLevel::None,
        3000,
        "engine-sanity",
        STALE_PEER_UUIDS,
    ),
    k(667, FaultLevel::None, 3000, "acked-write-lost", UNANALYSED),
    k(686, FaultLevel::None, 3000, "copies-identical", UNANALYSED),
    k(715, FaultLevel::None, 3000, "acked-write-lost", UNANALYSED),
    k(
        852,
        FaultLevel::None,
        3000,
        "engine-sanity",
        STALE_PEER_UUIDS,
    ),
    k(
        881,
        FaultLevel::None,
        3000,
        "engine-sanity",
        STALE_PEER_UUIDS,
    ),
    k(
        900,
        FaultLevel::None,
        3000,
        "engine-sanity",
        STALE_PEER_UUIDS,
    ),
    k(1193, FaultLevel::None, 3000, "acked-write-lost", UNANALYSED),
    k(1259, FaultLevel::None, 3000, "bitmap-coverage", UNANALYSED),
    k(1269, FaultLevel::None, 3000, "acked-write-lost", UNANALYSED),
    k(1349, FaultLevel::None, 3000, "bitmap-coverage", UNANALYSED),
    k(
        1383,
        FaultLevel::None,
        3000,
        "engine-sanity",
        STALE_PEER_UUIDS,
    ),
    k(1451, FaultLevel::None, 3000, "acked-write-lost", UNANALYSED),
    k(15, FaultLevel::Light, 3000, "acked-write-lost", UNANALYSED),
    k(237, FaultLevel::Light, 3000, "acked-write-lost", UNANALYSED),
    k(259, FaultLevel::Light, 3000, "acked-write-lost", UNANALYSED),
    k(265, FaultLevel::Light, 3000, "copies-identical", UNANALYSED),
    k(291, FaultLevel::Light, 3000, "split-brain", UNANALYSED),
    k(372, FaultLevel::Light, 3000, "acked-write-lost", UNANALYSED),
    k(383, FaultLevel::Light, 3000, "bitmap-coverage", UNANALYSED),
    k(389, FaultLevel::Light, 3000, "acked-write-lost", UNANALYSED),
    k(521, FaultLevel::Light, 3000, "acked-write-lost", UNANALYSED),
    k(626, FaultLevel::Light, 3000, "acked-write-lost", UNANALYSED),
    k(687, FaultLevel::Light, 3000, "read-your-writes", UNANALYSED),
    k(712, FaultLevel::Light, 3000, "bitmap-coverage", UNANALYSED),
    k(740, FaultLevel::Light, 3000, "bitmap-coverage", UNANALYSED),
    k(746, FaultLevel::Light, 3000, "acked-write-lost", UNANALYSED),
    k(755, FaultLevel::Light, 3000, "read-your-writes", UNANALYSED),
    k(800, FaultLevel::Light, 3000, "acked-write-lost", UNANALYSED),
    k(836, FaultLevel::Light, 3000, "acked-write-lost", UNANALYSED),
    k(845, FaultLevel::Light, 3000, "acked-write-lost", UNANALYSED),
    k(864, FaultLevel::Light, 3000, "acked-write-lost", UNANALYSED),
    k(976, FaultLevel::Light, 3000, "read-your-writes", UNANALYSED),
    k(980, FaultLevel::Light, 3000, "read-your-writes", UNANALYSED),
    k(1028, FaultLevel::Light, 3000, "split-brain", UNANALYSED),
    k(
        1054,
        FaultLevel::Light,
        3000,
        "acked-write-lost",
        UNANALYSED,
    ),
    k(
        1110,
        FaultLevel::Light,
        3000,
        "acked-write-lost",
        TARGET_META_LATE,
    ),
    k(
        1117,
        FaultLevel::Light,
        3000,
        "acked-write-lost",
        UNANALYSED,
    ),
    k(
        1153,
        FaultLevel::Light,
        3000,
        "acked-write-lost",
        UNANALYSED,
    ),
    k(
        1156,
        FaultLevel::Light,
        3000,
        "acked-write-lost",
        UNANALYSED,
    ),
    k(
        1158,
        FaultLevel::Light,
        3000,
        "acked-write-lost",
        UNANALYSED,
    ),
    k(1167, FaultLevel::Light, 3000, "bitmap-coverage", UNANALYSED),
    k(
        1182,
        FaultLevel::Light,
        3000,
        "acked-write-lost",
        UNANALYSED,
    ),
    k(
        1205,
        FaultLevel::Light,
        3000,
        "read-your-writes",
        UNANALYSED,
    ),
    k(1272, FaultLevel::Light, 3000, "bitmap-coverage", UNANALYSED),
    k(
        1273,
        FaultLevel::Light,
        3000,
        "acked-write-lost",
        UNANALYSED,
    ),
    k(
        1337,
        FaultLevel::Light,
        3000,
        "copies-identical",
        UNANALYSED,
    ),
    k(1352, FaultLevel::Light, 3000, "bitmap-coverage", UNANALYSED),
    k(
        1372,
        FaultLevel::Light,
        3000,
        "acked-write-lost",
        UNANALYSED,
    ),
    k(1466, FaultLevel::Light, 3000, "bitmap-coverage", UNANALYSED),
    k(63, FaultLevel::Heavy, 3000, "acked-write-lost", UNANALYSED),
    k(74, FaultLevel::Heavy, 3000, "bitmap-coverage", UNANALYSED),
    k(147, FaultLevel::Heavy, 3000, "acked-write-lost", UNANALYSED),
    k(256, FaultLevel::Heavy, 3000, "split-brain", UNANALYSED),
    k(294, FaultLevel::Heavy, 3000, "bitmap-coverage", UNANALYSED),
    k(346, FaultLevel::Heavy, 3000, "split-brain", UNANALYSED),
    k(361, FaultLevel::Heavy, 3000, "acked-write-lost", UNANALYSED),
    k(453, FaultLevel::Heavy, 3000, "split-brain", UNANALYSED),
    k(470, FaultLevel::Heavy, 3000, "acked-write-lost", UNANALYSED),
    k(472, FaultLevel::Heavy, 3000, "acked-write-lost", UNANALYSED),
    k(481, FaultLevel::Heavy, 3000, "acked-write-lost", UNANALYSED),
    k(496, FaultLevel::Heavy, 3000, "split-brain", UNANALYSED),
    k(639, FaultLevel::Heavy, 3000, "acked-write-lost", UNANALYSED),
    k(653, FaultLevel::Heavy, 3000, "acked-write-lost", UNANALYSED),
    k(654, FaultLevel::Heavy, 3000, "acked-write-lost", UNANALYSED),
    k(
        682,
        FaultLevel::Heavy,
        3000,
        "refusals",
        FORCED_TWO_PRIMARIES,
    ),
    k(719, FaultLevel::Heavy, 3000, "acked-write-lost", UNANALYSED),
    k(748, FaultLevel::Heavy, 3000, "bitmap-coverage", UNANALYSED),
    k(780, FaultLevel::Heavy, 3000, "copies-identical", UNANALYSED),
    k(816, FaultLevel::Heavy, 3000, "acked-write-lost", UNANALYSED),
    k(876, FaultLevel::Heavy, 3000, "bitmap-coverage", UNANALYSED),
    k(927, FaultLevel::Heavy, 3000, "split-brain", UNANALYSED),
    k(950, FaultLevel::Heavy, 3000, "acked-write-lost", UNANALYSED),
    k(964, FaultLevel::Heavy, 3000, "acked-write-lost", UNANALYSED),
    k(1120, FaultLevel::Heavy, 3000, "split-brain", UNANALYSED),
    k(
        1152,
        FaultLevel::Heavy,
        3000,
        "acked-write-lost",
        UNANALYSED,
    ),
    k(
        1219,
        FaultLevel::Heavy,
        3000,
        "acked-write-lost",
        UNANALYSED,
    ),
    k(
        1369,
        FaultLevel::Heavy,
        3000,
        "read-your-writes",
        UNANALYSED,
    ),
    k(1412, FaultLevel::Heavy, 3000, "convergence", UNANALYSED),
    k(
        1433,
        FaultLevel::Heavy,
        3000,
        "acked-write-lost",
        UNANALYSED,
    ),
    k(1485, FaultLevel::Heavy, 3000, "engine-sanity", UNANALYSED),
    k(
        1490,
        FaultLevel::Heavy,
        3000,
        "acked-write-lost",
        UNANALYSED,
    ),
];
