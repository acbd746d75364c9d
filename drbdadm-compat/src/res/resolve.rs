//! The effective configuration of one resource on one node: `common` -> resource -> volume
//! inheritance as drbdadm-84 applies it before `up`, DRBD's defaults, values converted into each
//! option's unit and checked against its range and allowed values.
//!
//! Inheritance follows drbdadm's `expand_common` exactly: a parent's option is copied only when
//! the child has none of that name (the parent's first occurrence), and within one list the
//! last occurrence wins, as drbdsetup's option parsing does.

use std::collections::BTreeMap;

use serde::Serialize;
use thiserror::Error;

use super::ast::{Config, Opt, Resource};
use super::units::{strtoll, Unit};

/// Why a resource has no effective configuration on this node.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResolveError {
    #[error("'{0}' not defined in your config (for this host).")]
    UnknownResource(String),
    #[error("'{0}' ignored, since this host ({1}) is not mentioned with an 'on' keyword.")]
    NotOnThisNode(String, String),
    #[error("{file}:{line}: in resource {res}: {hosts} host sections; tandem supports two nodes per resource.")]
    TooManyHosts {
        file: String,
        line: u32,
        res: String,
        hosts: usize,
    },
    #[error("{file}:{line}: in resource {res}: stacked resources are not supported by tandem.")]
    Stacked {
        file: String,
        line: u32,
        res: String,
    },
    /// drbdsetup's wording for a value it refuses.
    #[error("Option --{name}: invalid argument '{value}'")]
    InvalidValue { name: String, value: String },
    #[error("{name} {value} => {got}{unit} out of range [{min}..{max}]{unit}.")]
    OutOfRange {
        name: String,
        value: String,
        got: u64,
        min: u64,
        max: u64,
        unit: String,
    },
    #[error("in resource {res}: resource '{target}' mentioned in 'resync-after' option is not known on this host.")]
    ResyncAfter { res: String, target: String },
    #[error("in resource {res}: volume {vnr}: '{what}' keyword missing.")]
    Missing { res: String, vnr: u32, what: String },
}

