//! The `drbdadm` commands that tandemd carries out (`up`, `down`, `attach`, `detach`, `adjust`,
//! `primary`, `secondary`, `new-current-uuid`, `outdate`, `connect`, `disconnect`, `invalidate`,
//! `invalidate-remote`, `wait-connect`) and the status queries (`role`, `cstate`, `dstate`, `status`, `proc-drbd`),
//! sent over the control socket of the daemon in the run directory.
//!
//! As drbdadm does, a refusal is followed by the line naming the drbdsetup command that failed
//! (`Command 'drbdsetup-84 primary 0' terminated with exit code 17`) for the commands drbdadm
//! reports that way, the next resource is tried when the code is below 20, and the exit code
//! is the highest one seen. `-d` prints the `drbdsetup-84`/`drbdmeta` lines drbdadm would run
//! ([`crate::drbdsetup`]) and changes nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use repl_core::state::{ConnState, DiskState};
use repl_core::status::Status;

use crate::cli::{self, Invocation, Outcome};
use crate::control::{
    default_daemon_program, Client, ClientError, Op, Reply, WaitTimeouts, DEFAULT_TIMEOUT,
};
use crate::drbdsetup::{self as setup, Argv, Stage};
use crate::res::parser::{E_CONFIG_INVALID, E_USAGE};
use crate::res::resolve::{resolve, EffectiveResource};
use crate::res::validate::{validate_and_expand, NodeEnv};
use crate::status::{self, DeviceView, QueryVolume, ResourceView};

/// The commands of this module.
pub const COMMANDS: &[&str] = &[
    "up",
    "down",
    "attach",
    "detach",
    "adjust",
    "primary",
    "secondary",
    "new-current-uuid",
    "outdate",
    "connect",
    "disconnect",
    "invalidate",
    "invalidate-remote",
    "wait-connect",
    "role",
    "cstate",
    "dstate",
    "status",
    "proc-drbd",
];

/// `wait-connect` timeouts given on the command line (`--wfc-timeout N` or `-t N`,
/// `--degr-wfc-timeout N`, `--outdated-wfc-timeout N`, `--wait-after-sb`), as drbdsetup takes
/// them; each replaces the `startup` section's value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WaitOptions {
    pub wfc: Option<u32>,
    pub degraded: Option<u32>,
    pub outdated: Option<u32>,
    pub wait_after_sb: Option<bool>,
}

/// Options these commands take besides the resource names.
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// The daemon's run directory.
    pub run_dir: PathBuf,
    /// `primary --force` (also spelled `--overwrite-data-of-peer`).
    pub force: bool,
    /// `new-current-uuid --clear-bitmap`.
    pub clear_bitmap: bool,
    /// `--json` for `status`, `role`, `cstate`, `dstate` and `proc-drbd`.
    pub json: bool,
    /// `-d`: print the drbdsetup and drbdmeta lines drbdadm would run, change nothing.
    pub dry_run: bool,
    /// The backend options as given (`--force`, `--overwrite-data-of-peer`,
    /// `--clear-bitmap`, `--discard-my-data`), which drbdadm appends to the drbdsetup command
    /// line.
    pub setup_options: Vec<String>,
    /// `wait-connect` timeouts from the command line.
    pub wait: WaitOptions,
    /// The daemon program `up` starts; default: `tandemd` beside this executable or on PATH.
    pub daemon: Option<PathBuf>,
    /// This node's name as given (`--node`), passed on to a daemon that `up` starts.
    pub node: Option<String>,
}

impl DaemonOptions {
    /// Whether `connect` (or `adjust`'s connect step) is to discard this node's data in a
    /// split brain: `--discard-my-data` among the backend options.
    ///
    /// # Errors
    /// See [`discard_my_data`].
    pub fn discard_my_data(&self) -> Result<bool, String> {
        discard_my_data(&self.setup_options)
    }
}

