//! One task per volume of a resource: it owns the volume's engine and `select!`s over control
//! commands, NBD requests, disk completions and its share of the resource's peer link
//! ([`crate::link::Hub`]), draining the engine's outputs after every input.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use drbdadm_compat::control::ControlError;
use nbd_server::file::FileDevice;
use repl_core::engine::{
    CallId, Command, CommandError, DiskResult, Engine, Event, OpId, Output, ReqId, Request,
    RequestError, SubmitError,
};
use repl_core::state::{ConnState, DiskState, NodeState, Role};
use repl_core::status::Status;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tracing::{info, warn};

use crate::link::{Hub, LinkControl, LinkEvent, VolumeTx};
use crate::status_file::StatusBoard;

/// How often the status file's counters are refreshed while requests complete.
const COUNTERS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Exit code for refusals that are not state-change errors (`drbdsetup`'s default).
const EXIT_REFUSED: i32 = 11;

/// What the export and the control server know of a volume without asking its task.
#[derive(Debug)]
pub struct Shared {
    pub name: String,
    pub volume: u32,
    pub minor: u32,
    /// Usable bytes of the attached disk.
    size: AtomicU64,
    primary: AtomicBool,
    /// Open NBD sessions (devices handed out and not yet dropped).
    open: AtomicUsize,
    closed: Notify,
    /// The node's states for waiters (`wait-connect`); `None` once the resource is down.
    state: watch::Sender<Option<NodeState>>,
    /// The node was a Primary without a connection when it went down, so `wait-connect` uses
    /// `degr-wfc-timeout` (DRBD's `USE_DEGR_WFC_T`), until it connects.
    degraded: AtomicBool,
}

impl Shared {
    pub fn new(name: &str, volume: u32, minor: u32, size: u64) -> Shared {
        Shared {
            name: name.into(),
            volume,
            minor,
            size: AtomicU64::new(size),
            primary: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            closed: Notify::new(),
            state: watch::Sender::new(None),
            degraded: AtomicBool::new(false),
        }
    }

    /// Usable bytes of the attached disk.
    pub fn size(&self) -> u64 {
        self.size.load(SeqCst)
    }

    /// Whether `wait-connect` uses `degr-wfc-timeout`.
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(SeqCst)
    }

    /// Marks an attach of metadata that says the node went down as a Primary without a peer.
    pub fn set_degraded(&self, degraded: bool) {
        self.degraded.store(degraded, SeqCst);
    }

    /// The node's states as they change; `None` once the resource is down.
    pub fn subscribe(&self) -> watch::Receiver<Option<NodeState>> {
        self.state.subscribe()
    }

    fn publish_state(&self, state: Option<NodeState>) {
        if let Some(s) = state {
            if s.conn >= ConnState::Connected {
                self.degraded.store(false, SeqCst);
            }
        }
        self.state.send_replace(state);
    }

    /// Counts an opener if the resource is Primary now. Paired with the demotion in
    /// [`Task::command`] (role cleared before the count is read; here the count is raised
    /// before the role is read), so that either the opener sees Secondary or the demotion
    /// sees the opener.
    pub fn try_open(self: &Arc<Self>) -> Option<OpenGuard> {
        self.open.fetch_add(1, SeqCst);
        let guard = OpenGuard(self.clone());
        self.primary.load(SeqCst).then_some(guard)
    }

    pub fn is_primary(&self) -> bool {
        self.primary.load(SeqCst)
    }

    pub fn open_count(&self) -> usize {
        self.open.load(SeqCst)
    }

    /// Waits at most `limit` for every open session to end.
    pub async fn wait_closed(&self, limit: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.open_count() == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }
}

/// One open NBD session of a resource; dropped when the session's device is.
#[derive(Debug)]
pub struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, SeqCst);
        self.0.closed.notify_waiters();
    }
}