macro_rules! str_enum {
    ($(#[$m:meta])* $name:ident { $($var:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
        pub enum $name { $(#[serde(rename = $s)] $var),+ }
        impl $name {
            /// The spelling in drbd.conf.
            pub fn as_str(self) -> &'static str { match self { $($name::$var => $s),+ } }
            /// Reads the drbd.conf spelling.
            pub fn parse(s: &str) -> Option<Self> { match s { $($s => Some($name::$var),)+ _ => None } }
        }
    };
}

str_enum!(
    /// Replication protocol.
    Protocol { A = "A", B = "B", C = "C" }
);
str_enum!(
    /// `disk { on-io-error }`.
    OnIoError { PassOn = "pass_on", CallLocalIoError = "call-local-io-error", Detach = "detach" }
);
str_enum!(
    /// Fencing policy (`disk` in 8.4, `net` in DRBD 9).
    Fencing { DontCare = "dont-care", ResourceOnly = "resource-only", ResourceAndStonith = "resource-and-stonith" }
);
str_enum!(
    /// `after-sb-0pri`: split brain with no Primary.
    AfterSb0 {
        Disconnect = "disconnect",
        DiscardYoungerPrimary = "discard-younger-primary",
        DiscardOlderPrimary = "discard-older-primary",
        DiscardZeroChanges = "discard-zero-changes",
        DiscardLeastChanges = "discard-least-changes",
        DiscardLocal = "discard-local",
        DiscardRemote = "discard-remote",
    }
);
str_enum!(
    /// `after-sb-1pri`: split brain with one Primary.
    AfterSb1 {
        Disconnect = "disconnect",
        Consensus = "consensus",
        ViolentlyAs0p = "violently-as0p",
        DiscardSecondary = "discard-secondary",
        CallPriLostAfterSb = "call-pri-lost-after-sb",
    }
);
str_enum!(
    /// `after-sb-2pri`: split brain with two Primaries.
    AfterSb2 { Disconnect = "disconnect", ViolentlyAs0p = "violently-as0p", CallPriLostAfterSb = "call-pri-lost-after-sb" }
);
str_enum!(
    /// `rr-conflict`.
    RrConflict { Disconnect = "disconnect", Violently = "violently", CallPriLost = "call-pri-lost" }
);
str_enum!(
    /// `on-congestion`.
    OnCongestion { Block = "block", PullAhead = "pull-ahead", Disconnect = "disconnect" }
);
str_enum!(
    /// `on-no-data-accessible`.
    OnNoData { IoError = "io-error", SuspendIo = "suspend-io" }
);
str_enum!(
    /// `read-balancing`.
    ReadBalancing {
        PreferLocal = "prefer-local",
        PreferRemote = "prefer-remote",
        RoundRobin = "round-robin",
        LeastPending = "least-pending",
        WhenCongestedRemote = "when-congested-remote",
        Striping32K = "32K-striping",
        Striping64K = "64K-striping",
        Striping128K = "128K-striping",
        Striping256K = "256K-striping",
        Striping512K = "512K-striping",
        Striping1M = "1M-striping",
    }
);

/// How drbdsetup reads one option.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Number in `unit`, inclusive range, default.
    Num(Unit, u64, u64, u64),
    Bool(bool),
    /// One of the listed spellings; the default is the first.
    Enum(&'static [&'static str]),
    Str,
}

/// Every option drbdsetup-84 takes from the config: (section, name, kind).
pub const OPTIONS: &[(&str, &str, Kind)] = {
    use Kind::*;
    use Unit::*;
    &[
        ("disk", "size", Num(Sectors, 0, 2 << 40, 0)),
        ("disk", "max-bio-bvecs", Num(One, 0, 128, 0)),
        (
            "disk",
            "on-io-error",
            Enum(&["detach", "pass_on", "call-local-io-error"]),
        ),
        (
            "disk",
            "fencing",
            Enum(&["dont-care", "resource-only", "resource-and-stonith"]),
        ),
        ("disk", "disk-barrier", Bool(false)),
        ("disk", "disk-flushes", Bool(true)),
        ("disk", "disk-drain", Bool(true)),
        ("disk", "md-flushes", Bool(true)),
        ("disk", "resync-rate", Num(Kilo, 1, 8 << 20, 250)),
        ("disk", "resync-after", Str),
        ("disk", "al-extents", Num(One, 67, 65534, 1237)),
        ("disk", "al-updates", Bool(true)),
        ("disk", "discard-zeroes-if-aligned", Bool(true)),
        ("disk", "disable-write-same", Bool(false)),
        ("disk", "c-plan-ahead", Num(One, 0, 300, 20)),
        ("disk", "c-delay-target", Num(One, 1, 100, 10)),
        ("disk", "c-fill-target", Num(Sectors, 0, 1 << 20, 100)),
        ("disk", "c-max-rate", Num(Kilo, 250, 4 << 20, 102400)),
        ("disk", "c-min-rate", Num(Kilo, 0, 4 << 20, 250)),
        ("disk", "disk-timeout", Num(One, 0, 6000, 0)),
        (
            "disk",
            "read-balancing",
            Enum(&[
                "prefer-local",
                "prefer-remote",
                "round-robin",
                "least-pending",
                "when-congested-remote",
                "32K-striping",
                "64K-striping",
                "128K-striping",
                "256K-striping",
                "512K-striping",
                "1M-striping",
            ]),
        ),
        ("disk", "rs-discard-granularity", Num(One, 0, 1 << 20, 0)),
        ("net", "protocol", Enum(&["C", "A", "B"])),
        ("net", "timeout", Num(One, 1, 600, 60)),
        ("net", "max-epoch-size", Num(One, 1, 20000, 2048)),
        ("net", "max-buffers", Num(One, 32, 131072, 2048)),
        ("net", "unplug-watermark", Num(One, 1, 131072, 128)),
        ("net", "connect-int", Num(One, 1, 120, 10)),
        ("net", "ping-int", Num(One, 1, 120, 10)),
        ("net", "sndbuf-size", Num(One, 0, 10 << 20, 0)),
        ("net", "rcvbuf-size", Num(One, 0, 10 << 20, 0)),
        ("net", "ko-count", Num(One, 0, 200, 7)),
        ("net", "allow-two-primaries", Bool(false)),
        ("net", "cram-hmac-alg", Str),
        ("net", "shared-secret", Str),
        (
            "net",
            "after-sb-0pri",
            Enum(&[
                "disconnect",
                "discard-younger-primary",
                "discard-older-primary",
                "discard-zero-changes",
                "discard-least-changes",
                "discard-local",
                "discard-remote",
            ]),
        ),
        (
            "net",
            "after-sb-1pri",
            Enum(&[
                "disconnect",
                "consensus",
                "violently-as0p",
                "discard-secondary",
                "call-pri-lost-after-sb",
            ]),
        ),
        (
            "net",
            "after-sb-2pri",
            Enum(&["disconnect", "violently-as0p", "call-pri-lost-after-sb"]),
        ),
        ("net", "always-asbp", Bool(false)),
        (
            "net",
            "rr-conflict",
            Enum(&["disconnect", "violently", "call-pri-lost"]),
        ),
        ("net", "ping-timeout", Num(One, 1, 300, 5)),
        ("net", "data-integrity-alg", Str),
        ("net", "tcp-cork", Bool(true)),
        (
            "net",
            "on-congestion",
            Enum(&["block", "pull-ahead", "disconnect"]),
        ),
        ("net", "congestion-fill", Num(Sectors, 0, 10 << 21, 0)),
        ("net", "congestion-extents", Num(One, 67, 65534, 1237)),
        ("net", "csums-alg", Str),
        ("net", "csums-after-crash-only", Bool(false)),
        ("net", "verify-alg", Str),
        ("net", "use-rle", Bool(true)),
        ("net", "socket-check-timeout", Num(One, 0, 300, 0)),
        ("options", "cpu-mask", Str),
        (
            "options",
            "on-no-data-accessible",
            Enum(&["io-error", "suspend-io"]),
        ),
        ("startup", "wfc-timeout", Num(One, 0, 300000, 0)),
        ("startup", "degr-wfc-timeout", Num(One, 0, 300000, 0)),
        ("startup", "outdated-wfc-timeout", Num(One, 0, 300000, 0)),
        ("startup", "wait-after-sb", Bool(false)),
    ]
};

/// The table entry for an option name.
pub fn option_kind(name: &str) -> Option<(&'static str, Kind)> {
    OPTIONS
        .iter()
        .find(|(_, n, _)| *n == name)
        .map(|(s, _, k)| (*s, *k))
}

/// `common`'s options are copied to the child when the child has none of that name.
fn expand(parent: &[Opt], child: &[Opt]) -> Vec<Opt> {
    let mut out = child.to_vec();
    for o in parent {
        if !out.iter().any(|x| x.name == o.name) {
            out.insert(0, o.clone());
        }
    }
    out
}

/// The last value given for each option name (what drbdsetup ends up using).
fn last_values(opts: &[Opt]) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for o in opts {
        m.insert(
            o.name.clone(),
            o.value.clone().unwrap_or_else(|| "yes".into()),
        );
    }
    m
}

