//! `tandemd`: the node daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;

use clap::Parser;
use drbdadm_compat::control::LOG_FILE;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// tandem node daemon.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Run directory holding the control socket, nbd.sock, the status file and the log.
    #[arg(long, env = "TANDEM_RUN_DIR", default_value = "/run/tandem")]
    run_dir: PathBuf,
    /// This node's name, as `on NAME` sections name it (default: `uname -n`).
    #[arg(long, env = "TANDEM_NODE")]
    node: Option<String>,
    /// Also serve NBD on TCP: `ADDR:PORT`, or a bare `PORT` for loopback.
    #[arg(long, value_parser = parse_listen)]
    nbd_listen: Option<SocketAddr>,
    /// Stay in the foreground session and log to stderr too.
    #[arg(long)]
    foreground: bool,
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse()
        .map_err(|e| format!("{s:?} is not ADDR:PORT or PORT: {e}"))
}

fn main() {
    let args = Args::parse();
    match start(args) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("tandemd: {e:#}");
            std::process::exit(1);
        }
    }
}

fn start(args: Args) -> anyhow::Result<()> {
    let run_dir = std::path::absolute(&args.run_dir).unwrap_or(args.run_dir);
    std::fs::create_dir_all(&run_dir)
        .map_err(|e| anyhow::anyhow!("cannot create run directory {}: {e}", run_dir.display()))?;
    let _lock = match tandemd::daemon::lock_run_dir(&run_dir) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => anyhow::bail!(
            "another tandemd is running with run directory {} ({}/tandemd.lock is locked)",
            run_dir.display(),
            run_dir.display()
        ),
        Err(e) => anyhow::bail!("cannot lock {}/tandemd.lock: {e}", run_dir.display()),
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.join(LOG_FILE))
        .map_err(|e| anyhow::anyhow!("cannot open {}/{LOG_FILE}: {e}", run_dir.display()))?;
    let filter = || EnvFilter::try_from_env("TANDEM_LOG").unwrap_or_else(|_| "info".into());
    let stderr = args.foreground.then(|| {
        fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter())
    });
    tracing_subscriber::registry()
        .with(
            fmt::layer()
                .with_writer(Mutex::new(log))
                .with_ansi(false)
                .with_filter(filter()),
        )
        .with(stderr)
        .init();
    if !args.foreground {
        // Leave the starter's session so that its terminal and signals do not reach us; it
        // fails harmlessly when we already lead a process group.
        // SAFETY: setsid takes no arguments and touches no memory.
        unsafe { libc::setsid() };
    }
    let node = args
        .node
        .filter(|n| !n.is_empty())
        .unwrap_or_else(drbdadm_compat::res::validate::uname_n);
    let opts = tandemd::daemon::Options {
        run_dir,
        node,
        nbd_listen: args.nbd_listen,
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(tandemd::daemon::run(opts))
        .inspect_err(|e| tracing::error!("{e:#}"))
}
