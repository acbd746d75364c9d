//! The option-haggling phase as a sans-IO state machine: one option in, replies out.
//!
//! The caller reads the 16-byte option header and its data (refusing data above
//! [`MAX_OPTION_DATA`] with [`Negotiation::oversize`]), calls [`Negotiation::handle`], writes
//! what it appended to `out`, and acts on the returned [`Step`].

use bytes::{Buf, BufMut, BytesMut};

use crate::device::Capabilities;
use crate::export::{Export, ExportSource, Refusal};
use crate::proto::{self, info, opt, rep, tflags, BASE_ALLOCATION};

/// Option data larger than this is discarded unread and answered `NBD_REP_ERR_TOO_BIG`.
pub const MAX_OPTION_DATA: u32 = 64 * 1024;
/// Longest export name or query the server accepts (the spec's string limit).
const MAX_STRING: usize = 4096;
/// The metadata context id of `base:allocation` on a connection that selected it.
pub const BASE_ALLOCATION_ID: u32 = 1;

/// What the caller does after an option.
#[derive(Debug)]
pub enum Step {
    /// Read the next option.
    Continue,
    /// Write `out`, then close: the client aborted.
    Abort,
    /// Write `out`, then enter transmission.
    Transmit(Session),
    /// Close at once without writing (an `EXPORT_NAME` that cannot be served).
    Drop(String),
}

/// What the transmission phase needs from the negotiation.
#[derive(Debug, Clone)]
pub struct Session {
    pub export: Export,
    pub flags: u16,
    pub structured: bool,
    /// Whether `base:allocation` was selected (its id is [`BASE_ALLOCATION_ID`]).
    pub base_allocation: bool,
}

/// Per-connection negotiation state.
#[derive(Debug, Default)]
pub struct Negotiation {
    no_zeroes: bool,
    structured: bool,
    /// Export name given to `SET_META_CONTEXT`, with whether `base:allocation` was selected.
    meta: Option<(String, bool)>,
}

/// The handshake flags the server sends first.
pub const HANDSHAKE_FLAGS: u16 = proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES;

/// Transmission flags for a device on a connection with or without structured replies.
pub fn transmission_flags(caps: &Capabilities, read_only: bool, structured: bool) -> u16 {
    let mut f = tflags::HAS_FLAGS;
    let mut set = |cond: bool, bit: u16| {
        if cond {
            f |= bit;
        }
    };
    set(read_only, tflags::READ_ONLY);
    set(caps.flush, tflags::SEND_FLUSH);
    set(caps.fua, tflags::SEND_FUA);
    set(caps.rotational, tflags::ROTATIONAL);
    set(caps.trim && !read_only, tflags::SEND_TRIM);
    set(caps.write_zeroes && !read_only, tflags::SEND_WRITE_ZEROES);
    set(
        caps.write_zeroes && caps.fast_zero && !read_only,
        tflags::SEND_FAST_ZERO,
    );
    set(structured, tflags::SEND_DF);
    set(caps.multi_conn, tflags::CAN_MULTI_CONN);
    set(caps.cache, tflags::SEND_CACHE);
    f
}

/// A parsed `NBD_OPT_INFO` / `NBD_OPT_GO` payload.
struct InfoRequest {
    name: String,
    items: Vec<u16>,
}

/// A parsed `LIST_META_CONTEXT` / `SET_META_CONTEXT` payload.
struct MetaRequest {
    name: String,
    queries: Vec<String>,
}

impl Negotiation {
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the client flags sent after the greeting.
    ///
    /// # Errors
    /// Unknown flags: the spec requires the server to drop the connection.
    pub fn client_flags(&mut self, flags: u32) -> Result<(), String> {
        let known = proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES;
        if flags & !known != 0 {
            return Err(format!("unknown client flags {flags:#x}"));
        }
        self.no_zeroes = flags & proto::FLAG_C_NO_ZEROES != 0;
        Ok(())
    }

    /// Answers an option whose data exceeded [`MAX_OPTION_DATA`] (the caller discarded it).
    pub fn oversize(&mut self, option: u32, out: &mut BytesMut) -> Step {
        if option == opt::EXPORT_NAME {
            return Step::Drop("export name longer than the server accepts".into());
        }
        let msg = format!("option data above {MAX_OPTION_DATA} bytes");
        proto::put_option_reply(out, option, rep::ERR_TOO_BIG, msg.as_bytes());
        Step::Continue
    }

