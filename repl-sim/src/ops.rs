//! What happens to the cluster besides the workload: operator commands and injected faults
//! during the fault phase, the initial setup, and the healed phase that must converge.

use repl_core::engine::Command;
use repl_core::meta::MdState;
use repl_core::state::{ConnState, DiskState, Role};

use crate::rng::SimRng;
use crate::sim::{protocol_code, protocol_of, Ev, FaultLevel, OnSuccess, Phase, Sim, Swarm};

/// Operator actions and faults the fault phase picks from, with their weights at each level
/// (none, light, heavy). A seed switches some off and scales the others.
pub(crate) const ACTIONS: &[(&str, [u64; 3])] = &[
    ("crash", [0, 3, 8]),
    ("kill", [0, 2, 5]),
    ("restart", [1, 2, 3]),
    ("link-drop", [0, 4, 6]),
    ("partition", [0, 3, 6]),
    ("slow-link", [0, 2, 3]),
    ("disk-errors", [0, 1, 4]),
    ("disk-full", [0, 0, 2]),
    ("corrupt", [0, 2, 4]),
    ("switchover", [3, 3, 3]),
    ("promote", [2, 3, 4]),
    ("force-primary", [0, 0, 1]),
    ("split-brain", [0, 0, 2]),
    ("demote", [1, 1, 2]),
    ("disconnect", [2, 2, 3]),
    ("invalidate", [1, 1, 2]),
    ("invalidate-remote", [1, 1, 2]),
    ("promote-both", [1, 1, 1]),
    ("new-uuid", [1, 1, 1]),
    ("protocol", [1, 1, 2]),
    ("rate", [1, 1, 1]),
    ("detach", [1, 1, 2]),
];

pub(crate) const MS: u64 = 1_000_000;

impl Swarm {
    /// Draws a run's parameters.
    pub(crate) fn draw(rng: &mut SimRng, level: FaultLevel) -> Swarm {
        let col = match level {
            FaultLevel::None => 0,
            FaultLevel::Light => 1,
            FaultLevel::Heavy => 2,
        };
        let weights = ACTIONS
            .iter()
            .map(|(_, w)| {
                let w = w[col];
                if w == 0 || rng.chance(0.2) {
                    0
                } else {
                    w * rng.range(1, 3)
                }
            })
            .collect();
        let chaos_ms = [100, 50, 25][col];
        Swarm {
            device: [6u64, 10, 16][rng.below(3) as usize] << 20,
            al_extents: [2u16, 3, 5, 61][rng.below(4) as usize],
            integrity: rng.chance(0.7),
            secret: rng.chance(0.5),
            initial_full_sync: rng.chance(0.5),
            work_mean: rng.range(100_000, 2_000_000),
            outstanding: rng.range(1, 16) as usize,
            chaos_mean: chaos_ms * MS / 2 + rng.below(chaos_ms * MS),
            weights,
            ping_timeout: rng.range(50, 400) * MS,
            connect_delay: rng.range(5, 100) * MS,
            restart_delay: rng.range(10, 500) * MS,
            error_p: [0.01, 0.05, 0.2][rng.below(3) as usize],
            corrupt_p: [0.01, 0.05, 0.2][rng.below(3) as usize],
            handler_fail_p: 0.0,
            handler_delay: 0,
            timeout_ds: 60,
            ko_count: 7,
        }
    }

    /// The handler and timeout parameters, from a PRNG of their own so that the main stream
    /// (and every run that does not use them) stays as it was. At `none` no handler refuses
    /// and the timeouts are DRBD's defaults (42 s, beyond anything the simulator delays);
    /// otherwise some runs have refusing handlers and some a request timer short enough for
    /// slow links and disks to trip it (a legitimate connection loss).
    pub(crate) fn draw_side(&mut self, rng: &mut SimRng, level: FaultLevel) {
        self.handler_delay = if rng.chance(0.5) {
            0
        } else {
            rng.range(1, 300) * MS
        };
        if level == FaultLevel::None {
            return;
        }
        if rng.chance(0.3) {
            self.handler_fail_p = [0.05, 0.2, 0.5][rng.below(3) as usize];
        }
        if rng.chance(0.25) {
            // 0.1 to 0.6 s: partitions trip it before the ping timeout does, slow links and
            // disks now and then.
            self.timeout_ds = rng.range(1, 3) as u32;
            self.ko_count = rng.range(1, 2) as u32;
        }
    }
}

