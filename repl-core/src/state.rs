//! Roles, disk states and connection states in DRBD 8.4's numeric order and spelling, and the
//! checks a node applies to its own state changes (promote, demote, attach, detach, outdate).
//!
//! The checks follow `drbd_state.c` (`sanitize_state`, `is_valid_state`,
//! `is_valid_soft_transition`, `is_valid_transition`) and `drbd_set_role`, for the fields a single
//! node owns. Refusals carry DRBD's codes and the text `drbdsetup` prints.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An input string that names no role, disk state or connection state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} '{input}'")]
pub struct ParseStateError {
    /// "role", "disk state", "connection state" or "fencing policy".
    pub kind: &'static str,
    pub input: String,
}

/// Declares a fieldless enum with DRBD's numeric values and strings, plus Display, FromStr,
/// `as_str`, `ALL` and `from_u8`.
macro_rules! drbd_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $kind:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $num:literal => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[repr(u8)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant = $num, )+
        }

        impl $name {
            /// Every value, in numeric order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// DRBD's spelling, as `/proc/drbd` and `drbdadm` print it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }

            /// The value with DRBD's enum number `n`.
            pub fn from_u8(n: u8) -> Option<$name> {
                match n {
                    $( $num => Some($name::$variant), )+
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ParseStateError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $text => Ok($name::$variant), )+
                    _ => Err(ParseStateError { kind: $kind, input: s.to_owned() }),
                }
            }
        }
    };
}

drbd_enum! {
    /// A node's role (`enum drbd_role`).
    Role, "role" {
        /// Only ever shown for a peer that is not connected.
        Unknown = 0 => "Unknown",
        Primary = 1 => "Primary",
        Secondary = 2 => "Secondary",
    }
}

drbd_enum! {
    /// A local or peer disk state (`enum drbd_disk_state`); the order is compared with `<`/`>`.
    DiskState, "disk state" {
        Diskless = 0 => "Diskless",
        Attaching = 1 => "Attaching",
        Failed = 2 => "Failed",
        Negotiating = 3 => "Negotiating",
        Inconsistent = 4 => "Inconsistent",
        Outdated = 5 => "Outdated",
        /// Only used for the peer's disk.
        DUnknown = 6 => "DUnknown",
        Consistent = 7 => "Consistent",
        UpToDate = 8 => "UpToDate",
    }
}

drbd_enum! {
    /// The 8.4 connection state (`enum drbd_conns`); the order is compared with `<`/`>`.
    ConnState, "connection state" {
        StandAlone = 0 => "StandAlone",
        Disconnecting = 1 => "Disconnecting",
        Unconnected = 2 => "Unconnected",
        Timeout = 3 => "Timeout",
        BrokenPipe = 4 => "BrokenPipe",
        NetworkFailure = 5 => "NetworkFailure",
        ProtocolError = 6 => "ProtocolError",
        TearDown = 7 => "TearDown",
        WFConnection = 8 => "WFConnection",
        WFReportParams = 9 => "WFReportParams",
        Connected = 10 => "Connected",
        StartingSyncS = 11 => "StartingSyncS",
        StartingSyncT = 12 => "StartingSyncT",
        WFBitMapS = 13 => "WFBitMapS",
        WFBitMapT = 14 => "WFBitMapT",
        WFSyncUUID = 15 => "WFSyncUUID",
        SyncSource = 16 => "SyncSource",
        SyncTarget = 17 => "SyncTarget",
        VerifyS = 18 => "VerifyS",
        VerifyT = 19 => "VerifyT",
        PausedSyncS = 20 => "PausedSyncS",
        PausedSyncT = 21 => "PausedSyncT",
        Ahead = 22 => "Ahead",
        Behind = 23 => "Behind",
    }
}

drbd_enum! {
    /// The `fencing` disk option; ordered like DRBD's `enum drbd_fencing_p`.
    #[derive(Default)]
    Fencing, "fencing policy" {
        #[default]
        DontCare = 0 => "dont-care",
        ResourceOnly = 1 => "resource-only",
        ResourceAndStonith = 2 => "resource-and-stonith",
    }
}

impl ConnState {
    /// Resync or verify in progress, paused or not (`SyncSource..=PausedSyncT`).
    pub fn is_sync(self) -> bool {
        (ConnState::SyncSource..=ConnState::PausedSyncT).contains(&self)
    }

    fn is_starting_sync(self) -> bool {
        matches!(self, ConnState::StartingSyncS | ConnState::StartingSyncT)
    }

    fn is_verify(self) -> bool {
        matches!(self, ConnState::VerifyS | ConnState::VerifyT)
    }
}

/// Whether the peer's copy of the data became unreachable between two peer disk states
/// (`lost_contact_to_peer_data`); a Primary then starts a new data generation.
pub fn lost_contact_to_peer_data(old: DiskState, new: DiskState) -> bool {
    use DiskState::*;
    let had = old >= Inconsistent && old != DUnknown && old != Outdated;
    let lost = new < Inconsistent || new == DUnknown || new == Outdated;
    (had && lost) || (old == DUnknown && matches!(new, Diskless | Failed | Outdated))
}

/// A requested change of some state fields (DRBD's `mask`/`val` pair): `None` leaves a field
/// as it is. A cluster-wide change travels in `P_STATE_CHG_REQ` from the requester's point of
/// view; the peer reads it through [`StateChange::mirrored`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct StateChange {
    pub role: Option<Role>,
    pub peer: Option<Role>,
    pub conn: Option<ConnState>,
    pub disk: Option<DiskState>,
    pub pdsk: Option<DiskState>,
}

impl StateChange {
    /// The requested state starting from `s` (`apply_mask_val`).
    pub fn apply(&self, s: NodeState) -> NodeState {
        NodeState {
            role: self.role.unwrap_or(s.role),
            peer: self.peer.unwrap_or(s.peer),
            conn: self.conn.unwrap_or(s.conn),
            disk: self.disk.unwrap_or(s.disk),
            pdsk: self.pdsk.unwrap_or(s.pdsk),
        }
    }

    /// The same change seen from the peer (`convert_state`): role and peer role swap, disk
    /// and peer disk swap, StartingSyncS and StartingSyncT swap.
    pub fn mirrored(&self) -> StateChange {
        let conn = self.conn.map(|c| match c {
            ConnState::StartingSyncS => ConnState::StartingSyncT,
            ConnState::StartingSyncT => ConnState::StartingSyncS,
            other => other,
        });
        StateChange {
            role: self.peer,
            peer: self.role,
            conn,
            disk: self.pdsk,
            pdsk: self.disk,
        }
    }
}

