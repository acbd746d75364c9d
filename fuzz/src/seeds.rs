//! Hand-built seed inputs: real handshakes and requests in each target's input layout.
//! `cargo run --example gen_corpus` writes them to `corpus/<target>/seed-<name>`.

use nbd_server::proto::{cflags, cmd, info, opt, BASE_ALLOCATION};

use crate::requests::Hello;
use crate::wire::{self, info_data, meta_data, put_option, put_request};

/// A named seed.
pub type Seed = (&'static str, Vec<u8>);

/// Appends one option in `nbd_options` layout.
fn o(out: &mut Vec<u8>, option: u32, data: &[u8]) {
    if option < 16 {
        out.push(option as u8);
    } else {
        out.push(0x80);
        wire::put_u32(out, option);
    }
    wire::put_u16(out, data.len() as u16);
    out.extend_from_slice(data);
}

/// `nbd_options` seeds: `[client flags selector, export config, options...]`.
pub fn options() -> Vec<Seed> {
    let all_items = [info::NAME, info::DESCRIPTION, info::BLOCK_SIZE];
    let mut v: Vec<Seed> = Vec::new();
    let mut s = |name, head: &[u8], body: &dyn Fn(&mut Vec<u8>)| {
        let mut b = head.to_vec();
        body(&mut b);
        v.push((name, b));
    };
    s("list", &[3, 1], &|b| o(b, opt::LIST, &[]));
    s("go-structured", &[1, 0], &|b| {
        o(b, opt::STRUCTURED_REPLY, &[]);
        o(b, opt::GO, &info_data("disk", &all_items));
    });
    s("info-then-go", &[3, 0x10], &|b| {
        o(b, opt::INFO, &info_data("disk", &[info::DESCRIPTION]));
        o(b, opt::GO, &info_data("disk", &[]));
    });
    s("set-meta-go", &[1, 0], &|b| {
        o(b, opt::STRUCTURED_REPLY, &[]);
        o(
            b,
            opt::SET_META_CONTEXT,
            &meta_data("disk", &["qemu:x", BASE_ALLOCATION]),
        );
        o(b, opt::GO, &info_data("disk", &[info::NAME]));
    });
    s("list-meta-abort", &[1, 0], &|b| {
        o(b, opt::STRUCTURED_REPLY, &[]);
        o(b, opt::LIST_META_CONTEXT, &meta_data("disk", &[]));
        o(b, opt::LIST_META_CONTEXT, &meta_data("disk", &["base:"]));
        o(b, opt::LIST_META_CONTEXT, &meta_data("disk", &["qemu:x"]));
        o(b, opt::SET_META_CONTEXT, &meta_data("disk", &["nocolon"]));
        o(
            b,
            opt::SET_META_CONTEXT,
            &meta_data("nope", &[BASE_ALLOCATION]),
        );
        o(b, opt::ABORT, &[]);
    });
    s("export-name-no-zeroes", &[3, 0], &|b| {
        o(b, opt::EXPORT_NAME, b"disk")
    });
    s("export-name-default", &[1, 0x08], &|b| {
        o(b, opt::EXPORT_NAME, b"")
    });
    s("export-name-unknown", &[1, 0], &|b| {
        o(b, opt::EXPORT_NAME, b"nope")
    });
    s("bad-client-flags", &[0x80, 0, 0, 0, 4, 0], &|_| {});
    s("unsupported", &[1, 0], &|b| {
        o(b, 0xdead_beef, b"xy");
        o(b, opt::STARTTLS, &[]);
        o(b, opt::EXTENDED_HEADERS, &[]);
        o(b, 4, &[1]);
        b.push(0xc0 | opt::GO as u8);
        b.push(0xc0 | opt::EXPORT_NAME as u8);
    });
    s("two-exports", &[1, 0x07], &|b| {
        o(b, opt::LIST, &[]);
        o(b, opt::INFO, &info_data("zwei-ü", &[info::NAME]));
        o(b, opt::STRUCTURED_REPLY, &[]);
        o(
            b,
            opt::SET_META_CONTEXT,
            &meta_data("zwei-ü", &[BASE_ALLOCATION]),
        );
        o(b, opt::GO, &info_data("disk", &[]));
    });
    s("meta-before-structured", &[1, 0], &|b| {
        o(
            b,
            opt::SET_META_CONTEXT,
            &meta_data("disk", &[BASE_ALLOCATION]),
        );
        o(b, opt::STRUCTURED_REPLY, &[]);
        o(
            b,
            opt::SET_META_CONTEXT,
            &meta_data("disk", &[BASE_ALLOCATION]),
        );
        o(b, opt::GO, &info_data("disk", &[]));
    });
    s("malformed", &[1, 0], &|b| {
        let mut d = info_data("disk", &[info::NAME]);
        d.push(0);
        o(b, opt::GO, &d);
        o(b, opt::GO, &[0, 0, 0, 9, b'd']);
        o(b, opt::STRUCTURED_REPLY, &[1]);
        o(b, opt::LIST, &[1]);
        o(b, opt::INFO, &info_data("zwei-ü", &[]));
        o(b, opt::GO, &info_data("disk", &[]));
    });
    v
}

/// One record in `nbd_requests` mode-2 layout; a WRITE carries `length` copies of `fill`.
fn r(out: &mut Vec<u8>, kind: u16, flags: u16, offset: u64, length: u32, fill: u8) {
    let mut k = if kind < 8 { kind as u8 } else { 0x80 };
    k |= if flags > 0xff { 0x40 } else { 0 };
    k |= if offset >= 1 << 24 { 0x20 } else { 0 };
    k |= if length >= 1 << 24 { 0x10 } else { 0 };
    out.push(k);
    if kind >= 8 {
        wire::put_u16(out, kind);
    }
    if flags > 0xff {
        wire::put_u16(out, flags);
    } else {
        out.push(flags as u8);
    }
    if offset >= 1 << 24 {
        wire::put_u64(out, offset);
    } else {
        out.extend_from_slice(&(offset as u32).to_be_bytes()[1..]);
    }
    if length >= 1 << 24 {
        wire::put_u32(out, length);
    } else {
        out.extend_from_slice(&length.to_be_bytes()[1..]);
    }
    if kind == cmd::WRITE {
        out.push(fill);
    }
}

/// A WRITE record whose payload is the given bytes.
fn w(out: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let start = out.len();
    r(out, cmd::WRITE, 0, offset, data.len() as u32, 0);
    out.pop();
    out[start] |= 0x08;
    out.extend_from_slice(data);
}

/// The `nbd_requests` config byte for a handshake.
fn hello(
    no_zeroes: bool,
    structured: bool,
    meta: bool,
    export_name: bool,
    ro: bool,
    size: u8,
) -> u8 {
    u8::from(no_zeroes)
        | u8::from(structured) << 1
        | u8::from(meta) << 2
        | u8::from(export_name) << 3
        | u8::from(ro) << 4
        | size << 5
}

/// The byte-0 of `nbd_requests`.
fn mode(mode: u8, slow: bool, shutdown: bool, pipe: u8) -> u8 {
    mode | u8::from(slow) << 2 | u8::from(shutdown) << 3 | pipe << 4
}

/// `nbd_requests` seeds.
pub fn requests() -> Vec<Seed> {
    let mut v: Vec<Seed> = Vec::new();
    let raw_requests = |b: &mut Vec<u8>| {
        put_request(b, 0, cmd::WRITE, 1, 512, 8);
        b.extend_from_slice(b"tandem!!");
        put_request(b, cflags::FUA, cmd::READ, 2, 0, 4096);
        put_request(b, 0, cmd::FLUSH, 3, 0, 0);
        put_request(b, 0, cmd::TRIM, 4, 4096, 4096);
        put_request(b, cflags::NO_HOLE, cmd::WRITE_ZEROES, 5, 0, 8192);
        put_request(b, 0, cmd::CACHE, 6, 0, 65536);
    };

    // Mode 0: the whole client stream is raw bytes, the handshake included.
    let mut b = vec![mode(0, false, false, 0), 0];
    Hello::from_byte(hello(true, true, true, false, false, 0)).encode(&mut b);
    raw_requests(&mut b);
    put_request(&mut b, cflags::REQ_ONE, cmd::BLOCK_STATUS, 7, 0, 65536);
    put_request(&mut b, 0, cmd::DISC, 8, 0, 0);
    v.push(("raw-go-structured", b));

    let mut b = vec![mode(0, false, false, 0), 0];
    wire::put_u32(&mut b, 1);
    put_option(&mut b, opt::EXPORT_NAME, b"");
    raw_requests(&mut b);
    b.extend_from_slice(b"\xde\xad\xbe\xef not a request magic....");
    v.push(("raw-export-name-bad-magic", b));

    let mut b = vec![mode(0, false, false, 0), 0];
    wire::put_u32(&mut b, 3);
    put_option(&mut b, opt::LIST, &[]);
    put_option(&mut b, opt::INFO, &info_data("ro", &[info::BLOCK_SIZE]));
    wire::put_u64(&mut b, nbd_server::proto::IHAVEOPT);
    wire::put_u32(&mut b, opt::GO);
    wire::put_u32(&mut b, 100_000);
    b.extend_from_slice(&[0; 64]);
    v.push(("raw-oversize-option", b));

    let mut b = vec![mode(0, false, false, 0), 0];
    wire::put_u32(&mut b, 1);
    put_option(&mut b, opt::GO, &info_data("ro", &[]));
    put_request(&mut b, 0, cmd::WRITE, 1, 0, 4);
    b.extend_from_slice(b"nope");
    put_request(&mut b, 0, cmd::READ, 2, 0, 4096);
    v.push(("raw-read-only", b));

    // Mode 1: harness handshake, raw transmission bytes.
    let mut b = vec![
        mode(1, false, false, 0),
        hello(false, true, true, false, false, 1),
    ];
    raw_requests(&mut b);
    put_request(&mut b, 0, cmd::BLOCK_STATUS, 7, 100, 20000);
    put_request(&mut b, cflags::DF, cmd::READ, 8, 500, 1000);
    v.push(("tx-structured-meta", b));

    let mut b = vec![
        mode(1, false, false, 0),
        hello(false, false, false, true, false, 4),
    ];
    raw_requests(&mut b);
    put_request(&mut b, 0, cmd::READ, 7, 65536, 1);
    b.extend_from_slice(&[0x25, 0x60, 0x95]);
    v.push(("tx-export-name-partial", b));

    // Mode 2: harness handshake, requests from records.
    let all = |b: &mut Vec<u8>, size: u64| {
        w(b, 0, b"hello, tandem");
        r(b, cmd::WRITE, cflags::FUA, 4096, 4096, 0xab);
        r(b, cmd::READ, 0, 0, 8192, 0);
        r(b, cmd::READ, cflags::DF, 4000, 200, 0);
        r(b, cmd::READ, 0, size - 1, 1, 0);
        r(b, cmd::READ, 0, 0, 0, 0);
        r(b, cmd::FLUSH, 0, 0, 0, 0);
        r(b, cmd::TRIM, 0, 4096, 512, 0);
        r(
            b,
            cmd::WRITE_ZEROES,
            cflags::NO_HOLE | cflags::FAST_ZERO,
            8192,
            100,
            0,
        );
        r(b, cmd::CACHE, 0, 0, 4096, 0);
        r(b, cmd::BLOCK_STATUS, 0, 0, 65536, 0);
        r(b, cmd::BLOCK_STATUS, cflags::REQ_ONE, 1, 1, 0);
        r(b, cmd::READ, 0, size, 1, 0);
        r(b, cmd::WRITE, 0, size - 2, 4, 1);
        r(b, cmd::READ, 0, u64::MAX, 2, 0);
        r(b, cmd::WRITE_ZEROES, 0, u64::MAX - 1, 4, 0);
        r(b, cmd::READ, 0x1000, 0, 1, 0);
        r(b, 99, 0, 0, 0, 0);
        r(b, cmd::READ, 0, 0, 33 << 20, 0);
        r(b, cmd::READ, 0, 0, 4096, 0);
    };
    let mut b = vec![
        mode(2, false, false, 0),
        hello(false, true, true, false, false, 3),
    ];
    all(&mut b, 1 << 20);
    r(&mut b, cmd::DISC, 0, 0, 0, 0);
    r(&mut b, cmd::READ, 0, 0, 4096, 0);
    v.push(("req-structured-all", b));

    let mut b = vec![
        mode(2, false, false, 0),
        hello(true, false, false, false, false, 5),
    ];
    all(&mut b, 100_000);
    v.push(("req-simple-all", b));

    let mut b = vec![
        mode(2, false, false, 0),
        hello(false, true, false, false, true, 0),
    ];
    all(&mut b, 65536);
    v.push(("req-read-only", b));

    // A WRITE that claims 4 GiB (then EOF), one just above the payload cap, one at the cap
    // beyond the end of a 64 KiB device: none may be allocated.
    let mut b = vec![
        mode(2, false, false, 0),
        hello(false, true, false, false, false, 0),
    ];
    r(&mut b, cmd::READ, 0, 0, 512, 0);
    r(&mut b, cmd::WRITE, 0, 0, u32::MAX, 7);
    v.push(("req-write-4gib", b));
    let mut b = vec![
        mode(2, false, false, 0),
        hello(false, false, false, false, false, 0),
    ];
    r(&mut b, cmd::WRITE, 0, 0, (32 << 20) + 1, 7);
    v.push(("req-write-above-cap", b));
    let mut b = vec![
        mode(2, false, false, 0),
        hello(false, false, false, false, false, 0),
    ];
    r(&mut b, cmd::WRITE, 0, 0, 32 << 20, 7);
    v.push(("req-write-cap-beyond-end", b));

    let mut b = vec![
        mode(2, true, false, 0),
        hello(false, true, true, false, false, 0),
    ];
    for i in 0..40 {
        r(&mut b, cmd::READ, 0, 0, 65536, 0);
        r(&mut b, cmd::WRITE, 0, i * 1024, 1024, i as u8);
    }
    v.push(("req-slow-client", b));

    let mut b = vec![
        mode(2, false, true, 2),
        hello(false, true, true, false, false, 1),
        4,
    ];
    all(&mut b, 131072);
    v.push(("req-shutdown-tiny-pipe", b));

    let mut b = vec![
        mode(2, false, false, 1),
        hello(true, true, true, true, false, 7),
    ];
    r(&mut b, cmd::READ, 0, 0, 0, 0);
    r(&mut b, cmd::WRITE, 0, 0, 0, 0);
    r(&mut b, cmd::BLOCK_STATUS, 0, 0, 1, 0);
    r(&mut b, cmd::TRIM, 0, 0, 0, 0);
    r(&mut b, cmd::READ, 0, 0, 1, 0);
    v.push(("req-empty-device-pipe-1", b));

    // Pipelining: 21 WRITEs and 11 READs through the repeat record.
    let mut b = vec![
        mode(2, false, false, 0),
        hello(false, true, false, false, false, 1),
    ];
    r(&mut b, cmd::WRITE, 0, 512, 4096, 0x5a);
    b.extend_from_slice(&[0xff, 20]);
    r(&mut b, cmd::READ, 0, 0, 65536, 0);
    b.extend_from_slice(&[0xff, 9]);
    v.push(("req-repeat", b));

    let mut b = vec![
        mode(2, false, false, 0),
        hello(false, false, false, false, false, 6),
    ];
    w(&mut b, 10, &[1, 2, 3, 4, 5, 6, 7]);
    r(&mut b, cmd::WRITE, 0, 0, 100, 0);
    // Truncated: the header promises 200 bytes, the input ends after 3.
    let start = b.len();
    r(&mut b, cmd::WRITE, 0, 0, 200, 0);
    b.pop();
    b[start] |= 0x08;
    b.extend_from_slice(&[9, 9, 9]);
    v.push(("req-truncated-write", b));
    v
}
