//! `--json` for the 8.4 queries (`role`, `cstate`, `dstate`) and for `/proc/drbd`: the same
//! facts as the text forms, with 8.4's state names and stable kebab-case keys (the words of
//! `status --json` where one exists: `role`, `peer-role`, `disk-state`, `peer-disk-state`).
//!
//! Every key is always present. Where the text form prints `Unconfigured` (the volume is not up,
//! or is StandAlone and Diskless, as drbdsetup decides it), the JSON value is `"Unconfigured"` too.

use serde::{Deserialize, Serialize};

use super::proc_drbd::{flags, progress_per_mille, unconfigured};
use super::{cstate, dstate, role, DeviceView, VersionInfo};
use repl_core::status::Status;

/// One volume of `role --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct JsonRole {
    pub name: String,
    pub volume: u32,
    pub minor: u32,
    /// `Primary`, `Secondary` or `Unconfigured`.
    pub role: String,
    /// `Primary`, `Secondary`, `Unknown` (not connected) or `Unconfigured`.
    pub peer_role: String,
}

/// One volume of `cstate --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct JsonCstate {
    pub name: String,
    pub volume: u32,
    pub minor: u32,
    /// An 8.4 connection state (`WFConnection`, `Connected`, `SyncSource`, ...) or
    /// `Unconfigured`.
    pub connection_state: String,
}

/// One volume of `dstate --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct JsonDstate {
    pub name: String,
    pub volume: u32,
    pub minor: u32,
    /// A disk state (`UpToDate`, `Inconsistent`, `Diskless`, ...) or `Unconfigured`.
    pub disk_state: String,
    /// The peer's disk state (`DUnknown` when not connected) or `Unconfigured`.
    pub peer_disk_state: String,
}

/// A volume for the queries: its configured identity and its snapshot if it is up.
#[derive(Debug, Clone, Copy)]
pub struct QueryVolume<'a> {
    pub name: &'a str,
    pub volume: u32,
    pub minor: u32,
    pub status: Option<&'a Status>,
}

const UNCONFIGURED: &str = "Unconfigured";

/// `role --json` for these volumes, in the order given.
pub fn role_json(vols: &[QueryVolume<'_>]) -> Vec<JsonRole> {
    vols.iter()
        .map(|v| {
            let text = v.status.map_or(UNCONFIGURED.into(), role);
            let (role, peer_role) = split(&text);
            JsonRole {
                name: v.name.into(),
                volume: v.volume,
                minor: v.minor,
                role,
                peer_role,
            }
        })
        .collect()
}

/// `cstate --json` for these volumes, in the order given.
pub fn cstate_json(vols: &[QueryVolume<'_>]) -> Vec<JsonCstate> {
    vols.iter()
        .map(|v| JsonCstate {
            name: v.name.into(),
            volume: v.volume,
            minor: v.minor,
            connection_state: v.status.map_or(UNCONFIGURED.into(), cstate),
        })
        .collect()
}

/// `dstate --json` for these volumes, in the order given.
pub fn dstate_json(vols: &[QueryVolume<'_>]) -> Vec<JsonDstate> {
    vols.iter()
        .map(|v| {
            let text = v.status.map_or(UNCONFIGURED.into(), dstate);
            let (disk_state, peer_disk_state) = split(&text);
            JsonDstate {
                name: v.name.into(),
                volume: v.volume,
                minor: v.minor,
                disk_state,
                peer_disk_state,
            }
        })
        .collect()
}

/// `Primary/Unknown` -> (`Primary`, `Unknown`); `Unconfigured` -> both `Unconfigured`.
fn split(text: &str) -> (String, String) {
    match text.split_once('/') {
        Some((a, b)) => (a.into(), b.into()),
        None => (text.into(), text.into()),
    }
}

/// `proc-drbd --json`: the version lines' facts and one entry per minor, in minor order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct JsonProcDrbd {
    /// `8.4.11`: the DRBD release whose behaviour is followed.
    pub version: String,
    pub api: u32,
    pub proto_min: u32,
    pub proto_max: u32,
    /// The second line (`srcversion: tandem-X.Y.Z`).
    pub build: String,
    pub devices: Vec<JsonProcDevice>,
}

/// One minor of `proc-drbd --json`; counters as `/proc/drbd` prints them (KiB where DRBD counts
/// KiB; `al` and `bm` are counts of metadata writes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct JsonProcDevice {
    pub minor: u32,
    pub name: String,
    pub volume: u32,
    /// `cs:`, `Unconfigured` for a StandAlone Diskless Secondary as `/proc/drbd` shows it.
    pub connection_state: String,
    pub role: String,
    pub peer_role: String,
    pub disk_state: String,
    pub peer_disk_state: String,
    /// `A`, `B`, `C`, or `null` without a net configuration.
    pub protocol: Option<String>,
    /// The six flag characters (`r-----`).
    pub flags: String,
    pub ns: u64,
    pub nr: u64,
    pub dw: u64,
    pub dr: u64,
    pub al: u64,
    pub bm: u64,
    pub lo: u64,
    pub pe: u64,
    pub ua: u64,
    pub ap: u64,
    pub ep: u64,
    /// Write ordering: `n`, `d`, `f` or `b`.
    pub wo: String,
    pub oos: u64,
    /// Resync or verify progress while one runs, else `null`.
    pub resync: Option<JsonResync>,
}

/// Resync or verify progress in `proc-drbd --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct JsonResync {
    pub total_kib: u64,
    pub left_kib: u64,
    /// Done, in tenths of a percent as `/proc/drbd` rounds it (`sync'ed: 42.1%` is 421).
    pub done_permille: u64,
    /// The controller's target rate, KiB/s.
    pub want_kib_per_sec: u64,
}

