//! What drbdadm-84 does between parsing and running a command: find this node's host section in
//! each resource (`on` name or local `floating` address), its peer, and the checks that need
//! them (`resync-after` targets, `discard-node-NAME`, `become-primary-on`, local IPs).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::ast::{find_opt, Config, Opt, Resource};
use super::parser::{ParseError, Session, E_CONFIG_INVALID};

/// The node's identity: its name and the addresses of its interfaces.
#[derive(Debug, Clone, Default)]
pub struct NodeEnv {
    pub nodename: String,
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
}

impl NodeEnv {
    /// Whether `addr` of family `af` is configured on this node (other families: yes).
    pub fn have_ip(&self, af: &str, addr: &str) -> bool {
        match af {
            "ipv4" => addr.parse::<Ipv4Addr>().is_ok_and(|a| self.v4.contains(&a)),
            "ipv6" => {
                let a = addr.split('%').next().unwrap_or("");
                a.parse::<Ipv6Addr>().is_ok_and(|a| self.v6.contains(&a))
            }
            _ => true,
        }
    }

    /// This machine: `uname -n` (or `name` when given) and its interface addresses.
    pub fn local(name: Option<String>) -> Self {
        let nodename = name.unwrap_or_else(uname_n);
        let (v4, v6) = local_addrs();
        NodeEnv { nodename, v4, v6 }
    }
}

/// The kernel's node name, as `uname -n` prints it.
pub fn uname_n() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim_end_matches('\n').to_string())
        .unwrap_or_default()
}

/// IPv4 addresses from `/proc/net/fib_trie` local entries and IPv6 ones from
/// `/proc/net/if_inet6`.
fn local_addrs() -> (Vec<Ipv4Addr>, Vec<Ipv6Addr>) {
    let mut v4 = Vec::new();
    if let Ok(s) = std::fs::read_to_string("/proc/net/fib_trie") {
        let lines: Vec<&str> = s.lines().collect();
        for w in lines.windows(2) {
            if w[1].trim() == "/32 host LOCAL" {
                if let Some(a) = w[0].trim().strip_prefix("|-- ") {
                    if let Ok(ip) = a.parse::<Ipv4Addr>() {
                        if !v4.contains(&ip) {
                            v4.push(ip);
                        }
                    }
                }
            }
        }
    }
    let mut v6 = Vec::new();
    if let Ok(s) = std::fs::read_to_string("/proc/net/if_inet6") {
        for l in s.lines() {
            let hex = l.split_whitespace().next().unwrap_or("");
            if hex.len() == 32 {
                if let Ok(n) = u128::from_str_radix(hex, 16) {
                    v6.push(Ipv6Addr::from(n));
                }
            }
        }
    }
    (v4, v6)
}

fn host_label(res: &Resource, idx: usize, config: &Config) -> (String, String) {
    let h = &res.hosts[idx];
    match h.lower {
        Some(l) => (
            "stacked-on-top-of".into(),
            config
                .resources
                .get(l)
                .map(|r| r.name.clone())
                .unwrap_or_default(),
        ),
        None => ("on".into(), h.on_hosts.join(" ")),
    }
}

