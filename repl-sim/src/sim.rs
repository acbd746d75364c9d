//! One simulated run: two engines with their disks, the link between them, a virtual clock and
//! one seeded PRNG. Each step takes the earliest pending event, feeds it to an engine (or to a
//! disk, the link or an operator), drains every output the engine produced and routes it, then
//! runs the invariant checks. A fault phase of `steps` steps is followed by a healed phase that
//! must converge.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;

use bytes::Bytes;
use repl_core::engine::{
    CallId, Command, DiskOp, Engine, EngineConfig, Event, Handler, LinkParams, NetConfig,
    OnIoError, OpId, Output, ReqId, Request, RequestError,
};
use repl_core::link::{HmacAlg, Link, LinkConfig, Progress, NONCE_BYTES};
use repl_core::state::{ConnState, Context, DiskState, Fencing, Role};
use repl_core::wire::{encode_to_vec, AckKind, DataKind, Frame, IntegrityAlg, Packet, Protocol};

use crate::disk::{DiskTiming, SimDisk};
use crate::model::Model;
use crate::net::{Chunk, Corrupt, DirTiming, Net, SideState};
use crate::ops::MS;
use crate::rng::SimRng;
use crate::trace::Trace;
use crate::workload::{Op, Workload, SECTOR};

/// How hard the run is on the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultLevel {
    /// Workload and routine operator commands only.
    None,
    /// Occasional crashes, link drops, partitions, slow links, I/O errors, corruption.
    Light,
    /// All of them, often, plus full devices, double crashes, forced promotions and split brain.
    Heavy,
}

impl FaultLevel {
    pub fn name(self) -> &'static str {
        match self {
            FaultLevel::None => "none",
            FaultLevel::Light => "light",
            FaultLevel::Heavy => "heavy",
        }
    }
}

impl std::str::FromStr for FaultLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<FaultLevel, String> {
        match s {
            "none" => Ok(FaultLevel::None),
            "light" => Ok(FaultLevel::Light),
            "heavy" => Ok(FaultLevel::Heavy),
            _ => Err(format!("unknown fault level {s:?} (none, light, heavy)")),
        }
    }
}

/// Called on every engine right after it attaches (tests use it to switch on a defect).
pub type EngineHook = Arc<dyn Fn(&mut Engine) + Send + Sync>;

/// What to run.
#[derive(Clone)]
pub struct Options {
    pub seed: u64,
    pub faults: FaultLevel,
    /// Steps of the fault phase.
    pub steps: u64,
    /// Print every trace line as it happens.
    pub print_trace: bool,
    /// Steps of trace kept for a violation report.
    pub keep_steps: usize,
    pub hook: Option<EngineHook>,
    /// Steer around the engine bugs in [`crate::KNOWN_ENGINE_BUGS`] (on by default)...
    pub workarounds: bool,
    /// ...except these (names from that list).
    pub exposed: Vec<String>,
    /// Check at each completion that protocol C waited for the peer's ack (on by default; off
    /// leaves such a defect to the data invariants).
    pub check_ack_order: bool,
}

impl Options {
    pub fn new(seed: u64, faults: FaultLevel, steps: u64) -> Options {
        Options {
            seed,
            faults,
            steps,
            print_trace: false,
            keep_steps: 40,
            hook: None,
            workarounds: true,
            exposed: Vec::new(),
            check_ack_order: true,
        }
    }

    /// Whether the workaround for the known engine bug `name` is on.
    pub fn workaround(&self, name: &str) -> bool {
        self.workarounds && !self.exposed.iter().any(|e| e == name)
    }
}

/// A broken invariant, with the trace that led to it.
#[derive(Debug, Clone)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
    pub step: u64,
    pub at_ns: u64,
    pub trace: Vec<String>,
}

/// The outcome of one run.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub steps: u64,
    pub sim_ns: u64,
    /// Hash of the whole trace: equal for equal seeds.
    pub trace_hash: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Things that happened and checks that ran, by kind.
    pub stats: BTreeMap<&'static str, u64>,
    pub violation: Option<Violation>,
}

/// An event on the virtual clock.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ev {
    Disk {
        node: usize,
        inc: u64,
        op: OpId,
    },
    Deliver {
        dir: usize,
        gen: u64,
    },
    Tick {
        node: usize,
        inc: u64,
    },
    Connect,
    LinkTimeout {
        gen: u64,
    },
    Restart {
        node: usize,
        inc: u64,
    },
    Work,
    Chaos,
    Setup,
    Heal,
    HealPartition {
        id: u64,
    },
    EndSlow {
        id: u64,
    },
    EndDiskFault {
        node: usize,
        id: u64,
    },
    EndCorrupt {
        id: u64,
    },
    ApplyProtocol {
        node: usize,
        protocol: u8,
    },
    OperatorConnect {
        node: usize,
        inc: u64,
    },
    /// The operator attaches a detached disk again.
    OperatorAttach {
        node: usize,
        inc: u64,
    },
    HandlerDone {
        node: usize,
        inc: u64,
        call: CallId,
        status: i32,
    },
}

