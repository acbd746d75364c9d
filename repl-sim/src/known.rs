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
/// one yet.
const UNANALYSED: &str = "not analysed yet (heavy faults); see the replay command";

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
    k(74, FaultLevel::Heavy, 600, "acked-write-lost", UNANALYSED),
    k(
        943,
        FaultLevel::Light,
        1000,
        "split-brain",
        SOURCE_KEEPS_GENERATION,
    ),
    k(
        995,
        FaultLevel::Light,
        1000,
        "split-brain",
        SOURCE_KEEPS_GENERATION,
    ),
    k(
        1904,
        FaultLevel::Light,
        1000,
        "split-brain",
        SOURCE_KEEPS_GENERATION,
    ),
    k(
        1928,
        FaultLevel::Light,
        1000,
        "split-brain",
        SOURCE_KEEPS_GENERATION,
    ),
    k(74, FaultLevel::Heavy, 1000, "acked-write-lost", UNANALYSED),
    k(
        368,
        FaultLevel::Heavy,
        1000,
        "split-brain",
        SOURCE_KEEPS_GENERATION,
    ),
    k(
        1120,
        FaultLevel::Heavy,
        1000,
        "split-brain",
        SOURCE_KEEPS_GENERATION,
    ),
    k(
        1151,
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
