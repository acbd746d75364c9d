//! The byte encoding of [`Frame`]s: a 12-byte header (magic, packet kind, volume, payload
//! length, big-endian) followed by the packet's fields, also big-endian.
//!
//! [`encode_parts`] and [`encode`] write frames; [`Decoder`] reads them back from a byte stream
//! and checks every field, so the engine only ever sees packets it can act on. Packet kinds use
//! DRBD 8.4's command numbers ([`cmd`]); the field layouts are tandem's own.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::packet::{
    AckKind, DataFlags, DataKind, Frame, IntegrityAlg, Packet, PeerState, Protocol,
};
use crate::state::{ConnState, DiskState, Role, StateChange, StateChangeError};
use crate::types::{Sector, Uuid};
use crate::uuid::GenerationUuids;

/// First four bytes of every frame: "TNDM".
pub const MAGIC: u32 = 0x544E_444D;
/// Frame header: magic u32, kind u16, volume u16, payload length u32.
pub const HEADER_BYTES: usize = 12;
/// Largest data range one packet carries or names; equal to the engine's request limit.
pub const MAX_DATA_BYTES: u32 = 32 << 20;
/// Largest payload a frame may announce: a full [`Packet::Data`] plus headroom.
pub const MAX_PAYLOAD: u32 = MAX_DATA_BYTES + 64;
/// Longest resource or node name in a [`Packet::Hello`], in bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// Smallest and largest [`Packet::AuthChallenge`] nonce, in bytes.
pub const MIN_NONCE_BYTES: usize = 16;
pub const MAX_NONCE_BYTES: usize = 64;
/// Longest [`Packet::AuthResponse`] MAC, in bytes.
pub const MAX_MAC_BYTES: usize = 64;

/// Fixed fields of `P_DATA`: id, sector, len, flags, epoch, digest flag, digest.
const DATA_FIXED: u32 = 8 + 8 + 4 + 4 + 4 + 1 + 4;
/// Fixed fields of `P_RS_DATA_REPLY`: id, sector, digest flag, digest.
const RS_REPLY_FIXED: u32 = 8 + 8 + 1 + 4;
/// Fixed fields of `P_BITMAP`: offset, last.
const BITMAP_FIXED: u32 = 8 + 1;
/// `P_STATE_CHG_REQ`: a mask byte, then role, peer, conn, disk, pdsk (0 when not masked).
const STATE_CHG_REQ_BYTES: u32 = 6;
/// The mask bits of `P_STATE_CHG_REQ`, one per field in that order.
const STATE_CHG_MASK_ALL: u8 = 0x1f;
/// Most bitmap words one `P_BITMAP` can hold.
const MAX_BITMAP_WORDS: usize = ((MAX_PAYLOAD - BITMAP_FIXED) / 8) as usize;

const _: () = assert!(MAX_DATA_BYTES as u64 == crate::engine::MAX_REQUEST_BYTES);
const _: () = assert!(DATA_FIXED + MAX_DATA_BYTES <= MAX_PAYLOAD);

/// Packet kind numbers in the frame header: DRBD 8.4's `enum drbd_packet` values where DRBD
/// has the packet.
pub mod cmd {
    pub const P_DATA: u16 = 0x00;
    pub const P_DATA_REPLY: u16 = 0x01;
    pub const P_DATA_REQUEST: u16 = 0x08;
    pub const P_NEG_DREPLY: u16 = 0x1a;
    pub const P_RS_DATA_REPLY: u16 = 0x02;
    pub const P_BARRIER: u16 = 0x03;
    pub const P_BITMAP: u16 = 0x04;
    pub const P_RS_DATA_REQUEST: u16 = 0x09;
    pub const P_PROTOCOL: u16 = 0x0b;
    pub const P_UUIDS: u16 = 0x0c;
    pub const P_SIZES: u16 = 0x0d;
    pub const P_STATE: u16 = 0x0e;
    pub const P_SYNC_UUID: u16 = 0x0f;
    pub const P_AUTH_CHALLENGE: u16 = 0x10;
    pub const P_AUTH_RESPONSE: u16 = 0x11;
    pub const P_PING: u16 = 0x13;
    pub const P_PING_ACK: u16 = 0x14;
    pub const P_RECV_ACK: u16 = 0x15;
    pub const P_WRITE_ACK: u16 = 0x16;
    pub const P_RS_WRITE_ACK: u16 = 0x17;
    pub const P_NEG_ACK: u16 = 0x19;
    pub const P_NEG_RS_DREPLY: u16 = 0x1b;
    pub const P_BARRIER_ACK: u16 = 0x1c;
    pub const P_OUT_OF_SYNC: u16 = 0x28;
    pub const P_STATE_CHG_REQ: u16 = 0x12;
    pub const P_STATE_CHG_REPLY: u16 = 0x1d;
    /// [`super::Packet::Data`] with [`super::DataKind::Trim`].
    pub const P_TRIM: u16 = 0x31;
    /// [`super::Packet::Data`] with [`super::DataKind::Zeroes`].
    pub const P_ZEROES: u16 = 0x36;
    /// tandem's own: DRBD 8.4 has no disconnect packet.
    pub const P_DISCONNECT: u16 = 0x80;
    /// [`super::Packet::Hello`].
    pub const P_CONNECTION_FEATURES: u16 = 0xfffe;
}

/// Why bytes from the peer are not a valid frame. The stream cannot be resynchronised after
/// one: the connection must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bad frame magic 0x{0:08x} (expected 0x544e444d): not a tandem peer, or the stream is out of step")]
    BadMagic(u32),
    #[error("unknown packet kind 0x{0:04x}")]
    UnknownKind(u16),
    #[error("{packet}: payload of {len} bytes, expected {}", expected_len(*.min, *.max))]
    Length {
        packet: &'static str,
        len: u32,
        min: u32,
        max: u32,
    },
    #[error("{packet}: sent on volume {volume}, but connection-level packets travel on volume 0")]
    Volume { packet: &'static str, volume: u16 },
    #[error("{packet}: {reason}")]
    Invalid {
        packet: &'static str,
        reason: String,
    },
}

fn expected_len(min: u32, max: u32) -> String {
    if min == max {
        format!("{min}")
    } else {
        format!("{min} to {max}")
    }
}

fn invalid(packet: &'static str, reason: impl Into<String>) -> WireError {
    WireError::Invalid {
        packet,
        reason: reason.into(),
    }
}

/// What the header alone says about a packet kind: its name, payload bounds and whether it is
/// connection-level.
#[derive(Debug, Clone, Copy)]
struct Shape {
    name: &'static str,
    min: u32,
    max: u32,
    connection: bool,
}

