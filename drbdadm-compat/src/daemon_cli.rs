//! The `drbdadm` commands that tandemd carries out (`up`, `down`, `primary`, `secondary`,
//! `new-current-uuid`, `outdate`, `connect`, `disconnect`, `invalidate`) and the status queries (`role`, `cstate`, `dstate`, `status`,
//! `proc-drbd`), sent over the control socket of the daemon in the run directory.

use std::path::{Path, PathBuf};

use repl_core::status::Status;

use crate::cli::{self, Invocation, Outcome};
use crate::control::{default_daemon_program, Client, ClientError, Op, Reply};
use crate::res::parser::{E_CONFIG_INVALID, E_USAGE};
use crate::res::validate::{validate_and_expand, NodeEnv};
use crate::status::{self, DeviceView, ResourceView};

/// The commands of this module.
pub const COMMANDS: &[&str] = &[
    "up",
    "down",
    "primary",
    "secondary",
    "new-current-uuid",
    "outdate",
    "connect",
    "disconnect",
    "invalidate",
    "role",
    "cstate",
    "dstate",
    "status",
    "proc-drbd",
];

/// Options these commands take besides the resource names.
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// The daemon's run directory.
    pub run_dir: PathBuf,
    /// `primary --force` (also spelled `--overwrite-data-of-peer`).
    pub force: bool,
    /// `new-current-uuid --clear-bitmap`.
    pub clear_bitmap: bool,
    /// `status --json`.
    pub json: bool,
    /// The daemon program `up` starts; default: `tandemd` beside this executable or on PATH.
    pub daemon: Option<PathBuf>,
    /// This node's name as given (`--node`), passed on to a daemon that `up` starts.
    pub node: Option<String>,
}

/// Runs one of [`COMMANDS`] for the resources named in `inv` (or `all` of this node's).
pub fn run(inv: &Invocation, env: &NodeEnv, opts: &DaemonOptions) -> Outcome {
    let client = Client::new(&opts.run_dir);
    if inv.command == "proc-drbd" {
        return proc_drbd(&client);
    }
    let (config_path, names) = match resources(inv, env) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let mut out = Outcome::default();
    match inv.command.as_str() {
        "role" | "cstate" | "dstate" | "status" => {
            let statuses = match client.call(Op::Status) {
                Ok(Reply::Status { resources }) => resources,
                Ok(_) => Vec::new(),
                Err(ClientError::NotRunning(_) | ClientError::Stale(_)) => Vec::new(),
                Err(e) => return failure(out, &e.to_string(), e.exit_code()),
            };
            query(&mut out, &inv.command, &names, &statuses, opts.json);
        }
        cmd => {
            if cmd == "up" {
                let program = opts.daemon.clone().unwrap_or_else(default_daemon_program);
                if let Err(e) = client.ensure_daemon(&program, opts.node.as_deref()) {
                    return failure(out, &e.to_string(), e.exit_code());
                }
            } else if cmd == "down" && !client.is_running() {
                // Nothing is up: `down` has nothing to do, as with DRBD.
                return out;
            }
            for name in names {
                let op = match cmd {
                    "up" => Op::Up {
                        config: config_path.clone(),
                        resource: name.clone(),
                    },
                    "down" => Op::Down {
                        resource: name.clone(),
                    },
                    "primary" => Op::Primary {
                        resource: name.clone(),
                        force: opts.force,
                    },
                    "secondary" => Op::Secondary {
                        resource: name.clone(),
                    },
                    "new-current-uuid" => Op::NewCurrentUuid {
                        resource: name.clone(),
                        clear_bitmap: opts.clear_bitmap,
                    },
                    "connect" => Op::Connect {
                        resource: name.clone(),
                    },
                    "disconnect" => Op::Disconnect {
                        resource: name.clone(),
                    },
                    "invalidate" => Op::Invalidate {
                        resource: name.clone(),
                    },
                    _ => Op::Outdate {
                        resource: name.clone(),
                    },
                };
                if let Err(e) = client.call(op) {
                    return failure(out, &e.to_string(), e.exit_code());
                }
            }
        }
    }
    out
}