impl Sim {
    fn random_alive(&mut self) -> Option<usize> {
        let alive: Vec<usize> = (0..2).filter(|&i| self.alive(i)).collect();
        self.rng.pick(&alive).copied()
    }

    fn primary(&self) -> Option<usize> {
        (0..2).find(|&i| self.state(i).is_some_and(|s| s.role == Role::Primary))
    }

    // ---- setup ----

    /// Waits for the first connection, then starts the volume: a forced primary with a full
    /// initial sync, or `new-current-uuid --clear-bitmap` to skip it.
    pub(crate) fn setup_step(&mut self) {
        if self.phase != Phase::Setup {
            return;
        }
        let connected = (0..2).all(|i| {
            self.state(i)
                .is_some_and(|s| s.conn == ConnState::Connected)
        });
        if !connected {
            if self.now > 30_000 * MS {
                let s = self.describe_state();
                self.fail(
                    "convergence",
                    format!("the fresh pair never connected: {s}"),
                );
                return;
            }
            self.at(self.now + 10 * MS, Ev::Setup);
            return;
        }
        if self.sw.initial_full_sync {
            self.headline("setup: primary --force (full initial sync)".into());
            self.command_with(0, Command::Primary { force: true }, OnSuccess::Forced);
        } else {
            self.headline("setup: new-current-uuid --clear-bitmap, primary".into());
            self.command(0, Command::NewCurrentUuid { clear_bitmap: true });
            self.command(0, Command::Primary { force: false });
        }
        self.phase = Phase::Faults;
        self.at(self.now + MS, Ev::Work);
        let d = self.sw.chaos_mean;
        self.at(self.now + d, Ev::Chaos);
    }

    // ---- the fault phase ----

