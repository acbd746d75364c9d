//! `nbd_options`: drives [`Negotiation`] with option sequences and checks every reply.
//!
//! Input layout (all numbers big-endian; a spent input reads as zeroes):
//!
//! ```text
//! byte 0   client flags: bit7 clear -> flags = bits0-1 (always valid);
//!          bit7 set -> flags = next u32 (may hold unknown bits, which must be refused)
//! byte 1   exports: bit0 add "zwei-ü" (12345 B); bit1 first read-only; bit2 second read-only;
//!          bit3 first is named "" instead of "disk"; bit4 first has no description
//! then     options until the input ends or the negotiation leaves haggling:
//!          sel: bits7-6 = 00/01 -> option = sel & 15, then u16 length, then that much data
//!                         10    -> option = next u32, then u16 length and data
//!                         11    -> option = sel & 15 with oversize data (discarded unread)
//! ```

use std::sync::Arc;

use bytes::BytesMut;
use nbd_server::export::{Export, ExportTable};
use nbd_server::handshake::{Negotiation, Session, Step, BASE_ALLOCATION_ID, MAX_OPTION_DATA};
use nbd_server::memory::MemoryDevice;
use nbd_server::proto::{self, info, opt, rep, tflags, BASE_ALLOCATION};

use crate::cursor::Cursor;
use crate::wire::{get_option_replies, get_u16, get_u32, get_u64, OptReply};

/// One export as the harness configured it.
struct Spec {
    name: &'static str,
    description: &'static str,
    read_only: bool,
    size: u64,
}

fn specs(cfg: u8) -> Vec<Spec> {
    let mut v = vec![Spec {
        name: if cfg & 8 != 0 { "" } else { "disk" },
        description: if cfg & 16 != 0 { "" } else { "the first disk" },
        read_only: cfg & 2 != 0,
        size: 65536,
    }];
    if cfg & 1 != 0 {
        v.push(Spec {
            name: "zwei-ü",
            description: "second",
            read_only: cfg & 4 != 0,
            size: 12345,
        });
    }
    v
}

/// What the client has negotiated so far, as the spec defines it.
#[derive(Default)]
struct Model {
    structured: bool,
    /// Export name of the last successful `SET_META_CONTEXT`, and whether it selected
    /// `base:allocation`.
    meta: Option<(String, bool)>,
}

pub fn run(data: &[u8]) {
    let mut c = Cursor::new(data);
    let fsel = c.u8();
    let client_flags = if fsel & 0x80 == 0 {
        u32::from(fsel & 3)
    } else {
        c.u32()
    };
    let specs = specs(c.u8());
    let mut table = ExportTable::new();
    for s in &specs {
        table.insert(Export {
            name: s.name.into(),
            description: s.description.into(),
            device: Arc::new(MemoryDevice::new(s.size as usize)),
            read_only: s.read_only,
        });
    }

    let mut neg = Negotiation::new();
    let known = proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES;
    match neg.client_flags(client_flags) {
        Ok(()) => assert_eq!(client_flags & !known, 0, "unknown client flags accepted"),
        Err(_) => {
            assert_ne!(client_flags & !known, 0, "known client flags refused");
            return;
        }
    }
    let no_zeroes = client_flags & proto::FLAG_C_NO_ZEROES != 0;
    let mut model = Model::default();
    let mut out = BytesMut::new();
    while !c.is_empty() {
        let sel = c.u8();
        out.clear();
        let (option, data, step) = match sel >> 6 {
            3 => {
                let option = u32::from(sel & 15);
                (option, None, neg.oversize(option, &mut out))
            }
            s => {
                let option = if s == 2 { c.u32() } else { u32::from(sel & 15) };
                let len = c.u16() as usize;
                let data = c.take(len);
                assert!(data.len() as u32 <= MAX_OPTION_DATA);
                (
                    option,
                    Some(data),
                    neg.handle(&table, option, data, &mut out),
                )
            }
        };
        let ctx = || format!("option {option}, data {data:02x?}, step {step:?}, out {out:02x?}");
        if let Err(e) = check(&specs, &mut model, no_zeroes, option, data, &step, &out) {
            panic!("{e}\n{}", ctx());
        }
        if !matches!(step, Step::Continue) {
            return;
        }
    }
}

