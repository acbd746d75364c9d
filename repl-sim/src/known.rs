//! KNOWN ENGINE BUGS: seeds of the CI and test ranges that fail for a reason that is reported
//! and not fixed yet, so that those runs stay meaningful: the test range (`cargo test`, 600
//! steps, seeds 0..200) and the CI range (`scripts/test.sh`, 1000 steps, seeds 0..2000) of
//! each fault level. Regenerate after any change to the simulator or the engine (a seed's run
//! changes with either): run both ranges and list what fails.

use crate::{FaultLevel, KnownFailure};

/// A Primary that loses its peer while its bitmap UUID is set (a SyncSource mid-resync, or a
/// resync whose end it never recorded) keeps its generation, as DRBD 8.4 does
/// (`drbd_uuid_new_current` only with a zero bitmap UUID); once the peer finished the resync and
/// was promoted, the next handshake (rule 50) makes it the target and its writes since are
/// discarded without a split brain being detected. Rotating the UUIDs there turns an
/// interrupted resync into a full one (rule 70): not changed yet.
const SOURCE_KEEPS_GENERATION: &str =
    "a Primary that loses its peer with a bitmap UUID set keeps its generation (DRBD 8.4's rule)";
/// Heavy faults (double power loss, a full disk, I/O errors together); not analysed one by
/// one yet. Seed 28 is a SyncTarget whose disk failed before its Inconsistent superblock was
/// written: re-attached, the old metadata says UpToDate until a handshake makes it the target
/// again (DRBD's metadata after a failed disk is just as stale).
const UNANALYSED: &str = "not analysed yet (heavy faults); see the replay command";

/// A SyncTarget killed (or detached after a metadata error) before the superblock that records
/// its Inconsistent disk is durable comes back UpToDate with its old data: the resync starts
/// without waiting for that write (DRBD's `drbd_start_resync` ends with a synchronous
/// `drbd_md_sync`). Not caused by cluster-wide state changes; the seeds moved onto it when the
/// operator actions `invalidate-remote` and `promote-both` were added.
const TARGET_SUPERBLOCK_NOT_DURABLE: &str =
    "a SyncTarget's Inconsistent superblock is not durable before its resync starts";

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

/// Seeds that currently fail for a reported reason.
pub const KNOWN_FAILURES: &[KnownFailure] = &[
    k(
        25,
        FaultLevel::Light,
        1000,
        "acked-write-lost",
        TARGET_SUPERBLOCK_NOT_DURABLE,
    ),
    k(
        188,
        FaultLevel::Light,
        1000,
        "acked-write-lost",
        TARGET_SUPERBLOCK_NOT_DURABLE,
    ),
    k(
        188,
        FaultLevel::Light,
        600,
        "acked-write-lost",
        TARGET_SUPERBLOCK_NOT_DURABLE,
    ),
    k(5, FaultLevel::Heavy, 600, "acked-write-lost", UNANALYSED),
    k(143, FaultLevel::Heavy, 600, "bitmap-coverage", UNANALYSED),
    k(28, FaultLevel::Heavy, 600, "acked-write-lost", UNANALYSED),
    k(74, FaultLevel::Heavy, 600, "acked-write-lost", UNANALYSED),
    k(
        490,
        FaultLevel::Light,
        1000,
        "split-brain",
        SOURCE_KEEPS_GENERATION,
    ),
    k(
        1732,
        FaultLevel::Light,
        1000,
        "split-brain",
        SOURCE_KEEPS_GENERATION,
    ),
    k(28, FaultLevel::Heavy, 1000, "acked-write-lost", UNANALYSED),
    k(74, FaultLevel::Heavy, 1000, "acked-write-lost", UNANALYSED),
    k(604, FaultLevel::Heavy, 1000, "bitmap-coverage", UNANALYSED),
    k(
        965,
        FaultLevel::Heavy,
        1000,
        "split-brain",
        SOURCE_KEEPS_GENERATION,
    ),
    k(1113, FaultLevel::Heavy, 1000, "convergence", UNANALYSED),
    k(1519, FaultLevel::Heavy, 1000, "bitmap-coverage", UNANALYSED),
    k(1635, FaultLevel::Heavy, 1000, "bitmap-coverage", UNANALYSED),
    k(
        1719,
        FaultLevel::Heavy,
        1000,
        "split-brain",
        SOURCE_KEEPS_GENERATION,
    ),
    k(
        1738,
        FaultLevel::Heavy,
        1000,
        "split-brain",
        SOURCE_KEEPS_GENERATION,
    ),
    k(
        1846,
        FaultLevel::Heavy,
        1000,
        "copies-identical",
        UNANALYSED,
    ),
];
