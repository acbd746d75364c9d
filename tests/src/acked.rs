//! A pipelined NBD writer that knows exactly which writes the server acknowledged: the check
//! for "no acknowledged write is lost" that fio's verify state cannot give when the server dies
//! (fio counts writes that failed with the dying connection as done).
//!
//! Every block is written once, with contents derived from its offset, in a shuffled order,
//! with up to `depth` writes in flight.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

const BLOCK: usize = 4096;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const CMD_WRITE: u16 = 1;

/// The 4 KiB pattern written at `offset`.
pub fn pattern(offset: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    let mut x = offset ^ 0x9E37_79B9_7F4A_7C15;
    for chunk in b.chunks_exact_mut(8) {
        // SplitMix64: cheap, distinct per offset.
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    b
}

fn read_u32(s: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(s: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0; 8];
    s.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

/// Connects with fixed newstyle and `NBD_OPT_EXPORT_NAME`.
fn connect(socket: &Path, export: &str) -> std::io::Result<UnixStream> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello)?;
    s.write_all(&3u32.to_be_bytes())?;
    let mut m = b"IHAVEOPT".to_vec();
    m.extend_from_slice(&1u32.to_be_bytes());
    m.extend_from_slice(&(export.len() as u32).to_be_bytes());
    m.extend_from_slice(export.as_bytes());
    s.write_all(&m)?;
    let _size = read_u64(&mut s)?;
    let mut flags = [0u8; 2];
    s.read_exact(&mut flags)?;
    Ok(s)
}

/// Writes blocks `0..blocks` of the export in a shuffled order until the connection fails or
/// all are written; calls `progress(acked)` after each acknowledgement. Returns the offsets
/// the server acknowledged with success.
pub fn write_until_failure(
    socket: &Path,
    export: &str,
    blocks: u64,
    depth: usize,
    seed: u64,
    mut progress: impl FnMut(usize),
) -> Vec<u64> {
    let Ok(s) = connect(socket, export) else {
        return Vec::new();
    };
    let Ok(mut reader) = s.try_clone() else {
        return Vec::new();
    };
    let mut order: Vec<u64> = (0..blocks).collect();
    let mut x = seed | 1;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let (tx, rx) = mpsc::channel::<(u64, u32)>();
    let replies = std::thread::spawn(move || loop {
        let r = (|| -> std::io::Result<(u64, u32)> {
            if read_u32(&mut reader)? != SIMPLE_REPLY_MAGIC {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
            let error = read_u32(&mut reader)?;
            let cookie = read_u64(&mut reader)?;
            Ok((cookie, error))
        })();
        match r {
            Ok(reply) => {
                if tx.send(reply).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    });
    let mut writer = s;
    let mut acked = Vec::new();
    let mut in_flight: HashMap<u64, u64> = HashMap::new();
    let mut next = order.into_iter();
    let mut cookie = 0u64;
    let mut broken = false;
    loop {
        while !broken && in_flight.len() < depth {
            let Some(block) = next.next() else { break };
            let offset = block * BLOCK as u64;
            let mut m = Vec::with_capacity(28 + BLOCK);
            m.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
            m.extend_from_slice(&0u16.to_be_bytes());
            m.extend_from_slice(&CMD_WRITE.to_be_bytes());
            m.extend_from_slice(&cookie.to_be_bytes());
            m.extend_from_slice(&offset.to_be_bytes());
            m.extend_from_slice(&(BLOCK as u32).to_be_bytes());
            m.extend_from_slice(&pattern(offset));
            if writer.write_all(&m).is_err() {
                broken = true;
                break;
            }
            in_flight.insert(cookie, offset);
            cookie += 1;
        }
        if in_flight.is_empty() {
            break;
        }
        match rx.recv() {
            Ok((c, error)) => {
                if let Some(offset) = in_flight.remove(&c) {
                    if error == 0 {
                        acked.push(offset);
                        progress(acked.len());
                    }
                }
            }
            Err(_) => break,
        }
    }
    // The reply thread holds a clone of the socket: shut it down, or the thread waits for
    // its read timeout when the server stays up.
    let _ = writer.shutdown(std::net::Shutdown::Both);
    drop(writer);
    let _ = replies.join();
    acked
}

/// Offsets among `acked` whose block in `image` does not hold its pattern.
pub fn missing(image: &Path, acked: &[u64]) -> Vec<u64> {
    use std::os::unix::fs::FileExt;
    let Ok(f) = std::fs::File::open(image) else {
        return acked.to_vec();
    };
    let mut buf = vec![0u8; BLOCK];
    acked
        .iter()
        .copied()
        .filter(|&o| f.read_exact_at(&mut buf, o).is_err() || buf != pattern(o))
        .collect()
}