/// `--discard-my-data` (`=yes`) or `--discard-my-data=no` among backend options; the last one
/// counts, as with drbdsetup.
///
/// # Errors
/// Another value than `yes` or `no`.
pub fn discard_my_data(setup: &[String]) -> Result<bool, String> {
    let mut on = false;
    for w in setup {
        let value = match w.split_once('=') {
            Some(("--discard-my-data", v)) => v,
            None if w == "--discard-my-data" => "yes",
            _ => continue,
        };
        on = match value {
            "yes" => true,
            "no" => false,
            other => {
                return Err(format!(
                    "discard-my-data => '{other}' is not a yes/no value (expected yes or no)"
                ))
            }
        };
    }
    Ok(on)
}

/// The commands that act on a whole resource: `RES/VOL` is refused for them, as drbdadm
/// refuses it.
const WHOLE_RESOURCE: &[&str] = &["down", "connect", "disconnect", "status", "adjust"];

/// drbdsetup's exit code for a command line it cannot parse.
const E_SYNTAX: i32 = 20;

/// One resource (or one volume of it, `RES/VOL`) the command names, on this node.
#[derive(Debug, Clone)]
struct Target {
    name: String,
    /// `RES/VOL`: only this volume (`volumes` and `eff` hold only it).
    volume: Option<u32>,
    /// The effective configuration; `None` when it cannot be resolved (the daemon then says
    /// why, if it is asked).
    eff: Option<EffectiveResource>,
    /// (volume, minor) of each volume on this node.
    volumes: Vec<(u32, u32)>,
}

impl Target {
    /// What the daemon is told: `RES`, or `RES/VOL` for one volume.
    fn id(&self) -> String {
        match self.volume {
            Some(v) => format!("{}/{v}", self.name),
            None => self.name.clone(),
        }
    }

    fn minor(&self) -> u32 {
        self.volumes.first().map_or(0, |v| v.1)
    }

    /// Whether volume `vnr` has a disk configured (not `disk none`).
    fn has_disk_on(&self, vnr: u32) -> bool {
        self.eff
            .as_ref()
            .is_some_and(|e| e.volumes.iter().any(|v| v.vnr == vnr && v.disk.is_some()))
    }

    fn has_peer(&self) -> bool {
        self.eff.as_ref().is_some_and(|e| e.peer.is_some())
    }
}

/// Runs one of [`COMMANDS`] for the resources named in `inv` (or `all` of this node's).
pub fn run(inv: &Invocation, env: &NodeEnv, opts: &DaemonOptions) -> Outcome {
    let client = Client::new(&opts.run_dir);
    if inv.command == "proc-drbd" {
        return proc_drbd(&client, opts.json);
    }
    let (config_path, targets) = match resources(inv, env) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let mut out = Outcome::default();
    let cmd = inv.command.as_str();
    if matches!(cmd, "role" | "cstate" | "dstate" | "status") && !opts.dry_run {
        let statuses = match running(&client) {
            Ok(s) => s,
            Err(e) => return failure(out, &e.to_string(), e.exit_code()),
        };
        query(&mut out, cmd, &targets, &statuses, opts.json);
        return out;
    }
    if cmd == "adjust" {
        return adjust(&client, &config_path, &targets, opts);
    }
    if opts.dry_run {
        // As drbdadm, the options are passed on as given: drbdsetup judges them.
        let lines = dry_run(cmd, &targets, &opts.setup_options);
        out.stdout = lines
            .iter()
            .map(|a| setup::render(a) + "\n")
            .collect::<String>();
        return out;
    }
    let discard = match cmd {
        "connect" => match opts.discard_my_data() {
            Ok(d) => d,
            Err(e) => return failure(out, &e, E_SYNTAX),
        },
        _ => false,
    };
    if cmd == "up" {
        let program = opts.daemon.clone().unwrap_or_else(default_daemon_program);
        if let Err(e) = client.ensure_daemon(&program, opts.node.as_deref()) {
            return failure(out, &e.to_string(), e.exit_code());
        }
    } else if cmd == "down" && !client.is_running() {
        // Nothing is up: `down` has nothing to do, as with DRBD.
        return out;
    }
    for t in &targets {
        let name = t.id();
        let (op, limit) = match cmd {
            "up" => (
                Op::Up {
                    config: config_path.clone(),
                    resource: name,
                },
                Some(DEFAULT_TIMEOUT),
            ),
            "attach" => (
                Op::Attach {
                    config: config_path.clone(),
                    resource: name,
                },
                Some(DEFAULT_TIMEOUT),
            ),
            "wait-connect" => {
                let (timeouts, wait_after_sb, notes) = wait_timeouts(t, &opts.wait);
                out.stderr.push_str(&notes);
                let longest = timeouts.wfc.max(timeouts.degraded).max(timeouts.outdated);
                // The daemon ends the wait; the client only guards against a daemon that died.
                let limit = (timeouts.wfc > 0 && timeouts.degraded > 0 && timeouts.outdated > 0)
                    .then(|| Duration::from_secs(longest.into()) + DEFAULT_TIMEOUT);
                (
                    Op::WaitConnect {
                        resource: name,
                        timeouts,
                        wait_after_sb,
                    },
                    limit,
                )
            }
            _ => (simple_op(cmd, name, opts, discard), Some(DEFAULT_TIMEOUT)),
        };
        if let Err(e) = client.call_within(op, limit) {
            let code = report(&mut out, &e, failed_step(cmd, t, &opts.setup_options));
            if code >= 20 {
                return out;
            }
        }
    }
    out
}