/// A refused state change: DRBD's `SS_*` codes (`drbd_strings.c`) and the `ERR_*` codes the
/// lifecycle commands return, displayed exactly as `drbdsetup` prints them after `"<minor>: "`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum StateChangeError {
    #[error("State change failed: (-1) Multiple primaries not allowed by config")]
    TwoPrimaries,
    #[error("State change failed: (-2) Need access to UpToDate data")]
    NoUpToDateDisk,
    #[error("State change failed: (-4) Can not resync without local disk")]
    NoLocalDisk,
    #[error("State change failed: (-5) Can not resync without remote disk")]
    NoRemoteDisk,
    #[error("State change failed: (-6) Refusing to be Outdated while Connected")]
    ConnectedOutdates,
    #[error("State change failed: (-7) Refusing to be Primary while peer is not outdated")]
    PrimaryNop,
    #[error("State change failed: (-8) Can not start OV/resync since it is already active")]
    ResyncRunning,
    #[error("State change failed: (-9) Can not disconnect a StandAlone device")]
    AlreadyStandalone,
    #[error("State change failed: (-10) State change was refused by peer node")]
    CwFailedByPeer,
    #[error(
        "State change failed: (-11) Device is diskless, the requested operation requires a disk"
    )]
    IsDiskless,
    #[error("State change failed: (-12) Device is held open by someone")]
    DeviceInUse,
    #[error("State change failed: (-13) Have no net/connection configuration")]
    NoNetConfig,
    #[error("State change failed: (-14) Need a verify algorithm to start online verify")]
    NoVerifyAlg,
    #[error("State change failed: (-15) Need a connection to start verify or resync")]
    NeedConnection,
    #[error("State change failed: (-16) Disk state is lower than outdated")]
    LowerThanOutdated,
    #[error("State change failed: (-17) Peer does not support protocol")]
    NotSupported,
    #[error("State change failed: (-18) In transient state, retry after next state change")]
    InTransientState,
    #[error("State change failed: (-19) Concurrent state changes detected and aborted")]
    ConcurrentStateChange,
    #[error("State change failed: (-20) Other vol primary on peer not allowed by config")]
    OtherVolumePeerPrimary,
    #[error("State change failed: (-21) Need a connection for a graceful disconnect/outdate peer")]
    OutdateWithoutConnection,
    #[error("Failure: (124) Device is attached to a disk (use detach first)")]
    DiskConfigured,
    #[error("Failure: (138) Device does not have a disk-config")]
    NoDisk,
    #[error("Failure: (151) Need to be StandAlone")]
    NotStandAlone,
}

impl StateChangeError {
    /// The `SS_*` refusals, in DRBD's order (-1 down to -21): the codes a peer may answer a
    /// cluster-wide state change with.
    pub const SS: &'static [StateChangeError] = &[
        StateChangeError::TwoPrimaries,
        StateChangeError::NoUpToDateDisk,
        StateChangeError::NoLocalDisk,
        StateChangeError::NoRemoteDisk,
        StateChangeError::ConnectedOutdates,
        StateChangeError::PrimaryNop,
        StateChangeError::ResyncRunning,
        StateChangeError::AlreadyStandalone,
        StateChangeError::CwFailedByPeer,
        StateChangeError::IsDiskless,
        StateChangeError::DeviceInUse,
        StateChangeError::NoNetConfig,
        StateChangeError::NoVerifyAlg,
        StateChangeError::NeedConnection,
        StateChangeError::LowerThanOutdated,
        StateChangeError::NotSupported,
        StateChangeError::InTransientState,
        StateChangeError::ConcurrentStateChange,
        StateChangeError::OtherVolumePeerPrimary,
        StateChangeError::OutdateWithoutConnection,
    ];

    /// The `SS_*` refusal with DRBD's number `code`.
    pub fn from_code(code: i32) -> Option<StateChangeError> {
        Self::SS.iter().copied().find(|e| e.code() == code)
    }

    /// The text after the number (`drbd_set_st_err_str`), as DRBD logs a refusal by the peer:
    /// "Requested state change failed by peer: <reason> (<code>)".
    pub fn reason(self) -> String {
        let s = self.to_string();
        match s.split_once(") ") {
            Some((_, r)) => r.to_owned(),
            None => s,
        }
    }

    /// DRBD's number: negative `SS_*` values, or `ERR_*` values above 100.
    pub fn code(self) -> i32 {
        use StateChangeError::*;
        match self {
            TwoPrimaries => -1,
            NoUpToDateDisk => -2,
            NoLocalDisk => -4,
            NoRemoteDisk => -5,
            ConnectedOutdates => -6,
            PrimaryNop => -7,
            ResyncRunning => -8,
            AlreadyStandalone => -9,
            CwFailedByPeer => -10,
            IsDiskless => -11,
            DeviceInUse => -12,
            NoNetConfig => -13,
            NoVerifyAlg => -14,
            NeedConnection => -15,
            LowerThanOutdated => -16,
            NotSupported => -17,
            InTransientState => -18,
            ConcurrentStateChange => -19,
            OtherVolumePeerPrimary => -20,
            OutdateWithoutConnection => -21,
            DiskConfigured => 124,
            NoDisk => 138,
            NotStandAlone => 151,
        }
    }

    /// The exit status `drbdsetup` returns for this refusal (`check_error` in drbd-utils).
    pub fn exit_code(self) -> i32 {
        match self {
            StateChangeError::NoUpToDateDisk => 17,
            StateChangeError::LowerThanOutdated => 5,
            StateChangeError::NoLocalDisk => 16,
            e if e.code() > 100 => 10,
            _ => 11,
        }
    }
}

/// The part of DRBD's per-device state a node decides on: its role and disk, its view of the
/// peer's role and disk, and the connection state (no suspend or pause bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeState {
    pub role: Role,
    pub peer: Role,
    pub conn: ConnState,
    pub disk: DiskState,
    pub pdsk: DiskState,
}

/// Configuration and runtime facts the checks read besides the state itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Context {
    pub fencing: Fencing,
    pub allow_two_primaries: bool,
    /// Some user holds the device open (an NBD client is attached to the export).
    pub device_open: bool,
}

/// The metadata facts `attach` turns into the initial disk states (`MDF_CONSISTENT`,
/// `MDF_WAS_UP_TO_DATE`, `MDF_PEER_OUT_DATED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AttachMeta {
    pub consistent: bool,
    pub was_up_to_date: bool,
    pub peer_outdated: bool,
}

/// A valid attach: the new state and, when connected, the disk state to take once the
/// handshake is done (the state then shows `Negotiating`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attached {
    pub state: NodeState,
    pub disk_after_handshake: DiskState,
}

