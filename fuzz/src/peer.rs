//! `peer_wire` and `peer_handshake`: the peer frame decoder and the link handshake
//! (`repl_core::wire`, `repl_core::link`) against arbitrary bytes from a peer.
//!
//! `peer_wire` input layout:
//!
//! ```text
//! byte 0   n = byte & 7 chunk sizes follow
//! n bytes  chunk sizes, cycled: b -> b + 1 bytes (no sizes: one chunk)
//! rest     the byte stream
//! ```
//!
//! Invariants: the chunked feed yields the same frames and the same final error as feeding
//! the whole stream at once; every frame passes `validate`, re-encodes to exactly the bytes it
//! was decoded from (the encoding is canonical), and decodes the same through `Header::parse`
//! plus `decode_payload`.
//!
//! `peer_handshake` input layout:
//!
//! ```text
//! byte 0   this side's config: bit0 shared secret; bits1-2 protocol (1 A, 2 B, else C);
//!          bit3 allow-two-primaries; bit4 crc32c integrity; bit5 discard-my-data;
//!          bit6 second nonce
//! rest     the peer's frame stream; each decoded packet goes to the link until the
//!          stream ends or stops decoding
//! ```
//!
//! Invariants: no panic; what the link sends is valid on the wire and follows
//! Hello, [AuthChallenge, AuthResponse,] Protocol; a failure is sticky; establishment happens
//! once, only after a P_PROTOCOL, and reports the configured settings and peer.

use bytes::BytesMut;
use repl_core::link::{HmacAlg, Link, LinkConfig, LinkError, PeerInfo, Progress, NONCE_BYTES};
use repl_core::state::{ConnState, DiskState, Role, StateChange, StateChangeError};
use repl_core::types::{Sector, Uuid};
use repl_core::uuid::GenerationUuids;
use repl_core::wire::{
    decode_payload, digest, encode, encode_parts, encode_to_vec, validate, AckKind, DataFlags,
    DataKind, Decoder, Frame, Header, IntegrityAlg, Packet, PeerState, Protocol, WireError,
    HEADER_BYTES,
};

use crate::seeds::Seed;

/// Every frame decoded from `stream` fed in `chunks` (cycled; empty: all at once), the bytes
/// each was decoded from, and the error that stopped decoding, if any.
type Decoded = (Vec<(Frame, Vec<u8>)>, Option<WireError>);

fn decode_stream(stream: &[u8], chunks: &[u8]) -> Decoded {
    let mut dec = Decoder::new();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    // Stream offset of buf[0].
    let mut base = 0;
    let mut fed = 0;
    let mut i = 0;
    while fed < stream.len() {
        let n = match chunks.get(i % chunks.len().max(1)) {
            Some(&b) => usize::from(b) + 1,
            None => stream.len(),
        }
        .min(stream.len() - fed);
        i += 1;
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        loop {
            let before = buf.len();
            match dec.decode(&mut buf) {
                Ok(Some(f)) => {
                    let used = before - buf.len();
                    frames.push((f, stream[base..base + used].to_vec()));
                    base += used;
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "None consumed bytes");
                    assert!(dec.missing(&buf) > 0, "None with nothing missing");
                    break;
                }
                Err(e) => {
                    assert_eq!(dec.decode(&mut buf), Err(e.clone()), "error not sticky");
                    return (frames, Some(e));
                }
            }
        }
    }
    (frames, None)
}

/// The `peer_wire` target.
pub fn run_wire(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n & 7).min(rest.len());
    let (chunks, stream) = rest.split_at(n);
    let whole = decode_stream(stream, &[]);
    let chunked = decode_stream(stream, chunks);
    assert_eq!(whole, chunked, "chunking changed the result");
    for (frame, bytes) in &whole.0 {
        check_frame(frame, bytes);
    }
}

fn check_frame(frame: &Frame, bytes: &[u8]) {
    assert_eq!(
        validate(frame),
        Ok(()),
        "decoded frame fails validate: {frame:?}"
    );
    assert_eq!(encode_to_vec(frame), bytes, "not canonical: {frame:?}");
    let (head, data) = encode_parts(frame);
    let mut joined = head.to_vec();
    joined.extend_from_slice(data.as_deref().unwrap_or_default());
    assert_eq!(joined, bytes, "encode_parts differs from encode");
    let Some(h) = bytes.first_chunk::<HEADER_BYTES>() else {
        panic!("frame shorter than a header");
    };
    let header = Header::parse(h).expect("header of a decoded frame");
    assert_eq!(header.frame_len(), bytes.len());
    let again = decode_payload(header, bytes[HEADER_BYTES..].to_vec().into());
    assert_eq!(again.as_ref(), Ok(frame), "decode_payload differs");
    let _ = frame.packet.verify_digest();
    let _ = frame.packet.name();
}

