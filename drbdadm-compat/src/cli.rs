//! The `drbdadm` commands that need no daemon (`dump`, `sh-*`, and the offline metadata
//! commands of [`crate::md`]), as a function from arguments and node identity to output and
//! exit code, so tests can run it in-process.

use std::path::{Path, PathBuf};

use crate::dump;
use crate::md;
use crate::res::ast::{Config, Volume};
use crate::res::parser::{
    canonify, Diagnostic, ParseOptions, Parser, Session, E_CONFIG_INVALID, E_EXEC_ERROR, E_USAGE,
};
use crate::res::units::{strtoll, Unit};
use crate::res::validate::{post_parse, validate_and_expand, verify_ips, NodeEnv};

/// Config files tried in order when no `-c` is given (drbdadm-84's list).
pub const DEFAULT_CONFIGS: &[&str] = &[
    "/etc/drbd-84.conf",
    "/etc/drbd-83.conf",
    "/etc/drbd-82.conf",
    "/etc/drbd-08.conf",
    "/etc/drbd.conf",
];

/// One invocation.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    /// `-c FILE` (`-` for standard input).
    pub config: Option<String>,
    /// `-S`: operate on stacked resources.
    pub stacked: bool,
    /// The command (`dump`, `sh-dev`, ...).
    pub command: String,
    /// Resource names, `RES/VOL`, `minor-N` or `all`.
    pub args: Vec<String>,
    /// Directory relative paths are taken from.
    pub cwd: PathBuf,
    /// Whether stdin or stdout is not a terminal.
    pub no_tty: bool,
    /// `--force`: passed on to the metadata commands (drbdmeta's `--force`).
    pub force: bool,
    /// `-d`: print the drbdmeta (and drbdsetup) lines drbdadm would run, touch nothing.
    pub dry_run: bool,
}

/// What a command printed and how it exits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

/// The commands implemented here.
pub const COMMANDS: &[&str] = &[
    "dump",
    "sh-nop",
    "sh-resources",
    "sh-resource",
    "sh-dev",
    "sh-minor",
    "sh-ll-dev",
    "sh-md-dev",
    "sh-md-idx",
    "sh-ip",
    "sh-lr-of",
    "create-md",
    "dump-md",
    "get-gi",
    "show-gi",
    "wipe-md",
    "apply-al",
];

struct Ctx {
    out: Outcome,
}

impl Ctx {
    fn diags(&mut self, d: &[Diagnostic]) {
        for x in d {
            self.out.stderr.push_str(&x.message);
        }
    }

    fn fail(mut self, msg: &str, code: i32) -> Outcome {
        self.out.stderr.push_str(msg);
        self.out.code = code;
        self.out
    }
}

/// A configuration loaded and placed for a node, with the parser's session.
pub struct Loaded {
    pub config: Config,
    pub session: Session,
}

/// Reads, parses and places the configuration of `inv` for `env`.
///
/// # Errors
/// The diagnostics so far, the fatal message (if any) and the exit code.
pub fn load(inv: &Invocation, env: &NodeEnv) -> Result<Loaded, Outcome> {
    let mut ctx = Ctx {
        out: Outcome::default(),
    };
    let (file, data) = match inv.config.as_deref() {
        Some("-") => {
            let mut v = Vec::new();
            if std::io::Read::read_to_end(&mut std::io::stdin(), &mut v).is_err() {
                return Err(ctx.fail("Can not read 'STDIN'.\n", E_EXEC_ERROR));
            }
            ("STDIN".to_string(), v)
        }
        Some(f) => match std::fs::read(inv.cwd.join(f)) {
            Ok(d) => (f.to_string(), d),
            Err(_) => return Err(ctx.fail(&format!("Can not open '{f}'.\n."), E_EXEC_ERROR)),
        },
        None => {
            let found = DEFAULT_CONFIGS
                .iter()
                .find_map(|f| std::fs::read(f).ok().map(|d| (f.to_string(), d)));
            match found {
                Some(x) => x,
                None => {
                    return Err(ctx.fail(
                        "Can not open '/etc/drbd.conf': No such file or directory\n",
                        E_CONFIG_INVALID,
                    ))
                }
            }
        }
    };
    let save = if file == "STDIN" {
        file.clone()
    } else {
        match canonify(&inv.cwd, &file) {
            Some(s) => s,
            None => {
                let dir = Path::new(&file)
                    .parent()
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                return Err(ctx.fail(
                    &format!("chdir(\"{dir}\") failed: No such file or directory\n"),
                    E_USAGE,
                ));
            }
        }
    };
    let opts = ParseOptions {
        file,
        save,
        cwd: inv.cwd.clone(),
        no_tty: inv.no_tty,
        follow_includes: true,
    };
    let (r, mut session) = Parser::parse(data, &opts);
    ctx.diags(&session.diagnostics);
    session.diagnostics.clear();
    let mut config = match r {
        Ok(c) => c,
        Err(e) => return Err(ctx.fail(&e.message, e.exit_code)),
    };
    if !session.valid {
        return Err(ctx.fail("", E_CONFIG_INVALID));
    }
    if let Err(e) = post_parse(&mut config, env, &mut session) {
        ctx.diags(&session.diagnostics);
        return Err(ctx.fail(&e.message, e.exit_code));
    }
    ctx.diags(&session.diagnostics);
    session.diagnostics.clear();
    if !ctx.out.stderr.is_empty() {
        // Warnings so far are printed by the caller with the command's output.
        session.diagnostics.push(Diagnostic {
            file: String::new(),
            line: 0,
            message: ctx.out.stderr,
        });
    }
    Ok(Loaded { config, session })
}

