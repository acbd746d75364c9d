//! `tandem-nbd`: serve a file or block device over NBD, without replication.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use nbd_server::device::BlockDevice;
use nbd_server::export::{Export, ExportTable};
use nbd_server::file::{FileDevice, FileOptions, IoEngine};
use nbd_server::server::{Endpoint, Listener, Shutdown};
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

#[derive(Parser)]
#[command(
    name = "tandem-nbd",
    version,
    about = "Serve a file or block device over NBD"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve PATH until Ctrl-C or SIGTERM.
    Serve(Serve),
}

#[derive(Args)]
struct Serve {
    /// The file or block device to export.
    path: PathBuf,
    /// Listen on TCP, e.g. 127.0.0.1:10809.
    #[arg(long, conflicts_with = "socket", required_unless_present = "socket")]
    listen: Option<SocketAddr>,
    /// Listen on a Unix socket.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Export name; without it the file is the default export (the empty name).
    #[arg(long, default_value = "")]
    name: String,
    /// Refuse writes.
    #[arg(long)]
    read_only: bool,
    /// Bypass the page cache (O_DIRECT); clients must then use 4 KiB aligned requests.
    #[arg(long)]
    direct: bool,
    /// Disk I/O path.
    #[arg(long, value_enum, default_value_t = Engine::Auto)]
    io_engine: Engine,
}

#[derive(Clone, Copy, ValueEnum)]
enum Engine {
    /// io_uring when available, else pread/pwrite threads.
    Auto,
    /// pread/pwrite threads.
    Threads,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TANDEM_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let Cmd::Serve(args) = Cli::parse().cmd;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(args))
}

async fn serve(args: Serve) -> anyhow::Result<()> {
    let engine = match args.io_engine {
        Engine::Auto => IoEngine::Auto,
        Engine::Threads => IoEngine::Threads,
    };
    let opts = FileOptions {
        read_only: args.read_only,
        direct: args.direct,
        engine,
    };
    let dev = FileDevice::open(&args.path, opts)
        .with_context(|| format!("cannot open {}", args.path.display()))?;
    info!("disk I/O: {}", dev.engine_name());
    let size = dev.size();
    let mut table = ExportTable::new();
    table.insert(Export {
        name: args.name.clone(),
        description: args.path.display().to_string(),
        device: Arc::new(dev),
        read_only: args.read_only,
    });
    let endpoint = match (args.listen, args.socket) {
        (Some(a), _) => Endpoint::Tcp(a),
        (None, Some(p)) => Endpoint::Unix(p),
        (None, None) => anyhow::bail!("give --listen ADDR or --socket PATH"),
    };
    // Handlers first: a signal that arrives once the banner is out must stop us cleanly.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let listener = Listener::bind(&endpoint)
        .await
        .with_context(|| format!("cannot listen on {endpoint:?}"))?;
    let uri = listener.uri(&args.name);
    println!(
        "serving {} ({size} bytes) as export {:?} at {uri}",
        args.path.display(),
        args.name
    );
    match &endpoint {
        Endpoint::Unix(p) => {
            println!("attach with: nbdfuse DIR/disk '{uri}'   or: qemu-io -f raw '{uri}'");
            println!(
                "          or: nbd-client -unix {} /dev/nbd0 -N '{}'",
                p.display(),
                args.name
            );
        }
        Endpoint::Tcp(_) => {
            let a = listener_addr(&listener);
            println!("attach with: nbdfuse DIR/disk '{uri}'   or: qemu-io -f raw '{uri}'");
            println!(
                "          or: nbd-client {} {} /dev/nbd0 -N '{}'",
                a.ip(),
                a.port(),
                args.name
            );
        }
    }
    let (stop, shutdown) = Shutdown::new();
    let server = tokio::spawn(listener.serve(Arc::new(table), shutdown));
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
    let _ = stop.send(true);
    server.await?;
    info!("stopped");
    Ok(())
}

fn listener_addr(l: &Listener) -> SocketAddr {
    match l {
        Listener::Tcp(t) => t
            .local_addr()
            .unwrap_or_else(|_| ([127, 0, 0, 1], 0).into()),
        Listener::Unix(..) => ([127, 0, 0, 1], 0).into(),
    }
}
