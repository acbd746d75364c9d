//! The peer link of one resource: a TCP connection to the peer's `address`, the connection
//! handshake of [`repl_core::link`], framing with [`repl_core::wire::codec`], keep-alive pings,
//! and reconnecting every `connect-int` while the engine wants a link.
//!
//! A send that makes no progress for `timeout` counts `ko-count` down (DRBD's `drbd_send` with
//! `sk_sndtimeo = timeout` and `we_should_drop_the_connection`); at 0 the connection is
//! dropped and reported as timed out. `ko-count 0` disables it.
//!
//! `connect --discard-my-data` holds for one connection: the flag goes into the `P_PROTOCOL` of
//! the next handshake that succeeds, is reported with [`LinkEvent::Up`], and is cleared, so a
//! reconnect after that connection is lost does not carry it again.
//!
//! One side connects, the other accepts: the node whose name sorts last listens on its own
//! `address` (it also breaks ties in the handshake, see [`repl_core::link::PeerInfo`]), the
//! other connects to it. The resource task owns the engine; this task only moves packets.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use repl_core::link::{HmacAlg, Link, LinkConfig, PeerInfo, Progress, NONCE_BYTES};
use repl_core::wire::codec::{encode_parts, Decoder};
use repl_core::wire::{Frame, Packet};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tracing::{error, info, warn};

/// How a link is set up (from the resource's `net` section and endpoints).
#[derive(Debug, Clone)]
pub struct LinkSpec {
    pub config: LinkConfig,
    /// This node's `address` (listened on by the accepting side).
    pub local: SocketAddr,
    /// The peer's `address`.
    pub peer: SocketAddr,
    pub connect_int: Duration,
    pub ping_int: Duration,
    pub ping_timeout: Duration,
    /// `timeout`: how long one send may go without progress before `ko-count` counts down.
    pub timeout: Duration,
    /// `ko-count`; 0 never drops the connection for a blocked send.
    pub ko_count: u32,
}

impl LinkSpec {
    /// This node accepts rather than connects.
    pub fn accepts(&self) -> bool {
        self.config.my_node > self.config.peer_node
    }
}

/// What the link tells the resource task. `conn` numbers connections so that late events
/// from an old one are ignored.
#[derive(Debug)]
pub enum LinkEvent {
    Up {
        conn: u64,
        peer: PeerInfo,
        tx: mpsc::UnboundedSender<Packet>,
        /// This side's handshake carried `--discard-my-data` (the engine's
        /// `LinkParams::discard_my_data` for this connection).
        discard_my_data: bool,
    },
    Packet {
        conn: u64,
        packet: Packet,
    },
    Down {
        conn: u64,
        reason: String,
        /// A send stayed blocked for `ko-count * timeout` (the connection goes through
        /// `Timeout`); otherwise it broke or was closed.
        timed_out: bool,
    },
}

/// What the resource task tells the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkControl {
    /// Close the current connection (after what was queued); reconnect only if asked.
    Close { reconnect: bool },
    /// (Re)connect after a close without reconnect; `discard_my_data` for the next
    /// connection only (it replaces what an earlier `Connect` asked for).
    Connect { discard_my_data: bool },
    /// Stop for good.
    Stop,
}

/// Starts the link task; it connects at once.
pub fn spawn(
    spec: LinkSpec,
    events: mpsc::UnboundedSender<LinkEvent>,
) -> mpsc::UnboundedSender<LinkControl> {
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    match runtime() {
        Some(rt) => drop(rt.spawn(run(spec, events, ctl_rx))),
        None => drop(tokio::spawn(run(spec, events, ctl_rx))),
    }
    ctl_tx
}

/// The links' own runtime, apart from the one that drives the engines, as DRBD's ack
/// receiver is apart from its worker: a buffered write runs inline on its resource task (see
/// `nbd_server::file`), and a backing store that hangs holds that runtime worker together with
/// the task it last woke (tokio's LIFO slot is never stolen). Pings and acks must still flow
/// then, so that the peer sees a live node with a slow disk (`ko-count`), not a dead link.
/// `None` if it cannot be built (the links then share the caller's runtime).
fn runtime() -> Option<&'static tokio::runtime::Runtime> {
    static RT: std::sync::OnceLock<Option<tokio::runtime::Runtime>> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tandem-link")
            .enable_all()
            .build()
            .inspect_err(|e| {
                warn!("cannot start the peer links' runtime ({e}); sharing the resources' one")
            })
            .ok()
    })
    .as_ref()
}

