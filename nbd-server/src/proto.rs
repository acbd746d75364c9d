//! NBD wire constants and the fixed-size messages of both phases, encoded and decoded as pure
//! functions. `doc/proto.md` of NetworkBlockDevice/nbd is the normative text.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags (server to client).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Transmission flags.
pub mod tflags {
    pub const HAS_FLAGS: u16 = 1 << 0;
    pub const READ_ONLY: u16 = 1 << 1;
    pub const SEND_FLUSH: u16 = 1 << 2;
    pub const SEND_FUA: u16 = 1 << 3;
    pub const ROTATIONAL: u16 = 1 << 4;
    pub const SEND_TRIM: u16 = 1 << 5;
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    pub const SEND_DF: u16 = 1 << 7;
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    pub const SEND_CACHE: u16 = 1 << 10;
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// Option codes.
pub mod opt {
    pub const EXPORT_NAME: u32 = 1;
    pub const ABORT: u32 = 2;
    pub const LIST: u32 = 3;
    pub const STARTTLS: u32 = 5;
    pub const INFO: u32 = 6;
    pub const GO: u32 = 7;
    pub const STRUCTURED_REPLY: u32 = 8;
    pub const LIST_META_CONTEXT: u32 = 9;
    pub const SET_META_CONTEXT: u32 = 10;
    pub const EXTENDED_HEADERS: u32 = 11;
}

/// Option reply types.
pub mod rep {
    pub const ACK: u32 = 1;
    pub const SERVER: u32 = 2;
    pub const INFO: u32 = 3;
    pub const META_CONTEXT: u32 = 4;
    pub const ERR_UNSUP: u32 = (1 << 31) + 1;
    pub const ERR_POLICY: u32 = (1 << 31) + 2;
    pub const ERR_INVALID: u32 = (1 << 31) + 3;
    pub const ERR_PLATFORM: u32 = (1 << 31) + 4;
    pub const ERR_TLS_REQD: u32 = (1 << 31) + 5;
    pub const ERR_UNKNOWN: u32 = (1 << 31) + 6;
    pub const ERR_SHUTDOWN: u32 = (1 << 31) + 7;
    pub const ERR_BLOCK_SIZE_REQD: u32 = (1 << 31) + 8;
    pub const ERR_TOO_BIG: u32 = (1 << 31) + 9;
}

/// `NBD_INFO_*` items of `NBD_REP_INFO`.
pub mod info {
    pub const EXPORT: u16 = 0;
    pub const NAME: u16 = 1;
    pub const DESCRIPTION: u16 = 2;
    pub const BLOCK_SIZE: u16 = 3;
}

/// Command types.
pub mod cmd {
    pub const READ: u16 = 0;
    pub const WRITE: u16 = 1;
    pub const DISC: u16 = 2;
    pub const FLUSH: u16 = 3;
    pub const TRIM: u16 = 4;
    pub const CACHE: u16 = 5;
    pub const WRITE_ZEROES: u16 = 6;
    pub const BLOCK_STATUS: u16 = 7;
}

/// Command flags.
pub mod cflags {
    pub const FUA: u16 = 1 << 0;
    pub const NO_HOLE: u16 = 1 << 1;
    pub const DF: u16 = 1 << 2;
    pub const REQ_ONE: u16 = 1 << 3;
    pub const FAST_ZERO: u16 = 1 << 4;
}

/// Structured reply chunk types and flags.
pub mod chunk {
    pub const FLAG_DONE: u16 = 1;
    pub const NONE: u16 = 0;
    pub const OFFSET_DATA: u16 = 1;
    pub const OFFSET_HOLE: u16 = 2;
    pub const BLOCK_STATUS: u16 = 5;
    pub const ERROR: u16 = (1 << 15) + 1;
    pub const ERROR_OFFSET: u16 = (1 << 15) + 2;
}

/// `base:allocation` extent flags.
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;

/// The only metadata context tandem's server knows.
pub const BASE_ALLOCATION: &str = "base:allocation";

/// Largest payload a request may carry or ask for (the interoperable "never a DoS" size).
pub const MAX_PAYLOAD: u32 = 32 << 20;

/// Errors carried in replies: the values the spec allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum NbdError {
    Perm = 1,
    Io = 5,
    NoMem = 12,
    Inval = 22,
    NoSpc = 28,
    Overflow = 75,
    NotSup = 95,
    Shutdown = 108,
}

