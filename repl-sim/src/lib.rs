//! `repl-sim`: two tandem nodes (engine and disk each), the link between them and a virtual
//! clock, all driven by one seeded PRNG, under faults, with invariants checked as it runs.
//!
//! No threads, no sockets, no clock: a seed replays bit for bit. [`run`] executes one seed and
//! returns a [`Report`]; the `repl-sim` binary runs ranges of seeds. The reference model and
//! what exactly it promises are documented in [`model`].

mod checks;
pub mod disk;
mod known;
pub mod model;
pub mod net;
mod ops;
pub mod rng;
mod sim;
pub mod trace;
pub mod workload;

pub use sim::{run, EngineHook, FaultLevel, Options, Report, Violation};

/// Steps of the fault phase when none are given.
pub const DEFAULT_STEPS: u64 = 3000;

/// KNOWN ENGINE BUGS the simulator steers around by default (`Options::workarounds`), so
/// that every other seed stays meaningful; `repl-sim --expose-known-bugs` turns all of them
/// off to reproduce the bugs. `(name, what is avoided and why)`; the report of the simulator's
/// first run names a reproducing seed for each.
pub const KNOWN_ENGINE_BUGS: &[(&str, &str)] = &[];

/// A seed that fails because of an engine bug that is reported and not fixed yet. Listed so
/// that CI stays meaningful; every entry names the report. A seed's run depends on its step
/// count too, so that is part of the key.
#[derive(Debug, Clone, Copy)]
pub struct KnownFailure {
    pub seed: u64,
    pub faults: FaultLevel,
    pub steps: u64,
    pub invariant: &'static str,
    pub issue: &'static str,
}

pub use known::KNOWN_FAILURES;

/// The issue a failing seed is known for, if it is listed in [`KNOWN_FAILURES`].
pub fn known_failure(
    seed: u64,
    faults: FaultLevel,
    steps: u64,
    invariant: &str,
) -> Option<&'static str> {
    KNOWN_FAILURES
        .iter()
        .find(|k| {
            k.seed == seed && k.faults == faults && k.steps == steps && k.invariant == invariant
        })
        .map(|k| k.issue)
}
