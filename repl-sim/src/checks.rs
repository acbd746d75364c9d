//! The invariants checked while the run goes on and when it converges. Reads, completions,
//! packets and log lines are checked as they happen (in `sim.rs`); the checks here look at
//! whole copies, so they wait until the system is quiet (no disk operation, packet or peer
//! write in flight) and are throttled.

use repl_core::engine::Engine;
use repl_core::state::{ConnState, DiskState, NodeState, Role};

use crate::sim::{Phase, Sim};
use crate::workload::SECTOR;

const BLOCK: u64 = 4096;
/// Whole-copy checks of one node (and of the pair) run at most this often (simulated ns).
const CHECK_EVERY_NS: u64 = 20_000_000;

impl Sim {
    /// No disk operation, packet or received write is in flight anywhere.
    pub(crate) fn system_quiet(&self) -> bool {
        if !self.net.empty() {
            return false;
        }
        let idle = self
            .nodes
            .iter()
            .all(|n| n.engine.is_none() || (n.disk.idle() && !n.going_down));
        idle && self.nodes.iter().all(|n| {
            n.engine
                .as_ref()
                .is_none_or(|e| e.status().counters.ua == 0)
        })
    }

    /// Both nodes Connected and UpToDate on both sides (and no bits set when `no_bits`).
    fn connected_clean(&self, no_bits: bool) -> bool {
        (0..2).all(|i| {
            self.nodes[i].engine.as_ref().is_some_and(|e| {
                let s = e.state();
                s.conn == ConnState::Connected
                    && s.disk == DiskState::UpToDate
                    && s.pdsk == DiskState::UpToDate
                    && (!no_bits || e.out_of_sync_blocks() == 0)
            }) && self.net.sides[i].established().is_some()
        })
    }

    /// Checks run after every step.
    pub(crate) fn run_checks(&mut self) {
        if self.violation.is_some() || self.phase == Phase::Setup {
            return;
        }
        // Two Primaries on one connection need allow-two-primaries, which is off.
        let both_primary_connected = (0..2).all(|i| {
            self.state(i)
                .is_some_and(|s| s.role == Role::Primary && s.conn >= ConnState::Connected)
        });
        if both_primary_connected {
            self.fail(
                "refusals",
                "both nodes are Primary on one connection without allow-two-primaries".into(),
            );
            return;
        }
        let due = self.nodes.iter().any(|n| n.check_due) || self.pair_due;
        if !due || !self.system_quiet() {
            return;
        }
        for i in 0..2 {
            if !self.nodes[i].check_due || self.now < self.nodes[i].last_check + CHECK_EVERY_NS {
                continue;
            }
            self.nodes[i].check_due = false;
            self.nodes[i].last_check = self.now;
            self.check_copy(i, "acked-write-lost");
        }
        if self.pair_due
            && self.now >= self.last_pair_check + 10_000_000
            && self.connected_clean(true)
        {
            self.pair_due = false;
            self.last_pair_check = self.now;
            self.count("identical-copy checks");
            if let Some(b) = self.first_difference(&[]) {
                self.fail(
                    "copies-identical",
                    format!(
                        "Connected UpToDate/UpToDate with empty bitmaps, but the copies differ \
                         at {} KiB block {b} (byte {})",
                        BLOCK / 1024,
                        b * BLOCK
                    ),
                );
                return;
            }
            self.model.converged();
            for i in 0..2 {
                self.check_copy(i, "acked-write-lost");
            }
        }
    }

    /// A node that says UpToDate holds everything the model says it must.
    fn check_copy(&mut self, i: usize, invariant: &'static str) {
        let up = self.state(i).is_some_and(|s| s.disk == DiskState::UpToDate);
        if !up {
            return;
        }
        self.count("copy checks");
        let r = self.model.check_copy(i, self.nodes[i].disk.data());
        if let Err(m) = r {
            let name = self.nodes[i].name;
            self.fail(
                invariant,
                format!("{name} is UpToDate but misses acknowledged data: {m}"),
            );
        }
    }

    /// The first 4 KiB block whose bytes differ between the copies, skipping `masked` ones.
    fn first_difference(&self, masked: &[bool]) -> Option<u64> {
        let (a, b) = (self.nodes[0].disk.data(), self.nodes[1].disk.data());
        let len = a.len().min(b.len());
        if a[..len] == b[..len] {
            return None;
        }
        let blocks = (len as u64).div_ceil(BLOCK);
        (0..blocks).find(|&blk| {
            if masked.get(blk as usize).copied().unwrap_or(false) {
                return false;
            }
            let s = (blk * BLOCK) as usize;
            let e = (s + BLOCK as usize).min(len);
            a[s..e] != b[s..e]
        })
    }

