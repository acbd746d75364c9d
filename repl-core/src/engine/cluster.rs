//! Cluster-wide state changes (`drbd_req_state` with `cl_wide_st_chg`): while connected, a
//! promotion and the start of a full sync (`invalidate`, `invalidate-remote`) need the peer's
//! consent. The node checks the change itself, sends `P_STATE_CHG_REQ` and waits; the peer
//! checks the change against its own state, applies it and answers `P_STATE_CHG_REPLY`; only
//! then does the requester apply it. Two requests that cross are serialised as DRBD does: the
//! node holding the resolve-conflicts flag answers the peer's request with
//! SS_CONCURRENT_ST_CHG while its own is pending, the other side grants it and re-checks its
//! own request against the state that results.
//!
//! The caller learns that a command waits from [`Engine::command_pending`]; its result comes as
//! [`Event::CommandDone`]. A lost connection ends the wait as DRBD's `SS_CW_NO_NEED` does: the
//! change is then tried on this node alone.

use super::peer::Phase;
use super::{After, CommandError, Engine, Event, Output};
use crate::state::{
    ConnState, Context, DiskState, NodeState, Promotion, Role, StateChange, StateChangeError,
    FORCED_SPLIT_BRAIN, FORCED_UP_TO_DATE,
};
use crate::time::Instant;
use crate::wire::{Packet, STATE_CHG_VERSION};

/// A command waiting for the peer's answer to its `P_STATE_CHG_REQ`.
#[derive(Debug, Clone, Copy)]
pub(super) struct StateRequest {
    what: Requested,
    /// Which of this link's requests it is (1 for the first): the peer answers in order.
    seq: u64,
    ctx: Context,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Requested {
    /// `primary [--force]`; `retried`: `drbd_set_role` asks once more after a refusal.
    Promote { force: bool, retried: bool },
    /// A full sync with this node as the source (`invalidate-remote`) or the target
    /// (`invalidate`).
    FullSync { source: bool },
}

impl Requested {
    fn conn(source: bool) -> ConnState {
        if source {
            ConnState::StartingSyncS
        } else {
            ConnState::StartingSyncT
        }
    }
}

impl Engine {
    /// Whether the last command waits for the peer's consent; its result follows as
    /// [`Event::CommandDone`] (or when the connection is lost).
    pub fn command_pending(&self) -> bool {
        self.state_req.is_some()
    }

    /// The link carries cluster-wide state changes (both sides speak wire version 2) and the
    /// handshake is over.
    fn cluster_wide_link(&self) -> bool {
        self.peer
            .as_ref()
            .is_some_and(|p| p.params.version >= STATE_CHG_VERSION && p.phase == Phase::Running)
    }

    /// `primary [--force]` (`drbd_set_role`): checked here first; while connected the peer
    /// must agree. Returns whether it waits for the peer.
    pub(super) fn primary_command(
        &mut self,
        force: bool,
        retried: bool,
        ctx: Context,
    ) -> Result<bool, CommandError> {
        match self.state.promote(force, false, &ctx)? {
            Promotion::Unchanged => Ok(false),
            Promotion::RunFencePeer => Err(CommandError::FencePeerUnsupported),
            Promotion::Promoted {
                state,
                forced,
                forced_split_brain,
            } => {
                if self.cluster_wide_link() && self.state.is_cluster_wide(&state) {
                    let change = StateChange {
                        role: Some(Role::Primary),
                        disk: forced.then_some(DiskState::UpToDate),
                        ..StateChange::default()
                    };
                    self.request(change, Requested::Promote { force, retried }, ctx);
                    return Ok(true);
                }
                self.apply_promotion(state, forced, forced_split_brain);
                Ok(false)
            }
        }
    }