/// What a promotion request leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promotion {
    /// Already Primary.
    Unchanged,
    /// Run the fence-peer handler, feed its exit code to [`NodeState::apply_fence_peer`], then
    /// ask again with `fence_peer_ran` set.
    RunFencePeer,
    /// Promoted. `forced`: the disk was declared UpToDate ([`FORCED_UP_TO_DATE`]);
    /// `forced_split_brain`: the peer was assumed Outdated after a failed fence
    /// ([`FORCED_SPLIT_BRAIN`]).
    Promoted {
        state: NodeState,
        forced: bool,
        forced_split_brain: bool,
    },
}

/// DRBD's warning when `primary --force` upgrades the disk.
pub const FORCED_UP_TO_DATE: &str = "Forced to consider local data as UpToDate!";
/// DRBD's warning when `primary --force` overrides a failed fence-peer.
pub const FORCED_SPLIT_BRAIN: &str = "Forced into split brain situation!";

/// The fence-peer handler's verdict, by exit code (`conn_try_outdate_peer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceOutcome {
    /// 3: the peer's disk is Inconsistent or worse.
    PeerInconsistent,
    /// 4: the peer was outdated (or already was).
    PeerOutdated,
    /// 5: the peer is unreachable; assumed dead (Outdated) only when my disk is UpToDate.
    PeerUnreachable { assumed_dead: bool },
    /// 6: the peer is Primary; I outdate myself.
    PeerPrimary,
    /// 7: the peer was STONITHed.
    PeerStonithed,
    /// Any other exit code: the handler is broken and nothing changes.
    Broken(i32),
}

impl FenceOutcome {
    /// The handler's exit code as DRBD reads it; `my_disk` decides code 5.
    pub fn from_exit_code(code: i32, my_disk: DiskState) -> FenceOutcome {
        match code {
            3 => FenceOutcome::PeerInconsistent,
            4 => FenceOutcome::PeerOutdated,
            5 => FenceOutcome::PeerUnreachable {
                assumed_dead: my_disk == DiskState::UpToDate,
            },
            6 => FenceOutcome::PeerPrimary,
            7 => FenceOutcome::PeerStonithed,
            other => FenceOutcome::Broken(other),
        }
    }

    /// DRBD's log wording ("fence-peer helper returned N (<this>)").
    pub fn description(self) -> &'static str {
        match self {
            FenceOutcome::PeerInconsistent => "peer is inconsistent or worse",
            FenceOutcome::PeerOutdated => "peer was fenced",
            FenceOutcome::PeerUnreachable { assumed_dead: true } => {
                "peer is unreachable, assumed to be dead"
            }
            FenceOutcome::PeerUnreachable {
                assumed_dead: false,
            } => "peer unreachable, doing nothing since disk != UpToDate",
            FenceOutcome::PeerPrimary => "peer is active",
            FenceOutcome::PeerStonithed => "peer was stonithed",
            FenceOutcome::Broken(_) => "fence-peer helper broken",
        }
    }
}

impl NodeState {
    /// A configured resource before `attach` and `connect`.
    pub const DOWN: NodeState = NodeState {
        role: Role::Secondary,
        peer: Role::Unknown,
        conn: ConnState::StandAlone,
        disk: DiskState::Diskless,
        pdsk: DiskState::DUnknown,
    };

    /// The implied changes DRBD makes to a requested state `new` coming from `self`
    /// (`sanitize_state`): peer facts vanish without a connection, disk ranges per cstate.
    pub fn sanitize(&self, new: NodeState) -> NodeState {
        use ConnState::*;
        use DiskState::*;
        let mut ns = new;
        if ns.conn < Connected {
            ns.peer = Role::Unknown;
            if ns.pdsk > DUnknown || ns.pdsk < Inconsistent {
                ns.pdsk = DUnknown;
            }
        }
        if ns.conn > Connected && (ns.disk <= Failed || ns.pdsk <= Failed) {
            ns.conn = Connected;
        }
        if ns.conn >= Connected && ns.conn < Ahead {
            if matches!(ns.disk, Consistent | Outdated) {
                ns.disk = UpToDate;
            }
            if matches!(ns.pdsk, Consistent | Outdated) {
                ns.pdsk = UpToDate;
            }
        }
        let (disk_range, pdsk_range) = match ns.conn {
            WFBitMapT | PausedSyncT | StartingSyncT | WFSyncUUID | Behind => {
                ((Inconsistent, Outdated), (UpToDate, UpToDate))
            }
            VerifyS | VerifyT => ((UpToDate, UpToDate), (UpToDate, UpToDate)),
            Connected => ((Diskless, UpToDate), (Diskless, UpToDate)),
            WFBitMapS | PausedSyncS | StartingSyncS | Ahead => {
                ((UpToDate, UpToDate), (Inconsistent, Consistent))
            }
            SyncTarget => ((Inconsistent, Inconsistent), (UpToDate, UpToDate)),
            SyncSource => ((UpToDate, UpToDate), (Inconsistent, Inconsistent)),
            _ => ((Diskless, UpToDate), (Inconsistent, DUnknown)),
        };
        ns.disk = ns.disk.clamp(disk_range.0, disk_range.1);
        ns.pdsk = ns.pdsk.clamp(pdsk_range.0, pdsk_range.1);
        ns
    }

    /// Whether going from `self` to `ns` needs the peer's consent (`cl_wide_st_chg`): a
    /// promotion or the start of a full sync (StartingSyncS/T) while connected. DRBD also asks
    /// the peer before a disk failure, a disconnect and online verify; tandem imposes those.
    pub fn is_cluster_wide(&self, ns: &NodeState) -> bool {
        use ConnState::*;
        self.conn >= Connected
            && ns.conn >= Connected
            && ((self.role != Role::Primary && ns.role == Role::Primary)
                || (self.conn != StartingSyncT && ns.conn == StartingSyncT)
                || (self.conn != StartingSyncS && ns.conn == StartingSyncS))
    }

