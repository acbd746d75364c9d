//! Losing the disk while the node stays up: `detach` (quiet first, metadata left clean) and
//! `on-io-error detach` (at once). Either way the disk goes Failed, then Diskless, and the
//! node serves from the peer, as DRBD 8.4 does.

use super::peer::Phase;
use super::{After, CommandError, Engine, OpFor, Output};
use crate::state::{Context, DiskState, StateChangeError};
use crate::uuid::UuidFlags;

/// Where a `detach` stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Detach {
    No,
    /// New requests and peer writes wait for the disk to go quiet and for a handshake to end.
    Quiescing,
    /// The clean superblock is durable; the disk goes once quiet and out of any handshake.
    Clean,
}

impl Engine {
    /// `detach`: checked with DRBD's rules (a Primary keeps access to UpToDate data), then
    /// new requests and peer writes wait until the disk is quiet (see
    /// [`Engine::maybe_finish_detach`]). Detaching a Diskless node does nothing.
    pub(super) fn detach_command(&mut self, ctx: Context) -> Result<(), CommandError> {
        if self.detaching() {
            return Ok(());
        }
        if self.handshaking() || self.state.disk == DiskState::Negotiating {
            return Err(StateChangeError::InTransientState.into());
        }
        if self.state.detach(false, &ctx)?.is_none() {
            return Ok(());
        }
        self.detach = Detach::Quiescing;
        self.abort_resync();
        self.maybe_finish_detach();
        Ok(())
    }

    /// A `detach` waits for its disk to go.
    pub(super) fn detaching(&self) -> bool {
        self.detach != Detach::No
    }

    /// A handshake runs on the connection: the disk state it announced must hold until it
    /// ends, so a detach's disk goes only after it.
    fn handshaking(&self) -> bool {
        self.peer
            .as_ref()
            .is_some_and(|p| p.phase != Phase::Running)
    }

    /// Once a detach's disk is quiet (no request unfinished on it or on the peer, no peer
    /// write, resync read or AL transaction, no metadata write queued) and no handshake runs: the bitmap and a clean
    /// superblock are written ([`After::Detach`]), and once that is durable the disk goes.
    pub(super) fn maybe_finish_detach(&mut self) {
        if !self.detaching() || self.going_down || self.state.disk <= DiskState::Failed {
            return;
        }
        // Requests the peer has not confirmed yet are covered by no bitmap so far: their bits
        // are set when they end, and must be in the clean metadata.
        let busy = self.handshaking()
            || self.requests.values().any(|p| p.issued || p.al_held)
            || self.staged.is_some()
            || self.meta_busy
            || !self.meta_queue.is_empty()
            || self.ops.values().any(|o| !matches!(o, OpFor::Meta(_)));
        if busy {
            return;
        }
        if self.detach == Detach::Clean {
            self.drop_disk();
            return;
        }
        self.write_clean_metadata(After::Detach);
    }

    /// The detach's clean superblock is durable (unless the disk failed meanwhile, which
    /// dropped it already). Later metadata writes (a handshake's) keep it clean: no write
    /// goes through the activity log while detaching.
    pub(super) fn detach_written(&mut self) {
        if self.detach == Detach::Quiescing {
            self.detach = Detach::Clean;
        }
    }

    /// The disk goes Failed, then Diskless; the peer learns it and keeps the bits.
    pub(super) fn drop_disk(&mut self) {
        self.detach = Detach::No;
        self.abort_resync();
        if std::mem::take(&mut self.announce_pending) {
            // The report a handshake waits for goes out now, with the disk that failed.
            self.send_uuids(UuidFlags::default());
        }
        self.force_state(|s| s.disk = DiskState::Failed);
        self.force_state(|s| s.disk = DiskState::Diskless);
        self.meta_queue.clear();
        self.gating_superblocks = 0;
        // Writes whose record in the bitmap will never be durable now: refused.
        for (_, w) in std::mem::take(&mut self.acks_after_bitmap) {
            self.finish_peer_write(&w, false);
        }
        if let Some((_, req)) = self.staged.take() {
            // Its AL transaction no longer matters.
            self.issue(req);
        }
        self.out.push_back(Output::Event(super::Event::Detached));
        self.send_state();
        self.release_writes_held_for_sync();
        // Peer writes that waited for the disk find none now.
        self.admit_peer_writes();
        self.maybe_finish_down();
    }
}
