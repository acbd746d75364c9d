//! The peer frame decoder: `repl_core::wire::Decoder` over arbitrary bytes in arbitrary chunks.
//! The input layout and the invariants are in `src/peer.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_fuzz::peer::run_wire(data));