/// The `proc-drbd --json` document.
pub fn proc_drbd_json(views: &[DeviceView], version: &VersionInfo) -> JsonProcDrbd {
    let mut sorted: Vec<&DeviceView> = views.iter().collect();
    sorted.sort_by_key(|v| v.status.minor);
    JsonProcDrbd {
        version: version.release.clone(),
        api: version.api,
        proto_min: version.proto_min,
        proto_max: version.proto_max,
        build: version.build_tag.clone(),
        devices: sorted.into_iter().map(device).collect(),
    }
}

fn device(v: &DeviceView) -> JsonProcDevice {
    let s = &v.status;
    let st = s.state;
    let c = &s.counters;
    let syncing = matches!(
        st.conn,
        repl_core::state::ConnState::SyncSource
            | repl_core::state::ConnState::SyncTarget
            | repl_core::state::ConnState::VerifyS
            | repl_core::state::ConnState::VerifyT
    );
    JsonProcDevice {
        minor: s.minor,
        name: s.resource.clone(),
        volume: s.volume,
        connection_state: if unconfigured(v) {
            UNCONFIGURED.into()
        } else {
            st.conn.to_string()
        },
        role: st.role.to_string(),
        peer_role: st.peer.to_string(),
        disk_state: st.disk.to_string(),
        peer_disk_state: st.pdsk.to_string(),
        protocol: v.protocol.map(|p| p.letter().to_string()),
        flags: flags(v),
        ns: c.ns,
        nr: c.nr,
        dw: c.dw,
        dr: c.dr,
        al: c.al,
        bm: c.bm,
        lo: c.lo,
        pe: c.pe,
        ua: c.ua,
        ap: c.ap,
        ep: v.epochs,
        wo: v.write_ordering.letter().to_string(),
        oos: s.out_of_sync,
        resync: v.resync.as_ref().filter(|_| syncing).map(|p| {
            let (left, done) = progress_per_mille(p);
            JsonResync {
                total_kib: p.total * 4,
                left_kib: left * 4,
                done_permille: done,
                want_kib_per_sec: p.want_kib,
            }
        }),
    }
}

/// Pretty-printed JSON with a final newline.
pub fn to_text<T: Serialize>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value)
        .expect("query JSON has only string keys and finite numbers");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::tests::view;
    use repl_core::state::{ConnState::*, DiskState::*, Role::*};

    #[test]
    fn queries_name_their_volume_and_say_unconfigured_like_the_text() {
        let up = view(
            "r0",
            0,
            3,
            (Primary, Unknown),
            WFConnection,
            (UpToDate, DUnknown),
        );
        let vols = [
            QueryVolume {
                name: "r0",
                volume: 0,
                minor: 3,
                status: Some(&up.status),
            },
            QueryVolume {
                name: "r1",
                volume: 0,
                minor: 4,
                status: None,
            },
        ];
        let text = to_text(&role_json(&vols));
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v[0]["role"], "Primary");
        assert_eq!(v[0]["peer-role"], "Unknown");
        assert_eq!(v[0]["minor"], 3);
        assert_eq!(v[1]["role"], "Unconfigured");
        let c = serde_json::to_value(cstate_json(&vols)).expect("json");
        assert_eq!(c[0]["connection-state"], "WFConnection");
        assert_eq!(c[1]["connection-state"], "Unconfigured");
        let d = serde_json::to_value(dstate_json(&vols)).expect("json");
        assert_eq!(d[0]["disk-state"], "UpToDate");
        assert_eq!(d[0]["peer-disk-state"], "DUnknown");
        assert_eq!(d[1]["peer-disk-state"], "Unconfigured");
    }

    #[test]
    fn proc_drbd_json_carries_the_text_fields() {
        let mut d = view(
            "r0",
            0,
            0,
            (Primary, Unknown),
            WFConnection,
            (UpToDate, DUnknown),
        );
        d.protocol = Some(crate::status::Protocol::C);
        d.status.counters.dw = 1028;
        d.status.out_of_sync = 1028;
        let idle = view(
            "r1",
            0,
            1,
            (Secondary, Unknown),
            StandAlone,
            (Diskless, DUnknown),
        );
        let j = proc_drbd_json(&[idle, d], &VersionInfo::v84("8.4.11", "srcversion: x"));
        let v = serde_json::to_value(&j).expect("json");
        assert_eq!(v["version"], "8.4.11");
        assert_eq!(v["devices"][0]["minor"], 0);
        assert_eq!(v["devices"][0]["connection-state"], "WFConnection");
        assert_eq!(v["devices"][0]["protocol"], "C");
        assert_eq!(v["devices"][0]["flags"], "r-----");
        assert_eq!(v["devices"][0]["dw"], 1028);
        assert_eq!(v["devices"][0]["oos"], 1028);
        assert!(v["devices"][0]["resync"].is_null());
        assert_eq!(v["devices"][1]["connection-state"], "Unconfigured");
        assert!(v["devices"][1]["protocol"].is_null());
    }
}
