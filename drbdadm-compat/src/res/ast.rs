//! The configuration as written: sections, option lists in file order, host and volume
//! sections, with the rewrites drbdadm-84 applies while parsing (8.3 `syncer`, resource-level
//! `protocol`, `no-` flags, deprecated option names).

use serde::Serialize;

/// One `name value;` (or bare `name;`) inside an option section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Opt {
    pub name: String,
    pub value: Option<String>,
    /// The value is printed as is by `dump` (not escaped); set for `become-primary-on`.
    pub escaped: bool,
}

impl Opt {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Opt {
            name: name.into(),
            value: Some(value.into()),
            escaped: false,
        }
    }
}

/// First option named `name` in a list.
pub fn find_opt<'a>(opts: &'a [Opt], name: &str) -> Option<&'a Opt> {
    opts.iter().find(|o| o.name == name)
}

/// `ADDRESS_FAMILY ADDR:PORT` as written (`ipv4`, `ipv6`, `ssocks`, `sdp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Address {
    pub af: String,
    pub addr: String,
    pub port: String,
}

/// A `volume N { ... }` block, or the implicit volume 0 of statements written directly in a
/// resource or host section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Volume {
    pub vnr: u32,
    pub implicit: bool,
    /// Device path, `/dev/drbdN` or `/dev/drbd_NAME`.
    pub device: Option<String>,
    pub minor: Option<u32>,
    pub disk: Option<String>,
    pub meta_disk: Option<String>,
    /// `internal`, `flexible` or an index for the legacy fixed-size external layout.
    pub meta_index: Option<String>,
    pub disk_options: Vec<Opt>,
}

/// `proxy on HOST { inside ...; outside ...; options { ... } }` inside a host section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Proxy {
    pub on_hosts: Vec<String>,
    pub inside: Option<Address>,
    pub outside: Option<Address>,
    pub options: Vec<Opt>,
    pub plugins: Vec<Opt>,
}

/// An `on`, `floating`, `stacked-on-top-of`, `_this_host` or `_remote_host` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Host {
    /// Names the section applies to; for `floating`, the address as text.
    pub on_hosts: Vec<String>,
    pub by_address: bool,
    /// `stacked-on-top-of NAME`.
    pub lower_name: Option<String>,
    pub address: Option<Address>,
    pub alt_address: Option<Address>,
    pub volumes: Vec<Volume>,
    pub res_options: Vec<Opt>,
    pub proxy: Option<Proxy>,
    pub config_line: u32,
    /// DRBD 9 `node-id N;` (not understood by drbdadm-84).
    pub node_id: Option<u32>,
    /// For `stacked-on-top-of`: index of the lower resource, once resolved.
    #[serde(skip)]
    pub lower: Option<usize>,
}

/// DRBD 9 `connection { host A; host B; net { ... } }` (not understood by drbdadm-84).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Connection {
    pub hosts: Vec<String>,
    pub net_options: Vec<Opt>,
    pub line: u32,
}

/// A `resource NAME { ... }` section, or the `common { ... }` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Resource {
    pub name: String,
    /// Absolute path of the file the section is in.
    pub config_file: String,
    /// The line of the section's opening brace.
    pub start_line: u32,
    pub hosts: Vec<Host>,
    /// Resource-level volumes; their device/disk/meta-disk are copied into each host.
    pub volumes: Vec<Volume>,
    pub net_options: Vec<Opt>,
    pub disk_options: Vec<Opt>,
    pub startup_options: Vec<Opt>,
    pub handlers: Vec<Opt>,
    pub res_options: Vec<Opt>,
    pub proxy_options: Vec<Opt>,
    pub proxy_plugins: Vec<Opt>,
    pub become_primary_on: Vec<String>,
    pub stacked_timeouts: bool,
    pub stacked_on_one: bool,
    pub connections: Vec<Connection>,
    /// Index in `hosts` of this node's section, once placed.
    #[serde(skip)]
    pub me: Option<usize>,
    /// Index in `hosts` of the peer's section, once placed.
    #[serde(skip)]
    pub peer: Option<usize>,
    /// No host section applies to this node.
    #[serde(skip)]
    pub ignore: bool,
    /// This node's section is `stacked-on-top-of`.
    #[serde(skip)]
    pub stacked: bool,
}

/// `usage-count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UsageCount {
    Yes,
    No,
    Ask,
}

/// The `global { ... }` section, with drbd-utils' initial values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Global {
    pub usage_count: UsageCount,
    /// 0 = not set.
    pub minor_count: u32,
    pub dialog_refresh: u32,
    pub disable_ip_verification: bool,
    pub udev_always_use_vnr: bool,
    pub cmd_timeout_short: u32,
    pub cmd_timeout_medium: u32,
    pub cmd_timeout_long: u32,
}

/// drbd-utils' compiled-in `cmd-timeout-*` defaults, which the dump compares against.
pub const CMD_TIMEOUT_SHORT_DEF: u32 = 5;
pub const CMD_TIMEOUT_MEDIUM_DEF: u32 = 121;
pub const CMD_TIMEOUT_LONG_DEF: u32 = 600;

impl Default for Global {
    fn default() -> Self {
        // drbd-utils initialises the medium timeout with the long default and leaves the long
        // one at 0, so a dump without `cmd-timeout-*` still prints both.
        Global {
            usage_count: UsageCount::Ask,
            minor_count: 0,
            dialog_refresh: 1,
            disable_ip_verification: false,
            udev_always_use_vnr: false,
            cmd_timeout_short: CMD_TIMEOUT_SHORT_DEF,
            cmd_timeout_medium: CMD_TIMEOUT_LONG_DEF,
            cmd_timeout_long: 0,
        }
    }
}

/// A whole parsed configuration (the main file and its includes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Config {
    /// Absolute path of the main file (`STDIN` when read from standard input).
    pub config_file: String,
    pub global: Global,
    pub common: Option<Resource>,
    pub resources: Vec<Resource>,
}