    /// Whether this state may exist at all (`is_valid_state`), first failing rule wins.
    ///
    /// The online-verify rules (`verify-alg`, protocol 88) are the connection's business and
    /// are not checked here.
    ///
    /// # Errors
    /// The refusal DRBD reports for the first rule this state breaks.
    pub fn check(&self, ctx: &Context) -> Result<(), StateChangeError> {
        use ConnState::*;
        use DiskState::*;
        use StateChangeError as E;
        let ns = self;
        let primary = ns.role == Role::Primary;
        let err = if !ctx.allow_two_primaries && primary && ns.peer == Role::Primary {
            E::TwoPrimaries
        } else if ns.role == Role::Secondary && ctx.device_open {
            E::DeviceInUse
        } else if primary && ns.conn < Connected && ns.disk < UpToDate {
            E::NoUpToDateDisk
        } else if ctx.fencing >= Fencing::ResourceOnly
            && primary
            && ns.conn < Connected
            && ns.pdsk >= DUnknown
        {
            E::PrimaryNop
        } else if primary && ns.disk <= Inconsistent && ns.pdsk <= Inconsistent {
            E::NoUpToDateDisk
        } else if ns.conn > Connected && ns.disk < Inconsistent {
            E::NoLocalDisk
        } else if ns.conn > Connected && ns.pdsk < Inconsistent {
            E::NoRemoteDisk
        } else if ns.conn > Connected && ns.disk < UpToDate && ns.pdsk < UpToDate {
            E::NoUpToDateDisk
        } else if matches!(ns.conn, Connected | WFBitMapS | SyncSource | PausedSyncS)
            && ns.disk == Outdated
        {
            E::ConnectedOutdates
        } else if primary && ns.disk < UpToDate && ns.pdsk < UpToDate {
            E::NoUpToDateDisk
        } else if ns.conn.is_starting_sync() && ns.pdsk == DUnknown {
            E::NeedConnection
        } else if ns.conn >= Connected && ns.pdsk == DUnknown {
            E::ConnectedOutdates
        } else {
            return Ok(());
        };
        Err(err)
    }

    /// Limits on requested (soft) changes from `self` to `ns` (`is_valid_soft_transition`);
    /// as in DRBD, the last matching rule decides.
    fn check_soft_transition(&self, ns: &NodeState) -> Result<(), StateChangeError> {
        use ConnState::*;
        use DiskState::*;
        use StateChangeError as E;
        let os = self;
        let mut rv = None;
        if ns.conn.is_starting_sync() && os.conn > Connected {
            rv = Some(E::ResyncRunning);
        }
        if ns.conn == Disconnecting && os.conn == StandAlone {
            rv = Some(E::AlreadyStandalone);
        }
        if ns.disk > Attaching && os.disk == Diskless {
            rv = Some(E::IsDiskless);
        }
        if ns.conn == WFConnection && os.conn < Unconnected {
            rv = Some(E::NoNetConfig);
        }
        if ns.disk == Outdated && os.disk < Outdated && os.disk != Attaching {
            rv = Some(E::LowerThanOutdated);
        }
        if ns.conn == Disconnecting && os.conn == Unconnected {
            rv = Some(E::InTransientState);
        }
        if os.role != Role::Primary
            && ns.role == Role::Primary
            && ns.pdsk == UpToDate
            && ns.disk != UpToDate
            && ns.disk != Diskless
            && (ns.conn <= WFSyncUUID || ns.conn != os.conn)
        {
            rv = Some(E::InTransientState);
        }
        if ns.conn.is_verify() && os.conn < Connected {
            rv = Some(E::NeedConnection);
        }
        if ns.conn.is_verify() && ns.conn != os.conn && os.conn > Connected {
            rv = Some(E::ResyncRunning);
        }
        if ns.conn.is_starting_sync() && os.conn < Connected {
            rv = Some(E::NeedConnection);
        }
        if matches!(ns.conn, SyncTarget | SyncSource) && os.conn < WFReportParams {
            rv = Some(E::NeedConnection);
        }
        if ns.conn == Disconnecting
            && ns.pdsk == Outdated
            && os.conn < Connected
            && os.pdsk > Outdated
        {
            rv = Some(E::OutdateWithoutConnection);
        }
        rv.map_or(Ok(()), Err)
    }

    /// Limits that even imposed (hard) changes obey (`is_valid_transition`).
    fn check_transition(&self, ns: &NodeState) -> Result<(), StateChangeError> {
        use ConnState::*;
        use StateChangeError as E;
        let (oc, nc) = (self.conn, ns.conn);
        let mut rv = if oc == nc {
            None
        } else if oc == StandAlone && nc == Disconnecting {
            Some(E::AlreadyStandalone)
        } else if (oc == StandAlone && nc != Unconnected)
            || (oc < WFReportParams && nc >= Connected)
        {
            Some(E::NeedConnection)
        } else if ((Timeout..=TearDown).contains(&oc) && nc != Unconnected && nc != Disconnecting)
            || (oc == Disconnecting && nc != StandAlone)
        {
            Some(E::InTransientState)
        } else {
            None
        };
        if ns.disk == DiskState::Failed && self.disk == DiskState::Diskless {
            rv = Some(E::IsDiskless);
        }
        rv.map_or(Ok(()), Err)
    }

    /// Checks a change from `self` to `requested` as `_drbd_set_state` does: sanitize, then the
    /// transition rules, then (unless `hard`) the state and soft-transition rules. A state that
    /// was already invalid for the same reason may change on.
    ///
    /// Returns `Ok(None)` when the sanitized request equals the current state.
    ///
    /// # Errors
    /// DRBD's refusal.
    pub fn change(
        &self,
        requested: NodeState,
        hard: bool,
        ctx: &Context,
    ) -> Result<Option<NodeState>, StateChangeError> {
        let ns = self.sanitize(requested);
        if ns == *self {
            return Ok(None);
        }
        self.check_transition(&ns)?;
        if !hard {
            match ns.check(ctx) {
                Ok(()) => self.check_soft_transition(&ns)?,
                Err(e) if self.check(ctx) == Err(e) => self.check_soft_transition(&ns)?,
                Err(e) => return Err(e),
            }
        }
        Ok(Some(ns))
    }

