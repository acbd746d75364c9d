//! `tandem-bench`: end-to-end benchmarks of tandem against peer servers.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tandem_benches::fio::Timing;
use tandem_benches::nbd::{self, BenchError, Config};
use tandem_benches::{report, signal};

#[derive(Parser)]
#[command(
    version,
    about = "End-to-end benchmarks of tandem against peer servers"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// fio through NBD against tandem-nbd, nbdkit (file plugin) and qemu-nbd on one backing file.
    Nbd(NbdArgs),
}

#[derive(Args)]
struct NbdArgs {
    /// The tandem-nbd binary [default: WORKSPACE/target/release/tandem-nbd].
    #[arg(long, value_name = "PATH")]
    tandem_nbd: Option<PathBuf>,
    /// Directory for the scratch directory holding the backing file, sockets and logs.
    #[arg(long, value_name = "DIR", default_value = "/var/tmp")]
    dir: PathBuf,
    /// Backing file size, e.g. 1G or 256M [default: 1G; 64M with --quick].
    #[arg(long, value_parser = nbd::parse_size)]
    size: Option<u64>,
    /// Seconds each fio run measures [default: 10; 2 with --quick].
    #[arg(long, value_name = "SECS")]
    runtime: Option<u32>,
    /// Seconds each fio run warms up before measuring [default: 2; 0 with --quick].
    #[arg(long, value_name = "SECS")]
    ramp: Option<u32>,
    /// Times each (row, server) cell is measured; the table shows medians [default: 3; 1 with --quick].
    #[arg(long)]
    rounds: Option<u32>,
    /// A smoke run of about a minute (small file, short runs, one round) for CI.
    #[arg(long)]
    quick: bool,
}

impl NbdArgs {
    fn config(self) -> anyhow::Result<Config> {
        let q = self.quick;
        let size = self.size.unwrap_or(if q { 64 << 20 } else { 1 << 30 });
        anyhow::ensure!(
            size >= 1 << 20 && size.is_multiple_of(4096),
            "--size must be at least 1 MiB and a multiple of 4 KiB"
        );
        let rounds = self.rounds.unwrap_or(if q { 1 } else { 3 });
        anyhow::ensure!(rounds >= 1, "--rounds must be at least 1");
        let runtime = self.runtime.unwrap_or(if q { 2 } else { 10 });
        anyhow::ensure!(runtime >= 1, "--runtime must be at least 1");
        Ok(Config {
            tandem_nbd: self.tandem_nbd.unwrap_or_else(default_tandem_nbd),
            dir: self.dir,
            size,
            timing: Timing {
                runtime,
                ramp: self.ramp.unwrap_or(if q { 0 } else { 2 }),
            },
            rounds,
        })
    }
}

/// `$CARGO_TARGET_DIR/release/tandem-nbd`, else `target/release/tandem-nbd` in this workspace.
fn default_tandem_nbd() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || {
            let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            manifest
                .parent()
                .map_or(manifest.clone(), PathBuf::from)
                .join("target")
        },
        PathBuf::from,
    );
    target.join("release").join("tandem-nbd")
}

fn main() -> ExitCode {
    let Cmd::Nbd(args) = Cli::parse().cmd;
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if matches!(e.downcast_ref(), Some(BenchError::Interrupted)) => {
            eprintln!("tandem-bench: interrupted; servers stopped and scratch files removed");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("tandem-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: NbdArgs) -> anyhow::Result<()> {
    signal::install().context("cannot install signal handlers")?;
    let cfg = args.config()?;
    let mut out = std::io::stdout().lock();
    let results = nbd::run(&cfg, &mut out)?;
    write!(out, "{}", report::table(&results))?;
    writeln!(out)?;
    write!(out, "{}", report::cpu_table(&results))?;
    writeln!(
        out,
        "\nratios above 1 mean tandem-nbd is faster (MiB/s or IOPS); figures are medians of {} round(s)",
        cfg.rounds
    )?;
    Ok(())
}
