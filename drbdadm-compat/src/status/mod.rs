//! Pure renderers of the engine's status snapshot: `/proc/drbd` (8.4 format), `drbdadm status` as
//! the 8.4 front end prints it, its DRBD 9 `--json` form, and the `role`/`cstate`/`dstate` queries.
//!
//! Nothing here talks to the daemon. The daemon fills a [`DeviceView`] per minor (the snapshot plus
//! the facts the snapshot does not carry) and a [`ResourceView`] per resource; the CLI prints the
//! strings these functions return.
//!
//! ```
//! use drbdadm_compat::status::{cstate, DeviceView, ResourceView};
//! use repl_core::status::{Counters, Status};
//! # use repl_core::{meta::MdFlags, state::NodeState, types::Sector, uuid::GenerationUuids};
//! let status = Status {
//!     resource: "r0".into(),
//!     volume: 0,
//!     minor: 0,
//!     state: NodeState::DOWN,
//!     uuids: GenerationUuids::default(),
//!     flags: MdFlags(0),
//!     size: Sector(0),
//!     out_of_sync: 0,
//!     counters: Counters::default(),
//!     resync: None,
//!     protocol: None,
//! };
//! let view = DeviceView::new(status);
//! assert_eq!(cstate(&view.status), "Unconfigured");
//! let text = drbdadm_compat::status::drbdadm_status(&[ResourceView::new("r0", vec![view])]);
//! assert_eq!(text, "r0 role:Secondary\n  disk:Diskless\n\n");
//! ```

mod drbd9;
mod json84;
mod proc_drbd;

pub use drbd9::{
    drbdadm_status, drbdadm_status_json, drbdadm_status_width, status_json, JsonConnection,
    JsonDevice, JsonPeerDevice, JsonResource,
};
pub use json84::{
    cstate_json, dstate_json, proc_drbd_json, role_json, to_text, JsonCstate, JsonDstate,
    JsonProcDevice, JsonProcDrbd, JsonResync, JsonRole, QueryVolume,
};
pub use proc_drbd::proc_drbd;

use repl_core::state::{ConnState, DiskState, Role};
use repl_core::status::Status;
use serde::{Deserialize, Serialize};

/// Replication protocol letter of the connection's net config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    A,
    B,
    C,
}

impl Protocol {
    /// The letter `/proc/drbd` prints.
    pub fn letter(self) -> char {
        match self {
            Protocol::A => 'A',
            Protocol::B => 'B',
            Protocol::C => 'C',
        }
    }
}

/// Write-ordering method in use (`wo:` in `/proc/drbd`, `write-ordering` in DRBD 9 JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteOrdering {
    None,
    Drain,
    #[default]
    Flush,
    Barrier,
}

impl WriteOrdering {
    /// The `wo:` character.
    pub fn letter(self) -> char {
        match self {
            WriteOrdering::None => 'n',
            WriteOrdering::Drain => 'd',
            WriteOrdering::Flush => 'f',
            WriteOrdering::Barrier => 'b',
        }
    }

    /// The word DRBD 9 prints.
    pub fn word(self) -> &'static str {
        match self {
            WriteOrdering::None => "none",
            WriteOrdering::Drain => "drain",
            WriteOrdering::Flush => "flush",
            WriteOrdering::Barrier => "barrier",
        }
    }
}

/// Why the device is congested or blocked: the fifth `/proc/drbd` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Congestion {
    #[default]
    None,
    /// I/O frozen internally (`d`).
    Frozen,
    /// A helper callback is pending (`c`).
    Callback,
    /// Backing device congested (`b`).
    Backing,
    /// Network congested (`n`).
    Network,
    /// Backing device and network congested (`a`).
    Both,
}

impl Congestion {
    /// The flag character.
    pub fn letter(self) -> char {
        match self {
            Congestion::None => '-',
            Congestion::Frozen => 'd',
            Congestion::Callback => 'c',
            Congestion::Backing => 'b',
            Congestion::Network => 'n',
            Congestion::Both => 'a',
        }
    }

