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
//!
//! One connection carries every volume of a resource, as in DRBD 8.4: the volumes' tasks join
//! the resource's [`Hub`], which starts the link once every volume of `up` has joined, hands
//! each volume its own end of every connection ([`LinkEvent::Up`]) and routes received frames
//! by their volume number ([`route`]). A volume brought up later (`up RES/VOL`) joins the same
//! hub, which the daemon's registry keeps while the resource is up.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// One volume's end of a connection: its packets go out in frames with its volume number
/// (connection-level packets on volume 0).
#[derive(Debug, Clone)]
pub struct VolumeTx {
    volume: u16,
    tx: mpsc::UnboundedSender<Frame>,
}

impl VolumeTx {
    /// Queues a packet; false when the connection is gone.
    pub fn send(&self, packet: Packet) -> bool {
        let volume = if packet.is_connection_level() {
            0
        } else {
            self.volume
        };
        self.tx.send(Frame { volume, packet }).is_ok()
    }
}

/// What the link tells a volume's task. `conn` numbers connections so that late events
/// from an old one are ignored.
#[derive(Debug)]
pub enum LinkEvent {
    Up {
        conn: u64,
        peer: PeerInfo,
        tx: VolumeTx,
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
        /// The link reconnects by itself; false after a close without reconnect (the
        /// connection went StandAlone for every volume).
        reconnect: bool,
        /// A send stayed blocked for `ko-count * timeout` (the connection goes through
        /// `Timeout`); otherwise it broke or was closed.
        timed_out: bool,
    },
}

/// Where a received frame goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// To this volume's engine.
    Volume(u16),
    /// To every volume (`P_DISCONNECT` concerns the whole connection).
    All,
    /// Dropped with this warning: a configuration packet for a volume this node does not
    /// have (`config_unknown_volume` in DRBD's receiver).
    Ignore(String),
    /// A protocol error that ends the connection.
    Error(String),
}

/// Routes a received frame among the volumes `known` says this node has.
pub fn route(frame: &Frame, known: impl Fn(u16) -> bool) -> Route {
    let p = &frame.packet;
    if p.is_connection_level() {
        return match p {
            Packet::Disconnect => Route::All,
            _ => Route::Error(format!("unexpected {} after the handshake", p.name())),
        };
    }
    if known(frame.volume) {
        return Route::Volume(frame.volume);
    }
    let msg = format!(
        "{} packet received for volume {}, which is not configured locally",
        p.name(),
        frame.volume
    );
    match p {
        Packet::Sizes { .. } | Packet::Uuids { .. } | Packet::State(_) => Route::Ignore(msg),
        _ => Route::Error(msg),
    }
}

/// The volumes of one resource that take part in its connection, and its link task.
#[derive(Debug)]
pub struct Hub {
    spec: LinkSpec,
    inner: Mutex<HubInner>,
}

#[derive(Debug)]
struct HubInner {
    /// Joined volumes and their tasks' event channels.
    volumes: BTreeMap<u16, mpsc::UnboundedSender<LinkEvent>>,
    /// The running link task.
    ctl: Option<mpsc::UnboundedSender<LinkControl>>,
    /// The connection that is up: its number, the peer, the writer, the discard flag it used.
    up: Option<(u64, PeerInfo, mpsc::UnboundedSender<Frame>, bool)>,
    /// Volumes that must join before the first start (every volume of `up`).
    expected: usize,
    started: bool,
}

