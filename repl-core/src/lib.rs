//! The replication engine as a deterministic state machine.
//!
//! No I/O, no clock, no threads: callers feed inputs with the current time and drain outputs.
//! The engine itself arrives with the two-node issues; this crate holds the shared vocabulary
//! that every layer already names.

pub mod time;
