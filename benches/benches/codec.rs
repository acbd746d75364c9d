//! Micro-benchmarks of the NBD codec and request checking: the per-request CPU cost.

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use nbd_server::device::{BlockSizes, Capabilities};
use nbd_server::proto::{self, cmd, RequestHeader, MAX_PAYLOAD, REQUEST_HEADER_LEN};
use nbd_server::transmission::{check, Limits};

fn limits() -> Limits {
    Limits {
        size: 1 << 30,
        caps: Capabilities::ALL,
        sizes: BlockSizes {
            minimum: 1,
            preferred: 4096,
            maximum: MAX_PAYLOAD,
        },
        read_only: false,
        structured: true,
        base_allocation: true,
    }
}

fn codec(c: &mut Criterion) {
    let h = RequestHeader {
        flags: 0,
        kind: cmd::WRITE,
        cookie: 42,
        offset: 1 << 20,
        length: 4096,
    };
    let mut wire = BytesMut::new();
    h.encode(&mut wire);
    let arr: [u8; REQUEST_HEADER_LEN] = wire[..].try_into().expect("28 bytes");
    let l = limits();
    let mut g = c.benchmark_group("request");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode+check", |b| {
        b.iter(|| {
            let h = RequestHeader::decode(black_box(&arr)).expect("valid");
            check(&h, &l).expect("allowed")
        })
    });
    g.bench_function("encode", |b| {
        let mut out = BytesMut::with_capacity(64);
        b.iter(|| {
            out.clear();
            black_box(&h).encode(&mut out);
        })
    });
    g.finish();
    let mut g = c.benchmark_group("reply");
    g.throughput(Throughput::Elements(1));
    g.bench_function("simple", |b| {
        let mut out = BytesMut::with_capacity(64);
        b.iter(|| {
            out.clear();
            proto::put_simple_reply(&mut out, 0, black_box(42));
        })
    });
    g.bench_function("structured-read-header", |b| {
        let mut out = BytesMut::with_capacity(64);
        b.iter(|| {
            out.clear();
            proto::put_chunk_header(
                &mut out,
                proto::chunk::FLAG_DONE,
                proto::chunk::OFFSET_DATA,
                black_box(42),
                4104,
            );
        })
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
