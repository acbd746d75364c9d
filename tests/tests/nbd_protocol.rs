//! `tandem-nbd` at the byte level: hostile and odd requests get NBD's errors and the server
//! keeps serving; shutdown is clean; the `nbd` crate is a second, independent client; several
//! exports on one in-process server are listed by real clients.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::sync::Arc;

use nbd_server::export::{Export, ExportTable};
use nbd_server::memory::MemoryDevice;
use nbd_server::proto::{cmd, opt, rep, NbdError, REPLY_MAGIC, SIMPLE_REPLY_MAGIC};
use nbd_server::server::{Endpoint, Listener, Shutdown};
use tandem_tests::*;

const MIB: u64 = 1 << 20;

/// A minimal client that speaks raw NBD over a Unix socket.
struct Raw {
    s: UnixStream,
    size: u64,
    flags: u16,
}

impl Raw {
    /// Greeting, client flags (fixed newstyle + no zeroes), then `EXPORT_NAME`.
    fn connect(path: &std::path::Path, name: &str) -> Raw {
        let mut s = Raw::greet(path);
        s.option(opt::EXPORT_NAME, name.as_bytes());
        let size = s.u64();
        let flags = s.u16();
        Raw {
            s: s.s,
            size,
            flags,
        }
    }

    fn greet(path: &std::path::Path) -> Raw {
        let mut s = UnixStream::connect(path).expect("connect");
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .expect("timeout");
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).expect("greeting");
        assert_eq!(&hello[..8], b"NBDMAGIC");
        assert_eq!(&hello[8..16], b"IHAVEOPT");
        assert_eq!(u16::from_be_bytes([hello[16], hello[17]]), 3);
        s.write_all(&3u32.to_be_bytes()).expect("flags");
        Raw {
            s,
            size: 0,
            flags: 0,
        }
    }

    fn option(&mut self, option: u32, data: &[u8]) {
        let mut m = b"IHAVEOPT".to_vec();
        m.extend_from_slice(&option.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        self.s.write_all(&m).expect("option");
    }

    /// Reads one option reply: (option, type, data).
    fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
        assert_eq!(self.u64(), REPLY_MAGIC);
        let o = self.u32();
        let t = self.u32();
        let n = self.u32() as usize;
        let mut d = vec![0; n];
        self.s.read_exact(&mut d).expect("reply data");
        (o, t, d)
    }

    fn request(
        &mut self,
        kind: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) {
        let mut m = Vec::with_capacity(28 + payload.len());
        m.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&cookie.to_be_bytes());
        m.extend_from_slice(&offset.to_be_bytes());
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(payload);
        self.s.write_all(&m).expect("request");
    }

    /// Reads a simple reply: (error, cookie).
    fn reply(&mut self) -> (u32, u64) {
        assert_eq!(self.u32(), SIMPLE_REPLY_MAGIC);
        (self.u32(), self.u64())
    }

    fn data(&mut self, n: usize) -> Vec<u8> {
        let mut d = vec![0; n];
        self.s.read_exact(&mut d).expect("data");
        d
    }

    fn u16(&mut self) -> u16 {
        let mut b = [0; 2];
        self.s.read_exact(&mut b).expect("u16");
        u16::from_be_bytes(b)
    }

    fn u32(&mut self) -> u32 {
        let mut b = [0; 4];
        self.s.read_exact(&mut b).expect("u32");
        u32::from_be_bytes(b)
    }

    fn u64(&mut self) -> u64 {
        let mut b = [0; 8];
        self.s.read_exact(&mut b).expect("u64");
        u64::from_be_bytes(b)
    }

    /// True when the server closed the connection.
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
}

fn einval() -> u32 {
    NbdError::Inval.code()
}