/// The request of a command that takes only the resource name (and `connect`'s
/// `--discard-my-data`).
fn simple_op(cmd: &str, resource: String, opts: &DaemonOptions, discard_my_data: bool) -> Op {
    match cmd {
        "down" => Op::Down { resource },
        "detach" => Op::Detach { resource },
        "primary" => Op::Primary {
            resource,
            force: opts.force,
        },
        "secondary" => Op::Secondary { resource },
        "new-current-uuid" => Op::NewCurrentUuid {
            resource,
            clear_bitmap: opts.clear_bitmap,
        },
        "connect" => Op::Connect {
            resource,
            discard_my_data,
        },
        "disconnect" => Op::Disconnect { resource },
        "invalidate" => Op::Invalidate { resource },
        "invalidate-remote" => Op::InvalidateRemote { resource },
        _ => Op::Outdate { resource },
    }
}

/// Prints a failed request as drbdadm would (the message, then the failed step's line for the
/// commands drbdadm reports so) and records its exit code; returns it.
fn report(out: &mut Outcome, e: &ClientError, step: Option<Argv>) -> i32 {
    let code = e.exit_code();
    let msg = e.to_string();
    if !msg.is_empty() {
        out.stderr.push_str(&msg);
        if !msg.ends_with('\n') {
            out.stderr.push('\n');
        }
    }
    if let (ClientError::Refused(_), Some(step)) = (e, step) {
        if code >= 10 {
            out.stderr.push_str(&setup::failure_line(&step, code));
        }
    }
    out.code = out.code.max(code);
    code
}

/// The drbdsetup step drbdadm names when `cmd` fails, for the commands whose failures drbdadm
/// reports with `Command '...' terminated with exit code N`. `invalidate` and `dstate` hand
/// drbdsetup's error through unchanged, `outdate` retries with drbdmeta, and `wait-connect`
/// may wait forever, so drbdadm names no step for them.
fn failed_step(cmd: &str, t: &Target, setup_opts: &[String]) -> Option<Argv> {
    let minor = t.minor();
    Some(match cmd {
        "primary" | "secondary" | "detach" | "new-current-uuid" | "invalidate-remote" => {
            setup::minor_command(cmd, minor, setup_opts)
        }
        "down" => setup::resource_command("down", &t.name, setup_opts),
        "up" | "attach" => {
            let eff = t.eff.as_ref()?;
            let vol = eff.volumes.first()?;
            setup::attach(vol, setup_opts)?
        }
        "connect" => setup::connect(t.eff.as_ref()?, setup_opts)?,
        "disconnect" => setup::disconnect(t.eff.as_ref()?, setup_opts)?,
        _ => return None,
    })
}