fn shape(kind: u16) -> Option<Shape> {
    use cmd::*;
    let (name, min, max, connection) = match kind {
        P_CONNECTION_FEATURES => (
            "P_CONNECTION_FEATURES",
            10,
            10 + 2 * MAX_NAME_BYTES as u32,
            true,
        ),
        P_AUTH_CHALLENGE => (
            "P_AUTH_CHALLENGE",
            MIN_NONCE_BYTES as u32,
            MAX_NONCE_BYTES as u32,
            true,
        ),
        P_AUTH_RESPONSE => ("P_AUTH_RESPONSE", 0, MAX_MAC_BYTES as u32, true),
        P_PROTOCOL => ("P_PROTOCOL", 4, 4, true),
        P_PING => ("P_PING", 0, 0, true),
        P_PING_ACK => ("P_PING_ACK", 0, 0, true),
        P_DISCONNECT => ("P_DISCONNECT", 0, 0, true),
        P_SIZES => ("P_SIZES", 24, 24, false),
        P_UUIDS => ("P_UUIDS", 48, 48, false),
        P_STATE => ("P_STATE", 2, 2, false),
        P_BITMAP => ("P_BITMAP", BITMAP_FIXED, MAX_PAYLOAD, false),
        P_SYNC_UUID => ("P_SYNC_UUID", 8, 8, false),
        P_DATA => ("P_DATA", DATA_FIXED, DATA_FIXED + MAX_DATA_BYTES, false),
        P_TRIM => ("P_TRIM", DATA_FIXED, DATA_FIXED, false),
        P_ZEROES => ("P_ZEROES", DATA_FIXED, DATA_FIXED, false),
        P_RECV_ACK => ("P_RECV_ACK", 20, 20, false),
        P_WRITE_ACK => ("P_WRITE_ACK", 20, 20, false),
        P_RS_WRITE_ACK => ("P_RS_WRITE_ACK", 20, 20, false),
        P_NEG_ACK => ("P_NEG_ACK", 20, 20, false),
        P_BARRIER => ("P_BARRIER", 5, 5, false),
        P_BARRIER_ACK => ("P_BARRIER_ACK", 8, 8, false),
        P_RS_DATA_REQUEST => ("P_RS_DATA_REQUEST", 20, 20, false),
        P_RS_DATA_REPLY => (
            "P_RS_DATA_REPLY",
            RS_REPLY_FIXED,
            RS_REPLY_FIXED + MAX_DATA_BYTES,
            false,
        ),
        P_NEG_RS_DREPLY => ("P_NEG_RS_DREPLY", 20, 20, false),
        P_DATA_REQUEST => ("P_DATA_REQUEST", 20, 20, false),
        P_DATA_REPLY => (
            "P_DATA_REPLY",
            RS_REPLY_FIXED,
            RS_REPLY_FIXED + MAX_DATA_BYTES,
            false,
        ),
        P_NEG_DREPLY => ("P_NEG_DREPLY", 20, 20, false),
        P_OUT_OF_SYNC => ("P_OUT_OF_SYNC", 12, 12, false),
        P_STATE_CHG_REQ => (
            "P_STATE_CHG_REQ",
            STATE_CHG_REQ_BYTES,
            STATE_CHG_REQ_BYTES,
            false,
        ),
        P_STATE_CHG_REPLY => ("P_STATE_CHG_REPLY", 4, 4, false),
        _ => return None,
    };
    Some(Shape {
        name,
        min,
        max,
        connection,
    })
}

/// crc32c of a payload: the digest [`Packet::Data`] and [`Packet::RsReply`] carry when
/// `data-integrity-alg` is agreed.
pub fn digest(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

impl Packet {
    /// The kind number this packet has in a frame header ([`cmd`]).
    pub fn code(&self) -> u16 {
        use cmd::*;
        match self {
            Packet::Hello { .. } => P_CONNECTION_FEATURES,
            Packet::AuthChallenge { .. } => P_AUTH_CHALLENGE,
            Packet::AuthResponse { .. } => P_AUTH_RESPONSE,
            Packet::Protocol { .. } => P_PROTOCOL,
            Packet::Ping => P_PING,
            Packet::PingAck => P_PING_ACK,
            Packet::Disconnect => P_DISCONNECT,
            Packet::Sizes { .. } => P_SIZES,
            Packet::Uuids { .. } => P_UUIDS,
            Packet::State(_) => P_STATE,
            Packet::Bitmap { .. } => P_BITMAP,
            Packet::SyncUuid { .. } => P_SYNC_UUID,
            Packet::Data { kind, .. } => match kind {
                DataKind::Write => P_DATA,
                DataKind::Trim => P_TRIM,
                DataKind::Zeroes => P_ZEROES,
            },
            Packet::Ack { kind, .. } => match kind {
                AckKind::Recv => P_RECV_ACK,
                AckKind::Write => P_WRITE_ACK,
                AckKind::RsWrite => P_RS_WRITE_ACK,
                AckKind::Neg => P_NEG_ACK,
            },
            Packet::Barrier { .. } => P_BARRIER,
            Packet::BarrierAck { .. } => P_BARRIER_ACK,
            Packet::RsRequest { .. } => P_RS_DATA_REQUEST,
            Packet::RsReply { .. } => P_RS_DATA_REPLY,
            Packet::RsNegReply { .. } => P_NEG_RS_DREPLY,
            Packet::DataRequest { .. } => P_DATA_REQUEST,
            Packet::DataReply { .. } => P_DATA_REPLY,
            Packet::NegDataReply { .. } => P_NEG_DREPLY,
            Packet::OutOfSync { .. } => P_OUT_OF_SYNC,
            Packet::StateChgReq(_) => P_STATE_CHG_REQ,
            Packet::StateChgReply(_) => P_STATE_CHG_REPLY,
        }
    }

    /// DRBD's name for the packet (`P_DATA`, `P_WRITE_ACK`, …), for logs and errors.
    pub fn name(&self) -> &'static str {
        shape(self.code()).map_or("P_UNKNOWN", |s| s.name)
    }

    /// Whether the packet concerns the whole connection and so travels on volume 0.
    pub fn is_connection_level(&self) -> bool {
        shape(self.code()).is_some_and(|s| s.connection)
    }

    /// False when the packet carries a digest that does not match its payload; true when it
    /// matches or there is none. The engine calls it when `data-integrity-alg` is agreed.
    pub fn verify_digest(&self) -> bool {
        match self {
            Packet::Data {
                digest: Some(d),
                data,
                ..
            }
            | Packet::RsReply {
                digest: Some(d),
                data,
                ..
            }
            | Packet::DataReply {
                digest: Some(d),
                data,
                ..
            } => digest(data) == *d,
            _ => true,
        }
    }
}

impl Frame {
    /// A connection-level packet on volume 0.
    pub fn connection(packet: Packet) -> Frame {
        Frame { volume: 0, packet }
    }
}

/// Checks the values the decoder checks, so a sender can refuse a frame its peer would.
/// [`encode`] does not call it; a frame that fails it encodes to bytes the peer refuses.
///
/// # Errors
/// The [`WireError`] the peer's decoder would report.
pub fn validate(frame: &Frame) -> Result<(), WireError> {
    let p = &frame.packet;
    if p.is_connection_level() && frame.volume != 0 {
        return Err(WireError::Volume {
            packet: p.name(),
            volume: frame.volume,
        });
    }
    check_packet(p)
}

/// Field rules beyond the layout: name and nonce sizes, flags, alignment, range overflow.
fn check_packet(p: &Packet) -> Result<(), WireError> {
    let name = p.name();
    match p {
        Packet::Hello {
            min_version,
            max_version,
            resource,
            node,
        } => {
            for (field, s) in [("resource", resource), ("node", node)] {
                if s.is_empty() || s.len() > MAX_NAME_BYTES {
                    return Err(invalid(
                        name,
                        format!(
                            "{field} name of {} bytes, expected 1 to {MAX_NAME_BYTES}",
                            s.len()
                        ),
                    ));
                }
            }
            if min_version > max_version {
                return Err(invalid(
                    name,
                    format!("min_version {min_version} above max_version {max_version}"),
                ));
            }
        }
        Packet::AuthChallenge { nonce } => {
            if !(MIN_NONCE_BYTES..=MAX_NONCE_BYTES).contains(&nonce.len()) {
                return Err(invalid(
                    name,
                    format!(
                        "nonce of {} bytes, expected {MIN_NONCE_BYTES} to {MAX_NONCE_BYTES}",
                        nonce.len()
                    ),
                ));
            }
        }
        Packet::AuthResponse { mac } => {
            if mac.len() > MAX_MAC_BYTES {
                return Err(invalid(
                    name,
                    format!(
                        "mac of {} bytes, at most {MAX_MAC_BYTES} expected",
                        mac.len()
                    ),
                ));
            }
        }
        Packet::Bitmap { offset, words, .. } => {
            if words.len() > MAX_BITMAP_WORDS {
                return Err(invalid(
                    name,
                    format!("{} words, at most {MAX_BITMAP_WORDS} fit", words.len()),
                ));
            }
            if offset
                .checked_add(words.len() as u64)
                .and_then(|end| end.checked_mul(64))
                .is_none()
            {
                return Err(invalid(
                    name,
                    format!("words {offset}+{} overflow the bit numbers", words.len()),
                ));
            }
        }
        Packet::Data {
            sector,
            len,
            kind,
            flags,
            data,
            ..
        } => {
            if flags.0 & !DataFlags::ALL.0 != 0 {
                return Err(invalid(
                    name,
                    format!("unknown flags 0x{:x}", flags.0 & !DataFlags::ALL.0),
                ));
            }
            check_len(name, *len)?;
            match kind {
                DataKind::Write => {
                    if *len == 0 {
                        return Err(invalid(name, "length 0"));
                    }
                    if data.len() != *len as usize {
                        return Err(invalid(
                            name,
                            format!("length {len} but {} bytes of data", data.len()),
                        ));
                    }
                }
                DataKind::Trim | DataKind::Zeroes => {
                    if !data.is_empty() {
                        return Err(invalid(
                            name,
                            format!("{} bytes of data where none belong", data.len()),
                        ));
                    }
                }
            }
            check_range(name, *sector, *len)?;
        }
        Packet::Ack { sector, len, .. }
        | Packet::RsRequest { sector, len, .. }
        | Packet::RsNegReply { sector, len, .. }
        | Packet::DataRequest { sector, len, .. }
        | Packet::NegDataReply { sector, len, .. }
        | Packet::OutOfSync { sector, len } => {
            check_len(name, *len)?;
            check_range(name, *sector, *len)?;
        }
        Packet::RsReply { sector, data, .. } | Packet::DataReply { sector, data, .. } => {
            let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
            check_len(name, len)?;
            if len == 0 {
                return Err(invalid(name, "no data"));
            }
            check_range(name, *sector, len)?;
        }
        Packet::Protocol { .. }
        | Packet::Ping
        | Packet::PingAck
        | Packet::Disconnect
        | Packet::Sizes { .. }
        | Packet::Uuids { .. }
        | Packet::State(_)
        | Packet::SyncUuid { .. }
        | Packet::Barrier { .. }
        | Packet::BarrierAck { .. }
        | Packet::StateChgReq(_)
        | Packet::StateChgReply(_) => {}
    }
    Ok(())
}