/// Why one connection ended.
enum Ended {
    /// Lost or closed; reconnect after `connect-int`.
    Reconnect(String),
    /// A send was blocked for `ko-count * timeout`; reconnect after `connect-int`.
    TimedOut(String),
    /// Closed on purpose; wait for [`LinkControl::Connect`].
    Pause(String),
    Stop,
}

async fn run(
    mut spec: LinkSpec,
    events: mpsc::UnboundedSender<LinkEvent>,
    mut ctl: mpsc::UnboundedReceiver<LinkControl>,
) {
    let resource = spec.config.resource.clone();
    let listener = if spec.accepts() {
        match bind(spec.local).await {
            Ok(l) => Some(l),
            Err(e) => {
                warn!("{resource}: cannot listen on {}: {e}", spec.local);
                None
            }
        }
    } else {
        None
    };
    let mut conn = 0u64;
    let mut paused = false;
    loop {
        if paused {
            match ctl.recv().await {
                Some(LinkControl::Connect { discard_my_data }) => {
                    spec.config.discard_my_data = discard_my_data;
                    paused = false;
                }
                Some(LinkControl::Close { .. }) => continue,
                Some(LinkControl::Stop) | None => return,
            }
        }
        let stream = tokio::select! {
            s = establish(&spec, listener.as_ref()) => s,
            c = ctl.recv() => match c {
                Some(LinkControl::Close { reconnect: false }) => { paused = true; continue; }
                Some(LinkControl::Connect { discard_my_data }) => {
                    spec.config.discard_my_data = discard_my_data;
                    continue;
                }
                Some(LinkControl::Close { .. }) => continue,
                Some(LinkControl::Stop) | None => return,
            },
        };
        let Some((stream, peer, rest)) = stream else {
            // `establish` waited connect-int already or the handshake failed; try again.
            continue;
        };
        conn += 1;
        info!(
            "{resource}: Handshake successful: Agreed network protocol version {}",
            peer.version
        );
        // Used up by this connection (DRBD clears it once the handshake is under way).
        let discard_my_data = std::mem::take(&mut spec.config.discard_my_data);
        let up = Up {
            conn,
            peer,
            discard_my_data,
        };
        let ended = serve(&spec, up, stream, rest, &events, &mut ctl).await;
        let reason = match &ended {
            Ended::Reconnect(r) | Ended::TimedOut(r) | Ended::Pause(r) => r.clone(),
            Ended::Stop => "stopped".into(),
        };
        let timed_out = matches!(ended, Ended::TimedOut(_));
        let _ = events.send(LinkEvent::Down {
            conn,
            reason,
            timed_out,
        });
        match ended {
            Ended::Reconnect(_) | Ended::TimedOut(_) => {
                tokio::select! {
                    _ = tokio::time::sleep(spec.connect_int) => {}
                    c = ctl.recv() => match c {
                        Some(LinkControl::Stop) | None => return,
                        Some(LinkControl::Close { reconnect: false }) => paused = true,
                        Some(LinkControl::Connect { discard_my_data }) => {
                            spec.config.discard_my_data = discard_my_data;
                        }
                        Some(LinkControl::Close { reconnect: true }) => {}
                    },
                }
            }
            Ended::Pause(_) => paused = true,
            Ended::Stop => return,
        }
    }
}

async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4)
}

/// One TCP connection with a finished handshake, or `None` after a failed attempt (having
/// waited `connect-int` where DRBD would).
async fn establish(
    spec: &LinkSpec,
    listener: Option<&TcpListener>,
) -> Option<(TcpStream, PeerInfo, BytesMut)> {
    let resource = &spec.config.resource;
    let stream = match listener {
        Some(l) => match l.accept().await {
            Ok((s, from)) => {
                info!("{resource}: connection from {from}");
                s
            }
            Err(e) => {
                warn!("{resource}: accept: {e}");
                tokio::time::sleep(spec.connect_int).await;
                return None;
            }
        },
        None => match timeout(spec.connect_int, TcpStream::connect(spec.peer)).await {
            Ok(Ok(s)) => s,
            Ok(Err(_)) | Err(_) => {
                tokio::time::sleep(spec.connect_int).await;
                return None;
            }
        },
    };
    let _ = stream.set_nodelay(true);
    let limit = spec
        .connect_int
        .max(spec.ping_timeout)
        .max(Duration::from_secs(5));
    match timeout(limit, handshake(spec, stream)).await {
        Ok(Ok(done)) => Some(done),
        Ok(Err(e)) => {
            warn!("{resource}: {e}");
            tokio::time::sleep(spec.connect_int).await;
            None
        }
        Err(_) => {
            warn!("{resource}: the peer did not finish the handshake within {limit:?}");
            None
        }
    }
}