/// The lines drbdadm-84 prints for `-d CMD` on these resources.
fn dry_run(cmd: &str, targets: &[Target], setup_opts: &[String]) -> Vec<Argv> {
    let effs: Vec<&EffectiveResource> = targets.iter().filter_map(|t| t.eff.as_ref()).collect();
    let mut lines = Vec::new();
    match cmd {
        "up" => return setup::up(&effs, setup_opts),
        "down" | "status" => {
            for t in targets {
                lines.push(setup::resource_command(cmd, &t.name, setup_opts));
            }
        }
        "attach" => {
            for r in &effs {
                lines.extend(setup::attach_steps(r, setup_opts));
            }
        }
        "connect" => lines.extend(effs.iter().filter_map(|r| setup::connect(r, setup_opts))),
        "disconnect" => {
            lines.extend(effs.iter().filter_map(|r| setup::disconnect(r, setup_opts)));
        }
        "wait-connect" => {
            for r in &effs {
                for v in &r.volumes {
                    lines.push(setup::wait_connect(r, v));
                }
            }
        }
        _ => {
            // Per volume; `invalidate`, `outdate` and `dstate` also show drbdmeta, the fallback
            // drbdadm takes when the kernel has no such minor.
            for r in &effs {
                for v in &r.volumes {
                    lines.push(setup::minor_command(cmd, v.minor, setup_opts));
                    if matches!(cmd, "invalidate" | "outdate" | "dstate") {
                        lines.push(setup::drbdmeta(v, cmd, setup_opts));
                    }
                }
            }
        }
    }
    lines
}

/// `adjust`: brings each resource to what the configuration says, doing only what is missing
/// (not up: `up`; Diskless with a disk configured: `attach`; StandAlone with a peer configured:
/// `connect`). With `-d` it prints those steps as drbdadm would run them.
fn adjust(
    client: &Client,
    config_path: &Path,
    targets: &[Target],
    opts: &DaemonOptions,
) -> Outcome {
    let mut out = Outcome::default();
    let statuses = match running(client) {
        Ok(s) => s,
        Err(e) => return failure(out, &e.to_string(), e.exit_code()),
    };
    let setup_opts = &opts.setup_options;
    let mut plan: Vec<(&Target, Vec<Step>)> = Vec::new();
    for t in targets {
        let mine: Vec<&Status> = statuses.iter().filter(|s| s.resource == t.name).collect();
        let steps = if mine.is_empty() {
            vec![Step::Up]
        } else {
            let mut v = Vec::new();
            // Volumes configured here that are not up (a resource brought up by volume).
            let missing: Vec<u32> = t
                .volumes
                .iter()
                .map(|&(vnr, _)| vnr)
                .filter(|vnr| !mine.iter().any(|s| s.volume == *vnr))
                .collect();
            if !missing.is_empty() {
                v.push(Step::UpVolumes(missing));
            }
            // Diskless volumes that have a disk configured (not `disk none` ones).
            let detached: Vec<u32> = mine
                .iter()
                .filter(|s| s.state.disk == DiskState::Diskless && t.has_disk_on(s.volume))
                .map(|s| s.volume)
                .collect();
            if !detached.is_empty() {
                v.push(Step::Attach(detached));
            }
            if mine.iter().any(|s| s.state.conn == ConnState::StandAlone) && t.has_peer() {
                v.push(Step::Connect);
            }
            v
        };
        plan.push((t, steps));
    }
    if opts.dry_run {
        let mut staged = Vec::new();
        for (t, steps) in &plan {
            let Some(eff) = t.eff.as_ref() else { continue };
            for step in steps {
                match step {
                    Step::Up => {
                        staged.push((Stage::Prereq, setup::new_resource(eff, setup_opts)));
                        for v in &eff.volumes {
                            staged.push((Stage::DiskPrereq, setup::new_minor(eff, v)));
                        }
                        for a in setup::attach_steps(eff, setup_opts) {
                            staged.push((Stage::Disk, a));
                        }
                        if let Some(c) = setup::connect(eff, setup_opts) {
                            staged.push((Stage::Net, c));
                        }
                    }
                    Step::UpVolumes(vols) => {
                        let mut some = eff.clone();
                        some.volumes.retain(|v| vols.contains(&v.vnr));
                        for v in &some.volumes {
                            staged.push((Stage::DiskPrereq, setup::new_minor(&some, v)));
                        }
                        for a in setup::attach_steps(&some, setup_opts) {
                            staged.push((Stage::Disk, a));
                        }
                    }
                    Step::Attach(vols) => {
                        let mut some = eff.clone();
                        some.volumes.retain(|v| vols.contains(&v.vnr));
                        for a in setup::attach_steps(&some, setup_opts) {
                            staged.push((Stage::Disk, a));
                        }
                    }
                    Step::Connect => {
                        if let Some(c) = setup::connect(eff, setup_opts) {
                            staged.push((Stage::Net, c));
                        }
                    }
                }
            }
        }
        out.stdout = setup::staged(staged)
            .iter()
            .map(|a| setup::render(a) + "\n")
            .collect();
        return out;
    }
    let discard_my_data = if plan.iter().any(|(_, steps)| steps.contains(&Step::Connect)) {
        match opts.discard_my_data() {
            Ok(d) => d,
            Err(e) => return failure(out, &e, E_SYNTAX),
        }
    } else {
        false
    };
    if plan.iter().any(|(_, steps)| steps.contains(&Step::Up)) {
        let program = opts.daemon.clone().unwrap_or_else(default_daemon_program);
        if let Err(e) = client.ensure_daemon(&program, opts.node.as_deref()) {
            return failure(out, &e.to_string(), e.exit_code());
        }
    }
    for (t, steps) in plan {
        'steps: for step in steps {
            let calls: Vec<(Op, &str)> = match step {
                Step::Up => vec![(
                    Op::Up {
                        config: config_path.to_path_buf(),
                        resource: t.name.clone(),
                    },
                    "up",
                )],
                Step::UpVolumes(vols) => vols
                    .iter()
                    .map(|v| {
                        (
                            Op::Up {
                                config: config_path.to_path_buf(),
                                resource: format!("{}/{v}", t.name),
                            },
                            "up",
                        )
                    })
                    .collect(),
                Step::Attach(vols) if vols.len() == t.volumes.len() => vec![(
                    Op::Attach {
                        config: config_path.to_path_buf(),
                        resource: t.name.clone(),
                    },
                    "attach",
                )],
                Step::Attach(vols) => vols
                    .iter()
                    .map(|v| {
                        (
                            Op::Attach {
                                config: config_path.to_path_buf(),
                                resource: format!("{}/{v}", t.name),
                            },
                            "attach",
                        )
                    })
                    .collect(),
                Step::Connect => vec![(
                    Op::Connect {
                        resource: t.name.clone(),
                        discard_my_data,
                    },
                    "connect",
                )],
            };
            for (op, cmd) in calls {
                if let Err(e) = client.call(op) {
                    let code = report(&mut out, &e, failed_step(cmd, t, setup_opts));
                    if code >= 20 {
                        return out;
                    }
                    // drbdadm skips the rest of a resource whose step failed.
                    break 'steps;
                }
            }
        }
    }
    out
}