/// The harness's side of the handshake: node "alpha" of resource "r0", peer "bravo".
pub fn handshake_config(cfg: u8) -> (LinkConfig, [u8; NONCE_BYTES]) {
    let config = LinkConfig {
        resource: "r0".into(),
        my_node: "alpha".into(),
        peer_node: "bravo".into(),
        protocol: match (cfg >> 1) & 3 {
            1 => Protocol::A,
            2 => Protocol::B,
            _ => Protocol::C,
        },
        two_primaries: cfg & 8 != 0,
        integrity: (cfg & 16 != 0).then_some(IntegrityAlg::Crc32c),
        discard_my_data: cfg & 32 != 0,
        secret: (cfg & 1 != 0).then(|| (HmacAlg::Sha256, b"fuzz-secret".to_vec())),
    };
    let nonce = if cfg & 64 != 0 {
        [0x22; 32]
    } else {
        [0x11; 32]
    };
    (config, nonce)
}

/// Which packet the link may send next: Hello, then with a secret AuthChallenge and
/// AuthResponse, then Protocol.
fn expected_output(sent: usize, secret: bool) -> Option<&'static str> {
    let order: &[&str] = if secret {
        &[
            "P_CONNECTION_FEATURES",
            "P_AUTH_CHALLENGE",
            "P_AUTH_RESPONSE",
            "P_PROTOCOL",
        ]
    } else {
        &["P_CONNECTION_FEATURES", "P_PROTOCOL"]
    };
    order.get(sent).copied()
}

/// The `peer_handshake` target.
pub fn run_handshake(data: &[u8]) {
    let Some((&cfg, stream)) = data.split_first() else {
        return;
    };
    let (config, nonce) = handshake_config(cfg);
    let secret = config.secret.is_some();
    let (mut link, first) = Link::new(config.clone(), nonce).expect("harness config is valid");
    let mut sent = 0;
    let mut check_out = |out: &[Packet]| {
        for p in out {
            assert_eq!(validate(&Frame::connection(p.clone())), Ok(()), "{p:?}");
            assert_eq!(
                Some(p.name()),
                expected_output(sent, secret),
                "output {sent} out of order"
            );
            sent += 1;
        }
    };
    check_out(&first);
    let mut buf = BytesMut::from(stream);
    let mut dec = Decoder::new();
    let mut established: Option<PeerInfo> = None;
    let mut failed: Option<LinkError> = None;
    while let Ok(Some(frame)) = dec.decode(&mut buf) {
        let was_protocol = matches!(frame.packet, Packet::Protocol { .. });
        let r = link.receive(frame.packet);
        match (&failed, &established, r) {
            (Some(e), _, r) => assert_eq!(r, Err(e.clone()), "failure not sticky"),
            (None, Some(info), r) => {
                assert!(
                    matches!(r, Err(LinkError::Unexpected { .. })),
                    "packet after establishment: {r:?}"
                );
                assert_eq!(link.peer(), Some(info));
            }
            (None, None, Ok(Progress::Continue(out))) => check_out(&out),
            (None, None, Ok(Progress::Established(info, out))) => {
                check_out(&out);
                assert!(
                    was_protocol,
                    "established by a packet other than P_PROTOCOL"
                );
                assert_eq!(Some(&info), link.peer());
                check_info(&config, &info);
                established = Some(info);
            }
            (None, None, Err(e)) => {
                assert_eq!(link.error(), Some(&e));
                failed = Some(e);
            }
        }
    }
}

fn check_info(config: &LinkConfig, info: &PeerInfo) {
    assert_eq!(info.node, config.peer_node);
    assert_eq!(info.protocol, config.protocol);
    assert_eq!(info.two_primaries, config.two_primaries);
    assert_eq!(info.integrity, config.integrity);
    assert!(!(info.peer_discard_my_data && config.discard_my_data));
    assert!(!info.resolve_conflicts, "alpha sorts before bravo");
    assert!((repl_core::wire::MIN_VERSION..=repl_core::wire::MAX_VERSION).contains(&info.version));
}

// ---- seeds ----

fn frames(packets: &[(u16, Packet)]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for (volume, packet) in packets {
        encode(
            &Frame {
                volume: *volume,
                packet: packet.clone(),
            },
            &mut out,
        );
    }
    out.to_vec()
}

fn data(len: usize) -> bytes::Bytes {
    (0..len).map(|i| i as u8).collect::<Vec<u8>>().into()
}