    /// One random operator action or fault.
    pub(crate) fn chaos(&mut self) {
        let k = self.rng.weighted(&self.sw.weights);
        let name = ACTIONS[k].0;
        if self.sw.weights.get(k).copied().unwrap_or(0) == 0 {
            return;
        }
        match name {
            "crash" => {
                if self.opts.faults == FaultLevel::Heavy
                    && self.rng.chance(0.2)
                    && self.alive(0)
                    && self.alive(1)
                {
                    self.headline("fault: both nodes lose power".into());
                    self.fault("double power loss");
                    self.crash(0, true);
                    self.crash(1, true);
                } else if let Some(i) = self.random_alive() {
                    self.headline(format!("fault: {} loses power", self.nodes[i].name));
                    self.crash(i, true);
                }
            }
            "kill" => {
                if let Some(i) = self.random_alive() {
                    self.headline(format!("fault: {}'s daemon is killed", self.nodes[i].name));
                    self.crash(i, false);
                }
            }
            "restart" => {
                if let Some(i) = self.random_alive() {
                    self.headline(format!("operator: down/up {}", self.nodes[i].name));
                    self.fault("op down/up");
                    self.clean_restart(i);
                }
            }
            "link-drop" if self.net.any_open() => {
                self.headline("fault: the connection is reset".into());
                self.fault("link drop");
                self.tear_down();
            }
            "partition" => self.partition(),
            "slow-link" => {
                self.fault_id += 1;
                let id = self.fault_id;
                self.slow_id = id;
                let slow = self.rng.range(5, 50);
                let both = self.rng.chance(0.5);
                let one = self.rng.below(2) as usize;
                self.headline(format!("fault: slow link x{slow}"));
                self.fault("slow link");
                for (d, dir) in self.net.dirs.iter_mut().enumerate() {
                    if both || d == one {
                        dir.slow = slow;
                    }
                }
                let d = self.rng.range(50, 2000) * MS;
                self.at(self.now + d, Ev::EndSlow { id });
            }
            "disk-errors" | "disk-full" => {
                let i = self.rng.below(2) as usize;
                self.fault_id += 1;
                let id = self.fault_id;
                self.nodes[i].fault_id = id;
                let p = self.sw.error_p;
                let f = &mut self.nodes[i].disk.faults;
                let what = if name == "disk-full" {
                    f.full = true;
                    "disk full"
                } else {
                    match self.rng.below(3) {
                        0 => {
                            f.read_error = p;
                            "read errors"
                        }
                        1 => {
                            f.write_error = p;
                            f.meta_error = p / 4.0;
                            "write errors"
                        }
                        _ => {
                            f.slow = 20;
                            "slow disk"
                        }
                    }
                };
                self.headline(format!("fault: {}: {what}", self.nodes[i].name));
                self.fault(what);
                let d = self.rng.range(5, 500) * MS;
                self.at(self.now + d, Ev::EndDiskFault { node: i, id });
            }
            "corrupt" => {
                self.fault_id += 1;
                let id = self.fault_id;
                self.corrupt_id = id;
                self.corrupt_p = self.sw.corrupt_p;
                self.headline(format!(
                    "fault: the link damages {} of frames",
                    self.corrupt_p
                ));
                let d = self.rng.range(50, 1000) * MS;
                self.at(self.now + d, Ev::EndCorrupt { id });
            }
            "switchover" => {
                let Some(p) = self.primary() else {
                    return;
                };
                let s = 1 - p;
                let connected = self
                    .state(p)
                    .is_some_and(|st| st.conn >= ConnState::Connected);
                if self.alive(s) && connected {
                    self.headline(format!(
                        "operator: switch over {} -> {}",
                        self.nodes[p].name, self.nodes[s].name
                    ));
                    self.fault("op switchover");
                    if self.command(p, Command::Secondary) {
                        self.command(s, Command::Primary { force: false });
                    }
                }
            }
            "promote" => {
                if self.primary().is_some() {
                    return;
                }
                let Some(i) = self.random_alive() else {
                    return;
                };
                let connected = self
                    .state(i)
                    .is_some_and(|s| s.conn >= ConnState::Connected);
                if self.opts.faults == FaultLevel::None && !connected {
                    return;
                }
                self.headline(format!("operator: primary {}", self.nodes[i].name));
                self.fault("op promote");
                self.command(i, Command::Primary { force: false });
            }
            "force-primary" => {
                if self.primary().is_some() {
                    return;
                }
                let Some(i) = self.random_alive() else {
                    return;
                };
                let before = self.state(i).map(|s| s.disk);
                self.headline(format!("operator: primary --force {}", self.nodes[i].name));
                self.fault("op force-primary");
                let effect = if before.is_some_and(|d| d < DiskState::UpToDate) {
                    OnSuccess::Forced
                } else {
                    OnSuccess::Nothing
                };
                self.command_with(i, Command::Primary { force: true }, effect);
            }
            "split-brain" => {
                let Some(p) = self.primary() else {
                    return;
                };
                let s = 1 - p;
                let apart = self
                    .state(s)
                    .is_some_and(|st| st.conn < ConnState::Connected && st.role == Role::Secondary);
                if apart {
                    self.headline(format!(
                        "operator: primary {} while {} is Primary elsewhere",
                        self.nodes[s].name, self.nodes[p].name
                    ));
                    self.fault("op split-brain promotion");
                    self.command(s, Command::Primary { force: false });
                }
            }
            "demote" => {
                if let Some(p) = self.primary() {
                    self.headline(format!("operator: secondary {}", self.nodes[p].name));
                    self.fault("op demote");
                    self.command(p, Command::Secondary);
                }
            }
            "detach" => {
                let Some(i) = self.random_alive() else {
                    return;
                };
                if self.state(i).is_none_or(|s| s.disk <= DiskState::Diskless) {
                    return;
                }
                self.headline(format!("operator: detach {}", self.nodes[i].name));
                self.fault("op detach");
                if self.command(i, Command::Detach) {
                    let inc = self.nodes[i].inc;
                    let d = self.rng.range(10, 1000) * MS;
                    self.at(self.now + d, Ev::OperatorAttach { node: i, inc });
                }
            }
            "disconnect" => {
                let Some(i) = self.random_alive() else {
                    return;
                };
                self.headline(format!("operator: disconnect {}", self.nodes[i].name));
                self.fault("op disconnect");
                self.command(i, Command::Disconnect);
                let inc = self.nodes[i].inc;
                let d = self.rng.range(10, 1000) * MS;
                self.at(self.now + d, Ev::OperatorConnect { node: i, inc });
            }
            "invalidate" => {
                let Some(i) = self.random_alive() else {
                    return;
                };
                // Only when the other copy is good: invalidating the last one is not an
                // operator mistake the simulator needs to make.
                if self
                    .state(1 - i)
                    .is_none_or(|s| s.disk != DiskState::UpToDate)
                {
                    return;
                }
                self.headline(format!("operator: invalidate {}", self.nodes[i].name));
                self.fault("op invalidate");
                self.command_with(i, Command::Invalidate, OnSuccess::Invalidated);
            }
            "invalidate-remote" => {
                let Some(i) = self.random_alive() else {
                    return;
                };
                // Only from a good copy: making a bad one the source of a full sync is not an
                // operator mistake the simulator needs to make. The peer becoming SyncTarget
                // takes this node's data in the model.
                if self.state(i).is_none_or(|s| s.disk != DiskState::UpToDate) {
                    return;
                }
                self.headline(format!(
                    "operator: invalidate-remote {}",
                    self.nodes[i].name
                ));
                self.fault("op invalidate-remote");
                self.command(i, Command::InvalidateRemote);
            }
            "promote-both" => {
                // Two operators promote at the same instant: the requests cross on the wire
                // and one of them is refused.
                let connected = (0..2).all(|i| {
                    self.state(i)
                        .is_some_and(|s| s.conn == ConnState::Connected)
                });
                if self.primary().is_some() || !connected {
                    return;
                }
                self.headline("operator: primary on both nodes at once".into());
                self.fault("op crossing promotions");
                self.command(0, Command::Primary { force: false });
                self.command(1, Command::Primary { force: false });
            }
            "new-uuid" => {
                let Some(i) = self.random_alive() else {
                    return;
                };
                // A new generation on a disconnected node splits the data's history; below
                // heavy, only ask while connected (and expect the refusal).
                let connected = self
                    .state(i)
                    .is_some_and(|s| s.conn >= ConnState::Connected);
                if self.opts.faults != FaultLevel::Heavy && !connected {
                    return;
                }
                self.headline(format!("operator: new-current-uuid {}", self.nodes[i].name));
                self.fault("op new-current-uuid");
                self.command(
                    i,
                    Command::NewCurrentUuid {
                        clear_bitmap: false,
                    },
                );
            }
            "protocol" => {
                let p = protocol_of(self.rng.below(3) as u8);
                let k = self.rng.below(2) as usize;
                self.headline(format!(
                    "operator: protocol {p:?}, {} first",
                    self.nodes[k].name
                ));
                self.fault("op protocol change");
                self.nodes[k].protocol = p;
                let d = self.rng.range(0, 1000) * MS;
                self.at(
                    self.now + d,
                    Ev::ApplyProtocol {
                        node: 1 - k,
                        protocol: protocol_code(p),
                    },
                );
                if self.rng.chance(0.5) && self.alive(k) {
                    self.command(k, Command::Disconnect);
                    let inc = self.nodes[k].inc;
                    self.at(self.now + d + 5 * MS, Ev::OperatorConnect { node: k, inc });
                }
            }
            "rate" => {
                let r = self.rng.range(8, 128) * 1024;
                self.headline(format!("operator: resync-rate {r}K (applies on attach)"));
                self.fault("op resync-rate");
                for n in &mut self.nodes {
                    n.rate_kib = r;
                }
                if self.rng.chance(0.5) {
                    if let Some(i) = self.random_alive() {
                        self.clean_restart(i);
                    }
                }
            }
            _ => {}
        }
    }