    /// The promotion's effects: warnings, a new current UUID when due, the superblock, and
    /// the new state (and UUIDs, when they changed) for the peer.
    fn apply_promotion(&mut self, state: NodeState, forced: bool, forced_split_brain: bool) {
        if forced {
            self.log(FORCED_UP_TO_DATE.into());
        }
        if forced_split_brain {
            self.log(FORCED_SPLIT_BRAIN.into());
        }
        let random = self.rng.next_u64();
        let new_generation = self.sb.uuids.promote(&state, forced, random);
        if new_generation {
            self.log(format!("new current UUID {}", self.sb.uuids.current));
        }
        self.set_crashed_primary(false);
        self.set_state(state);
        self.write_superblock(After::Superblock);
        // A diskless peer decides on these when it attaches again (8.4 sends them only when
        // forced, and that peer then decides on a stale tuple).
        if new_generation {
            self.send_uuids(crate::uuid::UuidFlags::default());
        }
        self.send_state();
    }

    /// `invalidate` (`drbd_adm_invalidate`): StandAlone and Secondary, the disk becomes
    /// Inconsistent with every block out of sync; otherwise a full sync as target
    /// (StartingSyncT), which needs the connection. Returns whether it waits for the peer.
    pub(super) fn invalidate_command(&mut self, ctx: Context) -> Result<bool, CommandError> {
        if self.state.disk <= DiskState::Failed {
            // drbdsetup's (-11), as the state change to Inconsistent is refused.
            return Err(StateChangeError::IsDiskless.into());
        }
        if self.state.conn == ConnState::StandAlone && self.state.role == Role::Secondary {
            let mut req = self.state;
            req.disk = DiskState::Inconsistent;
            if let Some(state) = self.state.change(req, false, &ctx)? {
                self.set_state(state);
            }
            self.set_all_bits();
            self.write_superblock(After::Superblock);
            return Ok(false);
        }
        if self.state.conn == ConnState::Connected && !self.cluster_wide_link() {
            self.invalidate_with_an_old_peer()?;
            return Ok(false);
        }
        self.full_sync_command(false, ctx)
    }

    /// `invalidate` towards a peer that predates cluster-wide state changes: the disk becomes
    /// Inconsistent and the peer's handshake run (on our new state) makes this node the target.
    fn invalidate_with_an_old_peer(&mut self) -> Result<(), CommandError> {
        if self.state.role == Role::Primary || self.state.pdsk < DiskState::UpToDate {
            return Err(StateChangeError::NoUpToDateDisk.into());
        }
        let mut req = self.state;
        req.disk = DiskState::Inconsistent;
        // Sanitizing would lift a connected Inconsistent disk back up. The peer hears of it
        // once the superblock saying so is durable (After::AnnounceDisk).
        self.set_state(req);
        self.set_all_bits();
        self.announce_pending = true;
        self.write_superblock(After::AnnounceDisk);
        Ok(())
    }

    /// `invalidate-remote` (`drbd_adm_invalidate_peer`): StandAlone and Primary, the peer's
    /// disk is taken as Inconsistent and every block out of sync, so that the next connection
    /// makes it a full sync; otherwise a full sync as source (StartingSyncS), which needs the
    /// connection. Returns whether it waits for the peer.
    pub(super) fn invalidate_remote_command(&mut self, ctx: Context) -> Result<bool, CommandError> {
        if self.state.disk <= DiskState::Failed {
            return Err(StateChangeError::NoDisk.into());
        }
        if self.state.conn == ConnState::StandAlone && self.state.role == Role::Primary {
            let mut req = self.state;
            req.pdsk = DiskState::Inconsistent;
            if let Some(state) = self.state.change(req, false, &ctx)? {
                self.set_state(state);
            }
            self.set_all_bits();
            self.write_superblock(After::Superblock);
            return Ok(false);
        }
        self.full_sync_command(true, ctx)
    }

    /// Asks the peer for StartingSyncS/T after checking it here.
    fn full_sync_command(&mut self, source: bool, ctx: Context) -> Result<bool, CommandError> {
        let conn = Requested::conn(source);
        let mut req = self.state;
        req.conn = conn;
        if self.state.change(req, false, &ctx)?.is_none() {
            return Ok(false);
        }
        if !self.cluster_wide_link() {
            // Only a connected state passes the check: the peer speaks wire version 1.
            return Err(StateChangeError::NotSupported.into());
        }
        let change = StateChange {
            conn: Some(conn),
            ..StateChange::default()
        };
        self.request(change, Requested::FullSync { source }, ctx);
        Ok(true)
    }