/// Reads a numeric option into its unit, checking drbdsetup's range.
fn num(m: &BTreeMap<String, String>, name: &str) -> Result<u64, ResolveError> {
    let Some((_, Kind::Num(unit, min, max, def))) = option_kind(name) else {
        return Ok(0);
    };
    let Some(v) = m.get(name) else { return Ok(def) };
    let got = strtoll(v, unit).map_err(|_| ResolveError::InvalidValue {
        name: name.into(),
        value: v.clone(),
    })?;
    if got < min || got > max {
        return Err(ResolveError::OutOfRange {
            name: name.into(),
            value: v.clone(),
            got,
            min,
            max,
            unit: unit.suffix().into(),
        });
    }
    Ok(got)
}

fn boolean(m: &BTreeMap<String, String>, name: &str) -> Result<bool, ResolveError> {
    let Some((_, Kind::Bool(def))) = option_kind(name) else {
        return Ok(false);
    };
    match m.get(name).map(String::as_str) {
        None => Ok(def),
        Some("yes") => Ok(true),
        Some("no") => Ok(false),
        Some(v) => Err(ResolveError::InvalidValue {
            name: name.into(),
            value: v.into(),
        }),
    }
}

fn enumerated<T>(
    m: &BTreeMap<String, String>,
    name: &str,
    default: T,
    parse: fn(&str) -> Option<T>,
) -> Result<T, ResolveError> {
    match m.get(name) {
        None => Ok(default),
        Some(v) => parse(v).ok_or_else(|| ResolveError::InvalidValue {
            name: name.into(),
            value: v.clone(),
        }),
    }
}