    /// Handles one option with its complete data, appending replies to `out`.
    pub fn handle(
        &mut self,
        exports: &dyn ExportSource,
        option: u32,
        data: &[u8],
        out: &mut BytesMut,
    ) -> Step {
        match option {
            opt::EXPORT_NAME => self.export_name(exports, data, out),
            opt::ABORT => {
                proto::put_option_reply(out, option, rep::ACK, &[]);
                Step::Abort
            }
            opt::LIST => {
                if !data.is_empty() {
                    return invalid(out, option, "NBD_OPT_LIST carries no data");
                }
                for (name, desc) in exports.list() {
                    let mut d = BytesMut::with_capacity(4 + name.len() + desc.len());
                    d.put_u32(name.len() as u32);
                    d.put_slice(name.as_bytes());
                    d.put_slice(desc.as_bytes());
                    proto::put_option_reply(out, option, rep::SERVER, &d);
                }
                proto::put_option_reply(out, option, rep::ACK, &[]);
                Step::Continue
            }
            opt::INFO | opt::GO => self.info_or_go(exports, option, data, out),
            opt::STRUCTURED_REPLY => {
                if !data.is_empty() {
                    return invalid(out, option, "NBD_OPT_STRUCTURED_REPLY carries no data");
                }
                self.structured = true;
                proto::put_option_reply(out, option, rep::ACK, &[]);
                Step::Continue
            }
            opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
                self.meta_context(exports, option, data, out)
            }
            opt::STARTTLS => {
                proto::put_option_reply(
                    out,
                    option,
                    rep::ERR_UNSUP,
                    b"this server does not offer TLS",
                );
                Step::Continue
            }
            _ => {
                let msg = format!("option {option} is not supported");
                proto::put_option_reply(out, option, rep::ERR_UNSUP, msg.as_bytes());
                Step::Continue
            }
        }
    }

    fn export_name(&mut self, exports: &dyn ExportSource, data: &[u8], out: &mut BytesMut) -> Step {
        let Ok(name) = std::str::from_utf8(data) else {
            return Step::Drop("export name is not UTF-8".into());
        };
        match exports.open(name) {
            Ok(export) => {
                let session = self.session(export, name);
                out.put_u64(session.export.device.size());
                out.put_u16(session.flags);
                if !self.no_zeroes {
                    out.put_bytes(0, 124);
                }
                Step::Transmit(session)
            }
            Err(r) => Step::Drop(r.to_string()),
        }
    }

    fn session(&self, export: Export, name: &str) -> Session {
        let flags = transmission_flags(
            &export.device.capabilities(),
            export.read_only,
            self.structured,
        );
        let base_allocation = self.structured && matches!(&self.meta, Some((n, true)) if n == name);
        Session {
            export,
            flags,
            structured: self.structured,
            base_allocation,
        }
    }

    fn info_or_go(
        &mut self,
        exports: &dyn ExportSource,
        option: u32,
        data: &[u8],
        out: &mut BytesMut,
    ) -> Step {
        let Some(req) = parse_info(data) else {
            return invalid(out, option, "malformed NBD_OPT_INFO/GO data");
        };
        let export = match exports.open(&req.name) {
            Ok(e) => e,
            Err(r) => {
                let code = match r {
                    Refusal::Unknown(_) => rep::ERR_UNKNOWN,
                    Refusal::Policy(_) => rep::ERR_POLICY,
                };
                proto::put_option_reply(out, option, code, r.to_string().as_bytes());
                return Step::Continue;
            }
        };
        let session = self.session(export, &req.name);
        let dev = &session.export.device;
        let mut d = BytesMut::with_capacity(12);
        d.put_u16(info::EXPORT);
        d.put_u64(dev.size());
        d.put_u16(session.flags);
        proto::put_option_reply(out, option, rep::INFO, &d);
        let bs = dev.block_sizes();
        let mut d = BytesMut::with_capacity(14);
        d.put_u16(info::BLOCK_SIZE);
        d.put_u32(bs.minimum);
        d.put_u32(bs.preferred);
        d.put_u32(bs.maximum);
        proto::put_option_reply(out, option, rep::INFO, &d);
        if req.items.contains(&info::NAME) {
            let mut d = BytesMut::new();
            d.put_u16(info::NAME);
            d.put_slice(session.export.name.as_bytes());
            proto::put_option_reply(out, option, rep::INFO, &d);
        }
        if req.items.contains(&info::DESCRIPTION) && !session.export.description.is_empty() {
            let mut d = BytesMut::new();
            d.put_u16(info::DESCRIPTION);
            d.put_slice(proto::truncate_utf8(&session.export.description, MAX_STRING).as_bytes());
            proto::put_option_reply(out, option, rep::INFO, &d);
        }
        proto::put_option_reply(out, option, rep::ACK, &[]);
        if option == opt::GO {
            Step::Transmit(session)
        } else {
            Step::Continue
        }
    }

    fn meta_context(
        &mut self,
        exports: &dyn ExportSource,
        option: u32,
        data: &[u8],
        out: &mut BytesMut,
    ) -> Step {
        if !self.structured {
            return invalid(
                out,
                option,
                "negotiate structured replies before metadata contexts",
            );
        }
        let Some(req) = parse_meta(data) else {
            return invalid(out, option, "malformed metadata context request");
        };
        if let Err(r) = exports.open(&req.name) {
            proto::put_option_reply(out, option, rep::ERR_UNKNOWN, r.to_string().as_bytes());
            return Step::Continue;
        }
        let listing = option == opt::LIST_META_CONTEXT;
        let mut selected = false;
        for q in &req.queries {
            let Some((ns, leaf)) = q.split_once(':') else {
                return invalid(
                    out,
                    option,
                    "a metadata context query must start with a namespace",
                );
            };
            let matches = ns == "base" && (leaf == "allocation" || (listing && leaf.is_empty()));
            selected |= matches;
        }
        if listing && req.queries.is_empty() {
            selected = true;
        }
        if selected {
            let id = if listing { 0 } else { BASE_ALLOCATION_ID };
            let mut d = BytesMut::new();
            d.put_u32(id);
            d.put_slice(BASE_ALLOCATION.as_bytes());
            proto::put_option_reply(out, option, rep::META_CONTEXT, &d);
        }
        if !listing {
            self.meta = Some((req.name, selected));
        }
        proto::put_option_reply(out, option, rep::ACK, &[]);
        Step::Continue
    }
}

