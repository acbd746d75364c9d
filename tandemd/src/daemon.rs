//! The daemon: its run directory, the control socket, the NBD listeners, resources coming up
//! and going down, and a clean exit on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use drbdadm_compat::control::{
    decode_request, encode_response, version_mismatch, ControlError, DecodeError, Op, Reply,
    WaitTimeouts, CONTROL_SOCKET, NBD_SOCKET,
};
use drbdadm_compat::res::parser::E_EXEC_ERROR;
use drbdadm_compat::res::resolve::{EffectiveResource, EffectiveVolume};
use nbd_server::server::{Endpoint, Listener, Shutdown};
use repl_core::engine::{Command, EngineConfig, OnIoError};
use repl_core::meta::{AlGeometry, MdFlags};
use repl_core::state::{ConnState, Context, DiskState, Fencing, StateChangeError};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::export::Exports;
use crate::resource::{self, Attachment, Busy, Control, Registry, Shared};
use crate::status_file::StatusBoard;

/// How long `secondary` and `down` wait for NBD sessions that are closing (the client has
/// disconnected but the session's last requests are still being torn down) before the engine
/// sees the device as held open.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// How long resources get to go down when the daemon exits.
const DOWN_LIMIT: Duration = Duration::from_secs(30);

/// What the daemon runs with.
#[derive(Debug, Clone)]
pub struct Options {
    pub run_dir: PathBuf,
    /// This node's name (`uname -n` unless overridden).
    pub node: String,
    /// Also serve NBD on TCP here.
    pub nbd_listen: Option<SocketAddr>,
}

/// Everything the control handlers share.
#[derive(Debug)]
struct Daemon {
    opts: Options,
    registry: Arc<Registry>,
    board: Arc<StatusBoard>,
}