struct Sched {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Sched {
    fn eq(&self, o: &Sched) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Sched {}
impl PartialOrd for Sched {
    fn partial_cmp(&self, o: &Sched) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Sched {
    /// Earliest first (the heap is a max-heap).
    fn cmp(&self, o: &Sched) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// A block-layer request the simulator submitted and has not seen complete.
#[derive(Debug)]
pub(crate) struct SimReq {
    pub op: Op,
    pub version: u64,
    /// For reads: `need` at submission.
    pub need: Vec<u64>,
    /// For flushes: the model's mark at submission.
    pub mark: u64,
    /// The connection its `P_DATA` went out on.
    pub mirrored: Option<u64>,
    /// The peer refused it (`P_NEG_ACK`).
    pub neg: bool,
    /// For flushes: the connection its flushing barrier went out on.
    pub flush_peer: Option<u64>,
    /// The node's write-completion count when it was submitted.
    pub since: u64,
    /// The peer engine's incarnation when the request went out to it.
    pub peer_inc: u64,
    /// A `P_WRITE_ACK`/`P_RS_WRITE_ACK` for it arrived (on the connection it went out on).
    pub peer_acked: bool,
}

/// The sector range a writing operation covers.
fn write_range(op: &Op) -> Option<(u64, u64)> {
    match *op {
        Op::Write { offset, len, .. }
        | Op::Trim { offset, len }
        | Op::Zeroes { offset, len, .. } => Some((offset / SECTOR, len / SECTOR)),
        _ => None,
    }
}

/// What the model learns when an operator command succeeds (at once, or when the peer agreed
/// to a cluster-wide change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnSuccess {
    Nothing,
    /// `primary --force` on a disk that was not UpToDate: [`crate::model::Model::forced`].
    Forced,
    /// `invalidate`: [`crate::model::Model::invalidated`].
    Invalidated,
}

/// One node: its engine (absent while crashed or restarting), its disk and its settings.
pub(crate) struct Node {
    pub name: &'static str,
    pub engine: Option<Engine>,
    pub disk: SimDisk,
    /// Counts engines; events for an older one are dropped.
    pub inc: u64,
    pub tick_at: Option<u64>,
    pub reqs: BTreeMap<u64, SimReq>,
    /// The `net` protocol the next connection offers.
    pub protocol: Protocol,
    pub rate_kib: u64,
    /// `connect --discard-my-data` for the next connection.
    pub discard: bool,
    /// `down` was issued; the engine goes when it reports `Down`.
    pub going_down: bool,
    /// `Event::Down` arrived during the last drain.
    pub down_seen: bool,
    /// A restart is scheduled.
    pub restarting: bool,
    /// The last handshake ended in an unresolved split brain.
    pub split_brain: bool,
    /// The last handshake found unrelated data.
    pub unrelated: bool,
    /// Run `create-md` on the disk before the next attach.
    pub wipe: bool,
    /// A whole-copy check is due when the node is next quiet, and when the last one ran.
    pub check_due: bool,
    pub last_check: u64,
    pub fault_id: u64,
    /// Writes completed (OK or not) on this engine, and the recent ones that pending writes
    /// overlapped in time: `(number, first sector, sectors, version)`.
    pub acks: u64,
    /// Out-of-sync blocks after the last drain (for the trace).
    pub last_oos: u64,
    /// What the model learns when the command waiting for the peer succeeds.
    pub pending: Option<OnSuccess>,
    pub recent: std::collections::VecDeque<(u64, u64, u64, u64)>,
}

/// Parameters drawn from the seed ("swarm" testing: every run has its own mix).
#[derive(Debug, Clone)]
pub(crate) struct Swarm {
    pub device: u64,
    pub al_extents: u16,
    pub integrity: bool,
    pub secret: bool,
    pub initial_full_sync: bool,
    pub work_mean: u64,
    pub outstanding: usize,
    pub chaos_mean: u64,
    pub weights: Vec<u64>,
    pub ping_timeout: u64,
    pub connect_delay: u64,
    pub restart_delay: u64,
    pub error_p: f64,
    pub corrupt_p: f64,
    /// How often a `before-resync-*` handler refuses during the fault phase.
    pub handler_fail_p: f64,
    /// Handlers take up to this long (0: they answer at once).
    pub handler_delay: u64,
    /// `timeout` (0.1 s) and `ko-count`.
    pub timeout_ds: u32,
    pub ko_count: u32,
}

/// What the simulator saw on the current connection.
#[derive(Debug, Default)]
pub(crate) struct Conn {
    /// Bitmap words each side sent, and whether its last `P_BITMAP` went out.
    pub bitmaps: [Option<Vec<u64>>; 2],
    pub bitmap_done: [bool; 2],
    /// `P_OUT_OF_SYNC` ranges sent.
    pub oos: Vec<(u64, u64)>,
    /// A damaged frame reached this side.
    pub corrupted: [bool; 2],
    /// A side connected with `--discard-my-data`.
    pub discard: bool,
    /// The coverage check ran.
    pub covered: bool,
    /// The incarnation of each node when it last sent `P_UUIDS` on this connection: a
    /// handshake decided on what a since-crashed node sent leads nowhere.
    pub uuids_inc: [Option<u64>; 2],
    /// A node lost its disk on this connection (an error or `detach`): a diskless peer acks
    /// barriers without holding the data.
    pub detached: [bool; 2],
}

/// Where the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Setup,
    Faults,
    Heal { since: u64 },
    Done,
}

/// One run.
pub struct Sim {
    pub(crate) opts: Options,
    pub(crate) rng: SimRng,
    pub(crate) now: u64,
    seq: u64,
    pub(crate) step: u64,
    queue: BinaryHeap<Sched>,
    pub(crate) nodes: [Node; 2],
    pub(crate) net: Net,
    pub(crate) conn: Conn,
    pub(crate) model: Model,
    pub(crate) work: Workload,
    pub(crate) sw: Swarm,
    pub(crate) trace: Trace,
    pub(crate) faults: BTreeMap<&'static str, u64>,
    pub(crate) stats: BTreeMap<&'static str, u64>,
    pub(crate) next_version: u64,
    pub(crate) phase: Phase,
    pub(crate) connect_pending: bool,
    pub(crate) corrupt_p: f64,
    pub(crate) fault_id: u64,
    pub(crate) slow_id: u64,
    pub(crate) corrupt_id: u64,
    pub(crate) partition_id: u64,
    submitting: Option<(usize, u64)>,
    pub(crate) pair_due: bool,
    pub(crate) last_pair_check: u64,
    /// The engine logged a digest failure during the current receive.
    digest_failed: bool,
    /// Draws what [`Swarm::draw_side`] covers, apart from `rng`.
    side_rng: SimRng,
    pub(crate) violation: Option<Violation>,
}

pub(crate) const NAMES: [&str; 2] = ["alpha", "beta"];
const SECRET: &[u8] = b"sim-shared-secret";

pub(crate) fn protocol_code(p: Protocol) -> u8 {
    match p {
        Protocol::A => 0,
        Protocol::B => 1,
        Protocol::C => 2,
    }
}

pub(crate) fn protocol_of(c: u8) -> Protocol {
    match c {
        0 => Protocol::A,
        1 => Protocol::B,
        _ => Protocol::C,
    }
}

/// Runs one seed.
pub fn run(opts: Options) -> Report {
    let mut sim = match Sim::new(opts.clone()) {
        Ok(s) => s,
        Err(e) => {
            return Report {
                seed: opts.seed,
                steps: 0,
                sim_ns: 0,
                trace_hash: 0,
                faults: BTreeMap::new(),
                stats: BTreeMap::new(),
                violation: Some(Violation {
                    invariant: "setup",
                    detail: e,
                    step: 0,
                    at_ns: 0,
                    trace: vec![],
                }),
            }
        }
    };
    sim.main_loop();
    sim.report()
}

impl Sim {
    fn new(opts: Options) -> Result<Sim, String> {
        let mut rng = SimRng::new(opts.seed);
        let mut sw = Swarm::draw(&mut rng, opts.faults);
        let mut side_rng = SimRng::new(opts.seed ^ 0x6b6f_2d63_6f75_6e74);
        sw.draw_side(&mut side_rng, opts.faults);
        let dir = |rng: &mut SimRng| {
            let latency_ns = rng.range(20_000, 2_000_000);
            DirTiming {
                latency_ns,
                jitter_ns: rng.below(latency_ns / 2 + 1),
                ns_per_kib: rng.range(500, 10_000),
            }
        };
        let timing = [dir(&mut rng), dir(&mut rng)];
        let protocol = protocol_of(rng.below(3) as u8);
        let rate_kib = rng.range(8, 128) * 1024;
        let mut mk = |name| -> Result<Node, String> {
            let t = DiskTiming {
                base_ns: rng.range(20_000, 1_000_000),
                ns_per_kib: rng.range(200, 2_000),
                flush_ns: rng.range(50_000, 5_000_000),
            };
            Ok(Node {
                name,
                engine: None,
                disk: SimDisk::created(sw.device, t)?,
                inc: 0,
                tick_at: None,
                reqs: BTreeMap::new(),
                protocol,
                rate_kib,
                discard: false,
                going_down: false,
                down_seen: false,
                restarting: false,
                split_brain: false,
                unrelated: false,
                wipe: false,
                check_due: false,
                last_check: 0,
                fault_id: 0,
                acks: 0,
                last_oos: 0,
                pending: None,
                recent: std::collections::VecDeque::new(),
            })
        };
        let mut nodes = [mk(NAMES[0])?, mk(NAMES[1])?];
        for n in &mut nodes {
            // The engine's contract: a metadata write is preceded by a flush (`md-flushes`).
            n.disk.preflush_meta = true;
            n.disk.meta_tear_unit = SECTOR;
        }
        let sectors = nodes[0].disk.usable() / SECTOR;
        let work = Workload::new(sectors, &mut rng);
        let keep = opts.keep_steps;
        let print = opts.print_trace;
        let mut sim = Sim {
            opts,
            rng,
            now: 0,
            seq: 0,
            step: 0,
            queue: BinaryHeap::new(),
            nodes,
            net: Net::new(timing),
            conn: Conn::default(),
            model: Model::new(sectors),
            work,
            sw,
            trace: Trace::new(keep, print),
            faults: BTreeMap::new(),
            stats: BTreeMap::new(),
            next_version: 1,
            phase: Phase::Setup,
            connect_pending: false,
            corrupt_p: 0.0,
            fault_id: 0,
            slow_id: 0,
            corrupt_id: 0,
            partition_id: 0,
            submitting: None,
            pair_due: false,
            last_pair_check: 0,
            digest_failed: false,
            side_rng,
            violation: None,
        };
        sim.trace.step(format!(
            "seed {} faults {} swarm {:?} protocol {:?} rate {} KiB/s",
            sim.opts.seed,
            sim.opts.faults.name(),
            sim.sw,
            protocol,
            rate_kib
        ));
        for i in 0..2 {
            sim.attach(i);
            sim.command(i, Command::Connect);
        }
        sim.at(sim.now + 1_000_000, Ev::Setup);
        Ok(sim)
    }

