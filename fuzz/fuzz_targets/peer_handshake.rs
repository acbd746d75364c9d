//! The link handshake: `repl_core::link::Link` fed the packets decoded from arbitrary bytes.
//! The input layout and the invariants are in `src/peer.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_fuzz::peer::run_handshake(data));