#[test]
fn bad_requests_get_nbd_errors_and_the_session_goes_on() {
    let s = NbdServer::start(ServeOpts {
        size: MIB,
        ..Default::default()
    });
    let mut c = Raw::connect(&s.socket, "");
    assert_eq!(c.size, MIB);
    // Read past the end: EINVAL, no payload follows.
    c.request(cmd::READ, 0, 1, MIB - 512, 1024, &[]);
    assert_eq!(c.reply(), (einval(), 1));
    // Write past the end: ENOSPC, and its payload is consumed.
    c.request(cmd::WRITE, 0, 2, MIB, 512, &[0xee; 512]);
    assert_eq!(c.reply(), (NbdError::NoSpc.code(), 2));
    // Oversize read: EOVERFLOW; oversize write: EINVAL after its 40 MiB payload is discarded.
    c.request(cmd::READ, 0, 3, 0, 33 << 20, &[]);
    assert_eq!(c.reply(), (NbdError::Overflow.code(), 3));
    c.request(cmd::WRITE, 0, 4, 0, 40 << 20, &vec![0xab; 40 << 20]);
    assert_eq!(c.reply(), (einval(), 4));
    // Unknown command, unknown flag, BLOCK_STATUS without a context, DF without structured.
    c.request(99, 0, 5, 0, 512, &[]);
    assert_eq!(c.reply(), (einval(), 5));
    c.request(cmd::FLUSH, 1 << 12, 6, 0, 0, &[]);
    assert_eq!(c.reply(), (einval(), 6));
    c.request(cmd::BLOCK_STATUS, 0, 7, 0, 512, &[]);
    assert_eq!(c.reply(), (einval(), 7));
    c.request(cmd::READ, 1 << 2, 8, 0, 512, &[]);
    assert_eq!(c.reply(), (einval(), 8));
    // After all that, a write and a read work, and nothing of the refused writes landed.
    c.request(cmd::WRITE, 1, 9, 4096, 4, b"abcd");
    assert_eq!(c.reply(), (0, 9));
    c.request(cmd::READ, 0, 10, 0, 8192, &[]);
    assert_eq!(c.reply(), (0, 10));
    let d = c.data(8192);
    assert_eq!(&d[4096..4100], b"abcd");
    assert!(d[..4096].iter().all(|b| *b == 0));
    assert!(
        std::fs::read(&s.image)
            .expect("image")
            .iter()
            .filter(|b| **b != 0)
            .count()
            == 4
    );
}

#[test]
fn read_only_export_refuses_writes_with_eperm() {
    let s = NbdServer::start(ServeOpts {
        size: MIB,
        read_only: true,
        ..Default::default()
    });
    let mut c = Raw::connect(&s.socket, "");
    assert_ne!(c.flags & 2, 0, "READ_ONLY flag");
    c.request(cmd::WRITE, 0, 1, 0, 512, &[1; 512]);
    assert_eq!(c.reply(), (NbdError::Perm.code(), 1));
    c.request(cmd::TRIM, 0, 2, 0, 512, &[]);
    assert_eq!(c.reply(), (NbdError::Perm.code(), 2));
    c.request(cmd::WRITE_ZEROES, 0, 3, 0, 512, &[]);
    assert_eq!(c.reply(), (NbdError::Perm.code(), 3));
    c.request(cmd::READ, 0, 4, 0, 512, &[]);
    assert_eq!(c.reply(), (0, 4));
    assert!(c.data(512).iter().all(|b| *b == 0));
}

#[test]
fn a_broken_client_is_dropped_and_others_are_served() {
    let s = NbdServer::start(ServeOpts {
        size: MIB,
        ..Default::default()
    });
    let mut good = Raw::connect(&s.socket, "");
    // Bad request magic: the server hangs up on that client only.
    let mut bad = Raw::connect(&s.socket, "");
    bad.s.write_all(&[0xde; 28]).expect("garbage");
    assert!(bad.closed());
    // A client that vanishes in the middle of a write payload.
    let mut gone = Raw::connect(&s.socket, "");
    gone.request(cmd::WRITE, 0, 1, 0, 65536, &[0x77; 1000]);
    drop(gone);
    // Bad option magic during the handshake.
    let mut early = Raw::greet(&s.socket);
    early.s.write_all(&[0u8; 16]).expect("garbage");
    assert!(early.closed());
    // Unknown client flags: dropped.
    let mut flags = UnixStream::connect(&s.socket).expect("connect");
    let mut hello = [0u8; 18];
    flags.read_exact(&mut hello).expect("greeting");
    flags.write_all(&0x80u32.to_be_bytes()).expect("flags");
    let mut b = [0u8; 1];
    assert!(matches!(flags.read(&mut b), Ok(0) | Err(_)));
    good.request(cmd::WRITE, 0, 2, 512, 3, b"xyz");
    assert_eq!(good.reply(), (0, 2));
    good.request(cmd::READ, 0, 3, 0, 1024, &[]);
    assert_eq!(good.reply(), (0, 3));
    let d = good.data(1024);
    assert_eq!(&d[512..515], b"xyz");
    assert!(
        d[..512].iter().all(|b| *b == 0),
        "the vanished client's partial write must not land"
    );
}