    fn main_loop(&mut self) {
        const HEAL_LIMIT_NS: u64 = 600_000_000_000;
        const STEP_LIMIT: u64 = 20_000_000;
        loop {
            if self.violation.is_some() || self.phase == Phase::Done {
                return;
            }
            if self.phase == Phase::Faults && self.step >= self.opts.steps {
                self.start_heal();
            }
            if let Phase::Heal { since } = self.phase {
                if self.now.saturating_sub(since) > HEAL_LIMIT_NS || self.step > STEP_LIMIT {
                    let state = self.describe_state();
                    self.fail(
                        "convergence",
                        format!("no convergence after faults stopped: {state}"),
                    );
                    return;
                }
            }
            let Some(s) = self.queue.pop() else {
                let state = self.describe_state();
                self.fail("convergence", format!("nothing left to do: {state}"));
                return;
            };
            self.now = self.now.max(s.at);
            self.step += 1;
            self.handle(s.ev);
            self.after_step();
        }
    }

    fn report(&self) -> Report {
        Report {
            seed: self.opts.seed,
            steps: self.step,
            sim_ns: self.now,
            trace_hash: self.trace.hash(),
            faults: self.faults.clone(),
            stats: self.stats.clone(),
            violation: self.violation.clone(),
        }
    }

    // ---- small helpers ----

    pub(crate) fn at(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Sched {
            at: at.max(self.now),
            seq: self.seq,
            ev,
        });
    }

    pub(crate) fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    pub(crate) fn fault(&mut self, what: &'static str) {
        *self.faults.entry(what).or_default() += 1;
    }

    /// Records the first broken invariant; the run stops after this step.
    pub(crate) fn fail(&mut self, invariant: &'static str, detail: String) {
        if self.violation.is_some() {
            return;
        }
        self.trace.note(format!("VIOLATION {invariant}: {detail}"));
        self.violation = Some(Violation {
            invariant,
            detail,
            step: self.step,
            at_ns: self.now,
            trace: self.trace.recent(),
        });
    }

    pub(crate) fn note(&mut self, line: String) {
        self.trace.note(line);
    }

    /// Starts a step's trace with a headline.
    pub(crate) fn headline(&mut self, what: String) {
        let line = format!("{:>8} {:>12.6}s {}", self.step, self.now as f64 / 1e9, what);
        self.trace.step(line);
    }

    pub(crate) fn alive(&self, i: usize) -> bool {
        self.nodes[i].engine.is_some()
    }

    pub(crate) fn state(&self, i: usize) -> Option<repl_core::state::NodeState> {
        self.nodes[i].engine.as_ref().map(Engine::state)
    }

    /// Both nodes' states and the link, in one line for a liveness report.
    pub(crate) fn describe_state(&self) -> String {
        let mut parts = Vec::new();
        for n in &self.nodes {
            match &n.engine {
                Some(e) => {
                    let s = e.state();
                    parts.push(format!(
                        "{}: {} {} {}/{} peer {} oos {} reqs {} disk-ops {}",
                        n.name,
                        s.role,
                        s.conn,
                        s.disk,
                        s.pdsk,
                        s.peer,
                        e.out_of_sync_blocks(),
                        n.reqs.len(),
                        n.disk.inflight_ops()
                    ));
                }
                None => parts.push(format!("{}: down (restarting {})", n.name, n.restarting)),
            }
        }
        parts.push(format!(
            "link gen {} sides {}/{} queued {}/{} partitioned {}",
            self.net.gen,
            self.net.sides[0].is_open(),
            self.net.sides[1].is_open(),
            self.net.dirs[0].queue.len(),
            self.net.dirs[1].queue.len(),
            self.net.partitioned()
        ));
        parts.join("; ")
    }

    // ---- engines ----

    pub(crate) fn engine_config(&mut self, i: usize) -> EngineConfig {
        EngineConfig {
            resource: "r0".into(),
            volume: 0,
            minor: 0,
            al_extents: self.sw.al_extents,
            context: Context {
                fencing: Fencing::DontCare,
                allow_two_primaries: false,
                device_open: false,
            },
            seed: self.rng.next_u64(),
            net: Some(NetConfig {
                protocol: self.nodes[i].protocol,
                two_primaries: false,
                integrity: self.sw.integrity.then_some(IntegrityAlg::Crc32c),
                resync_rate_kib: self.nodes[i].rate_kib,
                timeout_ds: self.sw.timeout_ds,
                ko_count: self.sw.ko_count,
            }),
            on_io_error: OnIoError::Detach,
        }
    }

    /// Attaches a new engine to node `i`'s disk as it is now.
    pub(crate) fn attach(&mut self, i: usize) {
        if std::mem::take(&mut self.nodes[i].wipe) {
            self.nodes[i].disk.recreate_md();
            self.model.invalidated(i);
            self.note(format!("operator: create-md on {}", self.nodes[i].name));
        }
        let on_disk = match self.nodes[i].disk.on_disk() {
            Ok(d) => d,
            Err(e) => {
                self.fail("metadata-decodes", format!("{}: {e}", self.nodes[i].name));
                return;
            }
        };
        let cfg = self.engine_config(i);
        match Engine::attach(cfg, on_disk) {
            Ok(mut e) => {
                if let Some(h) = &self.opts.hook {
                    h(&mut e);
                }
                if e.state().disk > DiskState::Inconsistent {
                    self.model.resync_forgotten(i);
                }
                let n = &mut self.nodes[i];
                n.inc += 1;
                n.engine = Some(e);
                n.pending = None;
                n.tick_at = None;
                n.reqs.clear();
                n.going_down = false;
                n.down_seen = false;
                n.restarting = false;
                n.check_due = true;
                self.note(format!("{} attached", self.nodes[i].name));
                self.drain(i);
            }
            Err(e) => self.fail(
                "metadata-decodes",
                format!("{}: attach refused the metadata: {e}", self.nodes[i].name),
            ),
        }
    }

    /// `drbdadm attach` of node `i` once its disk works again, if the engine runs without
    /// it (after an error or `detach`): the disk as it is now goes back to the running engine.
    pub(crate) fn reattach(&mut self, i: usize) {
        let diskless = self.nodes[i]
            .engine
            .as_ref()
            .is_some_and(|e| e.state().disk == DiskState::Diskless);
        if !diskless || !self.alive(i) || self.nodes[i].going_down {
            return;
        }
        let on_disk = match self.nodes[i].disk.on_disk() {
            Ok(d) => d,
            Err(e) => {
                self.fail("metadata-decodes", format!("{}: {e}", self.nodes[i].name));
                return;
            }
        };
        let name = self.nodes[i].name;
        let Some(e) = self.nodes[i].engine.as_mut() else {
            return;
        };
        match e.reattach(on_disk) {
            Ok(()) => {
                self.headline(format!("operator: attach {name} again"));
                self.fault("op re-attach");
                self.nodes[i].check_due = true;
            }
            Err(err) => {
                self.note(format!("{name} attach: refused: {err}"));
                self.count("re-attach refused");
            }
        }
        self.drain(i);
    }

    /// Runs an operator command on node `i`; `Err` is a refusal (expected at times).
    pub(crate) fn command(&mut self, i: usize, cmd: Command) -> bool {
        self.command_with(i, cmd, OnSuccess::Nothing)
    }

    /// [`Sim::command`], and what the model learns once it succeeded.
    pub(crate) fn command_with(&mut self, i: usize, cmd: Command, effect: OnSuccess) -> bool {
        let name = self.nodes[i].name;
        // The workload is the NBD client: it holds the device open while it has requests out,
        // as tandemd reports it. A daemon shutdown (`Down`) passes `false` like tandemd does.
        let busy = !self.nodes[i].reqs.is_empty();
        let device_open = busy && cmd != Command::Down;
        let Some(e) = self.nodes[i].engine.as_mut() else {
            return false;
        };
        let r = e.command(cmd, device_open);
        let pending = e.command_pending();
        match &r {
            Ok(()) if pending => {
                self.note(format!("{name} {cmd:?}: waits for the peer"));
                self.nodes[i].pending = Some(effect);
            }
            Ok(()) => {
                self.note(format!("{name} {cmd:?}: ok"));
                self.succeeded(i, effect);
            }
            Err(err) => {
                self.note(format!("{name} {cmd:?}: refused: {err}"));
                self.count("command refused");
            }
        }
        self.drain(i);
        r.is_ok()
    }

    fn succeeded(&mut self, i: usize, effect: OnSuccess) {
        match effect {
            OnSuccess::Nothing => {}
            OnSuccess::Forced => self.model.forced(i),
            OnSuccess::Invalidated => self.model.invalidated(i),
        }
    }

