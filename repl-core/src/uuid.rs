//! Generation UUIDs and the connect-time handshake decision (DRBD 8.4's `drbd_uuid_compare`).
//!
//! New UUID values always come from a random `u64` the caller supplies (the engine's seeded
//! generator), so every decision replays from its seed.

use std::fmt;

use crate::state::{ConnState, DiskState, NodeState, Role, StateChangeError};
use crate::types::Uuid;

/// What a new sync UUID adds to the old bitmap UUID (`UUID_NEW_BM_OFFSET`).
pub const UUID_NEW_BM_OFFSET: u64 = 1 << 48;
/// The highest peer protocol version tandem speaks, as DRBD 8.4.12 (`PRO_VERSION_MAX`).
pub const PRO_VERSION_MAX: u32 = 101;
/// Feature flag "write same"; 8.4 also uses it to mean "knows rule 41" (`DRBD_FF_WSAME`).
pub const FF_WSAME: u32 = 4;
/// All 8.4 feature flags: trim, thin resync, write same, write zeroes.
pub const FF_ALL: u32 = 1 | 2 | FF_WSAME | 8;

/// A node's generation identifiers as stored in the superblock (`uuid[4]`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub struct GenerationUuids {
    pub current: Uuid,
    pub bitmap: Uuid,
    pub history: [Uuid; 2],
}

/// Flags a P_UUIDS packet carries next to the UUIDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct UuidFlags(pub u64);

impl UuidFlags {
    /// `connect --discard-my-data` was given.
    pub const DISCARD_MY_DATA: UuidFlags = UuidFlags(1);
    /// The sender crashed while Primary (`MDF_CRASHED_PRIMARY`).
    pub const CRASHED_PRIMARY: UuidFlags = UuidFlags(2);
    /// The sender's disk will be Inconsistent after attach.
    pub const INCONSISTENT: UuidFlags = UuidFlags(4);
    /// `new-current-uuid --clear-bitmap` on fresh metadata: skip the initial sync.
    pub const SKIP_INITIAL_SYNC: UuidFlags = UuidFlags(8);

    pub fn contains(self, other: UuidFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for UuidFlags {
    type Output = UuidFlags;

    fn bitor(self, rhs: UuidFlags) -> UuidFlags {
        UuidFlags(self.0 | rhs.0)
    }
}

/// Sets or clears the role bit (bit 0) of a current UUID.
fn with_role_bit(value: u64, role: Role) -> Uuid {
    if role == Role::Primary {
        Uuid(value | 1)
    } else {
        Uuid(value & !1)
    }
}

/// What `new-current-uuid` did besides changing the UUIDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewCurrentUuid {
    /// Zero the on-disk bitmap and write it (`--clear-bitmap`).
    pub clear_bitmap: bool,
    /// Connected on fresh metadata: send the UUIDs with [`UuidFlags::SKIP_INITIAL_SYNC`] and set
    /// both disks UpToDate without a resync.
    pub skip_initial_sync: bool,
}

impl GenerationUuids {
    /// Fresh metadata as `create-md` writes it.
    pub const JUST_CREATED: GenerationUuids = GenerationUuids {
        current: Uuid::JUST_CREATED,
        bitmap: Uuid(0),
        history: [Uuid(0), Uuid(0)],
    };

    /// Forces bit 0 of the current UUID to the role (set while Primary), as promotion,
    /// demotion and attach do.
    pub fn set_role(&mut self, role: Role) {
        self.current = with_role_bit(self.current.0, role);
    }

    /// `history[0]` moves to `history[1]`; the oldest entry is dropped.
    fn shift_history(&mut self) {
        self.history[1] = self.history[0];
    }

    /// Puts `value` in the bitmap slot, first rotating a non-zero bitmap UUID into history
    /// (`drbd_uuid_set(UI_BITMAP, ..)`).
    pub fn rotate_bitmap(&mut self, value: Uuid) {
        if self.bitmap.0 != 0 {
            self.shift_history();
            self.history[0] = self.bitmap;
        }
        self.bitmap = value;
    }

    /// Starts a new data generation: a random current UUID (role bit per `role`), the old one
    /// in the bitmap slot. Returns the bitmap UUID that was overwritten, which DRBD warns about
    /// ("bm UUID was already set").
    pub fn new_current(&mut self, random: u64, role: Role) -> Option<Uuid> {
        let overwritten = (self.bitmap.0 != 0).then_some(self.bitmap);
        self.bitmap = self.current;
        self.current = with_role_bit(random, role);
        overwritten
    }