fn string(m: &BTreeMap<String, String>, name: &str) -> Option<String> {
    m.get(name).cloned()
}

/// Effective `disk` options of one volume. Rates in KiB/s, `c-fill-target` and `size` in
/// sectors, `c-plan-ahead`, `c-delay-target` and `disk-timeout` in 0.1 s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskOptions {
    pub size: u64,
    pub on_io_error: OnIoError,
    pub fencing: Fencing,
    pub disk_barrier: bool,
    pub disk_flushes: bool,
    pub disk_drain: bool,
    pub md_flushes: bool,
    pub resync_rate: u64,
    /// Minor of the volume this one resyncs after.
    pub resync_after: Option<u32>,
    pub al_extents: u64,
    pub al_updates: bool,
    pub discard_zeroes_if_aligned: bool,
    pub disable_write_same: bool,
    pub c_plan_ahead: u64,
    pub c_delay_target: u64,
    pub c_fill_target: u64,
    pub c_max_rate: u64,
    pub c_min_rate: u64,
    pub disk_timeout: u64,
    pub read_balancing: ReadBalancing,
    pub rs_discard_granularity: u64,
    pub max_bio_bvecs: u64,
}

/// Effective `net` options. Timeouts in 0.1 s except `connect-int`/`ping-int` (s); buffer
/// sizes in bytes; `congestion-fill` in sectors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetOptions {
    pub protocol: Protocol,
    pub timeout: u64,
    pub max_epoch_size: u64,
    pub max_buffers: u64,
    pub unplug_watermark: u64,
    pub connect_int: u64,
    pub ping_int: u64,
    pub sndbuf_size: u64,
    pub rcvbuf_size: u64,
    pub ko_count: u64,
    pub allow_two_primaries: bool,
    pub cram_hmac_alg: Option<String>,
    pub shared_secret: Option<String>,
    pub after_sb_0pri: AfterSb0,
    pub after_sb_1pri: AfterSb1,
    pub after_sb_2pri: AfterSb2,
    pub always_asbp: bool,
    pub rr_conflict: RrConflict,
    pub ping_timeout: u64,
    pub data_integrity_alg: Option<String>,
    pub tcp_cork: bool,
    pub on_congestion: OnCongestion,
    pub congestion_fill: u64,
    pub congestion_extents: u64,
    pub csums_alg: Option<String>,
    pub csums_after_crash_only: bool,
    pub verify_alg: Option<String>,
    pub use_rle: bool,
    pub socket_check_timeout: u64,
}

/// Effective `startup` options (seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StartupOptions {
    pub wfc_timeout: u64,
    pub degr_wfc_timeout: u64,
    pub outdated_wfc_timeout: u64,
    pub wait_after_sb: bool,
    pub become_primary_on: Vec<String>,
}

/// Effective resource `options`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResourceOptions {
    pub cpu_mask: Option<String>,
    pub on_no_data_accessible: OnNoData,
}