    /// Drains every output of node `i`'s engine and routes it.
    pub(crate) fn drain(&mut self, i: usize) {
        loop {
            let Some(out) = self.nodes[i].engine.as_mut().and_then(Engine::poll_output) else {
                break;
            };
            match out {
                Output::Disk { op, kind } => self.disk_submit(i, op, kind),
                Output::Complete { req, result } => self.completed(i, req, result),
                Output::Event(ev) => self.engine_event(i, ev),
                Output::Send(p) => self.send_packet(i, p),
                Output::Disconnect { reconnect } => {
                    self.note(format!(
                        "{} disconnects the link (reconnect {reconnect})",
                        self.nodes[i].name
                    ));
                    let at = self.net.close(i, self.now, 0);
                    if let Some(at) = at {
                        let gen = self.net.gen;
                        self.at(at, Ev::Deliver { dir: i, gen });
                    }
                }
            }
        }
        let oos = self.nodes[i]
            .engine
            .as_ref()
            .map_or(0, Engine::out_of_sync_blocks);
        if oos != self.nodes[i].last_oos {
            self.note(format!(
                "{} out-of-sync blocks {} -> {oos}",
                self.nodes[i].name, self.nodes[i].last_oos
            ));
            self.nodes[i].last_oos = oos;
        }
        if self.nodes[i].down_seen {
            self.finish_down(i);
        }
        self.schedule_tick(i);
    }

    fn schedule_tick(&mut self, i: usize) {
        let Some(t) = self.nodes[i].engine.as_ref().and_then(Engine::next_tick) else {
            return;
        };
        let t = t.as_nanos();
        if self.nodes[i].tick_at.is_none_or(|x| t < x) {
            self.nodes[i].tick_at = Some(t);
            let inc = self.nodes[i].inc;
            self.at(t, Ev::Tick { node: i, inc });
        }
    }

    fn disk_submit(&mut self, i: usize, op: OpId, kind: DiskOp) {
        let desc = describe_op(&kind);
        let lat = self.nodes[i].disk.submit(op, kind, &mut self.rng);
        match lat {
            Ok(lat) => {
                self.note(format!("{} disk op{} {desc}", self.nodes[i].name, op.0));
                let inc = self.nodes[i].inc;
                self.at(self.now + lat, Ev::Disk { node: i, inc, op });
            }
            Err(e) => self.fail("engine-sanity", format!("{}: {e}", self.nodes[i].name)),
        }
    }

    /// A request completed to the block layer: check it against the model and record it.
    fn completed(&mut self, i: usize, req: ReqId, result: Result<Option<Bytes>, RequestError>) {
        let name = self.nodes[i].name;
        let Some(r) = self.nodes[i].reqs.remove(&req.0) else {
            self.fail(
                "engine-sanity",
                format!(
                    "{name}: completion of unknown or already completed request {}",
                    req.0
                ),
            );
            return;
        };
        // The node's copy is bound by a write it acknowledged when its disk took it and the
        // data there counts: UpToDate/Consistent, or Inconsistent while the peer is reachable
        // (a Primary SyncTarget). An Inconsistent disk without a peer promises nothing.
        let st = self.state(i);
        let local = st.is_some_and(|s| {
            s.disk > DiskState::Failed
                && (s.disk >= DiskState::Consistent || s.conn >= ConnState::Connected)
        });
        let good = st.is_some_and(|s| s.disk >= DiskState::Consistent);
        let concurrent = self.write_finished(i, &r);
        self.note(format!(
            "{name} complete req{} {:?} v{} -> {}",
            req.0,
            r.op,
            r.version,
            match &result {
                Ok(_) => "ok".to_string(),
                Err(e) => format!("error: {e}"),
            }
        ));
        match (r.op, result) {
            (Op::Read { offset, len }, Ok(Some(data))) => {
                self.count("reads checked");
                if data.len() as u64 != len {
                    self.fail(
                        "read-your-writes",
                        format!("{name}: read {offset}+{len} returned {} bytes", data.len()),
                    );
                    return;
                }
                if let Err(m) = self.model.check_read(i, offset, &data, &r.need) {
                    self.fail(
                        "read-your-writes",
                        format!("{name}: read req{} {offset}+{len}: {m}", req.0),
                    );
                }
            }
            (Op::Read { .. }, Ok(None)) => self.fail(
                "engine-sanity",
                format!("{name}: a read completed without data"),
            ),
            (Op::Read { .. }, Err(_)) => self.count("reads failed"),
            (Op::Flush, Ok(_)) => {
                self.count("flushes acked");
                let peer = r.flush_peer.filter(|g| {
                    self.link_up_on(i, *g)
                        && self.peer_unchanged(i, &r)
                        && !self.conn.detached[1 - i]
                });
                self.model.flush_done(i, r.mark, local, peer);
            }
            (Op::Write { offset, len, fua }, Ok(_)) | (Op::Zeroes { offset, len, fua }, Ok(_)) => {
                self.write_acked(i, &r, offset, len, fua, local, good, &concurrent)
            }
            (Op::Trim { offset, len }, Ok(_)) => {
                self.write_acked(i, &r, offset, len, false, local, good, &concurrent)
            }
            (_, Err(_)) => self.count("writes failed"),
        }
    }

    /// The peer still runs the engine the request was sent to (an ack that arrives after the
    /// peer crashed speaks for data the crash may have dropped).
    fn peer_unchanged(&self, i: usize, r: &SimReq) -> bool {
        self.alive(1 - i) && self.nodes[1 - i].inc == r.peer_inc
    }

    /// Whether node `i`'s end of connection `gen` is still established, as the simulator and
    /// the engine (which may have dropped the link on a `P_DISCONNECT`) both see it.
    pub(crate) fn link_up_on(&self, i: usize, gen: u64) -> bool {
        self.net.gen == gen
            && self.net.sides[i].established().is_some()
            && self
                .state(i)
                .is_some_and(|s| s.conn >= ConnState::Connected)
    }

