//! The reference model: what the block layer was told, and therefore what each node's copy
//! must hold.
//!
//! # Versions
//! Every write gets a version from one global counter at submission, and its data names that
//! version in every sector ([`crate::workload`]). Trim and write-zeroes leave zeroes; version 0
//! is the zeroed device of `create-md`. The engine applies overlapping writes in submission
//! order on both nodes, so on one line of history a sector only ever moves to higher versions.
//!
//! # What each node must hold
//! For node `i` and sector `s` the model keeps `need[i][s]`, the oldest version `i` may hold
//! there, and `dur[i][s]`, the oldest version that survives a power loss of `i`:
//!
//! - a write acknowledged OK on `i` while `i`'s disk is attached and its data counts
//!   (UpToDate or Consistent, or Inconsistent while connected: a Primary SyncTarget) sets
//!   `need[i]` (a FUA write also `dur[i]`);
//! - the same write also sets the peer's `need` when it was mirrored under protocol C on a
//!   connection that was still up when it completed and the peer did not refuse it
//!   (`P_NEG_ACK`): protocol C completes only after the peer's disk completed it. Under A and B
//!   nothing is promised about the peer until a FLUSH;
//! - a FLUSH completed OK on `i` makes every write acknowledged on `i` before the FLUSH was
//!   submitted durable on `i` (`dur[i]`), and, when the FLUSH was mirrored on the same
//!   connection as those writes and completed on it, durable and present on the peer too,
//!   under A, B and C alike;
//! - a power loss of `i` sets `need[i] = dur[i]`: unflushed writes may be gone from that copy.
//!   If both nodes lose power, only flushed and FUA data is promised anywhere;
//! - when `i` starts a resync as target of `j`, `need[i] = need[j]`: the target takes the
//!   source's data, whatever it is (a Primary target keeps its own acknowledged writes too:
//!   `need[i] = max(need[i], need[j])`). This is how DRBD forgives exactly the writes a crashed
//!   Primary lost from its volatile cache when it comes back as the source (rule 40): they are
//!   lost for the cluster, as on a local disk that lost power before a FLUSH. When the resync
//!   ends, `need[i] = need[j]` unless `j` lost the connection already (its later writes never
//!   came) or the link runs protocol A or B (writes acknowledged during the resync may still
//!   be on their way), and `dur[i] = min(dur[i], need[i])`;
//! - `primary --force` on a disk that is not UpToDate declares its data good: `need[i]` and
//!   `dur[i]` drop to 0 (anything that is valid data).
//!
//! A sector satisfies `need` when it holds a version `v >= need` written to that very sector, or
//! zeroes and the newest zeroing write submitted for it is `>= need`. Reads on a Primary must
//! satisfy it per sector (against the lower of `need` at submission and at completion, since a
//! concurrent write may or may not be seen), and so must the whole data area of a node that
//! reports UpToDate whenever it is quiet.
//!
//! # Split brain
//! `unique[i]` says that `i` acknowledged, on an UpToDate or Consistent disk, a write that was
//! never sent to the peer since the two copies last converged (an Inconsistent side is
//! resolved by disk states, as DRBD does, and is not a split brain). When both are set, a connection must not resync or connect without
//! detecting split brain (unless an operator asked to discard one side).

use std::collections::VecDeque;

use crate::workload::{decode, Content, SECTOR};

/// A write acknowledged on a node, kept until a FLUSH covers it.
#[derive(Debug, Clone)]
struct Acked {
    first: u64,
    n: u64,
    /// The lowest version the range may hold once this write was acknowledged.
    version: u64,
    /// The node's own disk took it.
    local: bool,
    /// The connection it was mirrored on.
    mirrored: Option<u64>,
}

/// A write acknowledged OK to the block layer.
#[derive(Debug, Clone, Copy)]
pub struct WriteAck {
    pub node: usize,
    pub first: u64,
    pub n: u64,
    pub version: u64,
    pub fua: bool,
    /// The node's own copy took it (and counts).
    pub local: bool,
    /// Protocol C confirmed it on the peer.
    pub peer_has: bool,
    /// The connection it was sent on.
    pub mirrored: Option<u64>,
    /// It was never sent to the peer and the node's data was good: the copies diverge.
    pub diverges: bool,
}

/// Why a sector does not satisfy the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Miss {
    pub sector: u64,
    pub found: Content,
    pub need: u64,
    /// How many sectors of the range missed.
    pub count: u64,
}

