//! `nbd_requests`: a whole connection through [`serve_connection`] over in-memory pipes.
//!
//! Input layout (big-endian; a spent input reads as zeroes):
//!
//! ```text
//! byte 0   bits0-1 mode: 0 raw (the rest is the client's byte stream, handshake included);
//!                        1 valid handshake + raw transmission bytes (the rest of the input);
//!                        2, 3 valid handshake + requests built from records (below)
//!          bit2 slow client: read nothing until done writing or stuck
//!          bit3 fire the shutdown signal once the client has sent 16 * byte 2 bytes (after the
//!          harness's handshake in modes 1-3)
//!          bits4-6 client-to-server pipe size: 64 KiB, 1, 7, 512, 4096, 16, 65, 300 bytes
//!          (raised to 1/1024 of the stream)
//! byte 1   bit0 C_NO_ZEROES; bit1 STRUCTURED_REPLY; bit2 SET_META_CONTEXT base:allocation;
//!          bit3 EXPORT_NAME instead of GO; bit4 export "disk" read-only;
//!          bits5-7 its size: 64 KiB, 128 KiB, 256 KiB, 1 MiB, 64 KiB + 1, 100000, 4096, 0;
//!          (modes 1-3 handshake; mode 0 uses only bits 4-7)
//! byte 2   only when byte 0 has bit3: where the shutdown fires
//! records  k: bit7 kind = next u16, else k & 7; bit6 flags = next u16, else next u8;
//!          bit5 offset = next u64, else next u24; bit4 length = next u32, else next u24;
//!          WRITE payload: bit3 the next `length` input bytes, else `length` copies of next u8.
//!          A payload the harness will not build (above 2 MiB, or the stream above 4 MiB) is
//!          cut short and ends the stream there, so a huge WRITE claim reaches the server.
//!          Records end after READs of 96 MiB in all (counting at most 1 MiB per READ).
//!          k = 0xff instead repeats the previous record 1 + next u8 times (with new cookies).
//!          Records end after 1024 requests.
//! ```
//!
//! The exports are `disk` (also the default export `""`) and `ro`, 4 KiB read-only. Cookies are
//! the record index. Checks: no panic, the connection and the client's read side end without a
//! deadlock (the paused clock turns one into an immediate timeout), bounded allocation, and in
//! modes 1-3 the handshake replies, the connection's result, and every transmission reply
//! (see [`check_replies`]).

use std::sync::Arc;
use std::time::Duration;

