//! Transmission-phase request checking: a request header in, a command to run or an error
//! reply out. Pure functions; `server` does the I/O.

use crate::device::{BlockSizes, Capabilities};
use crate::proto::{cflags, cmd, NbdError, RequestHeader, MAX_PAYLOAD};

/// What a session allows, fixed at the end of the handshake.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub size: u64,
    pub caps: Capabilities,
    pub sizes: BlockSizes,
    pub read_only: bool,
    pub structured: bool,
    pub base_allocation: bool,
}

/// A checked request, ready for the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Flush,
    Trim {
        offset: u64,
        len: u32,
        fua: bool,
    },
    WriteZeroes {
        offset: u64,
        len: u32,
        no_hole: bool,
        fast: bool,
        fua: bool,
    },
    Cache {
        offset: u64,
        len: u32,
    },
    BlockStatus {
        offset: u64,
        len: u32,
        req_one: bool,
    },
    Disconnect,
}

/// A refused request: the error to reply with, and how many payload bytes to discard first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub error: NbdError,
    pub discard: u32,
    pub message: String,
}

/// Checks a request against the session; `Ok` commands are within bounds and allowed.
///
/// # Errors
/// A [`Rejection`] naming the NBD error for the reply.
pub fn check(h: &RequestHeader, l: &Limits) -> Result<Command, Rejection> {
    let discard = if h.kind == cmd::WRITE { h.length } else { 0 };
    let reject = |error, message: String| Rejection {
        error,
        discard,
        message,
    };
    let allowed = allowed_flags(h.kind, l);
    if h.flags & !allowed != 0 {
        return Err(reject(
            NbdError::Inval,
            format!(
                "flags {:#x} not valid for command {}",
                h.flags & !allowed,
                h.kind
            ),
        ));
    }
    let fua = h.flags & cflags::FUA != 0;
    let writes = matches!(h.kind, cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES);
    if writes && l.read_only {
        return Err(reject(NbdError::Perm, "the export is read-only".into()));
    }
    let supported = match h.kind {
        cmd::READ | cmd::WRITE | cmd::DISC => true,
        cmd::FLUSH => l.caps.flush,
        cmd::TRIM => l.caps.trim,
        cmd::CACHE => l.caps.cache,
        cmd::WRITE_ZEROES => l.caps.write_zeroes,
        cmd::BLOCK_STATUS => l.base_allocation,
        _ => false,
    };
    if !supported {
        let what = if h.kind == cmd::BLOCK_STATUS {
            "without a metadata context"
        } else {
            "unsupported"
        };
        return Err(reject(
            NbdError::Inval,
            format!("command {} {what}", h.kind),
        ));
    }
    if matches!(h.kind, cmd::DISC | cmd::FLUSH) {
        // Offset and length are reserved; tolerate non-zero values as other servers do.
        return Ok(if h.kind == cmd::DISC {
            Command::Disconnect
        } else {
            Command::Flush
        });
    }
    let payload = matches!(h.kind, cmd::READ | cmd::WRITE);
    if payload && h.length > MAX_PAYLOAD.min(l.sizes.maximum) {
        let error = if h.kind == cmd::READ {
            NbdError::Overflow
        } else {
            NbdError::Inval
        };
        return Err(reject(
            error,
            format!(
                "length {} above the maximum payload {}",
                h.length, l.sizes.maximum
            ),
        ));
    }
    let end = h.offset.checked_add(u64::from(h.length));
    if end.is_none_or(|e| e > l.size) {
        let error = if matches!(h.kind, cmd::WRITE | cmd::WRITE_ZEROES) {
            NbdError::NoSpc
        } else {
            NbdError::Inval
        };
        return Err(reject(
            error,
            format!(
                "range {}+{} beyond the end ({})",
                h.offset, h.length, l.size
            ),
        ));
    }
    let align = u64::from(l.sizes.minimum.max(1));
    if h.kind != cmd::BLOCK_STATUS
        && (!h.offset.is_multiple_of(align) || !u64::from(h.length).is_multiple_of(align))
    {
        return Err(reject(
            NbdError::Inval,
            format!("request not aligned to {align} bytes"),
        ));
    }
    let (offset, len) = (h.offset, h.length);
    Ok(match h.kind {
        cmd::READ => Command::Read { offset, len },
        cmd::WRITE => Command::Write { offset, len, fua },
        cmd::TRIM => Command::Trim { offset, len, fua },
        cmd::CACHE => Command::Cache { offset, len },
        cmd::WRITE_ZEROES => Command::WriteZeroes {
            offset,
            len,
            no_hole: h.flags & cflags::NO_HOLE != 0,
            fast: h.flags & cflags::FAST_ZERO != 0,
            fua,
        },
        _ => {
            if len == 0 {
                return Err(reject(
                    NbdError::Inval,
                    "block status of an empty range".into(),
                ));
            }
            Command::BlockStatus {
                offset,
                len,
                req_one: h.flags & cflags::REQ_ONE != 0,
            }
        }
    })
}

