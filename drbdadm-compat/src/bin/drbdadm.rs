//! `drbdadm`, the DRBD-compatible front end: `dump`, the `sh-*` helpers, the offline
//! metadata commands (`create-md`, `dump-md`, `get-gi`, `show-gi`, `wipe-md`, `apply-al`), and
//! the commands tandemd carries out (`up`, `down`, `primary`, `secondary`, `status`, ...).

use clap::Parser;
use drbdadm_compat::cli::{run, Invocation};
use drbdadm_compat::control::DEFAULT_RUN_DIR;
use drbdadm_compat::daemon_cli::{self, DaemonOptions};
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
    /// `status --json`.
    #[arg(long)]
    json: bool,
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
    let has = |flag: &str| args.words.iter().any(|w| w == flag);
    let force = args.force || has("--force") || has("--overwrite-data-of-peer");
    let clear_bitmap = args.clear_bitmap || has("--clear-bitmap");
    let json = args.json || has("--json");
    let backend = [
        "--force",
        "--overwrite-data-of-peer",
        "--clear-bitmap",
        "--json",
    ];
    let mut words = args
        .words
        .into_iter()
        .filter(|w| !backend.contains(&w.as_str()));
    let command = words.next().unwrap_or_default();
    let inv = Invocation {
        config: args.config,
        stacked: args.stacked,
        command,
        args: words.collect(),
        cwd: std::env::current_dir()?,
        no_tty: !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal(),
        force,
    };
    let env = NodeEnv::local(args.node.clone());
    let out = if daemon_cli::COMMANDS.contains(&inv.command.as_str()) {
        let opts = DaemonOptions {
            run_dir: args.run_dir,
            force,
            clear_bitmap,
            json,
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