fn check(
    specs: &[Spec],
    model: &mut Model,
    no_zeroes: bool,
    option: u32,
    data: Option<&[u8]>,
    step: &Step,
    out: &[u8],
) -> Result<(), String> {
    let spec = |name: &str| specs.iter().find(|s| s.name == name);
    if option == opt::EXPORT_NAME {
        return match step {
            Step::Drop(_) => {
                if !out.is_empty() {
                    return Err("EXPORT_NAME refused with a reply (must just close)".into());
                }
                if let Some(name) = data.and_then(|d| std::str::from_utf8(d).ok()) {
                    if spec(name).is_some() {
                        return Err("EXPORT_NAME of an existing export refused".into());
                    }
                }
                Ok(())
            }
            Step::Transmit(s) => {
                let name = std::str::from_utf8(data.ok_or("oversize EXPORT_NAME served")?)
                    .map_err(|_| "non-UTF-8 EXPORT_NAME served")?;
                let mut b = out;
                let size = get_u64(&mut b, "export size")?;
                let flags = get_u16(&mut b, "transmission flags")?;
                let pad = if no_zeroes { 0 } else { 124 };
                if b.len() != pad || b.iter().any(|&x| x != 0) {
                    return Err(format!(
                        "EXPORT_NAME reply has {} trailing bytes, want {pad} zeroes",
                        b.len()
                    ));
                }
                if size != s.export.device.size() || flags != s.flags {
                    return Err("EXPORT_NAME reply disagrees with the session".into());
                }
                check_session(specs, model, name, s)
            }
            _ => Err("EXPORT_NAME neither served nor dropped".into()),
        };
    }
    if let Step::Drop(_) = step {
        return Err("connection dropped on an option other than EXPORT_NAME".into());
    }
    let mut b = out;
    let replies = get_option_replies(&mut b, option)?;
    if !b.is_empty() {
        return Err(format!("{} bytes after the final reply", b.len()));
    }
    let last = replies.last().unwrap();
    let only = |kind: u32| -> Result<(), String> {
        if replies.len() == 1 && last.kind == kind {
            Ok(())
        } else {
            Err(format!("want the single reply {kind:#x}, got {replies:?}"))
        }
    };
    if matches!(step, Step::Abort) != (option == opt::ABORT && data.is_some()) {
        return Err("ABORT and Step::Abort disagree".into());
    }
    if matches!(step, Step::Transmit(_)) && option != opt::GO {
        return Err("transmission entered on an option other than GO/EXPORT_NAME".into());
    }
    let Some(data) = data else {
        return only(rep::ERR_TOO_BIG);
    };
    match option {
        opt::ABORT => only(rep::ACK),
        opt::LIST => {
            if !data.is_empty() {
                return only(rep::ERR_INVALID);
            }
            if last.kind != rep::ACK || replies.len() != specs.len() + 1 {
                return Err(format!(
                    "LIST: want one SERVER per export and ACK: {replies:?}"
                ));
            }
            for r in &replies[..specs.len()] {
                let mut d = &r.data[..];
                let n = get_u32(&mut d, "LIST name length")? as usize;
                if r.kind != rep::SERVER || n > d.len() {
                    return Err(format!("LIST: bad SERVER reply {r:?}"));
                }
                let (name, desc) = d.split_at(n);
                if !specs
                    .iter()
                    .any(|s| s.name.as_bytes() == name && s.description.as_bytes() == desc)
                {
                    return Err(format!("LIST names an unknown export {r:?}"));
                }
            }
            Ok(())
        }
        opt::STRUCTURED_REPLY => {
            if !data.is_empty() {
                return only(rep::ERR_INVALID);
            }
            model.structured = true;
            only(rep::ACK)
        }
        opt::INFO | opt::GO => check_info(specs, model, option, data, &replies, step),
        opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
            check_meta(specs, model, option, data, &replies)
        }
        _ => only(rep::ERR_UNSUP),
    }
}