/// The single-value queries and `status`, for the named resources in config order.
fn query(out: &mut Outcome, cmd: &str, names: &[String], statuses: &[Status], json: bool) {
    let find = |name: &str| {
        statuses
            .iter()
            .find(|s| s.resource == name && s.volume == 0)
    };
    if cmd == "status" {
        let views: Vec<ResourceView> = names
            .iter()
            .map(|n| {
                let devices = statuses
                    .iter()
                    .filter(|s| &s.resource == n)
                    .cloned()
                    .map(DeviceView::new)
                    .collect();
                ResourceView::new(n.clone(), devices)
            })
            .collect();
        let (up, down): (Vec<ResourceView>, Vec<ResourceView>) =
            views.into_iter().partition(|v| !v.devices.is_empty());
        out.stdout = if json {
            status::drbdadm_status_json(&up)
        } else {
            status::drbdadm_status(&up)
        };
        for v in down {
            out.stderr
                .push_str(&format!("{}: No such resource\n", v.name));
            out.code = E_CONFIG_INVALID;
        }
        return;
    }
    for name in names {
        let line = match find(name) {
            Some(s) => match cmd {
                "role" => status::role(s),
                "cstate" => status::cstate(s),
                _ => status::dstate(s),
            },
            None => "Unconfigured".to_string(),
        };
        out.stdout.push_str(&line);
        out.stdout.push('\n');
    }
}

/// Prints this node's `/proc/drbd`, fresh from the daemon (the file `<run-dir>/proc-drbd`
/// refreshes its counters only once a second). Without a daemon, only the version lines.
fn proc_drbd(client: &Client) -> Outcome {
    let mut statuses = match client.call(Op::Status) {
        Ok(Reply::Status { resources }) => resources,
        Ok(_) | Err(ClientError::NotRunning(_) | ClientError::Stale(_)) => Vec::new(),
        Err(e) => return failure(Outcome::default(), &e.to_string(), e.exit_code()),
    };
    statuses.sort_by_key(|s| s.minor);
    let views: Vec<DeviceView> = statuses.into_iter().map(DeviceView::new).collect();
    let stdout = status::proc_drbd(&views, &status::VersionInfo::tandem());
    Outcome {
        stdout,
        ..Outcome::default()
    }
}

fn failure(mut out: Outcome, message: &str, code: i32) -> Outcome {
    out.stderr.push_str(message);
    if !message.ends_with('\n') {
        out.stderr.push('\n');
    }
    out.code = code;
    out
}

/// The configuration file in use and the resources the command names, checked against this
/// node's part of the configuration (`all` for every one of them).
fn resources(inv: &Invocation, env: &NodeEnv) -> Result<(PathBuf, Vec<String>), Outcome> {
    let mut loaded = cli::load(inv, env)?;
    let mut diags = String::new();
    let valid = validate_and_expand(&mut loaded.config, &mut loaded.session, true);
    for d in &loaded.session.diagnostics {
        diags.push_str(&d.message);
    }
    if valid.is_err() {
        return Err(Outcome {
            stderr: diags,
            code: E_CONFIG_INVALID,
            ..Outcome::default()
        });
    }
    let mine: Vec<String> = loaded
        .config
        .resources
        .iter()
        .filter(|r| !r.ignore && !r.stacked)
        .map(|r| r.name.clone())
        .collect();
    if inv.args.is_empty() {
        let msg = format!(
            "USAGE: drbdadm {} [OPTION...] {{all|RESOURCE...}}\nNo resource names specified\n",
            inv.command
        );
        return Err(Outcome {
            stderr: msg,
            code: E_USAGE,
            ..Outcome::default()
        });
    }
    let mut names = Vec::new();
    for arg in &inv.args {
        if arg == "all" {
            names.extend(mine.iter().cloned());
            continue;
        }
        // Volume 0 is the only volume tandemd serves; `RES/0` names it too.
        let name = arg.strip_suffix("/0").unwrap_or(arg);
        if !mine.iter().any(|m| m == name) {
            let msg = format!("'{arg}' not defined in your config (for this host).\n");
            return Err(Outcome {
                stderr: msg,
                code: E_USAGE,
                ..Outcome::default()
            });
        }
        names.push(name.to_string());
    }
    Ok((config_file(inv), names))
}

/// The configuration file `inv` uses: `-c FILE` (relative to its directory) or the first of
/// drbdadm's defaults that exists.
fn config_file(inv: &Invocation) -> PathBuf {
    match inv.config.as_deref() {
        Some(f) => inv.cwd.join(f),
        None => cli::DEFAULT_CONFIGS
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
            .unwrap_or(Path::new("/etc/drbd.conf"))
            .to_path_buf(),
    }
}