    /// Starts a new data generation whatever the bitmap UUID holds. With an empty bitmap UUID
    /// this is [`GenerationUuids::new_current`]. With one set (a resync under way or one whose
    /// end this node never recorded) DRBD 8.4 keeps the generation, and a peer that finished
    /// that resync and was promoted later discards this node's new writes by rule 50 without
    /// seeing a split brain. tandem starts a new current UUID there too and keeps the bitmap
    /// UUID, so an interrupted resync still resumes from the bitmap (rule 70); the old current
    /// goes to `history[1]`, leaving `history[0]` for rule 71's unfinished sync-UUID check.
    /// The peer that finished the resync then meets its current in our history (rule 80, full
    /// sync), and one that also started a generation shares only history (rule 100, split
    /// brain).
    pub fn begin_generation(&mut self, random: u64, role: Role) {
        if self.bitmap.0 == 0 {
            self.new_current(random, role);
        } else {
            self.history[1] = self.current;
            self.current = with_role_bit(random, role);
        }
    }

    /// Sets the bitmap UUID (`drbd_uuid_set_bm`): zero rotates the old one into history, any
    /// other value replaces it with bit 0 cleared. Returns a replaced non-zero bitmap UUID.
    pub fn set_bitmap(&mut self, value: Uuid) -> Option<Uuid> {
        if value.0 == 0 {
            if self.bitmap.0 != 0 {
                self.shift_history();
                self.history[0] = self.bitmap;
                self.bitmap = Uuid(0);
            }
            None
        } else {
            let replaced = (self.bitmap.0 != 0).then_some(self.bitmap);
            self.bitmap = Uuid(value.0 & !1);
            replaced
        }
    }

    /// The sync source's step before resync (`drbd_gen_and_send_sync_uuid`): a new bitmap UUID
    /// (old one + 2^48, or `random` when it was 0 or JUST_CREATED). Persist, then send the
    /// returned value as P_SYNC_UUID.
    pub fn start_resync_as_source(&mut self, random: u64) -> Uuid {
        let old = self.bitmap.0;
        let value = if old != 0 && old != Uuid::JUST_CREATED.0 {
            Uuid(old.wrapping_add(UUID_NEW_BM_OFFSET))
        } else {
            Uuid(random)
        };
        self.rotate_bitmap(value);
        value
    }

    /// The sync target's step on P_SYNC_UUID: the value becomes its current UUID, nothing
    /// rotates into history.
    pub fn receive_sync_uuid(&mut self, sync_uuid: Uuid, role: Role) {
        self.current = with_role_bit(sync_uuid.0, role);
        self.bitmap = Uuid(0);
    }

    /// The sync source's step after a resync without failed blocks: the bitmap UUID goes to
    /// history.
    pub fn finish_resync_as_source(&mut self) {
        self.set_bitmap(Uuid(0));
    }

    /// The sync target's step after a resync without failed blocks: it takes the source's
    /// tuple as received in the handshake (`peer`), so both tuples end up equal.
    pub fn finish_resync_as_target(&mut self, peer: &GenerationUuids, role: Role) {
        self.bitmap = peer.bitmap;
        self.history = peer.history;
        self.rotate_bitmap(self.current);
        self.current = with_role_bit(peer.current.0, role);
        self.set_bitmap(Uuid(0));
    }

    /// After a successful promotion to `state` (`drbd_set_role`): a new generation when
    /// promoted without reachable peer data, or when forced; then the role bit. DRBD 8.4 skips
    /// the unforced one while a bitmap UUID is set; tandem does not (see
    /// [`GenerationUuids::begin_generation`]). Returns whether a new current UUID was made.
    pub fn promote(&mut self, state: &NodeState, forced: bool, random: u64) -> bool {
        let alone = state.conn < ConnState::Connected || state.pdsk <= DiskState::Failed;
        let bump = alone || forced;
        if forced {
            self.new_current(random, Role::Primary);
        } else if bump {
            self.begin_generation(random, Role::Primary);
        }
        self.set_role(Role::Primary);
        bump
    }