/// Where the metadata lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum MetaDisk {
    Internal,
    /// `meta-disk DEV;` (flexible size).
    FlexExternal {
        device: String,
    },
    /// `meta-disk DEV [IDX];` (fixed 128 MiB slots).
    Indexed {
        device: String,
        index: u32,
    },
}

/// One volume on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EffectiveVolume {
    pub vnr: u32,
    pub minor: u32,
    pub device: String,
    /// Backing device; `None` for `disk none` (diskless).
    pub disk: Option<String>,
    pub meta_disk: MetaDisk,
    pub disk_options: DiskOptions,
    /// The option list drbdadm would pass to `attach`, in its order.
    pub attach_options: Vec<(String, String)>,
}

/// An endpoint: a host section's name(s) and address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub names: Vec<String>,
    pub af: String,
    pub addr: String,
    pub port: u16,
    pub node_id: Option<u32>,
}

/// A resource as it applies to one node: the typed model the daemon uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EffectiveResource {
    pub name: String,
    pub node: String,
    pub local: Endpoint,
    pub peer: Option<Endpoint>,
    pub volumes: Vec<EffectiveVolume>,
    pub net: NetOptions,
    /// The option list drbdadm would pass to `connect`, in its order.
    pub connect_options: Vec<(String, String)>,
    pub startup: StartupOptions,
    /// The `startup` options as written (common first), as drbdadm passes them to
    /// `wait-connect`.
    pub startup_options: Vec<(String, String)>,
    pub options: ResourceOptions,
    /// The resource `options` as written (common first), as drbdadm passes them to
    /// `new-resource`.
    pub resource_options: Vec<(String, String)>,
    pub handlers: BTreeMap<String, String>,
}

fn endpoint(h: &super::ast::Host) -> Option<Endpoint> {
    let a = h.address.as_ref()?;
    Some(Endpoint {
        names: h.on_hosts.clone(),
        af: a.af.clone(),
        addr: a.addr.clone(),
        port: u16::try_from(super::units::atoi(&a.port)).unwrap_or(0),
        node_id: h.node_id,
    })
}

fn disk_options(
    m: &BTreeMap<String, String>,
    resync_after: Option<u32>,
) -> Result<DiskOptions, ResolveError> {
    Ok(DiskOptions {
        size: num(m, "size")?,
        on_io_error: enumerated(m, "on-io-error", OnIoError::Detach, OnIoError::parse)?,
        fencing: enumerated(m, "fencing", Fencing::DontCare, Fencing::parse)?,
        disk_barrier: boolean(m, "disk-barrier")?,
        disk_flushes: boolean(m, "disk-flushes")?,
        disk_drain: boolean(m, "disk-drain")?,
        md_flushes: boolean(m, "md-flushes")?,
        resync_rate: num(m, "resync-rate")?,
        resync_after,
        al_extents: num(m, "al-extents")?,
        al_updates: boolean(m, "al-updates")?,
        discard_zeroes_if_aligned: boolean(m, "discard-zeroes-if-aligned")?,
        disable_write_same: boolean(m, "disable-write-same")?,
        c_plan_ahead: num(m, "c-plan-ahead")?,
        c_delay_target: num(m, "c-delay-target")?,
        c_fill_target: num(m, "c-fill-target")?,
        c_max_rate: num(m, "c-max-rate")?,
        c_min_rate: num(m, "c-min-rate")?,
        disk_timeout: num(m, "disk-timeout")?,
        read_balancing: enumerated(
            m,
            "read-balancing",
            ReadBalancing::PreferLocal,
            ReadBalancing::parse,
        )?,
        rs_discard_granularity: num(m, "rs-discard-granularity")?,
        max_bio_bvecs: num(m, "max-bio-bvecs")?,
    })
}

fn pairs(opts: &[Opt]) -> Vec<(String, String)> {
    opts.iter()
        .map(|o| {
            (
                o.name.clone(),
                o.value.clone().unwrap_or_else(|| "yes".into()),
            )
        })
        .collect()
}