/// A range length: whole sectors, at most [`MAX_DATA_BYTES`].
fn check_len(name: &'static str, len: u32) -> Result<(), WireError> {
    if len > MAX_DATA_BYTES {
        return Err(invalid(
            name,
            format!("length {len} above the {MAX_DATA_BYTES}-byte limit"),
        ));
    }
    if !u64::from(len).is_multiple_of(Sector::SIZE) {
        return Err(invalid(
            name,
            format!("length {len} is not a multiple of 512"),
        ));
    }
    Ok(())
}

/// The range's end in bytes must be representable.
fn check_range(name: &'static str, sector: Sector, len: u32) -> Result<(), WireError> {
    if sector
        .0
        .checked_mul(Sector::SIZE)
        .and_then(|start| start.checked_add(u64::from(len)))
        .is_none()
    {
        return Err(invalid(
            name,
            format!("sector {} + length {len} overflows", sector.0),
        ));
    }
    Ok(())
}

// ---- encoding ----

/// Encodes `frame` as two chunks to write back to back: the header with the fixed fields, and
/// the data payload of [`Packet::Data`] / [`Packet::RsReply`] (shared, not copied).
pub fn encode_parts(frame: &Frame) -> (Bytes, Option<Bytes>) {
    let mut head = BytesMut::with_capacity(HEADER_BYTES + fixed_len_hint(&frame.packet));
    let data = write_frame(frame, &mut head);
    (head.freeze(), data.filter(|d| !d.is_empty()))
}

/// Appends the encoded `frame` to `out` (the payload is copied once, into `out`).
pub fn encode(frame: &Frame, out: &mut BytesMut) {
    out.reserve(HEADER_BYTES + fixed_len_hint(&frame.packet));
    if let Some(data) = write_frame(frame, out) {
        out.extend_from_slice(&data);
    }
}

/// The encoded `frame` as one vector, for tests and the simulator.
pub fn encode_to_vec(frame: &Frame) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(frame, &mut out);
    out.to_vec()
}

/// Rough size of the fields before the data payload, for buffer reservations.
fn fixed_len_hint(p: &Packet) -> usize {
    match p {
        Packet::Hello { resource, node, .. } => 10 + resource.len() + node.len(),
        Packet::AuthChallenge { nonce } => nonce.len(),
        Packet::AuthResponse { mac } => mac.len(),
        Packet::Bitmap { words, .. } => BITMAP_FIXED as usize + 8 * words.len(),
        _ => 48,
    }
}

/// Writes the header and the fields before the data payload to `out`, with the header's
/// length counting the payload too; returns the payload.
fn write_frame(frame: &Frame, out: &mut BytesMut) -> Option<Bytes> {
    let start = out.len();
    out.put_u32(MAGIC);
    out.put_u16(frame.packet.code());
    out.put_u16(frame.volume);
    out.put_u32(0);
    let data = write_fields(&frame.packet, out);
    let payload = out.len() - start - HEADER_BYTES + data.map_or(0, |d| d.len());
    let len = u32::try_from(payload).unwrap_or(u32::MAX);
    out[start + 8..start + HEADER_BYTES].copy_from_slice(&len.to_be_bytes());
    data.cloned()
}

fn put_name(out: &mut BytesMut, s: &str) {
    out.put_u8(u8::try_from(s.len()).unwrap_or(u8::MAX));
    out.put_slice(s.as_bytes());
}

fn put_digest(out: &mut BytesMut, digest: Option<u32>) {
    out.put_u8(u8::from(digest.is_some()));
    out.put_u32(digest.unwrap_or(0));
}

fn protocol_byte(p: Protocol) -> u8 {
    match p {
        Protocol::A => 1,
        Protocol::B => 2,
        Protocol::C => 3,
    }
}

fn integrity_byte(i: Option<IntegrityAlg>) -> u8 {
    match i {
        None => 0,
        Some(IntegrityAlg::Crc32c) => 1,
    }
}

fn write_fields<'a>(p: &'a Packet, out: &mut BytesMut) -> Option<&'a Bytes> {
    match p {
        Packet::Hello {
            min_version,
            max_version,
            resource,
            node,
        } => {
            out.put_u32(*min_version);
            out.put_u32(*max_version);
            put_name(out, resource);
            put_name(out, node);
        }
        Packet::AuthChallenge { nonce } => out.put_slice(nonce),
        Packet::AuthResponse { mac } => out.put_slice(mac),
        Packet::Protocol {
            protocol,
            two_primaries,
            integrity,
            discard_my_data,
        } => {
            out.put_u8(protocol_byte(*protocol));
            out.put_u8(u8::from(*two_primaries));
            out.put_u8(integrity_byte(*integrity));
            out.put_u8(u8::from(*discard_my_data));
        }
        Packet::Ping | Packet::PingAck | Packet::Disconnect => {}
        Packet::Sizes {
            backing,
            requested,
            current,
        } => {
            out.put_u64(*backing);
            out.put_u64(*requested);
            out.put_u64(*current);
        }
        Packet::Uuids {
            uuids,
            bitmap_bits,
            flags,
        } => {
            out.put_u64(uuids.current.0);
            out.put_u64(uuids.bitmap.0);
            out.put_u64(uuids.history[0].0);
            out.put_u64(uuids.history[1].0);
            out.put_u64(*bitmap_bits);
            out.put_u64(*flags);
        }
        Packet::State(PeerState { role, disk }) => {
            out.put_u8(*role as u8);
            out.put_u8(*disk as u8);
        }
        Packet::Bitmap {
            offset,
            words,
            last,
        } => {
            out.put_u64(*offset);
            out.put_u8(u8::from(*last));
            for w in words {
                out.put_u64(*w);
            }
        }
        Packet::SyncUuid { uuid } => out.put_u64(*uuid),
        Packet::Data {
            id,
            sector,
            len,
            flags,
            epoch,
            digest,
            data,
            ..
        } => {
            out.put_u64(*id);
            out.put_u64(sector.0);
            out.put_u32(*len);
            out.put_u32(flags.0);
            out.put_u32(*epoch);
            put_digest(out, *digest);
            return Some(data);
        }
        Packet::Ack {
            id, sector, len, ..
        }
        | Packet::RsRequest { id, sector, len }
        | Packet::RsNegReply { id, sector, len }
        | Packet::DataRequest { id, sector, len }
        | Packet::NegDataReply { id, sector, len } => {
            out.put_u64(*id);
            out.put_u64(sector.0);
            out.put_u32(*len);
        }
        Packet::Barrier { epoch, flush } => {
            out.put_u32(*epoch);
            out.put_u8(u8::from(*flush));
        }
        Packet::BarrierAck { epoch, writes } => {
            out.put_u32(*epoch);
            out.put_u32(*writes);
        }
        Packet::RsReply {
            id,
            sector,
            digest,
            data,
        }
        | Packet::DataReply {
            id,
            sector,
            digest,
            data,
        } => {
            out.put_u64(*id);
            out.put_u64(sector.0);
            put_digest(out, *digest);
            return Some(data);
        }
        Packet::OutOfSync { sector, len } => {
            out.put_u64(sector.0);
            out.put_u32(*len);
        }
        Packet::StateChgReq(c) => {
            let fields = [
                c.role.map(|r| r as u8),
                c.peer.map(|r| r as u8),
                c.conn.map(|x| x as u8),
                c.disk.map(|d| d as u8),
                c.pdsk.map(|d| d as u8),
            ];
            let mask = fields
                .iter()
                .enumerate()
                .filter(|(_, f)| f.is_some())
                .fold(0u8, |m, (i, _)| m | (1 << i));
            out.put_u8(mask);
            for f in fields {
                out.put_u8(f.unwrap_or(0));
            }
        }
        Packet::StateChgReply(r) => {
            // DRBD's SS_SUCCESS is 1.
            out.put_i32(r.map_or_else(|e| e.code(), |()| 1));
        }
    }
    None
}

