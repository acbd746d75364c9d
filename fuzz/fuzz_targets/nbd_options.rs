//! Option haggling: `nbd_server::handshake::Negotiation` against arbitrary option sequences.
//! The input layout and the invariants are in `src/options.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_fuzz::options::run(data));
