//! The daemon's NBD exports: each volume of a Primary resource as `NAME/N` (volume 0 also as
//! `NAME`), backed by a device that hands every request to the volume's task.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use nbd_server::device::{BlockDevice, BlockSizes, Capabilities, DeviceFuture, Extent, ZeroFlags};
use nbd_server::export::{Export, ExportSource, Refusal};
use nbd_server::proto::MAX_PAYLOAD;
use repl_core::engine::{Request, MAX_REQUEST_BYTES};
use tokio::sync::{mpsc, oneshot};

use crate::resource::{Io, OpenGuard, Registry};

/// Exports over the daemon's resources.
#[derive(Debug, Clone)]
pub struct Exports {
    pub registry: Arc<Registry>,
}

/// `NAME/N` -> (`NAME`, volume N); `NAME` -> (`NAME`, volume 0).
fn volume_of(export: &str) -> (&str, u32) {
    match crate::daemon::split_target(export) {
        (name, Some(v)) => (name, v),
        (name, None) => (name, 0),
    }
}

impl ExportSource for Exports {
    fn list(&self) -> Vec<(String, String)> {
        let mut by_resource: std::collections::BTreeMap<String, usize> = Default::default();
        let handles = self.registry.handles();
        for h in &handles {
            *by_resource.entry(h.shared.name.clone()).or_default() += 1;
        }
        let mut v: Vec<(String, String)> = handles
            .into_iter()
            .filter(|h| h.shared.is_primary())
            .map(|h| {
                let d = format!(
                    "tandem resource {} volume {} (minor {})",
                    h.shared.name, h.shared.volume, h.shared.minor
                );
                // A single volume 0 is exported under the resource's name alone.
                let single = by_resource.get(&h.shared.name) == Some(&1) && h.shared.volume == 0;
                let name = if single {
                    h.shared.name.clone()
                } else {
                    format!("{}/{}", h.shared.name, h.shared.volume)
                };
                (name, d)
            })
            .collect();
        v.sort();
        v
    }

    fn open(&self, name: &str) -> Result<Export, Refusal> {
        let (res, volume) = volume_of(name);
        let handles = match self.registry.get(res) {
            Some(v) if v.starting.contains(&volume) => {
                return Err(Refusal::Policy(format!(
                    "resource {res} is being brought up; try again"
                )))
            }
            Some(v) => v.up,
            None => {
                return Err(Refusal::Unknown(format!(
                    "no resource {name:?} is up on this node"
                )))
            }
        };
        let Some(handle) = handles.into_iter().find(|h| h.shared.volume == volume) else {
            return Err(Refusal::Unknown(format!(
                "resource {res} has no volume {volume} on this node"
            )));
        };
        let label = if name.contains('/') {
            format!("{res}/{volume}")
        } else {
            res.to_string()
        };
        let Some(guard) = handle.shared.try_open() else {
            return Err(Refusal::Policy(format!(
                "resource {label} is Secondary; promote it with drbdadm primary {res}"
            )));
        };
        Ok(Export {
            name: name.into(),
            description: format!(
                "tandem resource {res} volume {volume} (minor {})",
                handle.shared.minor
            ),
            device: Arc::new(ResourceDevice {
                io: handle.io.clone(),
                size: handle.shared.size(),
                _open: guard,
            }),
            read_only: false,
        })
    }
}

/// One NBD session's view of a resource; the session counts as holding the device open until
/// this is dropped (after its last in-flight request).
pub struct ResourceDevice {
    io: mpsc::Sender<Io>,
    size: u64,
    _open: OpenGuard,
}

impl ResourceDevice {
    async fn call(&self, req: Request) -> io::Result<Option<Bytes>> {
        let (reply, rx) = oneshot::channel();
        let gone = || io::Error::from_raw_os_error(libc::EIO);
        self.io.send(Io { req, reply }).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Runs a ranged request in pieces the engine accepts.
    async fn split(
        &self,
        offset: u64,
        len: u32,
        make: impl Fn(u64, u32) -> Request,
    ) -> io::Result<()> {
        let mut at = offset;
        let end = offset + u64::from(len);
        while at < end {
            // MAX_REQUEST_BYTES fits u32 (it is 32 MiB).
            let n = (end - at).min(MAX_REQUEST_BYTES) as u32;
            self.call(make(at, n)).await?;
            at += u64::from(n);
        }
        Ok(())
    }
}

impl BlockDevice for ResourceDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            fast_zero: false,
            cache: false,
            block_status: false,
            ..Capabilities::ALL
        }
    }

    fn block_sizes(&self) -> BlockSizes {
        BlockSizes {
            minimum: 512,
            preferred: 4096,
            maximum: MAX_PAYLOAD.min(MAX_REQUEST_BYTES as u32),
        }
    }

    fn read(&self, offset: u64, len: u32) -> DeviceFuture<'_, Bytes> {
        Box::pin(async move {
            self.call(Request::Read { offset, len })
                .await?
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))
        })
    }

    fn write(&self, offset: u64, data: Bytes, fua: bool) -> DeviceFuture<'_, ()> {
        Box::pin(async move {
            self.call(Request::Write { offset, data, fua }).await?;
            Ok(())
        })
    }

    fn flush(&self) -> DeviceFuture<'_, ()> {
        Box::pin(async move {
            self.call(Request::Flush).await?;
            Ok(())
        })
    }

    fn trim(&self, offset: u64, len: u32, fua: bool) -> DeviceFuture<'_, ()> {
        Box::pin(async move {
            self.split(offset, len, |offset, len| Request::Trim { offset, len })
                .await?;
            if fua {
                self.call(Request::Flush).await?;
            }
            Ok(())
        })
    }

    fn write_zeroes(&self, offset: u64, len: u32, flags: ZeroFlags) -> DeviceFuture<'_, ()> {
        Box::pin(async move {
            if flags.fast {
                return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
            }
            self.split(offset, len, |offset, len| Request::WriteZeroes {
                offset,
                len,
                fua: flags.fua,
            })
            .await
        })
    }

    fn cache(&self, _offset: u64, _len: u32) -> DeviceFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    fn extents(&self, _offset: u64, len: u32) -> DeviceFuture<'_, Vec<Extent>> {
        Box::pin(async move {
            Ok(vec![Extent {
                length: u64::from(len),
                flags: 0,
            }])
        })
    }
}