/// The minor of `target` (`RES` or `RES/VOL`) on this node.
fn resync_after_minor(config: &Config, res: &str, target: &str) -> Result<u32, ResolveError> {
    let err = || ResolveError::ResyncAfter {
        res: res.into(),
        target: target.into(),
    };
    let (name, vol) = match target.split_once('/') {
        Some((n, v)) => (n, Some(v)),
        None => (target, None),
    };
    let r = config
        .resources
        .iter()
        .find(|r| r.name == name && !r.ignore)
        .ok_or_else(err)?;
    let me = r.me.map(|m| &r.hosts[m]).ok_or_else(err)?;
    let v = match vol {
        Some(v) => {
            let n = strtoll(v, Unit::One).map_err(|_| err())?;
            me.volumes.iter().find(|x| u64::from(x.vnr) == n)
        }
        None if me.volumes.len() == 1 => me.volumes.first(),
        None => None,
    };
    v.and_then(|v| v.minor).ok_or_else(err)
}

/// The effective configuration of `res` on this node (the placed config from
/// [`super::validate::post_parse`]).
///
/// # Errors
/// The resource is not on this node, has more than two hosts, or a value is out of range or
/// not allowed (for after-sb policies: for the Primary count of the option).
pub fn resolve(
    config: &Config,
    res: &Resource,
    node: &str,
) -> Result<EffectiveResource, ResolveError> {
    if res.hosts.len() > 2 {
        return Err(ResolveError::TooManyHosts {
            file: res.config_file.clone(),
            line: res.start_line,
            res: res.name.clone(),
            hosts: res.hosts.len(),
        });
    }
    if res.stacked_on_one {
        return Err(ResolveError::Stacked {
            file: res.config_file.clone(),
            line: res.start_line,
            res: res.name.clone(),
        });
    }
    let me_idx = res
        .me
        .ok_or_else(|| ResolveError::NotOnThisNode(res.name.clone(), node.into()))?;
    let me = &res.hosts[me_idx];
    let peer = res
        .hosts
        .iter()
        .enumerate()
        .find(|(i, _)| *i != me_idx)
        .map(|(_, h)| h);
    let empty = Resource::default();
    let common = config.common.as_ref().unwrap_or(&empty);

    let mut net_list = expand(&common.net_options, &res.net_options);
    // DRBD 9 `connection { net { ... } }` and `net { fencing }` refine the resource's net.
    for c in &res.connections {
        for o in &c.net_options {
            net_list.push(o.clone());
        }
    }
    let mut fencing_from_net = None;
    net_list.retain(|o| {
        if o.name == "fencing" {
            fencing_from_net.clone_from(&o.value);
            false
        } else {
            true
        }
    });
    for o in &mut net_list {
        if o.name == "after-sb-0pri" {
            if let Some(n) = o
                .value
                .as_deref()
                .and_then(|v| v.strip_prefix("discard-node-"))
            {
                let v = if n == node {
                    "discard-local"
                } else {
                    "discard-remote"
                };
                o.value = Some(v.into());
            }
        }
    }
    let nm = last_values(&net_list);
    let net = NetOptions {
        protocol: enumerated(&nm, "protocol", Protocol::C, |s| {
            Protocol::parse(&s.to_ascii_uppercase())
        })?,
        timeout: num(&nm, "timeout")?,
        max_epoch_size: num(&nm, "max-epoch-size")?,
        max_buffers: num(&nm, "max-buffers")?,
        unplug_watermark: num(&nm, "unplug-watermark")?,
        connect_int: num(&nm, "connect-int")?,
        ping_int: num(&nm, "ping-int")?,
        sndbuf_size: num(&nm, "sndbuf-size")?,
        rcvbuf_size: num(&nm, "rcvbuf-size")?,
        ko_count: num(&nm, "ko-count")?,
        allow_two_primaries: boolean(&nm, "allow-two-primaries")?,
        cram_hmac_alg: string(&nm, "cram-hmac-alg"),
        shared_secret: string(&nm, "shared-secret"),
        after_sb_0pri: enumerated(&nm, "after-sb-0pri", AfterSb0::Disconnect, AfterSb0::parse)?,
        after_sb_1pri: enumerated(&nm, "after-sb-1pri", AfterSb1::Disconnect, AfterSb1::parse)?,
        after_sb_2pri: enumerated(&nm, "after-sb-2pri", AfterSb2::Disconnect, AfterSb2::parse)?,
        always_asbp: boolean(&nm, "always-asbp")?,
        rr_conflict: enumerated(
            &nm,
            "rr-conflict",
            RrConflict::Disconnect,
            RrConflict::parse,
        )?,
        ping_timeout: num(&nm, "ping-timeout")?,
        data_integrity_alg: string(&nm, "data-integrity-alg"),
        tcp_cork: boolean(&nm, "tcp-cork")?,
        on_congestion: enumerated(
            &nm,
            "on-congestion",
            OnCongestion::Block,
            OnCongestion::parse,
        )?,
        congestion_fill: num(&nm, "congestion-fill")?,
        congestion_extents: num(&nm, "congestion-extents")?,
        csums_alg: string(&nm, "csums-alg"),
        csums_after_crash_only: boolean(&nm, "csums-after-crash-only")?,
        verify_alg: string(&nm, "verify-alg"),
        use_rle: boolean(&nm, "use-rle")?,
        socket_check_timeout: num(&nm, "socket-check-timeout")?,
    };

    let res_disk = expand(&common.disk_options, &res.disk_options);
    let mut volumes = Vec::new();
    for v in &me.volumes {
        let mut list = expand(&res_disk, &v.disk_options);
        if let Some(rv) = res.volumes.iter().find(|x| x.vnr == v.vnr) {
            list = expand(&rv.disk_options, &list);
        }
        if let Some(f) = &fencing_from_net {
            if !list.iter().any(|o| o.name == "fencing") {
                list.push(Opt::new("fencing", f.clone()));
            }
        }
        let mut resync_after = None;
        for o in &mut list {
            if o.name == "resync-after" {
                let t = o.value.clone().unwrap_or_default();
                let m = resync_after_minor(config, &res.name, &t)?;
                o.value = Some(m.to_string());
                resync_after = Some(m);
            }
        }
        let dm = last_values(&list);
        let missing = |what: &str| ResolveError::Missing {
            res: res.name.clone(),
            vnr: v.vnr,
            what: what.into(),
        };
        let minor = v.minor.ok_or_else(|| missing("device"))?;
        let meta = match (v.meta_disk.as_deref(), v.meta_index.as_deref()) {
            (Some("internal"), _) => MetaDisk::Internal,
            (Some(d), Some("flexible")) => MetaDisk::FlexExternal { device: d.into() },
            (Some(d), Some(i)) => MetaDisk::Indexed {
                device: d.into(),
                index: super::units::atoi(i),
            },
            _ => return Err(missing("meta-disk")),
        };
        let disk = v.disk.clone().ok_or_else(|| missing("disk"))?;
        volumes.push(EffectiveVolume {
            vnr: v.vnr,
            minor,
            device: v
                .device
                .clone()
                .unwrap_or_else(|| format!("/dev/drbd{minor}")),
            disk: (disk != "none").then_some(disk),
            meta_disk: meta,
            disk_options: disk_options(&dm, resync_after)?,
            attach_options: pairs(&list),
        });
    }

    let startup_list = expand(&common.startup_options, &res.startup_options);
    let sm = last_values(&startup_list);
    let bpo = if res.become_primary_on.is_empty() {
        common.become_primary_on.clone()
    } else {
        res.become_primary_on.clone()
    };
    let startup = StartupOptions {
        wfc_timeout: num(&sm, "wfc-timeout")?,
        degr_wfc_timeout: num(&sm, "degr-wfc-timeout")?,
        outdated_wfc_timeout: num(&sm, "outdated-wfc-timeout")?,
        wait_after_sb: boolean(&sm, "wait-after-sb")?,
        become_primary_on: bpo,
    };
    let res_list = expand(&common.res_options, &res.res_options);
    let om = last_values(&res_list);
    let options = ResourceOptions {
        cpu_mask: string(&om, "cpu-mask"),
        on_no_data_accessible: enumerated(
            &om,
            "on-no-data-accessible",
            OnNoData::IoError,
            OnNoData::parse,
        )?,
    };
    let handlers = last_values(&expand(&common.handlers, &res.handlers));
    let local = endpoint(me).ok_or_else(|| ResolveError::Missing {
        res: res.name.clone(),
        vnr: 0,
        what: "address".into(),
    })?;
    Ok(EffectiveResource {
        name: res.name.clone(),
        node: node.into(),
        local,
        peer: peer.and_then(endpoint),
        volumes,
        net,
        connect_options: pairs(&net_list),
        startup,
        startup_options: pairs(&startup_list),
        options,
        resource_options: pairs(&res_list),
        handlers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::res::parser::{ParseOptions, Parser};
    use crate::res::validate::{post_parse, NodeEnv};

    fn load(src: &str, node: &str) -> Config {
        let opts = ParseOptions {
            file: "t.res".into(),
            save: "/tmp/t.res".into(),
            cwd: "/tmp".into(),
            no_tty: true,
            follow_includes: false,
        };
        let (r, mut s) = Parser::parse(src.as_bytes().to_vec(), &opts);
        let mut c = r.unwrap();
        let env = NodeEnv {
            nodename: node.into(),
            ..NodeEnv::default()
        };
        post_parse(&mut c, &env, &mut s).unwrap();
        c
    }

    const R: &str = "common { net { protocol B; max-buffers 8000; } disk { resync-rate 60M; } }\n\
        resource r { device minor 1; disk /d; meta-disk internal;\n\
        net { after-sb-0pri discard-node-b; } disk { c-fill-target 1M; }\n\
        on a { address 10.0.0.1:7789; } on b { address 10.0.0.2:7789; } }";

    #[test]
    fn inheritance_defaults_and_units() {
        let c = load(R, "a");
        let e = resolve(&c, &c.resources[0], "a").unwrap();
        assert_eq!(e.net.protocol, Protocol::B);
        assert_eq!(e.net.max_buffers, 8000);
        assert_eq!(e.net.ping_timeout, 5);
        assert_eq!(e.net.after_sb_0pri, AfterSb0::DiscardRemote);
        let d = &e.volumes[0].disk_options;
        assert_eq!(d.resync_rate, 60 * 1024);
        assert_eq!(d.c_fill_target, 2048);
        assert_eq!(d.al_extents, 1237);
        assert_eq!(e.local.addr, "10.0.0.1");
        assert_eq!(e.peer.as_ref().map(|p| p.port), Some(7789));
        let c = load(R, "b");
        let e = resolve(&c, &c.resources[0], "b").unwrap();
        assert_eq!(e.net.after_sb_0pri, AfterSb0::DiscardLocal);
    }

    #[test]
    fn after_sb_policy_must_fit_its_primary_count() {
        let src = R.replace("discard-node-b", "discard-secondary");
        let c = load(&src, "a");
        let e = resolve(&c, &c.resources[0], "a").unwrap_err();
        assert_eq!(
            e.to_string(),
            "Option --after-sb-0pri: invalid argument 'discard-secondary'"
        );
    }

    #[test]
    fn three_hosts_are_refused() {
        let src = R.replace("on b {", "on c { address 10.0.0.3:7789; } on b {");
        let c = load(&src, "a");
        let e = resolve(&c, &c.resources[0], "a").unwrap_err();
        assert!(e
            .to_string()
            .contains("tandem supports two nodes per resource"));
    }
}
