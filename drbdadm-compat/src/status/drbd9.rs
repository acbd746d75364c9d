//! `drbdadm status` in the DRBD 9 layout as the 8.4 front end prints it, and the DRBD 9
//! `--json` form.

use repl_core::state::{ConnState, DiskState, Role};
use serde::{Deserialize, Serialize};

use super::{max_role, DeviceView, ResourceView, Suspended, WriteOrdering};

/// `drbdadm status` for these resources, in the order given, each block followed by an empty
/// line; lines wrap at 80 columns as the front end does when stdout is not a terminal.
pub fn drbdadm_status(resources: &[ResourceView]) -> String {
    drbdadm_status_width(resources, 80)
}

/// [`drbdadm_status`] wrapping at `columns` (the terminal width).
pub fn drbdadm_status_width(resources: &[ResourceView], columns: usize) -> String {
    let mut w = Wrap::new(columns);
    for r in resources {
        resource(&mut w, r);
    }
    w.out
}

/// The DRBD 9 `drbdsetup status --json` document for these resources; serialize it with
/// `serde_json`. Sync details (`rs-total`, rates) are not given.
pub fn status_json(resources: &[ResourceView]) -> Vec<JsonResource> {
    resources.iter().map(json_resource).collect()
}

/// [`status_json`] as `drbdsetup status --json` text: a pretty-printed array and a newline.
pub fn drbdadm_status_json(resources: &[ResourceView]) -> String {
    let mut text = serde_json::to_string_pretty(&status_json(resources))
        .expect("status JSON has only string keys and finite numbers");
    text.push('\n');
    text
}

/// One resource of the JSON form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct JsonResource {
    pub name: String,
    /// -1 when unknown.
    pub node_id: i64,
    pub role: Role,
    pub suspended: bool,
    pub suspended_user: bool,
    pub suspended_no_data: bool,
    pub suspended_fencing: bool,
    pub suspended_quorum: bool,
    pub force_io_failures: bool,
    pub write_ordering: String,
    pub devices: Vec<JsonDevice>,
    pub connections: Vec<JsonConnection>,
}

/// One volume of the JSON form; sizes in KiB.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct JsonDevice {
    pub volume: u32,
    pub minor: u32,
    pub disk_state: DiskState,
    pub client: bool,
    pub open: bool,
    pub quorum: bool,
    pub size: u64,
    pub read: u64,
    pub written: u64,
    pub al_writes: u64,
    pub bm_writes: u64,
    pub upper_pending: u64,
    pub lower_pending: u64,
}

/// The connection of the JSON form, with DRBD 9 state names (`Connecting`, `Connected`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct JsonConnection {
    /// -1 when unknown.
    pub peer_node_id: i64,
    pub name: String,
    pub connection_state: String,
    pub congested: bool,
    pub peer_role: Role,
    pub tls: bool,
    #[serde(rename = "peer_devices")]
    pub peer_devices: Vec<JsonPeerDevice>,
}

/// One peer volume of the JSON form; sizes in KiB, percentages rounded to two decimals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct JsonPeerDevice {
    pub volume: u32,
    pub replication_state: String,
    pub peer_disk_state: DiskState,
    pub peer_client: bool,
    pub resync_suspended: String,
    pub received: u64,
    pub sent: u64,
    pub out_of_sync: u64,
    pub pending: u64,
    pub unacked: u64,
    pub has_sync_details: bool,
    pub has_online_verify_details: bool,
    pub percent_in_sync: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent_resync_done: Option<f64>,
}

/// DRBD 9's name for an 8.4 connection-level state.
fn conn_str9(c: ConnState) -> &'static str {
    match c {
        ConnState::WFConnection => "Connecting",
        ConnState::WFReportParams => "Connected",
        other => other.as_str(),
    }
}

/// DRBD 9's name for an 8.4 per-volume state at or beyond WFReportParams.
fn repl_str9(c: ConnState) -> &'static str {
    match c {
        ConnState::WFReportParams => "Off",
        ConnState::Connected => "Established",
        other => other.as_str(),
    }
}

/// The connection-level state (8.4 keeps it at WFReportParams once connected), or `None` when
/// no volume has a net config.
fn connection_state(r: &ResourceView) -> Option<ConnState> {
    r.devices
        .iter()
        .filter(|d| d.protocol.is_some())
        .map(|d| d.status.state.conn.min(ConnState::WFReportParams))
        .min()
}