/// Command flags valid for a command on this session. FUA is accepted on every command when
/// advertised, since clients are known to set it everywhere.
fn allowed_flags(kind: u16, l: &Limits) -> u16 {
    let fua = if l.caps.fua { cflags::FUA } else { 0 };
    fua | match kind {
        cmd::READ if l.structured => cflags::DF,
        cmd::WRITE_ZEROES if l.caps.fast_zero => cflags::NO_HOLE | cflags::FAST_ZERO,
        cmd::WRITE_ZEROES => cflags::NO_HOLE,
        cmd::BLOCK_STATUS => cflags::REQ_ONE,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            size: 1 << 20,
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

    fn req(kind: u16, flags: u16, offset: u64, length: u32) -> RequestHeader {
        RequestHeader {
            flags,
            kind,
            cookie: 1,
            offset,
            length,
        }
    }

    fn err(h: RequestHeader, l: &Limits) -> NbdError {
        check(&h, l).unwrap_err().error
    }

    #[test]
    fn in_bounds_requests_pass() {
        let l = limits();
        assert_eq!(
            check(&req(cmd::READ, 0, 0, 4096), &l),
            Ok(Command::Read {
                offset: 0,
                len: 4096
            })
        );
        assert_eq!(
            check(&req(cmd::WRITE, cflags::FUA, (1 << 20) - 1, 1), &l),
            Ok(Command::Write {
                offset: (1 << 20) - 1,
                len: 1,
                fua: true
            })
        );
        assert_eq!(
            check(
                &req(
                    cmd::WRITE_ZEROES,
                    cflags::NO_HOLE | cflags::FAST_ZERO,
                    0,
                    1 << 20
                ),
                &l
            ),
            Ok(Command::WriteZeroes {
                offset: 0,
                len: 1 << 20,
                no_hole: true,
                fast: true,
                fua: false
            })
        );
        assert_eq!(
            check(&req(cmd::FLUSH, cflags::FUA, 0, 0), &l),
            Ok(Command::Flush)
        );
        assert_eq!(check(&req(cmd::DISC, 0, 0, 0), &l), Ok(Command::Disconnect));
    }

    #[test]
    fn out_of_bounds_is_enospc_for_writes_einval_otherwise() {
        let l = limits();
        assert_eq!(err(req(cmd::WRITE, 0, 1 << 20, 1), &l), NbdError::NoSpc);
        assert_eq!(
            err(req(cmd::WRITE_ZEROES, 0, u64::MAX, 2), &l),
            NbdError::NoSpc
        );
        assert_eq!(
            err(req(cmd::READ, 0, (1 << 20) - 1, 2), &l),
            NbdError::Inval
        );
        assert_eq!(err(req(cmd::TRIM, 0, u64::MAX, 1), &l), NbdError::Inval);
        assert_eq!(
            err(req(cmd::BLOCK_STATUS, 0, 1 << 20, 1), &l),
            NbdError::Inval
        );
    }

    #[test]
    fn oversize_payloads_are_refused_and_write_payload_discarded() {
        let l = limits();
        assert_eq!(
            err(req(cmd::READ, 0, 0, MAX_PAYLOAD + 1), &l),
            NbdError::Overflow
        );
        let r = check(&req(cmd::WRITE, 0, 0, MAX_PAYLOAD + 1), &l).unwrap_err();
        assert_eq!((r.error, r.discard), (NbdError::Inval, MAX_PAYLOAD + 1));
        // TRIM and WRITE_ZEROES carry no payload: large lengths are fine.
        let big = Limits { size: 1 << 40, ..l };
        assert!(check(&req(cmd::TRIM, 0, 0, u32::MAX), &big).is_ok());
    }

    #[test]
    fn read_only_refuses_writes_with_eperm() {
        let l = Limits {
            read_only: true,
            ..limits()
        };
        for k in [cmd::WRITE, cmd::TRIM, cmd::WRITE_ZEROES] {
            assert_eq!(err(req(k, 0, 0, 512), &l), NbdError::Perm);
        }
        assert_eq!(
            check(&req(cmd::WRITE, 0, 0, 512), &l).unwrap_err().discard,
            512
        );
        assert!(check(&req(cmd::READ, 0, 0, 512), &l).is_ok());
    }

    #[test]
    fn flags_must_fit_the_command_and_session() {
        let l = limits();
        assert_eq!(
            err(req(cmd::READ, cflags::NO_HOLE, 0, 1), &l),
            NbdError::Inval
        );
        assert_eq!(err(req(cmd::WRITE, 1 << 9, 0, 1), &l), NbdError::Inval);
        let simple = Limits {
            structured: false,
            ..l
        };
        assert_eq!(
            err(req(cmd::READ, cflags::DF, 0, 1), &simple),
            NbdError::Inval
        );
        assert!(check(&req(cmd::READ, cflags::DF, 0, 1), &l).is_ok());
        assert!(check(&req(cmd::BLOCK_STATUS, cflags::REQ_ONE, 0, 1), &l).is_ok());
    }

    #[test]
    fn unsupported_and_unknown_commands_are_einval() {
        let l = Limits {
            base_allocation: false,
            ..limits()
        };
        assert_eq!(err(req(cmd::BLOCK_STATUS, 0, 0, 1), &l), NbdError::Inval);
        assert_eq!(err(req(99, 0, 0, 1), &l), NbdError::Inval);
        assert_eq!(
            err(req(cmd::BLOCK_STATUS, 0, 0, 0), &limits()),
            NbdError::Inval
        );
    }

    #[test]
    fn alignment_follows_the_minimum_block_size() {
        let mut l = limits();
        l.sizes.minimum = 512;
        assert_eq!(err(req(cmd::READ, 0, 1, 512), &l), NbdError::Inval);
        assert_eq!(err(req(cmd::WRITE, 0, 0, 100), &l).clone(), NbdError::Inval);
        assert!(check(&req(cmd::READ, 0, 512, 1024), &l).is_ok());
    }
}