// ---- decoding ----

/// A checked frame header: the kind is known, the length within that kind's bounds and
/// connection-level packets are on volume 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u16,
    pub volume: u16,
    /// Payload bytes after the header.
    pub len: u32,
}

impl Header {
    /// Parses and checks a header, before any of its payload is read.
    ///
    /// # Errors
    /// `BadMagic`, `UnknownKind`, `Length` (also for lengths above [`MAX_PAYLOAD`]), `Volume`.
    pub fn parse(bytes: &[u8; HEADER_BYTES]) -> Result<Header, WireError> {
        let mut b = &bytes[..];
        let magic = b.get_u32();
        let kind = b.get_u16();
        let volume = b.get_u16();
        let len = b.get_u32();
        if magic != MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        let s = shape(kind).ok_or(WireError::UnknownKind(kind))?;
        if len < s.min || len > s.max {
            return Err(WireError::Length {
                packet: s.name,
                len,
                min: s.min,
                max: s.max,
            });
        }
        if s.connection && volume != 0 {
            return Err(WireError::Volume {
                packet: s.name,
                volume,
            });
        }
        Ok(Header { kind, volume, len })
    }

    /// Header plus payload bytes.
    pub fn frame_len(&self) -> usize {
        HEADER_BYTES + self.len as usize
    }
}

/// Reads a frame stream: call [`Decoder::decode`] after each read until it returns `None`.
/// Errors are sticky, since the stream is out of step after one.
#[derive(Debug, Default)]
pub struct Decoder {
    failed: Option<WireError>,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Takes one whole frame off the front of `buf`, or returns `None` (consuming nothing)
    /// until one is buffered. Data payloads share `buf`'s memory.
    ///
    /// # Errors
    /// The first invalid field; the header is judged as soon as its 12 bytes are in. Every
    /// later call returns the same error.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = decode_one(buf);
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    /// Bytes still missing before the next frame is whole (0 when it is, or when the header
    /// is invalid): a caller may `reserve` that much before reading.
    pub fn missing(&self, buf: &[u8]) -> usize {
        match buf.first_chunk::<HEADER_BYTES>() {
            None => HEADER_BYTES - buf.len(),
            Some(h) => Header::parse(h).map_or(0, |h| h.frame_len().saturating_sub(buf.len())),
        }
    }
}

fn decode_one(buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
    let Some(head) = buf.first_chunk::<HEADER_BYTES>() else {
        return Ok(None);
    };
    let header = Header::parse(head)?;
    if buf.len() < header.frame_len() {
        return Ok(None);
    }
    let mut frame = buf.split_to(header.frame_len());
    frame.advance(HEADER_BYTES);
    decode_payload(header, frame.freeze()).map(Some)
}

/// Decodes the payload of a frame whose header was read separately (e.g. with `read_exact`).
///
/// # Errors
/// `Length` when `payload` is not `header.len` bytes, otherwise the first invalid field.
pub fn decode_payload(header: Header, payload: Bytes) -> Result<Frame, WireError> {
    let s = shape(header.kind).ok_or(WireError::UnknownKind(header.kind))?;
    if payload.len() != header.len as usize {
        return Err(WireError::Length {
            packet: s.name,
            len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
            min: header.len,
            max: header.len,
        });
    }
    let packet = decode_packet(header.kind, s.name, payload)?;
    check_packet(&packet)?;
    Ok(Frame {
        volume: header.volume,
        packet,
    })
}

/// A cursor over a payload's fields that reports, rather than panics on, a short payload.
struct Fields<'a> {
    packet: &'static str,
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn take<const N: usize>(&mut self, field: &str) -> Result<[u8; N], WireError> {
        let Some((head, rest)) = self.rest.split_first_chunk::<N>() else {
            return Err(invalid(self.packet, format!("truncated at {field}")));
        };
        self.rest = rest;
        Ok(*head)
    }

    fn u8(&mut self, field: &str) -> Result<u8, WireError> {
        self.take::<1>(field).map(|b| b[0])
    }

    fn u32(&mut self, field: &str) -> Result<u32, WireError> {
        self.take(field).map(u32::from_be_bytes)
    }

    fn u64(&mut self, field: &str) -> Result<u64, WireError> {
        self.take(field).map(u64::from_be_bytes)
    }

    fn flag(&mut self, field: &str) -> Result<bool, WireError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(invalid(
                self.packet,
                format!("{field} is {other}, expected 0 or 1"),
            )),
        }
    }

    fn name(&mut self, field: &str) -> Result<String, WireError> {
        let len = usize::from(self.u8(field)?);
        if self.rest.len() < len {
            return Err(invalid(
                self.packet,
                format!("{field} name of {len} bytes, but {} left", self.rest.len()),
            ));
        }
        let (s, rest) = self.rest.split_at(len);
        self.rest = rest;
        String::from_utf8(s.to_vec())
            .map_err(|_| invalid(self.packet, format!("{field} name is not valid UTF-8")))
    }

    fn digest(&mut self) -> Result<Option<u32>, WireError> {
        let present = self.u8("digest flag")?;
        let d = self.u32("digest")?;
        match present {
            0 if d == 0 => Ok(None),
            0 => Err(invalid(
                self.packet,
                format!("digest 0x{d:08x} flagged absent"),
            )),
            1 => Ok(Some(d)),
            other => Err(invalid(
                self.packet,
                format!("digest flag is {other}, expected 0 or 1"),
            )),
        }
    }

    fn sector(&mut self) -> Result<Sector, WireError> {
        self.u64("sector").map(Sector)
    }

    fn end(&self) -> Result<(), WireError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(invalid(
                self.packet,
                format!("{} bytes after the last field", self.rest.len()),
            ))
        }
    }
}