    /// A write finished on node `i` (OK or not): returns the overlapping writes whose lifetimes
    /// overlapped its own, and remembers it for the writes still pending.
    fn write_finished(&mut self, i: usize, r: &SimReq) -> Vec<(u64, u64, u64)> {
        let Some((first, n)) = write_range(&r.op) else {
            return Vec::new();
        };
        let overlaps = |f: u64, k: u64| f < first + n && first < f + k;
        let node = &mut self.nodes[i];
        let mut out: Vec<(u64, u64, u64)> = node
            .reqs
            .values()
            .filter_map(|q| write_range(&q.op).map(|(f, k)| (f, k, q.version)))
            .filter(|&(f, k, _)| overlaps(f, k))
            .collect();
        out.extend(
            node.recent
                .iter()
                .filter(|&&(seq, f, k, _)| seq > r.since && overlaps(f, k))
                .map(|&(_, f, k, v)| (f, k, v)),
        );
        node.acks += 1;
        node.recent.push_back((node.acks, first, n, r.version));
        let oldest = node
            .reqs
            .values()
            .map(|q| q.since)
            .min()
            .unwrap_or(node.acks);
        while node.recent.front().is_some_and(|e| e.0 <= oldest) {
            node.recent.pop_front();
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn write_acked(
        &mut self,
        i: usize,
        r: &SimReq,
        offset: u64,
        len: u64,
        fua: bool,
        local: bool,
        good: bool,
        concurrent: &[(u64, u64, u64)],
    ) {
        self.count("writes acked");
        if r.mirrored.is_none() && good {
            self.note(format!(
                "{} acked v{} without sending it to the peer",
                self.nodes[i].name, r.version
            ));
        }
        let c_link = r.mirrored.is_some_and(|g| {
            self.link_up_on(i, g) && self.net.sides[i].established() == Some(Protocol::C)
        }) && !r.neg;
        if c_link && !r.peer_acked && self.opts.check_ack_order {
            self.fail(
                "protocol-c-ack",
                format!(
                    "{}: write v{} completed under protocol C on a live connection before the \
                     peer acknowledged it",
                    self.nodes[i].name, r.version
                ),
            );
        }
        let peer_has = c_link && self.peer_unchanged(i, r);
        self.model.write_acked(
            &crate::model::WriteAck {
                node: i,
                first: offset / SECTOR,
                n: len / SECTOR,
                version: r.version,
                fua,
                local,
                peer_has,
                // A write the peer refused (`P_NEG_ACK`) is not on the peer.
                mirrored: if r.neg { None } else { r.mirrored },
                diverges: r.mirrored.is_none() && good,
            },
            concurrent,
        );
    }

    /// Things the engine reports: state changes (which move the model) and log lines (some of
    /// which are invariants in themselves).
    fn engine_event(&mut self, i: usize, ev: Event) {
        let name = self.nodes[i].name;
        match ev {
            Event::StateChanged { old, new } => {
                let oos = self.nodes[i]
                    .engine
                    .as_ref()
                    .map_or(0, Engine::out_of_sync_blocks);
                self.note(format!(
                    "{name} state {}/{}/{}/{} -> {}/{}/{}/{} (oos {oos})",
                    old.role, old.conn, old.disk, old.pdsk, new.role, new.conn, new.disk, new.pdsk
                ));
                self.state_changed(i, old, new);
            }
            Event::Log(line) => {
                self.note(format!("{name} log: {line}"));
                self.log_line(i, &line);
            }
            Event::MetadataWritten => {}
            Event::Down => {
                self.note(format!("{name} down"));
                self.nodes[i].down_seen = true;
            }
            Event::Handler(h) => self.note(format!("{name} handler {}", h.name())),
            Event::HandlerCall { handler, call } => self.handler_call(i, handler, call),
            Event::CommandDone { result } => {
                let effect = self.nodes[i].pending.take();
                match result {
                    Ok(()) => {
                        self.note(format!("{name} command done: ok"));
                        self.count("cluster-wide state changes");
                        self.succeeded(i, effect.unwrap_or(OnSuccess::Nothing));
                    }
                    Err(e) => {
                        self.note(format!("{name} command done: refused: {e}"));
                        self.count("command refused");
                    }
                }
            }
            Event::Detached => {
                self.conn.detached[i] = true;
                self.count("disks detached");
                self.note(format!("{name} detached its disk"));
            }
        }
    }

    /// A handler the engine waits for: it answers at once or after a while, in the fault
    /// phase now and then with a refusal (the node then goes StandAlone, and an operator
    /// connects it again later). Runs that do not draw refusals or delays answer 0 at once.
    fn handler_call(&mut self, i: usize, handler: Handler, call: CallId) {
        let name = self.nodes[i].name;
        let faults = self.phase == Phase::Faults;
        let mut status = 0;
        if faults && self.sw.handler_fail_p > 0.0 && self.side_rng.chance(self.sw.handler_fail_p) {
            status = if handler == Handler::BeforeResyncSource && self.side_rng.chance(0.3) {
                3
            } else {
                1
            };
            self.fault("handler refusal");
        }
        let delay = if faults && self.sw.handler_delay > 0 {
            self.side_rng.range(0, self.sw.handler_delay)
        } else {
            0
        };
        self.note(format!(
            "{name} handler {} returns {status} after {} ms",
            handler.name(),
            delay / MS
        ));
        if status != 0 && status != 3 {
            let inc = self.nodes[i].inc;
            let d = self.side_rng.range(100, 1000) * MS;
            self.at(self.now + delay + d, Ev::OperatorConnect { node: i, inc });
        }
        if delay == 0 {
            let now = repl_core::time::Instant::from_nanos(self.now);
            if let Some(e) = self.nodes[i].engine.as_mut() {
                e.handler_returned(call, status, now);
            }
        } else {
            let inc = self.nodes[i].inc;
            self.at(
                self.now + delay,
                Ev::HandlerDone {
                    node: i,
                    inc,
                    call,
                    status,
                },
            );
        }
    }

    fn state_changed(
        &mut self,
        i: usize,
        old: repl_core::state::NodeState,
        new: repl_core::state::NodeState,
    ) {
        if new.disk == DiskState::UpToDate || old.conn != new.conn {
            self.nodes[i].check_due = true;
            self.pair_due = true;
        }
        if old.conn >= ConnState::WFReportParams && new.conn < ConnState::WFReportParams {
            self.model.link_lost_at[i] = self.next_version;
        }
        if old.conn == ConnState::WFReportParams
            && matches!(
                new.conn,
                ConnState::Connected | ConnState::WFBitMapS | ConnState::WFBitMapT
            )
        {
            self.handshake_decided(i, old, new);
        }
        if new.conn == ConnState::SyncTarget && old.conn != ConnState::SyncTarget {
            self.count("resyncs started");
            let primary = new.role == Role::Primary;
            self.model.resync_started(i, primary);
            self.model.unique[i] = false;
        }
        if old.conn == ConnState::SyncTarget
            && new.conn == ConnState::Connected
            && new.disk == DiskState::UpToDate
        {
            self.count("resyncs done");
            // The source's copy is what the target now holds only while the source still has
            // the connection: once it lost it, its later writes never reached the target.
            let source_linked = self.link_up_on(1 - i, self.net.gen);
            let protocol_c = self.net.sides[i].established() == Some(Protocol::C);
            self.model.resync_done(i, source_linked, protocol_c);
        }
        if new.conn >= ConnState::Connected {
            self.nodes[i].split_brain = false;
            self.nodes[i].unrelated = false;
            self.nodes[i].discard = false;
        }
    }

    fn log_line(&mut self, i: usize, line: &str) {
        let name = self.nodes[i].name;
        if line.starts_with("protocol error") {
            if self.conn.corrupted[i] {
                self.count("corruption caught");
            } else {
                self.fail(
                    "engine-sanity",
                    format!(
                        "{name}: protocol error on a link that carried no damaged frame: {line}"
                    ),
                );
            }
        }
        if line.starts_with("completion for unknown disk operation")
            || line.starts_with("activity log")
            || line.starts_with("cannot encode AL transaction")
        {
            self.fail("engine-sanity", format!("{name}: {line}"));
        }
        if line.starts_with("Remote failed to") {
            self.count("connections timed out (ko-count)");
        }
        if line.contains("handler returned") && line.ends_with("dropping connection.") {
            self.count("connections dropped by a handler");
        }
        if line.starts_with("Digest integrity check FAILED") {
            self.digest_failed = true;
        }
        if line.contains("Split-Brain detected but unresolved") {
            self.count("split brains detected");
            self.nodes[i].split_brain = true;
        }
        if line.contains("Unrelated data") {
            self.count("unrelated data refused");
            self.nodes[i].unrelated = true;
        }
    }

    // ---- the link ----

    fn link_config(&self, i: usize) -> LinkConfig {
        LinkConfig {
            resource: "r0".into(),
            my_node: NAMES[i].into(),
            peer_node: NAMES[1 - i].into(),
            protocol: self.nodes[i].protocol,
            two_primaries: false,
            integrity: self.sw.integrity.then_some(IntegrityAlg::Crc32c),
            discard_my_data: self.nodes[i].discard,
            secret: self.sw.secret.then(|| (HmacAlg::Sha256, SECRET.to_vec())),
        }
    }

    /// Both ends want a link and none exists: try one after the connect delay.
    pub(crate) fn maybe_schedule_connect(&mut self) {
        if self.connect_pending || self.net.any_open() {
            return;
        }
        let want = (0..2).all(|i| {
            self.nodes[i]
                .engine
                .as_ref()
                .is_some_and(|e| e.wants_link())
        });
        if want {
            self.connect_pending = true;
            let d = self
                .rng
                .range(self.sw.connect_delay / 2, self.sw.connect_delay);
            self.at(self.now + d, Ev::Connect);
        }
    }

    fn try_connect(&mut self) {
        self.connect_pending = false;
        let want = (0..2).all(|i| {
            self.nodes[i]
                .engine
                .as_ref()
                .is_some_and(|e| e.wants_link())
        });
        if !want || self.net.any_open() {
            return;
        }
        if self.net.partitioned() {
            self.note("connect attempt fails: partitioned".into());
            return;
        }
        let mut links = Vec::new();
        let mut first = Vec::new();
        for i in 0..2 {
            let mut nonce = [0u8; NONCE_BYTES];
            for c in nonce.chunks_mut(8) {
                c.copy_from_slice(&self.rng.next_u64().to_le_bytes()[..c.len()]);
            }
            match Link::new(self.link_config(i), nonce) {
                Ok((l, pkts)) => {
                    links.push(l);
                    first.push(pkts);
                }
                Err(e) => {
                    self.fail("engine-sanity", format!("link config refused: {e}"));
                    return;
                }
            }
        }
        let (Some(b), Some(a)) = (links.pop(), links.pop()) else {
            return;
        };
        self.net.open([a, b]);
        self.conn = Conn::default();
        self.note(format!("connection {} opened", self.net.gen));
        for (i, pkts) in first.into_iter().enumerate() {
            for p in pkts {
                self.send_packet(i, p);
            }
        }
    }

    /// Encodes a packet from node `i` (damaging it when corruption is on) and queues it.
    pub(crate) fn send_packet(&mut self, i: usize, p: Packet) {
        if !self.net.sides[i].is_open() {
            return;
        }
        let gen = self.net.gen;
        let established = self.net.sides[i].established().is_some();
        self.observe_sent(i, &p, established);
        let mut bytes = encode_to_vec(&Frame {
            volume: 0,
            packet: p.clone(),
        });
        let mut corrupt = Corrupt::None;
        if self.corrupt_p > 0.0 && self.rng.chance(self.corrupt_p) {
            let payload = payload_len(&p);
            if self.sw.integrity && payload > 0 && self.rng.chance(0.7) {
                let at = bytes.len() - payload + self.rng.below(payload as u64) as usize;
                bytes[at] ^= 1 << self.rng.below(8);
                corrupt = Corrupt::Payload;
            } else {
                let at = self.rng.below(4) as usize;
                bytes[at] ^= 1 << self.rng.below(8);
                corrupt = Corrupt::Framing;
            }
            self.fault(match corrupt {
                Corrupt::Payload => "corrupt payload",
                _ => "corrupt framing",
            });
        }
        self.note(format!(
            "{} send {}{}",
            self.nodes[i].name,
            describe_packet(&p),
            match corrupt {
                Corrupt::None => "",
                Corrupt::Payload => " [payload damaged]",
                Corrupt::Framing => " [framing damaged]",
            }
        ));
        let len = bytes.len() as u64;
        let jitter = self.rng.next_u64();
        let chunk = Chunk::Frame {
            bytes,
            corrupt,
            original: p,
        };
        if let Some(at) = self.net.send(i, chunk, len, self.now, jitter) {
            self.at(at, Ev::Deliver { dir: i, gen });
        }
    }

    /// What the model and checks learn from a packet going out.
    fn observe_sent(&mut self, i: usize, p: &Packet, established: bool) {
        let gen = self.net.gen;
        match p {
            Packet::Data { id, .. } if established => {
                let peer_inc = self.nodes[1 - i].inc;
                if let Some(r) = self.nodes[i].reqs.get_mut(id) {
                    r.mirrored = Some(gen);
                    r.peer_inc = peer_inc;
                }
            }
            Packet::Ack {
                kind: AckKind::Neg,
                id,
                ..
            } => {
                if let Some(r) = self.nodes[1 - i].reqs.get_mut(id) {
                    r.neg = true;
                }
            }
            Packet::Barrier { flush: true, .. } => {
                if let Some((node, req)) = self.submitting {
                    if node == i {
                        let peer_inc = self.nodes[1 - i].inc;
                        if let Some(r) = self.nodes[i].reqs.get_mut(&req) {
                            r.flush_peer = Some(gen);
                            r.peer_inc = peer_inc;
                        }
                    }
                }
            }
            Packet::Bitmap {
                offset,
                words,
                last,
            } => {
                let total = self.nodes[i].disk.usable().div_ceil(4096).div_ceil(64) as usize;
                let bm = self.conn.bitmaps[i].get_or_insert_with(|| vec![0; total]);
                for (k, w) in words.iter().enumerate() {
                    if let Some(slot) = bm.get_mut(*offset as usize + k) {
                        *slot |= *w;
                    }
                }
                if *last {
                    self.conn.bitmap_done[i] = true;
                    if self.conn.bitmap_done[1 - i] {
                        self.check_coverage();
                    }
                }
            }
            Packet::OutOfSync { sector, len } => {
                self.conn.oos.push((sector.bytes(), u64::from(*len)));
            }
            Packet::Uuids { .. } => self.conn.uuids_inc[i] = Some(self.nodes[i].inc),
            _ => {}
        }
    }

    /// A chunk of direction `dir` arrives at the other node.
    fn deliver(&mut self, dir: usize, gen: u64) {
        if gen != self.net.gen {
            return;
        }
        let Some(chunk) = self.net.pop_due(dir, self.now) else {
            return;
        };
        let to = 1 - dir;
        let name = self.nodes[to].name;
        if !self.net.sides[to].is_open() {
            return;
        }
        match chunk {
            Chunk::Close => {
                self.headline(format!("{name} sees the peer close the connection"));
                self.side_lost(to);
            }
            Chunk::Frame {
                bytes,
                corrupt,
                original,
            } => {
                self.headline(format!(
                    "{name} receives {}{}",
                    describe_packet(&original),
                    if corrupt == Corrupt::None {
                        ""
                    } else {
                        " (damaged)"
                    }
                ));
                if corrupt != Corrupt::None {
                    self.conn.corrupted[to] = true;
                }
                let buf = &mut self.net.sides[to].buf;
                if buf.is_empty() {
                    *buf = bytes::BytesMut::from(&bytes[..]);
                } else {
                    buf.extend_from_slice(&bytes);
                }
                self.receive_stream(to, corrupt, &original);
            }
        }
    }

    /// Decodes what node `to` has buffered and hands each frame to its link or engine.
    fn receive_stream(&mut self, to: usize, corrupt: Corrupt, original: &Packet) {
        let name = self.nodes[to].name;
        loop {
            let side = &mut self.net.sides[to];
            if !side.is_open() {
                return;
            }
            let frame = side.decoder.decode(&mut side.buf);
            match frame {
                Ok(None) => return,
                Ok(Some(frame)) => {
                    if corrupt == Corrupt::Framing {
                        self.fail(
                            "integrity",
                            format!("{name}: a frame with a damaged header decoded"),
                        );
                        return;
                    }
                    if corrupt == Corrupt::None && frame.packet != *original {
                        self.fail(
                            "codec",
                            format!(
                                "{name}: decoded {} differs from the encoded {}",
                                describe_packet(&frame.packet),
                                describe_packet(original)
                            ),
                        );
                        return;
                    }
                    self.receive_packet(to, frame.packet, corrupt);
                }
                Err(e) => {
                    if corrupt == Corrupt::None {
                        self.fail(
                            "codec",
                            format!("{name}: the decoder refused a clean frame: {e}"),
                        );
                        return;
                    }
                    self.count("corruption caught");
                    self.note(format!("{name} link: {e}; closing"));
                    self.close_side(to);
                    return;
                }
            }
        }
    }

    fn receive_packet(&mut self, to: usize, packet: Packet, corrupt: Corrupt) {
        let name = self.nodes[to].name;
        let gen = self.net.gen;
        let state = std::mem::replace(&mut self.net.sides[to].state, SideState::Closed);
        match state {
            SideState::Closed => {}
            SideState::Handshaking(mut link) => match link.receive(packet) {
                Ok(Progress::Continue(pkts)) => {
                    self.net.sides[to].state = SideState::Handshaking(link);
                    for p in pkts {
                        self.send_packet(to, p);
                    }
                }
                Ok(Progress::Established(info, pkts)) => {
                    self.net.sides[to].state = SideState::Established {
                        protocol: info.protocol,
                    };
                    for p in pkts {
                        self.send_packet(to, p);
                    }
                    self.note(format!(
                        "{name} link established (protocol {:?}, resolve-conflicts {})",
                        info.protocol, info.resolve_conflicts
                    ));
                    let discard = self.nodes[to].discard;
                    if discard {
                        self.conn.discard = true;
                    }
                    if let Some(e) = self.nodes[to].engine.as_mut() {
                        e.peer_connected(LinkParams {
                            protocol: info.protocol,
                            integrity: info.integrity,
                            resolve_conflicts: info.resolve_conflicts,
                            discard_my_data: discard,
                            version: info.version,
                        });
                    }
                    self.drain(to);
                }
                Err(e) => {
                    self.net.sides[to].state = SideState::Handshaking(link);
                    self.note(format!("{name} link handshake failed: {e}"));
                    self.count("link handshakes failed");
                    self.close_side(to);
                }
            },
            SideState::Established { protocol } => {
                self.net.sides[to].state = SideState::Established { protocol };
                if matches!(packet, Packet::Ping | Packet::PingAck) {
                    return;
                }
                if let Packet::Ack {
                    kind: AckKind::Write | AckKind::RsWrite,
                    id,
                    ..
                } = packet
                {
                    if let Some(r) = self.nodes[to].reqs.get_mut(&id) {
                        r.peer_acked |= r.mirrored == Some(gen);
                    }
                }
                let now = repl_core::time::Instant::from_nanos(self.now);
                let is_data = matches!(packet, Packet::Data { .. });
                self.digest_failed = false;
                if let Some(e) = self.nodes[to].engine.as_mut() {
                    e.receive(packet, now);
                }
                self.drain(to);
                if corrupt == Corrupt::Payload {
                    let dropped = self.net.gen != gen || !self.net.sides[to].is_open();
                    let logged = std::mem::take(&mut self.digest_failed);
                    if !dropped {
                        self.fail(
                            "integrity",
                            format!("{name} accepted a data payload that fails its digest"),
                        );
                    } else if is_data && !logged {
                        self.fail(
                            "integrity",
                            format!(
                                "{name} dropped a damaged P_DATA without logging \
                                 \"Digest integrity check FAILED\""
                            ),
                        );
                    } else {
                        self.count("damaged payloads caught by the digest");
                    }
                }
            }
        }
    }

    /// Node `i` closes its end itself (a refused handshake or a broken stream).
    fn close_side(&mut self, i: usize) {
        let was = self.net.sides[i].established().is_some();
        if let Some(at) = self.net.close(i, self.now, 0) {
            let gen = self.net.gen;
            self.at(at, Ev::Deliver { dir: i, gen });
        }
        if was {
            if let Some(e) = self.nodes[i].engine.as_mut() {
                e.peer_lost();
            }
            self.drain(i);
        }
    }

    /// Node `i`'s end goes away under it (the peer closed or the connection timed out).
    fn side_lost(&mut self, i: usize) {
        let was = self.net.sides[i].established().is_some();
        self.net.sides[i] = crate::net::Side::closed();
        if was {
            if let Some(e) = self.nodes[i].engine.as_mut() {
                e.peer_lost();
            }
            self.drain(i);
        }
    }

    /// The connection dies under both ends at once.
    pub(crate) fn tear_down(&mut self) {
        let was = [
            self.net.sides[0].established().is_some(),
            self.net.sides[1].established().is_some(),
        ];
        self.net.tear_down();
        for (i, was) in was.into_iter().enumerate() {
            if was {
                if let Some(e) = self.nodes[i].engine.as_mut() {
                    e.peer_lost();
                }
                self.drain(i);
            }
        }
    }

    // ---- the block layer ----

    /// Submits the next workload request to a Primary.
    pub(crate) fn submit_work(&mut self) {
        let primaries: Vec<usize> = (0..2)
            .filter(|&i| self.state(i).is_some_and(|s| s.role == Role::Primary))
            .collect();
        let Some(&i) = self.rng.pick(&primaries) else {
            return;
        };
        if self.nodes[i].reqs.len() >= self.sw.outstanding {
            return;
        }
        let op = self.work.next(&mut self.rng);
        let version = self.next_version;
        self.next_version += 1;
        let request = match op {
            Op::Read { offset, len } => Request::Read {
                offset,
                len: len as u32,
            },
            Op::Write { offset, len, fua } => Request::Write {
                offset,
                data: crate::workload::data(version, offset, len),
                fua,
            },
            Op::Flush => Request::Flush,
            Op::Trim { offset, len } => Request::Trim {
                offset,
                len: len as u32,
            },
            Op::Zeroes { offset, len, fua } => Request::WriteZeroes {
                offset,
                len: len as u32,
                fua,
            },
        };
        let need = match op {
            Op::Read { offset, len } => self.model.need_snapshot(i, offset / SECTOR, len / SECTOR),
            _ => Vec::new(),
        };
        let mark = self.model.flush_mark(i);
        let name = self.nodes[i].name;
        let now = repl_core::time::Instant::from_nanos(self.now);
        let Some(e) = self.nodes[i].engine.as_mut() else {
            return;
        };
        match e.submit(request, now) {
            Ok(req) => {
                self.note(format!("{name} submit req{} {op:?} v{version}", req.0));
                self.count("requests submitted");
                if let Op::Trim { offset, len } | Op::Zeroes { offset, len, .. } = op {
                    self.model
                        .zeroing_submitted(offset / SECTOR, len / SECTOR, version);
                }
                self.nodes[i].reqs.insert(
                    req.0,
                    SimReq {
                        op,
                        version,
                        need,
                        mark,
                        mirrored: None,
                        neg: false,
                        flush_peer: None,
                        since: self.nodes[i].acks,
                        peer_inc: 0,
                        peer_acked: false,
                    },
                );
                self.submitting = Some((i, req.0));
                self.drain(i);
                self.submitting = None;
            }
            Err(err) => {
                self.note(format!("{name} submit {op:?} refused: {err}"));
                self.count("requests refused");
            }
        }
    }

    // ---- events ----

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Disk { node, inc, op } => {
                if self.nodes[node].inc != inc || !self.alive(node) {
                    return;
                }
                let Some(result) = self.nodes[node].disk.complete(op, &mut self.rng) else {
                    return;
                };
                let name = self.nodes[node].name;
                self.headline(format!(
                    "{name} disk op{} done: {}",
                    op.0,
                    match &result {
                        repl_core::engine::DiskResult::Done => "ok".to_string(),
                        repl_core::engine::DiskResult::Data(d) => format!("{} bytes", d.len()),
                        repl_core::engine::DiskResult::Failed => "FAILED".to_string(),
                    }
                ));
                if result == repl_core::engine::DiskResult::Failed {
                    self.fault("disk error");
                }
                self.pair_due = true;
                if let Some(e) = self.nodes[node].engine.as_mut() {
                    e.disk_done(op, result, repl_core::time::Instant::from_nanos(self.now));
                }
                self.drain(node);
            }
            Ev::Deliver { dir, gen } => self.deliver(dir, gen),
            Ev::Tick { node, inc } => {
                if self.nodes[node].inc != inc {
                    return;
                }
                self.nodes[node].tick_at = None;
                let now = repl_core::time::Instant::from_nanos(self.now);
                let due = self.nodes[node]
                    .engine
                    .as_ref()
                    .and_then(Engine::next_tick)
                    .is_some_and(|t| t <= now);
                if due {
                    self.headline(format!("{} tick", self.nodes[node].name));
                    if let Some(e) = self.nodes[node].engine.as_mut() {
                        e.tick(now);
                    }
                    self.drain(node);
                } else {
                    self.schedule_tick(node);
                }
            }
            Ev::Connect => {
                self.headline("connect attempt".into());
                self.try_connect();
            }
            Ev::LinkTimeout { gen } => {
                if gen == self.net.gen && self.net.partitioned() && self.net.any_open() {
                    self.headline(format!(
                        "connection {gen} times out (PingAck did not arrive)"
                    ));
                    self.fault("ping timeout");
                    self.tear_down();
                }
            }
            Ev::Restart { node, inc } => {
                if self.nodes[node].inc != inc || self.alive(node) {
                    return;
                }
                self.headline(format!("{} restarts", self.nodes[node].name));
                self.attach(node);
                if self.alive(node) {
                    self.command(node, Command::Connect);
                }
            }
            Ev::Work => {
                if self.phase == Phase::Faults {
                    self.headline("workload".into());
                    self.submit_work();
                    let d = self.rng.exp(self.sw.work_mean).max(1_000);
                    self.at(self.now + d, Ev::Work);
                }
            }
            Ev::Chaos => {
                if self.phase == Phase::Faults {
                    self.chaos();
                    let d = self.rng.exp(self.sw.chaos_mean).max(1_000);
                    self.at(self.now + d, Ev::Chaos);
                }
            }
            Ev::Setup => self.setup_step(),
            Ev::Heal => self.heal_step(),
            Ev::HealPartition { id } => self.heal_partition(id),
            Ev::EndSlow { id } => {
                if id == self.slow_id {
                    self.headline("the link is fast again".into());
                    for d in &mut self.net.dirs {
                        d.slow = 1;
                    }
                }
            }
            Ev::EndDiskFault { node, id } => {
                if self.nodes[node].fault_id == id {
                    self.headline(format!("{}'s disk recovers", self.nodes[node].name));
                    let f = &mut self.nodes[node].disk.faults;
                    f.read_error = 0.0;
                    f.write_error = 0.0;
                    f.meta_error = 0.0;
                    f.full = false;
                    f.slow = 1;
                    self.reattach(node);
                }
            }
            Ev::EndCorrupt { id } => {
                if id == self.corrupt_id {
                    self.headline("the link stops damaging frames".into());
                    self.corrupt_p = 0.0;
                }
            }
            Ev::ApplyProtocol { node, protocol } => {
                if self.phase != Phase::Faults {
                    return;
                }
                let p = protocol_of(protocol);
                self.headline(format!("{} net protocol := {p:?}", self.nodes[node].name));
                self.nodes[node].protocol = p;
            }
            Ev::HandlerDone {
                node,
                inc,
                call,
                status,
            } => {
                if self.nodes[node].inc != inc {
                    return;
                }
                self.headline(format!(
                    "{}'s handler returns {status}",
                    self.nodes[node].name
                ));
                let now = repl_core::time::Instant::from_nanos(self.now);
                if let Some(e) = self.nodes[node].engine.as_mut() {
                    e.handler_returned(call, status, now);
                }
                self.drain(node);
            }
            Ev::OperatorConnect { node, inc } => {
                if self.nodes[node].inc == inc && self.alive(node) {
                    self.headline(format!("operator: connect {}", self.nodes[node].name));
                    self.connect_node(node);
                }
            }
            Ev::OperatorAttach { node, inc } => {
                if self.nodes[node].inc == inc && self.phase == Phase::Faults {
                    self.reattach(node);
                }
            }
        }
    }