    /// `primary [--force]`, following `drbd_set_role`: retries with the disk forced UpToDate,
    /// with a Consistent disk upgraded after fencing, or with the peer assumed Outdated.
    ///
    /// Call with `fence_peer_ran = false` first; on [`Promotion::RunFencePeer`] run the handler,
    /// apply its result with [`NodeState::apply_fence_peer`] and call again with `true`.
    ///
    /// # Errors
    /// DRBD's refusal, e.g. [`StateChangeError::NoUpToDateDisk`] without UpToDate data.
    pub fn promote(
        &self,
        force: bool,
        fence_peer_ran: bool,
        ctx: &Context,
    ) -> Result<Promotion, StateChangeError> {
        use DiskState::*;
        const MAX_TRIES: usize = 4;
        let mut want_disk = None;
        let mut want_pdsk = None;
        let mut forced = false;
        let mut forced_split_brain = false;
        let mut last = StateChangeError::NoUpToDateDisk;
        for _ in 0..MAX_TRIES {
            let mut req = *self;
            req.role = Role::Primary;
            req.disk = want_disk.unwrap_or(req.disk);
            req.pdsk = want_pdsk.unwrap_or(req.pdsk);
            let err = match self.change(req, false, ctx) {
                Ok(None) => return Ok(Promotion::Unchanged),
                Ok(Some(state)) => {
                    return Ok(Promotion::Promoted {
                        state,
                        forced,
                        forced_split_brain,
                    })
                }
                Err(e) => e,
            };
            last = err;
            match err {
                StateChangeError::NoUpToDateDisk
                    if force && self.disk >= Inconsistent && self.disk < UpToDate =>
                {
                    want_disk = Some(UpToDate);
                    forced = true;
                }
                StateChangeError::NoUpToDateDisk
                    if self.disk == Consistent && want_pdsk.is_none() =>
                {
                    match self.try_outdate_peer(ctx, fence_peer_ran) {
                        None => return Ok(Promotion::RunFencePeer),
                        Some(true) => want_disk = Some(UpToDate),
                        Some(false) => {}
                    }
                }
                StateChangeError::PrimaryNop if want_pdsk.is_none() => {
                    match self.try_outdate_peer(ctx, fence_peer_ran) {
                        None => return Ok(Promotion::RunFencePeer),
                        Some(false) if force => {
                            want_pdsk = Some(Outdated);
                            forced_split_brain = true;
                        }
                        Some(_) => {}
                    }
                }
                other => return Err(other),
            }
        }
        Err(last)
    }

    /// `conn_try_outdate_peer` as seen by a promotion: `None` when the handler must run first,
    /// else whether the peer now counts as outdated.
    fn try_outdate_peer(&self, ctx: &Context, fence_peer_ran: bool) -> Option<bool> {
        if self.conn >= ConnState::WFReportParams || self.disk < DiskState::Consistent {
            return Some(false);
        }
        if ctx.fencing == Fencing::DontCare {
            return Some(true);
        }
        fence_peer_ran.then_some(self.pdsk <= DiskState::Outdated)
    }

    /// Records the fence-peer handler's exit code: the peer's disk becomes Inconsistent or
    /// Outdated, or (code 6) my own disk Outdated. Ignored once connected again.
    pub fn apply_fence_peer(&mut self, exit_code: i32, ctx: &Context) -> FenceOutcome {
        let outcome = FenceOutcome::from_exit_code(exit_code, self.disk);
        if self.conn >= ConnState::WFReportParams {
            return outcome;
        }
        let mut req = *self;
        match outcome {
            FenceOutcome::PeerInconsistent => req.pdsk = DiskState::Inconsistent,
            FenceOutcome::PeerOutdated
            | FenceOutcome::PeerStonithed
            | FenceOutcome::PeerUnreachable { assumed_dead: true } => {
                req.pdsk = DiskState::Outdated
            }
            FenceOutcome::PeerPrimary => req.disk = DiskState::Outdated,
            FenceOutcome::PeerUnreachable {
                assumed_dead: false,
            }
            | FenceOutcome::Broken(_) => {}
        }
        if let Ok(Some(ns)) = self.change(req, false, ctx) {
            *self = ns;
        }
        outcome
    }

    /// `secondary`. `Ok(None)` when already Secondary.
    ///
    /// # Errors
    /// [`StateChangeError::DeviceInUse`] while a user holds the device open.
    pub fn demote(&self, ctx: &Context) -> Result<Option<NodeState>, StateChangeError> {
        let mut req = *self;
        req.role = Role::Secondary;
        self.change(req, false, ctx)
    }

    /// `attach`: through Attaching to the disk state the metadata flags give (`drbd_adm_attach`);
    /// a Consistent disk counts as UpToDate when the peer is known Outdated or fencing is
    /// `dont-care`.
    ///
    /// # Errors
    /// [`StateChangeError::DiskConfigured`] when a disk is already attached, or a refusal of
    /// the resulting state.
    pub fn attach(&self, meta: AttachMeta, ctx: &Context) -> Result<Attached, StateChangeError> {
        use DiskState::*;
        if self.disk > Diskless {
            return Err(StateChangeError::DiskConfigured);
        }
        let mut req = *self;
        req.disk = Attaching;
        let attaching = self.change(req, false, ctx)?.unwrap_or(req);

        let mut ns = attaching;
        ns.disk = match (meta.consistent, meta.was_up_to_date) {
            (false, _) => Inconsistent,
            (true, false) => Outdated,
            (true, true) => Consistent,
        };
        if meta.peer_outdated {
            ns.pdsk = Outdated;
        }
        if ns.disk == Consistent && (ns.pdsk == Outdated || ctx.fencing == Fencing::DontCare) {
            ns.disk = UpToDate;
        }
        let disk_after_handshake = ns.disk;
        if attaching.conn == ConnState::Connected {
            ns = attaching;
            ns.disk = Negotiating;
        }
        let state = attaching.change(ns, false, ctx)?.unwrap_or(ns);
        Ok(Attached {
            state,
            disk_after_handshake,
        })
    }