    fn request(&mut self, change: StateChange, what: Requested, ctx: Context) {
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        peer.state_reqs_sent += 1;
        let seq = peer.state_reqs_sent;
        self.state_req = Some(StateRequest { what, seq, ctx });
        self.send(Packet::StateChgReq(change));
    }

    fn command_done(&mut self, result: Result<(), CommandError>) {
        self.out
            .push_back(Output::Event(Event::CommandDone { result }));
    }

    /// `receive_req_state`: the peer asks to change its state; check the change from this side,
    /// apply it and answer.
    pub(super) fn on_state_chg_req(&mut self, change: StateChange, now: Instant) {
        let Some(peer) = self.peer.as_ref() else {
            return;
        };
        let refusal = if peer.params.resolve_conflicts && self.state_req.is_some() {
            Some(StateChangeError::ConcurrentStateChange)
        } else if peer.phase != Phase::Running {
            Some(StateChangeError::InTransientState)
        } else {
            None
        };
        if let Some(e) = refusal {
            self.send(Packet::StateChgReply(Err(e)));
            return;
        }
        // The peer's users are not ours: only our own role change checks the open count.
        let ctx = Context {
            device_open: false,
            ..self.cfg.context
        };
        let req = change.mirrored().apply(self.state);
        match self.state.change(req, false, &ctx) {
            Err(e) => {
                self.log(e.to_string());
                self.send(Packet::StateChgReply(Err(e)));
            }
            Ok(None) => self.send(Packet::StateChgReply(Ok(()))),
            Ok(Some(ns)) => {
                // The answer goes first: a source's P_SYNC_UUID must find the target waiting.
                self.send(Packet::StateChgReply(Ok(())));
                match ns.conn {
                    ConnState::StartingSyncS | ConnState::StartingSyncT
                        if ns.conn != self.state.conn =>
                    {
                        self.begin_full_sync(ns, ns.conn == ConnState::StartingSyncS, now);
                    }
                    _ => {
                        let old = self.state;
                        self.set_state(ns);
                        if self.new_current_on_peer_data_loss(old) {
                            self.send_uuids(crate::uuid::UuidFlags::default());
                        }
                    }
                }
            }
        }
        self.recheck_state_request();
    }

    /// `got_RqSReply`: the peer's answer to our oldest unanswered request.
    pub(super) fn on_state_chg_reply(
        &mut self,
        result: Result<(), StateChangeError>,
        now: Instant,
    ) {
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        peer.state_replies += 1;
        let n = peer.state_replies;
        if n > peer.state_reqs_sent {
            self.protocol_error("P_STATE_CHG_REPLY without a request".into());
            return;
        }
        // An answer to a request this node gave up already is dropped.
        let Some(req) = self.state_req.filter(|r| r.seq == n) else {
            return;
        };
        self.state_req = None;
        match result {
            Ok(()) => self.apply_granted(req, now),
            Err(e) => {
                self.log(format!(
                    "Requested state change failed by peer: {} ({})",
                    e.reason(),
                    e.code()
                ));
                match req.what {
                    Requested::Promote {
                        force,
                        retried: false,
                    } => self.finish_attempt(|e| e.primary_command(force, true, req.ctx)),
                    _ => self.command_done(Err(StateChangeError::CwFailedByPeer.into())),
                }
            }
        }
    }

    /// Reports a new attempt's result unless it waits for the peer again.
    fn finish_attempt(&mut self, attempt: impl FnOnce(&mut Engine) -> Result<bool, CommandError>) {
        match attempt(self) {
            Ok(true) => {}
            Ok(false) => self.command_done(Ok(())),
            Err(e) => self.command_done(Err(e)),
        }
    }