    /// Whether the network is congested (`congested:yes` in `drbdadm status`).
    pub fn network(self) -> bool {
        matches!(self, Congestion::Network | Congestion::Both)
    }
}

/// Why application I/O is suspended (resource-wide in DRBD; every device of a resource carries
/// the same value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Suspended {
    /// `suspend-io` by the admin.
    pub user: bool,
    /// No access to good data (`on-no-data-accessible suspend-io`).
    pub no_data: bool,
    /// Waiting for the fence-peer handler.
    pub fencing: bool,
}

impl Suspended {
    pub fn any(self) -> bool {
        self.user || self.no_data || self.fencing
    }

    /// `user,no-data,fencing` as set, or `no`.
    pub fn words(self) -> String {
        join_or_no(&[
            (self.user, "user"),
            (self.no_data, "no-data"),
            (self.fencing, "fencing"),
        ])
    }
}

/// Why a resync is paused (`user_isp`, `peer_isp`, `aftr_isp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct ResyncPause {
    /// `pause-sync` here.
    pub user: bool,
    /// `pause-sync` on the peer.
    pub peer: bool,
    /// Waiting for a `resync-after` dependency.
    pub dependency: bool,
}

impl ResyncPause {
    pub fn any(self) -> bool {
        self.user || self.peer || self.dependency
    }

    /// `user,peer,dependency` as set, or `no`.
    pub fn words(self) -> String {
        join_or_no(&[
            (self.user, "user"),
            (self.peer, "peer"),
            (self.dependency, "dependency"),
        ])
    }
}

fn join_or_no(parts: &[(bool, &str)]) -> String {
    let set: Vec<&str> = parts.iter().filter(|p| p.0).map(|p| p.1).collect();
    if set.is_empty() {
        "no".to_owned()
    } else {
        set.join(",")
    }
}

/// Resync or verify progress figures. Block counts are bitmap bits (4 KiB each); times are whole
/// seconds, as DRBD divides jiffies by HZ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ResyncProgress {
    /// Blocks this resync or verify covers (`rs_total`).
    pub total: u64,
    /// Blocks still to do: out-of-sync minus failed, or verify's `ov_left`.
    pub left: u64,
    /// Blocks that were left at the rolling mark about 18 s back (the oldest stable mark).
    pub mark_left: u64,
    /// Seconds since that mark was taken; above 180 the line says `(stalled)`.
    pub mark_age_secs: u64,
    /// Seconds since the resync started, minus the time it was paused.
    pub active_secs: u64,
    /// The rate controller's current target, KiB/s (`c_sync_rate`).
    pub want_kib: u64,
}

/// One minor as the renderers see it: the engine's snapshot plus what only the daemon knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceView {
    pub status: Status,
    /// Protocol of the net config; `None` without one (then no connection is shown).
    pub protocol: Option<Protocol>,
    pub suspended: Suspended,
    pub resync_pause: ResyncPause,
    pub congestion: Congestion,
    /// Activity-log updates suspended.
    pub al_suspended: bool,
    pub write_ordering: WriteOrdering,
    /// Epochs in flight (`ep:`).
    pub epochs: u64,
    /// Some user holds the device open.
    pub open: bool,
    /// Must be `Some` while the connection state is SyncSource, SyncTarget, VerifyS or VerifyT;
    /// `/proc/drbd` omits the progress block otherwise.
    pub resync: Option<ResyncProgress>,
}