fn check_session(specs: &[Spec], model: &Model, name: &str, s: &Session) -> Result<(), String> {
    let spec = specs
        .iter()
        .find(|x| x.name == name)
        .ok_or("transmission on an unknown export")?;
    let f = s.flags;
    let known = tflags::HAS_FLAGS
        | tflags::READ_ONLY
        | tflags::SEND_FLUSH
        | tflags::SEND_FUA
        | tflags::ROTATIONAL
        | tflags::SEND_TRIM
        | tflags::SEND_WRITE_ZEROES
        | tflags::SEND_DF
        | tflags::CAN_MULTI_CONN
        | tflags::SEND_CACHE
        | tflags::SEND_FAST_ZERO;
    let write_flags = tflags::SEND_TRIM | tflags::SEND_WRITE_ZEROES | tflags::SEND_FAST_ZERO;
    let want_base = model.structured
        && model
            .meta
            .as_ref()
            .is_some_and(|(n, sel)| n == name && *sel);
    let problems = [
        (f & tflags::HAS_FLAGS == 0, "HAS_FLAGS clear"),
        (f & !known != 0, "unknown transmission flags"),
        (
            (f & tflags::SEND_DF != 0) != model.structured,
            "SEND_DF without structured replies or missing with them",
        ),
        (
            s.structured != model.structured,
            "session.structured disagrees with the negotiation",
        ),
        (
            (f & tflags::READ_ONLY != 0) != spec.read_only,
            "READ_ONLY disagrees with the export",
        ),
        (
            spec.read_only && f & write_flags != 0,
            "write commands advertised on a read-only export",
        ),
        (
            f & tflags::SEND_FAST_ZERO != 0 && f & tflags::SEND_WRITE_ZEROES == 0,
            "FAST_ZERO without WRITE_ZEROES",
        ),
        (
            s.base_allocation != want_base,
            "base:allocation selection disagrees with SET_META_CONTEXT",
        ),
        (
            s.export.name != name || s.export.device.size() != spec.size,
            "session serves another export",
        ),
    ];
    match problems.iter().find(|p| p.0) {
        Some((_, why)) => Err(format!("session {s:?} (flags {f:#x}): {why}")),
        None => Ok(()),
    }
}

/// Parses an INFO/GO payload the way the spec defines it (`None` when malformed).
fn parse_info(data: &[u8]) -> Option<(String, Vec<u16>)> {
    let mut b = data;
    let n = get_u32(&mut b, "").ok()? as usize;
    let name = std::str::from_utf8(b.get(..n)?).ok()?.to_owned();
    b = &b[n..];
    let k = get_u16(&mut b, "").ok()? as usize;
    if b.len() != 2 * k || name.len() > 4096 || name.contains('\0') {
        return None;
    }
    let items = b
        .chunks(2)
        .map(|x| u16::from_be_bytes([x[0], x[1]]))
        .collect();
    Some((name, items))
}

fn check_info(
    specs: &[Spec],
    model: &Model,
    option: u32,
    data: &[u8],
    replies: &[OptReply],
    step: &Step,
) -> Result<(), String> {
    let last = replies.last().unwrap();
    let Some((name, items)) = parse_info(data) else {
        return if replies.len() == 1 && last.kind == rep::ERR_INVALID {
            Ok(())
        } else {
            Err(format!(
                "malformed INFO/GO not refused as invalid: {replies:?}"
            ))
        };
    };
    let Some(spec) = specs.iter().find(|s| s.name == name) else {
        return if replies.len() == 1 && last.kind == rep::ERR_UNKNOWN {
            Ok(())
        } else {
            Err(format!("INFO/GO of unknown export {name:?}: {replies:?}"))
        };
    };
    if last.kind != rep::ACK {
        return Err(format!(
            "INFO/GO of existing export {name:?} refused: {replies:?}"
        ));
    }
    let mut export_flags = None;
    for r in &replies[..replies.len() - 1] {
        let mut d = &r.data[..];
        let item = get_u16(&mut d, "info type")?;
        if r.kind != rep::INFO {
            return Err(format!("non-INFO reply before the ACK: {r:?}"));
        }
        match item {
            info::EXPORT => {
                let size = get_u64(&mut d, "INFO_EXPORT size")?;
                let flags = get_u16(&mut d, "INFO_EXPORT flags")?;
                if !d.is_empty() || size != spec.size || export_flags.replace(flags).is_some() {
                    return Err(format!("bad or repeated INFO_EXPORT {r:?}"));
                }
            }
            info::BLOCK_SIZE => {
                let min = get_u32(&mut d, "min block")?;
                let pref = get_u32(&mut d, "preferred block")?;
                let max = get_u32(&mut d, "max block")?;
                let ok = d.is_empty()
                    && min.is_power_of_two()
                    && min <= 65536
                    && pref.is_power_of_two()
                    && pref >= min.max(512)
                    && max >= pref;
                if !ok {
                    return Err(format!("bad INFO_BLOCK_SIZE {min}/{pref}/{max}"));
                }
            }
            info::NAME => {
                if !items.contains(&info::NAME) || d != spec.name.as_bytes() {
                    return Err(format!("bad or unrequested INFO_NAME {r:?}"));
                }
            }
            info::DESCRIPTION => {
                if !items.contains(&info::DESCRIPTION) || d != spec.description.as_bytes() {
                    return Err(format!("bad or unrequested INFO_DESCRIPTION {r:?}"));
                }
            }
            _ => return Err(format!("unknown info type {item}")),
        }
    }
    let flags = export_flags.ok_or("INFO/GO acknowledged without INFO_EXPORT")?;
    match step {
        Step::Transmit(s) if option == opt::GO => {
            if s.flags != flags {
                return Err(format!(
                    "INFO_EXPORT flags {flags:#x} but session flags {:#x}",
                    s.flags
                ));
            }
            check_session(specs, model, &name, s)
        }
        Step::Continue if option == opt::INFO => Ok(()),
        _ => Err("GO acknowledged without transmission, or INFO entered it".into()),
    }
}

