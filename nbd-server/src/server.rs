//! Tokio glue: listeners, the handshake over a socket, and the pipelined transmission loop.
//!
//! Each connection has a reader (this task) that decodes requests and spawns one task per
//! request, and a writer task that sends replies as they complete, in any order. In-flight work
//! per connection is bounded by request count and by payload bytes.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::device::{BlockDevice, Extent, ZeroFlags};
use crate::export::ExportSource;
use crate::handshake::{self, Negotiation, Session, Step, BASE_ALLOCATION_ID};
use crate::proto::{self, chunk, NbdError, OptionHeader, RequestHeader, MAX_PAYLOAD};
use crate::transmission::{self, Command, Limits};

/// Requests one connection may have in flight before the server stops reading.
pub const MAX_IN_FLIGHT: usize = 128;
/// Payload bytes (reads and writes) one connection may have in flight, in KiB units.
const IN_FLIGHT_KIB: u32 = 2 * (MAX_PAYLOAD >> 10) + 1024;
/// At most this many extents go in one BLOCK_STATUS reply.
const MAX_EXTENTS: usize = 1024;
/// A client must finish option haggling within this time.
const HANDSHAKE_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);
/// After shutdown, connections get this long to finish in-flight requests before they are cut.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a connection ended other than by the client's choice.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// A stop signal shared by listeners and connections.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// A signal and the sender that fires it.
    pub fn new() -> (watch::Sender<bool>, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (tx, Shutdown(rx))
    }

    async fn wait(&mut self) {
        // An error means the sender is gone, which also means stop.
        let _ = self.0.wait_for(|s| *s).await;
    }
}

/// Where a server listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

/// A bound listener, ready to serve.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Binds the endpoint; a stale Unix socket file is replaced.
    pub async fn bind(ep: &Endpoint) -> io::Result<Listener> {
        match ep {
            Endpoint::Tcp(a) => Ok(Listener::Tcp(TcpListener::bind(a).await?)),
            Endpoint::Unix(p) => {
                remove_stale_socket(p)?;
                Ok(Listener::Unix(UnixListener::bind(p)?, p.clone()))
            }
        }
    }

    /// A human-readable address: `nbd://HOST:PORT` or `nbd+unix:///?socket=PATH`.
    pub fn uri(&self, export: &str) -> String {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => format!("nbd://{a}/{export}"),
                Err(_) => "nbd://?".into(),
            },
            Listener::Unix(_, p) => {
                let abs = std::path::absolute(p).unwrap_or_else(|_| p.clone());
                format!("nbd+unix:///{export}?socket={}", abs.display())
            }
        }
    }

    /// Accepts and serves connections until `shutdown` fires, then lets open connections
    /// finish their in-flight requests and closes them.
    pub async fn serve(self, exports: Arc<dyn ExportSource>, mut shutdown: Shutdown) {
        let mut conns = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.wait() => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
                a = self.accept() => a,
            };
            match accepted {
                Ok((r, w, peer)) => {
                    let exports = exports.clone();
                    let shutdown = shutdown.clone();
                    conns.spawn(async move {
                        debug!(%peer, "client connected");
                        match serve_connection(r, w, exports, shutdown).await {
                            Ok(()) => debug!(%peer, "client disconnected"),
                            Err(e) => info!(%peer, "connection ended: {e}"),
                        }
                    });
                }
                Err(e) => {
                    warn!("accept failed: {e}");
                    // EMFILE and friends: back off briefly instead of spinning.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                "{} connection(s) still busy after {SHUTDOWN_GRACE:?}; closing them",
                conns.len()
            );
            conns.shutdown().await;
        }
        if let Listener::Unix(_, p) = &self {
            let _ = std::fs::remove_file(p);
        }
    }

    async fn accept(&self) -> io::Result<(BoxRead, BoxWrite, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, a) = l.accept().await?;
                s.set_nodelay(true)?;
                let (r, w) = s.into_split();
                Ok((Box::new(r), Box::new(w), a.to_string()))
            }
            Listener::Unix(l, _) => {
                let (s, _) = l.accept().await?;
                let (r, w) = s.into_split();
                Ok((Box::new(r), Box::new(w), "unix".into()))
            }
        }
    }
}

type BoxRead = Box<dyn AsyncRead + Unpin + Send>;
type BoxWrite = Box<dyn AsyncWrite + Unpin + Send>;