    /// Whether losing the peer's data (see [`crate::state::lost_contact_to_peer_data`]) starts a
    /// new generation in state `state`; the caller then calls
    /// [`GenerationUuids::begin_generation`] (deferred until fence-peer returns while I/O is
    /// frozen). Unlike 8.4, a set bitmap UUID does not prevent it.
    pub fn needs_new_current_on_peer_loss(&self, state: &NodeState) -> bool {
        (state.role == Role::Primary || state.peer == Role::Primary)
            && state.disk >= DiskState::UpToDate
    }

    /// `new-current-uuid [--clear-bitmap]` (`drbd_adm_new_c_uuid`): rotate the bitmap UUID into
    /// history, then start a new generation. Connected on fresh metadata with `--clear-bitmap`,
    /// the bitmap UUID is cleared too and the initial sync is skipped.
    ///
    /// # Errors
    /// [`StateChangeError::NoDisk`] without a local disk, [`StateChangeError::NotStandAlone`]
    /// when connected (or connecting) otherwise.
    pub fn new_current_uuid(
        &mut self,
        clear_bitmap: bool,
        state: &NodeState,
        agreed_pro_version: u32,
        random: u64,
    ) -> Result<NewCurrentUuid, StateChangeError> {
        if state.disk < DiskState::Inconsistent {
            return Err(StateChangeError::NoDisk);
        }
        let skip_initial_sync = state.conn == ConnState::Connected
            && agreed_pro_version >= 90
            && self.current == Uuid::JUST_CREATED
            && clear_bitmap;
        if !skip_initial_sync && state.conn != ConnState::StandAlone {
            return Err(StateChangeError::NotStandAlone);
        }
        self.rotate_bitmap(Uuid(0));
        self.new_current(random, state.role);
        if skip_initial_sync {
            self.bitmap = Uuid(0);
        }
        Ok(NewCurrentUuid {
            clear_bitmap,
            skip_initial_sync,
        })
    }

    /// The peer's side of the skip: fresh metadata takes the sender's current UUID when the
    /// UUIDs arrive with [`UuidFlags::SKIP_INITIAL_SYNC`] while Connected. Returns whether it
    /// did; the caller then clears the bitmap and sets both disks UpToDate.
    pub fn accept_skip_initial_sync(
        &mut self,
        peer: &GenerationUuids,
        peer_flags: UuidFlags,
        state: &NodeState,
        agreed_pro_version: u32,
    ) -> bool {
        let skip = state.conn == ConnState::Connected
            && agreed_pro_version >= 90
            && self.current == Uuid::JUST_CREATED
            && peer_flags.contains(UuidFlags::SKIP_INITIAL_SYNC);
        if skip {
            self.current = with_role_bit(peer.current.0, state.role);
            self.bitmap = Uuid(0);
        }
        skip
    }
}

impl fmt::Display for GenerationUuids {
    /// `CURRENT:BITMAP:HISTORY0:HISTORY1` in hex, as DRBD's uuid dumps print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            self.current, self.bitmap, self.history[0], self.history[1]
        )
    }
}

/// One side of the handshake: the UUIDs, the role now, and the P_UUIDS flags (for the local
/// side, the flags it sends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeSide {
    pub uuids: GenerationUuids,
    pub role: Role,
    pub flags: UuidFlags,
}

impl HandshakeSide {
    /// A Secondary with no flags.
    pub fn secondary(uuids: GenerationUuids) -> HandshakeSide {
        HandshakeSide {
            uuids,
            role: Role::Secondary,
            flags: UuidFlags::default(),
        }
    }
}

/// What the connection agreed on, and which side holds the resolve-conflicts flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompareOptions {
    pub agreed_pro_version: u32,
    pub agreed_features: u32,
    /// I hold the resolve-conflicts flag (accepted the meta socket); the peer does not.
    pub resolve_conflicts: bool,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            agreed_pro_version: PRO_VERSION_MAX,
            agreed_features: FF_ALL,
            resolve_conflicts: false,
        }
    }
}

/// A tuple the comparison rewrote because a resync step was missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Correction {
    /// Rules 34 and 71: my own UUIDs; persist them.
    Mine(GenerationUuids),
    /// Rules 35 and 51: the received copy of the peer's UUIDs (the peer corrects itself).
    Peer(GenerationUuids),
}