    /// The peer agreed: the change is applied to the state as it is now, checked here again.
    fn apply_granted(&mut self, req: StateRequest, now: Instant) {
        let result = match req.what {
            Requested::Promote { force, .. } => match self.state.promote(force, false, &req.ctx) {
                Ok(Promotion::Promoted {
                    state,
                    forced,
                    forced_split_brain,
                }) => {
                    self.apply_promotion(state, forced, forced_split_brain);
                    Ok(())
                }
                Ok(Promotion::Unchanged) => Ok(()),
                Ok(Promotion::RunFencePeer) => Err(CommandError::FencePeerUnsupported),
                Err(e) => Err(e.into()),
            },
            Requested::FullSync { source } => {
                let mut r = self.state;
                r.conn = Requested::conn(source);
                match self.state.change(r, false, &req.ctx) {
                    Ok(Some(ns)) => {
                        self.begin_full_sync(ns, source, now);
                        Ok(())
                    }
                    Ok(None) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
        };
        self.command_done(result);
    }

    /// `_req_st_cond`: a pending request that the state no longer allows fails now.
    pub(super) fn recheck_state_request(&mut self) {
        let Some(req) = self.state_req else {
            return;
        };
        let refused = match req.what {
            Requested::Promote { force, .. } => self.state.promote(force, false, &req.ctx).err(),
            Requested::FullSync { source } => {
                let mut r = self.state;
                r.conn = Requested::conn(source);
                self.state.change(r, false, &req.ctx).err()
            }
        };
        if let Some(e) = refused {
            self.state_req = None;
            self.command_done(Err(e.into()));
        }
    }

    /// The connection is gone while a request waits (`SS_CW_NO_NEED`): a promotion is tried
    /// on this node alone; a full sync cannot start without the peer.
    pub(super) fn state_request_link_lost(&mut self) {
        let Some(req) = self.state_req.take() else {
            return;
        };
        if self.going_down {
            self.command_done(Err(CommandError::GoingDown));
            return;
        }
        match req.what {
            Requested::Promote { force, .. } => {
                self.finish_attempt(|e| e.primary_command(force, true, req.ctx))
            }
            Requested::FullSync { .. } => {
                self.command_done(Err(StateChangeError::NeedConnection.into()))
            }
        }
    }

    /// StartingSyncS/T (`abw_start_sync`): every block out of sync on both sides, no bitmap
    /// exchange. The source starts at once with a new sync UUID; the target waits for it.
    fn begin_full_sync(&mut self, ns: NodeState, source: bool, now: Instant) {
        self.set_state(ns);
        self.log("Writing the whole bitmap, full sync requested.".into());
        self.set_all_bits_within_size();
        if source {
            let random = self.rng.next_u64();
            let sync = self.sb.uuids.start_resync_as_source(random);
            self.write_superblock(After::Nothing);
            self.send(Packet::SyncUuid { uuid: sync.0 });
            self.start_resync(true, now);
        } else {
            if let Some(p) = self.peer.as_mut() {
                p.phase = Phase::WaitSyncUuid;
            }
            self.force_state(|s| {
                s.conn = ConnState::WFSyncUUID;
                s.disk = DiskState::Inconsistent;
            });
            self.write_superblock(After::Nothing);
        }
    }

    /// A Primary about to become a full-sync target keeps new writes back until the resync
    /// runs (DRBD suspends application I/O in WFBitMapT/WFSyncUUID): written now, the resync
    /// would overwrite them with the source's older data.
    pub(super) fn writes_wait_for_sync_uuid(&self) -> bool {
        self.state.role == Role::Primary
            && matches!(
                self.state.conn,
                ConnState::StartingSyncT | ConnState::WFSyncUUID
            )
    }

    /// Issues the writes kept back for the sync UUID, and admits those waiting, once the
    /// resync runs or the connection is gone.
    pub(super) fn release_writes_held_for_sync(&mut self) {
        if self.writes_wait_for_sync_uuid() {
            return;
        }
        for req in std::mem::take(&mut self.held_for_sync) {
            self.issue(req);
        }
        self.admit_waiting();
    }
}