/// drbdadm's `post_parse`: resolves `stacked-on-top-of`, then finds this node's section in every
/// resource (marking the others ignored).
///
/// # Errors
/// A fatal uniqueness conflict among stacked devices.
pub fn post_parse(config: &mut Config, env: &NodeEnv, s: &mut Session) -> Result<(), ParseError> {
    let n = config.resources.len();
    for ri in 0..n {
        if !config.resources[ri].stacked_on_one {
            continue;
        }
        for hi in 0..config.resources[ri].hosts.len() {
            let Some(lower) = config.resources[ri].hosts[hi].lower_name.clone() else {
                continue;
            };
            let Some(li) = config.resources.iter().position(|r| r.name == lower) else {
                let r = &config.resources[ri];
                let msg = format!(
                    "{}:{}: in resource {}, referenced resource '{lower}' not defined.\n",
                    r.config_file, r.start_line, r.name
                );
                s.error(r.start_line, msg);
                continue;
            };
            let lower_hosts: Vec<Vec<String>> = config.resources[li]
                .hosts
                .iter()
                .filter(|h| h.lower_name.is_none())
                .map(|h| h.on_hosts.clone())
                .collect();
            for names in lower_hosts {
                for h in &names {
                    let vols = config.resources[ri].hosts[hi].volumes.clone();
                    for v in &vols {
                        s.check_uniq(
                            "device-minor",
                            format!("device-minor:{h}:{}", v.minor.unwrap_or(u32::MAX)),
                        )?;
                    }
                    for v in &vols {
                        if let Some(d) = &v.device {
                            s.check_uniq("device", format!("device:{h}:{d}"))?;
                        }
                    }
                }
                config.resources[ri].hosts[hi].on_hosts.extend(names);
            }
            config.resources[ri].hosts[hi].lower = Some(li);
            let host = config.resources[ri].hosts[hi].clone();
            if let Some(a) = &host.address {
                if super::parser::addr_scope_local(&a.addr) {
                    for h in &host.on_hosts {
                        s.check_uniq("IP", format!("{h}:{}:{}", a.addr, a.port))?;
                    }
                }
            }
        }
    }
    for pass_stacked in [false, true] {
        for ri in 0..n {
            if config.resources[ri].stacked_on_one == pass_stacked {
                set_me(config, ri, env, s);
            }
        }
    }
    Ok(())
}

fn set_me(config: &mut Config, ri: usize, env: &NodeEnv, s: &mut Session) {
    let mut me: Option<usize> = None;
    let res = &config.resources[ri];
    let mut stacked = false;
    for (hi, h) in res.hosts.iter().enumerate() {
        let matched = if h.by_address {
            let a = h.address.as_ref();
            a.is_some_and(|a| env.have_ip(&a.af, &a.addr) || env.nodename == a.addr)
        } else if let Some(l) = h.lower {
            config.resources.get(l).is_some_and(|lr| lr.me.is_some())
        } else if h.on_hosts.is_empty() {
            false
        } else {
            h.on_hosts.contains(&env.nodename) || h.on_hosts[0] == "_this_host"
        };
        if !matched {
            continue;
        }
        if let Some(m) = me {
            let (k1, n1) = host_label(res, m, config);
            let (k2, n2) = host_label(res, hi, config);
            let msg = format!(
                "{}:{}: in resource {}, {k1} {n1} {{ ... }} ... {k2} {n2} {{ ... }}:\n\tThere are multiple host sections for this node.\n",
                res.config_file, h.config_line, res.name
            );
            s.error(h.config_line, msg);
        }
        me = Some(hi);
        if h.lower.is_some() {
            stacked = true;
        }
    }
    let res = &mut config.resources[ri];
    res.me = me;
    res.stacked = stacked;
    res.ignore = me.is_none();
}

/// drbdadm's `set_peer_in_resource` without `--peer`: the other section of a two-host resource.
pub fn set_peer(res: &mut Resource) {
    if res.ignore || res.hosts.len() != 2 {
        return;
    }
    if let Some(m) = res.me {
        res.peer = Some(1 - m);
    }
}

/// drbdadm's `validate_resource` for every resource, as run before any resource command.
///
/// # Errors
/// The configuration is invalid (exit 10), with the messages in the session.
pub fn validate_all(config: &mut Config, s: &mut Session) -> Result<(), ParseError> {
    validate_and_expand(config, s, false)
}