#[test]
fn pipelined_requests_all_answered_and_disc_drains_them() {
    let s = NbdServer::start(ServeOpts {
        size: 4 * MIB,
        ..Default::default()
    });
    let mut c = Raw::connect(&s.socket, "");
    let n = 64u64;
    for i in 0..n {
        c.request(
            cmd::WRITE,
            0,
            1000 + i,
            i * 65536,
            65536,
            &vec![i as u8 + 1; 65536],
        );
    }
    c.request(cmd::DISC, 0, 0, 0, 0, &[]);
    let mut cookies: Vec<u64> = (0..n)
        .map(|_| {
            let (err, cookie) = c.reply();
            assert_eq!(err, 0);
            cookie
        })
        .collect();
    assert!(c.closed(), "server closes after DISC");
    cookies.sort();
    assert_eq!(cookies, (1000..1000 + n).collect::<Vec<_>>());
    let img = std::fs::read(&s.image).expect("image");
    for i in 0..n as usize {
        assert!(
            img[i * 65536..(i + 1) * 65536]
                .iter()
                .all(|b| *b == i as u8 + 1),
            "block {i}"
        );
    }
}

#[test]
fn option_haggling_survives_unknown_and_bad_options() {
    let s = NbdServer::start(ServeOpts {
        size: MIB,
        name: Some("vol".into()),
        ..Default::default()
    });
    let mut c = Raw::greet(&s.socket);
    c.option(0x1234, b"junk");
    assert_eq!(c.option_reply().1, rep::ERR_UNSUP);
    c.option(opt::STARTTLS, &[]);
    assert_eq!(c.option_reply().1, rep::ERR_UNSUP);
    c.option(opt::LIST, b"x");
    assert_eq!(c.option_reply().1, rep::ERR_INVALID);
    // Option data above the limit is skipped and refused, not allocated.
    c.option(opt::GO, &vec![0u8; 100_000]);
    assert_eq!(c.option_reply().1, rep::ERR_TOO_BIG);
    let go = |name: &str| {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&0u16.to_be_bytes());
        d
    };
    c.option(opt::GO, &go("nope"));
    let (_, t, msg) = c.option_reply();
    assert_eq!(t, rep::ERR_UNKNOWN);
    assert!(String::from_utf8_lossy(&msg).contains("nope"));
    c.option(opt::GO, &go("vol"));
    let mut types = vec![];
    loop {
        let (_, t, _) = c.option_reply();
        types.push(t);
        if t == rep::ACK {
            break;
        }
    }
    assert_eq!(types, vec![rep::INFO, rep::INFO, rep::ACK]);
    c.request(cmd::READ, 0, 1, 0, 16, &[]);
    assert_eq!(c.reply(), (0, 1));
}

#[test]
fn sigterm_stops_cleanly_with_a_client_attached() {
    let mut s = NbdServer::start(ServeOpts {
        size: MIB,
        ..Default::default()
    });
    let mut c = Raw::connect(&s.socket, "");
    c.request(cmd::WRITE, 0, 1, 0, 4, b"done");
    assert_eq!(c.reply(), (0, 1));
    let st = s.proc.signal_and_wait(libc::SIGTERM);
    assert!(st.success(), "exit status {st}");
    assert!(c.closed());
    assert!(!s.socket.exists(), "socket file removed");
    assert_eq!(&std::fs::read(&s.image).expect("image")[..4], b"done");
}

#[test]
fn sigint_stops_cleanly() {
    let mut s = NbdServer::start(ServeOpts {
        size: MIB,
        tcp: true,
        ..Default::default()
    });
    assert!(s.port() > 0);
    let st = s.proc.signal_and_wait(libc::SIGINT);
    assert!(st.success(), "exit status {st}");
}

#[test]
fn bad_command_lines_fail_with_a_message() {
    let missing = Command::new(bin("tandem-nbd"))
        .args(["serve", "/nonexistent/disk.img", "--socket", "/tmp/x.sock"])
        .output()
        .expect("run");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot open /nonexistent/disk.img"));
    let both = Command::new(bin("tandem-nbd"))
        .args(["serve", "x", "--socket", "a", "--listen", "127.0.0.1:1"])
        .output()
        .expect("run");
    assert_eq!(both.status.code(), Some(2));
    let neither = Command::new(bin("tandem-nbd"))
        .args(["serve", "x"])
        .output()
        .expect("run");
    assert_eq!(neither.status.code(), Some(2));
}

