//! tandemd, the node daemon. The replicated daemon arrives with the daemon issue; until then it
//! says so instead of pretending to run.

use clap::Parser;

/// tandem node daemon.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Run directory holding the control socket, nbd.sock and the status file.
    #[arg(long, env = "TANDEM_RUN_DIR", default_value = "/run/tandem")]
    run_dir: std::path::PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::bail!(
        "tandemd is not implemented yet (run dir {}); serve a file with `tandem-nbd serve` meanwhile",
        args.run_dir.display()
    )
}