    /// Node `i` dies: a power loss drops its volatile cache, a killed daemon does not.
    pub(crate) fn crash(&mut self, i: usize, power: bool) {
        if !self.alive(i) {
            return;
        }
        self.fault(if power { "power loss" } else { "process kill" });
        let n = &mut self.nodes[i];
        n.engine = None;
        n.pending = None;
        n.inc += 1;
        n.reqs.clear();
        n.tick_at = None;
        n.going_down = false;
        n.down_seen = false;
        let outcome = if power {
            n.disk.power_loss(&mut self.rng)
        } else {
            n.disk.process_kill(&mut self.rng)
        };
        self.note(format!("{} crash: {outcome:?}", self.nodes[i].name));
        self.model.link_lost_at[i] = self.next_version;
        if power {
            self.model.power_loss(i);
        }
        self.check_metadata(i);
        let delay = if power { self.sw.ping_timeout } else { 0 };
        if let Some(at) = self.net.close(i, self.now, delay) {
            let gen = self.net.gen;
            self.at(at, Ev::Deliver { dir: i, gen });
        }
        self.nodes[i].restarting = true;
        self.nodes[1 - i].check_due = true;
        let inc = self.nodes[i].inc;
        let d = self
            .rng
            .range(self.sw.restart_delay / 4, self.sw.restart_delay);
        self.at(self.now + d, Ev::Restart { node: i, inc });
    }

