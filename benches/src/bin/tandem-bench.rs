//! `tandem-bench`: end-to-end benchmarks of tandem against peer servers.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tandem_benches::cluster::Binaries;
use tandem_benches::fio::Timing;
use tandem_benches::nbd::{self, BenchError, Config};
use tandem_benches::repl::{self, ReplError};
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
    /// Two replicating tandem nodes on loopback: fio through the Primary vs nbdkit, full resync
    /// vs nbdcopy, resync-rate adherence, tandemd memory with a 1 TiB volume.
    Repl(ReplArgs),
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

#[derive(Args)]
struct ReplArgs {
    /// The tandemd binary [default: WORKSPACE/target/release/tandemd].
    #[arg(long, value_name = "PATH")]
    tandemd: Option<PathBuf>,
    /// The drbdadm binary [default: WORKSPACE/target/release/drbdadm].
    #[arg(long, value_name = "PATH")]
    drbdadm: Option<PathBuf>,
    /// Directory for the scratch directory holding backing files, run directories and logs.
    #[arg(long, value_name = "DIR", default_value = "/var/tmp")]
    dir: PathBuf,
    /// Backing file size of the fio and full-sync parts, e.g. 1G [default: 1G; 64M with --quick].
    #[arg(long, value_parser = nbd::parse_size)]
    size: Option<u64>,
    /// Seconds each fio run measures [default: 10; 2 with --quick].
    #[arg(long, value_name = "SECS")]
    runtime: Option<u32>,
    /// Seconds each fio run warms up before measuring [default: 2; 0 with --quick].
    #[arg(long, value_name = "SECS")]
    ramp: Option<u32>,
    /// Times each measure is taken; the table shows medians [default: 3; 1 with --quick].
    #[arg(long)]
    rounds: Option<u32>,
    /// The resync-rate of the adherence part, MiB/s.
    #[arg(long, value_name = "MIB", default_value_t = 20)]
    rate: u64,
    /// About how long the adherence part's resync lasts [default: 8; 3 with --quick].
    #[arg(long, value_name = "SECS")]
    rate_secs: Option<u64>,
    /// A smoke run of under a minute (small volumes, short runs, one round) for CI.
    #[arg(long)]
    quick: bool,
}

impl ReplArgs {
    fn config(self) -> anyhow::Result<repl::Config> {
        let q = self.quick;
        let size = self.size.unwrap_or(if q { 64 << 20 } else { 1 << 30 });
        anyhow::ensure!(
            size >= 8 << 20 && size.is_multiple_of(1 << 20),
            "--size must be at least 8 MiB and a multiple of 1 MiB"
        );
        let rounds = self.rounds.unwrap_or(if q { 1 } else { 3 });
        anyhow::ensure!(rounds >= 1, "--rounds must be at least 1");
        let runtime = self.runtime.unwrap_or(if q { 2 } else { 10 });
        anyhow::ensure!(runtime >= 1, "--runtime must be at least 1");
        anyhow::ensure!(
            (1..=4096).contains(&self.rate),
            "--rate must be 1 to 4096 (MiB/s, as resync-rate allows)"
        );
        let rate_secs = self.rate_secs.unwrap_or(if q { 3 } else { 8 });
        anyhow::ensure!(
            (1..=600).contains(&rate_secs),
            "--rate-secs must be 1 to 600"
        );
        let target = target_release_dir();
        Ok(repl::Config {
            bins: Binaries {
                tandemd: self.tandemd.unwrap_or_else(|| target.join("tandemd")),
                drbdadm: self.drbdadm.unwrap_or_else(|| target.join("drbdadm")),
            },
            dir: self.dir,
            size,
            timing: Timing {
                runtime,
                ramp: self.ramp.unwrap_or(if q { 0 } else { 2 }),
            },
            rounds,
            rate_mib: self.rate,
            rate_secs,
            huge: 1 << 40,
            memory_runtime: if q { 2 } else { 5 },
        })
    }
}

/// `$CARGO_TARGET_DIR/release/tandem-nbd`, else `target/release/tandem-nbd` in this workspace.
fn default_tandem_nbd() -> PathBuf {
    target_release_dir().join("tandem-nbd")
}

/// `$CARGO_TARGET_DIR/release`, else `target/release` in this workspace.
fn target_release_dir() -> PathBuf {
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
    target.join("release")
}

fn main() -> ExitCode {
    let result = match Cli::parse().cmd {
        Cmd::Nbd(args) => run(args),
        Cmd::Repl(args) => run_repl(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e)
            if matches!(e.downcast_ref(), Some(BenchError::Interrupted))
                || matches!(e.downcast_ref(), Some(ReplError::Interrupted)) =>
        {
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

fn run_repl(args: ReplArgs) -> anyhow::Result<()> {
    signal::install().context("cannot install signal handlers")?;
    let cfg = args.config()?;
    let mut out = std::io::stdout().lock();
    let results = repl::run(&cfg, &mut out)?;
    write!(out, "{}", repl::table(&results))?;
    writeln!(out)?;
    write!(out, "{}", repl::details(&results))?;
    let missed = repl::missed(&results);
    if missed.is_empty() {
        writeln!(out, "\nevery target met")?;
    } else {
        writeln!(out, "\ntargets missed:")?;
        for m in missed {
            writeln!(out, "  {m}")?;
        }
    }
    writeln!(
        out,
        "figures are medians of {} round(s); ratios are tandem over the peer",
        cfg.rounds
    )?;
    Ok(())
}