/// The per-volume replication state the kernel reports (never below WFReportParams).
fn repl_state(d: &DeviceView) -> ConnState {
    d.status.state.conn.max(ConnState::WFReportParams)
}

fn resource_role(r: &ResourceView) -> Role {
    r.devices
        .iter()
        .fold(Role::Secondary, |a, d| max_role(a, d.status.state.role))
}

fn peer_role(r: &ResourceView) -> Role {
    r.devices
        .iter()
        .fold(Role::Unknown, |a, d| max_role(a, d.status.state.peer))
}

fn suspended(r: &ResourceView) -> Suspended {
    r.devices
        .iter()
        .fold(Suspended::default(), |a, d| Suspended {
            user: a.user || d.suspended.user,
            no_data: a.no_data || d.suspended.no_data,
            fencing: a.fencing || d.suspended.fencing,
        })
}

/// Percentage of the device in sync, from out-of-sync KiB and the size in sectors.
fn percent_in_sync(d: &DeviceView) -> f64 {
    let size = d.status.size.0 as f64;
    if size == 0.0 {
        return 0.0;
    }
    100.0 * (1.0 - (d.status.out_of_sync as f64 * 2.0) / size)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The front end's `wrap_printf`: a piece that would pass `columns` starts a new line at its
/// indent; a piece starting a line loses its leading blanks and gets `indent` blanks instead.
struct Wrap {
    out: String,
    /// Mirrors the C counter, which is one short after an indent (it ends the indent loop at -1).
    col: i64,
    columns: i64,
}

impl Wrap {
    fn new(columns: usize) -> Wrap {
        Wrap {
            out: String::new(),
            col: 0,
            columns: i64::try_from(columns).unwrap_or(i64::MAX),
        }
    }

    fn print(&mut self, indent: usize, piece: &str) {
        let mut s = piece;
        while let Some(rest) = s.strip_prefix('\n') {
            self.out.push('\n');
            self.col = 0;
            s = rest;
        }
        if s.is_empty() {
            return;
        }
        let n = s.len() as i64;
        if self.col > 0 && self.col + n > self.columns {
            self.out.push('\n');
            self.col = 0;
        }
        if self.col == 0 {
            s = s.trim_start_matches(' ');
            self.out.extend(std::iter::repeat_n(' ', indent));
            self.col = -1;
        }
        self.out.push_str(s);
        self.col += s.len() as i64;
        if s.ends_with('\n') {
            self.col = 0;
        }
    }
}

fn resource(w: &mut Wrap, r: &ResourceView) {
    w.print(0, &r.name);
    w.print(4, &format!(" role:{}", resource_role(r)));
    let susp = suspended(r);
    if susp.any() {
        w.print(4, &format!(" suspended:{}", susp.words()));
    }
    w.print(0, "\n");
    let single = r.devices.len() == 1;
    for d in &r.devices {
        device(w, d, single);
    }
    if let Some(cstate) = connection_state(r) {
        connection(w, r, cstate, single);
    }
    w.print(0, "\n");
}

fn device(w: &mut Wrap, d: &DeviceView, single: bool) {
    let mut indent = 2;
    if !(single && d.status.volume == 0) {
        w.print(indent, &format!("volume:{}", d.status.volume));
        indent = 6;
    }
    w.print(indent, &format!(" disk:{}", d.status.state.disk));
    w.print(6, "\n");
}

fn connection(w: &mut Wrap, r: &ResourceView, cstate: ConnState, single: bool) {
    w.print(2, "peer");
    if cstate < ConnState::WFReportParams {
        w.print(6, &format!(" connection:{}", conn_str9(cstate)));
    }
    if cstate == ConnState::WFReportParams {
        w.print(6, &format!(" role:{}", peer_role(r)));
    }
    if r.devices.iter().any(|d| d.congestion.network()) {
        w.print(6, " congested:yes");
    }
    w.print(0, "\n");
    if cstate == ConnState::WFReportParams {
        for d in &r.devices {
            peer_device(w, d, single);
        }
    }
}

fn peer_device(w: &mut Wrap, d: &DeviceView, single: bool) {
    let mut indent = 4;
    if !(single && d.status.volume == 0) {
        w.print(indent, &format!("volume:{}", d.status.volume));
        indent = 8;
    }
    let repl = repl_state(d);
    if repl > ConnState::WFReportParams {
        w.print(indent, &format!(" replication:{}", repl_str9(repl)));
        indent = 8;
    }
    let pdsk = d.status.state.pdsk;
    if repl != ConnState::WFReportParams || pdsk != DiskState::DUnknown {
        w.print(indent, &format!(" peer-disk:{pdsk}"));
        indent = 8;
        if repl.is_sync() {
            w.print(indent, &format!(" done:{:.2}", percent_in_sync(d)));
        }
        if d.resync_pause.any() {
            w.print(
                indent,
                &format!(" resync-suspended:{}", d.resync_pause.words()),
            );
        }
    }
    w.print(0, "\n");
}

fn json_resource(r: &ResourceView) -> JsonResource {
    let susp = suspended(r);
    let wo = r
        .devices
        .first()
        .map_or(WriteOrdering::Flush, |d| d.write_ordering);
    let devices = r
        .devices
        .iter()
        .map(|d| {
            let c = &d.status.counters;
            JsonDevice {
                volume: d.status.volume,
                minor: d.status.minor,
                disk_state: d.status.state.disk,
                client: false,
                open: d.open,
                quorum: true,
                size: d.status.size.0 / 2,
                read: c.dr,
                written: c.dw,
                al_writes: c.al,
                bm_writes: c.bm,
                upper_pending: c.ap,
                lower_pending: c.lo,
            }
        })
        .collect();
    let connections = connection_state(r)
        .map(|cstate| JsonConnection {
            peer_node_id: r.peer_node_id.map_or(-1, i64::from),
            name: r.peer_name.clone().unwrap_or_else(|| "peer".to_owned()),
            connection_state: conn_str9(cstate).to_owned(),
            congested: r.devices.iter().any(|d| d.congestion.network()),
            peer_role: peer_role(r),
            tls: false,
            peer_devices: r.devices.iter().map(json_peer_device).collect(),
        })
        .into_iter()
        .collect();
    JsonResource {
        name: r.name.clone(),
        node_id: r.node_id.map_or(-1, i64::from),
        role: resource_role(r),
        suspended: susp.any(),
        suspended_user: susp.user,
        suspended_no_data: susp.no_data,
        suspended_fencing: susp.fencing,
        suspended_quorum: false,
        force_io_failures: false,
        write_ordering: wo.word().to_owned(),
        devices,
        connections,
    }
}

fn json_peer_device(d: &DeviceView) -> JsonPeerDevice {
    let repl = repl_state(d);
    let c = &d.status.counters;
    let in_sync = round2(percent_in_sync(d));
    let resyncing = repl.is_sync() && !matches!(repl, ConnState::VerifyS | ConnState::VerifyT);
    JsonPeerDevice {
        volume: d.status.volume,
        replication_state: repl_str9(repl).to_owned(),
        peer_disk_state: d.status.state.pdsk,
        peer_client: false,
        resync_suspended: d.resync_pause.words(),
        received: c.nr,
        sent: c.ns,
        out_of_sync: d.status.out_of_sync,
        pending: c.pe,
        unacked: c.ua,
        has_sync_details: false,
        has_online_verify_details: false,
        percent_in_sync: in_sync,
        percent_resync_done: resyncing.then_some(in_sync),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::tests::view;
    use crate::status::{Congestion, ResyncPause};
    use ConnState::*;
    use DiskState::*;
    use Role::*;

    fn one(d: DeviceView) -> String {
        drbdadm_status(&[ResourceView::new("r0", vec![d])])
    }

    /// The UG 8.4 example of the reference.
    #[test]
    fn ug84_connected_secondary() {
        let d = view(
            "home",
            0,
            0,
            (Secondary, Secondary),
            Connected,
            (UpToDate, UpToDate),
        );
        assert_eq!(
            drbdadm_status(&[ResourceView::new("home", vec![d])]),
            "home role:Secondary\n  disk:UpToDate\n  peer role:Secondary\n    \
             replication:Established peer-disk:UpToDate\n\n"
        );
    }

    #[test]
    fn standalone_primary_without_net_config_has_no_peer() {
        let d = view(
            "r0",
            0,
            0,
            (Primary, Unknown),
            StandAlone,
            (UpToDate, DUnknown),
        );
        assert_eq!(one(d), "r0 role:Primary\n  disk:UpToDate\n\n");
    }

    #[test]
    fn wfconnection_prints_connecting() {
        let d = view(
            "r0",
            0,
            0,
            (Secondary, Unknown),
            WFConnection,
            (UpToDate, DUnknown),
        );
        assert_eq!(
            one(d),
            "r0 role:Secondary\n  disk:UpToDate\n  peer connection:Connecting\n\n"
        );
    }

    #[test]
    fn other_disconnected_states_keep_their_names() {
        let d = view(
            "r0",
            0,
            0,
            (Secondary, Unknown),
            NetworkFailure,
            (Outdated, DUnknown),
        );
        assert_eq!(
            one(d),
            "r0 role:Secondary\n  disk:Outdated\n  peer connection:NetworkFailure\n\n"
        );
    }

    #[test]
    fn handshake_prints_an_empty_peer_device_line() {
        let d = view(
            "r0",
            0,
            0,
            (Secondary, Unknown),
            WFReportParams,
            (UpToDate, DUnknown),
        );
        assert_eq!(
            one(d),
            "r0 role:Secondary\n  disk:UpToDate\n  peer role:Unknown\n\n\n"
        );
    }

    /// The layout of the reference's DRBD 9 example, with the 8.4 front end's `peer`.
    #[test]
    fn sync_source_done_percent() {
        let mut d = view(
            "r0",
            0,
            0,
            (Primary, Secondary),
            SyncSource,
            (UpToDate, Inconsistent),
        );
        // 1 GiB device, 57.83 % out of sync.
        d.status.out_of_sync = 606_378;
        assert_eq!(
            one(d),
            "r0 role:Primary\n  disk:UpToDate\n  peer role:Secondary\n    \
             replication:SyncSource peer-disk:Inconsistent done:42.17\n\n"
        );
    }

    #[test]
    fn paused_sync_target_suspended_and_congested() {
        let mut d = view(
            "r0",
            0,
            0,
            (Secondary, Primary),
            PausedSyncT,
            (Inconsistent, UpToDate),
        );
        d.status.out_of_sync = 1024 * 1024;
        d.resync_pause = ResyncPause {
            user: false,
            peer: true,
            dependency: true,
        };
        d.suspended.no_data = true;
        d.congestion = Congestion::Network;
        // The last piece would pass column 80, so it starts a new line at indent 8.
        assert_eq!(
            one(d),
            "r0 role:Secondary suspended:no-data\n  disk:Inconsistent\n  \
             peer role:Primary congested:yes\n    replication:PausedSyncT \
             peer-disk:UpToDate done:0.00\n        resync-suspended:peer,dependency\n\n"
        );
    }

    #[test]
    fn multi_volume() {
        let v0 = view(
            "r0",
            0,
            0,
            (Primary, Secondary),
            Connected,
            (UpToDate, UpToDate),
        );
        let mut v1 = view(
            "r0",
            1,
            1,
            (Secondary, Secondary),
            SyncSource,
            (UpToDate, Inconsistent),
        );
        v1.status.out_of_sync = 524_288;
        let r = ResourceView::new("r0", vec![v0, v1]);
        let r1 = ResourceView::new(
            "r1",
            vec![view(
                "r1",
                0,
                2,
                (Secondary, Unknown),
                WFConnection,
                (Inconsistent, DUnknown),
            )],
        );
        assert_eq!(
            drbdadm_status(&[r, r1]),
            "r0 role:Primary\n\
             \x20 volume:0 disk:UpToDate\n\
             \x20 volume:1 disk:UpToDate\n\
             \x20 peer role:Secondary\n\
             \x20   volume:0 replication:Established peer-disk:UpToDate\n\
             \x20   volume:1 replication:SyncSource peer-disk:Inconsistent done:50.00\n\
             \n\
             r1 role:Secondary\n\
             \x20 disk:Inconsistent\n\
             \x20 peer connection:Connecting\n\
             \n"
        );
    }

    #[test]
    fn single_volume_not_zero_is_named() {
        let d = view(
            "r0",
            3,
            7,
            (Secondary, Secondary),
            Connected,
            (UpToDate, UpToDate),
        );
        assert_eq!(
            one(d),
            "r0 role:Secondary\n  volume:3 disk:UpToDate\n  peer role:Secondary\n    \
             volume:3 replication:Established peer-disk:UpToDate\n\n"
        );
    }

    #[test]
    fn wraps_like_wrap_printf() {
        let mut d = view(
            "r0",
            0,
            0,
            (Primary, Secondary),
            PausedSyncS,
            (UpToDate, Inconsistent),
        );
        d.resync_pause.user = true;
        // After "    replication:PausedSyncS peer-disk:Inconsistent" the C counter is 45 (one
        // short, see `Wrap::col`); " done:100.00" (12) passes 50 and starts a line at indent 8.
        let text = drbdadm_status_width(&[ResourceView::new("r0", vec![d])], 50);
        assert_eq!(
            text,
            "r0 role:Primary\n  disk:UpToDate\n  peer role:Secondary\n    \
             replication:PausedSyncS peer-disk:Inconsistent\n        done:100.00 \
             resync-suspended:user\n\n"
        );
    }

    #[test]
    fn json_form() {
        let v0 = view(
            "r0",
            0,
            0,
            (Primary, Secondary),
            Connected,
            (UpToDate, UpToDate),
        );
        let mut v1 = view(
            "r0",
            1,
            1,
            (Primary, Secondary),
            SyncSource,
            (UpToDate, Inconsistent),
        );
        v1.status.out_of_sync = 524_288;
        v1.status.counters.ns = 10;
        v1.open = true;
        let mut r = ResourceView::new("r0", vec![v0, v1]);
        r.peer_name = Some("bob".into());
        r.node_id = Some(0);
        r.peer_node_id = Some(1);
        let doc = serde_json::to_value(status_json(&[r])).unwrap();
        let expected = serde_json::json!([{
            "name": "r0", "node-id": 0, "role": "Primary",
            "suspended": false, "suspended-user": false, "suspended-no-data": false,
            "suspended-fencing": false, "suspended-quorum": false, "force-io-failures": false,
            "write-ordering": "flush",
            "devices": [
                {"volume": 0, "minor": 0, "disk-state": "UpToDate", "client": false,
                 "open": false, "quorum": true, "size": 1048576, "read": 0, "written": 0,
                 "al-writes": 0, "bm-writes": 0, "upper-pending": 0, "lower-pending": 0},
                {"volume": 1, "minor": 1, "disk-state": "UpToDate", "client": false,
                 "open": true, "quorum": true, "size": 1048576, "read": 0, "written": 0,
                 "al-writes": 0, "bm-writes": 0, "upper-pending": 0, "lower-pending": 0}
            ],
            "connections": [{
                "peer-node-id": 1, "name": "bob", "connection-state": "Connected",
                "congested": false, "peer-role": "Secondary", "tls": false,
                "peer_devices": [
                    {"volume": 0, "replication-state": "Established",
                     "peer-disk-state": "UpToDate", "peer-client": false,
                     "resync-suspended": "no", "received": 0, "sent": 0, "out-of-sync": 0,
                     "pending": 0, "unacked": 0, "has-sync-details": false,
                     "has-online-verify-details": false, "percent-in-sync": 100.0},
                    {"volume": 1, "replication-state": "SyncSource",
                     "peer-disk-state": "Inconsistent", "peer-client": false,
                     "resync-suspended": "no", "received": 0, "sent": 10,
                     "out-of-sync": 524288, "pending": 0, "unacked": 0,
                     "has-sync-details": false, "has-online-verify-details": false,
                     "percent-in-sync": 50.0, "percent-resync-done": 50.0}
                ]
            }]
        }]);
        assert_eq!(doc, expected);
    }

    #[test]
    fn json_disconnected_and_unconnected() {
        let standalone = ResourceView::new(
            "a",
            vec![view(
                "a",
                0,
                0,
                (Primary, Unknown),
                StandAlone,
                (UpToDate, DUnknown),
            )],
        );
        let waiting = ResourceView::new(
            "b",
            vec![view(
                "b",
                0,
                1,
                (Secondary, Unknown),
                WFConnection,
                (UpToDate, DUnknown),
            )],
        );
        let doc = status_json(&[standalone, waiting]);
        assert!(doc[0].connections.is_empty());
        assert_eq!(doc[0].node_id, -1);
        let c = &doc[1].connections[0];
        assert_eq!(c.connection_state, "Connecting");
        assert_eq!(c.name, "peer");
        assert_eq!(c.peer_node_id, -1);
        assert_eq!(c.peer_role, Unknown);
        assert_eq!(c.peer_devices[0].replication_state, "Off");
        assert_eq!(c.peer_devices[0].peer_disk_state, DUnknown);
    }

    #[test]
    fn views_round_trip_through_json() {
        let mut d = view(
            "r0",
            0,
            0,
            (Primary, Secondary),
            SyncSource,
            (UpToDate, Inconsistent),
        );
        d.resync = Some(crate::status::ResyncProgress {
            total: 10,
            left: 5,
            mark_left: 7,
            mark_age_secs: 3,
            active_secs: 9,
            want_kib: 100,
        });
        let r = ResourceView::new("r0", vec![d]);
        let text = serde_json::to_string(&r).unwrap();
        let back: ResourceView = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
    }
}