/// What `adjust` does for one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Up,
    /// Bring up these volumes of a resource that is up (`new-minor` and `attach`).
    UpVolumes(Vec<u32>),
    /// Attach these Diskless volumes.
    Attach(Vec<u32>),
    Connect,
}

/// The timeouts `wait-connect` uses for `t`: its `startup` section, replaced by what the
/// command line gives, then corrected as drbdsetup's `choose_timeout` corrects them (with its
/// notes on stderr).
fn wait_timeouts(t: &Target, cli: &WaitOptions) -> (WaitTimeouts, bool, String) {
    let startup = t.eff.as_ref().map(|e| &e.startup);
    let secs = |v: Option<u64>| u32::try_from(v.unwrap_or(0)).unwrap_or(u32::MAX);
    let wfc = cli.wfc.unwrap_or(secs(startup.map(|s| s.wfc_timeout)));
    let degraded = cli
        .degraded
        .unwrap_or(secs(startup.map(|s| s.degr_wfc_timeout)));
    let outdated = cli
        .outdated
        .unwrap_or(secs(startup.map(|s| s.outdated_wfc_timeout)));
    let wait_after_sb = cli
        .wait_after_sb
        .unwrap_or(startup.is_some_and(|s| s.wait_after_sb));
    let (t, notes) = choose_timeout(WaitTimeouts {
        wfc,
        degraded,
        outdated,
    });
    (t, wait_after_sb, notes)
}

