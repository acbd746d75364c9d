//! `drbdadm`, the DRBD-compatible front end: `dump` and the `sh-*` helpers for now.

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
    /// The command, then resource names (`RES`, `RES/VOL`, `minor-N` or `all`).
    #[arg(required = true, num_args = 1.., value_name = "COMMAND [RES...]")]
    words: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut words = args.words.into_iter();
    let command = words.next().unwrap_or_default();
    let inv = Invocation {
        config: args.config,
        stacked: args.stacked,
        command,
        args: words.collect(),
        cwd: std::env::current_dir()?,
        no_tty: !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal(),
    };
    let out = run(&inv, &NodeEnv::local(args.node));
    std::io::stdout().write_all(out.stdout.as_bytes())?;
    std::io::stderr().write_all(out.stderr.as_bytes())?;
    std::io::stdout().flush()?;
    std::process::exit(out.code);
}
