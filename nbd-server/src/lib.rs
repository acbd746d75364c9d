//! An NBD server: fixed newstyle handshake, simple and structured replies, `base:allocation`,
//! pipelined out-of-order requests, several named exports, over any [`device::BlockDevice`].
//!
//! It knows nothing of replication. The protocol logic (`proto`, `handshake`, `transmission`)
//! does no I/O; `server` is the tokio glue, `file` the io_uring-backed file device.
//!
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! use std::sync::Arc;
//! use nbd_server::{export::{Export, ExportTable}, file::{FileDevice, FileOptions}};
//! use nbd_server::server::{Endpoint, Listener, Shutdown};
//! let dev = FileDevice::open("disk.img".as_ref(), FileOptions::default())?;
//! let mut table = ExportTable::new();
//! table.insert(Export { name: String::new(), description: String::new(), device: Arc::new(dev), read_only: false });
//! let listener = Listener::bind(&Endpoint::Unix("nbd.sock".into())).await?;
//! let (_stop, shutdown) = Shutdown::new();
//! listener.serve(Arc::new(table), shutdown).await;
//! # Ok(()) }
//! ```

pub mod device;
pub mod export;
pub mod file;
pub mod handshake;
pub mod memory;
pub mod proto;
pub mod server;
pub mod transmission;
mod uring;