impl DeviceView {
    /// A view with no net config, nothing suspended or congested, `wo:f`, one epoch.
    pub fn new(status: Status) -> DeviceView {
        let protocol = status.protocol.map(|p| match p {
            repl_core::wire::Protocol::A => Protocol::A,
            repl_core::wire::Protocol::B => Protocol::B,
            repl_core::wire::Protocol::C => Protocol::C,
        });
        let resync = status.resync.map(|r| ResyncProgress {
            total: r.total_kib / 4,
            left: r.left_kib / 4,
            mark_left: r.mark_left_kib / 4,
            mark_age_secs: r.mark_age_ms / 1000,
            active_secs: r.elapsed_ms / 1000,
            want_kib: r.want_kib,
        });
        DeviceView {
            status,
            protocol,
            suspended: Suspended::default(),
            resync_pause: ResyncPause::default(),
            congestion: Congestion::None,
            al_suspended: false,
            write_ordering: WriteOrdering::Flush,
            epochs: 1,
            open: false,
            resync,
        }
    }
}

/// One resource for `drbdadm status`: its volumes in volume order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceView {
    pub name: String,
    pub devices: Vec<DeviceView>,
    /// Only the JSON form shows these; the 8.4 text form always names the connection `peer`.
    pub node_id: Option<u32>,
    pub peer_node_id: Option<u32>,
    pub peer_name: Option<String>,
}

impl ResourceView {
    pub fn new(name: impl Into<String>, devices: Vec<DeviceView>) -> ResourceView {
        ResourceView {
            name: name.into(),
            devices,
            node_id: None,
            peer_node_id: None,
            peer_name: None,
        }
    }
}

/// The `/proc/drbd` header: `version: RELEASE (api:A/proto:MIN-MAX)` then the build tag line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// `8.4.11` (in-tree module) or `8.4.12-1` (LINBIT out-of-tree build).
    pub release: String,
    pub api: u32,
    pub proto_min: u32,
    pub proto_max: u32,
    /// The whole second line, e.g. `srcversion: 9B671CCC1F00886BA069043` or
    /// `GIT-hash: … build by user@host, 2022-11-21 14:01:58`.
    pub build_tag: String,
}

impl VersionInfo {
    /// tandem's header: the DRBD release whose behaviour it follows, and its own version.
    pub fn tandem() -> VersionInfo {
        VersionInfo::v84(
            "8.4.11",
            format!("srcversion: tandem-{}", env!("CARGO_PKG_VERSION")),
        )
    }

    /// An 8.4.2+ header (`api:1/proto:86-101`).
    pub fn v84(release: impl Into<String>, build_tag: impl Into<String>) -> VersionInfo {
        VersionInfo {
            release: release.into(),
            api: 1,
            proto_min: 86,
            proto_max: 101,
            build_tag: build_tag.into(),
        }
    }
}

/// DRBD treats a StandAlone, Diskless minor as unconfigured in the single-value queries.
fn query_unconfigured(s: &Status) -> bool {
    s.state.conn == ConnState::StandAlone && s.state.disk == DiskState::Diskless
}

/// `drbdsetup role`: `Primary/Secondary` (peer `Unknown` when not connected), or `Unconfigured`.
/// No trailing newline.
pub fn role(s: &Status) -> String {
    if query_unconfigured(s) {
        return "Unconfigured".to_owned();
    }
    format!("{}/{}", s.state.role, s.state.peer)
}

/// `drbdsetup cstate`: the 8.4 connection state name, or `Unconfigured`. No trailing newline.
pub fn cstate(s: &Status) -> String {
    if query_unconfigured(s) {
        return "Unconfigured".to_owned();
    }
    s.state.conn.to_string()
}

/// `drbdsetup dstate`: `UpToDate/UpToDate` (peer `DUnknown` when not connected), or
/// `Unconfigured`. No trailing newline.
pub fn dstate(s: &Status) -> String {
    if query_unconfigured(s) {
        return "Unconfigured".to_owned();
    }
    format!("{}/{}", s.state.disk, s.state.pdsk)
}