    /// `connect`, with `--discard-my-data` on the side an operator picked after a split brain.
    pub(crate) fn connect_node(&mut self, i: usize) {
        let standalone = self
            .state(i)
            .is_some_and(|s| s.conn == ConnState::StandAlone);
        if !standalone {
            return;
        }
        if self.nodes[i].split_brain
            && self.nodes[1 - i].split_brain
            && !self.nodes[0].discard
            && !self.nodes[1].discard
        {
            // Manual recovery: the Secondary (or this node) discards its data.
            let victim = if self.state(1 - i).is_some_and(|s| s.role == Role::Secondary)
                && self.state(i).is_some_and(|s| s.role == Role::Primary)
            {
                1 - i
            } else {
                i
            };
            if self.state(victim).is_some_and(|s| s.role == Role::Primary) {
                self.command(victim, Command::Secondary);
            }
            self.nodes[victim].discard = true;
            self.note(format!(
                "operator: {} will discard its data",
                self.nodes[victim].name
            ));
            self.count("split brains resolved by discard");
        }
        self.command(i, Command::Connect);
    }

    fn finish_down(&mut self, i: usize) {
        self.nodes[i].down_seen = false;
        if !self.nodes[i].going_down {
            return;
        }
        self.nodes[i].engine = None;
        self.nodes[i].going_down = false;
        self.nodes[i].disk.forget_inflight();
        self.nodes[i].inc += 1;
        self.nodes[i].reqs.clear();
        self.nodes[i].restarting = true;
        if self.net.sides[i].is_open() {
            if let Some(at) = self.net.close(i, self.now, 0) {
                let gen = self.net.gen;
                self.at(at, Ev::Deliver { dir: i, gen });
            }
        }
        let inc = self.nodes[i].inc;
        let d = self.rng.range(1_000_000, self.sw.restart_delay);
        self.at(self.now + d, Ev::Restart { node: i, inc });
    }