/// A control message for a resource task.
#[derive(Debug)]
pub enum Control {
    /// An operator command; `shutdown` makes `Down` ignore open NBD sessions (daemon exit).
    Command {
        cmd: Command,
        shutdown: bool,
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
    /// `connect`, with `--discard-my-data` for the next connection only.
    Connect {
        discard_my_data: bool,
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    /// `detach`: the engine goes Diskless and stays up ([`Command::Detach`]); answered once
    /// the metadata is clean and the disk released.
    Detach {
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
    /// `attach` of a volume whose engine runs without its disk (after `detach` or an I/O
    /// error): the reopened devices and metadata go to the running engine
    /// ([`Engine::reattach`]); `reply` is answered once the attach's metadata is durable.
    Reattach {
        backing: Box<crate::disk::Backing>,
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
}

/// An engine attached to freshly opened metadata (or a diskless one, without devices).
pub struct Attachment {
    pub engine: Engine,
    pub data: Option<Arc<FileDevice>>,
    pub meta: Option<Arc<FileDevice>>,
    /// Usable bytes.
    pub size: u64,
    /// See [`Shared::set_degraded`].
    pub degraded: bool,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment")
            .field("state", &self.engine.state())
            .field("size", &self.size)
            .field("degraded", &self.degraded)
            .finish_non_exhaustive()
    }
}

/// A block request from an NBD session, answered on `reply`.
#[derive(Debug)]
pub struct Io {
    pub req: Request,
    pub reply: oneshot::Sender<io::Result<Option<Bytes>>>,
}

/// How to reach a running volume task.
#[derive(Debug, Clone)]
pub struct Handle {
    pub shared: Arc<Shared>,
    pub control: mpsc::Sender<Control>,
    pub io: mpsc::Sender<Io>,
}

/// Resources by name: the volumes that are up, those an `up` is bringing up, and the peer
/// link they share. One lock makes each step atomic: an `up` claims only volumes that are
/// neither up nor being brought up, never while a `down` of the resource is under way, and a
/// `down` starts only when no volume is being brought up, so a volume added to a running
/// resource is either taken down with it or refused.
#[derive(Debug, Default)]
pub struct Registry {
    map: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug, Default)]
struct Entry {
    /// Volume tasks in volume order.
    up: Vec<Handle>,
    /// Volumes claimed by an `up` whose tasks are not installed yet.
    starting: BTreeSet<u32>,
    /// `down`s under way: no volume may be added meanwhile.
    downs: usize,
    /// The resource's peer link; every volume that comes up while the resource is up joins
    /// this one.
    hub: Option<Arc<Hub>>,
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.up.is_empty() && self.starting.is_empty()
    }
}

/// A `down` under way (from [`Registry::begin_down`]); volumes may be added again once it is
/// dropped, whether the `down` was done or refused.
#[derive(Debug)]
pub struct Downing<'a> {
    registry: &'a Registry,
    name: &'a str,
}

impl Drop for Downing<'_> {
    fn drop(&mut self) {
        if let Some(e) = self.registry.lock().get_mut(self.name) {
            e.downs = e.downs.saturating_sub(1);
        }
    }
}

/// What [`Registry::reserve`] claimed for an `up`.
#[derive(Debug)]
pub struct Claim {
    /// The volumes this `up` brings up, in the order asked.
    pub volumes: Vec<u32>,
    /// The resource's peer link (the running one, or the new one for a resource not up).
    pub hub: Option<Arc<Hub>>,
}

/// Why [`Registry::reserve`] claimed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// Every volume asked for is up or being brought up.
    Up,
    /// A `down` of the resource is under way.
    GoingDown,
}

/// A resource's volumes as the registry has them.
#[derive(Debug, Clone, Default)]
pub struct Volumes {
    /// The tasks of the volumes that are up, in volume order.
    pub up: Vec<Handle>,
    /// Volumes being brought up.
    pub starting: Vec<u32>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Claims for an `up` those of `wanted` that are neither up nor being brought up. A
    /// resource that is not up gets the link `new_hub(number of volumes claimed)` makes; one
    /// that is up keeps its own, which the new volumes join.
    ///
    /// # Errors
    /// Nothing is left to claim, or a `down` of the resource is under way.
    pub fn reserve(
        &self,
        name: &str,
        wanted: &[u32],
        new_hub: impl FnOnce(usize) -> Option<Arc<Hub>>,
    ) -> Result<Claim, Busy> {
        let mut m = self.lock();
        let e = m.entry(name.into()).or_default();
        if e.downs > 0 {
            return Err(Busy::GoingDown);
        }
        let volumes: Vec<u32> = wanted
            .iter()
            .copied()
            .filter(|v| !e.starting.contains(v) && e.up.iter().all(|h| h.shared.volume != *v))
            .collect();
        if volumes.is_empty() {
            if e.is_empty() {
                m.remove(name);
            }
            return Err(Busy::Up);
        }
        if e.is_empty() {
            e.hub = new_hub(volumes.len());
        }
        e.starting.extend(&volumes);
        Ok(Claim {
            volumes,
            hub: e.hub.clone(),
        })
    }

    /// Adds a claimed volume's task to its resource.
    pub fn install(&self, name: &str, h: Handle) {
        let mut m = self.lock();
        let e = m.entry(name.into()).or_default();
        e.starting.remove(&h.shared.volume);
        e.up.retain(|x| x.shared.volume != h.shared.volume);
        e.up.push(h);
        e.up.sort_by_key(|x| x.shared.volume);
    }

    /// Gives back what a failed `up` claimed (and the tasks it installed); the resource is
    /// gone if nothing else of it is up.
    pub fn release(&self, name: &str, volumes: &[u32]) {
        let mut m = self.lock();
        if let Some(e) = m.get_mut(name) {
            e.starting.retain(|v| !volumes.contains(v));
            e.up.retain(|h| !volumes.contains(&h.shared.volume));
            if e.is_empty() {
                m.remove(name);
            }
        }
    }

    /// A volume's task ended; the resource is gone with its last volume.
    pub fn release_volume(&self, shared: &Arc<Shared>) {
        let mut m = self.lock();
        if let Some(e) = m.get_mut(&shared.name) {
            // This task only: a task of the same volume brought up since stays.
            e.up.retain(|x| !Arc::ptr_eq(&x.shared, shared));
            if e.is_empty() {
                m.remove(&shared.name);
            }
        }
    }