/// DRBD's `seq_printf_with_thousands_grouping`: at most three groups (`1234,567,890` stays so).
pub(crate) fn grouped(v: u64) -> String {
    if v >= 1_000_000 {
        let rest = v % 1_000_000;
        format!("{},{:03},{:03}", v / 1_000_000, rest / 1000, rest % 1000)
    } else if v >= 1000 {
        format!("{},{:03}", v / 1000, v % 1000)
    } else {
        v.to_string()
    }
}

/// The higher of two roles as DRBD ranks them: Primary over Secondary over Unknown.
pub(crate) fn max_role(a: Role, b: Role) -> Role {
    if a == Role::Primary || b == Role::Primary {
        Role::Primary
    } else if a == Role::Secondary || b == Role::Secondary {
        Role::Secondary
    } else {
        Role::Unknown
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use repl_core::meta::MdFlags;
    use repl_core::state::NodeState;
    use repl_core::status::Counters;
    use repl_core::types::Sector;
    use repl_core::uuid::GenerationUuids;

    /// A view of `resource`/`volume` on `minor` in the given state, 1 GiB.
    pub(crate) fn view(
        resource: &str,
        volume: u32,
        minor: u32,
        (role, peer): (Role, Role),
        conn: ConnState,
        (disk, pdsk): (DiskState, DiskState),
    ) -> DeviceView {
        let mut v = DeviceView::new(Status {
            resource: resource.to_owned(),
            volume,
            minor,
            state: NodeState {
                role,
                peer,
                conn,
                disk,
                pdsk,
            },
            uuids: GenerationUuids::default(),
            flags: MdFlags(0),
            size: Sector(2 * 1024 * 1024),
            out_of_sync: 0,
            counters: Counters::default(),
            resync: None,
            protocol: None,
        });
        if conn != ConnState::StandAlone {
            v.protocol = Some(Protocol::C);
        }
        v
    }

    #[test]
    fn queries_connected() {
        let v = view(
            "r0",
            0,
            0,
            (Role::Primary, Role::Secondary),
            ConnState::Connected,
            (DiskState::UpToDate, DiskState::UpToDate),
        );
        assert_eq!(role(&v.status), "Primary/Secondary");
        assert_eq!(cstate(&v.status), "Connected");
        assert_eq!(dstate(&v.status), "UpToDate/UpToDate");
    }

    #[test]
    fn queries_absent_peer() {
        let v = view(
            "r0",
            0,
            0,
            (Role::Primary, Role::Unknown),
            ConnState::StandAlone,
            (DiskState::UpToDate, DiskState::DUnknown),
        );
        assert_eq!(role(&v.status), "Primary/Unknown");
        assert_eq!(cstate(&v.status), "StandAlone");
        assert_eq!(dstate(&v.status), "UpToDate/DUnknown");
    }

    #[test]
    fn queries_unconfigured_ignores_role() {
        // Unlike /proc/drbd, the queries do not look at the role.
        let v = view(
            "r0",
            0,
            0,
            (Role::Primary, Role::Unknown),
            ConnState::StandAlone,
            (DiskState::Diskless, DiskState::DUnknown),
        );
        assert_eq!(role(&v.status), "Unconfigured");
        assert_eq!(cstate(&v.status), "Unconfigured");
        assert_eq!(dstate(&v.status), "Unconfigured");
    }

    #[test]
    fn thousands_grouping() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(4728), "4,728");
        assert_eq!(grouped(51_200), "51,200");
        assert_eq!(grouped(1_000_001), "1,000,001");
        assert_eq!(grouped(1_234_567_890), "1234,567,890");
    }

    #[test]
    fn pause_and_suspend_words() {
        assert_eq!(ResyncPause::default().words(), "no");
        let p = ResyncPause {
            user: true,
            peer: false,
            dependency: true,
        };
        assert_eq!(p.words(), "user,dependency");
        let s = Suspended {
            user: false,
            no_data: true,
            fencing: true,
        };
        assert_eq!(s.words(), "no-data,fencing");
    }
}