    /// `detach [--force]`: the disk passes through Failed to Diskless. `Ok(None)` when already
    /// diskless. A forced detach is imposed without the soft checks.
    ///
    /// # Errors
    /// E.g. [`StateChangeError::NoUpToDateDisk`] for a Primary that would lose its only data.
    pub fn detach(
        &self,
        force: bool,
        ctx: &Context,
    ) -> Result<Option<NodeState>, StateChangeError> {
        let mut req = *self;
        req.disk = DiskState::Failed;
        match self.change(req, force, ctx) {
            Ok(Some(mut ns)) => {
                ns.disk = DiskState::Diskless;
                Ok(Some(ns))
            }
            Ok(None) | Err(StateChangeError::IsDiskless) => Ok(None),
            Err(_) if force => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `outdate`. While connected DRBD sanitizes Outdated back to UpToDate, so that is
    /// `Ok(None)`.
    ///
    /// # Errors
    /// [`StateChangeError::LowerThanOutdated`] for an Inconsistent disk,
    /// [`StateChangeError::NoUpToDateDisk`] for a disconnected Primary.
    pub fn outdate(&self, ctx: &Context) -> Result<Option<NodeState>, StateChangeError> {
        let mut req = *self;
        req.disk = DiskState::Outdated;
        self.change(req, false, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standalone(role: Role, disk: DiskState) -> NodeState {
        NodeState {
            role,
            disk,
            ..NodeState::DOWN
        }
    }

    #[test]
    fn strings_round_trip_in_drbd_order() {
        let conns: Vec<&str> = ConnState::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            conns,
            [
                "StandAlone",
                "Disconnecting",
                "Unconnected",
                "Timeout",
                "BrokenPipe",
                "NetworkFailure",
                "ProtocolError",
                "TearDown",
                "WFConnection",
                "WFReportParams",
                "Connected",
                "StartingSyncS",
                "StartingSyncT",
                "WFBitMapS",
                "WFBitMapT",
                "WFSyncUUID",
                "SyncSource",
                "SyncTarget",
                "VerifyS",
                "VerifyT",
                "PausedSyncS",
                "PausedSyncT",
                "Ahead",
                "Behind",
            ]
        );
        let disks: Vec<String> = DiskState::ALL.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            disks,
            [
                "Diskless",
                "Attaching",
                "Failed",
                "Negotiating",
                "Inconsistent",
                "Outdated",
                "DUnknown",
                "Consistent",
                "UpToDate"
            ]
        );
        assert_eq!(Role::ALL, [Role::Unknown, Role::Primary, Role::Secondary]);
        for (i, c) in ConnState::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            assert_eq!(ConnState::from_u8(i as u8), Some(*c));
            assert_eq!(c.to_string().parse::<ConnState>(), Ok(*c));
        }
        for (i, d) in DiskState::ALL.iter().enumerate() {
            assert_eq!(*d as usize, i);
            assert_eq!(d.as_str().parse::<DiskState>(), Ok(*d));
        }
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(*r));
        }
        assert_eq!(ConnState::from_u8(24), None);
        assert!(DiskState::Outdated < DiskState::DUnknown);
        assert!(DiskState::DUnknown < DiskState::Consistent);
        assert!(ConnState::WFConnection < ConnState::Connected);
        assert_eq!(format!("{:>10}|", Role::Primary), "   Primary|");
    }

    #[test]
    fn parse_errors_name_the_kind() {
        let err = "Up2Date".parse::<DiskState>().unwrap_err();
        assert_eq!(err.to_string(), "unknown disk state 'Up2Date'");
        assert!("uptodate".parse::<DiskState>().is_err());
        assert!("Connecting".parse::<ConnState>().is_err());
        assert_eq!(
            "dont-care".parse::<Fencing>(),
            Ok(Fencing::DontCare),
            "fencing uses the config spelling"
        );
        assert_eq!(Fencing::default(), Fencing::DontCare);
    }

    #[test]
    fn serde_uses_drbd_strings() {
        for c in ConnState::ALL {
            let json = serde_json::to_string(c).unwrap();
            assert_eq!(json, format!("\"{c}\""));
            assert_eq!(serde_json::from_str::<ConnState>(&json).unwrap(), *c);
        }
        for d in DiskState::ALL {
            assert_eq!(serde_json::to_string(d).unwrap(), format!("\"{d}\""));
        }
        assert_eq!(
            serde_json::to_string(&Fencing::ResourceAndStonith).unwrap(),
            "\"resource-and-stonith\""
        );
        let json = serde_json::to_string(&NodeState::DOWN).unwrap();
        assert_eq!(
            json,
            r#"{"role":"Secondary","peer":"Unknown","conn":"StandAlone","disk":"Diskless","pdsk":"DUnknown"}"#
        );
        assert!(serde_json::from_str::<Role>("\"primary\"").is_err());
    }

    #[test]
    fn errors_print_like_drbdsetup() {
        let e = StateChangeError::NoUpToDateDisk;
        assert_eq!(
            e.to_string(),
            "State change failed: (-2) Need access to UpToDate data"
        );
        assert_eq!((e.code(), e.exit_code()), (-2, 17));
        assert_eq!(StateChangeError::LowerThanOutdated.exit_code(), 5);
        assert_eq!(StateChangeError::DeviceInUse.exit_code(), 11);
        assert_eq!(
            StateChangeError::DiskConfigured.to_string(),
            "Failure: (124) Device is attached to a disk (use detach first)"
        );
        assert_eq!(StateChangeError::DiskConfigured.exit_code(), 10);
        // DRBD's SS_* codes, -1 down to -21 (-3 is not a refusal), in order.
        let all = StateChangeError::SS;
        assert_eq!(all.len(), 20);
        for (i, e) in all.iter().enumerate() {
            let code = e.code();
            assert!(code < 0);
            assert!(
                e.to_string()
                    .starts_with(&format!("State change failed: ({code}) ")),
                "{e}"
            );
            if i > 0 {
                assert!(code < all[i - 1].code());
            }
        }
    }

    #[test]
    fn cluster_wide_changes_mirror_and_name_their_refusals() {
        let c = StateChange {
            role: Some(Role::Primary),
            disk: Some(DiskState::UpToDate),
            conn: Some(ConnState::StartingSyncS),
            ..StateChange::default()
        };
        let m = c.mirrored();
        assert_eq!(
            (m.peer, m.pdsk, m.conn, m.role, m.disk),
            (
                Some(Role::Primary),
                Some(DiskState::UpToDate),
                Some(ConnState::StartingSyncT),
                None,
                None
            )
        );
        assert_eq!(m.mirrored(), c);
        let connected = NodeState {
            conn: ConnState::Connected,
            peer: Role::Secondary,
            disk: DiskState::UpToDate,
            pdsk: DiskState::UpToDate,
            role: Role::Secondary,
        };
        assert_eq!(m.apply(connected).peer, Role::Primary);
        let promoted = NodeState {
            role: Role::Primary,
            ..connected
        };
        assert!(connected.is_cluster_wide(&promoted));
        assert!(!promoted.is_cluster_wide(&connected), "a demotion is local");
        let alone = NodeState {
            conn: ConnState::WFConnection,
            ..connected
        };
        assert!(!alone.is_cluster_wide(&NodeState {
            role: Role::Primary,
            ..alone
        }));
        for e in StateChangeError::SS {
            assert_eq!(StateChangeError::from_code(e.code()), Some(*e));
        }
        assert_eq!(StateChangeError::from_code(-22), None);
        assert_eq!(StateChangeError::from_code(124), None, "not an SS_ code");
        assert_eq!(
            StateChangeError::ConcurrentStateChange.reason(),
            "Concurrent state changes detected and aborted"
        );
        assert_eq!(
            StateChangeError::NoDisk.reason(),
            "Device does not have a disk-config"
        );
    }

    #[test]
    fn promote_needs_up_to_date_data_unless_forced() {
        let ctx = Context::default();
        for disk in [
            DiskState::Diskless,
            DiskState::Inconsistent,
            DiskState::Outdated,
        ] {
            let s = standalone(Role::Secondary, disk);
            assert_eq!(
                s.promote(false, false, &ctx),
                Err(StateChangeError::NoUpToDateDisk),
                "{disk}"
            );
        }
        let s = standalone(Role::Secondary, DiskState::UpToDate);
        let Ok(Promotion::Promoted {
            state,
            forced: false,
            forced_split_brain: false,
        }) = s.promote(false, false, &ctx)
        else {
            panic!("UpToDate promotes");
        };
        assert_eq!(state.role, Role::Primary);
        assert_eq!(state.promote(false, false, &ctx), Ok(Promotion::Unchanged));
    }

    #[test]
    fn forced_promotion_declares_inconsistent_and_outdated_up_to_date() {
        let ctx = Context::default();
        for disk in [DiskState::Inconsistent, DiskState::Outdated] {
            let s = standalone(Role::Secondary, disk);
            assert_eq!(
                s.promote(true, false, &ctx),
                Ok(Promotion::Promoted {
                    state: NodeState {
                        role: Role::Primary,
                        disk: DiskState::UpToDate,
                        ..s
                    },
                    forced: true,
                    forced_split_brain: false,
                })
            );
        }
        // --force does not conjure a disk.
        let s = standalone(Role::Secondary, DiskState::Diskless);
        assert_eq!(
            s.promote(true, false, &ctx),
            Err(StateChangeError::NoUpToDateDisk)
        );
    }

    #[test]
    fn consistent_disk_promotes_without_fencing() {
        let s = standalone(Role::Secondary, DiskState::Consistent);
        let Ok(Promotion::Promoted { state, forced, .. }) =
            s.promote(false, false, &Context::default())
        else {
            panic!("dont-care upgrades Consistent");
        };
        assert_eq!((state.disk, forced), (DiskState::UpToDate, false));
    }

    #[test]
    fn fencing_runs_fence_peer_before_a_disconnected_promotion() {
        let ctx = Context {
            fencing: Fencing::ResourceOnly,
            ..Context::default()
        };
        let s = standalone(Role::Secondary, DiskState::UpToDate);
        assert_eq!(s.promote(false, false, &ctx), Ok(Promotion::RunFencePeer));

        let mut fenced = s;
        assert_eq!(fenced.apply_fence_peer(4, &ctx), FenceOutcome::PeerOutdated);
        assert_eq!(fenced.pdsk, DiskState::Outdated);
        assert!(matches!(
            fenced.promote(false, true, &ctx),
            Ok(Promotion::Promoted { .. })
        ));

        let mut failed = s;
        assert_eq!(failed.apply_fence_peer(1, &ctx), FenceOutcome::Broken(1));
        assert_eq!(failed, s);
        assert_eq!(
            failed.promote(false, true, &ctx),
            Err(StateChangeError::PrimaryNop)
        );
        let Ok(Promotion::Promoted {
            state,
            forced_split_brain: true,
            ..
        }) = failed.promote(true, true, &ctx)
        else {
            panic!("--force overrides a failed fence");
        };
        assert_eq!(state.pdsk, DiskState::Outdated);

        // Exit code 6: the peer is Primary, I outdate myself and stay Secondary.
        let mut me = s;
        assert_eq!(me.apply_fence_peer(6, &ctx), FenceOutcome::PeerPrimary);
        assert_eq!(me.disk, DiskState::Outdated);
        assert_eq!(
            me.promote(false, true, &ctx),
            Err(StateChangeError::NoUpToDateDisk)
        );
    }

    #[test]
    fn fencing_with_a_consistent_disk() {
        let ctx = Context {
            fencing: Fencing::ResourceOnly,
            ..Context::default()
        };
        let s = standalone(Role::Secondary, DiskState::Consistent);
        assert_eq!(s.promote(false, false, &ctx), Ok(Promotion::RunFencePeer));
        // Code 5 with a disk that is not UpToDate changes nothing.
        let mut unreachable = s;
        assert_eq!(
            unreachable.apply_fence_peer(5, &ctx),
            FenceOutcome::PeerUnreachable {
                assumed_dead: false
            }
        );
        assert_eq!(
            unreachable.promote(false, true, &ctx),
            Err(StateChangeError::NoUpToDateDisk)
        );
        let mut outdated = s;
        outdated.apply_fence_peer(7, &ctx);
        let Ok(Promotion::Promoted { state, forced, .. }) = outdated.promote(false, true, &ctx)
        else {
            panic!("peer stonithed");
        };
        assert_eq!(
            (state.disk, state.pdsk, forced),
            (DiskState::UpToDate, DiskState::Outdated, false)
        );
    }

    #[test]
    fn forced_inconsistent_promotion_under_fencing_skips_the_handler() {
        let ctx = Context {
            fencing: Fencing::ResourceAndStonith,
            ..Context::default()
        };
        let s = standalone(Role::Secondary, DiskState::Inconsistent);
        assert_eq!(
            s.promote(true, false, &ctx),
            Ok(Promotion::Promoted {
                state: NodeState {
                    role: Role::Primary,
                    disk: DiskState::UpToDate,
                    pdsk: DiskState::Outdated,
                    ..s
                },
                forced: true,
                forced_split_brain: true,
            })
        );
    }

    #[test]
    fn connected_promotion_rules() {
        let ctx = Context::default();
        let connected = NodeState {
            role: Role::Secondary,
            peer: Role::Primary,
            conn: ConnState::Connected,
            disk: DiskState::UpToDate,
            pdsk: DiskState::UpToDate,
        };
        assert_eq!(
            connected.promote(false, false, &ctx),
            Err(StateChangeError::TwoPrimaries)
        );
        let two = Context {
            allow_two_primaries: true,
            ..ctx
        };
        assert!(matches!(
            connected.promote(false, false, &two),
            Ok(Promotion::Promoted { .. })
        ));
        // A diskless node promotes on the peer's data.
        let diskless = NodeState {
            peer: Role::Secondary,
            disk: DiskState::Diskless,
            ..connected
        };
        assert!(matches!(
            diskless.promote(false, false, &ctx),
            Ok(Promotion::Promoted { .. })
        ));
        // A SyncTarget must wait for the state to settle.
        let target = NodeState {
            peer: Role::Secondary,
            conn: ConnState::WFSyncUUID,
            disk: DiskState::Inconsistent,
            ..connected
        };
        assert_eq!(
            target.promote(false, false, &ctx),
            Err(StateChangeError::InTransientState)
        );
        let syncing = NodeState {
            conn: ConnState::SyncTarget,
            ..target
        };
        assert!(matches!(
            syncing.promote(false, false, &ctx),
            Ok(Promotion::Promoted { .. })
        ));
    }

    #[test]
    fn demote_refused_while_open() {
        let primary = standalone(Role::Primary, DiskState::UpToDate);
        let open = Context {
            device_open: true,
            ..Context::default()
        };
        assert_eq!(primary.demote(&open), Err(StateChangeError::DeviceInUse));
        let demoted = primary.demote(&Context::default()).unwrap().unwrap();
        assert_eq!(demoted.role, Role::Secondary);
        assert_eq!(demoted.demote(&Context::default()), Ok(None));
    }

    #[test]
    fn attach_derives_the_disk_state_from_metadata() {
        let ctx = Context::default();
        let fenced = Context {
            fencing: Fencing::ResourceOnly,
            ..ctx
        };
        let cases = [
            (AttachMeta::default(), ctx, DiskState::Inconsistent),
            (
                AttachMeta {
                    consistent: true,
                    ..AttachMeta::default()
                },
                ctx,
                DiskState::Outdated,
            ),
            (
                AttachMeta {
                    consistent: true,
                    was_up_to_date: true,
                    ..AttachMeta::default()
                },
                ctx,
                DiskState::UpToDate,
            ),
            (
                AttachMeta {
                    consistent: true,
                    was_up_to_date: true,
                    ..AttachMeta::default()
                },
                fenced,
                DiskState::Consistent,
            ),
            (
                AttachMeta {
                    consistent: true,
                    was_up_to_date: true,
                    peer_outdated: true,
                },
                fenced,
                DiskState::UpToDate,
            ),
        ];
        for (meta, ctx, disk) in cases {
            let a = NodeState::DOWN.attach(meta, &ctx).unwrap();
            assert_eq!(
                (a.state.disk, a.disk_after_handshake),
                (disk, disk),
                "{meta:?}"
            );
            assert_eq!(
                a.state.pdsk,
                if meta.peer_outdated {
                    DiskState::Outdated
                } else {
                    DiskState::DUnknown
                }
            );
            assert_eq!(
                a.state.attach(meta, &ctx),
                Err(StateChangeError::DiskConfigured)
            );
        }
        let connected = NodeState {
            conn: ConnState::Connected,
            peer: Role::Secondary,
            pdsk: DiskState::UpToDate,
            ..NodeState::DOWN
        };
        let a = connected.attach(AttachMeta::default(), &ctx).unwrap();
        assert_eq!(a.state.disk, DiskState::Negotiating);
        assert_eq!(a.disk_after_handshake, DiskState::Inconsistent);
    }

    #[test]
    fn detach_rules() {
        let ctx = Context::default();
        let secondary = standalone(Role::Secondary, DiskState::UpToDate);
        assert_eq!(
            secondary.detach(false, &ctx),
            Ok(Some(NodeState::DOWN)),
            "detach leaves Diskless"
        );
        assert_eq!(NodeState::DOWN.detach(false, &ctx), Ok(None));
        assert_eq!(NodeState::DOWN.detach(true, &ctx), Ok(None));
        let primary = standalone(Role::Primary, DiskState::UpToDate);
        assert_eq!(
            primary.detach(false, &ctx),
            Err(StateChangeError::NoUpToDateDisk)
        );
        let forced = primary.detach(true, &ctx).unwrap().unwrap();
        assert_eq!(
            (forced.role, forced.disk),
            (Role::Primary, DiskState::Diskless)
        );
        // Connected to an UpToDate peer, a Primary may go diskless.
        let connected = NodeState {
            peer: Role::Secondary,
            conn: ConnState::Connected,
            pdsk: DiskState::UpToDate,
            ..primary
        };
        assert!(connected.detach(false, &ctx).unwrap().is_some());
        // Detaching a SyncSource aborts the resync.
        let source = NodeState {
            conn: ConnState::SyncSource,
            pdsk: DiskState::Inconsistent,
            ..connected
        };
        let Err(StateChangeError::NoUpToDateDisk) = source.detach(false, &ctx) else {
            panic!("a Primary SyncSource is the only good copy");
        };
        let secondary_source = NodeState {
            role: Role::Secondary,
            peer: Role::Secondary,
            ..source
        };
        let ns = secondary_source.detach(false, &ctx).unwrap().unwrap();
        assert_eq!(ns.conn, ConnState::Connected);
    }

    #[test]
    fn outdate_rules() {
        let ctx = Context::default();
        let s = standalone(Role::Secondary, DiskState::UpToDate);
        assert_eq!(s.outdate(&ctx).unwrap().unwrap().disk, DiskState::Outdated);
        assert_eq!(
            standalone(Role::Secondary, DiskState::Inconsistent).outdate(&ctx),
            Err(StateChangeError::LowerThanOutdated)
        );
        assert_eq!(
            standalone(Role::Primary, DiskState::UpToDate).outdate(&ctx),
            Err(StateChangeError::NoUpToDateDisk)
        );
        let connected = NodeState {
            peer: Role::Secondary,
            conn: ConnState::Connected,
            pdsk: DiskState::UpToDate,
            ..s
        };
        assert_eq!(connected.outdate(&ctx), Ok(None));
    }

    #[test]
    fn sanitize_forgets_the_peer_without_a_connection() {
        let connected = NodeState {
            role: Role::Primary,
            peer: Role::Secondary,
            conn: ConnState::Connected,
            disk: DiskState::UpToDate,
            pdsk: DiskState::UpToDate,
        };
        let lost = connected.sanitize(NodeState {
            conn: ConnState::NetworkFailure,
            ..connected
        });
        assert_eq!((lost.peer, lost.pdsk), (Role::Unknown, DiskState::DUnknown));
        let outdated_peer = connected.sanitize(NodeState {
            conn: ConnState::StandAlone,
            pdsk: DiskState::Outdated,
            ..connected
        });
        assert_eq!(outdated_peer.pdsk, DiskState::Outdated);
        assert!(lost_contact_to_peer_data(
            DiskState::UpToDate,
            DiskState::DUnknown
        ));
        assert!(lost_contact_to_peer_data(
            DiskState::DUnknown,
            DiskState::Diskless
        ));
        assert!(!lost_contact_to_peer_data(
            DiskState::Outdated,
            DiskState::DUnknown
        ));
        assert!(!lost_contact_to_peer_data(
            DiskState::DUnknown,
            DiskState::UpToDate
        ));
    }

    #[test]
    fn hard_transitions_still_respect_connection_order() {
        let ctx = Context::default();
        let s = standalone(Role::Secondary, DiskState::UpToDate);
        let req = NodeState {
            conn: ConnState::Connected,
            ..s
        };
        assert_eq!(
            s.change(req, true, &ctx),
            Err(StateChangeError::NeedConnection)
        );
        let req = NodeState {
            conn: ConnState::Disconnecting,
            ..s
        };
        assert_eq!(
            s.change(req, false, &ctx),
            Err(StateChangeError::AlreadyStandalone)
        );
    }
}