    fn after_step(&mut self) {
        self.maybe_schedule_connect();
        self.run_checks();
    }

    /// Delivers what a partition held back, after the link's latency.
    pub(crate) fn reschedule_deliveries(&mut self) {
        let gen = self.net.gen;
        for dir in 0..2 {
            let n = self.net.pending_times(dir).len();
            let lat = self.net.dirs[dir].timing.latency_ns;
            for k in 0..n {
                self.at(self.now + lat + k as u64, Ev::Deliver { dir, gen });
            }
        }
    }
}

/// Bytes of a packet's data payload covered by the integrity digest.
fn payload_len(p: &Packet) -> usize {
    match p {
        Packet::Data {
            kind: DataKind::Write,
            digest: Some(_),
            data,
            ..
        }
        | Packet::RsReply {
            digest: Some(_),
            data,
            ..
        }
        | Packet::DataReply {
            digest: Some(_),
            data,
            ..
        } => data.len(),
        _ => 0,
    }
}

fn describe_op(k: &DiskOp) -> String {
    match k {
        DiskOp::Read { offset, len } => format!("read {offset}+{len}"),
        DiskOp::Write { offset, data, fua } => {
            format!(
                "write {offset}+{}{}",
                data.len(),
                if *fua { " fua" } else { "" }
            )
        }
        DiskOp::Flush => "flush".into(),
        DiskOp::Trim { offset, len } => format!("trim {offset}+{len}"),
        DiskOp::WriteZeroes { offset, len, fua } => {
            format!("zeroes {offset}+{len}{}", if *fua { " fua" } else { "" })
        }
        DiskOp::MetaWrite { offset, data } => format!("meta-write {offset}+{}", data.len()),
    }
}

/// A packet in one short line (never its payload).
pub(crate) fn describe_packet(p: &Packet) -> String {
    match p {
        Packet::Data {
            id,
            sector,
            len,
            kind,
            flags,
            epoch,
            ..
        } => format!(
            "{} id={id} {}+{len} flags={} epoch={epoch}",
            p.name(),
            sector.bytes(),
            flags.0
        )
        .replace(
            "P_DATA",
            match kind {
                DataKind::Write => "P_DATA",
                DataKind::Trim => "P_TRIM",
                DataKind::Zeroes => "P_ZEROES",
            },
        ),
        Packet::Ack {
            id, sector, len, ..
        } => format!("{} id={id} {}+{len}", p.name(), sector.bytes()),
        Packet::Barrier { epoch, flush } => format!("P_BARRIER epoch={epoch} flush={flush}"),
        Packet::BarrierAck { epoch, writes } => {
            format!("P_BARRIER_ACK epoch={epoch} writes={writes}")
        }
        Packet::RsRequest { id, sector, len }
        | Packet::RsNegReply { id, sector, len }
        | Packet::DataRequest { id, sector, len }
        | Packet::NegDataReply { id, sector, len } => {
            format!("{} id={id} {}+{len}", p.name(), sector.bytes())
        }
        Packet::RsReply {
            id, sector, data, ..
        }
        | Packet::DataReply {
            id, sector, data, ..
        } => format!("{} id={id} {}+{}", p.name(), sector.bytes(), data.len()),
        Packet::Bitmap {
            offset,
            words,
            last,
        } => format!(
            "P_BITMAP offset={offset} words={} bits={} last={last}",
            words.len(),
            words.iter().map(|w| u64::from(w.count_ones())).sum::<u64>()
        ),
        Packet::Uuids {
            uuids,
            bitmap_bits,
            flags,
        } => format!("P_UUIDS {uuids} bits={bitmap_bits} flags={flags}"),
        Packet::State(s) => format!("P_STATE {} {}", s.role, s.disk),
        Packet::Sizes {
            backing, current, ..
        } => format!("P_SIZES backing={backing} current={current}"),
        Packet::SyncUuid { uuid } => format!("P_SYNC_UUID {uuid:016X}"),
        Packet::OutOfSync { sector, len } => format!("P_OUT_OF_SYNC {}+{len}", sector.bytes()),
        Packet::Protocol {
            protocol,
            discard_my_data,
            ..
        } => format!("P_PROTOCOL {protocol:?} discard={discard_my_data}"),
        other => other.name().to_string(),
    }
}