    /// Once both sides' bitmaps crossed: every block where the copies differ is set in one of
    /// them (or named by `P_OUT_OF_SYNC`, or under a write in flight).
    pub(crate) fn check_coverage(&mut self) {
        let gen = self.net.gen;
        let both_up = self.link_up_on(0, gen) && self.link_up_on(1, gen);
        if self.conn.covered || !(self.alive(0) && self.alive(1)) || self.stale_handshake() {
            return;
        }
        if !both_up {
            // One side already left this connection; what it wrote since is not this
            // exchange's business (its own bitmap records it).
            return;
        }
        self.conn.covered = true;
        self.count("bitmap coverage checks");
        let usable = self.nodes[0].disk.usable().min(self.nodes[1].disk.usable());
        let blocks = usable.div_ceil(BLOCK) as usize;
        let mut mask = vec![false; blocks];
        for bm in self.conn.bitmaps.iter().flatten() {
            for (blk, m) in mask.iter_mut().enumerate() {
                if bm.get(blk / 64).is_some_and(|w| w >> (blk % 64) & 1 == 1) {
                    *m = true;
                }
            }
        }
        let mut ranges = self.conn.oos.clone();
        for n in &self.nodes {
            ranges.extend(n.disk.inflight_writes());
            // Mirrored writes whose answer is still on its way (a disk attached on this
            // connection refuses what was sent before: the sender marks it at the
            // `P_NEG_ACK`, after the exchange).
            ranges.extend(n.reqs.values().filter_map(|r| match r.op {
                crate::workload::Op::Write { offset, len, .. }
                | crate::workload::Op::Trim { offset, len }
                | crate::workload::Op::Zeroes { offset, len, .. }
                    if r.mirrored.is_some() && !r.peer_acked =>
                {
                    Some((offset, len))
                }
                _ => None,
            }));
        }
        for (o, l) in ranges {
            let first = (o / BLOCK) as usize;
            let end = ((o + l).div_ceil(BLOCK) as usize).min(blocks);
            for m in mask.iter_mut().take(end).skip(first) {
                *m = true;
            }
        }
        if let Some(b) = self.first_difference(&mask) {
            let bits: Vec<u64> = self
                .conn
                .bitmaps
                .iter()
                .map(|bm| {
                    bm.as_ref()
                        .map_or(0, |w| w.iter().map(|x| u64::from(x.count_ones())).sum())
                })
                .collect();
            let show = |i: usize| {
                let d = &self.nodes[i].disk.data()[(b * BLOCK) as usize..];
                crate::workload::decode(&d[..SECTOR as usize], b * BLOCK / SECTOR)
            };
            self.fail(
                "bitmap-coverage",
                format!(
                    "block {b} (byte {}) differs ({:?} vs {:?}) but neither bitmap has it \
                     (bits set: {bits:?})",
                    b * BLOCK,
                    show(0),
                    show(1)
                ),
            );
        }
    }

    /// A node crashed after sending its handshake on this connection: what it sent outlived
    /// it, and it will never answer again on this connection.
    fn stale_handshake(&self) -> bool {
        (0..2).any(|j| self.conn.uuids_inc[j] != Some(self.nodes[j].inc) || !self.alive(j))
    }

    /// A handshake on node `i` decided to connect or resync: if both copies hold writes the
    /// other never saw, that is a silent merge of a split brain.
    /// An Inconsistent side (`old.disk` here, `new.pdsk` as the peer reported it) counts
    /// for nothing: DRBD settles the direction by the disk states before any split-brain
    /// rule, and that side's data is overwritten.
    pub(crate) fn handshake_decided(&mut self, i: usize, old: NodeState, new: NodeState) {
        let conn = new.conn;
        self.count("handshakes");
        if self.stale_handshake() {
            self.count("handshakes with a crashed peer");
            return;
        }
        let diskless_side = self.state(i).is_some_and(|s| {
            conn == ConnState::Connected
                && (s.disk <= DiskState::Failed || s.pdsk <= DiskState::Failed)
        });
        if diskless_side {
            // Nothing is compared or synced with a diskless side: no data merges.
            self.count("handshakes with a diskless side");
            return;
        }
        let inconsistent =
            old.disk <= DiskState::Inconsistent || new.pdsk <= DiskState::Inconsistent;
        if self.model.unique[0] && self.model.unique[1] && !self.conn.discard && !inconsistent {
            let name = self.nodes[i].name;
            self.fail(
                "split-brain",
                format!(
                    "{name}: both copies hold writes the other never saw, yet the handshake \
                     went to {conn} instead of detecting split brain"
                ),
            );
        }
    }

    /// The healed phase is done: both Connected and UpToDate, nothing left to sync or to do.
    pub(crate) fn converged(&self) -> bool {
        self.connected_clean(false)
            && self.system_quiet()
            && self.nodes.iter().all(|n| {
                n.reqs.is_empty()
                    && n.engine
                        .as_ref()
                        .is_some_and(|e| e.status().counters.ap == 0 && e.next_tick().is_none())
            })
    }

    /// After convergence: identical copies holding every acknowledged write, empty bitmaps,
    /// metadata that decodes.
    pub(crate) fn final_checks(&mut self) {
        if let Some(b) = self.first_difference(&[]) {
            self.fail(
                "copies-identical",
                format!("after the resync the copies differ at 4 KiB block {b}"),
            );
            return;
        }
        for i in 0..2 {
            let oos = self.nodes[i]
                .engine
                .as_ref()
                .map_or(0, Engine::out_of_sync_blocks);
            if oos != 0 {
                self.fail(
                    "bitmaps-empty",
                    format!(
                        "{} is Connected UpToDate/UpToDate with identical data but keeps {oos} \
                         bits set: no resync will clear them",
                        self.nodes[i].name
                    ),
                );
                return;
            }
            self.check_copy(i, "acked-write-lost");
            self.check_metadata(i);
        }
        self.count("runs converged");
    }
}
