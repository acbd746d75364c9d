//! `drbdadm`, the DRBD-compatible front end: `dump`, the `sh-*` helpers and the offline
//! metadata commands (`create-md`, `dump-md`, `get-gi`, `show-gi`, `wipe-md`, `apply-al`).

use clap::Parser;
use drbdadm_compat::cli::{run, Invocation};
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
    /// Answer yes to drbdmeta's confirmations (create-md over existing data, wipe-md).
    #[arg(long)]
    force: bool,
    /// The command, then resource names (`RES`, `RES/VOL`, `minor-N` or `all`).
    #[arg(required = true, num_args = 1.., value_name = "COMMAND [RES...]")]
    words: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // drbdadm also takes backend options after `--` (`drbdadm -- --force create-md r0`).
    let force = args.force || args.words.iter().any(|w| w == "--force");
    let mut words = args.words.into_iter().filter(|w| w != "--force");
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
    let out = run(&inv, &NodeEnv::local(args.node));
    std::io::stdout().write_all(out.stdout.as_bytes())?;
    std::io::stderr().write_all(out.stderr.as_bytes())?;
    std::io::stdout().flush()?;
    std::process::exit(out.code);
}
