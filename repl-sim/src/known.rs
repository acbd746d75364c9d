//! KNOWN ENGINE BUGS: seeds of the CI and test ranges that fail for a reason that is reported
//! and not fixed yet, so that those runs stay meaningful: the test range (`cargo test`, 600
//! steps, seeds 0..200) and the CI range (`scripts/test.sh`, 1000 steps, seeds 0..2000) of
//! each fault level. Regenerate after any change to the simulator or the engine (a seed's run
//! changes with either): run both ranges and list what fails, as
//! `KnownFailure { seed, faults, steps, invariant, issue }` with the analysed reason.

use crate::KnownFailure;

/// Seeds that currently fail for a reported reason: none on either range.
pub const KNOWN_FAILURES: &[KnownFailure] = &[];
