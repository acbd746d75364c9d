//! A whole NBD connection: `nbd_server::server::serve_connection` over an in-memory pipe.
//! The input layout and the invariants are in `src/requests.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_fuzz::requests::run(data));