/// The handshake verdict: DRBD's result code, the rule that decided, and a correction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// 0 no resync; ±1 bitmap resync, ±2 full resync (positive: I am source); 100 split brain
    /// (auto-recoverable); -100 split brain; -1000 unrelated; below -1000 peer too old.
    pub result: i32,
    pub rule: u16,
    pub correction: Option<Correction>,
}

/// How the handshake verdict reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    NoSync,
    Source {
        full: bool,
    },
    Target {
        full: bool,
    },
    /// 100 (bitmap UUIDs equal: after-sb policies apply) or -100.
    SplitBrain {
        auto_recoverable: bool,
    },
    Unrelated,
    /// The peer must support at least this protocol (and these feature flags).
    PeerTooOld {
        protocol: u32,
        features: u32,
    },
}

impl Verdict {
    fn new(result: i32, rule: u16) -> Verdict {
        Verdict {
            result,
            rule,
            correction: None,
        }
    }

    /// The verdict as a decision.
    pub fn decision(&self) -> Decision {
        match self.result {
            0 => Decision::NoSync,
            1 | 2 => Decision::Source {
                full: self.result == 2,
            },
            -1 | -2 => Decision::Target {
                full: self.result == -2,
            },
            100 => Decision::SplitBrain {
                auto_recoverable: true,
            },
            -100 => Decision::SplitBrain {
                auto_recoverable: false,
            },
            -1000 => Decision::Unrelated,
            r if r < -0x10000 => Decision::PeerTooOld {
                protocol: (-r & 0xff) as u32,
                features: ((-r >> 8) & 0xff) as u32,
            },
            r => Decision::PeerTooOld {
                protocol: (-r - 1000) as u32,
                features: 0,
            },
        }
    }

    /// DRBD's message for a verdict that aborts the handshake.
    pub fn abort_message(&self) -> Option<String> {
        match self.decision() {
            Decision::Unrelated => Some("Unrelated data, aborting!".to_owned()),
            Decision::PeerTooOld { protocol, features } if self.result < -0x10000 => Some(format!(
                "To resolve this both sides have to support at least protocol {protocol} and feature flags 0x{features:x}"
            )),
            Decision::PeerTooOld { protocol, .. } => Some(format!(
                "To resolve this both sides have to support at least protocol {protocol}"
            )),
            _ => None,
        }
    }

    /// The line DRBD logs while deciding, for the rules that log one.
    pub fn note(&self) -> Option<&'static str> {
        Some(match (self.rule, self.result) {
            (34, _) => "was SyncSource, missed the resync finished event, corrected myself:",
            (36, _) => "was SyncSource (peer failed to write sync_uuid)",
            (35, _) => "was SyncTarget, peer missed the resync finished event, corrected peer:",
            (37, _) => "was SyncTarget (failed to write sync_uuid)",
            (41, -100) => "Equivalent unrotated UUIDs, but both are primary. Can not resolve this.",
            (41, r) if r < -0x10000 => "Equivalent unrotated UUIDs, but current primary present.",
            (51, -1) => "Lost last syncUUID packet, corrected:",
            (71, 1) => "Last syncUUID did not get through, corrected:",
            _ => return None,
        })
    }
}

impl fmt::Display for Verdict {
    /// DRBD's log line, `uuid_compare()=N by rule R`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uuid_compare()={} by rule {}", self.result, self.rule)
    }
}