fn remove_stale_socket(p: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(p).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use", p.display()),
                ));
            }
            std::fs::remove_file(p)
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", p.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Runs one client connection to the end: handshake, then transmission.
///
/// # Errors
/// I/O failures and protocol violations that forced a hard disconnect.
pub async fn serve_connection<R, W>(
    reader: R,
    writer: W,
    exports: Arc<dyn ExportSource>,
    shutdown: Shutdown,
) -> Result<(), ConnError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let mut writer = BufWriter::with_capacity(64 * 1024, writer);
    let haggling = negotiate(&mut reader, &mut writer, exports.as_ref());
    let Some(session) = tokio::time::timeout(HANDSHAKE_LIMIT, haggling)
        .await
        .map_err(|_| {
            ConnError::Protocol(format!("handshake not finished within {HANDSHAKE_LIMIT:?}"))
        })??
    else {
        return Ok(());
    };
    debug!(export = %session.export.name, flags = format!("{:#x}", session.flags), "transmission");
    transmit(reader, writer, session, shutdown).await
}

/// The handshake; `None` when the client ended it without choosing an export.
async fn negotiate<R, W>(
    r: &mut R,
    w: &mut W,
    exports: &dyn ExportSource,
) -> Result<Option<Session>, ConnError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut out = BytesMut::with_capacity(256);
    out.put_u64(proto::NBDMAGIC);
    out.put_u64(proto::IHAVEOPT);
    out.put_u16(handshake::HANDSHAKE_FLAGS);
    w.write_all(&out).await?;
    w.flush().await?;
    let mut neg = Negotiation::new();
    neg.client_flags(r.read_u32().await?)
        .map_err(ConnError::Protocol)?;
    loop {
        let mut hdr = [0u8; proto::OPTION_HEADER_LEN];
        match r.read_exact(&mut hdr).await {
            Ok(_) => {}
            // A client may close during haggling (e.g. after ABORT without waiting).
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let h = OptionHeader::decode(&hdr).map_err(|e| ConnError::Protocol(e.to_string()))?;
        out.clear();
        let step = if h.length > handshake::MAX_OPTION_DATA {
            discard(r, u64::from(h.length)).await?;
            neg.oversize(h.option, &mut out)
        } else {
            let mut data = vec![0u8; h.length as usize];
            r.read_exact(&mut data).await?;
            neg.handle(exports, h.option, &data, &mut out)
        };
        w.write_all(&out).await?;
        w.flush().await?;
        match step {
            Step::Continue => {}
            Step::Abort => return Ok(None),
            Step::Drop(why) => return Err(ConnError::Protocol(why)),
            Step::Transmit(s) => return Ok(Some(s)),
        }
    }
}

