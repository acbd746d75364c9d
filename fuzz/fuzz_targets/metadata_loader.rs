//! v08 metadata from disk: superblock, layout checks, AL transactions and the AL replay.
//! The input layout and the invariants are in `src/metadata.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_fuzz::metadata::run(data));