use nbd_server::device::BlockDevice;
use nbd_server::export::{Export, ExportTable};
use nbd_server::handshake::{self, BASE_ALLOCATION_ID};
use nbd_server::memory::MemoryDevice;
use nbd_server::proto::{self, chunk, cmd, info, opt, rep, tflags, RequestHeader, BASE_ALLOCATION};
use nbd_server::server::{serve_connection, ConnError, Shutdown, MAX_IN_FLIGHT};
use nbd_server::transmission::{self, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::alloc::Measure;
use crate::cursor::Cursor;
use crate::wire::{self, get_greeting, get_option_replies, get_u16, get_u32, get_u64, take};

const PIPE_SIZES: [usize; 8] = [65536, 1, 7, 512, 4096, 16, 65, 300];
const DEVICE_SIZES: [usize; 8] = [65536, 131072, 262144, 1 << 20, 65537, 100_000, 4096, 0];
/// The largest WRITE payload the harness builds, and the largest stream.
const MAX_BUILT_PAYLOAD: u64 = 2 << 20;
const MAX_STREAM: usize = 4 << 20;
/// The most READ bytes (of requests up to the largest device) the harness builds: enough to
/// exceed the server's in-flight budget, not so much that one input takes seconds.
const MAX_BUILT_READS: u64 = 96 << 20;
/// The most requests the harness builds: eight times what the server keeps in flight.
const MAX_REQUESTS: u64 = 8 * MAX_IN_FLIGHT as u64;
/// Server output kept for checking; beyond it the replies are only drained.
const MAX_KEPT_OUTPUT: usize = 4 << 20;
/// The server's own in-flight payload budget (`server::IN_FLIGHT_KIB`) plus fixed overhead.
const IN_FLIGHT_BUDGET: usize = (2 * proto::MAX_PAYLOAD as usize) + (1 << 20);
/// Virtual time within which a connection must end; it passes in no real time unless the
/// server spins.
const DEADLINE: Duration = Duration::from_secs(3600);

/// The handshake a mode 1-3 input performs.
#[derive(Debug, Clone, Copy)]
pub struct Hello {
    pub no_zeroes: bool,
    pub structured: bool,
    pub meta: bool,
    pub export_name: bool,
    pub read_only: bool,
    pub size: usize,
}

impl Hello {
    pub fn from_byte(b: u8) -> Self {
        Hello {
            no_zeroes: b & 1 != 0,
            structured: b & 2 != 0,
            meta: b & 4 != 0,
            export_name: b & 8 != 0,
            read_only: b & 16 != 0,
            size: DEVICE_SIZES[usize::from(b >> 5)],
        }
    }

    /// The GO request's info items.
    const ITEMS: [u16; 2] = [info::NAME, info::DESCRIPTION];

    /// The client's handshake bytes: flags, options, and GO or EXPORT_NAME for "disk".
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut flags = proto::FLAG_C_FIXED_NEWSTYLE;
        if self.no_zeroes {
            flags |= proto::FLAG_C_NO_ZEROES;
        }
        wire::put_u32(out, flags);
        if self.structured {
            wire::put_option(out, opt::STRUCTURED_REPLY, &[]);
        }
        if self.meta {
            let d = wire::meta_data("disk", &[BASE_ALLOCATION]);
            wire::put_option(out, opt::SET_META_CONTEXT, &d);
        }
        if self.export_name {
            wire::put_option(out, opt::EXPORT_NAME, b"disk");
        } else {
            wire::put_option(out, opt::GO, &wire::info_data("disk", &Self::ITEMS));
        }
    }
}

/// One decoded request of the transmission stream.
#[derive(Debug, Clone)]
struct Req {
    h: RequestHeader,
    /// The WRITE payload (complete: incomplete requests are not listed).
    payload: std::ops::Range<usize>,
}

/// How the transmission stream ends, as the server will see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// At a request boundary or inside a header: a clean EOF.
    Clean,
    /// A request with a bad magic: a protocol violation.
    BadMagic,
    /// Inside a WRITE payload: an EOF error.
    Truncated,
}

/// Splits a transmission stream into requests exactly as the server frames it: a WRITE's
/// length is payload whether or not the server accepts it.
fn decode_requests(s: &[u8]) -> (Vec<Req>, End) {
    let mut v = Vec::new();
    let mut at = 0;
    loop {
        let Some(hdr) = s.get(at..at + proto::REQUEST_HEADER_LEN) else {
            return (v, End::Clean);
        };
        let Ok(h) = RequestHeader::decode(hdr.try_into().unwrap()) else {
            return (v, End::BadMagic);
        };
        at += proto::REQUEST_HEADER_LEN;
        let plen = if h.kind == cmd::WRITE {
            h.length as usize
        } else {
            0
        };
        if s.len() - at < plen {
            return (v, End::Truncated);
        }
        v.push(Req {
            h,
            payload: at..at + plen,
        });
        at += plen;
    }
}

/// The record byte that repeats the previous record.
const REPEAT: u8 = 0xff;

/// One request record of mode 2/3; `payload` is what the harness will send of a WRITE's.
#[derive(Clone)]
struct Rec {
    flags: u16,
    kind: u16,
    offset: u64,
    length: u32,
    payload: Vec<u8>,
}