async fn discard<R: AsyncRead + Unpin>(r: &mut R, n: u64) -> io::Result<()> {
    let copied = tokio::io::copy(&mut r.take(n), &mut tokio::io::sink()).await?;
    if copied < n {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// A reply ready to be written: a header and an optional payload sent without copying.
struct Reply {
    head: BytesMut,
    data: Option<Bytes>,
    /// The request's in-flight budget, released only once the reply is written: a queued
    /// READ reply still holds its data.
    permits: Option<Permits>,
}

/// One request slot and its payload budget.
type Permits = (OwnedSemaphorePermit, OwnedSemaphorePermit);

async fn transmit<R, W>(mut r: R, w: W, s: Session, mut shutdown: Shutdown) -> Result<(), ConnError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let dev = s.export.device.clone();
    let limits = Limits {
        size: dev.size(),
        caps: dev.capabilities(),
        sizes: dev.block_sizes(),
        read_only: s.export.read_only,
        structured: s.structured,
        base_allocation: s.base_allocation,
    };
    let (tx, rx) = mpsc::channel::<Reply>(MAX_IN_FLIGHT);
    let mut writer = tokio::spawn(write_replies(w, rx));
    let requests = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let bytes = Arc::new(Semaphore::new(IN_FLIGHT_KIB as usize));
    let reading = async {
        loop {
            let mut hdr = [0u8; proto::REQUEST_HEADER_LEN];
            tokio::select! {
                biased;
                _ = shutdown.wait() => return Ok(()),
                res = r.read_exact(&mut hdr) => match res {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(ConnError::Io(e)),
                },
            }
            let h = RequestHeader::decode(&hdr).map_err(|e| ConnError::Protocol(e.to_string()))?;
            let cmd = match transmission::check(&h, &limits) {
                Ok(c) => c,
                Err(rej) => {
                    debug!(cookie = h.cookie, "request refused: {}", rej.message);
                    discard(&mut r, u64::from(rej.discard)).await?;
                    let reply = error_reply(h.cookie, s.structured, rej.error, &rej.message);
                    if tx.send(reply).await.is_err() {
                        return Ok(());
                    }
                    continue;
                }
            };
            if cmd == Command::Disconnect {
                return Ok(());
            }
            let permit = requests
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| closed())?;
            let kib = match cmd {
                Command::Read { len, .. } | Command::Write { len, .. } => len.div_ceil(1024).max(1),
                _ => 1,
            };
            let budget = bytes
                .clone()
                .acquire_many_owned(kib)
                .await
                .map_err(|_| closed())?;
            let payload = match cmd {
                Command::Write { len, .. } => {
                    let mut buf = BytesMut::with_capacity(len as usize);
                    while buf.len() < len as usize {
                        if r.read_buf(&mut buf).await? == 0 {
                            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
                        }
                    }
                    Some(buf.freeze())
                }
                _ => None,
            };
            let ctx = Ctx {
                dev: dev.clone(),
                tx: tx.clone(),
                structured: s.structured,
                permits: (permit, budget),
            };
            tokio::spawn(ctx.run(h.cookie, cmd, payload));
        }
    };
    let read_result = tokio::select! {
        res = reading => res,
        // The writer only ends early when the socket failed.
        res = &mut writer => return res.map_err(|e| ConnError::Protocol(format!("writer task: {e}")))?,
    };
    // Let in-flight requests finish and their replies go out before closing.
    drop(tx);
    let write_result = writer
        .await
        .map_err(|e| ConnError::Protocol(format!("writer task: {e}")))?;
    read_result.and(write_result)
}

fn closed() -> ConnError {
    ConnError::Protocol("semaphore closed".into())
}

/// Everything a request task needs; the permits are released when it is dropped.
struct Ctx {
    dev: Arc<dyn BlockDevice>,
    tx: mpsc::Sender<Reply>,
    structured: bool,
    permits: Permits,
}

impl Ctx {
    async fn run(self, cookie: u64, cmd: Command, payload: Option<Bytes>) {
        let reply = match self.execute(cookie, cmd, payload).await {
            Ok(r) => r,
            Err(e) => {
                let err = NbdError::from_io(&e);
                debug!(cookie, ?cmd, "request failed: {e}");
                error_reply(cookie, self.structured, err, &e.to_string())
            }
        };
        let mut reply = reply;
        let Ctx { tx, permits, .. } = self;
        reply.permits = Some(permits);
        // The client may be gone; its replies then have nowhere to go.
        let _ = tx.send(reply).await;
    }

    async fn execute(
        &self,
        cookie: u64,
        cmd: Command,
        payload: Option<Bytes>,
    ) -> io::Result<Reply> {
        let dev = &self.dev;
        match cmd {
            Command::Read { offset, len } => {
                let data = if len == 0 {
                    Bytes::new()
                } else {
                    dev.read(offset, len).await?
                };
                let mut head = BytesMut::with_capacity(32);
                if self.structured {
                    proto::put_chunk_header(
                        &mut head,
                        chunk::FLAG_DONE,
                        chunk::OFFSET_DATA,
                        cookie,
                        8 + len,
                    );
                    head.put_u64(offset);
                    if len == 0 {
                        // OFFSET_DATA must carry at least one byte; an empty read is just done.
                        head.clear();
                        proto::put_chunk_header(
                            &mut head,
                            chunk::FLAG_DONE,
                            chunk::NONE,
                            cookie,
                            0,
                        );
                    }
                } else {
                    proto::put_simple_reply(&mut head, 0, cookie);
                }
                return Ok(Reply {
                    head,
                    data: Some(data),
                    permits: None,
                });
            }
            Command::Write { offset, fua, .. } => {
                let data = payload.unwrap_or_default();
                if !data.is_empty() {
                    dev.write(offset, data, fua).await?;
                }
            }
            Command::Flush => dev.flush().await?,
            Command::Trim { offset, len, fua } => {
                if len > 0 {
                    dev.trim(offset, len, fua).await?;
                }
            }
            Command::WriteZeroes {
                offset,
                len,
                no_hole,
                fast,
                fua,
            } => {
                if len > 0 {
                    dev.write_zeroes(offset, len, ZeroFlags { no_hole, fast, fua })
                        .await?;
                }
            }
            Command::Cache { offset, len } => {
                if len > 0 {
                    dev.cache(offset, len).await?;
                }
            }
            Command::BlockStatus {
                offset,
                len,
                req_one,
            } => {
                let extents = if dev.capabilities().block_status {
                    dev.extents(offset, len).await?
                } else {
                    vec![Extent {
                        length: u64::from(len),
                        flags: 0,
                    }]
                };
                return Ok(block_status_reply(cookie, len, req_one, &extents));
            }
            Command::Disconnect => {}
        }
        let mut head = BytesMut::with_capacity(16);
        proto::put_simple_reply(&mut head, 0, cookie);
        Ok(Reply {
            head,
            data: None,
            permits: None,
        })
    }
}