impl NbdError {
    /// Maps an OS error to the nearest value the spec allows (EDQUOT and EFBIG become ENOSPC).
    pub fn from_io(e: &std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) | Some(libc::EROFS) => Self::Perm,
            Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => Self::NoSpc,
            Some(libc::EINVAL) => Self::Inval,
            Some(libc::ENOMEM) => Self::NoMem,
            Some(libc::EOPNOTSUPP) => Self::NotSup,
            Some(libc::EOVERFLOW) => Self::Overflow,
            _ => Self::Io,
        }
    }

    pub fn code(self) -> u32 {
        self as u32
    }
}

/// A transmission-phase request header (28 bytes on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

pub const REQUEST_HEADER_LEN: usize = 28;

/// A malformed message that cannot be answered: the connection must be dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("bad request magic {0:#010x}")]
    BadRequestMagic(u32),
    #[error("bad option magic {0:#018x}")]
    BadOptionMagic(u64),
}

impl RequestHeader {
    /// Decodes a request header from exactly [`REQUEST_HEADER_LEN`] bytes.
    ///
    /// # Errors
    /// [`FrameError::BadRequestMagic`] when the magic is wrong; the stream is then out of sync.
    pub fn decode(b: &[u8; REQUEST_HEADER_LEN]) -> Result<Self, FrameError> {
        let mut b = &b[..];
        let magic = b.get_u32();
        if magic != REQUEST_MAGIC {
            return Err(FrameError::BadRequestMagic(magic));
        }
        Ok(Self {
            flags: b.get_u16(),
            kind: b.get_u16(),
            cookie: b.get_u64(),
            offset: b.get_u64(),
            length: b.get_u32(),
        })
    }

    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u32(REQUEST_MAGIC);
        out.put_u16(self.flags);
        out.put_u16(self.kind);
        out.put_u64(self.cookie);
        out.put_u64(self.offset);
        out.put_u32(self.length);
    }
}

/// An option header sent by the client during haggling (16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub length: u32,
}

pub const OPTION_HEADER_LEN: usize = 16;

impl OptionHeader {
    /// # Errors
    /// [`FrameError::BadOptionMagic`] when the client did not send `IHAVEOPT`.
    pub fn decode(b: &[u8; OPTION_HEADER_LEN]) -> Result<Self, FrameError> {
        let mut b = &b[..];
        let magic = b.get_u64();
        if magic != IHAVEOPT {
            return Err(FrameError::BadOptionMagic(magic));
        }
        Ok(Self {
            option: b.get_u32(),
            length: b.get_u32(),
        })
    }

    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u64(IHAVEOPT);
        out.put_u32(self.option);
        out.put_u32(self.length);
    }
}

/// Appends one option reply.
pub fn put_option_reply(out: &mut BytesMut, option: u32, reply: u32, data: &[u8]) {
    out.put_u64(REPLY_MAGIC);
    out.put_u32(option);
    out.put_u32(reply);
    out.put_u32(data.len() as u32);
    out.put_slice(data);
}

/// Appends a simple reply header (the data of a successful READ follows separately).
pub fn put_simple_reply(out: &mut BytesMut, error: u32, cookie: u64) {
    out.put_u32(SIMPLE_REPLY_MAGIC);
    out.put_u32(error);
    out.put_u64(cookie);
}

/// Appends a structured reply chunk header; `length` is the payload that follows.
pub fn put_chunk_header(out: &mut BytesMut, flags: u16, kind: u16, cookie: u64, length: u32) {
    out.put_u32(STRUCTURED_REPLY_MAGIC);
    out.put_u16(flags);
    out.put_u16(kind);
    out.put_u64(cookie);
    out.put_u32(length);
}

