//! `drbdadm`, the DRBD-compatible front end: `dump`, the `sh-*` helpers, the offline
//! metadata commands (`create-md`, `dump-md`, `get-gi`, `show-gi`, `wipe-md`, `apply-al`), and
//! the commands tandemd carries out (`up`, `down`, `attach`, `detach`, `adjust`, `primary`,
//! `secondary`, `wait-connect`, `status`, ...). `-d` prints what drbdadm-84 would run instead.
use clap::Parser;
use drbdadm_compat::cli::{run, Invocation};
use drbdadm_compat::control::DEFAULT_RUN_DIR;
use drbdadm_compat::daemon_cli::{self, DaemonOptions, WaitOptions};
use drbdadm_compat::res::validate::NodeEnv;
use std::io::{IsTerminal, Write};

/// drbdadm-compatible administration tool for tandem.
#[derive(Parser, Debug)]
#[command(name = "drbdadm", version)]
struct Args {
    /// Configuration file (`-` for standard input); default /etc/drbd.conf.
    #[arg(short = 'c', long = "config-file", value_name = "FILE")]
    config: Option<String>,
    /// This node's name, instead of `uname -n`.
    #[arg(long, env = "TANDEM_NODE", value_name = "NAME")]
    node: Option<String>,
    /// Operate on stacked resources.
    #[arg(short = 'S', long)]
    stacked: bool,
    /// Answer yes to drbdmeta's confirmations (create-md over existing data, wipe-md); with
    /// `primary`, promote without UpToDate data (also `--overwrite-data-of-peer`).
    #[arg(long)]
    force: bool,
    /// `new-current-uuid --clear-bitmap`: skip the initial sync.
    #[arg(long)]
    clear_bitmap: bool,
    /// `connect --discard-my-data`: should the next connection find a split brain, this node
    /// becomes the SyncTarget and its changes since the split are discarded.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "", value_name = "yes|no")]
    discard_my_data: Option<String>,
    /// `--json` output for `status`, `role`, `cstate`, `dstate` and `proc-drbd`.
    #[arg(long)]
    json: bool,
    /// Dry run: print the drbdsetup-84 and drbdmeta commands drbdadm would run, change nothing.
    #[arg(short = 'd', long = "dry-run")]
    dry_run: bool,
    /// `wait-connect`: seconds to wait for the connection (0: forever); default from the
    /// `startup` section's `wfc-timeout`.
    #[arg(short = 't', long, value_name = "SECONDS")]
    wfc_timeout: Option<u32>,
    /// `wait-connect`: the timeout after a crash of a degraded cluster (`degr-wfc-timeout`).
    #[arg(long, value_name = "SECONDS")]
    degr_wfc_timeout: Option<u32>,
    /// `wait-connect`: the timeout when the peer is known Outdated (`outdated-wfc-timeout`).
    #[arg(long, value_name = "SECONDS")]
    outdated_wfc_timeout: Option<u32>,
    /// `wait-connect`: keep waiting when the connection went StandAlone (split brain).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "yes", value_name = "yes|no")]
    wait_after_sb: Option<String>,
    /// The tandemd run directory (control socket, nbd.sock, proc-drbd, log).
    #[arg(long, env = "TANDEM_RUN_DIR", default_value = DEFAULT_RUN_DIR, value_name = "DIR")]
    run_dir: std::path::PathBuf,
    /// The command, then resource names (`RES`, `RES/VOL`, `minor-N` or `all`).
    #[arg(required = true, num_args = 1.., value_name = "COMMAND [RES...]")]
    words: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // drbdadm also takes backend options after `--` (`drbdadm -- --force create-md r0`,
    // the 8.3 spelling `drbdadm -- --overwrite-data-of-peer primary r0`).
    let (words, backend) = match daemon_cli::split_backend_options(args.words) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(20);
        }
    };
    let mut setup = Vec::new();
    if args.force {
        setup.push("--force".to_string());
    }
    if args.clear_bitmap {
        setup.push("--clear-bitmap".to_string());
    }
    if let Some(v) = &args.discard_my_data {
        // Outside `--`, drbdadm takes it for `connect` only.
        if let Some(cmd) = words.first().filter(|c| *c != "connect") {
            eprintln!("drbdadm: unrecognized option '--discard-my-data'\ntry 'drbdadm help {cmd}'");
            std::process::exit(1);
        }
        setup.push(match v.as_str() {
            "" => "--discard-my-data".to_string(),
            v => format!("--discard-my-data={v}"),
        });
    }
    for o in backend.setup {
        if !setup.contains(&o) {
            setup.push(o);
        }
    }
    let has = |flag: &str| setup.iter().any(|w| w == flag);
    let force = has("--force") || has("--overwrite-data-of-peer");
    let clear_bitmap = has("--clear-bitmap");
    let json = args.json || backend.json;
    for (name, v) in [
        ("wfc_timeout", args.wfc_timeout),
        ("degr_wfc_timeout", args.degr_wfc_timeout),
        ("outdated_wfc_timeout", args.outdated_wfc_timeout),
    ] {
        if let Some(n) = v.filter(|n| *n > daemon_cli::WFC_TIMEOUT_MAX) {
            eprintln!(
                "{name} => {n} out of range [0..{}]",
                daemon_cli::WFC_TIMEOUT_MAX
            );
            std::process::exit(20);
        }
    }
    let wait = WaitOptions {
        wfc: args.wfc_timeout.or(backend.wait.wfc),
        degraded: args.degr_wfc_timeout.or(backend.wait.degraded),
        outdated: args.outdated_wfc_timeout.or(backend.wait.outdated),
        wait_after_sb: args
            .wait_after_sb
            .map(|v| v == "yes")
            .or(backend.wait.wait_after_sb),
    };
    let mut words = words.into_iter();
    let command = words.next().unwrap_or_default();
    let inv = Invocation {
        config: args.config,
        stacked: args.stacked,
        command,
        args: words.collect(),
        cwd: std::env::current_dir()?,
        no_tty: !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal(),
        force,
        dry_run: args.dry_run,
    };
    let env = NodeEnv::local(args.node.clone());
    let out = if daemon_cli::COMMANDS.contains(&inv.command.as_str()) {
        let opts = DaemonOptions {
            run_dir: args.run_dir,
            force,
            clear_bitmap,
            json,
            dry_run: args.dry_run,
            setup_options: setup,
            wait,
            daemon: None,
            node: args.node,
        };
        daemon_cli::run(&inv, &env, &opts)
    } else {
        run(&inv, &env)
    };
    std::io::stdout().write_all(out.stdout.as_bytes())?;
    std::io::stderr().write_all(out.stderr.as_bytes())?;
    std::io::stdout().flush()?;
    std::process::exit(out.code);
}