/// Decides the resync direction at connect time from both sides' UUIDs, applying DRBD 8.4's
/// rules 10 to 100 in order (`drbd_uuid_compare`), from `me`'s point of view.
pub fn uuid_compare(me: &HandshakeSide, peer: &HandshakeSide, opts: &CompareOptions) -> Verdict {
    const JUST_CREATED: u64 = Uuid::JUST_CREATED.0;
    let mine = &me.uuids;
    let theirs = &peer.uuids;
    let proto = opts.agreed_pro_version;
    let s = mine.current.masked();
    let p = theirs.current.masked();

    if s == JUST_CREATED && p == JUST_CREATED {
        return Verdict::new(0, 10);
    }
    if (s == JUST_CREATED || s == 0) && p != JUST_CREATED {
        return Verdict::new(-2, 20);
    }
    if s != JUST_CREATED && (p == JUST_CREATED || p == 0) {
        return Verdict::new(2, 30);
    }

    if s == p {
        // The protocol check precedes the rule number update, so DRBD reports rule 30.
        if theirs.bitmap.0 == 0 && mine.bitmap.0 != 0 {
            if proto < 91 {
                return Verdict::new(-1091, 30);
            }
            if mine.bitmap.masked() == theirs.history[0].masked()
                && mine.history[0].masked() == theirs.history[1].masked()
            {
                let mut fixed = *mine;
                fixed.shift_history();
                fixed.history[0] = fixed.bitmap;
                fixed.bitmap = Uuid(0);
                return Verdict {
                    result: 1,
                    rule: 34,
                    correction: Some(Correction::Mine(fixed)),
                };
            }
            return Verdict::new(1, 36);
        }
        if mine.bitmap.0 == 0 && theirs.bitmap.0 != 0 {
            if proto < 91 {
                return Verdict::new(-1091, 30);
            }
            if mine.history[0].masked() == theirs.bitmap.masked()
                && mine.history[1].masked() == theirs.history[0].masked()
            {
                let mut fixed = *theirs;
                fixed.shift_history();
                fixed.history[0] = fixed.bitmap;
                fixed.bitmap = Uuid(0);
                return Verdict {
                    result: -1,
                    rule: 35,
                    correction: Some(Correction::Peer(fixed)),
                };
            }
            return Verdict::new(-1, 37);
        }

        let rct = u8::from(me.flags.contains(UuidFlags::CRASHED_PRIMARY))
            + 2 * u8::from(peer.flags.contains(UuidFlags::CRASHED_PRIMARY));
        if rct == 0 {
            return Verdict::new(0, 40);
        }
        if me.role == Role::Primary || peer.role == Role::Primary {
            if opts.agreed_features & FF_WSAME == 0 {
                let needed = 0x10000 | PRO_VERSION_MAX | (FF_WSAME << 8);
                return Verdict::new(-(needed as i32), 41);
            }
            if me.role == Role::Primary && peer.role == Role::Primary {
                return Verdict::new(-100, 41);
            }
            return Verdict::new(if me.role == Role::Primary { 1 } else { -1 }, 41);
        }
        let result = match rct {
            1 => 1,
            2 => -1,
            _ if opts.resolve_conflicts => -1,
            _ => 1,
        };
        return Verdict::new(result, 40);
    }

    if s == theirs.bitmap.masked() {
        return Verdict::new(-1, 50);
    }

    if s == theirs.history[0].masked() {
        let unfinished_start = if proto < 96 {
            mine.history[0].masked() == theirs.history[1].masked()
        } else {
            theirs.history[0].masked().wrapping_add(UUID_NEW_BM_OFFSET) == theirs.bitmap.masked()
        };
        if unfinished_start {
            if proto < 91 {
                return Verdict::new(-1091, 51);
            }
            let mut fixed = *theirs;
            fixed.bitmap = fixed.history[0];
            fixed.history[0] = fixed.history[1];
            return Verdict {
                result: -1,
                rule: 51,
                correction: Some(Correction::Peer(fixed)),
            };
        }
    }

    if theirs.history.iter().any(|h| h.masked() == s) {
        return Verdict::new(-2, 60);
    }

    if mine.bitmap.masked() == p {
        return Verdict::new(1, 70);
    }

    if mine.history[0].masked() == p {
        let unfinished_start = if proto < 96 {
            mine.history[1].masked() == theirs.history[0].masked()
        } else {
            mine.history[0].masked().wrapping_add(UUID_NEW_BM_OFFSET) == mine.bitmap.masked()
        };
        if unfinished_start {
            if proto < 91 {
                return Verdict::new(-1091, 71);
            }
            let mut fixed = *mine;
            fixed.bitmap = fixed.history[0];
            fixed.history[0] = fixed.history[1];
            return Verdict {
                result: 1,
                rule: 71,
                correction: Some(Correction::Mine(fixed)),
            };
        }
    }

    if mine.history.iter().any(|h| h.masked() == p) {
        return Verdict::new(2, 80);
    }

    let bm = mine.bitmap.masked();
    if bm == theirs.bitmap.masked() && bm != 0 {
        return Verdict::new(100, 90);
    }

    // Zero history entries count as equal here, exactly as in DRBD. tandem also counts a
    // non-zero bitmap UUID found in the other side's history: both left that generation, which
    // happens after begin_generation with a bitmap UUID set (8.4 would say unrelated data).
    let related = mine
        .history
        .iter()
        .any(|m| theirs.history.iter().any(|t| t.masked() == m.masked()))
        || ancestor_in(mine.bitmap, &theirs.history)
        || ancestor_in(theirs.bitmap, &mine.history);
    Verdict::new(if related { -100 } else { -1000 }, 100)
}