/// As [`validate_all`]; with `expand` (every command but `dump`), also checks each host
/// volume's `resync-after` target after `common` and resource disk options are inherited, the
/// way drbdadm does before running a command.
///
/// # Errors
/// The configuration is invalid (exit 10), with the messages in the session.
pub fn validate_and_expand(
    config: &mut Config,
    s: &mut Session,
    expand: bool,
) -> Result<(), ParseError> {
    // drbdadm inherits the disk options into every host volume before validating.
    let expanded: Vec<Vec<Vec<Opt>>> = (0..config.resources.len())
        .map(|ri| expanded_volume_options(config, ri))
        .collect();
    for (ri, lists) in expanded.iter().enumerate() {
        validate_resource(config, ri, s);
        if s.valid && expand {
            convert_after(config, ri, lists, s);
        }
        if !s.valid {
            return Err(ParseError {
                file: s.file.clone(),
                line: s.fline,
                message: String::new(),
                exit_code: E_CONFIG_INVALID,
            });
        }
    }
    Ok(())
}

fn validate_resource(config: &mut Config, ri: usize, s: &mut Session) {
    let mut k = 0;
    while k < config.resources[ri].disk_options.len() {
        let o = &config.resources[ri].disk_options[k];
        if o.name != "resync-after" {
            k += 1;
            continue;
        }
        let val = o.value.clone().unwrap_or_default();
        let target = val.split('/').next().unwrap_or("");
        let found = config.resources.iter().find(|r| r.name == target);
        if found.is_none_or(|r| r.ignore) {
            let r = &config.resources[ri];
            let msg = format!(
                "{}:{}: in resource {}:\n\tresource '{val}' mentioned in 'resync-after' option is not known{}.\n",
                r.config_file,
                r.start_line,
                r.name,
                if found.is_some() { " on this host" } else { "" }
            );
            if s.no_tty {
                s.warn(r.start_line, msg);
                config.resources[ri].disk_options.remove(k);
                continue;
            }
            s.error(r.start_line, msg);
        }
        k += 1;
    }
    let res = &mut config.resources[ri];
    if res.ignore {
        return;
    }
    set_peer(res);
    let res = &config.resources[ri];
    let Some(me) = res.me.map(|m| &res.hosts[m]) else {
        return;
    };
    if let Some(o) = find_opt(&res.net_options, "after-sb-0pri") {
        let v = o.value.as_deref().unwrap_or("");
        if let (Some(node), Some(peer)) = (v.strip_prefix("discard-node-"), res.peer) {
            let peer = &res.hosts[peer];
            if !peer.on_hosts.iter().any(|h| h == node) && !me.on_hosts.iter().any(|h| h == node) {
                let msg = format!(
                    "{}:{}: in resource {}:\n\tthe nodename in the '{v}' option is not known.\n\tvalid nodenames are: '{} {}'.\n",
                    res.config_file,
                    res.start_line,
                    res.name,
                    me.on_hosts.join(" "),
                    peer.on_hosts.join(" ")
                );
                s.error(res.start_line, msg);
            }
        }
    }
    if res.become_primary_on.iter().any(|b| b == "both")
        && find_opt(&res.net_options, "allow-two-primaries").is_none()
    {
        let msg = format!(
            "{}:{}: in resource {}:\nbecome-primary-on is set to both, but allow-two-primaries is not set.\n",
            res.config_file, res.start_line, res.name
        );
        s.error(res.start_line, msg);
    }
    if let Some(p) = res.peer.map(|p| &res.hosts[p]) {
        if me.proxy.is_none() != p.proxy.is_none() {
            let msg = format!(
                "{}:{}: in resource {}:\n\tEither both 'on' sections must contain a proxy subsection, or none.\n",
                res.config_file, res.start_line, res.name
            );
            s.error(res.start_line, msg);
        }
        for b in &res.become_primary_on {
            if !me.on_hosts.contains(b) && !p.on_hosts.contains(b) && b != "both" {
                let msg = format!(
                    "{}:{}: in resource {}:\n\tbecome-primary-on contains '{b}', which is not named with the 'on' sections.\n",
                    res.config_file, res.start_line, res.name
                );
                s.error(res.start_line, msg);
            }
        }
    }
}