/// One valid packet of every kind.
pub fn sample_packets() -> Vec<(u16, Packet)> {
    let d = data(1024);
    vec![
        (
            0,
            Packet::Hello {
                min_version: 1,
                max_version: 1,
                resource: "r0".into(),
                node: "bravo".into(),
            },
        ),
        (
            0,
            Packet::AuthChallenge {
                nonce: vec![0x5a; 32].into(),
            },
        ),
        (
            0,
            Packet::AuthResponse {
                mac: vec![0xa5; 32].into(),
            },
        ),
        (
            0,
            Packet::Protocol {
                protocol: Protocol::C,
                two_primaries: false,
                integrity: Some(IntegrityAlg::Crc32c),
                discard_my_data: false,
            },
        ),
        (0, Packet::Ping),
        (0, Packet::PingAck),
        (0, Packet::Disconnect),
        (
            1,
            Packet::Sizes {
                backing: 1 << 30,
                requested: 0,
                current: 1 << 30,
            },
        ),
        (
            1,
            Packet::Uuids {
                uuids: GenerationUuids {
                    current: Uuid(0x1234_5679),
                    bitmap: Uuid(0),
                    history: [Uuid(0xabcd), Uuid(0)],
                },
                bitmap_bits: 17,
                flags: 2,
            },
        ),
        (
            1,
            Packet::State(PeerState {
                role: Role::Primary,
                disk: DiskState::UpToDate,
            }),
        ),
        (
            1,
            Packet::Bitmap {
                offset: 4,
                words: vec![0, u64::MAX, 0x8000_0000_0000_0001],
                last: true,
            },
        ),
        (1, Packet::SyncUuid { uuid: 0xfeed_0000 }),
        (
            1,
            Packet::Data {
                id: 9,
                sector: Sector(2048),
                len: d.len() as u32,
                kind: DataKind::Write,
                flags: DataFlags::FUA.with(DataFlags::SEND_WRITE_ACK),
                epoch: 5,
                digest: Some(digest(&d)),
                data: d.clone(),
            },
        ),
        (
            1,
            Packet::Data {
                id: 10,
                sector: Sector(0),
                len: 1 << 20,
                kind: DataKind::Trim,
                flags: DataFlags::SEND_WRITE_ACK,
                epoch: 5,
                digest: None,
                data: bytes::Bytes::new(),
            },
        ),
        (
            1,
            Packet::Data {
                id: 11,
                sector: Sector(8),
                len: 4096,
                kind: DataKind::Zeroes,
                flags: DataFlags::MAY_SET_IN_SYNC,
                epoch: 6,
                digest: None,
                data: bytes::Bytes::new(),
            },
        ),
        (
            1,
            Packet::Ack {
                kind: AckKind::Write,
                id: 9,
                sector: Sector(2048),
                len: 1024,
            },
        ),
        (
            1,
            Packet::Ack {
                kind: AckKind::Recv,
                id: 9,
                sector: Sector(2048),
                len: 1024,
            },
        ),
        (
            1,
            Packet::Ack {
                kind: AckKind::RsWrite,
                id: 12,
                sector: Sector(64),
                len: 4096,
            },
        ),
        (
            1,
            Packet::Ack {
                kind: AckKind::Neg,
                id: 9,
                sector: Sector(2048),
                len: 1024,
            },
        ),
        (
            1,
            Packet::Barrier {
                epoch: 5,
                flush: true,
            },
        ),
        (
            1,
            Packet::BarrierAck {
                epoch: 5,
                writes: 3,
            },
        ),
        (
            1,
            Packet::RsRequest {
                id: 1,
                sector: Sector(64),
                len: 4096,
            },
        ),
        (
            1,
            Packet::RsReply {
                id: 1,
                sector: Sector(64),
                digest: None,
                data: d,
            },
        ),
        (
            1,
            Packet::RsNegReply {
                id: 2,
                sector: Sector(72),
                len: 4096,
            },
        ),
        (
            1,
            Packet::OutOfSync {
                sector: Sector(128),
                len: 8192,
            },
        ),
        (
            1,
            Packet::StateChgReq(StateChange {
                role: Some(Role::Primary),
                ..StateChange::default()
            }),
        ),
        (
            1,
            Packet::StateChgReq(StateChange {
                conn: Some(ConnState::StartingSyncS),
                ..StateChange::default()
            }),
        ),
        (1, Packet::StateChgReply(Ok(()))),
        (
            1,
            Packet::StateChgReply(Err(StateChangeError::ConcurrentStateChange)),
        ),
    ]
}