    /// The metadata on node `i`'s disk decodes and its activity log replays.
    pub(crate) fn check_metadata(&mut self, i: usize) {
        let name = self.nodes[i].name;
        let d = match self.nodes[i].disk.on_disk() {
            Ok(d) => d,
            Err(e) => {
                self.fail("metadata-decodes", format!("{name}: {e}"));
                return;
            }
        };
        if d.superblock.state == MdState::Unclean {
            if let Err(e) = repl_core::al::replay(&d.al_ring, d.layout.al) {
                self.fail(
                    "metadata-decodes",
                    format!("{name}: the activity log does not replay: {e}"),
                );
                return;
            }
        }
        // The bitmap was decoded by `on_disk`.
        self.count("metadata checks");
    }

    /// `down` then `up` (process restart; the machine keeps its cache).
    pub(crate) fn clean_restart(&mut self, i: usize) {
        if self.nodes[i].going_down || !self.alive(i) {
            return;
        }
        // Set first: `Down` may be reported during the command's own drain.
        self.nodes[i].going_down = true;
        if !self.command(i, Command::Down) && self.alive(i) {
            self.nodes[i].going_down = false;
        }
    }

    fn partition(&mut self) {
        self.fault_id += 1;
        self.partition_id = self.fault_id;
        let id = self.partition_id;
        let both = self.rng.chance(0.5);
        let one = self.rng.below(2) as usize;
        for (d, dir) in self.net.dirs.iter_mut().enumerate() {
            if both || d == one {
                dir.blocked = true;
            }
        }
        self.headline(if both {
            "fault: two-way partition".into()
        } else {
            format!(
                "fault: one-way partition ({} -> peer blocked)",
                self.nodes[one].name
            )
        });
        self.fault(if both {
            "partition two-way"
        } else {
            "partition one-way"
        });
        let d = self.rng.range(20, 3000) * MS;
        self.at(self.now + d, Ev::HealPartition { id });
        if self.net.any_open() {
            let gen = self.net.gen;
            let t = self.sw.ping_timeout;
            self.at(self.now + t, Ev::LinkTimeout { gen });
        }
    }

    pub(crate) fn heal_partition(&mut self, id: u64) {
        if id != self.partition_id || !self.net.partitioned() {
            return;
        }
        self.headline("the partition heals".into());
        for d in &mut self.net.dirs {
            d.blocked = false;
        }
        self.reschedule_deliveries();
    }

    // ---- the healed phase ----