impl Rec {
    fn decode(k: u8, c: &mut Cursor) -> Rec {
        let kind = if k & 0x80 != 0 {
            c.u16()
        } else {
            u16::from(k & 7)
        };
        let flags = if k & 0x40 != 0 {
            c.u16()
        } else {
            u16::from(c.u8())
        };
        let offset = if k & 0x20 != 0 {
            c.u64()
        } else {
            u64::from(c.u24())
        };
        let length = if k & 0x10 != 0 { c.u32() } else { c.u24() };
        let n = u64::from(length).min(MAX_BUILT_PAYLOAD) as usize;
        let payload = match kind {
            cmd::WRITE if k & 0x08 != 0 => c.take(n).to_vec(),
            cmd::WRITE => vec![c.u8(); n],
            _ => Vec::new(),
        };
        Rec {
            flags,
            kind,
            offset,
            length,
            payload,
        }
    }
}

/// Builds the transmission stream of mode 2/3 from records.
pub fn build_requests(c: &mut Cursor) -> Vec<u8> {
    let mut out = Vec::new();
    let mut cookie = 0u64;
    let mut read_bytes = 0u64;
    let mut last: Option<Rec> = None;
    while !c.is_empty() {
        let k = c.u8();
        let (rec, times) = if k == REPEAT {
            let times = usize::from(c.u8()) + 1;
            match &last {
                Some(r) => (r.clone(), times),
                None => continue,
            }
        } else {
            (Rec::decode(k, c), 1)
        };
        for _ in 0..times {
            if cookie == MAX_REQUESTS {
                return out;
            }
            if rec.kind == cmd::READ {
                read_bytes += u64::from(rec.length.min(1 << 20));
                if read_bytes > MAX_BUILT_READS {
                    return out;
                }
            }
            wire::put_request(
                &mut out, rec.flags, rec.kind, cookie, rec.offset, rec.length,
            );
            cookie += 1;
            let n = rec.payload.len().min(MAX_STREAM.saturating_sub(out.len()));
            out.extend_from_slice(&rec.payload[..n]);
            if rec.kind == cmd::WRITE && n < rec.length as usize {
                // A cut payload ends the stream: the server sees EOF inside it.
                return out;
            }
        }
        last = Some(rec);
    }
    out
}

/// What the harness observed of one connection.
struct Run {
    result: Result<(), ConnError>,
    /// Server output as read (joined after the allocation window closes).
    chunks: Vec<Vec<u8>>,
    output: Vec<u8>,
    /// Server output beyond [`MAX_KEPT_OUTPUT`] was dropped.
    output_cut: bool,
    shutdown_fired: bool,
}