fn decode_packet(kind: u16, name: &'static str, payload: Bytes) -> Result<Packet, WireError> {
    use cmd::*;
    let mut f = Fields {
        packet: name,
        rest: &payload,
    };
    // Where the data payload starts, for the two packets that carry one.
    let tail = |f: &Fields| payload.slice(payload.len() - f.rest.len()..);
    let packet = match kind {
        P_CONNECTION_FEATURES => {
            let min_version = f.u32("min_version")?;
            let max_version = f.u32("max_version")?;
            let resource = f.name("resource")?;
            let node = f.name("node")?;
            f.end()?;
            Packet::Hello {
                min_version,
                max_version,
                resource,
                node,
            }
        }
        P_AUTH_CHALLENGE => Packet::AuthChallenge {
            nonce: payload.clone(),
        },
        P_AUTH_RESPONSE => Packet::AuthResponse {
            mac: payload.clone(),
        },
        P_PROTOCOL => {
            let protocol = match f.u8("protocol")? {
                1 => Protocol::A,
                2 => Protocol::B,
                3 => Protocol::C,
                other => {
                    return Err(invalid(
                        name,
                        format!("protocol {other}, expected 1 (A), 2 (B) or 3 (C)"),
                    ))
                }
            };
            let two_primaries = f.flag("two_primaries")?;
            let integrity = match f.u8("integrity")? {
                0 => None,
                1 => Some(IntegrityAlg::Crc32c),
                other => {
                    return Err(invalid(
                        name,
                        format!("integrity algorithm {other}, expected 0 (none) or 1 (crc32c)"),
                    ))
                }
            };
            let discard_my_data = f.flag("discard_my_data")?;
            f.end()?;
            Packet::Protocol {
                protocol,
                two_primaries,
                integrity,
                discard_my_data,
            }
        }
        P_PING => Packet::Ping,
        P_PING_ACK => Packet::PingAck,
        P_DISCONNECT => Packet::Disconnect,
        P_SIZES => Packet::Sizes {
            backing: f.u64("backing")?,
            requested: f.u64("requested")?,
            current: f.u64("current")?,
        },
        P_UUIDS => Packet::Uuids {
            uuids: GenerationUuids {
                current: Uuid(f.u64("current")?),
                bitmap: Uuid(f.u64("bitmap")?),
                history: [Uuid(f.u64("history[0]")?), Uuid(f.u64("history[1]")?)],
            },
            bitmap_bits: f.u64("bitmap_bits")?,
            flags: f.u64("flags")?,
        },
        P_STATE => {
            let r = f.u8("role")?;
            let d = f.u8("disk")?;
            let role = Role::from_u8(r).ok_or_else(|| invalid(name, format!("role {r}")))?;
            let disk =
                DiskState::from_u8(d).ok_or_else(|| invalid(name, format!("disk state {d}")))?;
            Packet::State(PeerState { role, disk })
        }
        P_BITMAP => {
            let offset = f.u64("offset")?;
            let last = f.flag("last")?;
            if !f.rest.len().is_multiple_of(8) {
                return Err(invalid(
                    name,
                    format!("{} bytes of words, not a multiple of 8", f.rest.len()),
                ));
            }
            // The count comes from bytes actually received, bounded by MAX_PAYLOAD.
            let words = f
                .rest
                .chunks_exact(8)
                .map(|c| {
                    let mut w = [0; 8];
                    w.copy_from_slice(c);
                    u64::from_be_bytes(w)
                })
                .collect();
            Packet::Bitmap {
                offset,
                words,
                last,
            }
        }
        P_SYNC_UUID => Packet::SyncUuid {
            uuid: f.u64("uuid")?,
        },
        P_DATA | P_TRIM | P_ZEROES => {
            let id = f.u64("id")?;
            let sector = f.sector()?;
            let len = f.u32("len")?;
            let flags = DataFlags(f.u32("flags")?);
            let epoch = f.u32("epoch")?;
            let digest = f.digest()?;
            let kind = match kind {
                P_DATA => DataKind::Write,
                P_TRIM => DataKind::Trim,
                _ => DataKind::Zeroes,
            };
            Packet::Data {
                id,
                sector,
                len,
                kind,
                flags,
                epoch,
                digest,
                data: tail(&f),
            }
        }
        P_RECV_ACK | P_WRITE_ACK | P_RS_WRITE_ACK | P_NEG_ACK => Packet::Ack {
            kind: match kind {
                P_RECV_ACK => AckKind::Recv,
                P_WRITE_ACK => AckKind::Write,
                P_RS_WRITE_ACK => AckKind::RsWrite,
                _ => AckKind::Neg,
            },
            id: f.u64("id")?,
            sector: f.sector()?,
            len: f.u32("len")?,
        },
        P_BARRIER => Packet::Barrier {
            epoch: f.u32("epoch")?,
            flush: f.flag("flush")?,
        },
        P_BARRIER_ACK => Packet::BarrierAck {
            epoch: f.u32("epoch")?,
            writes: f.u32("writes")?,
        },
        P_RS_DATA_REQUEST => Packet::RsRequest {
            id: f.u64("id")?,
            sector: f.sector()?,
            len: f.u32("len")?,
        },
        P_RS_DATA_REPLY => {
            let id = f.u64("id")?;
            let sector = f.sector()?;
            let digest = f.digest()?;
            Packet::RsReply {
                id,
                sector,
                digest,
                data: tail(&f),
            }
        }
        P_NEG_RS_DREPLY => Packet::RsNegReply {
            id: f.u64("id")?,
            sector: f.sector()?,
            len: f.u32("len")?,
        },
        P_DATA_REQUEST => Packet::DataRequest {
            id: f.u64("id")?,
            sector: f.sector()?,
            len: f.u32("len")?,
        },
        P_DATA_REPLY => {
            let id = f.u64("id")?;
            let sector = f.sector()?;
            let digest = f.digest()?;
            Packet::DataReply {
                id,
                sector,
                digest,
                data: tail(&f),
            }
        }
        P_NEG_DREPLY => Packet::NegDataReply {
            id: f.u64("id")?,
            sector: f.sector()?,
            len: f.u32("len")?,
        },
        P_OUT_OF_SYNC => Packet::OutOfSync {
            sector: f.sector()?,
            len: f.u32("len")?,
        },
        P_STATE_CHG_REQ => {
            let mask = f.u8("mask")?;
            if mask & !STATE_CHG_MASK_ALL != 0 {
                return Err(invalid(name, format!("unknown mask bits 0x{mask:02x}")));
            }
            let mut vals = [None; 5];
            for (i, (v, field)) in vals
                .iter_mut()
                .zip(["role", "peer", "conn", "disk", "pdsk"])
                .enumerate()
            {
                let raw = f.u8(field)?;
                if mask & (1 << i) != 0 {
                    *v = Some(raw);
                } else if raw != 0 {
                    return Err(invalid(
                        name,
                        format!("{field} is {raw} but not in the mask"),
                    ));
                }
            }
            let bad = |field: &str, raw: u8| invalid(name, format!("{field} {raw}"));
            let role = |field: &'static str, v: Option<u8>| {
                v.map(|r| Role::from_u8(r).ok_or_else(|| bad(field, r)))
                    .transpose()
            };
            let disk = |field: &'static str, v: Option<u8>| {
                v.map(|d| DiskState::from_u8(d).ok_or_else(|| bad(field, d)))
                    .transpose()
            };
            Packet::StateChgReq(StateChange {
                role: role("role", vals[0])?,
                peer: role("peer", vals[1])?,
                conn: vals[2]
                    .map(|c| ConnState::from_u8(c).ok_or_else(|| bad("conn", c)))
                    .transpose()?,
                disk: disk("disk", vals[3])?,
                pdsk: disk("pdsk", vals[4])?,
            })
        }
        P_STATE_CHG_REPLY => {
            let code = f.take::<4>("retcode").map(i32::from_be_bytes)?;
            // A tandem peer answers success as SS_SUCCESS (1) only; DRBD's other success
            // codes (2 to 4) are refused so that every frame has one encoding.
            let result = match code {
                1 => Ok(()),
                c => Err(StateChangeError::from_code(c)
                    .ok_or_else(|| invalid(name, format!("retcode {c}")))?),
            };
            Packet::StateChgReply(result)
        }
        other => return Err(WireError::UnknownKind(other)),
    };
    Ok(packet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_name() -> impl Strategy<Value = String> {
        prop_oneof!["[a-z0-9_.-]{1,40}", "\\PC{1,20}", "[a-z]{255}"]
    }

    fn arb_range() -> impl Strategy<Value = (Sector, u32)> {
        (0u64..1 << 50, 0u32..=MAX_DATA_BYTES / 512).prop_map(|(s, n)| (Sector(s), n * 512))
    }

    fn arb_digest() -> impl Strategy<Value = Option<u32>> {
        proptest::option::of(any::<u32>())
    }

    fn arb_data() -> impl Strategy<Value = Bytes> {
        (1usize..=8, any::<u8>()).prop_map(|(n, b)| {
            Bytes::from(
                (0..n * 512)
                    .map(|i| b.wrapping_add(i as u8))
                    .collect::<Vec<u8>>(),
            )
        })
    }

    fn arb_protocol() -> impl Strategy<Value = Protocol> {
        prop_oneof![Just(Protocol::A), Just(Protocol::B), Just(Protocol::C)]
    }

    fn arb_connection_packet() -> impl Strategy<Value = Packet> {
        prop_oneof![
            (any::<u32>(), any::<u32>(), arb_name(), arb_name()).prop_map(
                |(a, b, resource, node)| {
                    Packet::Hello {
                        min_version: a.min(b),
                        max_version: a.max(b),
                        resource,
                        node,
                    }
                }
            ),
            proptest::collection::vec(any::<u8>(), MIN_NONCE_BYTES..=MAX_NONCE_BYTES)
                .prop_map(|n| Packet::AuthChallenge { nonce: n.into() }),
            proptest::collection::vec(any::<u8>(), 0..=MAX_MAC_BYTES)
                .prop_map(|m| Packet::AuthResponse { mac: m.into() }),
            (arb_protocol(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
                |(protocol, two_primaries, crc, discard_my_data)| Packet::Protocol {
                    protocol,
                    two_primaries,
                    integrity: crc.then_some(IntegrityAlg::Crc32c),
                    discard_my_data,
                }
            ),
            Just(Packet::Ping),
            Just(Packet::PingAck),
            Just(Packet::Disconnect),
        ]
    }

    fn arb_volume_packet() -> impl Strategy<Value = Packet> {
        let kinds = prop_oneof![
            Just(AckKind::Recv),
            Just(AckKind::Write),
            Just(AckKind::RsWrite),
            Just(AckKind::Neg)
        ];
        prop_oneof![
            any::<(u64, u64, u64)>().prop_map(|(backing, requested, current)| Packet::Sizes {
                backing,
                requested,
                current
            }),
            any::<([u64; 4], u64, u64)>().prop_map(|(u, bitmap_bits, flags)| Packet::Uuids {
                uuids: GenerationUuids {
                    current: Uuid(u[0]),
                    bitmap: Uuid(u[1]),
                    history: [Uuid(u[2]), Uuid(u[3])],
                },
                bitmap_bits,
                flags,
            }),
            (
                proptest::sample::select(Role::ALL),
                proptest::sample::select(DiskState::ALL)
            )
                .prop_map(|(role, disk)| Packet::State(PeerState { role, disk })),
            (
                0u64..1 << 40,
                proptest::collection::vec(any::<u64>(), 0..100),
                any::<bool>()
            )
                .prop_map(|(offset, words, last)| Packet::Bitmap {
                    offset,
                    words,
                    last
                }),
            any::<u64>().prop_map(|uuid| Packet::SyncUuid { uuid }),
            (
                any::<u64>(),
                0u64..1 << 50,
                arb_data(),
                0u32..16,
                any::<u32>(),
                arb_digest()
            )
                .prop_map(|(id, s, data, flags, epoch, digest)| Packet::Data {
                    id,
                    sector: Sector(s),
                    len: data.len() as u32,
                    kind: DataKind::Write,
                    flags: DataFlags(flags),
                    epoch,
                    digest,
                    data,
                }),
            (
                any::<u64>(),
                arb_range(),
                any::<bool>(),
                0u32..16,
                any::<u32>(),
                arb_digest()
            )
                .prop_map(|(id, (sector, len), trim, flags, epoch, digest)| {
                    Packet::Data {
                        id,
                        sector,
                        len,
                        kind: if trim {
                            DataKind::Trim
                        } else {
                            DataKind::Zeroes
                        },
                        flags: DataFlags(flags),
                        epoch,
                        digest,
                        data: Bytes::new(),
                    }
                }),
            (kinds, any::<u64>(), arb_range()).prop_map(|(kind, id, (sector, len))| {
                Packet::Ack {
                    kind,
                    id,
                    sector,
                    len,
                }
            }),
            any::<(u32, bool)>().prop_map(|(epoch, flush)| Packet::Barrier { epoch, flush }),
            any::<(u32, u32)>().prop_map(|(epoch, writes)| Packet::BarrierAck { epoch, writes }),
            (any::<u64>(), arb_range()).prop_map(|(id, (sector, len))| Packet::RsRequest {
                id,
                sector,
                len
            }),
            (any::<u64>(), 0u64..1 << 50, arb_digest(), arb_data()).prop_map(
                |(id, s, digest, data)| Packet::RsReply {
                    id,
                    sector: Sector(s),
                    digest,
                    data,
                }
            ),
            (any::<u64>(), arb_range()).prop_map(|(id, (sector, len))| Packet::RsNegReply {
                id,
                sector,
                len
            }),
            (any::<u64>(), arb_range()).prop_map(|(id, (sector, len))| Packet::DataRequest {
                id,
                sector,
                len
            }),
            (any::<u64>(), 0u64..1 << 50, arb_digest(), arb_data()).prop_map(
                |(id, s, digest, data)| Packet::DataReply {
                    id,
                    sector: Sector(s),
                    digest,
                    data,
                }
            ),
            (any::<u64>(), arb_range()).prop_map(|(id, (sector, len))| Packet::NegDataReply {
                id,
                sector,
                len
            }),
            arb_range().prop_map(|(sector, len)| Packet::OutOfSync { sector, len }),
            (
                proptest::option::of(proptest::sample::select(Role::ALL)),
                proptest::option::of(proptest::sample::select(Role::ALL)),
                proptest::option::of(proptest::sample::select(ConnState::ALL)),
                proptest::option::of(proptest::sample::select(DiskState::ALL)),
                proptest::option::of(proptest::sample::select(DiskState::ALL)),
            )
                .prop_map(|(role, peer, conn, disk, pdsk)| Packet::StateChgReq(
                    StateChange {
                        role,
                        peer,
                        conn,
                        disk,
                        pdsk
                    }
                )),
            proptest::option::of(proptest::sample::select(StateChangeError::SS))
                .prop_map(|e| Packet::StateChgReply(e.map_or(Ok(()), Err))),
        ]
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            arb_connection_packet().prop_map(Frame::connection),
            (any::<u16>(), arb_volume_packet())
                .prop_map(|(volume, packet)| Frame { volume, packet }),
        ]
    }

    /// Decodes every frame in `bytes`, fed in the given chunk sizes (cycled).
    fn decode_chunked(bytes: &[u8], chunks: &[usize]) -> Result<Vec<Frame>, WireError> {
        let mut dec = Decoder::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut at = 0;
        let mut i = 0;
        while at < bytes.len() {
            let n = chunks[i % chunks.len()].clamp(1, bytes.len() - at);
            i += 1;
            buf.extend_from_slice(&bytes[at..at + n]);
            at += n;
            while let Some(f) = dec.decode(&mut buf)? {
                out.push(f);
            }
        }
        assert!(buf.is_empty(), "{} bytes left over", buf.len());
        Ok(out)
    }

    fn decode_all(bytes: &[u8]) -> Result<Frame, WireError> {
        let mut buf = BytesMut::from(bytes);
        let f = Decoder::new().decode(&mut buf)?.expect("a whole frame");
        assert!(buf.is_empty());
        Ok(f)
    }

    fn err(bytes: &[u8]) -> String {
        match decode_all(bytes) {
            Err(e) => e.to_string(),
            Ok(f) => panic!("decoded {f:?}"),
        }
    }

    fn data_frame(len: u32, data: usize) -> Frame {
        Frame {
            volume: 0,
            packet: Packet::Data {
                id: 7,
                sector: Sector(8),
                len,
                kind: DataKind::Write,
                flags: DataFlags::SEND_WRITE_ACK,
                epoch: 3,
                digest: None,
                data: Bytes::from(vec![0xab; data]),
            },
        }
    }

    proptest! {
        #[test]
        fn every_frame_round_trips(frame in arb_frame()) {
            prop_assert_eq!(validate(&frame), Ok(()));
            let bytes = encode_to_vec(&frame);
            let (head, data) = encode_parts(&frame);
            let mut joined = head.to_vec();
            joined.extend_from_slice(data.as_deref().unwrap_or_default());
            prop_assert_eq!(&joined, &bytes);
            let decoded = decode_all(&bytes).unwrap();
            prop_assert_eq!(&decoded, &frame);
            // The encoding is canonical: decoding accepts exactly what encoding writes.
            prop_assert_eq!(encode_to_vec(&decoded), bytes);
        }

        #[test]
        fn streams_decode_in_any_split(
            frames in proptest::collection::vec(arb_frame(), 1..6),
            chunks in proptest::collection::vec(1usize..200, 1..8),
        ) {
            let mut bytes = BytesMut::new();
            for f in &frames {
                encode(f, &mut bytes);
            }
            prop_assert_eq!(&decode_chunked(&bytes, &chunks).unwrap(), &frames);
            prop_assert_eq!(&decode_chunked(&bytes, &[1]).unwrap(), &frames);
        }

        #[test]
        fn truncated_frames_wait(frame in arb_frame()) {
            let bytes = encode_to_vec(&frame);
            let mut dec = Decoder::new();
            for n in 0..bytes.len() {
                let mut buf = BytesMut::from(&bytes[..n]);
                prop_assert_eq!(dec.decode(&mut buf), Ok(None));
                prop_assert_eq!(buf.len(), n, "nothing consumed");
                prop_assert_eq!(dec.missing(&buf), if n < HEADER_BYTES { HEADER_BYTES - n } else { bytes.len() - n });
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), kind in any::<u16>()) {
            let mut b = encode_to_vec(&Frame::connection(Packet::Ping));
            b[4..6].copy_from_slice(&kind.to_be_bytes());
            let len = u32::try_from(bytes.len()).unwrap();
            b[8..12].copy_from_slice(&len.to_be_bytes());
            b.extend_from_slice(&bytes);
            let mut buf = BytesMut::from(&b[..]);
            if let Ok(Some(f)) = Decoder::new().decode(&mut buf) {
                prop_assert_eq!(encode_to_vec(&f), b);
            }
        }

        #[test]
        fn flipped_payload_bits_fail_the_digest(data in arb_data(), bit in any::<prop::sample::Index>()) {
            let frame = Frame { volume: 1, packet: Packet::RsReply { id: 1, sector: Sector(0), digest: Some(digest(&data)), data } };
            let mut bytes = encode_to_vec(&frame);
            let payload_bits = (bytes.len() - HEADER_BYTES - RS_REPLY_FIXED as usize) * 8;
            let bit = bit.index(payload_bits);
            let at = HEADER_BYTES + RS_REPLY_FIXED as usize + bit / 8;
            prop_assert!(decode_all(&bytes).unwrap().packet.verify_digest());
            bytes[at] ^= 1 << (bit % 8);
            prop_assert!(!decode_all(&bytes).unwrap().packet.verify_digest());
        }
    }

    #[test]
    fn header_errors_name_the_field() {
        let good = encode_to_vec(&Frame::connection(Packet::Ping));
        let mut b = good.clone();
        b[0] = 0;
        assert_eq!(
            err(&b),
            "bad frame magic 0x004e444d (expected 0x544e444d): not a tandem peer, or the stream is out of step"
        );
        let mut b = good.clone();
        b[4..6].copy_from_slice(&0x7777u16.to_be_bytes());
        assert_eq!(err(&b), "unknown packet kind 0x7777");
        let mut b = good.clone();
        b[6..8].copy_from_slice(&2u16.to_be_bytes());
        assert_eq!(
            err(&b),
            "P_PING: sent on volume 2, but connection-level packets travel on volume 0"
        );
        let mut b = good.clone();
        b[8..12].copy_from_slice(&1u32.to_be_bytes());
        b.push(0);
        assert_eq!(err(&b), "P_PING: payload of 1 bytes, expected 0");
    }

    #[test]
    fn oversized_payloads_are_refused_from_the_header_alone() {
        let mut b = encode_to_vec(&data_frame(512, 512));
        b.truncate(HEADER_BYTES);
        b[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        let mut buf = BytesMut::from(&b[..]);
        let mut dec = Decoder::new();
        let e = dec.decode(&mut buf).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "P_DATA: payload of 4294967295 bytes, expected 33 to {}",
                33 + MAX_DATA_BYTES
            )
        );
        assert_eq!(dec.missing(&buf), 0);
        // Sticky: the stream is out of step from here on.
        assert_eq!(dec.decode(&mut BytesMut::new()), Err(e));
        // Fixed-size packets are held to their size, also before the payload arrives.
        let mut b = encode_to_vec(&Frame::connection(Packet::Ping));
        b[4..6].copy_from_slice(&cmd::P_SIZES.to_be_bytes());
        b[8..12].copy_from_slice(&25u32.to_be_bytes());
        assert_eq!(err(&b), "P_SIZES: payload of 25 bytes, expected 24");
    }

    #[test]
    fn data_field_errors() {
        assert_eq!(
            err(&encode_to_vec(&data_frame(4097, 4097))),
            "P_DATA: length 4097 is not a multiple of 512"
        );
        assert_eq!(err(&encode_to_vec(&data_frame(0, 0))), "P_DATA: length 0");
        assert_eq!(
            err(&encode_to_vec(&data_frame(1024, 512))),
            "P_DATA: length 1024 but 512 bytes of data"
        );
        let mut f = data_frame(512, 512);
        if let Packet::Data { flags, .. } = &mut f.packet {
            *flags = DataFlags(0x31);
        }
        assert_eq!(err(&encode_to_vec(&f)), "P_DATA: unknown flags 0x30");
        let mut f = data_frame(512, 512);
        if let Packet::Data { sector, .. } = &mut f.packet {
            *sector = Sector(u64::MAX / 512);
        }
        assert_eq!(
            err(&encode_to_vec(&f)),
            format!("P_DATA: sector {} + length 512 overflows", u64::MAX / 512)
        );
        let mut f = data_frame(512, 0);
        if let Packet::Data { kind, .. } = &mut f.packet {
            *kind = DataKind::Trim;
        }
        assert!(decode_all(&encode_to_vec(&f)).is_ok());
        let mut f = data_frame(1000, 0);
        if let Packet::Data { kind, .. } = &mut f.packet {
            *kind = DataKind::Zeroes;
        }
        assert_eq!(
            err(&encode_to_vec(&f)),
            "P_ZEROES: length 1000 is not a multiple of 512"
        );
        let trim_with_data = {
            let mut b = encode_to_vec(&data_frame(512, 512));
            b[4..6].copy_from_slice(&cmd::P_TRIM.to_be_bytes());
            b
        };
        assert_eq!(
            err(&trim_with_data),
            "P_TRIM: payload of 545 bytes, expected 33"
        );
        // Digest flag and value.
        let mut b = encode_to_vec(&data_frame(512, 512));
        let flag_at = HEADER_BYTES + 28;
        b[flag_at] = 2;
        assert_eq!(err(&b), "P_DATA: digest flag is 2, expected 0 or 1");
        b[flag_at] = 0;
        b[flag_at + 4] = 9;
        assert_eq!(err(&b), "P_DATA: digest 0x00000009 flagged absent");
        let too_long = Frame {
            volume: 0,
            packet: Packet::OutOfSync {
                sector: Sector(0),
                len: MAX_DATA_BYTES + 512,
            },
        };
        assert_eq!(
            err(&encode_to_vec(&too_long)),
            format!(
                "P_OUT_OF_SYNC: length {} above the 33554432-byte limit",
                MAX_DATA_BYTES + 512
            )
        );
        assert_eq!(
            validate(&too_long),
            Err(decode_all(&encode_to_vec(&too_long)).unwrap_err())
        );
    }

    #[test]
    fn connection_field_errors() {
        let hello = |resource: &str| {
            Frame::connection(Packet::Hello {
                min_version: 1,
                max_version: 1,
                resource: resource.into(),
                node: "alpha".into(),
            })
        };
        assert_eq!(
            err(&encode_to_vec(&hello(""))),
            "P_CONNECTION_FEATURES: resource name of 0 bytes, expected 1 to 255"
        );
        let mut b = encode_to_vec(&hello("r0"));
        b[HEADER_BYTES + 9] = 0xff;
        assert_eq!(
            err(&b),
            "P_CONNECTION_FEATURES: resource name is not valid UTF-8"
        );
        let mut b = encode_to_vec(&hello("r0"));
        b[HEADER_BYTES + 8] = 20;
        assert_eq!(
            err(&b),
            "P_CONNECTION_FEATURES: resource name of 20 bytes, but 8 left"
        );
        let mut b = encode_to_vec(&hello("r0"));
        b[HEADER_BYTES + 3] = 2;
        assert_eq!(
            err(&b),
            "P_CONNECTION_FEATURES: min_version 2 above max_version 1"
        );
        let long = hello(&"x".repeat(256));
        assert!(validate(&long).is_err());
        assert!(decode_all(&encode_to_vec(&long)).is_err());
        let short_nonce = Frame::connection(Packet::AuthChallenge {
            nonce: Bytes::from_static(&[1; 15]),
        });
        assert_eq!(
            err(&encode_to_vec(&short_nonce)),
            "P_AUTH_CHALLENGE: payload of 15 bytes, expected 16 to 64"
        );
        assert_eq!(
            validate(&short_nonce).unwrap_err().to_string(),
            "P_AUTH_CHALLENGE: nonce of 15 bytes, expected 16 to 64"
        );
        let long_mac = Frame::connection(Packet::AuthResponse {
            mac: Bytes::from_static(&[1; 65]),
        });
        assert_eq!(
            err(&encode_to_vec(&long_mac)),
            "P_AUTH_RESPONSE: payload of 65 bytes, expected 0 to 64"
        );
        let proto = Frame::connection(Packet::Protocol {
            protocol: Protocol::C,
            two_primaries: false,
            integrity: None,
            discard_my_data: false,
        });
        let good = encode_to_vec(&proto);
        for (at, v, msg) in [
            (
                0,
                4,
                "P_PROTOCOL: protocol 4, expected 1 (A), 2 (B) or 3 (C)",
            ),
            (1, 2, "P_PROTOCOL: two_primaries is 2, expected 0 or 1"),
            (
                2,
                7,
                "P_PROTOCOL: integrity algorithm 7, expected 0 (none) or 1 (crc32c)",
            ),
            (3, 9, "P_PROTOCOL: discard_my_data is 9, expected 0 or 1"),
        ] {
            let mut b = good.clone();
            b[HEADER_BYTES + at] = v;
            assert_eq!(err(&b), msg);
        }
    }

    #[test]
    fn volume_field_errors() {
        let state = Frame {
            volume: 3,
            packet: Packet::State(PeerState {
                role: Role::Primary,
                disk: DiskState::UpToDate,
            }),
        };
        let good = encode_to_vec(&state);
        let mut b = good.clone();
        b[HEADER_BYTES] = 9;
        assert_eq!(err(&b), "P_STATE: role 9");
        let mut b = good.clone();
        b[HEADER_BYTES + 1] = 9;
        assert_eq!(err(&b), "P_STATE: disk state 9");
        let bitmap = Frame {
            volume: 0,
            packet: Packet::Bitmap {
                offset: 0,
                words: vec![1, 2],
                last: true,
            },
        };
        let mut b = encode_to_vec(&bitmap);
        b.pop();
        b[8..12].copy_from_slice(&24u32.to_be_bytes());
        assert_eq!(err(&b), "P_BITMAP: 15 bytes of words, not a multiple of 8");
        let mut b = encode_to_vec(&bitmap);
        b[HEADER_BYTES..HEADER_BYTES + 8].copy_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(
            err(&b),
            format!("P_BITMAP: words {}+2 overflow the bit numbers", u64::MAX)
        );
        let reply = Frame {
            volume: 0,
            packet: Packet::RsReply {
                id: 1,
                sector: Sector(0),
                digest: None,
                data: Bytes::new(),
            },
        };
        assert_eq!(err(&encode_to_vec(&reply)), "P_RS_DATA_REPLY: no data");
    }

    #[test]
    fn state_change_field_errors() {
        let req = Frame {
            volume: 0,
            packet: Packet::StateChgReq(StateChange {
                role: Some(Role::Primary),
                conn: Some(ConnState::StartingSyncS),
                ..StateChange::default()
            }),
        };
        let good = encode_to_vec(&req);
        assert_eq!(good.len(), HEADER_BYTES + 6);
        assert_eq!(&good[HEADER_BYTES..], &[0b101, 1, 0, 11, 0, 0]);
        assert_eq!(decode_all(&good).unwrap(), req);
        for (at, v, msg) in [
            (0, 0x20, "P_STATE_CHG_REQ: unknown mask bits 0x20"),
            (0, 0x01, "P_STATE_CHG_REQ: conn is 11 but not in the mask"),
            (1, 3, "P_STATE_CHG_REQ: role 3"),
            (2, 1, "P_STATE_CHG_REQ: peer is 1 but not in the mask"),
            (3, 24, "P_STATE_CHG_REQ: conn 24"),
        ] {
            let mut b = good.clone();
            b[HEADER_BYTES + at] = v;
            assert_eq!(err(&b), msg);
        }
        let mut b = good.clone();
        b[HEADER_BYTES] = 0x1f;
        b[HEADER_BYTES + 4] = 9;
        assert_eq!(err(&b), "P_STATE_CHG_REQ: disk 9");
        // Every length is checked from the header alone.
        let mut b = good.clone();
        b.push(0);
        b[8..12].copy_from_slice(&7u32.to_be_bytes());
        assert_eq!(err(&b), "P_STATE_CHG_REQ: payload of 7 bytes, expected 6");
        let reply = |r| Frame {
            volume: 0,
            packet: Packet::StateChgReply(r),
        };
        let ok = encode_to_vec(&reply(Ok(())));
        assert_eq!(&ok[HEADER_BYTES..], &1i32.to_be_bytes());
        let refused = encode_to_vec(&reply(Err(StateChangeError::TwoPrimaries)));
        assert_eq!(&refused[HEADER_BYTES..], &(-1i32).to_be_bytes());
        assert_eq!(
            decode_all(&refused).unwrap(),
            reply(Err(StateChangeError::TwoPrimaries))
        );
        // DRBD's other success codes (SS_NOTHING_TO_DO, SS_CW_SUCCESS, SS_CW_NO_NEED) would
        // decode to the same packet as 1: a tandem peer never sends them (found by fuzzing).
        for code in [0i32, 2, 3, 4, 5, -22, 124, i32::MIN] {
            let mut b = ok.clone();
            b[HEADER_BYTES..].copy_from_slice(&code.to_be_bytes());
            assert_eq!(err(&b), format!("P_STATE_CHG_REPLY: retcode {code}"));
        }
        let mut b = ok.clone();
        b.pop();
        b[8..12].copy_from_slice(&3u32.to_be_bytes());
        assert_eq!(err(&b), "P_STATE_CHG_REPLY: payload of 3 bytes, expected 4");
        assert_eq!(req.packet.name(), "P_STATE_CHG_REQ");
        assert!(!req.packet.is_connection_level());
    }

    #[test]
    fn a_full_size_write_fits() {
        let frame = data_frame(MAX_DATA_BYTES, MAX_DATA_BYTES as usize);
        let (head, data) = encode_parts(&frame);
        assert_eq!(head.len(), HEADER_BYTES + DATA_FIXED as usize);
        let data = data.unwrap();
        let Packet::Data { data: original, .. } = &frame.packet else {
            unreachable!()
        };
        assert_eq!(
            data.as_ptr(),
            original.as_ptr(),
            "payload shared, not copied"
        );
        let mut buf = BytesMut::from(&head[..]);
        buf.extend_from_slice(&data);
        let start = buf.as_ptr() as usize;
        let decoded = Decoder::new().decode(&mut buf).unwrap().unwrap();
        assert_eq!(decoded, frame);
        let Packet::Data { data, .. } = &decoded.packet else {
            unreachable!()
        };
        assert_eq!(
            data.as_ptr() as usize,
            start + HEADER_BYTES + DATA_FIXED as usize,
            "decoded payload shares the receive buffer"
        );
    }

    #[test]
    fn names_follow_drbd() {
        assert_eq!(data_frame(512, 512).packet.name(), "P_DATA");
        assert_eq!(Packet::Ping.name(), "P_PING");
        assert_eq!(
            Packet::Ack {
                kind: AckKind::RsWrite,
                id: 0,
                sector: Sector(0),
                len: 0
            }
            .name(),
            "P_RS_WRITE_ACK"
        );
        assert!(Packet::Disconnect.is_connection_level());
        assert!(!Packet::SyncUuid { uuid: 1 }.is_connection_level());
        for code in 0..=u16::MAX {
            if let Some(s) = shape(code) {
                assert!(s.max <= MAX_PAYLOAD, "{}", s.name);
                assert!(s.name.starts_with("P_"));
            }
        }
    }
}