impl Hub {
    /// A hub for a resource whose `expected` volumes are being attached.
    pub fn new(spec: LinkSpec, expected: usize) -> Arc<Hub> {
        Arc::new(Hub {
            spec,
            inner: Mutex::new(HubInner {
                volumes: BTreeMap::new(),
                ctl: None,
                up: None,
                expected,
                started: false,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The link's configuration (for log lines).
    pub fn spec(&self) -> &LinkSpec {
        &self.spec
    }

    /// Volume `volume` takes part in connections from now on. Starts the link once every
    /// expected volume has joined; a volume that joins a connection already up (an `up
    /// RES/VOL` of a resource that is up) makes it reconnect, so that the handshake includes
    /// it. DRBD instead adds the minor to the live connection; tandem's volumes each run
    /// their handshake on a fresh connection.
    pub fn join(
        self: &Arc<Self>,
        volume: u16,
        events: mpsc::UnboundedSender<LinkEvent>,
        discard_my_data: bool,
    ) {
        let mut h = self.lock();
        h.volumes.insert(volume, events);
        if let Some(ctl) = &h.ctl {
            if h.up.is_some() {
                info!(
                    "{}: volume {volume} joins the connection; reconnecting",
                    self.spec.config.resource
                );
                let _ = ctl.send(LinkControl::Close { reconnect: true });
            } else {
                let _ = ctl.send(LinkControl::Connect { discard_my_data });
            }
            return;
        }
        if !h.started && h.volumes.len() < h.expected {
            return;
        }
        h.started = true;
        let mut spec = self.spec.clone();
        spec.config.discard_my_data = discard_my_data;
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        h.ctl = Some(ctl_tx);
        spawn_link(spec, self.clone(), ctl_rx);
    }

    /// Volume `volume` leaves (down). The link stops with the last volume; while
    /// others remain, a connection that is up reconnects without it.
    pub fn leave(&self, volume: u16) {
        let mut h = self.lock();
        if h.volumes.remove(&volume).is_none() {
            return;
        }
        if h.volumes.is_empty() {
            if let Some(ctl) = h.ctl.take() {
                let _ = ctl.send(LinkControl::Stop);
            }
            h.up = None;
        } else if let (Some(ctl), Some(_)) = (&h.ctl, &h.up) {
            let _ = ctl.send(LinkControl::Close { reconnect: true });
        }
    }

    /// Passes a control message to the link task, if it runs.
    pub fn control(&self, c: LinkControl) {
        if let Some(ctl) = &self.lock().ctl {
            let _ = ctl.send(c);
        }
    }

    /// Whether the link task runs.
    pub fn running(&self) -> bool {
        self.lock().ctl.is_some()
    }

    /// A connection finished its handshake: every joined volume gets its end of it.
    fn connected(
        &self,
        conn: u64,
        peer: &PeerInfo,
        tx: &mpsc::UnboundedSender<Frame>,
        discard: bool,
    ) {
        let mut h = self.lock();
        h.up = Some((conn, peer.clone(), tx.clone(), discard));
        h.volumes.retain(|&volume, events| {
            events
                .send(LinkEvent::Up {
                    conn,
                    peer: peer.clone(),
                    tx: VolumeTx {
                        volume,
                        tx: tx.clone(),
                    },
                    discard_my_data: discard,
                })
                .is_ok()
        });
    }

    /// A frame of connection `conn`; `Err` ends the connection with a protocol error.
    fn dispatch(&self, conn: u64, frame: Frame) -> Result<(), String> {
        let mut h = self.lock();
        match route(&frame, |v| h.volumes.contains_key(&v)) {
            Route::Volume(v) => {
                if let Some(events) = h.volumes.get(&v) {
                    let packet = frame.packet;
                    if events.send(LinkEvent::Packet { conn, packet }).is_err() {
                        h.volumes.remove(&v);
                    }
                }
                Ok(())
            }
            Route::All => {
                h.volumes.retain(|_, events| {
                    let packet = frame.packet.clone();
                    events.send(LinkEvent::Packet { conn, packet }).is_ok()
                });
                Ok(())
            }
            Route::Ignore(msg) => {
                warn!("{}: {msg}", self.spec.config.resource);
                Ok(())
            }
            Route::Error(msg) => Err(msg),
        }
    }

    /// Connection `conn` ended.
    fn disconnected(&self, conn: u64, reason: &str, reconnect: bool, timed_out: bool) {
        let mut h = self.lock();
        if h.up.as_ref().is_some_and(|u| u.0 == conn) {
            h.up = None;
        }
        for events in h.volumes.values() {
            let _ = events.send(LinkEvent::Down {
                conn,
                reason: reason.to_owned(),
                reconnect,
                timed_out,
            });
        }
    }

    /// Whether any volume still takes part.
    fn wanted(&self) -> bool {
        !self.lock().volumes.is_empty()
    }
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

/// Starts a link task on the links' own runtime (see [`runtime`]).
fn spawn_link(spec: LinkSpec, hub: Arc<Hub>, ctl: mpsc::UnboundedReceiver<LinkControl>) {
    match runtime() {
        Some(rt) => drop(rt.spawn(run(spec, hub, ctl))),
        None => drop(tokio::spawn(run(spec, hub, ctl))),
    }
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

async fn run(mut spec: LinkSpec, hub: Arc<Hub>, mut ctl: mpsc::UnboundedReceiver<LinkControl>) {
    let resource = spec.config.resource.clone();
    // The accepting side's socket, bound by the first `establish` that can.
    let mut listener = None;
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
            s = establish(&spec, &mut listener) => s,
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
        let ended = serve(&spec, up, stream, rest, &hub, &mut ctl).await;
        let (reason, reconnect) = match &ended {
            Ended::Reconnect(r) | Ended::TimedOut(r) => (r.clone(), true),
            Ended::Pause(r) => (r.clone(), false),
            Ended::Stop => ("stopped".into(), false),
        };
        let timed_out = matches!(ended, Ended::TimedOut(_));
        hub.disconnected(conn, &reason, reconnect, timed_out);
        if !hub.wanted() {
            return;
        }
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
/// waited `connect-int` where DRBD would). The accepting side binds `listener` first, and
/// tries again every `connect-int` while the address is taken (by the link of a resource that
/// was just taken down, say).
async fn establish(
    spec: &LinkSpec,
    listener: &mut Option<TcpListener>,
) -> Option<(TcpStream, PeerInfo, BytesMut)> {
    let resource = &spec.config.resource;
    if spec.accepts() && listener.is_none() {
        match bind(spec.local).await {
            Ok(l) => *listener = Some(l),
            Err(e) => {
                warn!("{resource}: cannot listen on {}: {e}; retrying", spec.local);
                tokio::time::sleep(spec.connect_int).await;
                return None;
            }
        }
    }
    let stream = match listener.as_ref() {
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
    hub: &Arc<Hub>,
    ctl: &mut mpsc::UnboundedReceiver<LinkControl>,
) -> Ended {
    let conn = up.conn;
    let (read, write) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel::<Frame>();
    let (wdone_tx, mut wdone) = mpsc::channel::<WriteEnd>(1);
    let guard = SendGuard::new(spec);
    let writer = tokio::spawn(write_loop(write, rx, wdone_tx, guard));
    hub.connected(conn, &up.peer, &tx, up.discard_my_data);
    if !hub.wanted() {
        writer.abort();
        return Ended::Stop;
    }
    let ended = read_loop(spec, conn, read, rest, &tx, hub, ctl, &mut wdone).await;
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
    tx: &mpsc::UnboundedSender<Frame>,
    hub: &Arc<Hub>,
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
                            let _ = tx.send(Frame::connection(Packet::PingAck));
                        }
                        Packet::PingAck => {}
                        _ => {
                            if let Err(e) = hub.dispatch(conn, frame) {
                                warn!("{}: {e}", spec.config.resource);
                                return Ended::Reconnect(format!("protocol error: {e}"));
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
                let _ = tx.send(Frame::connection(Packet::Ping));
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
    mut rx: mpsc::UnboundedReceiver<Frame>,
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
    frame: Frame,
) -> std::io::Result<()> {
    let (head, payload) = encode_parts(&frame);
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

/// A hub for r0 between alpha and beta that waits for `expected` volumes (for tests).
#[cfg(test)]
pub(crate) fn test_hub(expected: usize) -> Arc<Hub> {
    let spec = LinkSpec {
        config: LinkConfig {
            resource: "r0".into(),
            my_node: "alpha".into(),
            peer_node: "beta".into(),
            protocol: repl_core::wire::Protocol::C,
            two_primaries: false,
            integrity: None,
            discard_my_data: false,
            secret: None,
        },
        local: "127.0.0.1:1".parse().unwrap(),
        peer: "127.0.0.2:1".parse().unwrap(),
        connect_int: Duration::from_secs(1),
        ping_int: Duration::from_secs(1),
        ping_timeout: Duration::from_secs(1),
        timeout: Duration::from_secs(6),
        ko_count: 7,
    };
    Hub::new(spec, expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use repl_core::state::{DiskState, Role};
    use repl_core::types::Sector;
    use repl_core::wire::{AckKind, PeerState};
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
            let _ = tx.send(frame(
                0,
                Packet::Data {
                    id,
                    sector: Sector(0),
                    len: 1 << 20,
                    kind: DataKind::Write,
                    flags: DataFlags::default(),
                    epoch: 0,
                    digest: None,
                    data: data.clone(),
                },
            ));
        }
        let end = timeout(Duration::from_secs(60), done.recv())
            .await
            .expect("the blocked send is given up")
            .expect("the writer reports why it stopped");
        assert!(end.timed_out, "{end:?}");
        assert!(end.reason.contains("sock_sendmsg time expired"), "{end:?}");
        writer.abort();
    }

    #[tokio::test]
    async fn the_accepting_side_binds_once_the_address_is_free_again() {
        // The address is still held (by the link of a resource just taken down, say).
        let blocker = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut spec = test_hub(1).spec().clone();
        spec.config.my_node = "beta".into();
        spec.config.peer_node = "alpha".into();
        spec.local = blocker.local_addr().expect("addr");
        spec.connect_int = Duration::from_millis(10);
        assert!(spec.accepts());
        let mut listener = None;
        assert!(establish(&spec, &mut listener).await.is_none());
        assert!(listener.is_none(), "the address is taken");
        drop(blocker);
        // Bound now, it waits for the peer (which never comes here).
        let waited = timeout(Duration::from_millis(200), establish(&spec, &mut listener)).await;
        assert!(waited.is_err(), "it accepts, it does not connect");
        assert!(listener.is_some(), "the freed address is bound");
    }

    fn frame(volume: u16, packet: Packet) -> Frame {
        Frame { volume, packet }
    }

    fn state() -> Packet {
        Packet::State(PeerState {
            role: Role::Secondary,
            disk: DiskState::UpToDate,
        })
    }

    #[test]
    fn frames_go_to_the_volume_they_name() {
        let known = |v: u16| v == 0 || v == 1;
        assert_eq!(route(&frame(1, state()), known), Route::Volume(1));
        assert_eq!(route(&frame(0, state()), known), Route::Volume(0));
        assert_eq!(
            route(&frame(0, Packet::Disconnect), known),
            Route::All,
            "P_DISCONNECT ends the connection of every volume"
        );
    }

    #[test]
    fn configuration_for_a_volume_missing_here_is_ignored_with_drbds_warning() {
        let known = |v: u16| v == 0;
        for p in [
            state(),
            Packet::Sizes {
                backing: 1 << 20,
                requested: 0,
                current: 1 << 20,
            },
        ] {
            let name = p.name();
            assert_eq!(
                route(&frame(1, p), known),
                Route::Ignore(format!(
                    "{name} packet received for volume 1, which is not configured locally"
                ))
            );
        }
    }

    #[test]
    fn data_for_an_unknown_volume_is_a_protocol_error() {
        let known = |v: u16| v == 0;
        let ack = Packet::Ack {
            kind: AckKind::Write,
            id: 7,
            sector: Sector(0),
            len: 4096,
        };
        match route(&frame(9, ack), known) {
            Route::Error(m) => assert_eq!(
                m,
                "P_WRITE_ACK packet received for volume 9, which is not configured locally"
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            route(&frame(0, Packet::PingAck), known),
            Route::Error(_)
        ));
    }

    #[test]
    fn each_volume_sends_on_its_own_number_and_connection_packets_on_zero() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let v = VolumeTx { volume: 3, tx };
        assert!(v.send(state()));
        assert!(v.send(Packet::Disconnect));
        assert_eq!(rx.try_recv().unwrap(), frame(3, state()));
        assert_eq!(rx.try_recv().unwrap(), frame(0, Packet::Disconnect));
    }

    fn hub() -> Arc<Hub> {
        test_hub(2)
    }

    #[tokio::test]
    async fn the_hub_routes_a_connection_to_the_volumes_that_joined() {
        let h = hub();
        let (e0, mut r0) = mpsc::unbounded_channel();
        let (e1, mut r1) = mpsc::unbounded_channel();
        h.join(0, e0, false);
        assert!(!h.running(), "the link waits for every volume of up");
        h.join(1, e1, false);
        assert!(h.running());
        let (tx, _wire) = mpsc::unbounded_channel();
        let peer = PeerInfo {
            version: 101,
            node: "beta".into(),
            protocol: repl_core::wire::Protocol::C,
            two_primaries: false,
            integrity: None,
            peer_discard_my_data: false,
            resolve_conflicts: false,
        };
        h.connected(7, &peer, &tx, false);
        assert!(matches!(r0.try_recv(), Ok(LinkEvent::Up { conn: 7, .. })));
        assert!(matches!(r1.try_recv(), Ok(LinkEvent::Up { conn: 7, .. })));
        h.dispatch(7, frame(1, state())).unwrap();
        assert!(matches!(
            r1.try_recv(),
            Ok(LinkEvent::Packet { conn: 7, .. })
        ));
        assert!(r0.try_recv().is_err(), "volume 0 got nothing");
        // A volume that leaves makes its frames unknown: data for it ends the connection.
        h.leave(1);
        let write_ack = Packet::Ack {
            kind: AckKind::Write,
            id: 1,
            sector: Sector(0),
            len: 512,
        };
        assert!(h.dispatch(7, frame(1, write_ack)).is_err());
        h.dispatch(7, frame(1, state())).unwrap();
        h.disconnected(7, "test", true, false);
        assert!(matches!(
            r0.try_recv(),
            Ok(LinkEvent::Down {
                conn: 7,
                reconnect: true,
                ..
            })
        ));
        h.leave(0);
        assert!(!h.running(), "the link stops with its last volume");
    }
}