/// Appends a complete `NBD_REPLY_TYPE_ERROR` chunk with a human-readable message.
pub fn put_error_chunk(out: &mut BytesMut, cookie: u64, error: NbdError, message: &str) {
    let msg = truncate_utf8(message, 4096);
    put_chunk_header(
        out,
        chunk::FLAG_DONE,
        chunk::ERROR,
        cookie,
        6 + msg.len() as u32,
    );
    out.put_u32(error.code());
    out.put_u16(msg.len() as u16);
    out.put_slice(msg.as_bytes());
}

/// The longest prefix of `s` within `max` bytes that ends on a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A structured reply chunk as a client sees it; used by tests and the fuzz harness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub payload: Bytes,
}

/// Reads a big-endian u32 length-prefixed string from an option payload.
pub fn take_string(b: &mut &[u8]) -> Option<String> {
    if b.remaining() < 4 {
        return None;
    }
    let len = b.get_u32() as usize;
    if b.remaining() < len {
        return None;
    }
    let s = std::str::from_utf8(&b[..len]).ok()?.to_owned();
    b.advance(len);
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn request_header_round_trips(flags: u16, kind: u16, cookie: u64, offset: u64, length: u32) {
            let h = RequestHeader { flags, kind, cookie, offset, length };
            let mut b = BytesMut::new();
            h.encode(&mut b);
            let arr: [u8; REQUEST_HEADER_LEN] = b[..].try_into().unwrap();
            prop_assert_eq!(RequestHeader::decode(&arr), Ok(h));
        }

        #[test]
        fn option_header_round_trips(option: u32, length: u32) {
            let h = OptionHeader { option, length };
            let mut b = BytesMut::new();
            h.encode(&mut b);
            let arr: [u8; OPTION_HEADER_LEN] = b[..].try_into().unwrap();
            prop_assert_eq!(OptionHeader::decode(&arr), Ok(h));
        }

        #[test]
        fn truncation_keeps_utf8(s: String, max in 0usize..64) {
            let t = truncate_utf8(&s, max);
            prop_assert!(t.len() <= max);
            prop_assert!(s.starts_with(t));
        }
    }

    #[test]
    fn request_header_wire_layout() {
        let h = RequestHeader {
            flags: 1,
            kind: cmd::WRITE,
            cookie: 0x0102030405060708,
            offset: 512,
            length: 4096,
        };
        let mut b = BytesMut::new();
        h.encode(&mut b);
        assert_eq!(
            &b[..],
            &[
                0x25, 0x60, 0x95, 0x13, 0, 1, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 2, 0,
                0, 0, 0x10, 0
            ]
        );
    }

    #[test]
    fn bad_magic_is_refused() {
        let mut arr = [0u8; REQUEST_HEADER_LEN];
        arr[0] = 0xde;
        assert!(matches!(
            RequestHeader::decode(&arr),
            Err(FrameError::BadRequestMagic(_))
        ));
        let arr = [0u8; OPTION_HEADER_LEN];
        assert_eq!(
            OptionHeader::decode(&arr),
            Err(FrameError::BadOptionMagic(0))
        );
    }

    #[test]
    fn error_chunk_layout() {
        let mut b = BytesMut::new();
        put_error_chunk(&mut b, 7, NbdError::Inval, "bad");
        assert_eq!(b.len(), 20 + 6 + 3);
        assert_eq!(&b[4..6], &chunk::FLAG_DONE.to_be_bytes());
        assert_eq!(&b[6..8], &chunk::ERROR.to_be_bytes());
        assert_eq!(&b[16..20], &9u32.to_be_bytes());
        assert_eq!(&b[20..24], &22u32.to_be_bytes());
    }

    #[test]
    fn io_errors_map_to_spec_values() {
        let e = |c| NbdError::from_io(&std::io::Error::from_raw_os_error(c));
        assert_eq!(e(libc::EDQUOT), NbdError::NoSpc);
        assert_eq!(e(libc::EFBIG), NbdError::NoSpc);
        assert_eq!(e(libc::EROFS), NbdError::Perm);
        assert_eq!(e(libc::ENXIO), NbdError::Io);
    }
}