/// Fills in what drbdadm derives before any command but `dump`: `/dev/drbdN` for volumes given
/// only by minor.
fn expand_devices(config: &mut Config) {
    for r in &mut config.resources {
        for h in &mut r.hosts {
            for v in &mut h.volumes {
                if v.device.is_none() {
                    v.device = Some(format!("/dev/drbd{}", v.minor.unwrap_or(u32::MAX)));
                }
            }
        }
    }
}

/// Runs one command.
pub fn run(inv: &Invocation, env: &NodeEnv) -> Outcome {
    let mut ctx = Ctx {
        out: Outcome::default(),
    };
    if !COMMANDS.contains(&inv.command.as_str()) {
        return ctx.fail(
            &format!("drbdadm: Unknown command '{}'\n", inv.command),
            E_USAGE,
        );
    }
    let mut loaded = match load(inv, env) {
        Ok(l) => l,
        Err(o) => return o,
    };
    ctx.diags(&loaded.session.diagnostics);
    loaded.session.diagnostics.clear();
    let is_dump = inv.command == "dump";
    let config = &mut loaded.config;
    let s = &mut loaded.session;
    if !is_dump {
        expand_devices(config);
    }
    let gen_shell = matches!(inv.command.as_str(), "sh-nop" | "sh-resources");
    if gen_shell {
        if !inv.args.is_empty() {
            ctx.out
                .stderr
                .push_str("This command will ignore resource names!\n");
        }
        if inv.command == "sh-resources" {
            let names: Vec<String> = config
                .resources
                .iter()
                .filter(|r| !r.ignore && r.stacked == inv.stacked)
                .map(|r| dump::esc(&r.name))
                .collect();
            if !names.is_empty() {
                ctx.out.stdout.push_str(&names.join(" "));
                ctx.out.stdout.push('\n');
            }
        }
        return ctx.out;
    }
    if inv.args.is_empty() && !is_dump {
        return ctx.fail(
            &format!(
                "USAGE: drbdadm {} [OPTION...] {{all|RESOURCE...}}\nNo resource names specified\n",
                inv.command
            ),
            E_USAGE,
        );
    }
    let validated = validate_and_expand(config, s, !is_dump);
    ctx.diags(&s.diagnostics);
    s.diagnostics.clear();
    if validated.is_err() {
        ctx.out.code = E_CONFIG_INVALID;
        return ctx.out;
    }
    let all = inv.args.is_empty() || inv.args[0] == "all";
    if all {
        if !is_dump {
            let ignored = config.resources.iter().filter(|r| r.ignore).count();
            let stacked = config
                .resources
                .iter()
                .filter(|r| !r.ignore && r.stacked)
                .count();
            let normal = config.resources.len() - ignored - stacked;
            let n = &env.nodename;
            if !inv.stacked && ignored > 0 && normal == 0 {
                return ctx.fail(
                    &format!("WARN: no normal resources defined for this host ({n})!?\nMisspelled name of the local machine with the 'on' keyword ?\n"),
                    E_USAGE,
                );
            }
            if !inv.stacked && normal == 0 {
                return ctx.fail(
                    &format!("WARN: no normal resources defined for this host ({n})!?\n"),
                    E_USAGE,
                );
            }
            if inv.stacked && stacked == 0 {
                return ctx.fail(
                    &format!("WARN: nothing stacked for this host ({n}), nothing to do in stacked mode!\n"),
                    E_USAGE,
                );
            }
        } else {
            for ri in 0..config.resources.len() {
                verify_ips(config, ri, env, inv.stacked, s);
            }
            ctx.diags(&s.diagnostics);
            s.diagnostics.clear();
            if !s.valid {
                ctx.out.code = E_CONFIG_INVALID;
                return ctx.out;
            }
            ctx.out.stdout.push_str(&dump::dump_header(config));
        }
        for ri in 0..config.resources.len() {
            let r = &config.resources[ri];
            if !is_dump && (r.ignore || r.stacked != inv.stacked) {
                continue;
            }
            if let Err(code) = call(&mut ctx, inv, env, config, ri, None) {
                ctx.out.code = code;
                return ctx.out;
            }
        }
        return ctx.out;
    }
    for name in &inv.args {
        let found = match by_name(config, name) {
            Ok(f) => f.or_else(|| by_minor(config, name)),
            Err(msg) => return ctx.fail(&msg, E_EXEC_ERROR),
        };
        let Some((ri, mut vol)) = found else {
            return ctx.fail(
                &format!("'{name}' not defined in your config (for this host).\n"),
                E_USAGE,
            );
        };
        let r = &config.resources[ri];
        let iterate = (inv.command.starts_with("sh-") && inv.command != "sh-resource")
            || md::MdCommand::parse(&inv.command).is_some();
        if !iterate {
            if let Some(v) = vol {
                let me = r.me.map(|m| &r.hosts[m]);
                if me.is_some_and(|h| h.volumes[v].implicit) {
                    vol = None;
                } else {
                    return ctx.fail(
                        &format!(
                            "{} operates on whole resources, but you specified a specific volume!\n",
                            inv.command
                        ),
                        E_USAGE,
                    );
                }
            }
        }
        if r.stacked != inv.stacked && !is_dump {
            let kind = |b: bool| if b { "stacked" } else { "normal" };
            ctx.out.stderr.push_str(&format!(
                "'{}' is a {} resource, and not available in {} mode.\n",
                r.name,
                kind(r.stacked),
                kind(inv.stacked)
            ));
            ctx.out.code = E_USAGE;
            continue;
        }
        if is_dump {
            verify_ips(config, ri, env, inv.stacked, s);
            ctx.diags(&s.diagnostics);
            s.diagnostics.clear();
        }
        if let Err(code) = call(&mut ctx, inv, env, config, ri, vol) {
            ctx.out.code = code;
            return ctx.out;
        }
    }
    ctx.out
}