    /// A resource's volumes; `None` when nothing of it is up or being brought up.
    pub fn get(&self, name: &str) -> Option<Volumes> {
        self.lock().get(name).map(|e| Volumes {
            up: e.up.clone(),
            starting: e.starting.iter().copied().collect(),
        })
    }

    /// Starts a `down` of the whole resource: its volume tasks, and a guard under which no
    /// volume is added. `None` when it is not up; `Err` while a volume is being brought up.
    pub fn begin_down<'a>(
        &'a self,
        name: &'a str,
    ) -> Option<Result<(Vec<Handle>, Downing<'a>), ()>> {
        let mut m = self.lock();
        let e = m.get_mut(name)?;
        if !e.starting.is_empty() {
            return Some(Err(()));
        }
        e.downs += 1;
        Some(Ok((
            e.up.clone(),
            Downing {
                registry: self,
                name,
            },
        )))
    }

    /// Every volume of every resource that is up.
    pub fn handles(&self) -> Vec<Handle> {
        self.lock().values().flat_map(|e| e.up.clone()).collect()
    }
}

#[cfg(test)]
mod registry_tests {
    use super::*;

    fn handle(volume: u32) -> Handle {
        let (control, _) = mpsc::channel(1);
        let (io, _) = mpsc::channel(1);
        Handle {
            shared: Arc::new(Shared::new("r0", volume, volume, 0)),
            control,
            io,
        }
    }

    #[test]
    fn a_volume_added_to_a_running_resource_shares_its_link() {
        let r = Registry::default();
        let c = r
            .reserve("r0", &[1], |n| Some(crate::link::test_hub(n)))
            .expect("r0/1 is free");
        assert_eq!(c.volumes, vec![1]);
        let hub = c.hub.expect("a new link for r0");
        r.install("r0", handle(1));
        let c = r
            .reserve("r0", &[0, 1], |_| panic!("r0 is up: no new link"))
            .expect("volume 0 is missing");
        assert_eq!(c.volumes, vec![0], "only the missing volume");
        assert!(Arc::ptr_eq(&hub, &c.hub.expect("r0's link")));
        let v = r.get("r0").expect("r0");
        assert_eq!((v.up.len(), v.starting), (1, vec![0]));
        assert_eq!(r.reserve("r0", &[0], |_| None).unwrap_err(), Busy::Up);
        assert_eq!(r.reserve("r0", &[1], |_| None).unwrap_err(), Busy::Up);
        r.install("r0", handle(0));
        let up: Vec<u32> = r.handles().iter().map(|h| h.shared.volume).collect();
        assert_eq!(up, vec![0, 1]);
    }

    #[test]
    fn down_and_adding_a_volume_exclude_each_other() {
        let r = Registry::default();
        assert!(r.begin_down("r0").is_none(), "nothing is up");
        r.reserve("r0", &[1], |_| None).expect("free");
        r.install("r0", handle(1));
        r.reserve("r0", &[0], |_| None).expect("free");
        assert!(
            matches!(r.begin_down("r0"), Some(Err(()))),
            "no down while a volume comes up"
        );
        r.install("r0", handle(0));
        let (hs, downing) = r.begin_down("r0").expect("up").expect("nothing starting");
        assert_eq!(hs.len(), 2);
        r.release_volume(&hs[0].shared);
        assert_eq!(
            r.reserve("r0", &[0], |_| None).unwrap_err(),
            Busy::GoingDown,
            "no volume joins a resource going down"
        );
        drop(downing);
        r.reserve("r0", &[0], |_| None).expect("the down is over");
    }

    #[test]
    fn a_failed_up_gives_back_only_what_it_claimed() {
        let r = Registry::default();
        r.reserve("r0", &[1], |_| None).expect("free");
        let one = handle(1);
        r.install("r0", one.clone());
        r.reserve("r0", &[0], |_| None).expect("free");
        r.release("r0", &[0]);
        let v = r.get("r0").expect("volume 1 stays up");
        assert_eq!((v.up.len(), v.starting.len()), (1, 0));
        // A late release from an older task of volume 1 leaves the running one alone.
        r.release_volume(&handle(1).shared);
        assert_eq!(r.get("r0").expect("r0").up.len(), 1);
        // A volume that is still coming up keeps the resource (and its link) when the last
        // running one goes.
        r.reserve("r0", &[0], |_| None).expect("free");
        r.release_volume(&one.shared);
        assert_eq!(r.get("r0").expect("r0").starting, vec![0]);
        r.release("r0", &[0]);
        assert!(r.get("r0").is_none());
    }
}