fn invalid(out: &mut BytesMut, option: u32, msg: &str) -> Step {
    proto::put_option_reply(out, option, rep::ERR_INVALID, msg.as_bytes());
    Step::Continue
}

fn take_name(b: &mut &[u8]) -> Option<String> {
    let s = proto::take_string(b)?;
    (s.len() <= MAX_STRING && !s.contains('\0')).then_some(s)
}

fn parse_info(mut b: &[u8]) -> Option<InfoRequest> {
    let name = take_name(&mut b)?;
    if b.remaining() < 2 {
        return None;
    }
    let n = b.get_u16() as usize;
    if b.remaining() != 2 * n {
        return None;
    }
    let items = (0..n).map(|_| b.get_u16()).collect();
    Some(InfoRequest { name, items })
}

fn parse_meta(mut b: &[u8]) -> Option<MetaRequest> {
    let name = take_name(&mut b)?;
    if b.remaining() < 4 {
        return None;
    }
    let n = b.get_u32() as usize;
    let mut queries = Vec::new();
    for _ in 0..n {
        queries.push(take_name(&mut b)?);
    }
    b.is_empty().then_some(MetaRequest { name, queries })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::ExportTable;
    use crate::memory::MemoryDevice;
    use std::sync::Arc;

    fn table() -> ExportTable {
        let mut t = ExportTable::new();
        t.insert(Export {
            name: "disk".into(),
            description: "a test disk".into(),
            device: Arc::new(MemoryDevice::new(1 << 20)),
            read_only: false,
        });
        t
    }

    /// Splits an option-reply stream into (option, type, data).
    fn replies(mut b: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
        let mut v = Vec::new();
        while !b.is_empty() {
            assert_eq!(b.get_u64(), proto::REPLY_MAGIC);
            let o = b.get_u32();
            let t = b.get_u32();
            let n = b.get_u32() as usize;
            v.push((o, t, b[..n].to_vec()));
            b.advance(n);
        }
        v
    }

    fn info_data(name: &str, items: &[u16]) -> Vec<u8> {
        let mut d = BytesMut::new();
        d.put_u32(name.len() as u32);
        d.put_slice(name.as_bytes());
        d.put_u16(items.len() as u16);
        for i in items {
            d.put_u16(*i);
        }
        d.to_vec()
    }

    fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
        let mut d = BytesMut::new();
        d.put_u32(name.len() as u32);
        d.put_slice(name.as_bytes());
        d.put_u32(queries.len() as u32);
        for q in queries {
            d.put_u32(q.len() as u32);
            d.put_slice(q.as_bytes());
        }
        d.to_vec()
    }

    #[test]
    fn unknown_client_flags_drop() {
        let mut n = Negotiation::new();
        assert!(n.client_flags(0x4).is_err());
        assert!(n.client_flags(0x3).is_ok());
    }

    #[test]
    fn list_names_every_export_then_acks() {
        let t = table();
        let mut out = BytesMut::new();
        assert!(matches!(
            Negotiation::new().handle(&t, opt::LIST, &[], &mut out),
            Step::Continue
        ));
        let r = replies(&out);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].1, rep::SERVER);
        assert_eq!(&r[0].2[..4], &4u32.to_be_bytes());
        assert_eq!(&r[0].2[4..8], b"disk");
        assert_eq!(&r[0].2[8..], b"a test disk");
        assert_eq!(r[1].1, rep::ACK);
    }

    #[test]
    fn go_sends_export_and_block_size_then_transmits() {
        let t = table();
        let mut n = Negotiation::new();
        let mut out = BytesMut::new();
        n.handle(&t, opt::STRUCTURED_REPLY, &[], &mut out);
        out.clear();
        let step = n.handle(&t, opt::GO, &info_data("disk", &[info::NAME]), &mut out);
        let Step::Transmit(s) = step else {
            panic!("no transmission")
        };
        assert!(s.structured);
        assert!(!s.base_allocation);
        assert_ne!(s.flags & tflags::SEND_DF, 0);
        let r = replies(&out);
        let types: Vec<u32> = r.iter().map(|x| x.1).collect();
        assert_eq!(types, vec![rep::INFO, rep::INFO, rep::INFO, rep::ACK]);
        assert_eq!(&r[0].2[..2], &info::EXPORT.to_be_bytes());
        assert_eq!(&r[0].2[2..10], &(1u64 << 20).to_be_bytes());
        assert_eq!(&r[1].2[..2], &info::BLOCK_SIZE.to_be_bytes());
        assert_eq!(&r[2].2[2..], b"disk");
    }

    #[test]
    fn info_on_unknown_export_is_err_unknown_and_keeps_going() {
        let t = table();
        let mut out = BytesMut::new();
        let step = Negotiation::new().handle(&t, opt::INFO, &info_data("nope", &[]), &mut out);
        assert!(matches!(step, Step::Continue));
        assert_eq!(replies(&out)[0].1, rep::ERR_UNKNOWN);
    }

    #[test]
    fn malformed_info_is_invalid() {
        let t = table();
        let mut out = BytesMut::new();
        let mut d = info_data("disk", &[1]);
        d.push(0);
        Negotiation::new().handle(&t, opt::GO, &d, &mut out);
        assert_eq!(replies(&out)[0].1, rep::ERR_INVALID);
        out.clear();
        Negotiation::new().handle(&t, opt::GO, &[0, 0, 0, 9, b'd'], &mut out);
        assert_eq!(replies(&out)[0].1, rep::ERR_INVALID);
    }

    #[test]
    fn export_name_without_zeroes_when_negotiated() {
        let t = table();
        for (flags, len) in [(1, 8 + 2 + 124), (3, 10)] {
            let mut n = Negotiation::new();
            n.client_flags(flags).unwrap();
            let mut out = BytesMut::new();
            assert!(matches!(
                n.handle(&t, opt::EXPORT_NAME, b"disk", &mut out),
                Step::Transmit(_)
            ));
            assert_eq!(out.len(), len);
        }
        let mut out = BytesMut::new();
        assert!(matches!(
            Negotiation::new().handle(&t, opt::EXPORT_NAME, b"x", &mut out),
            Step::Drop(_)
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn meta_context_needs_structured_replies() {
        let t = table();
        let mut out = BytesMut::new();
        Negotiation::new().handle(
            &t,
            opt::SET_META_CONTEXT,
            &meta_data("disk", &[BASE_ALLOCATION]),
            &mut out,
        );
        assert_eq!(replies(&out)[0].1, rep::ERR_INVALID);
    }

    #[test]
    fn set_meta_context_selects_base_allocation_for_that_export() {
        let t = table();
        let mut n = Negotiation::new();
        let mut out = BytesMut::new();
        n.handle(&t, opt::STRUCTURED_REPLY, &[], &mut out);
        out.clear();
        n.handle(
            &t,
            opt::SET_META_CONTEXT,
            &meta_data("disk", &["qemu:x", BASE_ALLOCATION]),
            &mut out,
        );
        let r = replies(&out);
        assert_eq!(r[0].1, rep::META_CONTEXT);
        assert_eq!(&r[0].2[..4], &BASE_ALLOCATION_ID.to_be_bytes());
        assert_eq!(&r[0].2[4..], BASE_ALLOCATION.as_bytes());
        assert_eq!(r[1].1, rep::ACK);
        out.clear();
        let Step::Transmit(s) = n.handle(&t, opt::GO, &info_data("disk", &[]), &mut out) else {
            panic!()
        };
        assert!(s.base_allocation);
    }

    #[test]
    fn list_meta_context_lists_with_id_zero() {
        let t = table();
        let mut n = Negotiation::new();
        let mut out = BytesMut::new();
        n.handle(&t, opt::STRUCTURED_REPLY, &[], &mut out);
        for queries in [&[][..], &["base:"][..]] {
            out.clear();
            n.handle(
                &t,
                opt::LIST_META_CONTEXT,
                &meta_data("disk", queries),
                &mut out,
            );
            let r = replies(&out);
            assert_eq!(r[0].1, rep::META_CONTEXT);
            assert_eq!(&r[0].2[..4], &0u32.to_be_bytes());
            assert_eq!(r[1].1, rep::ACK);
        }
        out.clear();
        n.handle(
            &t,
            opt::LIST_META_CONTEXT,
            &meta_data("disk", &["qemu:"]),
            &mut out,
        );
        assert_eq!(replies(&out).len(), 1);
        out.clear();
        n.handle(
            &t,
            opt::LIST_META_CONTEXT,
            &meta_data("disk", &["nocolon"]),
            &mut out,
        );
        assert_eq!(replies(&out)[0].1, rep::ERR_INVALID);
    }

    #[test]
    fn unknown_options_are_unsupported() {
        let t = table();
        let mut out = BytesMut::new();
        for o in [opt::STARTTLS, opt::EXTENDED_HEADERS, 4, 0xdead] {
            out.clear();
            assert!(matches!(
                Negotiation::new().handle(&t, o, &[1, 2], &mut out),
                Step::Continue
            ));
            assert_eq!(replies(&out)[0].1, rep::ERR_UNSUP);
        }
    }

    #[test]
    fn oversize_options_are_too_big() {
        let mut out = BytesMut::new();
        assert!(matches!(
            Negotiation::new().oversize(opt::GO, &mut out),
            Step::Continue
        ));
        assert_eq!(replies(&out)[0].1, rep::ERR_TOO_BIG);
        assert!(matches!(
            Negotiation::new().oversize(opt::EXPORT_NAME, &mut out),
            Step::Drop(_)
        ));
    }

    #[test]
    fn read_only_hides_write_flags() {
        let caps = crate::device::BlockDevice::capabilities(&MemoryDevice::new(4096));
        let f = transmission_flags(&caps, true, false);
        assert_ne!(f & tflags::READ_ONLY, 0);
        assert_eq!(
            f & (tflags::SEND_TRIM | tflags::SEND_WRITE_ZEROES | tflags::SEND_DF),
            0
        );
    }
}