/// `RES` or `RES/VOL` among the resources on this node: (resource, volume index in `me`).
fn by_name(config: &Config, id: &str) -> Result<Option<(usize, Option<usize>)>, String> {
    let (name, vol) = match id.split_once('/') {
        Some((n, v)) => (n, Some(v)),
        None => (id, None),
    };
    let vnr = match vol {
        Some(v) => Some(strtoll(v, Unit::One).map_err(|e| format!("{e}\n"))?),
        None => None,
    };
    let Some(ri) = config
        .resources
        .iter()
        .position(|r| !r.ignore && r.name == name)
    else {
        return Ok(None);
    };
    let Some(vnr) = vnr else {
        return Ok(Some((ri, None)));
    };
    let r = &config.resources[ri];
    let me = r.me.map(|m| &r.hosts[m]);
    Ok(me
        .and_then(|h| h.volumes.iter().position(|v| u64::from(v.vnr) == vnr))
        .map(|vi| (ri, Some(vi))))
}

/// `minor-N`: the resource and volume on this node with that minor.
fn by_minor(config: &Config, id: &str) -> Option<(usize, Option<usize>)> {
    let m = strtoll(id.strip_prefix("minor-")?, Unit::One).ok()?;
    for (ri, r) in config.resources.iter().enumerate() {
        if r.ignore {
            continue;
        }
        let Some(me) = r.me.map(|m| &r.hosts[m]) else {
            continue;
        };
        if let Some(vi) = me
            .volumes
            .iter()
            .position(|v| v.minor.map(u64::from) == Some(m))
        {
            return Some((ri, Some(vi)));
        }
    }
    None
}