/// Parses a LIST/SET_META_CONTEXT payload (`None` when malformed).
fn parse_meta(data: &[u8]) -> Option<(String, Vec<String>)> {
    let mut b = data;
    let string = |b: &mut &[u8]| -> Option<String> {
        let n = get_u32(b, "").ok()? as usize;
        let s = std::str::from_utf8(b.get(..n)?).ok()?.to_owned();
        *b = &b[n..];
        (s.len() <= 4096 && !s.contains('\0')).then_some(s)
    };
    let name = string(&mut b)?;
    let n = get_u32(&mut b, "").ok()?;
    let mut queries = Vec::new();
    for _ in 0..n {
        queries.push(string(&mut b)?);
    }
    b.is_empty().then_some((name, queries))
}

fn check_meta(
    specs: &[Spec],
    model: &mut Model,
    option: u32,
    data: &[u8],
    replies: &[OptReply],
) -> Result<(), String> {
    let last = replies.last().unwrap();
    let refused = |kind: u32, why: &str| {
        if replies.len() == 1 && last.kind == kind {
            Ok(())
        } else {
            Err(format!("{why}: want {kind:#x}, got {replies:?}"))
        }
    };
    if !model.structured {
        return refused(rep::ERR_INVALID, "meta context before structured replies");
    }
    let Some((name, queries)) = parse_meta(data) else {
        return refused(rep::ERR_INVALID, "malformed meta context request");
    };
    if !specs.iter().any(|s| s.name == name) {
        return refused(rep::ERR_UNKNOWN, "meta context of an unknown export");
    }
    if queries.iter().any(|q| !q.contains(':')) {
        return refused(rep::ERR_INVALID, "query without a namespace");
    }
    if last.kind != rep::ACK {
        return Err(format!("valid meta context request refused: {replies:?}"));
    }
    let listing = option == opt::LIST_META_CONTEXT;
    let matches = |q: &String| q == BASE_ALLOCATION || (listing && q == "base:");
    let selected = queries.iter().any(matches) || (listing && queries.is_empty());
    let contexts = &replies[..replies.len() - 1];
    if contexts.len() != usize::from(selected) {
        return Err(format!(
            "want {} META_CONTEXT replies: {replies:?}",
            usize::from(selected)
        ));
    }
    if let Some(r) = contexts.first() {
        let mut d = &r.data[..];
        let id = get_u32(&mut d, "context id")?;
        let want_id = if listing { 0 } else { BASE_ALLOCATION_ID };
        if r.kind != rep::META_CONTEXT || id != want_id || d != BASE_ALLOCATION.as_bytes() {
            return Err(format!("bad META_CONTEXT reply {r:?}"));
        }
    }
    if !listing {
        model.meta = Some((name, selected));
    }
    Ok(())
}
