//! The replication engine as a deterministic state machine.
//!
//! No I/O, no clock, no threads: callers feed inputs with the current time and drain outputs.
//! The engine itself arrives with the two-node issues; this crate already holds the formats and
//! rules every layer names.

pub mod al;
pub mod bitmap;
pub mod engine;
pub mod link;
pub mod meta;
pub mod rng;
pub mod state;
pub mod status;
pub mod time;
pub mod types;
pub mod uuid;
pub mod wire;