/// Whether a non-zero bitmap UUID is one of `history`'s entries (bit 0 masked).
fn ancestor_in(bitmap: Uuid, history: &[Uuid; 2]) -> bool {
    let b = bitmap.masked();
    b != 0 && history.iter().any(|h| h.masked() == b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(current: u64, bitmap: u64, h0: u64, h1: u64) -> GenerationUuids {
        GenerationUuids {
            current: Uuid(current),
            bitmap: Uuid(bitmap),
            history: [Uuid(h0), Uuid(h1)],
        }
    }

    fn standalone(role: Role) -> NodeState {
        NodeState {
            role,
            disk: DiskState::UpToDate,
            ..NodeState::DOWN
        }
    }

    #[test]
    fn new_current_moves_current_to_bitmap_with_its_role_bit() {
        let mut u = g(0xA1, 0, 0xB0, 0xC0);
        assert_eq!(u.new_current(0x1234, Role::Primary), None);
        assert_eq!(u, g(0x1235, 0xA1, 0xB0, 0xC0));
        // A second generation overwrites the bitmap UUID; history is untouched.
        assert_eq!(u.new_current(0x5670, Role::Secondary), Some(Uuid(0xA1)));
        assert_eq!(u, g(0x5670, 0x1235, 0xB0, 0xC0));
    }

    #[test]
    fn bitmap_uuid_rotation() {
        let mut u = g(0xA0, 0xB1, 0xC0, 0xD0);
        assert_eq!(u.set_bitmap(Uuid(0)), None);
        assert_eq!(u, g(0xA0, 0, 0xB1, 0xC0));
        assert_eq!(u.set_bitmap(Uuid(0)), None, "zero on zero is a no-op");
        assert_eq!(u, g(0xA0, 0, 0xB1, 0xC0));
        assert_eq!(u.set_bitmap(Uuid(0xE1)), None);
        assert_eq!(u, g(0xA0, 0xE0, 0xB1, 0xC0), "set_bitmap masks bit 0");
        assert_eq!(u.set_bitmap(Uuid(0xF0)), Some(Uuid(0xE0)));
        u.rotate_bitmap(Uuid(0x11));
        assert_eq!(u, g(0xA0, 0x11, 0xF0, 0xB1), "rotate keeps bit 0");
        u.rotate_bitmap(Uuid(0));
        assert_eq!(u, g(0xA0, 0, 0x11, 0xF0));
        u.rotate_bitmap(Uuid(0x22));
        assert_eq!(u, g(0xA0, 0x22, 0x11, 0xF0), "empty bitmap: no rotation");
    }

    #[test]
    fn resync_start_and_finish_leave_equal_tuples() {
        // The source wrote while the target was away; the target's current is the source's
        // bitmap UUID.
        let mut source = g(0xC001, 0xB000, 0xA000, 0x9000);
        let mut target = g(0xB000, 0, 0xA000, 0x9000);
        let handshake_copy = source;
        let s = source.start_resync_as_source(0xdead);
        assert_eq!(s, Uuid(0xB000 + UUID_NEW_BM_OFFSET));
        assert_eq!(source, g(0xC001, s.0, 0xB000, 0xA000));
        target.receive_sync_uuid(s, Role::Secondary);
        assert_eq!(target, g(s.0, 0, 0xA000, 0x9000));
        source.finish_resync_as_source();
        target.finish_resync_as_target(&handshake_copy, Role::Secondary);
        assert_eq!(source, g(0xC001, 0, s.0, 0xB000));
        assert_eq!(target, g(0xC000, 0, s.0, 0xB000));
    }

    #[test]
    fn sync_uuid_is_random_for_an_empty_or_fresh_bitmap() {
        let mut u = g(0xC000, 0, 0xA000, 0);
        assert_eq!(u.start_resync_as_source(0x7777), Uuid(0x7777));
        assert_eq!(u, g(0xC000, 0x7777, 0xA000, 0));
        let mut fresh = g(0xC000, 4, 0, 0);
        assert_eq!(fresh.start_resync_as_source(0x8888), Uuid(0x8888));
        assert_eq!(fresh, g(0xC000, 0x8888, 4, 0));
    }

    #[test]
    fn promotion_starts_a_generation_only_when_alone_or_forced() {
        let mut u = g(0xA0, 0, 0, 0);
        assert!(u.promote(&standalone(Role::Primary), false, 0xB0));
        assert_eq!(u, g(0xB1, 0xA0, 0, 0));
        u.set_role(Role::Secondary);
        assert_eq!(u.current, Uuid(0xB0));
        // With a bitmap UUID set, 8.4 would keep the generation; tandem starts one and keeps
        // the bitmap UUID (begin_generation).
        assert!(u.promote(&standalone(Role::Primary), false, 0xC0));
        assert_eq!(u, g(0xC1, 0xA0, 0, 0xB0));
        let connected = NodeState {
            conn: ConnState::Connected,
            peer: Role::Secondary,
            pdsk: DiskState::UpToDate,
            ..standalone(Role::Primary)
        };
        let mut c = g(0xA0, 0, 0, 0);
        assert!(!c.promote(&connected, false, 0xB0));
        assert_eq!(c, g(0xA1, 0, 0, 0));
        assert!(c.promote(&connected, true, 0xB0));
        assert_eq!(c, g(0xB1, 0xA1, 0, 0));
        let peer_diskless = NodeState {
            pdsk: DiskState::Diskless,
            ..connected
        };
        assert!(g(0xA0, 0, 0, 0).promote(&peer_diskless, false, 1));
    }

    /// A SyncSource Primary that loses its peer mid-resync (current C, sync UUID S in the bitmap
    /// slot) starts a generation; every way the peer may have gone on is still judged right.
    #[test]
    fn a_generation_begun_mid_resync_keeps_every_handshake_right() {
        let opts = CompareOptions::default();
        let judge = |me: GenerationUuids, peer: GenerationUuids| {
            let v = uuid_compare(
                &HandshakeSide::secondary(me),
                &HandshakeSide::secondary(peer),
                &opts,
            );
            (v.result, v.rule)
        };
        let mut source = g(0xC000, 0xB000, 0xA000, 0x9000);
        let sync = source.start_resync_as_source(0);
        let mut target = g(0xB000, 0, 0, 0);
        target.receive_sync_uuid(sync, Role::Secondary);
        let before = source;
        source.begin_generation(0xD000, Role::Secondary);
        assert_eq!(source.bitmap, sync, "the resync's bitmap UUID stays");
        assert_eq!(source.history, [before.history[0], before.current]);

        // The target is still mid-resync: the resync resumes from the bitmap.
        assert_eq!(judge(source, target), (1, 70));
        // The target finished the resync (it takes the source's tuple as last received, with
        // or without the sync UUID), this node never saw the end: a full sync from here,
        // which covers the writes made since.
        let handshake = g(0xC000, 0xB000, 0xA000, 0x9000);
        for seen in [before, handshake] {
            let mut finished = target;
            finished.finish_resync_as_target(&seen, Role::Secondary);
            assert_eq!(judge(source, finished), (2, 80), "{finished}");
            // ... and then was promoted alone: both wrote, a split brain (8.4: rule 50, -1).
            let mut promoted = finished;
            promoted.begin_generation(0xE000, Role::Primary);
            assert_eq!(judge(source, promoted).0, -100, "{promoted}");
            assert_eq!(judge(promoted, source).0, -100, "{promoted}");
        }
        // The target never got the sync UUID: rule 71 still undoes the unfinished start.
        let unaware = g(0xB000, 0, 0, 0);
        assert_eq!(judge(source, unaware), (1, 71));
        // A forced promotion of the Inconsistent target: both changed the same parent.
        let mut forced = target;
        forced.new_current(0xF000, Role::Primary);
        assert_eq!(judge(source, forced), (100, 90));
    }

    #[test]
    fn peer_loss_rule() {
        let primary = standalone(Role::Primary);
        assert!(g(0xA1, 0, 0, 0).needs_new_current_on_peer_loss(&primary));
        assert!(g(0xA1, 0xB0, 0, 0).needs_new_current_on_peer_loss(&primary));
        assert!(!g(0xA0, 0, 0, 0).needs_new_current_on_peer_loss(&standalone(Role::Secondary)));
        let under_primary = NodeState {
            peer: Role::Primary,
            ..standalone(Role::Secondary)
        };
        assert!(g(0xA0, 0, 0, 0).needs_new_current_on_peer_loss(&under_primary));
    }

    #[test]
    fn new_current_uuid_command() {
        let s = standalone(Role::Secondary);
        let mut u = g(0xA0, 0xB0, 0xC0, 0xD0);
        let out = u
            .new_current_uuid(false, &s, PRO_VERSION_MAX, 0xE0)
            .unwrap();
        assert_eq!(
            out,
            NewCurrentUuid {
                clear_bitmap: false,
                skip_initial_sync: false
            }
        );
        assert_eq!(u, g(0xE0, 0xA0, 0xB0, 0xC0));

        // Truck-based seeding: --clear-bitmap standalone keeps the old current as bitmap UUID.
        let mut fresh = GenerationUuids::JUST_CREATED;
        let out = fresh
            .new_current_uuid(true, &s, PRO_VERSION_MAX, 0xF0)
            .unwrap();
        assert!(out.clear_bitmap && !out.skip_initial_sync);
        assert_eq!(fresh, g(0xF0, 4, 0, 0));

        let connected = NodeState {
            conn: ConnState::Connected,
            peer: Role::Secondary,
            disk: DiskState::Inconsistent,
            pdsk: DiskState::Inconsistent,
            ..s
        };
        let mut fresh = GenerationUuids::JUST_CREATED;
        let out = fresh
            .new_current_uuid(true, &connected, PRO_VERSION_MAX, 0xF0)
            .unwrap();
        assert!(out.skip_initial_sync);
        assert_eq!(fresh, g(0xF0, 0, 0, 0));
        let mut peer = GenerationUuids::JUST_CREATED;
        assert!(peer.accept_skip_initial_sync(
            &fresh,
            UuidFlags::SKIP_INITIAL_SYNC,
            &connected,
            PRO_VERSION_MAX
        ));
        assert_eq!(peer, fresh);

        let mut used = g(0xA0, 0, 0, 0);
        assert_eq!(
            used.new_current_uuid(true, &connected, PRO_VERSION_MAX, 1),
            Err(StateChangeError::NotStandAlone)
        );
        let mut fresh = GenerationUuids::JUST_CREATED;
        assert_eq!(
            fresh.new_current_uuid(true, &connected, 89, 1),
            Err(StateChangeError::NotStandAlone)
        );
        let wfc = NodeState {
            conn: ConnState::WFConnection,
            ..s
        };
        assert_eq!(
            used.new_current_uuid(false, &wfc, PRO_VERSION_MAX, 1),
            Err(StateChangeError::NotStandAlone)
        );
        assert_eq!(
            used.new_current_uuid(false, &NodeState::DOWN, PRO_VERSION_MAX, 1),
            Err(StateChangeError::NoDisk)
        );
        assert_eq!(used, g(0xA0, 0, 0, 0), "refusals change nothing");
    }

    #[test]
    fn verdict_texts() {
        let v = Verdict::new(-1, 50);
        assert_eq!(v.to_string(), "uuid_compare()=-1 by rule 50");
        assert_eq!(v.decision(), Decision::Target { full: false });
        assert_eq!(v.abort_message(), None);
        assert_eq!(
            Verdict::new(-1000, 100).abort_message().unwrap(),
            "Unrelated data, aborting!"
        );
        assert_eq!(
            Verdict::new(-1091, 30).abort_message().unwrap(),
            "To resolve this both sides have to support at least protocol 91"
        );
        let v = Verdict::new(-0x10465, 41);
        assert_eq!(
            v.decision(),
            Decision::PeerTooOld {
                protocol: 101,
                features: 4
            }
        );
        assert_eq!(
            v.abort_message().unwrap(),
            "To resolve this both sides have to support at least protocol 101 and feature flags 0x4"
        );
        assert_eq!(
            v.note(),
            Some("Equivalent unrotated UUIDs, but current primary present.")
        );
        assert_eq!(
            g(0x1235, 0, 0xAB, 0).to_string(),
            "0000000000001235:0000000000000000:00000000000000AB:0000000000000000"
        );
    }
}