/// A `BLOCK_STATUS` chunk: extents clipped to the request, never empty, at most one with
/// `req_one`, adjacent extents with equal flags merged.
fn block_status_reply(cookie: u64, len: u32, req_one: bool, extents: &[Extent]) -> Reply {
    let mut merged: Vec<(u32, u32)> = Vec::new();
    let mut left = u64::from(len);
    for e in extents {
        if left == 0 || merged.len() >= MAX_EXTENTS {
            break;
        }
        let n = e.length.min(left);
        if n == 0 {
            continue;
        }
        left -= n;
        match merged.last_mut() {
            Some(last) if last.1 == e.flags => last.0 += n as u32,
            _ => merged.push((n as u32, e.flags)),
        }
    }
    if merged.is_empty() {
        merged.push((len, 0));
    }
    if req_one {
        merged.truncate(1);
    }
    let mut head = BytesMut::with_capacity(24 + 8 * merged.len());
    let plen = 4 + 8 * merged.len() as u32;
    proto::put_chunk_header(
        &mut head,
        chunk::FLAG_DONE,
        chunk::BLOCK_STATUS,
        cookie,
        plen,
    );
    head.put_u32(BASE_ALLOCATION_ID);
    for (l, f) in merged {
        head.put_u32(l);
        head.put_u32(f);
    }
    Reply {
        head,
        data: None,
        permits: None,
    }
}

fn error_reply(cookie: u64, structured: bool, error: NbdError, message: &str) -> Reply {
    let mut head = BytesMut::with_capacity(32 + message.len());
    if structured {
        proto::put_error_chunk(&mut head, cookie, error, message);
    } else {
        proto::put_simple_reply(&mut head, error.code(), cookie);
    }
    Reply {
        head,
        data: None,
        permits: None,
    }
}

/// Writes replies as they arrive, flushing when no more are queued.
async fn write_replies<W: AsyncWrite + Unpin>(
    w: W,
    mut rx: mpsc::Receiver<Reply>,
) -> Result<(), ConnError> {
    let mut w = BufWriter::with_capacity(256 * 1024, w);
    while let Some(mut reply) = rx.recv().await {
        loop {
            w.write_all(&reply.head).await?;
            if let Some(d) = &reply.data {
                w.write_all(d).await?;
            }
            match rx.try_recv() {
                Ok(next) => reply = next,
                Err(_) => break,
            }
        }
        w.flush().await?;
    }
    w.shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_status_clips_merges_and_limits() {
        let ex = [
            Extent {
                length: 100,
                flags: 0,
            },
            Extent {
                length: 50,
                flags: 0,
            },
            Extent {
                length: 0,
                flags: 3,
            },
            Extent {
                length: 1000,
                flags: 3,
            },
        ];
        let r = block_status_reply(9, 300, false, &ex);
        // header 20 + id 4 + two descriptors
        assert_eq!(r.head.len(), 20 + 4 + 16);
        assert_eq!(&r.head[24..32], &[0, 0, 0, 150, 0, 0, 0, 0]);
        assert_eq!(&r.head[32..40], &[0, 0, 0, 150, 0, 0, 0, 3]);
        let one = block_status_reply(9, 300, true, &ex);
        assert_eq!(one.head.len(), 20 + 4 + 8);
        let none = block_status_reply(9, 10, false, &[]);
        assert_eq!(&none.head[24..32], &[0, 0, 0, 10, 0, 0, 0, 0]);
    }
}
