//! The `drbdsetup-84` and `drbdmeta` command lines drbdadm-84 runs for a command: what
//! `drbdadm -d` prints, and the name drbdadm gives a step that failed (`Command 'drbdsetup-84
//! primary 0' terminated with exit code 11`). tandem runs none of them (the daemon does the
//! work); the lines say what DRBD would have done, in its words.
//!
//! Programs are named as drbdadm names them when it is started by name from `PATH`
//! (`drbdsetup-84`, `drbdmeta`); drbd-utils' DRBD 9 wrapper starts it by path and then prints
//! `/lib/drbd/drbdsetup-84`.
//!
//! ```
//! use drbdadm_compat::drbdsetup::{minor_command, render};
//! let line = minor_command("primary", 0, &["--force".to_string()]);
//! assert_eq!(render(&line), "drbdsetup-84 primary 0 --force");
//! ```

use crate::res::resolve::{EffectiveResource, EffectiveVolume, Endpoint, MetaDisk};

/// drbdsetup for DRBD 8.4 kernels.
pub const DRBDSETUP: &str = "drbdsetup-84";
/// The metadata tool.
pub const DRBDMETA: &str = "drbdmeta";

/// One command line, program first.
pub type Argv = Vec<String>;

/// A line as the dry run prints it: each word escaped as drbd-utils' `shell_escape` does (a
/// backslash before every character outside `[A-Za-z0-9%+-./:=@_]`), joined by spaces.
pub fn render(argv: &[String]) -> String {
    argv.iter()
        .map(|w| shell_escape(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A line as drbdadm names a failed step: the words as they are, joined by spaces.
pub fn plain(argv: &[String]) -> String {
    argv.join(" ")
}

/// drbdadm's report of a step that exited with `code` (it reports codes from 10 up).
pub fn failure_line(argv: &[String], code: i32) -> String {
    format!(
        "Command '{}' terminated with exit code {code}\n",
        plain(argv)
    )
}

/// drbd-utils' `shell_escape`.
pub fn shell_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let clean = c.is_ascii_alphanumeric()
            || matches!(c, '%' | '+' | '-' | '.' | '/' | ':' | '=' | '@' | '_');
        if !clean {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn words(prefix: &[&str]) -> Argv {
    prefix.iter().map(|s| (*s).to_string()).collect()
}

/// `--name=value` for each option, in order (flags carry `yes`).
fn options(opts: &[(String, String)]) -> Argv {
    opts.iter().map(|(k, v)| format!("--{k}={v}")).collect()
}

/// `drbdsetup-84 CMD MINOR [setup options]`: the per-volume commands (`primary`, `secondary`,
/// `detach`, `invalidate`, `outdate`, `new-current-uuid`, `role`, `cstate`, `dstate`, ...).
pub fn minor_command(cmd: &str, minor: u32, setup: &[String]) -> Argv {
    let mut v = words(&[DRBDSETUP, cmd]);
    v.push(minor.to_string());
    v.extend(setup.iter().cloned());
    v
}

/// `drbdsetup-84 CMD RES [setup options]`: the per-resource commands (`down`, `status`).
pub fn resource_command(cmd: &str, res: &str, setup: &[String]) -> Argv {
    let mut v = words(&[DRBDSETUP, cmd, res]);
    v.extend(setup.iter().cloned());
    v
}

/// `drbdsetup-84 new-resource RES [resource options]`.
pub fn new_resource(r: &EffectiveResource, setup: &[String]) -> Argv {
    let mut v = words(&[DRBDSETUP, "new-resource", &r.name]);
    v.extend(options(&r.resource_options));
    v.extend(setup.iter().cloned());
    v
}

/// `drbdsetup-84 new-minor RES MINOR VOLUME`.
pub fn new_minor(r: &EffectiveResource, vol: &EffectiveVolume) -> Argv {
    let mut v = words(&[DRBDSETUP, "new-minor", &r.name]);
    v.push(vol.minor.to_string());
    v.push(vol.vnr.to_string());
    v
}

/// The metadata device as drbdadm passes it: the backing disk for internal metadata.
fn md_device(vol: &EffectiveVolume) -> String {
    match &vol.meta_disk {
        MetaDisk::Internal => vol.disk.clone().unwrap_or_else(|| "none".into()),
        MetaDisk::FlexExternal { device } | MetaDisk::Indexed { device, .. } => device.clone(),
    }
}

/// `drbdmeta MINOR v08 MD IDX CMD [setup options]` (`apply-al`, `invalidate`, `outdate`, ...).
pub fn drbdmeta(vol: &EffectiveVolume, cmd: &str, setup: &[String]) -> Argv {
    let idx = match &vol.meta_disk {
        MetaDisk::Internal => "internal".to_string(),
        MetaDisk::FlexExternal { .. } => "flex-external".to_string(),
        MetaDisk::Indexed { index, .. } => index.to_string(),
    };
    let mut v = words(&[DRBDMETA]);
    v.push(vol.minor.to_string());
    v.push("v08".into());
    v.push(md_device(vol));
    v.push(idx);
    v.push(cmd.into());
    v.extend(setup.iter().cloned());
    v
}

/// `drbdsetup-84 attach MINOR DISK MD IDX [disk options] [setup options]`; `None` for a
/// diskless volume (`disk none`), which drbdadm does not attach.
pub fn attach(vol: &EffectiveVolume, setup: &[String]) -> Option<Argv> {
    let disk = vol.disk.clone()?;
    let idx = match &vol.meta_disk {
        MetaDisk::Internal => "internal".to_string(),
        MetaDisk::FlexExternal { .. } => "flexible".to_string(),
        MetaDisk::Indexed { index, .. } => index.to_string(),
    };
    let mut v = words(&[DRBDSETUP, "attach"]);
    v.push(vol.minor.to_string());
    v.push(disk);
    v.push(md_device(vol));
    v.push(idx);
    v.extend(options(&vol.attach_options));
    v.extend(setup.iter().cloned());
    Some(v)
}

/// `ipv4:10.0.0.1:7789`, `ipv6:[fd00::1]:7789`.
pub fn address(e: &Endpoint) -> String {
    if e.af == "ipv6" {
        format!("{}:[{}]:{}", e.af, e.addr, e.port)
    } else {
        format!("{}:{}:{}", e.af, e.addr, e.port)
    }
}

/// `drbdsetup-84 connect RES LOCAL PEER [net options] [setup options]`; `None` without a peer.
pub fn connect(r: &EffectiveResource, setup: &[String]) -> Option<Argv> {
    let peer = r.peer.as_ref()?;
    let mut v = words(&[DRBDSETUP, "connect", &r.name]);
    v.push(address(&r.local));
    v.push(address(peer));
    v.extend(options(&r.connect_options));
    v.extend(setup.iter().cloned());
    Some(v)
}

/// `drbdsetup-84 disconnect LOCAL PEER [setup options]`; `None` without a peer.
pub fn disconnect(r: &EffectiveResource, setup: &[String]) -> Option<Argv> {
    let peer = r.peer.as_ref()?;
    let mut v = words(&[DRBDSETUP, "disconnect"]);
    v.push(address(&r.local));
    v.push(address(peer));
    v.extend(setup.iter().cloned());
    Some(v)
}

/// `drbdsetup-84 wait-connect MINOR [startup options as written]`.
pub fn wait_connect(r: &EffectiveResource, vol: &EffectiveVolume) -> Argv {
    let mut v = minor_command("wait-connect", vol.minor, &[]);
    v.extend(options(&r.startup_options));
    v
}

/// `apply-al` then `attach` for each volume with a disk: drbdadm's `attach`.
pub fn attach_steps(r: &EffectiveResource, setup: &[String]) -> Vec<Argv> {
    let mut out = Vec::new();
    for vol in &r.volumes {
        if let Some(a) = attach(vol, setup) {
            out.push(drbdmeta(vol, "apply-al", setup));
            out.push(a);
        }
    }
    out
}

/// drbdadm's stages for `up` and `adjust`: everything of one stage runs, for every resource,
/// before the next stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// `new-resource`, `new-minor`.
    Prereq,
    /// `new-minor` when `adjust` adds minors.
    DiskPrereq,
    /// `apply-al`, `attach`.
    Disk,
    /// `connect`.
    Net,
}

/// The lines of `drbdadm up` for these resources, in the order drbdadm runs them.
pub fn up(resources: &[&EffectiveResource], setup: &[String]) -> Vec<Argv> {
    let mut steps = Vec::new();
    for r in resources {
        steps.push((Stage::Prereq, new_resource(r, setup)));
        for v in &r.volumes {
            steps.push((Stage::Prereq, new_minor(r, v)));
        }
        for a in attach_steps(r, setup) {
            steps.push((Stage::Disk, a));
        }
        if let Some(c) = connect(r, setup) {
            steps.push((Stage::Net, c));
        }
    }
    staged(steps)
}

/// Sorts steps by stage, keeping their order within a stage.
pub fn staged(mut steps: Vec<(Stage, Argv)>) -> Vec<Argv> {
    steps.sort_by_key(|(s, _)| *s);
    steps.into_iter().map(|(_, a)| a).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::res::parser::{ParseOptions, Parser};
    use crate::res::resolve::resolve;
    use crate::res::validate::{post_parse, NodeEnv};

    fn effective(src: &str, node: &str) -> Vec<EffectiveResource> {
        let opts = ParseOptions {
            file: "t.res".into(),
            save: "/tmp/t.res".into(),
            cwd: "/tmp".into(),
            no_tty: true,
            follow_includes: false,
        };
        let (r, mut s) = Parser::parse(src.as_bytes().to_vec(), &opts);
        let mut c = r.expect("parse");
        let env = NodeEnv {
            nodename: node.into(),
            ..NodeEnv::default()
        };
        post_parse(&mut c, &env, &mut s).expect("place");
        c.resources
            .iter()
            .map(|r| resolve(&c, r, node).expect("resolve"))
            .collect()
    }

    const TWO: &str = "common { disk { al-extents 3389; } startup { wfc-timeout 30; } }\n\
        resource web { device minor 1; disk /dev/vg0/web; meta-disk internal;\n\
          net { protocol B; } startup { degr-wfc-timeout 15; wait-after-sb; }\n\
          on a { address 10.0.0.1:7790; } on b { address 10.0.0.2:7790; } }\n\
        resource ext { device minor 4; disk /dev/d; meta-disk /dev/m;\n\
          on a { address ipv6 [fd00::1]:7791; } on b { address ipv6 [fd00::2]:7791; } }\n";

    #[test]
    fn up_runs_by_stage_across_resources() {
        let rs = effective(TWO, "a");
        let refs: Vec<&EffectiveResource> = rs.iter().collect();
        let lines: Vec<String> = up(&refs, &[]).iter().map(|a| render(a)).collect();
        assert_eq!(
            lines,
            [
                "drbdsetup-84 new-resource web",
                "drbdsetup-84 new-minor web 1 0",
                "drbdsetup-84 new-resource ext",
                "drbdsetup-84 new-minor ext 4 0",
                "drbdmeta 1 v08 /dev/vg0/web internal apply-al",
                "drbdsetup-84 attach 1 /dev/vg0/web /dev/vg0/web internal --al-extents=3389",
                "drbdmeta 4 v08 /dev/m flex-external apply-al",
                "drbdsetup-84 attach 4 /dev/d /dev/m flexible --al-extents=3389",
                "drbdsetup-84 connect web ipv4:10.0.0.1:7790 ipv4:10.0.0.2:7790 --protocol=B",
                "drbdsetup-84 connect ext ipv6:\\[fd00::1\\]:7791 ipv6:\\[fd00::2\\]:7791",
            ]
        );
    }

    #[test]
    fn wait_connect_passes_the_startup_section_as_written() {
        let rs = effective(TWO, "a");
        assert_eq!(
            render(&wait_connect(&rs[0], &rs[0].volumes[0])),
            "drbdsetup-84 wait-connect 1 --wfc-timeout=30 --degr-wfc-timeout=15 --wait-after-sb=yes"
        );
        assert_eq!(
            render(&wait_connect(&rs[1], &rs[1].volumes[0])),
            "drbdsetup-84 wait-connect 4 --wfc-timeout=30"
        );
    }

    #[test]
    fn failures_are_named_with_the_plain_command_line() {
        let rs = effective(TWO, "b");
        let d = disconnect(&rs[1], &[]).expect("peer");
        assert_eq!(
            failure_line(&d, 11),
            "Command 'drbdsetup-84 disconnect ipv6:[fd00::2]:7791 ipv6:[fd00::1]:7791' terminated with exit code 11\n"
        );
        assert_eq!(
            render(&drbdmeta(&rs[0].volumes[0], "outdate", &[])),
            "drbdmeta 1 v08 /dev/vg0/web internal outdate"
        );
        assert_eq!(shell_escape("a b\"c"), "a\\ b\\\"c");
    }
}