    /// Faults stop: every fault is lifted and the cluster must converge.
    pub(crate) fn start_heal(&mut self) {
        self.phase = Phase::Heal { since: self.now };
        self.headline("faults stop; the cluster must converge".into());
        self.corrupt_p = 0.0;
        self.fault_id += 1;
        self.partition_id = 0;
        for d in &mut self.net.dirs {
            d.slow = 1;
            d.blocked = false;
        }
        self.reschedule_deliveries();
        for n in &mut self.nodes {
            n.fault_id = 0;
            n.disk.faults.read_error = 0.0;
            n.disk.faults.write_error = 0.0;
            n.disk.faults.meta_error = 0.0;
            n.disk.faults.full = false;
            n.disk.faults.slow = 1;
        }
        let p = self.nodes[0].protocol;
        self.nodes[1].protocol = p;
        self.at(self.now, Ev::Heal);
    }

    /// The operator of the healed phase: restarts what is down, re-attaches failed disks,
    /// demotes, reconnects (discarding one side after a split brain) until both copies are
    /// UpToDate and identical.
    pub(crate) fn heal_step(&mut self) {
        if !matches!(self.phase, Phase::Heal { .. }) {
            return;
        }
        if self.converged() {
            self.headline("converged".into());
            self.final_checks();
            self.phase = Phase::Done;
            return;
        }
        for i in 0..2 {
            if !self.alive(i) {
                if !self.nodes[i].restarting {
                    self.nodes[i].restarting = true;
                    let inc = self.nodes[i].inc;
                    self.at(self.now, Ev::Restart { node: i, inc });
                }
                continue;
            }
            if self.nodes[i].going_down {
                continue;
            }
            let Some(s) = self.state(i) else {
                continue;
            };
            if s.disk <= DiskState::Failed {
                self.headline(format!("heal: re-attach {}'s disk", self.nodes[i].name));
                self.clean_restart(i);
                continue;
            }
            if s.role == Role::Primary && self.nodes[i].reqs.is_empty() {
                self.headline(format!("heal: secondary {}", self.nodes[i].name));
                self.command(i, Command::Secondary);
            }
            if s.conn == ConnState::Connected
                && s.disk == DiskState::Inconsistent
                && s.pdsk >= DiskState::UpToDate
            {
                // A resync that ended with failed blocks leaves the target Inconsistent and
                // nothing restarts it: the operator disconnects and connects again.
                self.headline(format!(
                    "heal: restart the failed resync (disconnect/connect {})",
                    self.nodes[i].name
                ));
                self.count("failed resyncs restarted by the operator");
                self.command(i, Command::Disconnect);
                self.command(i, Command::Connect);
                continue;
            }
            if s.conn == ConnState::StandAlone {
                if self.nodes[i].unrelated {
                    // Unrelated histories: the operator re-creates the metadata of the worse
                    // copy (alpha's is kept on a tie), which then takes a full sync.
                    let other = self.state(1 - i).map(|o| o.disk);
                    let victim = match other {
                        Some(d) if d < s.disk => 1 - i,
                        Some(d) if d == s.disk => 1,
                        _ => i,
                    };
                    self.nodes[0].unrelated = false;
                    self.nodes[1].unrelated = false;
                    self.headline(format!(
                        "heal: unrelated data; create-md on {}",
                        self.nodes[victim].name
                    ));
                    self.nodes[victim].wipe = true;
                    self.clean_restart(victim);
                    if !self.nodes[victim].going_down && self.alive(victim) {
                        self.nodes[victim].wipe = false;
                    }
                    continue;
                }
                self.headline(format!("heal: connect {}", self.nodes[i].name));
                self.connect_node(i);
            }
        }
        let disks: Vec<DiskState> = (0..2)
            .filter_map(|i| self.state(i))
            .map(|s| s.disk)
            .collect();
        if disks.len() == 2 && disks.iter().all(|d| *d < DiskState::UpToDate) {
            let i = usize::from(disks[1] > disks[0]);
            self.headline(format!(
                "heal: no UpToDate copy left; primary --force {}",
                self.nodes[i].name
            ));
            self.command_with(i, Command::Primary { force: true }, OnSuccess::Forced);
        }
        self.at(self.now + 50 * MS, Ev::Heal);
    }
}