impl std::fmt::Display for Miss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let found = match self.found {
            Content::Zero => "zeroes".to_string(),
            Content::Version(v) => format!("version {v}"),
            Content::Garbage => "garbage".to_string(),
        };
        write!(
            f,
            "sector {} holds {found}, needs version >= {} ({} sector(s) wrong)",
            self.sector, self.need, self.count
        )
    }
}

/// The reference model for one volume and its two copies.
#[derive(Debug, Clone)]
pub struct Model {
    sectors: u64,
    need: [Vec<u64>; 2],
    dur: [Vec<u64>; 2],
    last_zero: Vec<u64>,
    log: [VecDeque<Acked>; 2],
    /// Absolute number of `log[i][0]`.
    log_first: [u64; 2],
    pub unique: [bool; 2],
    /// The newest version among each node's diverging writes.
    last_unique: [u64; 2],
    /// The next version to be handed out when each node last lost its link (or crashed):
    /// diverging writes older than that were in its bitmap or announced by P_OUT_OF_SYNC.
    pub link_lost_at: [u64; 2],
    /// What each node had to hold before it became a resync target, until the resync ends:
    /// a target whose Inconsistent superblock never reached its disk comes back with that.
    before_resync: [Option<Vec<u64>>; 2],
}

impl Model {
    /// A freshly created volume of `sectors` sectors: zeroes everywhere.
    pub fn new(sectors: u64) -> Model {
        let z = vec![0u64; sectors as usize];
        Model {
            sectors,
            need: [z.clone(), z.clone()],
            dur: [z.clone(), z.clone()],
            last_zero: z,
            log: [VecDeque::new(), VecDeque::new()],
            log_first: [0, 0],
            unique: [false, false],
            last_unique: [0, 0],
            link_lost_at: [0, 0],
            before_resync: [None, None],
        }
    }

    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    fn span(&self, first: u64, n: u64) -> std::ops::Range<usize> {
        let end = (first + n).min(self.sectors);
        first.min(end) as usize..end as usize
    }

    /// A trim or write-zeroes of `version` was submitted: zeroes become a valid content.
    pub fn zeroing_submitted(&mut self, first: u64, n: u64, version: u64) {
        let r = self.span(first, n);
        for z in &mut self.last_zero[r] {
            *z = (*z).max(version);
        }
    }

    /// A write completed OK (see [`WriteAck`]); `concurrent` lists the overlapping writes whose
    /// lifetimes overlapped this one's (`(first, n, version)`), any of which may be what a
    /// sector holds in the end.
    pub fn write_acked(&mut self, w: &WriteAck, concurrent: &[(u64, u64, u64)]) {
        let WriteAck {
            node,
            first,
            n,
            version,
            fua,
            local,
            peer_has,
            mirrored,
            diverges,
        } = *w;
        let r = self.span(first, n);
        let mut floor = vec![version; r.len()];
        for &(cf, cn, cv) in concurrent {
            let c = self.span(cf, cn);
            let (lo, hi) = (c.start.max(r.start), c.end.min(r.end));
            for f in floor
                .iter_mut()
                .take(hi.saturating_sub(r.start))
                .skip(lo.saturating_sub(r.start))
            {
                *f = (*f).min(cv);
            }
        }
        let eff = floor.iter().copied().min().unwrap_or(version);
        let peer = 1 - node;
        if local {
            raise_to(&mut self.need[node][r.clone()], &floor);
            if fua {
                raise_to(&mut self.dur[node][r.clone()], &floor);
            }
        }
        if peer_has {
            raise_to(&mut self.need[peer][r.clone()], &floor);
            if fua {
                raise_to(&mut self.dur[peer][r], &floor);
            }
        }
        if diverges {
            self.unique[node] = true;
            self.last_unique[node] = self.last_unique[node].max(version);
        }
        self.log[node].push_back(Acked {
            first,
            n,
            version: eff,
            local,
            mirrored,
        });
    }

    /// A FLUSH is submitted on `node`: what it will cover.
    pub fn flush_mark(&self, node: usize) -> u64 {
        self.log_first[node] + self.log[node].len() as u64
    }

    /// A FLUSH completed OK on `node`. `local`: its disk flushed; `peer`: the connection it
    /// was mirrored and completed on.
    pub fn flush_done(&mut self, node: usize, mark: u64, local: bool, peer: Option<u64>) {
        let other = 1 - node;
        while self.log_first[node] < mark {
            let Some(e) = self.log[node].pop_front() else {
                break;
            };
            self.log_first[node] += 1;
            let r = self.span(e.first, e.n);
            if local && e.local {
                raise(&mut self.dur[node][r.clone()], e.version);
            }
            if peer.is_some() && e.mirrored == peer {
                raise(&mut self.need[other][r.clone()], e.version);
                raise(&mut self.dur[other][r], e.version);
            }
        }
    }