/// Runs the daemon until SIGTERM or SIGINT, then takes every resource down.
///
/// # Errors
/// A socket cannot be bound or a signal handler installed.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let board = Arc::new(StatusBoard::new(&opts.run_dir));
    board.publish();
    let registry = Arc::new(Registry::default());
    let exports = Arc::new(Exports {
        registry: registry.clone(),
    });
    let (stop_nbd, nbd_shutdown) = Shutdown::new();
    let mut servers = Vec::new();
    let mut endpoints = vec![Endpoint::Unix(opts.run_dir.join(NBD_SOCKET))];
    if let Some(a) = opts.nbd_listen {
        endpoints.push(Endpoint::Tcp(a));
    }
    for ep in &endpoints {
        let l = Listener::bind(ep)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for NBD on {ep:?}: {e}"))?;
        info!("serving NBD on {}", l.uri("RESOURCE"));
        servers.push(tokio::spawn(l.serve(exports.clone(), nbd_shutdown.clone())));
    }
    let sock = opts.run_dir.join(CONTROL_SOCKET);
    // The lock is ours, so a socket left behind is stale.
    let _ = std::fs::remove_file(&sock);
    let control = UnixListener::bind(&sock)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", sock.display()))?;
    info!(
        "tandemd {} on node {} ready; control socket {}",
        env!("CARGO_PKG_VERSION"),
        opts.node,
        sock.display()
    );
    let daemon = Arc::new(Daemon {
        opts,
        registry,
        board,
    });
    loop {
        tokio::select! {
            _ = term.recv() => { info!("received SIGTERM; shutting down"); break; }
            _ = int.recv() => { info!("received SIGINT; shutting down"); break; }
            a = control.accept() => match a {
                Ok((s, _)) => { tokio::spawn(serve_control(daemon.clone(), s)); }
                Err(e) => {
                    warn!("control socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(control);
    let _ = std::fs::remove_file(&sock);
    // NBD sessions end first (in-flight requests finish), then resources go down.
    let _ = stop_nbd.send(true);
    for s in servers {
        let _ = s.await;
    }
    let mut waits = Vec::new();
    for h in daemon.registry.handles() {
        let (reply, rx) = oneshot::channel();
        let msg = Control::Command {
            cmd: Command::Down,
            shutdown: true,
            reply,
        };
        if h.control.send(msg).await.is_ok() {
            waits.push((h.shared.name.clone(), rx));
        }
    }
    for (name, rx) in waits {
        match tokio::time::timeout(DOWN_LIMIT, rx).await {
            Ok(Ok(Ok(()))) => info!("{name}: down"),
            Ok(Ok(Err(e))) => warn!("{name}: down refused: {e}"),
            Ok(Err(_)) => warn!("{name}: the resource task ended without going down"),
            Err(_) => warn!("{name}: not down after {DOWN_LIMIT:?}; exiting anyway"),
        }
    }
    info!("tandemd exits");
    Ok(())
}

/// Answers the requests of one control connection, one line each.
async fn serve_control(d: Arc<Daemon>, s: UnixStream) {
    let (r, mut w) = s.into_split();
    let mut lines = BufReader::new(r).lines();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e) => {
                warn!("control connection: {e}");
                return;
            }
        };
        let result = match decode_request(&line) {
            Ok(req) => d.clone().handle(req.op).await,
            Err(DecodeError::Version(v)) => Err(version_mismatch(v)),
            Err(DecodeError::Malformed(m)) => Err(ControlError::new(
                E_EXEC_ERROR,
                format!("malformed control request: {m}"),
            )),
        };
        if w.write_all(encode_response(result).as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

impl Daemon {
    async fn handle(self: Arc<Self>, op: Op) -> Result<Reply, ControlError> {
        match op {
            Op::Up { config, resource } => self.up(config, resource).await.map(|()| Reply::Done),
            Op::Down { resource } => self.down(&resource).await.map(|()| Reply::Done),
            Op::Primary { resource, force } => {
                self.command(&resource, Command::Primary { force }).await
            }
            Op::Secondary { resource } => self.command(&resource, Command::Secondary).await,
            Op::NewCurrentUuid {
                resource,
                clear_bitmap,
            } => {
                self.command(&resource, Command::NewCurrentUuid { clear_bitmap })
                    .await
            }
            Op::Outdate { resource } => self.command(&resource, Command::Outdate).await,
            Op::Connect {
                resource,
                discard_my_data,
            } => self.connect(&resource, discard_my_data).await,
            Op::Disconnect { resource } => self.command(&resource, Command::Disconnect).await,
            Op::Invalidate { resource } => self.command(&resource, Command::Invalidate).await,
            Op::InvalidateRemote { resource } => {
                self.command(&resource, Command::InvalidateRemote).await
            }
            Op::Detach { resource } => self.detach(&resource).await.map(|()| Reply::Done),
            Op::Attach { config, resource } => self
                .attach_disk(config, resource)
                .await
                .map(|()| Reply::Done),
            Op::WaitConnect {
                resource,
                timeouts,
                wait_after_sb,
            } => self
                .wait_connect(&resource, timeouts, wait_after_sb)
                .await
                .map(|()| Reply::Done),
            Op::Status => Ok(Reply::Status {
                resources: self.status().await,
            }),
        }
    }

    /// The volume tasks `res` names: every volume of resource `NAME`, or volume `N` of
    /// `NAME/N`.
    fn handles_of(&self, res: &str) -> Result<Vec<resource::Handle>, ControlError> {
        let (name, volume) = split_target(res);
        let Some(vols) = self.registry.get(name) else {
            return Err(not_up(name));
        };
        // A whole-resource command waits for the volumes being brought up; one volume's
        // command only for that volume.
        let starting = match volume {
            None => !vols.starting.is_empty(),
            Some(v) => vols.starting.contains(&v),
        };
        if starting {
            return Err(transient(res, "being brought up"));
        }
        match volume {
            None => Ok(vols.up),
            Some(v) => {
                let one: Vec<_> = vols
                    .up
                    .into_iter()
                    .filter(|h| h.shared.volume == v)
                    .collect();
                if one.is_empty() {
                    return Err(ControlError::new(
                        10,
                        format!("{res}: Failure: (127) Device minor not allocated; {name} has no volume {v} up"),
                    ));
                }
                Ok(one)
            }
        }
    }

    async fn send(&self, h: &resource::Handle, cmd: Command) -> Result<(), ControlError> {
        let (reply, rx) = oneshot::channel();
        let gone = || not_up(&h.shared.name);
        h.control
            .send(Control::Command {
                cmd,
                shutdown: false,
                reply,
            })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// A per-volume command on each volume `res` names, in volume order; the first refusal
    /// ends it, as drbdadm stops at the first failing minor.
    async fn command(&self, res: &str, cmd: Command) -> Result<Reply, ControlError> {
        for h in self.handles_of(res)? {
            if cmd == Command::Secondary {
                h.shared.wait_closed(CLOSE_GRACE).await;
            }
            self.send(&h, cmd).await?;
        }
        Ok(Reply::Done)
    }

    /// `connect`, with `--discard-my-data` for the next connection only; the connection is
    /// the resource's, so every volume takes part.
    async fn connect(&self, res: &str, discard_my_data: bool) -> Result<Reply, ControlError> {
        for h in self.handles_of(split_target(res).0)? {
            let (reply, rx) = oneshot::channel();
            let gone = || not_up(&h.shared.name);
            h.control
                .send(Control::Connect {
                    discard_my_data,
                    reply,
                })
                .await
                .map_err(|_| gone())?;
            rx.await.map_err(|_| gone())??;
        }
        Ok(Reply::Done)
    }

    /// Like `drbdsetup down`, a resource that is not up is already down. Every volume goes
    /// down; the first refusal is reported.
    async fn down(&self, res: &str) -> Result<(), ControlError> {
        let name = split_target(res).0;
        // No volume is added to the resource until this `down` is over.
        let (hs, _downing) = match self.registry.begin_down(name) {
            None => return Ok(()),
            Some(Err(())) => return Err(transient(name, "being brought up")),
            Some(Ok(x)) => x,
        };
        let mut first = Ok(());
        for h in hs {
            h.shared.wait_closed(CLOSE_GRACE).await;
            let r = self.send(&h, Command::Down).await;
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    async fn status(&self) -> Vec<repl_core::status::Status> {
        let mut v = Vec::new();
        for h in self.registry.handles() {
            let (reply, rx) = oneshot::channel();
            if h.control.send(Control::Status { reply }).await.is_ok() {
                if let Ok(s) = rx.await {
                    v.push(s);
                }
            }
        }
        v.sort_by(|a, b| (a.minor, &a.resource).cmp(&(b.minor, &b.resource)));
        v
    }

    /// Loads `res` (`NAME` or `NAME/N`) from `config` for this node: its effective
    /// configuration and the volumes named.
    async fn load(
        &self,
        config: &Path,
        res: &str,
    ) -> Result<(EffectiveResource, Vec<EffectiveVolume>), ControlError> {
        let (name, volume) = split_target(res);
        let node = self.opts.node.clone();
        let cfg_path = config.to_path_buf();
        let owned = name.to_string();
        let eff = blocking(move || crate::config::load_resource(&cfg_path, &owned, &node)).await?;
        let vols: Vec<EffectiveVolume> = eff
            .volumes
            .iter()
            .filter(|v| volume.is_none_or(|n| v.vnr == n))
            .cloned()
            .collect();
        if vols.is_empty() {
            return Err(ControlError::new(
                10,
                match volume {
                    None => format!("{name}: no volume on this node in {}", config.display()),
                    Some(n) => format!(
                        "'{res}' not defined in your config (for this host): {name} has no volume {n}"
                    ),
                },
            ));
        }
        Ok((eff, vols))
    }

    /// `up RES` or `up RES/VOL`. A volume of a resource that is already up is added to it:
    /// its task joins the resource's peer link (the hub the registry keeps), and a connection
    /// that is up reconnects so that the handshake includes the new volume (where tandem
    /// departs from DRBD, which adds the minor to the live connection). `up RES` with some
    /// volumes up brings up the missing ones (drbdadm would run into the existing minors and
    /// fail on them); it is refused, as a second `up` is, only when every volume is up.
    async fn up(self: Arc<Self>, config: PathBuf, res: String) -> Result<(), ControlError> {
        let (eff, vols) = self.load(&config, &res).await?;
        let name = eff.name.clone();
        let spec = match vols.first() {
            Some(v) => crate::peer_config::peer_setup(&eff, v)?.map(|(_, spec)| spec),
            None => None,
        };
        let wanted: Vec<u32> = vols.iter().map(|v| v.vnr).collect();
        let claim = match self.registry.reserve(&name, &wanted, |n| {
            spec.map(|spec| crate::link::Hub::new(spec, n))
        }) {
            Ok(c) => c,
            Err(Busy::Up) => {
                return Err(ControlError::new(
                    10,
                    format!(
                        "{}: Failure: (124) Device is attached to a disk (use detach first); {res} is already up",
                        vols[0].minor
                    ),
                ))
            }
            Err(Busy::GoingDown) => return Err(transient(&name, "being taken down")),
        };
        let vols: Vec<EffectiveVolume> = vols
            .into_iter()
            .filter(|v| claim.volumes.contains(&v.vnr))
            .collect();
        if claim.volumes.len() < wanted.len() {
            info!(
                "{name}: bringing up volume(s) {:?}; the others are up already",
                claim.volumes
            );
        }
        let r = self.clone().attach(&eff, &vols, claim.hub).await;
        if r.is_err() {
            self.registry.release(&name, &claim.volumes);
        }
        r
    }

    /// Opens the backing device and metadata of `vol` and attaches an engine to them; a
    /// volume without a disk (`disk none`) gets a diskless engine.
    async fn prepare(
        &self,
        eff: &EffectiveResource,
        vol: &EffectiveVolume,
    ) -> Result<Attachment, ControlError> {
        let backing = match vol.disk {
            Some(_) => {
                let name = eff.name.clone();
                let v = vol.clone();
                Some(blocking(move || crate::disk::open_volume(&name, &v)).await?)
            }
            None => None,
        };
        let seed = entropy().map_err(|e| {
            ControlError::new(E_EXEC_ERROR, format!("cannot read /dev/urandom: {e}"))
        })?;
        let geometry: AlGeometry = backing
            .as_ref()
            .map_or_else(AlGeometry::default, |b| b.on_disk.layout.al);
        let max_slots = 919u64 * u64::from(geometry.blocks().saturating_sub(1));
        let al_extents = vol
            .disk_options
            .al_extents
            .min(max_slots)
            .clamp(1, u64::from(u16::MAX - 1)) as u16;
        let fencing = match vol.disk_options.fencing {
            drbdadm_compat::res::resolve::Fencing::DontCare => Fencing::DontCare,
            drbdadm_compat::res::resolve::Fencing::ResourceOnly => Fencing::ResourceOnly,
            drbdadm_compat::res::resolve::Fencing::ResourceAndStonith => {
                Fencing::ResourceAndStonith
            }
        };
        let peer = crate::peer_config::peer_setup(eff, vol)?;
        let context = Context {
            fencing,
            allow_two_primaries: eff.net.allow_two_primaries,
            device_open: false,
        };
        let cfg = EngineConfig {
            resource: eff.name.clone(),
            volume: vol.vnr,
            minor: vol.minor,
            al_extents,
            context,
            seed,
            net: peer.as_ref().map(|(net, _)| *net),
            on_io_error: match vol.disk_options.on_io_error {
                drbdadm_compat::res::resolve::OnIoError::PassOn => OnIoError::PassOn,
                drbdadm_compat::res::resolve::OnIoError::CallLocalIoError => {
                    OnIoError::CallLocalIoError
                }
                drbdadm_compat::res::resolve::OnIoError::Detach => OnIoError::Detach,
            },
        };
        info!(
            "block drbd{}: attaching {} (resource {}, volume {})",
            vol.minor,
            vol.disk.as_deref().unwrap_or("none"),
            eff.name,
            vol.vnr
        );
        let Some(backing) = backing else {
            let engine = repl_core::engine::Engine::diskless(cfg)
                .map_err(|e| ControlError::new(10, format!("{}: {e}", vol.minor)))?;
            return Ok(Attachment {
                engine,
                data: None,
                meta: None,
                size: 0,
                degraded: false,
            });
        };
        // DRBD's USE_DEGR_WFC_T: the metadata says Primary, and not connected.
        let flags = backing.on_disk.superblock.flags;
        let degraded =
            flags.contains(MdFlags::PRIMARY_IND) && !flags.contains(MdFlags::CONNECTED_IND);
        // Moved, not cloned: the bitmap bytes of a 1 TiB volume are 32 MiB.
        let crate::disk::Backing {
            data,
            meta,
            on_disk,
            size,
        } = backing;
        let engine = repl_core::engine::Engine::attach(cfg, on_disk)
            .map_err(|e| ControlError::new(10, format!("{}: {e}", vol.minor)))?;
        Ok(Attachment {
            engine,
            data: Some(data),
            meta: Some(meta),
            size,
            degraded,
        })
    }

    /// Starts a task per volume, all sharing the resource's peer link `hub`, and waits until
    /// every volume is attached; on a failure, every volume started here goes down again.
    async fn attach(
        self: Arc<Self>,
        eff: &EffectiveResource,
        vols: &[EffectiveVolume],
        hub: Option<Arc<crate::link::Hub>>,
    ) -> Result<(), ControlError> {
        let mut started = Vec::new();
        let mut result = Ok(());
        for vol in vols {
            let a = match self.prepare(eff, vol).await {
                Ok(a) => a,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            let shared = Arc::new(Shared::new(&eff.name, vol.vnr, vol.minor, a.size));
            shared.set_degraded(a.degraded);
            let (attached, attached_rx) = oneshot::channel();
            let handle = resource::spawn(
                a.engine,
                attached,
                a.data,
                a.meta,
                shared,
                self.registry.clone(),
                self.board.clone(),
                hub.clone(),
                crate::handlers::Handlers {
                    resource: eff.name.clone(),
                    minor: vol.minor,
                    volume: vol.vnr,
                    peer: eff
                        .peer
                        .as_ref()
                        .and_then(|p| p.names.first().cloned())
                        .unwrap_or_default(),
                    commands: eff.handlers.clone(),
                },
            );
            self.registry.install(&eff.name, handle.clone());
            started.push((handle, attached_rx));
        }
        let mut handles = Vec::new();
        for (handle, rx) in started {
            if result.is_ok() {
                result = rx.await.unwrap_or_else(|_| {
                    Err(ControlError::new(
                        E_EXEC_ERROR,
                        format!("{}: the resource task ended while attaching", eff.name),
                    ))
                });
            }
            handles.push(handle);
        }
        if result.is_err() {
            // Leave nothing half up: the metadata stays as the failed attach left it.
            for handle in handles {
                let (reply, rx) = oneshot::channel();
                let down = Control::Command {
                    cmd: Command::Down,
                    shutdown: true,
                    reply,
                };
                if handle.control.send(down).await.is_ok() {
                    let _ = tokio::time::timeout(DOWN_LIMIT, rx).await;
                }
            }
        }
        result
    }

    /// `detach`: the volumes stay configured, Diskless. Detaching a Diskless volume does
    /// nothing, as in DRBD.
    async fn detach(&self, res: &str) -> Result<(), ControlError> {
        for h in self.handles_of(res)? {
            let (reply, rx) = oneshot::channel();
            h.control
                .send(Control::Detach { reply })
                .await
                .map_err(|_| not_up(res))?;
            rx.await.map_err(|_| not_up(res))??;
        }
        Ok(())
    }

    /// `attach` of the Diskless volumes `res` names, with the same checks and messages as
    /// `up`'s attach.
    async fn attach_disk(&self, config: PathBuf, res: String) -> Result<(), ControlError> {
        let (eff, vols) = self.load(&config, &res).await?;
        let name = split_target(&res).0.to_string();
        let hs = match self.registry.get(&name) {
            Some(v) if vols.iter().any(|x| v.starting.contains(&x.vnr)) => {
                return Err(transient(&res, "being brought up"))
            }
            Some(v) => v.up,
            None => {
                return Err(ControlError::new(
                    10,
                    format!(
                        "{}: Failure: (127) Device minor not allocated; run drbdadm up {name}",
                        vols[0].minor
                    ),
                ))
            }
        };
        for vol in &vols {
            let Some(h) = hs.iter().find(|h| h.shared.volume == vol.vnr) else {
                return Err(ControlError::new(
                    10,
                    format!(
                        "{}: Failure: (127) Device minor not allocated; run drbdadm up {name}/{}",
                        vol.minor, vol.vnr
                    ),
                ));
            };
            if vol.disk.is_none() {
                return Err(ControlError::new(
                    10,
                    format!(
                        "{}: volume {} of {name} has no disk ('disk none'); nothing to attach",
                        vol.minor, vol.vnr
                    ),
                ));
            }
            self.attach_volume(&eff, vol, h).await?;
        }
        Ok(())
    }

    async fn attach_volume(
        &self,
        eff: &EffectiveResource,
        vol: &EffectiveVolume,
        h: &resource::Handle,
    ) -> Result<(), ControlError> {
        let res = &eff.name;
        // The engine runs without its disk (after `detach` or an I/O error) and takes the
        // reopened disk itself.
        let (reply, rx) = oneshot::channel();
        let probe = Control::Status { reply };
        h.control.send(probe).await.map_err(|_| not_up(res))?;
        let st = rx.await.map_err(|_| not_up(res))?;
        if st.state.disk > DiskState::Diskless {
            return Err(ControlError::new(
                10,
                format!("{}: {}", vol.minor, StateChangeError::DiskConfigured),
            ));
        }
        info!(
            "block drbd{}: attaching {} again (resource {res}, volume {})",
            vol.minor,
            vol.disk.as_deref().unwrap_or("none"),
            vol.vnr
        );
        let (name, v) = (eff.name.clone(), vol.clone());
        let backing = blocking(move || crate::disk::open_volume(&name, &v)).await?;
        let (reply, rx) = oneshot::channel();
        let msg = Control::Reattach {
            backing: Box::new(backing),
            reply,
        };
        h.control.send(msg).await.map_err(|_| not_up(res))?;
        // A re-attach whose metadata write fails goes back to Diskless by itself.
        rx.await.unwrap_or_else(|_| {
            Err(ControlError::new(
                E_EXEC_ERROR,
                format!("{res}: the resource task ended while attaching"),
            ))
        })
    }

    /// `wait-connect`: waits on each volume's state changes with the timeout drbdsetup would
    /// choose (the kernel's `get_timeout_type`).
    async fn wait_connect(
        &self,
        res: &str,
        t: WaitTimeouts,
        wait_after_sb: bool,
    ) -> Result<(), ControlError> {
        for h in self.handles_of(res)? {
            self.wait_connect_volume(res, &h, t, wait_after_sb).await?;
        }
        Ok(())
    }

    async fn wait_connect_volume(
        &self,
        res: &str,
        h: &resource::Handle,
        t: WaitTimeouts,
        wait_after_sb: bool,
    ) -> Result<(), ControlError> {
        let mut rx = h.shared.subscribe();
        let first = (*rx.borrow()).ok_or_else(|| not_up(res))?;
        let (secs, which) = if first.pdsk == DiskState::Outdated {
            (t.outdated, "outdated-wfc-timeout")
        } else if h.shared.is_degraded() {
            (t.degraded, "degr-wfc-timeout")
        } else {
            (t.wfc, "wfc-timeout")
        };
        let deadline =
            (secs > 0).then(|| tokio::time::Instant::now() + Duration::from_secs(secs.into()));
        loop {
            let Some(st) = *rx.borrow_and_update() else {
                return Err(not_up(res));
            };
            if st.conn >= ConnState::Connected
                || (st.conn < ConnState::Unconnected && !wait_after_sb)
            {
                return Ok(());
            }
            let changed = match deadline {
                Some(d) => match tokio::time::timeout_at(d, rx.changed()).await {
                    Ok(c) => c,
                    Err(_) => {
                        return Err(ControlError::new(
                            EXIT_TIMEOUT,
                            format!(
                                "{res}: not connected within {secs} s ({which}); the peer did not answer"
                            ),
                        ))
                    }
                },
                None => rx.changed().await,
            };
            if changed.is_err() {
                return Err(not_up(res));
            }
        }
    }
}

/// `NAME/N` -> (`NAME`, `Some(N)`); `NAME` -> (`NAME`, `None`). Resource names have no `/`.
pub fn split_target(res: &str) -> (&str, Option<u32>) {
    match res.split_once('/') {
        Some((name, v)) => match v.parse() {
            Ok(n) => (name, Some(n)),
            Err(_) => (res, None),
        },
        None => (res, None),
    }
}

/// `drbdsetup wait-connect`'s exit code when the timeout expires.
const EXIT_TIMEOUT: i32 = 5;

/// A refusal while the resource is `what` (being brought up or taken down): retry.
fn transient(res: &str, what: &str) -> ControlError {
    ControlError::new(11, format!("{res}: in transient state ({what}); retry"))
}

fn not_up(res: &str) -> ControlError {
    ControlError::new(
        10,
        format!("{res}: Failure: (158) Unknown resource; run drbdadm up {res} first"),
    )
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ControlError> + Send + 'static,
) -> Result<T, ControlError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ControlError::new(E_EXEC_ERROR, format!("internal error: {e}")))?
}

/// Eight bytes of entropy for the engine's generation UUIDs.
fn entropy() -> std::io::Result<u64> {
    use std::io::Read;
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// Takes the daemon's exclusive lock on `<run_dir>/tandemd.lock` and writes its pid there;
/// keep the file open for the daemon's lifetime.
///
/// # Errors
/// Another daemon holds it (`WouldBlock`), or the file cannot be opened.
pub fn lock_run_dir(run_dir: &Path) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(run_dir.join(drbdadm_compat::control::LOCK_FILE))?;
    // SAFETY: flock on a file descriptor we own; no memory is passed.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The holder's pid, for operators and tests (`kill $(cat tandemd.lock)`).
    f.set_len(0)?;
    std::io::Write::write_all(&mut &f, format!("{}\n", std::process::id()).as_bytes())?;
    Ok(f)
}
