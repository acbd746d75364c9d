//! Harness code shared by the fuzz targets in `fuzz_targets/`: input decoding, a small NBD client
//! (encoders and reply parsers), the invariants each target asserts, and the seed builders that
//! `examples/gen_corpus.rs` writes to `corpus/`.
//!
//! Every target body lives here so that a finding can be replayed under a debugger with
//! `cargo fuzz run <target> <artifact>` and read in one place.

pub mod alloc;
pub mod cursor;
pub mod metadata;
pub mod options;
pub mod peer;
pub mod requests;
pub mod seeds;
pub mod wire;
