//! The client's side of the wire: what a client sends, and strict parsers for what the server
//! answers. Parsers return `Err(description)` on anything malformed; the targets turn that into a
//! panic with the context attached.

use nbd_server::proto::{self, rep};

pub fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// An option as the client sends it: `IHAVEOPT`, option, length, data.
pub fn put_option(out: &mut Vec<u8>, option: u32, data: &[u8]) {
    put_u64(out, proto::IHAVEOPT);
    put_u32(out, option);
    put_u32(out, data.len() as u32);
    out.extend_from_slice(data);
}

/// The data of `NBD_OPT_INFO` / `NBD_OPT_GO`.
pub fn info_data(name: &str, items: &[u16]) -> Vec<u8> {
    let mut d = Vec::new();
    put_u32(&mut d, name.len() as u32);
    d.extend_from_slice(name.as_bytes());
    put_u16(&mut d, items.len() as u16);
    for i in items {
        put_u16(&mut d, *i);
    }
    d
}

/// The data of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
pub fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut d = Vec::new();
    put_u32(&mut d, name.len() as u32);
    d.extend_from_slice(name.as_bytes());
    put_u32(&mut d, queries.len() as u32);
    for q in queries {
        put_u32(&mut d, q.len() as u32);
        d.extend_from_slice(q.as_bytes());
    }
    d
}

/// A transmission request header (the WRITE payload, if any, follows separately).
pub fn put_request(out: &mut Vec<u8>, flags: u16, kind: u16, cookie: u64, offset: u64, len: u32) {
    put_u32(out, proto::REQUEST_MAGIC);
    put_u16(out, flags);
    put_u16(out, kind);
    put_u64(out, cookie);
    put_u64(out, offset);
    put_u32(out, len);
}

/// Consumes `n` bytes of `b`.
pub fn take<'a>(b: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8], String> {
    if b.len() < n {
        return Err(format!("{what}: need {n} bytes, {} left", b.len()));
    }
    let (head, tail) = b.split_at(n);
    *b = tail;
    Ok(head)
}

pub fn get_u16(b: &mut &[u8], what: &str) -> Result<u16, String> {
    Ok(u16::from_be_bytes(take(b, 2, what)?.try_into().unwrap()))
}

pub fn get_u32(b: &mut &[u8], what: &str) -> Result<u32, String> {
    Ok(u32::from_be_bytes(take(b, 4, what)?.try_into().unwrap()))
}

pub fn get_u64(b: &mut &[u8], what: &str) -> Result<u64, String> {
    Ok(u64::from_be_bytes(take(b, 8, what)?.try_into().unwrap()))
}

/// One option reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptReply {
    pub option: u32,
    pub kind: u32,
    pub data: Vec<u8>,
}

impl OptReply {
    /// `ACK` or an error: the last reply to an option.
    pub fn is_final(&self) -> bool {
        self.kind == rep::ACK || self.is_error()
    }

    pub fn is_error(&self) -> bool {
        self.kind & (1 << 31) != 0
    }
}

/// Reads one option reply and checks its framing.
pub fn get_option_reply(b: &mut &[u8]) -> Result<OptReply, String> {
    let magic = get_u64(b, "option reply magic")?;
    if magic != proto::REPLY_MAGIC {
        return Err(format!("option reply magic {magic:#x}"));
    }
    let option = get_u32(b, "option reply option")?;
    let kind = get_u32(b, "option reply type")?;
    let len = get_u32(b, "option reply length")? as usize;
    let data = take(b, len, "option reply data")?.to_vec();
    Ok(OptReply { option, kind, data })
}

/// Reads the replies to one option up to and including the final one, checking what holds for
/// every option: each echoes `option`, only the last is final, `ACK` carries no data, errors carry
/// a known code and a UTF-8 message of at most 4096 bytes, non-final replies are of a known type.
pub fn get_option_replies(b: &mut &[u8], option: u32) -> Result<Vec<OptReply>, String> {
    let mut v = Vec::new();
    loop {
        let r = get_option_reply(b)?;
        if r.option != option {
            return Err(format!("reply for option {} to option {option}", r.option));
        }
        if r.kind == rep::ACK && !r.data.is_empty() {
            return Err("ACK with data".into());
        }
        if r.is_error() {
            let known = rep::ERR_UNSUP..=rep::ERR_TOO_BIG;
            if !known.contains(&r.kind) {
                return Err(format!("unknown error reply {:#x}", r.kind));
            }
            if r.data.len() > 4096 || std::str::from_utf8(&r.data).is_err() {
                return Err("error message not UTF-8 or longer than 4096 bytes".into());
            }
        } else if !matches!(
            r.kind,
            rep::ACK | rep::SERVER | rep::INFO | rep::META_CONTEXT
        ) {
            return Err(format!("unknown reply type {:#x}", r.kind));
        }
        let last = r.is_final();
        v.push(r);
        if last {
            return Ok(v);
        }
    }
}

/// Reads the server's greeting: magic, `IHAVEOPT`, handshake flags.
pub fn get_greeting(b: &mut &[u8]) -> Result<u16, String> {
    if get_u64(b, "greeting")? != proto::NBDMAGIC || get_u64(b, "greeting")? != proto::IHAVEOPT {
        return Err("bad greeting magic".into());
    }
    get_u16(b, "handshake flags")
}