/// drbdsetup's corrections (`choose_timeout`): a degraded timeout may not exceed the normal one,
/// nor the outdated one the degraded one; the notes are drbdsetup's, including its use of the
/// normal timeout for the outdated one.
pub fn choose_timeout(mut t: WaitTimeouts) -> (WaitTimeouts, String) {
    let mut notes = String::new();
    if t.wfc > 0 && (t.wfc < t.degraded || t.degraded == 0) {
        t.degraded = t.wfc;
        notes.push_str(&format!(
            "degr-wfc-timeout has to be shorter than wfc-timeout\n\
             degr-wfc-timeout implicitly set to wfc-timeout ({}s)\n",
            t.degraded
        ));
    }
    if t.degraded > 0 && (t.degraded < t.outdated || t.outdated == 0) {
        t.outdated = t.wfc;
        notes.push_str(&format!(
            "outdated-wfc-timeout has to be shorter than degr-wfc-timeout\n\
             outdated-wfc-timeout implicitly set to degr-wfc-timeout ({}s)\n",
            t.degraded
        ));
    }
    (t, notes)
}

/// Snapshots of every resource that is up; none when no daemon runs.
fn running(client: &Client) -> Result<Vec<Status>, ClientError> {
    match client.call(Op::Status) {
        Ok(Reply::Status { resources }) => Ok(resources),
        Ok(_) => Ok(Vec::new()),
        Err(ClientError::NotRunning(_) | ClientError::Stale(_)) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The single-value queries and `status`, for the named resources in config order.
fn query(out: &mut Outcome, cmd: &str, targets: &[Target], statuses: &[Status], json: bool) {
    if cmd == "status" {
        let views: Vec<ResourceView> = targets
            .iter()
            .map(|t| {
                let devices = statuses
                    .iter()
                    .filter(|s| s.resource == t.name)
                    .cloned()
                    .map(DeviceView::new)
                    .collect();
                ResourceView::new(t.name.clone(), devices)
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
    let vols: Vec<QueryVolume<'_>> = targets
        .iter()
        .flat_map(|t| {
            t.volumes.iter().map(|&(volume, minor)| QueryVolume {
                name: &t.name,
                volume,
                minor,
                status: statuses
                    .iter()
                    .find(|s| s.resource == t.name && s.volume == volume),
            })
        })
        .collect();
    if json {
        out.stdout = match cmd {
            "role" => status::to_text(&status::role_json(&vols)),
            "cstate" => status::to_text(&status::cstate_json(&vols)),
            _ => status::to_text(&status::dstate_json(&vols)),
        };
        return;
    }
    for v in vols {
        let line = match v.status {
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

/// Prints this node's `/proc/drbd` (or its `--json` form), fresh from the daemon (the file
/// `<run-dir>/proc-drbd` refreshes its counters only once a second). Without a daemon, only
/// the version lines.
fn proc_drbd(client: &Client, json: bool) -> Outcome {
    let mut statuses = match running(client) {
        Ok(s) => s,
        Err(e) => return failure(Outcome::default(), &e.to_string(), e.exit_code()),
    };
    statuses.sort_by_key(|s| s.minor);
    let views: Vec<DeviceView> = statuses.into_iter().map(DeviceView::new).collect();
    let version = status::VersionInfo::tandem();
    let stdout = if json {
        status::to_text(&status::proc_drbd_json(&views, &version))
    } else {
        status::proc_drbd(&views, &version)
    };
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
fn resources(inv: &Invocation, env: &NodeEnv) -> Result<(PathBuf, Vec<Target>), Outcome> {
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
    let config = &loaded.config;
    let mine: Vec<Target> = config
        .resources
        .iter()
        .filter(|r| !r.ignore && !r.stacked)
        .map(|r| Target {
            name: r.name.clone(),
            volume: None,
            eff: resolve(config, r, &env.nodename).ok(),
            volumes: r
                .me
                .map(|m| &r.hosts[m])
                .map(|h| {
                    h.volumes
                        .iter()
                        .map(|v| (v.vnr, v.minor.unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default(),
        })
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
    let mut targets = Vec::new();
    for arg in &inv.args {
        if arg == "all" {
            targets.extend(mine.iter().cloned());
            continue;
        }
        let usage = |msg: String| Outcome {
            stderr: msg,
            code: E_USAGE,
            ..Outcome::default()
        };
        let undefined = || {
            usage(format!(
                "'{arg}' not defined in your config (for this host).\n"
            ))
        };
        // `minor-N` names the volume with that minor, as `RES/VOL` does.
        let by_minor = arg
            .strip_prefix("minor-")
            .and_then(|m| m.parse::<u32>().ok())
            .and_then(|m| {
                mine.iter().find_map(|t| {
                    t.volumes
                        .iter()
                        .find(|&&(_, minor)| minor == m)
                        .map(|&(vnr, _)| (t.name.as_str(), Some(vnr)))
                })
            });
        let (name, vnr) = match (by_minor, arg.split_once('/')) {
            (Some(found), _) => found,
            (None, Some((n, v))) => (n, Some(v.parse::<u32>().map_err(|_| undefined())?)),
            (None, None) => (arg.as_str(), None),
        };
        let Some(t) = mine.iter().find(|m| m.name == name) else {
            return Err(undefined());
        };
        let mut t = t.clone();
        match vnr {
            Some(v) => {
                if !t.volumes.iter().any(|&(vol, _)| vol == v) {
                    return Err(undefined());
                }
                if WHOLE_RESOURCE.contains(&inv.command.as_str()) {
                    return Err(usage(format!(
                        "{} operates on whole resources, but you specified a specific volume!\n",
                        inv.command
                    )));
                }
                t.volume = Some(v);
                t.volumes.retain(|&(vol, _)| vol == v);
                if let Some(eff) = t.eff.as_mut() {
                    eff.volumes.retain(|x| x.vnr == v);
                }
            }
            None if inv.command == "new-current-uuid" && t.volumes.len() > 1 => {
                return Err(usage(format!(
                    "new-current-uuid requires a specific volume id, but none is specified.\n\
                     Try 'new-current-uuid minor-<minor_number>' or 'new-current-uuid {name}/<vnr>'\n"
                )));
            }
            None => {}
        }
        targets.push(t);
    }
    Ok((config_file(inv), targets))
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

/// Backend options found among the command words (after `--`, or written after the command
/// as drbdsetup takes them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backend {
    /// `--force`, `--overwrite-data-of-peer`, `--clear-bitmap`, `--discard-my-data[=yes|no]`,
    /// in the order given, once each.
    pub setup: Vec<String>,
    /// `--json`.
    pub json: bool,
    pub wait: WaitOptions,
}

/// The largest `wfc-timeout` drbdsetup accepts (`DRBD_WFC_TIMEOUT_MAX`), in seconds.
pub const WFC_TIMEOUT_MAX: u32 = 300_000;

/// Takes the backend options out of the command words: `--force`, `--overwrite-data-of-peer`,
/// `--clear-bitmap`, `--discard-my-data[=yes|no]`, `--json`, and `wait-connect`'s
/// `--wfc-timeout N` (also `-t N`, `--wfc-timeout=N`), `--degr-wfc-timeout N`,
/// `--outdated-wfc-timeout N`, `--wait-after-sb[=yes|no]`.
///
/// # Errors
/// A timeout without a number or out of drbdsetup's range, with drbdsetup's wording.
pub fn split_backend_options(words: Vec<String>) -> Result<(Vec<String>, Backend), String> {
    let mut b = Backend::default();
    let mut rest = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let (key, inline) = match w.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
            _ => (w.clone(), None),
        };
        let timeout = match key.as_str() {
            "--wfc-timeout" | "-t" => Some("wfc_timeout"),
            "--degr-wfc-timeout" => Some("degr_wfc_timeout"),
            "--outdated-wfc-timeout" => Some("outdated_wfc_timeout"),
            _ => None,
        };
        if let Some(name) = timeout {
            let value = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .ok_or_else(|| format!("{key} needs a number of seconds"))?,
            };
            let n = parse_seconds(name, &value)?;
            match name {
                "wfc_timeout" => b.wait.wfc = Some(n),
                "degr_wfc_timeout" => b.wait.degraded = Some(n),
                _ => b.wait.outdated = Some(n),
            }
            continue;
        }
        match key.as_str() {
            "--wait-after-sb" => {
                b.wait.wait_after_sb = Some(inline.as_deref().is_none_or(|v| v == "yes"));
            }
            "--json" => b.json = true,
            "--force" | "--overwrite-data-of-peer" | "--clear-bitmap" | "--discard-my-data" => {
                if !b.setup.contains(&w) {
                    b.setup.push(w);
                }
            }
            _ => rest.push(w),
        }
    }
    Ok((rest, b))
}

fn parse_seconds(name: &str, value: &str) -> Result<u32, String> {
    let n: i64 = value
        .parse()
        .map_err(|_| format!("{name} => '{value}' is not a number of seconds"))?;
    if !(0..=i64::from(WFC_TIMEOUT_MAX)).contains(&n) {
        return Err(format!("{name} => {n} out of range [0..{WFC_TIMEOUT_MAX}]"));
    }
    Ok(n as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choose_timeout_corrects_as_drbdsetup_does() {
        let (t, notes) = choose_timeout(WaitTimeouts {
            wfc: 30,
            degraded: 15,
            outdated: 10,
        });
        assert_eq!((t.wfc, t.degraded, t.outdated), (30, 15, 10));
        assert_eq!(notes, "");
        let (t, notes) = choose_timeout(WaitTimeouts {
            wfc: 1,
            degraded: 0,
            outdated: 0,
        });
        assert_eq!((t.wfc, t.degraded, t.outdated), (1, 1, 1));
        assert_eq!(
            notes,
            "degr-wfc-timeout has to be shorter than wfc-timeout\n\
             degr-wfc-timeout implicitly set to wfc-timeout (1s)\n\
             outdated-wfc-timeout has to be shorter than degr-wfc-timeout\n\
             outdated-wfc-timeout implicitly set to degr-wfc-timeout (1s)\n"
        );
        let (t, notes) = choose_timeout(WaitTimeouts::default());
        assert_eq!(t, WaitTimeouts::default(), "0 waits forever");
        assert_eq!(notes, "");
    }

    fn w(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn backend_options_are_taken_out_of_the_words() {
        let (rest, b) = split_backend_options(w(&[
            "--overwrite-data-of-peer",
            "primary",
            "r0",
            "--force",
            "--overwrite-data-of-peer",
        ]))
        .unwrap();
        assert_eq!(rest, w(&["primary", "r0"]));
        assert_eq!(b.setup, w(&["--overwrite-data-of-peer", "--force"]));
        let (rest, b) = split_backend_options(w(&[
            "wait-connect",
            "-t",
            "1",
            "--degr-wfc-timeout=7",
            "--outdated-wfc-timeout",
            "3",
            "--wait-after-sb=no",
            "--json",
            "r0",
        ]))
        .unwrap();
        assert_eq!(rest, w(&["wait-connect", "r0"]));
        assert_eq!(
            b.wait,
            WaitOptions {
                wfc: Some(1),
                degraded: Some(7),
                outdated: Some(3),
                wait_after_sb: Some(false),
            }
        );
        assert!(b.json);
        assert_eq!(
            split_backend_options(w(&["wait-connect", "--wfc-timeout=300001", "r0"])).unwrap_err(),
            "wfc_timeout => 300001 out of range [0..300000]"
        );
        assert!(split_backend_options(w(&["wait-connect", "-t"])).is_err());
        assert!(split_backend_options(w(&["-t", "soon"])).is_err());
    }

    #[test]
    fn discard_my_data_is_a_backend_option_the_last_value_counts() {
        let (rest, b) = split_backend_options(w(&["--discard-my-data", "connect", "r0"])).unwrap();
        assert_eq!(rest, w(&["connect", "r0"]));
        assert_eq!(b.setup, w(&["--discard-my-data"]));
        assert_eq!(discard_my_data(&b.setup), Ok(true));
        let (_, b) = split_backend_options(w(&["connect", "--discard-my-data=no", "r0"])).unwrap();
        assert_eq!(b.setup, w(&["--discard-my-data=no"]));
        assert_eq!(discard_my_data(&b.setup), Ok(false));
        assert_eq!(
            discard_my_data(&w(&["--discard-my-data", "--discard-my-data=no"])),
            Ok(false)
        );
        assert_eq!(
            discard_my_data(&w(&["--force", "--discard-my-data=yes"])),
            Ok(true)
        );
        assert_eq!(discard_my_data(&w(&["--force"])), Ok(false));
        assert!(discard_my_data(&w(&["--discard-my-data=maybe"])).is_err());
    }
}