#[test]
fn the_nbd_crate_reads_and_writes_over_tcp() {
    use std::io::{Seek, SeekFrom};
    let s = NbdServer::start(ServeOpts {
        size: 2 * MIB,
        tcp: true,
        ..Default::default()
    });
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", s.port())).expect("connect");
    let export = nbd::client::handshake(&mut tcp, b"").expect("handshake");
    assert_eq!(export.size, 2 * MIB);
    assert!(export.send_flush && export.send_trim && !export.readonly);
    let mut client = nbd::client::NbdClient::new(tcp, &export);
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    client.seek(SeekFrom::Start(MIB)).expect("seek");
    client.write_all(&data).expect("write");
    client.flush().expect("flush");
    client.seek(SeekFrom::Start(MIB)).expect("seek");
    let mut back = vec![0u8; 8192];
    client.read_exact(&mut back).expect("read");
    assert_eq!(back, data);
    drop(client);
    let img = std::fs::read(&s.image).expect("image");
    assert_eq!(&img[MIB as usize..MIB as usize + 8192], &data[..]);
}

#[test]
fn several_exports_on_one_server_are_listed_and_served() {
    if !require("nbdinfo", "libnbd-bin") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("multi.sock");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut table = ExportTable::new();
    for (name, size) in [("alpha", MIB), ("beta", 2 * MIB)] {
        table.insert(Export {
            name: name.into(),
            description: format!("{name} disk"),
            device: Arc::new(MemoryDevice::new(size as usize)),
            read_only: false,
        });
    }
    let listener = rt
        .block_on(Listener::bind(&Endpoint::Unix(sock.clone())))
        .expect("bind");
    let (stop, shutdown) = Shutdown::new();
    let server = rt.spawn(listener.serve(Arc::new(table), shutdown));
    let base = format!("nbd+unix:///?socket={}", sock.display());
    let list = stdout_of(Command::new("nbdinfo").args(["--list", "--json", &base]));
    let v: serde_json::Value = serde_json::from_str(&list).expect("json");
    let names: Vec<&str> = v["exports"]
        .as_array()
        .expect("exports")
        .iter()
        .filter_map(|e| e["export-name"].as_str())
        .collect();
    assert_eq!(names, ["alpha", "beta"]);
    assert_eq!(v["exports"][1]["export-size"], 2 * MIB);
    assert_eq!(v["exports"][0]["description"], "alpha disk");
    // Two clients at once on different exports.
    let a = format!("nbd+unix:///alpha?socket={}", sock.display());
    let b = format!("nbd+unix:///beta?socket={}", sock.display());
    if require("qemu-io", "qemu-utils") {
        let ca = Command::new("qemu-io")
            .args([
                "-f",
                "raw",
                "-c",
                "w -P 1 0 512k",
                "-c",
                "r -P 1 0 512k",
                &a,
            ])
            .spawn()
            .expect("qemu-io");
        let cb = Command::new("qemu-io")
            .args([
                "-f",
                "raw",
                "-c",
                "w -P 2 1M 512k",
                "-c",
                "r -P 2 1M 512k",
                &b,
            ])
            .spawn()
            .expect("qemu-io");
        for mut c in [ca, cb] {
            assert!(c.wait().expect("wait").success());
        }
        // Each export kept its own data.
        let out = Command::new("qemu-io")
            .args(["-f", "raw", "-c", "r -P 0 1M 512k", &b])
            .output()
            .expect("qemu-io");
        assert!(!out.status.success(), "beta must hold pattern 2 at 1M");
        run_ok(Command::new("qemu-io").args(["-f", "raw", "-c", "r -P 0 512k 512k", &a]));
    }
    let _ = stop.send(true);
    rt.block_on(server).expect("server task");
    assert!(!sock.exists());
}

#[test]
fn sigterm_does_not_hang_on_a_client_stalled_mid_request() {
    let mut s = NbdServer::start(ServeOpts {
        size: MIB,
        ..Default::default()
    });
    let mut stalled = Raw::connect(&s.socket, "");
    // Half a payload, then silence: the server is stuck reading it when SIGTERM arrives.
    stalled.request(cmd::WRITE, 0, 1, 0, 65536, &[1; 100]);
    let mut haggling = Raw::greet(&s.socket);
    haggling.option(opt::LIST, &[]);
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(s.proc.child.id() as i32, libc::SIGTERM) };
    let (tx, rx) = std::sync::mpsc::channel();
    let mut child = std::mem::replace(
        &mut s.proc.child,
        Command::new("true").spawn().expect("true"),
    );
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    // The grace period is 10 s; allow generous slack on a loaded machine.
    let st = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("server exited")
        .expect("wait");
    assert!(st.success(), "exit status {st}");
    assert!(stalled.closed());
}