    /// `node` lost power: only its durable data is promised.
    pub fn power_loss(&mut self, node: usize) {
        self.need[node] = self.dur[node].clone();
        self.log_first[node] += self.log[node].len() as u64;
        self.log[node].clear();
    }

    /// `target` begins a resync from `source`: it takes the source's data. A Primary target
    /// keeps what it acknowledged itself as well (its writes are the newest).
    pub fn resync_started(&mut self, target: usize, primary: bool) {
        let source = 1 - target;
        if self.before_resync[target].is_none() {
            self.before_resync[target] = Some(self.need[target].clone());
        }
        if primary {
            let src = self.need[source].clone();
            raise_to(&mut self.need[target], &src);
        } else {
            self.need[target] = self.need[source].clone();
        }
    }

    /// A resync ended with `target` UpToDate: both copies converged. `source_linked`: the
    /// source still had the connection, so everything it acknowledged reached the target;
    /// under protocol A or B only what it acknowledged before the resync began (writes
    /// acknowledged since may still be on their way, and a lost link marks them out of sync
    /// on the source instead).
    pub fn resync_done(&mut self, target: usize, source_linked: bool, protocol_c: bool) {
        let source = 1 - target;
        self.before_resync[target] = None;
        if source_linked {
            if protocol_c {
                self.need[target] = self.need[source].clone();
            }
            self.unique = [false, false];
        } else {
            self.unique[target] = false;
            // The target cleared every bit the source marked while it still had the link,
            // so the source's diverging writes from before it lost it are on the target.
            if self.last_unique[source] < self.link_lost_at[source] {
                self.unique[source] = false;
            }
        }
        // What survives a power loss now: the older of what survived before and what the
        // source holds (mirrored writes still in the target's cache are not promised yet).
        let (need, dur) = (&self.need[target], &mut self.dur[target]);
        for (d, n) in dur.iter_mut().zip(need) {
            *d = (*d).min(*n);
        }
    }

    /// `node` restarted with a consistent disk although it was a resync target: the
    /// superblock that made it Inconsistent never reached the disk, and neither did any write
    /// that depended on it, so it holds what it held before the resync.
    pub fn resync_forgotten(&mut self, node: usize) {
        if let Some(before) = self.before_resync[node].take() {
            for (d, b) in self.dur[node].iter_mut().zip(&before) {
                *d = (*d).min(*b);
            }
            self.need[node] = before;
        }
    }

    /// The two copies were found identical while connected: nothing is unique any more.
    pub fn converged(&mut self) {
        self.unique = [false, false];
    }

    /// `primary --force` on a disk that was not UpToDate: its data is declared good.
    pub fn forced(&mut self, node: usize) {
        self.before_resync[node] = None;
        self.need[node].fill(0);
        self.dur[node].fill(0);
    }

    /// `invalidate`: the node's data will be replaced.
    pub fn invalidated(&mut self, node: usize) {
        self.unique[node] = false;
    }

    /// The oldest version `node` may return for each sector of a range, now.
    pub fn need_snapshot(&self, node: usize, first: u64, n: u64) -> Vec<u64> {
        self.need[node][self.span(first, n)].to_vec()
    }

    fn check_one(&self, sector: u64, content: Content, need: u64) -> bool {
        match content {
            Content::Zero => self.last_zero[sector as usize] >= need,
            Content::Version(v) => v >= need,
            Content::Garbage => false,
        }
    }

    /// Checks a read's data against the lower of `at_submit` and the current `need`.
    ///
    /// # Errors
    /// The first sector that misses, with the number of sectors that do.
    pub fn check_read(
        &self,
        node: usize,
        offset: u64,
        data: &[u8],
        at_submit: &[u64],
    ) -> Result<(), Miss> {
        let first = offset / SECTOR;
        let mut miss: Option<Miss> = None;
        for (i, chunk) in data.chunks(SECTOR as usize).enumerate() {
            let s = first + i as u64;
            if s >= self.sectors {
                break;
            }
            let now = self.need[node][s as usize];
            let need = at_submit.get(i).map_or(now, |a| (*a).min(now));
            let c = decode(chunk, s);
            if !self.check_one(s, c, need) {
                match miss.as_mut() {
                    Some(m) => m.count += 1,
                    None => {
                        miss = Some(Miss {
                            sector: s,
                            found: c,
                            need,
                            count: 1,
                        })
                    }
                }
            }
        }
        miss.map_or(Ok(()), Err)
    }