/// drbdadm's `verify_ips`: this node's address must be configured locally (unless
/// `disable-ip-verification`).
pub fn verify_ips(config: &Config, ri: usize, env: &NodeEnv, stacked_mode: bool, s: &mut Session) {
    if config.global.disable_ip_verification {
        return;
    }
    let res = &config.resources[ri];
    if res.ignore || (res.stacked && !stacked_mode) {
        return;
    }
    let Some(me) = res.me.map(|m| &res.hosts[m]) else {
        return;
    };
    let Some(a) = &me.address else { return };
    if env.have_ip(&a.af, &a.addr) {
        return;
    }
    let where_ = s
        .uniq
        .get(&format!("{}:{}", a.addr, a.port))
        .cloned()
        .unwrap_or_else(|| res.config_file.clone());
    let msg = format!(
        "{where_}: in resource {}, on {}:\n\tIP {} not found on this host.\n",
        res.name,
        me.on_hosts.join(" "),
        a.addr
    );
    s.error(0, msg);
}

/// Each host volume's disk options after `common` -> resource -> volume inheritance, in order
/// host by host.
fn expanded_volume_options(config: &Config, ri: usize) -> Vec<Vec<Opt>> {
    let mut out = Vec::new();
    let common_disk = config
        .common
        .as_ref()
        .map(|c| c.disk_options.clone())
        .unwrap_or_default();
    let res = &config.resources[ri];
    let mut res_disk = res.disk_options.clone();
    for o in &common_disk {
        if !res_disk.iter().any(|x| x.name == o.name) {
            res_disk.insert(0, o.clone());
        }
    }
    for h in &res.hosts {
        for vol in &h.volumes {
            let mut list = vol.disk_options.clone();
            for o in &res_disk {
                if !list.iter().any(|x| x.name == o.name) {
                    list.insert(0, o.clone());
                }
            }
            if let Some(rv) = config.resources[ri]
                .volumes
                .iter()
                .find(|x| x.vnr == vol.vnr)
            {
                for o in &rv.disk_options {
                    if !list.iter().any(|x| x.name == o.name) {
                        list.insert(0, o.clone());
                    }
                }
            }
            out.push(list);
        }
    }
    out
}

/// `_convert_after_option` over every host volume: the target must be a volume on this node.
fn convert_after(config: &Config, ri: usize, lists: &[Vec<Opt>], s: &mut Session) {
    let res = &config.resources[ri];
    let (file, line, name) = (res.config_file.clone(), res.start_line, res.name.clone());
    for list in lists {
        {
            for o in list.iter().filter(|o| o.name == "resync-after") {
                let val = o.value.clone().unwrap_or_default();
                let (target, vol_id) = match val.split_once('/') {
                    Some((t, v)) => (t, Some(v)),
                    None => (val.as_str(), None),
                };
                let found = config
                    .resources
                    .iter()
                    .find(|r| !r.ignore && r.name == target);
                let me_vols = found
                    .and_then(|r| r.me.map(|m| &r.hosts[m]))
                    .map(|h| h.volumes.clone())
                    .unwrap_or_default();
                let vol_found = match vol_id {
                    Some(v) => super::units::strtoll(v, super::units::Unit::One)
                        .ok()
                        .and_then(|n| me_vols.iter().find(|x| u64::from(x.vnr) == n)),
                    None if me_vols.len() == 1 => me_vols.first(),
                    None if me_vols.len() > 1 => {
                        let msg = format!(
                            "{file}:{line}: in resource {name}:\n\tresync-after contains '{val}', which is ambiguous, since it contains {} volumes\n",
                            me_vols.len()
                        );
                        s.error(line, msg);
                        return;
                    }
                    None => None,
                };
                if vol_found.is_none() {
                    let msg = format!(
                        "{file}:{line}: in resource {name}:\n\tresource '{val}' mentioned in 'resync-after' option is not known{}.\n",
                        if found.is_some() { " on this host" } else { "" }
                    );
                    if s.no_tty {
                        s.warn(line, msg);
                    } else {
                        s.error(line, msg);
                    }
                }
            }
        }
    }
}