/// The task's state.
pub struct Task {
    engine: Engine,
    /// The backing and metadata devices; `None` for a volume without a disk (`disk none`).
    data: Option<Arc<FileDevice>>,
    meta: Option<Arc<FileDevice>>,
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    board: Arc<StatusBoard>,
    done_tx: mpsc::UnboundedSender<(OpId, DiskResult)>,
    /// Exit statuses of the handlers the engine waits for, back from their tasks, with the
    /// [`Task::engine_gen`] that asked.
    handler_tx: mpsc::UnboundedSender<(u64, CallId, i32)>,
    /// Counts engines (a re-`attach` installs a new one): a handler's status goes back only
    /// to the engine that called it.
    engine_gen: u64,
    pending: HashMap<ReqId, oneshot::Sender<io::Result<Option<Bytes>>>>,
    /// Callers of `down` waiting for the engine's `Down`.
    down_waiters: Vec<oneshot::Sender<Result<(), ControlError>>>,
    /// The reply to a command that waits for the peer's consent (a cluster-wide state change).
    command_waiter: Option<oneshot::Sender<Result<(), ControlError>>>,
    /// The `up` caller, answered once the attach's superblock is durable.
    attached: Option<oneshot::Sender<Result<(), ControlError>>>,
    /// An accepted `Down`: no new opener may get in, whatever the role.
    going_down: bool,
    finished: bool,
    /// The status file is to be rewritten after this drain.
    status_dirty: bool,
    /// Requests completed since the status file was written (its counters are stale).
    counters_dirty: bool,
    /// This volume's share of the resource's peer link, for a resource with a peer.
    link: Option<PeerLink>,
    /// The engine's time origin.
    origin: tokio::time::Instant,
    handlers: crate::handlers::Handlers,
    /// Who waits for a `detach` to finish.
    detach_waiters: Vec<oneshot::Sender<Result<(), ControlError>>>,
    /// Connect once the attach is durable (false after the operator's `disconnect`).
    autoconnect: bool,
    /// `connect --discard-my-data` was given and no connection has used it yet: it goes to
    /// the link task with the connect (or when the task starts), and the flag the handshake
    /// actually carried comes back with the link's `Up`, which clears it.
    discard_my_data: bool,
}

/// A volume's side of its resource's peer link.
struct PeerLink {
    hub: Arc<Hub>,
    events: mpsc::UnboundedSender<LinkEvent>,
    /// The volume has joined the hub (from the first connect until down).
    joined: bool,
    /// The connection the engine is attached to, and where its packets go.
    conn: u64,
    tx: Option<VolumeTx>,
}

/// Starts the task of an attached engine and returns its handle; `attached` is answered when
/// the attach's metadata is durable (or failed).
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    engine: Engine,
    attached: oneshot::Sender<Result<(), ControlError>>,
    data: Option<Arc<FileDevice>>,
    meta: Option<Arc<FileDevice>>,
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    board: Arc<StatusBoard>,
    link: Option<Arc<Hub>>,
    handlers: crate::handlers::Handlers,
) -> Handle {
    let (control_tx, control_rx) = mpsc::channel(16);
    let (io_tx, io_rx) = mpsc::channel(256);
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let (link_tx, link_rx) = mpsc::unbounded_channel();
    let (handler_tx, handler_rx) = mpsc::unbounded_channel();
    let link = link.map(|hub| PeerLink {
        hub,
        events: link_tx,
        joined: false,
        conn: 0,
        tx: None,
    });
    let task = Task {
        engine,
        data,
        meta,
        shared: shared.clone(),
        registry,
        board,
        done_tx,
        handler_tx,
        engine_gen: 0,
        pending: HashMap::new(),
        down_waiters: Vec::new(),
        command_waiter: None,
        attached: Some(attached),
        going_down: false,
        finished: false,
        status_dirty: true,
        counters_dirty: false,
        link,
        origin: tokio::time::Instant::now(),
        handlers,
        detach_waiters: Vec::new(),
        autoconnect: true,
        discard_my_data: false,
    };
    shared.publish_state(Some(task.engine.state()));
    tokio::spawn(task.run(Inputs {
        control: control_rx,
        io: io_rx,
        done: done_rx,
        link: link_rx,
        handlers: handler_rx,
    }));
    Handle {
        shared,
        control: control_tx,
        io: io_tx,
    }
}

/// What a resource task listens to.
struct Inputs {
    control: mpsc::Receiver<Control>,
    io: mpsc::Receiver<Io>,
    done: mpsc::UnboundedReceiver<(OpId, DiskResult)>,
    link: mpsc::UnboundedReceiver<LinkEvent>,
    /// Exit statuses of handlers the engine waits for.
    handlers: mpsc::UnboundedReceiver<(u64, CallId, i32)>,
}

impl Task {
    async fn run(mut self, mut inputs: Inputs) {
        self.serve(&mut inputs).await;
        self.leave_link();
        // Requests that raced with the end get an error instead of silence.
        let io = &mut inputs.io;
        io.close();
        while let Ok(r) = io.try_recv() {
            let _ = r.reply.send(Err(submit_error(SubmitError::Down)));
        }
    }