/// Runs [`Link`] over the stream; returns bytes that arrived after the handshake too.
async fn handshake(
    spec: &LinkSpec,
    mut stream: TcpStream,
) -> Result<(TcpStream, PeerInfo, BytesMut), String> {
    let mut nonce = [0u8; NONCE_BYTES];
    fill_random(&mut nonce);
    let (mut link, first) = Link::new(spec.config.clone(), nonce).map_err(|e| e.to_string())?;
    write_packets(&mut stream, first)
        .await
        .map_err(|e| format!("sending the handshake: {e}"))?;
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        while let Some(frame) = decoder.decode(&mut buf).map_err(|e| e.to_string())? {
            match link.receive(frame.packet).map_err(|e| e.to_string())? {
                Progress::Continue(out) => write_packets(&mut stream, out)
                    .await
                    .map_err(|e| format!("sending the handshake: {e}"))?,
                Progress::Established(peer, out) => {
                    write_packets(&mut stream, out)
                        .await
                        .map_err(|e| format!("sending the handshake: {e}"))?;
                    return Ok((stream, peer, buf));
                }
            }
        }
        let n = stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| format!("reading the handshake: {e}"))?;
        if n == 0 {
            return Err("the peer closed the connection during the handshake".into());
        }
    }
}

async fn write_packets(stream: &mut TcpStream, packets: Vec<Packet>) -> std::io::Result<()> {
    for p in packets {
        let (head, payload) = encode_parts(&Frame::connection(p));
        stream.write_all(&head).await?;
        if let Some(payload) = payload {
            stream.write_all(&payload).await?;
        }
    }
    stream.flush().await
}

/// A connection whose handshake finished, as [`LinkEvent::Up`] will report it.
struct Up {
    conn: u64,
    peer: PeerInfo,
    discard_my_data: bool,
}

/// Moves packets until the connection ends.
async fn serve(
    spec: &LinkSpec,
    up: Up,
    stream: TcpStream,
    rest: BytesMut,
    events: &mpsc::UnboundedSender<LinkEvent>,
    ctl: &mut mpsc::UnboundedReceiver<LinkControl>,
) -> Ended {
    let conn = up.conn;
    let (read, write) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel::<Packet>();
    let (wdone_tx, mut wdone) = mpsc::channel::<WriteEnd>(1);
    let guard = SendGuard::new(spec);
    let writer = tokio::spawn(write_loop(write, rx, wdone_tx, guard));
    if events
        .send(LinkEvent::Up {
            conn,
            peer: up.peer,
            tx: tx.clone(),
            discard_my_data: up.discard_my_data,
        })
        .is_err()
    {
        writer.abort();
        return Ended::Stop;
    }
    let ended = read_loop(spec, conn, read, rest, &tx, events, ctl, &mut wdone).await;
    match ended {
        Ended::Reconnect(_) | Ended::TimedOut(_) | Ended::Stop => writer.abort(),
        Ended::Pause(_) => {
            // Let what the engine queued (e.g. P_DISCONNECT) go out first.
            drop(tx);
            let _ = timeout(Duration::from_secs(1), writer).await;
        }
    }
    ended
}