    /// Checks a node's whole data area (`data` starts at sector 0).
    ///
    /// # Errors
    /// The first sector that misses, with the number of sectors that do.
    pub fn check_copy(&self, node: usize, data: &[u8]) -> Result<(), Miss> {
        self.check_read(node, 0, data, &[])
    }
}

fn raise_to(xs: &mut [u64], floor: &[u64]) {
    for (x, f) in xs.iter_mut().zip(floor) {
        *x = (*x).max(*f);
    }
}

fn raise(xs: &mut [u64], v: u64) {
    for x in xs {
        *x = (*x).max(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::data;

    #[test]
    fn protocol_c_acks_bind_the_peer_and_power_loss_forgives_unflushed_writes() {
        let mut m = Model::new(64);
        m.write_acked(
            &WriteAck {
                node: 0,
                first: 8,
                n: 8,
                version: 5,
                fua: false,
                local: true,
                peer_has: true,
                mirrored: Some(1),
                diverges: false,
            },
            &[],
        );
        let d = data(5, 8 * 512, 4096);
        assert!(m.check_read(1, 4096, &d, &[]).is_ok());
        assert!(
            m.check_read(1, 4096, &[0; 4096], &[]).is_err(),
            "lost on the peer"
        );
        m.power_loss(1);
        assert!(
            m.check_read(1, 4096, &[0; 4096], &[]).is_ok(),
            "never flushed"
        );
        // A flush mirrored on connection 2 binds the peer for writes sent on it.
        m.write_acked(
            &WriteAck {
                node: 0,
                first: 16,
                n: 8,
                version: 6,
                fua: false,
                local: true,
                peer_has: false,
                mirrored: Some(2),
                diverges: false,
            },
            &[],
        );
        let mark = m.flush_mark(0);
        m.flush_done(0, mark, true, Some(2));
        m.power_loss(1);
        assert!(m.check_read(1, 8192, &[0; 4096], &[]).is_err());
        assert!(m.check_read(1, 8192, &data(6, 8192, 4096), &[]).is_ok());
    }

    #[test]
    fn concurrent_overlapping_writes_may_end_in_either_order() {
        let mut m = Model::new(16);
        // v2 acked while v1 (older, overlapping) is still in flight, then v1 acked.
        m.write_acked(
            &WriteAck {
                node: 0,
                first: 0,
                n: 8,
                version: 2,
                fua: false,
                local: true,
                peer_has: false,
                mirrored: Some(1),
                diverges: false,
            },
            &[(0, 8, 1)],
        );
        m.write_acked(
            &WriteAck {
                node: 0,
                first: 0,
                n: 8,
                version: 1,
                fua: false,
                local: true,
                peer_has: false,
                mirrored: Some(1),
                diverges: false,
            },
            &[(0, 8, 2)],
        );
        assert!(m.check_read(0, 0, &data(1, 0, 512), &[]).is_ok());
        assert!(m.check_read(0, 0, &data(2, 0, 512), &[]).is_ok());
        m.write_acked(
            &WriteAck {
                node: 0,
                first: 0,
                n: 4,
                version: 3,
                fua: false,
                local: true,
                peer_has: false,
                mirrored: Some(1),
                diverges: false,
            },
            &[],
        );
        assert!(m.check_read(0, 0, &data(2, 0, 512), &[]).is_err());
        assert!(m.check_read(0, 2048, &data(1, 2048, 512), &[]).is_ok());
    }

    #[test]
    fn zeroes_count_only_when_a_zeroing_write_is_new_enough() {
        let mut m = Model::new(16);
        m.write_acked(
            &WriteAck {
                node: 0,
                first: 0,
                n: 8,
                version: 3,
                fua: false,
                local: true,
                peer_has: false,
                mirrored: None,
                diverges: true,
            },
            &[],
        );
        assert!(m.unique[0]);
        assert!(m.check_read(0, 0, &[0; 512], &[]).is_err());
        m.zeroing_submitted(0, 8, 4);
        assert!(m.check_read(0, 0, &[0; 512], &[]).is_ok(), "trim in flight");
        assert!(m.check_read(0, 0, &data(2, 0, 512), &[]).is_err(), "older");
    }
}