    /// Drives the engine until it is down.
    async fn serve(&mut self, inputs: &mut Inputs) {
        if self.engine.state().disk <= DiskState::Diskless {
            // A volume without a disk has no metadata to make durable: it is up now.
            if let Some(up) = self.attached.take() {
                let _ = up.send(Ok(()));
                if self.autoconnect {
                    self.start_link();
                }
            }
        }
        self.drain();
        let mut tick = tokio::time::interval(COUNTERS_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while !self.finished {
            let engine_tick = self.engine.next_tick().map(|t| self.instant(t));
            tokio::select! {
                // Completions first: they free what waiting requests need.
                biased;
                Some((op, result)) = inputs.done.recv() => {
                    let now = self.now();
                    self.engine.disk_done(op, result, now);
                }
                Some(ev) = inputs.link.recv() => self.link_event(ev),
                Some((gen, call, status)) = inputs.handlers.recv() => {
                    if gen == self.engine_gen {
                        let now = self.now();
                        self.engine.handler_returned(call, status, now);
                    }
                }
                Some(c) = inputs.control.recv() => self.control(c),
                Some(r) = inputs.io.recv() => self.io(r),
                _ = sleep_until_some(engine_tick), if engine_tick.is_some() => {
                    let now = self.now();
                    self.engine.tick(now);
                    self.counters_dirty = true;
                }
                _ = tick.tick(), if self.counters_dirty => self.status_dirty = true,
                else => break,
            }
            self.drain();
        }
    }

    /// `detach` ([`Command::Detach`]): refused as DRBD refuses it (a Primary that would lose
    /// its only good data); answered at [`Event::Detached`], or at once when already Diskless.
    fn detach(&mut self, reply: oneshot::Sender<Result<(), ControlError>>) {
        match self.command(Command::Detach, false) {
            Err(e) => {
                let _ = reply.send(Err(self.refusal(e)));
            }
            Ok(()) if self.engine.state().disk <= DiskState::Diskless => {
                let _ = reply.send(Ok(()));
            }
            Ok(()) => self.detach_waiters.push(reply),
        }
    }

    /// The engine's notion of now: time since the task started.
    fn now(&self) -> repl_core::time::Instant {
        let d = self.origin.elapsed();
        repl_core::time::Instant::from_nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    /// An engine instant as a tokio instant.
    fn instant(&self, t: repl_core::time::Instant) -> tokio::time::Instant {
        self.origin + std::time::Duration::from_nanos(t.as_nanos())
    }

    /// Connects the engine and joins the link (after the attach is durable).
    fn start_link(&mut self) {
        if self.link.as_ref().is_none_or(|l| l.joined) {
            return;
        }
        if let Err(e) = self.engine.command(Command::Connect, false) {
            warn!("{}: connect: {e}", self.prefix());
            return;
        }
        self.spawn_link();
    }

    /// Joins the resource's link (which starts once every volume of `up` has joined).
    fn spawn_link(&mut self) {
        let prefix = self.prefix();
        let volume = self.shared.volume;
        let Some(link) = self.link.as_mut() else {
            return;
        };
        if link.joined {
            return;
        }
        link.joined = true;
        let spec = link.hub.spec();
        info!(
            "{prefix}: {} {} -> {} ({})",
            if spec.accepts() {
                "listening on"
            } else {
                "connecting from"
            },
            spec.local,
            spec.peer,
            spec.config.peer_node
        );
        let Ok(vnr) = u16::try_from(volume) else {
            warn!("{prefix}: volume {volume} cannot travel on the wire (at most 65535)");
            return;
        };
        link.hub
            .join(vnr, link.events.clone(), self.discard_my_data);
    }

    /// Leaves the resource's link (down); the link stops with its last volume.
    fn leave_link(&mut self) {
        let volume = self.shared.volume;
        if let Some(link) = self.link.as_mut() {
            link.tx = None;
            if std::mem::take(&mut link.joined) {
                if let Ok(vnr) = u16::try_from(volume) {
                    link.hub.leave(vnr);
                }
            }
        }
    }

    fn link_event(&mut self, ev: LinkEvent) {
        let prefix = self.prefix();
        let Some(link) = self.link.as_mut() else {
            return;
        };
        match ev {
            LinkEvent::Up {
                conn,
                peer,
                tx,
                discard_my_data,
            } => {
                // The link task has used the flag up, whatever happens to this connection.
                self.discard_my_data = false;
                if !self.engine.wants_link() {
                    link.hub.control(LinkControl::Close { reconnect: false });
                    return;
                }
                info!(
                    "{prefix}: connected to {} (protocol {:?}){}",
                    peer.node,
                    peer.protocol,
                    if discard_my_data {
                        ", discarding my data if there is a split brain"
                    } else {
                        ""
                    }
                );
                link.conn = conn;
                link.tx = Some(tx);
                self.engine.peer_connected(repl_core::engine::LinkParams {
                    protocol: peer.protocol,
                    integrity: peer.integrity,
                    resolve_conflicts: peer.resolve_conflicts,
                    discard_my_data,
                    version: peer.version,
                });
            }
            LinkEvent::Packet { conn, packet } => {
                if conn == link.conn && link.tx.is_some() {
                    let now = self.now();
                    self.engine.receive(packet, now);
                }
            }
            LinkEvent::Down {
                conn,
                reason,
                reconnect,
                timed_out,
            } => {
                if conn == link.conn && link.tx.take().is_some() {
                    warn!("{prefix}: connection lost: {reason}");
                    if timed_out {
                        self.engine.peer_timed_out();
                    } else {
                        self.engine.peer_lost();
                    }
                    if !reconnect && self.engine.state().conn > ConnState::StandAlone {
                        // Another volume closed the connection for good (a split brain, a
                        // `disconnect`): the resource is StandAlone.
                        self.autoconnect = false;
                        let _ = self.engine.command(Command::Disconnect, false);
                    }
                }
            }
        }
        // State changes mark the status file themselves; counters refresh at most once a
        // second (rewriting the file for every packet cost a millisecond per write).
        self.counters_dirty = true;
    }

    fn prefix(&self) -> String {
        format!("block drbd{}", self.shared.minor)
    }

    fn control(&mut self, c: Control) {
        match c {
            Control::Status { reply } => {
                let _ = reply.send(self.engine.status());
            }
            Control::Detach { reply } => self.detach(reply),
            Control::Connect {
                discard_my_data,
                reply,
            } => {
                let r = self.connect(discard_my_data);
                let _ = reply.send(r);
            }
            Control::Reattach { backing, reply } => self.reattach(*backing, reply),
            Control::Command {
                cmd,
                shutdown,
                reply,
            } => {
                let r = self.command(cmd, shutdown);
                match (cmd, r) {
                    (Command::Down, Ok(())) => self.down_waiters.push(reply),
                    (Command::Down, Err(CommandError::GoingDown)) => self.down_waiters.push(reply),
                    (_, Ok(())) if self.engine.command_pending() => {
                        self.command_waiter = Some(reply);
                    }
                    (_, r) => {
                        let _ = reply.send(r.map_err(|e| self.refusal(e)));
                    }
                }
            }
        }
    }

    fn command(&mut self, cmd: Command, shutdown: bool) -> Result<(), CommandError> {
        info!("{}: {}", self.prefix(), describe(cmd));
        let demotes = matches!(cmd, Command::Secondary | Command::Down);
        if demotes {
            self.shared.primary.store(false, SeqCst);
        }
        let device_open = !shutdown && self.shared.open.load(SeqCst) > 0;
        let r = self.engine.command(cmd, device_open);
        if cmd == Command::Down && r.is_ok() {
            self.going_down = true;
        }
        if demotes {
            // Refused, or not a demotion: the role is what the engine says.
            let primary = self.engine.state().role == Role::Primary && !self.going_down;
            self.shared.primary.store(primary, SeqCst);
        }
        if let Err(e) = &r {
            warn!("{}: {e}", self.prefix());
        }
        if cmd == Command::Connect && r.is_ok() {
            self.autoconnect = true;
            match self.link.as_ref() {
                Some(link) if link.joined => link.hub.control(LinkControl::Connect {
                    discard_my_data: self.discard_my_data,
                }),
                // Attached while StandAlone: the volume joins the link now.
                _ => self.spawn_link(),
            }
        }
        if cmd == Command::Disconnect && r.is_ok() {
            self.autoconnect = false;
            // DRBD's `disconnect` drops the net options, the flag with them.
            self.discard_my_data = false;
        }
        r
    }

    /// `connect`, `--discard-my-data` for the next connection only. DRBD refuses a `connect`
    /// that is not StandAlone; tandemd takes a plain one as a no-op that leaves the flag as it
    /// is, and refuses `--discard-my-data`, so the flag is set only where a connection starts
    /// and never waits unnoticed for some later reconnect.
    fn connect(&mut self, discard_my_data: bool) -> Result<(), ControlError> {
        let standalone = self.engine.state().conn == ConnState::StandAlone;
        if discard_my_data && !standalone {
            let e = self.net_configured();
            warn!("{}: connect --discard-my-data: {e}", self.prefix());
            return Err(e);
        }
        let before = self.discard_my_data;
        if standalone {
            self.discard_my_data = discard_my_data;
        }
        let r = self.command(Command::Connect, false);
        if r.is_err() {
            self.discard_my_data = before;
        } else if discard_my_data {
            info!(
                "{}: discard-my-data: the next connection discards this node's data if it finds a split brain",
                self.prefix()
            );
        }
        r.map_err(|e| self.refusal(e))
    }

    /// `attach` of the running engine's lost disk: the engine replays the reopened metadata
    /// and, while connected, negotiates the disk with the peer again.
    fn reattach(
        &mut self,
        b: crate::disk::Backing,
        reply: oneshot::Sender<Result<(), ControlError>>,
    ) {
        info!("{}: attaching the disk again", self.prefix());
        let crate::disk::Backing {
            data,
            meta,
            on_disk,
            size: _,
        } = b;
        match self.engine.reattach(on_disk) {
            Ok(()) => {
                self.data = Some(data);
                self.meta = Some(meta);
                self.attached = Some(reply);
                self.status_dirty = true;
            }
            Err(e) => {
                warn!("{}: attach: {e}", self.prefix());
                let code = match &e {
                    repl_core::engine::AttachError::State(s) => s.exit_code(),
                    _ => 10,
                };
                let _ = reply.send(Err(ControlError::new(
                    code,
                    format!("{}: {e}", self.shared.minor),
                )));
            }
        }
    }

    /// DRBD's refusal of a `connect` on a resource that is not StandAlone.
    fn net_configured(&self) -> ControlError {
        ControlError::new(
            10,
            format!(
                "{}: Failure: (102) Device has a net-config (use disconnect first)",
                self.shared.name
            ),
        )
    }

    fn refusal(&self, e: CommandError) -> ControlError {
        let code = match &e {
            CommandError::State(s) => s.exit_code(),
            _ => EXIT_REFUSED,
        };
        ControlError::new(code, format!("{}: {e}", self.shared.minor))
    }

    fn io(&mut self, r: Io) {
        let now = self.now();
        match self.engine.submit(r.req, now) {
            Ok(id) => {
                self.pending.insert(id, r.reply);
            }
            Err(e) => {
                let _ = r.reply.send(Err(submit_error(e)));
            }
        }
    }

    /// Performs and routes everything the engine asked for.
    fn drain(&mut self) {
        while let Some(o) = self.engine.poll_output() {
            match o {
                Output::Disk { op, kind } => {
                    let (Some(data), Some(meta)) = (self.data.clone(), self.meta.clone()) else {
                        // No disk (`disk none`): the engine asks for none; fail what it does.
                        let now = self.now();
                        self.engine.disk_done(op, DiskResult::Failed, now);
                        continue;
                    };
                    let mut io =
                        Box::pin(async move { crate::disk::perform(&data, &meta, kind).await });
                    // Buffered writes and cached reads finish on their first poll (inline
                    // pwrite/preadv2): complete them here instead of two task hops later.
                    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                    match io.as_mut().poll(&mut cx) {
                        std::task::Poll::Ready(result) => {
                            let now = self.now();
                            self.engine.disk_done(op, result, now);
                        }
                        std::task::Poll::Pending => {
                            // Futures wake the waker of their latest poll: the task's.
                            let done = self.done_tx.clone();
                            tokio::spawn(async move {
                                let result = io.await;
                                let _ = done.send((op, result));
                            });
                        }
                    }
                }
                Output::Complete { req, result } => {
                    self.counters_dirty = true;
                    if let Some(reply) = self.pending.remove(&req) {
                        let _ = reply.send(result.map_err(request_error));
                    }
                }
                Output::Event(ev) => self.event(ev),
                Output::Send(p) => {
                    if let Some(tx) = self.link.as_ref().and_then(|l| l.tx.as_ref()) {
                        tx.send(p);
                    }
                }
                Output::Disconnect { reconnect } => {
                    if let Some(link) = self.link.as_mut() {
                        // The connection is the resource's: every volume loses it.
                        if link.tx.take().is_some() {
                            link.hub.control(LinkControl::Close { reconnect });
                        }
                    }
                }
            }
        }
        // A volume without a disk learns its size from the peer.
        self.shared.size.store(self.engine.size(), SeqCst);
        if self.status_dirty && !self.finished {
            self.status_dirty = false;
            self.counters_dirty = false;
            self.board.update(self.engine.status());
        }
    }

    fn event(&mut self, ev: Event) {
        match ev {
            Event::StateChanged { old, new } => {
                info!("{}: {}", self.prefix(), state_change(&old, &new));
                self.shared.publish_state(Some(new));
                if new.role != Role::Primary {
                    self.shared.primary.store(false, SeqCst);
                } else if !self.going_down {
                    self.shared.primary.store(true, SeqCst);
                }
                self.status_dirty = true;
            }
            Event::Log(line) => info!("{}: {line}", self.prefix()),
            Event::MetadataWritten => {
                self.status_dirty = true;
                if let Some(up) = self.attached.take() {
                    let failed = self.engine.state().disk <= DiskState::Failed;
                    let r = if failed {
                        Err(ControlError::new(
                            10,
                            format!(
                                "{}: Failure: (118) meta data I/O error while attaching {}",
                                self.shared.minor, self.shared.name
                            ),
                        ))
                    } else {
                        Ok(())
                    };
                    let _ = up.send(r);
                    if !failed && self.autoconnect {
                        self.start_link();
                    }
                }
            }
            Event::Down => {
                self.shared.publish_state(None);
                info!(
                    "{}: disk( {} -> Diskless )",
                    self.prefix(),
                    self.engine.state().disk
                );
                self.finished = true;
                self.shared.primary.store(false, SeqCst);
                self.registry.release_volume(&self.shared);
                self.board
                    .remove_minor(&self.shared.name, self.shared.minor);
                self.leave_link();
                info!(
                    "d-con {}: Terminating drbd_w_{}",
                    self.shared.name, self.shared.name
                );
                // A detach that waited is answered too: the disk is released.
                for w in self
                    .down_waiters
                    .drain(..)
                    .chain(self.detach_waiters.drain(..))
                {
                    let _ = w.send(Ok(()));
                }
            }
            Event::Detached => {
                if self.detach_waiters.is_empty() {
                    warn!(
                        "{}: the backing device failed and was detached",
                        self.prefix()
                    );
                }
                // Released, as DRBD releases a detached backing device; nothing goes to it
                // any more (operations still out hold their own references).
                self.data = None;
                self.meta = None;
                for w in self.detach_waiters.drain(..) {
                    let _ = w.send(Ok(()));
                }
            }
            Event::Handler(h) => self.handlers.run(h),
            Event::HandlerCall { handler, call } => {
                let (done, gen) = (self.handler_tx.clone(), self.engine_gen);
                self.handlers.call(handler, move |status| {
                    let _ = done.send((gen, call, status));
                });
            }
            Event::CommandDone { result } => {
                if let Err(e) = &result {
                    warn!("{}: {e}", self.prefix());
                }
                let r = result.map_err(|e| self.refusal(e));
                if let Some(w) = self.command_waiter.take() {
                    let _ = w.send(r);
                }
            }
        }
    }
}

/// What a command is, for the log.
fn describe(cmd: Command) -> String {
    match cmd {
        Command::Primary { force: true } => "primary --force".into(),
        Command::Primary { force: false } => "primary".into(),
        Command::Secondary => "secondary".into(),
        Command::NewCurrentUuid { clear_bitmap } => {
            if clear_bitmap {
                "new-current-uuid --clear-bitmap".into()
            } else {
                "new-current-uuid".into()
            }
        }
        Command::Outdate => "outdate".into(),
        Command::Connect => "connect".into(),
        Command::Disconnect => "disconnect".into(),
        Command::Invalidate => "invalidate".into(),
        Command::InvalidateRemote => "invalidate-remote".into(),
        Command::Down => "down".into(),
        Command::Detach => "detach".into(),
    }
}

/// DRBD's state change line: `role( Secondary -> Primary ) disk( Inconsistent -> UpToDate )`.
pub fn state_change(old: &NodeState, new: &NodeState) -> String {
    let mut parts = Vec::new();
    if old.role != new.role {
        parts.push(format!("role( {} -> {} )", old.role, new.role));
    }
    if old.peer != new.peer {
        parts.push(format!("peer( {} -> {} )", old.peer, new.peer));
    }
    if old.conn != new.conn {
        parts.push(format!("conn( {} -> {} )", old.conn, new.conn));
    }
    if old.disk != new.disk {
        parts.push(format!("disk( {} -> {} )", old.disk, new.disk));
    }
    if old.pdsk != new.pdsk {
        parts.push(format!("pdsk( {} -> {} )", old.pdsk, new.pdsk));
    }
    parts.join(" ")
}

fn submit_error(e: SubmitError) -> io::Error {
    let errno = match e {
        SubmitError::NotPrimary => libc::EROFS,
        SubmitError::OutOfRange { .. }
        | SubmitError::TooLarge(_)
        | SubmitError::Unaligned { .. } => libc::EINVAL,
        SubmitError::NoData(_) | SubmitError::Down => libc::EIO,
    };
    tracing::debug!("request refused: {e}");
    // The errno is what the NBD client receives.
    io::Error::from_raw_os_error(errno)
}

fn request_error(e: RequestError) -> io::Error {
    tracing::debug!("request failed: {e}");
    io::Error::from_raw_os_error(libc::EIO)
}

/// Sleeps until `at`; never returns when there is no deadline.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use repl_core::state::{ConnState, DiskState};

    #[test]
    fn state_changes_are_logged_in_drbd_words() {
        let old = NodeState {
            role: Role::Secondary,
            peer: Role::Unknown,
            conn: ConnState::StandAlone,
            disk: DiskState::Inconsistent,
            pdsk: DiskState::DUnknown,
        };
        let new = NodeState {
            role: Role::Primary,
            disk: DiskState::UpToDate,
            ..old
        };
        assert_eq!(
            state_change(&old, &new),
            "role( Secondary -> Primary ) disk( Inconsistent -> UpToDate )"
        );
    }

    #[test]
    fn openers_and_demotion_never_both_win() {
        let s = Arc::new(Shared::new("r0", 0, 0, 1 << 20));
        assert!(s.try_open().is_none(), "a Secondary refuses");
        assert_eq!(s.open_count(), 0, "a refused opener is not counted");
        s.primary.store(true, SeqCst);
        let g = s.try_open().expect("a Primary opens");
        assert_eq!(s.open_count(), 1);
        drop(g);
        assert_eq!(s.open_count(), 0);
    }

    #[test]
    fn refused_requests_carry_the_errno_nbd_sends() {
        assert_eq!(
            submit_error(SubmitError::NotPrimary).raw_os_error(),
            Some(libc::EROFS)
        );
        assert_eq!(
            submit_error(SubmitError::TooLarge(1 << 30)).raw_os_error(),
            Some(libc::EINVAL)
        );
    }
}
