//! The request timer (`request_timer_fn`, `net_timeout_reached`): a request sent to the peer
//! that is not answered within `ko-count * timeout` drops the connection through `Timeout`,
//! and the node goes on without its peer as after any lost connection.
//!
//! Only the oldest request counts: the oldest still waiting for its ack (or read reply), else
//! the oldest whose epoch waits for its `P_BARRIER_ACK`. For the latter the peer is blamed
//! only once the barrier went out and `ko-count * timeout` passed since the last one did.

use std::time::Duration;

use super::peer::Net;
use super::{Engine, Output, ReqId};
use crate::state::ConnState;
use crate::time::Instant;

/// What the oldest request sent to the peer waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waits {
    /// Its ack, or the reply to a read (`RQ_NET_PENDING`).
    Reply,
    /// The barrier ack of its epoch.
    BarrierAck,
}

impl Engine {
    /// `ko-count * timeout` while connected and configured, else `None`.
    fn effective_timeout(&self) -> Option<Duration> {
        self.peer.as_ref()?;
        self.cfg.net?.effective_timeout()
    }

    /// Whether a request still waits for the peer, and for what.
    fn waits_for_peer(&self, req: ReqId) -> Option<Waits> {
        let p = self.requests.get(&req)?;
        if p.net == Net::Waiting || (p.remote_read && p.local.is_none()) {
            Some(Waits::Reply)
        } else if p.net.is_mirrored() && p.net != Net::Done {
            Some(Waits::BarrierAck)
        } else {
            None
        }
    }

    /// The oldest request waiting for a reply, else the oldest waiting for a barrier ack,
    /// with when it was sent (`req_ack_pending`, `req_not_net_done`).
    fn oldest_for_peer(&self) -> Option<(Instant, ReqId, Waits)> {
        let mut barrier = None;
        for &(at, req) in &self.net_log {
            match self.waits_for_peer(req) {
                Some(Waits::Reply) => return Some((at, req, Waits::Reply)),
                Some(Waits::BarrierAck) if barrier.is_none() => {
                    barrier = Some((at, req, Waits::BarrierAck));
                }
                _ => {}
            }
        }
        barrier
    }

    /// Notes that a request went to the peer now (only while the timer is on).
    pub(super) fn sent_to_peer(&mut self, req: ReqId) {
        if self.effective_timeout().is_some() {
            self.net_log.push_back((self.clock, req));
        }
    }

    /// Forgets sent requests at the front of the log that no longer wait for the peer (after
    /// every request's end, so the log stays about as long as what is in flight).
    pub(super) fn prune_net_log(&mut self) {
        while let Some(&(_, req)) = self.net_log.front() {
            if self.waits_for_peer(req).is_some() {
                break;
            }
            self.net_log.pop_front();
        }
    }

    /// Whether the oldest request waiting for its barrier ack is in the epoch that has not
    /// been closed yet (no `P_BARRIER` for it went out).
    fn epoch_open(&self, req: ReqId) -> bool {
        let (Some(p), Some(peer)) = (self.requests.get(&req), self.peer.as_ref()) else {
            return false;
        };
        p.epoch == peer.epoch
    }

    /// When the request timer has something to check.
    pub(super) fn request_deadline(&self) -> Option<Instant> {
        let et = self.effective_timeout()?;
        let (at, req, waits) = self.oldest_for_peer()?;
        match waits {
            Waits::Reply => Some(at + et),
            Waits::BarrierAck => {
                let peer = self.peer.as_ref()?;
                if self.epoch_open(req) {
                    // Warned once; the barrier that goes out later sets a new deadline.
                    (peer.unsent_barrier_warned != Some(req)).then_some(at + et)
                } else {
                    let barrier = peer.barrier_sent_at.unwrap_or(at);
                    Some(at.max(barrier) + et)
                }
            }
        }
    }

    /// Drops the connection when the peer left the oldest request unanswered for
    /// `ko-count * timeout`.
    pub(super) fn request_timer(&mut self, now: Instant) {
        self.prune_net_log();
        let (Some(et), Some(net)) = (self.effective_timeout(), self.cfg.net) else {
            return;
        };
        let Some((at, req, waits)) = self.oldest_for_peer() else {
            return;
        };
        if now < at + et {
            return;
        }
        let (ko, timeout) = (net.ko_count, net.timeout_ds);
        let age = (now - at).as_millis();
        match waits {
            Waits::Reply => {
                self.log(format!(
                    "Remote failed to finish a request within {age}ms > ko-count ({ko}) * timeout ({timeout} * 0.1s)"
                ));
                self.connection_timeout();
            }
            Waits::BarrierAck if self.epoch_open(req) => {
                let Some(peer) = self.peer.as_mut() else {
                    return;
                };
                if peer.unsent_barrier_warned != Some(req) {
                    peer.unsent_barrier_warned = Some(req);
                    self.log(format!(
                        "We did not send a P_BARRIER for {age}ms > ko-count ({ko}) * timeout ({timeout} * 0.1s); drbd kernel thread blocked?"
                    ));
                }
            }
            Waits::BarrierAck => {
                let barrier = self
                    .peer
                    .as_ref()
                    .and_then(|p| p.barrier_sent_at)
                    .unwrap_or(at);
                if now < barrier + et {
                    return;
                }
                self.log(format!(
                    "Remote failed to answer a P_BARRIER (sent at {} ms; now={} ms) within {}ms > ko-count ({ko}) * timeout ({timeout} * 0.1s)",
                    barrier.as_nanos() / 1_000_000,
                    now.as_nanos() / 1_000_000,
                    (now - barrier).as_millis()
                ));
                self.connection_timeout();
            }
        }
    }

    /// `conn( ... -> Timeout )`: the link is closed and reconnected; whatever the peer did
    /// not confirm is out of sync, as after any lost connection.
    fn connection_timeout(&mut self) {
        self.out.push_back(Output::Disconnect { reconnect: true });
        self.lose_and_reconnect(ConnState::Timeout);
    }

    /// The link found the peer unresponsive (a send blocked for `ko-count * timeout`): the
    /// connection goes through `Timeout`, then the node waits for the peer again.
    pub fn peer_timed_out(&mut self) {
        if self.peer.is_none() {
            return;
        }
        self.lose_and_reconnect(ConnState::Timeout);
        self.release_held();
    }

    /// Forgets the connection through `via`, then waits for the peer again.
    pub(super) fn lose_and_reconnect(&mut self, via: ConnState) {
        self.link_lost(via);
        if self.state.conn != ConnState::StandAlone {
            self.force_state(|s| s.conn = ConnState::Unconnected);
            self.force_state(|s| s.conn = ConnState::WFConnection);
        }
    }
}