#[allow(clippy::too_many_arguments)]
async fn read_loop(
    spec: &LinkSpec,
    conn: u64,
    mut read: OwnedReadHalf,
    mut buf: BytesMut,
    tx: &mpsc::UnboundedSender<Packet>,
    events: &mpsc::UnboundedSender<LinkEvent>,
    ctl: &mut mpsc::UnboundedReceiver<LinkControl>,
    wdone: &mut mpsc::Receiver<WriteEnd>,
) -> Ended {
    let mut decoder = Decoder::new();
    let mut last_heard = Instant::now();
    let mut ping_sent: Option<Instant> = None;
    loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    last_heard = Instant::now();
                    ping_sent = None;
                    match frame.packet {
                        Packet::Ping => {
                            let _ = tx.send(Packet::PingAck);
                        }
                        Packet::PingAck => {}
                        packet => {
                            if events.send(LinkEvent::Packet { conn, packet }).is_err() {
                                return Ended::Stop;
                            }
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => return Ended::Reconnect(format!("protocol error: {e}")),
            }
        }
        let deadline = match ping_sent {
            Some(at) => at + spec.ping_timeout,
            None => last_heard + spec.ping_int,
        };
        // Room for the rest of the next frame (a whole P_DATA arrives in few reads), and at
        // least 64 KiB so that small packets are read in batches.
        let need = decoder.missing(&buf).max(64 * 1024);
        if buf.capacity() - buf.len() < need {
            buf.reserve(need);
        }
        tokio::select! {
            r = read.read_buf(&mut buf) => match r {
                Ok(0) => return Ended::Reconnect("the peer closed the connection".into()),
                Ok(_) => {}
                Err(e) => return Ended::Reconnect(format!("receive error: {e}")),
            },
            _ = tokio::time::sleep_until(deadline) => {
                if ping_sent.is_some() {
                    return Ended::Reconnect("PingAck did not arrive in time.".into());
                }
                ping_sent = Some(Instant::now());
                let _ = tx.send(Packet::Ping);
            }
            c = ctl.recv() => match c {
                Some(LinkControl::Close { reconnect: true }) => {
                    return Ended::Reconnect("closed by the engine".into())
                }
                Some(LinkControl::Close { reconnect: false }) => {
                    return Ended::Pause("disconnected".into())
                }
                // Already connected (the resource asks for a connection only from StandAlone,
                // after a `Close { reconnect: false }`, so no flag is lost here).
                Some(LinkControl::Connect { .. }) => {}
                Some(LinkControl::Stop) | None => return Ended::Stop,
            },
            Some(e) = wdone.recv() => {
                return if e.timed_out {
                    Ended::TimedOut(e.reason)
                } else {
                    Ended::Reconnect(e.reason)
                }
            }
        }
    }
}

/// Why the writer stopped.
#[derive(Debug)]
struct WriteEnd {
    reason: String,
    timed_out: bool,
}

/// The write half of the socket, noting when it last took bytes: the send timeout counts
/// time without progress, as a socket's send timeout does.
struct Noting<W> {
    inner: W,
    guard: Arc<SendGuard>,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Noting<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.guard.progressed();
        }
        r
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// `timeout` and `ko-count` for sends, and when the socket last took bytes.
#[derive(Debug)]
struct SendGuard {
    resource: String,
    timeout: Duration,
    ko_count: u32,
    base: Instant,
    /// Nanoseconds after `base`.
    last_progress: AtomicU64,
}

impl SendGuard {
    fn new(spec: &LinkSpec) -> Arc<SendGuard> {
        SendGuard::with(&spec.config.resource, spec.timeout, spec.ko_count)
    }

    fn with(resource: &str, timeout: Duration, ko_count: u32) -> Arc<SendGuard> {
        Arc::new(SendGuard {
            resource: resource.to_owned(),
            timeout,
            ko_count,
            base: Instant::now(),
            last_progress: AtomicU64::new(0),
        })
    }

    fn progressed(&self) {
        let nanos = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_progress.store(nanos, Ordering::Relaxed);
    }

    fn last_progress(&self) -> Instant {
        self.base + Duration::from_nanos(self.last_progress.load(Ordering::Relaxed))
    }