pub fn run(data: &[u8]) {
    let mut c = Cursor::new(data);
    let b0 = c.u8();
    let mode = b0 & 3;
    let slow = b0 & 4 != 0;
    let pipe = PIPE_SIZES[usize::from((b0 >> 4) & 7)];
    let hello = Hello::from_byte(c.u8());
    let shutdown_after = (b0 & 8 != 0).then(|| usize::from(c.u8()) * 16);

    let disk = Arc::new(MemoryDevice::new(hello.size));
    let ro = Arc::new(MemoryDevice::new(4096));
    let mut table = ExportTable::new();
    for name in ["", "disk"] {
        table.insert(Export {
            name: name.into(),
            description: "the fuzzed disk".into(),
            device: disk.clone(),
            read_only: hello.read_only,
        });
    }
    table.insert(Export {
        name: "ro".into(),
        description: String::new(),
        device: ro.clone(),
        read_only: true,
    });

    let mut stream = Vec::new();
    if mode != 0 {
        hello.encode(&mut stream);
    }
    let handshake_len = stream.len();
    if mode >= 2 {
        stream.extend(build_requests(&mut c));
    } else {
        stream.extend_from_slice(c.rest());
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    let shutdown_at = shutdown_after.map(|n| handshake_len + n);
    let measure = Measure::start();
    let mut run = rt.block_on(connect(Arc::new(table), &stream, pipe, slow, shutdown_at));
    drop(rt);
    let (largest, peak) = (measure.largest(), measure.peak_growth());
    run.output = std::mem::take(&mut run.chunks).concat();

    // Memory: nothing a client merely claims is allocated. A single allocation never exceeds
    // the largest request the device can hold or the server's fixed buffers, and the total stays
    // within the server's in-flight payload budget.
    let single_limit = hello.size.max(256 << 10) + (64 << 10);
    assert!(
        largest <= single_limit,
        "single allocation of {largest} bytes (device {} bytes, limit {single_limit})",
        hello.size
    );
    let peak_limit = std::env::var("TANDEM_FUZZ_HEAP_LIMIT_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(IN_FLIGHT_BUDGET + MAX_KEPT_OUTPUT + (8 << 20), |m| m << 20);
    assert!(
        peak <= peak_limit,
        "live heap grew by {peak} bytes during one connection (limit {peak_limit}, \
         TANDEM_FUZZ_HEAP_LIMIT_MIB overrides it; device {} bytes)",
        hello.size
    );

    // The read-only export is never written, whatever the client sent.
    assert!(all_zero(&ro), "the read-only export was modified");
    if std::env::var_os("TANDEM_FUZZ_DEBUG").is_some() {
        eprintln!(
            "  result {:?}, out {} bytes, largest alloc {largest}, peak {peak}",
            run.result,
            run.output.len()
        );
    }
    if mode == 0 {
        return;
    }
    let tx = &stream[handshake_len..];
    if let Err(e) = check_connection(&hello, tx, &run, &disk) {
        panic!(
            "{e}\nmode {mode}, slow {slow}, shutdown {}, pipe {pipe}, {hello:?}\nresult {:?}\n\
             client transmission bytes {}: {:02x?}\nserver output {} bytes{}: {:02x?}",
            run.shutdown_fired,
            run.result,
            tx.len(),
            &tx[..tx.len().min(512)],
            run.output.len(),
            if run.output_cut { " (cut)" } else { "" },
            &run.output[..run.output.len().min(512)],
        );
    }
}

fn all_zero(dev: &MemoryDevice) -> bool {
    let size = dev.size();
    if size == 0 {
        return true;
    }
    let fut = dev.read(0, size as u32);
    let data = ready(fut).expect("memory device read");
    by_sector(0, &data, |_, d| is_zero(d)).is_none()
}

/// Polls a future that is ready at once (the memory device's are).
fn ready<T>(mut f: std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + '_>>) -> T {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("memory device future not ready"),
    }
}

/// Runs the server against the client stream and collects its output.
async fn connect(
    exports: Arc<ExportTable>,
    stream: &[u8],
    pipe: usize,
    slow: bool,
    shutdown_at: Option<usize>,
) -> Run {
    // One pipe per direction, so that each closes when the server drops its end. The client's
    // pipe is small to split requests across reads, but not so small that a long stream takes
    // more than ~1000 round trips.
    let (mut cw, sr) = tokio::io::duplex(pipe.max(stream.len() / 1024));
    let (mut cr, sw) = tokio::io::duplex(64 << 10);
    // The sender lives until the connection ends: dropping it would also mean "stop".
    let (stop, shutdown) = Shutdown::new();
    let fired = std::cell::Cell::new(false);
    let server = tokio::spawn(serve_connection(sr, sw, exports, shutdown));
    let written = tokio::sync::Notify::new();
    let writing = async {
        // The server may stop reading (bad magic, DISC, an error): a failed write is expected.
        if let Some(cut) = shutdown_at {
            let cut = cut.min(stream.len());
            let _ = cw.write_all(&stream[..cut]).await;
            fired.set(true);
            let _ = stop.send(true);
            let _ = cw.write_all(&stream[cut..]).await;
        } else {
            let _ = cw.write_all(stream).await;
        }
        let _ = cw.shutdown().await;
        drop(cw);
        written.notify_one();
    };
    let reading = async {
        if slow {
            tokio::select! {
                _ = written.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        let mut kept = Vec::new();
        let mut kept_bytes = 0;
        let mut cut = false;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match cr.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    if kept_bytes + n <= MAX_KEPT_OUTPUT && !cut {
                        kept_bytes += n;
                        kept.push(buf[..n].to_vec());
                    } else {
                        cut = true;
                    }
                }
                Err(e) => panic!("reading the server's output: {e}"),
            }
        }
        (kept, cut)
    };
    let all = async { tokio::join!(server, writing, reading) };
    let Ok((result, (), (kept, cut))) = tokio::time::timeout(DEADLINE, all).await else {
        panic!("the connection did not end: deadlock (the client sent its whole stream and EOF)");
    };
    let result = match result {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    Run {
        result,
        chunks: kept,
        output: Vec::new(),
        output_cut: cut,
        shutdown_fired: fired.get(),
    }
}

/// The session the handshake should have produced.
struct Expect {
    structured: bool,
    base_allocation: bool,
}

/// Checks the handshake replies, the connection's result and the transmission replies.
fn check_connection(
    hello: &Hello,
    tx: &[u8],
    run: &Run,
    disk: &MemoryDevice,
) -> Result<(), String> {
    let mut out = &run.output[..];
    let flags = get_greeting(&mut out)?;
    if flags != handshake::HANDSHAKE_FLAGS {
        return Err(format!("handshake flags {flags:#x}"));
    }
    let mut only = |option: u32, kind: u32| -> Result<(), String> {
        let r = get_option_replies(&mut out, option)?;
        if r.len() == 1 && r[0].kind == kind {
            Ok(())
        } else {
            Err(format!("option {option}: want only {kind:#x}, got {r:?}"))
        }
    };
    if hello.structured {
        only(opt::STRUCTURED_REPLY, rep::ACK)?;
    }
    if hello.meta && !hello.structured {
        only(opt::SET_META_CONTEXT, rep::ERR_INVALID)?;
    } else if hello.meta {
        let r = get_option_replies(&mut out, opt::SET_META_CONTEXT)?;
        let mut want = BASE_ALLOCATION_ID.to_be_bytes().to_vec();
        want.extend_from_slice(BASE_ALLOCATION.as_bytes());
        if r.len() != 2 || r[0].kind != rep::META_CONTEXT || r[0].data != want {
            return Err(format!("SET_META_CONTEXT replies {r:?}"));
        }
    }
    let (size, tflags) = if hello.export_name {
        let size = get_u64(&mut out, "EXPORT_NAME size")?;
        let f = get_u16(&mut out, "EXPORT_NAME flags")?;
        if !hello.no_zeroes
            && take(&mut out, 124, "EXPORT_NAME padding")?
                .iter()
                .any(|&b| b != 0)
        {
            return Err("non-zero EXPORT_NAME padding".into());
        }
        (size, f)
    } else {
        let r = get_option_replies(&mut out, opt::GO)?;
        let mut export = None;
        for x in &r {
            let mut d = &x.data[..];
            if x.kind == rep::INFO && get_u16(&mut d, "info type")? == info::EXPORT {
                export = Some((get_u64(&mut d, "size")?, get_u16(&mut d, "flags")?));
            }
        }
        if r.last().unwrap().kind != rep::ACK {
            return Err(format!("GO refused: {r:?}"));
        }
        export.ok_or("GO without INFO_EXPORT")?
    };
    let e = Expect {
        structured: hello.structured,
        base_allocation: hello.structured && hello.meta,
    };
    if size != hello.size as u64
        || tflags & tflags::HAS_FLAGS == 0
        || (tflags & tflags::SEND_DF != 0) != e.structured
        || (tflags & tflags::READ_ONLY != 0) != hello.read_only
    {
        return Err(format!(
            "export size {size} / transmission flags {tflags:#x} wrong"
        ));
    }

    let limits = Limits {
        size: disk.size(),
        caps: disk.capabilities(),
        sizes: disk.block_sizes(),
        read_only: hello.read_only,
        structured: e.structured,
        base_allocation: e.base_allocation,
    };
    let (reqs, end) = decode_requests(tx);
    // A DISC with flags the session does not allow is refused like any other request.
    let disc = reqs
        .iter()
        .position(|r| transmission::check(&r.h, &limits) == Ok(transmission::Command::Disconnect));
    // The server answers every request before the first DISC, in order of reading; the stream
    // end matters only when no DISC comes first.
    let answered = &reqs[..disc.unwrap_or(reqs.len())];
    let want_result: Result<(), &str> = match (disc, end) {
        (Some(_), _) | (None, End::Clean) => Ok(()),
        (None, End::BadMagic) => Err("protocol"),
        (None, End::Truncated) => Err("io"),
    };
    let got_result = match &run.result {
        Ok(()) => Ok(()),
        Err(ConnError::Protocol(_)) => Err("protocol"),
        Err(ConnError::Io(_)) => Err("io"),
    };
    // A shutdown may end the connection before the client's error is read.
    if got_result != want_result && !(run.shutdown_fired && got_result.is_ok()) {
        return Err(format!(
            "connection result {:?}, want {want_result:?}",
            run.result
        ));
    }
    let mut cookies: Vec<u64> = answered.iter().map(|r| r.h.cookie).collect();
    cookies.sort_unstable();
    cookies.dedup();
    if run.output_cut || cookies.len() != answered.len() {
        // Too much output to keep, or a client reusing cookies: replies cannot be attributed.
        return Ok(());
    }
    let written = Written::new(hello, tx, &reqs);
    check_replies(
        hello,
        &e,
        &limits,
        answered,
        &written,
        out,
        run.shutdown_fired,
    )?;
    // Only sectors the client wrote non-zero bytes to can hold non-zero bytes.
    let dev = disk.size();
    if dev > 0 {
        let data = ready(disk.read(0, dev as u32)).unwrap();
        written.check(0, &data, "device contents")?;
    }
    Ok(())
}

/// The granularity of the zero oracle. Byte-exact checks cost too much under the fuzzer's
/// comparison tracing; a sector compares with one `memcmp`.
const SECTOR: u64 = 512;
static ZEROES: [u8; SECTOR as usize] = [0; SECTOR as usize];

fn is_zero(b: &[u8]) -> bool {
    b == &ZEROES[..b.len()]
}

/// Splits `data`, found at device offset `at`, along sector boundaries and calls `f` with each
/// sector number and piece until `f` says false; returns the offset where it did.
fn by_sector(at: u64, data: &[u8], mut f: impl FnMut(usize, &[u8]) -> bool) -> Option<u64> {
    let mut i = 0;
    while i < data.len() {
        let pos = at.saturating_add(i as u64);
        let n = ((SECTOR - pos % SECTOR) as usize).min(data.len() - i);
        if !f((pos / SECTOR) as usize, &data[i..i + n]) {
            return Some(pos);
        }
        i += n;
    }
    None
}

/// Sectors some WRITE could have made non-zero; every other sector must read as zeroes.
struct Written(Vec<bool>);

impl Written {
    fn new(hello: &Hello, tx: &[u8], reqs: &[Req]) -> Self {
        let mut m = vec![false; (hello.size as u64).div_ceil(SECTOR) as usize];
        if !hello.read_only {
            for r in reqs.iter().filter(|r| r.h.kind == cmd::WRITE) {
                by_sector(r.h.offset, &tx[r.payload.clone()], |s, d| {
                    if let Some(x) = m.get_mut(s).filter(|_| !is_zero(d)) {
                        *x = true;
                    }
                    true
                });
            }
        }
        Written(m)
    }

    /// Checks that `data` read at `at` is zero wherever nothing was written.
    fn check(&self, at: u64, data: &[u8], what: &str) -> Result<(), String> {
        match by_sector(at, data, |s, d| {
            self.0.get(s).copied().unwrap_or(false) || is_zero(d)
        }) {
            Some(p) => Err(format!(
                "{what}: non-zero bytes in the sector at {p}, never written"
            )),
            None => Ok(()),
        }
    }
}

/// Per-request state while parsing replies.
#[derive(Default, Clone)]
struct Seen {
    done: bool,
    error: u32,
    /// READ bytes covered by data and hole chunks.
    covered: u64,
}

/// Checks the transmission replies against the requests the server must answer.
///
/// Every reply is well-framed and names a request that was sent; each such request gets
/// exactly one final reply (simple, or a chunk with `DONE`), READs on structured connections
/// only structured ones; the error is the one [`transmission::check`] names (the memory device
/// never fails); successful READs carry exactly the requested bytes, zero in every sector the
/// client never wrote to; BLOCK_STATUS extents are sane. The answered requests are
/// all of them, or a prefix when a shutdown fired.
#[allow(clippy::too_many_arguments)]
fn check_replies(
    hello: &Hello,
    e: &Expect,
    limits: &Limits,
    answered: &[Req],
    written: &Written,
    mut out: &[u8],
    shutdown_fired: bool,
) -> Result<(), String> {
    let mut seen = vec![Seen::default(); answered.len()];
    let by_cookie: std::collections::HashMap<u64, usize> = answered
        .iter()
        .enumerate()
        .map(|(i, r)| (r.h.cookie, i))
        .collect();
    let index = |cookie: u64| -> Result<usize, String> {
        by_cookie
            .get(&cookie)
            .copied()
            .ok_or_else(|| format!("reply to cookie {cookie}, which needs no reply"))
    };
    while !out.is_empty() {
        let magic = get_u32(&mut out, "reply magic")?;
        if magic == proto::SIMPLE_REPLY_MAGIC {
            let error = get_u32(&mut out, "simple reply error")?;
            let cookie = get_u64(&mut out, "simple reply cookie")?;
            let i = index(cookie)?;
            let r = &answered[i].h;
            if seen[i].done {
                return Err(format!("second reply to cookie {cookie}"));
            }
            if r.kind == cmd::READ && e.structured {
                return Err(format!(
                    "simple reply to READ {cookie} on a structured connection"
                ));
            }
            if r.kind == cmd::READ && error == 0 {
                let data = take(&mut out, r.length as usize, "READ data")?;
                written.check(r.offset, data, "READ data")?;
                seen[i].covered = u64::from(r.length);
            }
            seen[i].done = true;
            seen[i].error = error;
        } else if magic == proto::STRUCTURED_REPLY_MAGIC {
            if !e.structured {
                return Err("structured reply without STRUCTURED_REPLY".into());
            }
            let flags = get_u16(&mut out, "chunk flags")?;
            let kind = get_u16(&mut out, "chunk type")?;
            let cookie = get_u64(&mut out, "chunk cookie")?;
            let len = get_u32(&mut out, "chunk length")? as usize;
            let mut p = take(&mut out, len, "chunk payload")?;
            let i = index(cookie)?;
            let r = answered[i].h;
            if seen[i].done {
                return Err(format!("chunk after the final reply to cookie {cookie}"));
            }
            if flags & !chunk::FLAG_DONE != 0 {
                return Err(format!("unknown chunk flags {flags:#x}"));
            }
            let end = r.offset.saturating_add(u64::from(r.length));
            match kind {
                chunk::NONE if len == 0 && flags & chunk::FLAG_DONE != 0 => {}
                chunk::OFFSET_DATA | chunk::OFFSET_HOLE if r.kind == cmd::READ => {
                    let at = get_u64(&mut p, "chunk offset")?;
                    let n = if kind == chunk::OFFSET_DATA {
                        p.len() as u64
                    } else {
                        u64::from(get_u32(&mut p, "hole length")?)
                    };
                    if n == 0 || (!p.is_empty() && kind == chunk::OFFSET_HOLE) {
                        return Err(format!("empty or malformed chunk {kind}"));
                    }
                    if at < r.offset || at.saturating_add(n) > end {
                        return Err(format!(
                            "chunk {at}+{n} outside READ {}+{}",
                            r.offset, r.length
                        ));
                    }
                    if kind == chunk::OFFSET_DATA {
                        written.check(at, p, "READ data chunk")?;
                    }
                    seen[i].covered += n;
                }
                chunk::BLOCK_STATUS if r.kind == cmd::BLOCK_STATUS => {
                    let id = get_u32(&mut p, "context id")?;
                    if id != BASE_ALLOCATION_ID || p.is_empty() || p.len() % 8 != 0 {
                        return Err(format!(
                            "bad BLOCK_STATUS chunk: id {id}, {} bytes",
                            p.len()
                        ));
                    }
                    let n = p.len() / 8;
                    if r.flags & proto::cflags::REQ_ONE != 0 && n != 1 {
                        return Err(format!("{n} extents with REQ_ONE"));
                    }
                    let mut total = 0u64;
                    while !p.is_empty() {
                        let l = get_u32(&mut p, "extent length")?;
                        let f = get_u32(&mut p, "extent flags")?;
                        if l == 0 || f & !(proto::STATE_HOLE | proto::STATE_ZERO) != 0 {
                            return Err(format!("bad extent {l}/{f:#x}"));
                        }
                        total += u64::from(l);
                    }
                    if total > u64::from(r.length) {
                        return Err(format!(
                            "extents cover {total} of a {}-byte request",
                            r.length
                        ));
                    }
                }
                chunk::ERROR | chunk::ERROR_OFFSET => {
                    let error = get_u32(&mut p, "chunk error")?;
                    let mlen = get_u16(&mut p, "chunk message length")? as usize;
                    let msg = take(&mut p, mlen, "chunk message")?;
                    if error == 0 || std::str::from_utf8(msg).is_err() || mlen > 4096 {
                        return Err("error chunk with error 0 or a bad message".into());
                    }
                    if kind == chunk::ERROR_OFFSET {
                        get_u64(&mut p, "error offset")?;
                    }
                    if !p.is_empty() {
                        return Err("trailing bytes in an error chunk".into());
                    }
                    seen[i].error = error;
                }
                _ => {
                    return Err(format!(
                        "chunk type {kind} (length {len}) to command {}",
                        r.kind
                    ))
                }
            }
            seen[i].done = flags & chunk::FLAG_DONE != 0;
        } else {
            return Err(format!("reply magic {magic:#x}"));
        }
    }
    let k = seen.iter().take_while(|s| s.done).count();
    if std::env::var_os("TANDEM_FUZZ_DEBUG").is_some() {
        eprintln!(
            "  answered {k}/{}: errors {:?}",
            answered.len(),
            seen.iter().map(|s| s.error).collect::<Vec<_>>()
        );
    }
    if seen[k..].iter().any(|s| s.done || s.covered > 0) {
        return Err(format!(
            "replies are not to a prefix of the requests (first {k} answered)"
        ));
    }
    if k < answered.len() && !shutdown_fired {
        return Err(format!(
            "request {:?} (and {} more) got no final reply",
            answered[k].h,
            answered.len() - k - 1
        ));
    }
    for (r, s) in answered.iter().zip(&seen).take(k) {
        let want = match transmission::check(&r.h, limits) {
            Ok(_) => 0,
            Err(rej) => rej.error.code(),
        };
        if s.error != want {
            return Err(format!(
                "request {:?} answered error {}, want {want}",
                r.h, s.error
            ));
        }
        if want == 0 && r.h.kind == cmd::READ && s.covered != u64::from(r.h.length) {
            return Err(format!("READ {:?} covered {} bytes", r.h, s.covered));
        }
        let writes = matches!(r.h.kind, cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES);
        // FLUSH's offset and length are reserved: the server may ignore them.
        let in_bounds = r.h.kind == cmd::FLUSH
            || r.h
                .offset
                .checked_add(u64::from(r.h.length))
                .is_some_and(|x| x <= limits.size);
        if want == 0 && (!in_bounds || (writes && hello.read_only)) {
            return Err(format!(
                "request {:?} succeeded out of bounds or on a read-only export",
                r.h
            ));
        }
    }
    Ok(())
}