/// `peer_wire` seeds: the packets in groups of related kinds, all of them in small chunks,
/// and a stream that turns bad.
pub fn wire_seeds() -> Vec<Seed> {
    let all = sample_packets();
    let group = |range: std::ops::Range<usize>| {
        let mut b = vec![0];
        b.extend(frames(&all[range]));
        b
    };
    let mut v: Vec<Seed> = vec![
        ("connection", group(0..7)),
        ("handshake-state", group(7..12)),
        ("writes", group(12..15)),
        ("acks-barriers", group(15..21)),
        ("resync", group(21..all.len() - 4)),
        ("state-change", group(all.len() - 4..all.len())),
    ];
    let mut b = vec![3, 0, 6, 200];
    b.extend(frames(&all));
    v.push(("stream-chunked", b));
    let mut bad = vec![1, 4];
    bad.extend(frames(&all[..3]));
    bad.extend_from_slice(&[0x54, 0x4e, 0x44, 0x4d, 0, 0, 0, 1, 0, 0, 0, 3, 1, 2]);
    v.push(("stream-then-bad-kind", bad));
    v
}

/// The frames peer "bravo" (configured by `bravo`) sends when it runs the handshake against
/// the harness's side chosen by `cfg`, until either side stops.
fn transcript(cfg: u8, bravo: LinkConfig, bravo_nonce: [u8; NONCE_BYTES]) -> Vec<u8> {
    let (config, nonce) = handshake_config(cfg);
    let (mut alpha, to_bravo) = Link::new(config, nonce).expect("alpha config");
    let (mut b, to_alpha) = Link::new(bravo, bravo_nonce).expect("bravo config");
    let mut sent_by_bravo = Vec::new();
    let mut to_alpha: Vec<Packet> = to_alpha;
    let mut to_bravo: Vec<Packet> = to_bravo;
    for _ in 0..10 {
        for p in std::mem::take(&mut to_bravo) {
            match b.receive(p) {
                Ok(Progress::Continue(out)) | Ok(Progress::Established(_, out)) => {
                    to_alpha.extend(out)
                }
                Err(_) => break,
            }
        }
        for p in std::mem::take(&mut to_alpha) {
            sent_by_bravo.push((0, p.clone()));
            match alpha.receive(p) {
                Ok(Progress::Continue(out)) | Ok(Progress::Established(_, out)) => {
                    to_bravo.extend(out)
                }
                Err(_) => break,
            }
        }
    }
    let mut out = vec![cfg];
    out.extend(frames(&sent_by_bravo));
    out
}

fn bravo_for(cfg: u8) -> LinkConfig {
    let (mut c, _) = handshake_config(cfg);
    c.my_node = "bravo".into();
    c.peer_node = "alpha".into();
    c.discard_my_data = false;
    c
}

/// `peer_handshake` seeds: honest peers for several configs, and peers that disagree.
pub fn handshake_seeds() -> Vec<Seed> {
    let n = [0x33; 32];
    let mut v: Vec<Seed> = vec![
        ("plain-c", transcript(0, bravo_for(0), n)),
        ("secret-c", transcript(1, bravo_for(1), n)),
        ("secret-a-dual-crc", transcript(0x1b, bravo_for(0x1b), n)),
        ("discard-b", transcript(0x24, bravo_for(0x24), n)),
        ("secret-only-here", transcript(1, bravo_for(0), n)),
        ("secret-only-peer", transcript(0, bravo_for(1), n)),
        ("protocol-mismatch", transcript(2, bravo_for(0), n)),
        (
            "wrong-secret",
            transcript(
                1,
                LinkConfig {
                    secret: Some((HmacAlg::Sha256, b"other".to_vec())),
                    ..bravo_for(1)
                },
                n,
            ),
        ),
        (
            "wrong-resource",
            transcript(
                0,
                LinkConfig {
                    resource: "r9".into(),
                    ..bravo_for(0)
                },
                n,
            ),
        ),
    ];
    // A peer that reflects our nonce, then keeps talking after the failure.
    let mut b = vec![1];
    b.extend(frames(&[
        (
            0,
            Packet::Hello {
                min_version: 1,
                max_version: 1,
                resource: "r0".into(),
                node: "bravo".into(),
            },
        ),
        (
            0,
            Packet::AuthChallenge {
                nonce: vec![0x11; 32].into(),
            },
        ),
        (0, Packet::Ping),
    ]));
    v.push(("reflection", b));
    // An honest handshake followed by engine traffic the link must refuse.
    let mut b = transcript(0, bravo_for(0), n);
    b.extend(frames(&sample_packets()[7..10]));
    v.push(("established-then-more", b));
    v
}