    /// Runs one send. Every `timeout` without progress counts `ko-count` down, starting from
    /// `ko-count` for each send (`drbd_send` resets it); at 0 the send is abandoned.
    async fn send<F>(&self, fut: F) -> Result<(), WriteEnd>
    where
        F: Future<Output = std::io::Result<()>>,
    {
        let failed = |e: std::io::Error| WriteEnd {
            reason: format!("send error: {e}"),
            timed_out: false,
        };
        tokio::pin!(fut);
        if self.ko_count == 0 || self.timeout.is_zero() {
            return fut.await.map_err(failed);
        }
        let mut ko = self.ko_count;
        let mut since = Instant::now();
        loop {
            let from = since.max(self.last_progress());
            tokio::select! {
                r = &mut fut => return r.map_err(failed),
                _ = tokio::time::sleep_until(from + self.timeout) => {
                    if self.last_progress() > from {
                        continue;
                    }
                    ko -= 1;
                    if ko == 0 {
                        return Err(WriteEnd {
                            reason: format!(
                                "sock_sendmsg time expired {} times ({:?} each, ko-count {})",
                                self.ko_count, self.timeout, self.ko_count
                            ),
                            timed_out: true,
                        });
                    }
                    error!(
                        "{}: [tandemd/{}] sock_sendmsg time expired, ko = {ko}",
                        self.resource,
                        std::process::id()
                    );
                    since = Instant::now();
                }
            }
        }
    }
}

/// Writes queued packets, batching what is queued before each flush.
async fn write_loop(
    write: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Packet>,
    done: mpsc::Sender<WriteEnd>,
    guard: Arc<SendGuard>,
) {
    let noting = Noting {
        inner: write,
        guard: guard.clone(),
    };
    let mut w = BufWriter::with_capacity(256 * 1024, noting);
    while let Some(p) = rx.recv().await {
        let mut next = Some(p);
        while let Some(p) = next {
            if let Err(e) = guard.send(write_frame(&mut w, p)).await {
                let _ = done.send(e).await;
                return;
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = guard.send(w.flush()).await {
            let _ = done.send(e).await;
            return;
        }
    }
    let _ = w.flush().await;
    let _ = w.into_inner().inner.shutdown().await;
}

async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut BufWriter<W>,
    p: Packet,
) -> std::io::Result<()> {
    let (head, payload) = encode_parts(&Frame {
        volume: 0,
        packet: p,
    });
    w.write_all(&head).await?;
    if let Some(payload) = payload {
        w.write_all(&payload).await?;
    }
    Ok(())
}

/// Fresh random bytes for the authentication nonce (`getrandom(2)`).
fn fill_random(buf: &mut [u8]) {
    // SAFETY: `buf` is a valid, writable slice of `buf.len()` bytes for the whole call.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if usize::try_from(n).ok() != Some(buf.len()) {
        // getrandom on Linux does not fail for 32 bytes; fall back to the clock.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (t >> ((i % 16) * 8)) as u8 ^ i as u8;
        }
    }
}

/// `cram-hmac-alg` and `shared-secret` from the config.
///
/// # Errors
/// An algorithm tandem does not support.
pub fn secret(
    alg: Option<&str>,
    secret: Option<&str>,
) -> Result<Option<(HmacAlg, Vec<u8>)>, String> {
    match (alg, secret) {
        (Some(a), Some(s)) => {
            let alg: HmacAlg = a
                .parse()
                .map_err(|e: repl_core::link::LinkConfigError| e.to_string())?;
            Ok(Some((alg, s.as_bytes().to_vec())))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use repl_core::types::Sector;
    use repl_core::wire::{DataFlags, DataKind};

    #[tokio::test]
    async fn a_send_blocked_for_ko_count_times_timeout_ends_the_connection_as_timed_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        // The peer takes the connection and never reads from it.
        let (_peer, _) = listener.accept().await.expect("accept");
        let (_read, write) = client.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let (done_tx, mut done) = mpsc::channel(1);
        let guard = SendGuard::with("r0", Duration::from_millis(100), 3);
        let writer = tokio::spawn(write_loop(write, rx, done_tx, guard));
        let data = Bytes::from(vec![0x5a; 1 << 20]);
        for id in 0..256 {
            let _ = tx.send(Packet::Data {
                id,
                sector: Sector(0),
                len: 1 << 20,
                kind: DataKind::Write,
                flags: DataFlags::default(),
                epoch: 0,
                digest: None,
                data: data.clone(),
            });
        }
        let end = timeout(Duration::from_secs(60), done.recv())
            .await
            .expect("the blocked send is given up")
            .expect("the writer reports why it stopped");
        assert!(end.timed_out, "{end:?}");
        assert!(end.reason.contains("sock_sendmsg time expired"), "{end:?}");
        writer.abort();
    }
}