fn call(
    ctx: &mut Ctx,
    inv: &Invocation,
    env: &NodeEnv,
    config: &Config,
    ri: usize,
    vol: Option<usize>,
) -> Result<(), i32> {
    let r = &config.resources[ri];
    match inv.command.as_str() {
        "dump" => {
            ctx.out
                .stdout
                .push_str(&dump::dump_resource(config, r, &env.nodename));
            return Ok(());
        }
        "sh-resource" => {
            ctx.out.stdout.push_str(&format!("{}\n", r.name));
            return Ok(());
        }
        "sh-lr-of" => {
            if !inv.stacked {
                ctx.out
                    .stderr
                    .push_str("sh-lower-resource only available in stacked mode\n");
                return Err(E_USAGE);
            }
            if !r.stacked {
                ctx.out.stderr.push_str(&format!(
                    "'{}' is not stacked on this host ({})\n",
                    r.name, env.nodename
                ));
                return Err(E_USAGE);
            }
        }
        _ => {}
    }
    let Some(me) = r.me.map(|m| &r.hosts[m]) else {
        return Ok(());
    };
    let vols: Vec<&Volume> = match vol {
        Some(v) => vec![&me.volumes[v]],
        None => me.volumes.iter().collect(),
    };
    if let Some(cmd) = md::MdCommand::parse(&inv.command) {
        return call_md(ctx, inv, cmd, &r.name, &vols);
    }
    for v in vols {
        let null = "(null)".to_string();
        let line = match inv.command.as_str() {
            "sh-dev" => v.device.clone().unwrap_or(null),
            "sh-minor" => v.minor.map_or(-1, |m| m as i32).to_string(),
            "sh-ll-dev" => v.disk.clone().unwrap_or(null),
            "sh-md-dev" => {
                if v.meta_disk.as_deref() == Some("internal") {
                    v.disk.clone().unwrap_or(null)
                } else {
                    v.meta_disk.clone().unwrap_or(null)
                }
            }
            "sh-md-idx" => v.meta_index.clone().unwrap_or(null),
            "sh-ip" => me.address.as_ref().map_or(null, |a| a.addr.clone()),
            "sh-lr-of" => me
                .lower
                .and_then(|l| config.resources.get(l))
                .map_or(null, |l| l.name.clone()),
            _ => return Ok(()),
        };
        ctx.out.stdout.push_str(&line);
        ctx.out.stdout.push('\n');
    }
    Ok(())
}

/// A metadata command on each of `vols`, stopping at the first failure (drbdadm's
/// `call_cmd`).
fn call_md(
    ctx: &mut Ctx,
    inv: &Invocation,
    cmd: md::MdCommand,
    res: &str,
    vols: &[&Volume],
) -> Result<(), i32> {
    let opts = md::Options {
        force: inv.force,
        interactive: !inv.no_tty,
    };
    if inv.dry_run {
        let setup: Vec<String> = if inv.force {
            vec!["--force".into()]
        } else {
            Vec::new()
        };
        for v in vols {
            let t = match md::Target::of_volume(res, v, v.implicit, &inv.cwd) {
                Ok(t) => t,
                Err(e) => {
                    ctx.out.stderr.push_str(&format!("{e}\n"));
                    return Err(e.exit_code());
                }
            };
            let mut lines = Vec::new();
            if matches!(cmd, md::MdCommand::GetGi | md::MdCommand::ShowGi) {
                // drbdadm asks the kernel first and falls back to drbdmeta.
                lines.push(crate::drbdsetup::minor_command(
                    cmd.as_str(),
                    t.minor,
                    &setup,
                ));
            }
            let mut m = vec![
                crate::drbdsetup::DRBDMETA.to_string(),
                t.minor.to_string(),
                "v08".into(),
                t.md_name.clone(),
                t.index_arg(),
                cmd.as_str().into(),
            ];
            m.extend(setup.iter().cloned());
            lines.push(m);
            for l in lines {
                ctx.out.stdout.push_str(&crate::drbdsetup::render(&l));
                ctx.out.stdout.push('\n');
            }
        }
        return Ok(());
    }
    for v in vols {
        let result = md::Target::of_volume(res, v, v.implicit, &inv.cwd)
            .and_then(|t| md::run(cmd, &t, opts));
        match result {
            Ok(report) => {
                ctx.out.stdout.push_str(&report.stdout);
                ctx.out.stderr.push_str(&report.stderr);
            }
            Err(e) => {
                ctx.out.stderr.push_str(&format!("{e}\n"));
                return Err(e.exit_code());
            }
        }
    }
    Ok(())
}
