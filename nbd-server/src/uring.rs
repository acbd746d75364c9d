//! One thread per backing file that owns an io_uring and runs positional I/O for async callers.
//!
//! Callers queue an [`Op`] and wake the thread through an eventfd that the ring itself watches,
//! so the thread only ever blocks in `submit_and_wait`; the queue, the wake-up and the rules for
//! stopping are [`handoff`]'s (checked under loom by `tests/loom_ring.rs`). Short transfers are
//! resubmitted for the remainder; results go back on a oneshot channel.

mod handoff;

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use io_uring::{opcode, squeue, types, IoUring};
use tokio::sync::oneshot;

use handoff::{Event, Kernel, Submitter, Wake};

/// Ring entries; also the most operations in the kernel at once.
const RING_ENTRIES: u32 = 256;
/// `user_data` of the eventfd read that wakes the thread.
const WAKE: u64 = u64::MAX;

/// A positional operation on the file.
pub enum OpKind {
    /// Read `len` bytes into the spare capacity of `buf`, after its current contents (which
    /// are alignment padding, already initialised).
    Read {
        offset: u64,
        buf: Vec<u8>,
        len: usize,
    },
    /// Write all of `data`; with `dsync` it is durable on completion (`RWF_DSYNC`).
    Write {
        offset: u64,
        data: Bytes,
        dsync: bool,
    },
    /// `fdatasync`.
    Sync,
    /// `fallocate(mode)` over a range.
    Fallocate { offset: u64, len: u64, mode: i32 },
}

/// What a finished operation hands back.
pub enum OpOutput {
    /// The read buffer, its data after the padding it was submitted with.
    Read(Vec<u8>),
    Done,
}

pub struct Op {
    pub kind: OpKind,
    pub done: oneshot::Sender<io::Result<OpOutput>>,
}

/// Handle held by the device; dropping it stops the thread once its work is done.
pub struct Ring {
    tx: Submitter<Op, EventFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ring {
    /// Starts the ring thread for `file`.
    ///
    /// # Errors
    /// io_uring is unavailable (old kernel, seccomp, `io_uring_disabled`) or eventfd failed.
    pub fn start(file: Arc<File>, name: &str) -> io::Result<Ring> {
        let ring = IoUring::new(RING_ENTRIES)?;
        // SAFETY: eventfd has no memory-safety preconditions; we check the result.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nothing else.
        let wake = EventFd(unsafe { OwnedFd::from_raw_fd(fd) });
        let (tx, inbox) = handoff::channel(wake);
        let mut worker = Worker::new(ring, file);
        let thread = std::thread::Builder::new()
            .name(format!("uring-{name}"))
            .spawn(move || handoff::run(&mut worker, inbox))?;
        Ok(Ring {
            tx,
            thread: Some(thread),
        })
    }

    /// Queues an operation and wakes the thread; fails it if the thread has stopped.
    pub fn submit(&self, op: Op) {
        if let Err(op) = self.tx.submit(op) {
            let _ = op
                .done
                .send(Err(io::Error::other("disk thread has stopped")));
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        self.tx.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The eventfd the ring thread keeps a read armed on.
struct EventFd(OwnedFd);

impl Wake for EventFd {
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local to an eventfd we own; failure (counter
        // overflow) cannot happen with increments of one and is harmless.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

/// An operation in the kernel, with how far it has progressed.
struct InFlight {
    op: Op,
    done_bytes: usize,
}

struct Worker {
    ring: IoUring,
    file: Arc<File>,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    /// Where the armed eventfd read puts the counter.
    wake_buf: Box<u64>,
}

impl Kernel for Worker {
    type Op = Op;
    type Wake = EventFd;

    fn arm_wake(&mut self, wake: &EventFd) -> io::Result<()> {
        let e = opcode::Read::new(
            types::Fd(wake.0.as_raw_fd()),
            (&mut *self.wake_buf as *mut u64).cast(),
            8,
        )
        .build()
        .user_data(WAKE);
        self.push_entry(&e)
    }

    fn wait(&mut self, _: &EventFd, events: &mut Vec<Event>) -> io::Result<()> {
        match self.ring.submit_and_wait(1) {
            Ok(_) => {}
            // Short of resources, or completions to flush first: reap what there is and retry.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY)) => {
                if self.ring.completion().is_empty() {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Err(e) => return Err(e),
        }
        events.extend(self.ring.completion().map(|c| match c.user_data() {
            WAKE => Event::Wake,
            token => Event::Done {
                token,
                res: c.result(),
            },
        }));
        Ok(())
    }

    fn start(&mut self, op: Op) -> Result<(), Op> {
        // One entry stays for the wake-up.
        if self.in_flight() >= RING_ENTRIES as usize - 1 {
            return Err(op);
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        self.slots[slot] = Some(InFlight { op, done_bytes: 0 });
        self.push(slot);
        Ok(())
    }

    fn complete(&mut self, token: u64, res: i32) {
        self.complete_slot(token as usize, res);
    }

    fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// The kernel may still write into these buffers (and the wake counter), so they are
    /// leaked rather than handed back or freed.
    fn fail_in_flight(&mut self, e: &io::Error) {
        for inf in self.slots.iter_mut().filter_map(Option::take) {
            let _ = inf.op.done.send(Err(copy_error(e)));
            match inf.op.kind {
                OpKind::Read { buf, .. } => std::mem::forget(buf),
                OpKind::Write { data, .. } => std::mem::forget(data),
                OpKind::Sync | OpKind::Fallocate { .. } => {}
            }
        }
        self.free = (0..self.slots.len()).collect();
        std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new(0)));
    }

    fn fail(op: Op, e: &io::Error) {
        let _ = op.done.send(Err(copy_error(e)));
    }
}

fn copy_error(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

impl Worker {
    fn new(ring: IoUring, file: Arc<File>) -> Self {
        Worker {
            ring,
            file,
            slots: Vec::new(),
            free: Vec::new(),
            wake_buf: Box::new(0),
        }
    }

    /// Pushes (or re-pushes, after a short transfer) the SQE for a slot.
    fn push(&mut self, slot: usize) {
        let fd = types::Fd(self.file.as_raw_fd());
        let Some(inf) = self.slots[slot].as_mut() else {
            return;
        };
        let done = inf.done_bytes;
        let entry = match &mut inf.op.kind {
            OpKind::Read { offset, buf, len } => {
                assert!(buf.capacity() >= buf.len() + *len, "read buffer too small");
                // SAFETY: the capacity covers `buf.len() + len` (asserted); the kernel writes
                // into spare capacity, which stays allocated, unmoved, until completion.
                let ptr = unsafe { buf.as_mut_ptr().add(buf.len() + done) };
                opcode::Read::new(fd, ptr, (*len - done) as u32)
                    .offset(*offset + done as u64)
                    .build()
            }
            OpKind::Write {
                offset,
                data,
                dsync,
            } => {
                let rest = &data[done..];
                let flags = if *dsync { libc::RWF_DSYNC } else { 0 };
                opcode::Write::new(fd, rest.as_ptr(), rest.len() as u32)
                    .offset(*offset + done as u64)
                    .rw_flags(flags)
                    .build()
            }
            OpKind::Sync => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            OpKind::Fallocate { offset, len, mode } => opcode::Fallocate::new(fd, *len)
                .offset(*offset)
                .mode(*mode)
                .build(),
        };
        if let Err(e) = self.push_entry(&entry.user_data(slot as u64)) {
            self.finish(slot, Err(e));
        }
    }

    fn push_entry(&mut self, e: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every buffer an entry points to (read/write buffers owned by the slot,
            // the boxed wake counter) lives until its completion is reaped.
            if unsafe { self.ring.submission().push(e) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    fn complete_slot(&mut self, slot: usize, res: i32) {
        if res < 0 {
            let e = io::Error::from_raw_os_error(-res);
            if e.kind() == io::ErrorKind::Interrupted || res == -libc::EAGAIN {
                self.push(slot);
            } else {
                self.finish(slot, Err(e));
            }
            return;
        }
        let Some(inf) = self.slots[slot].as_mut() else {
            return;
        };
        let want = match &inf.op.kind {
            OpKind::Read { len, .. } => *len,
            OpKind::Write { data, .. } => data.len(),
            OpKind::Sync | OpKind::Fallocate { .. } => 0,
        };
        if want == 0 {
            return self.finish(slot, Ok(()));
        }
        if res == 0 {
            let e = io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "short transfer: end of backing file",
            );
            return self.finish(slot, Err(e));
        }
        inf.done_bytes += res as usize;
        if inf.done_bytes < want {
            self.push(slot);
        } else {
            self.finish(slot, Ok(()));
        }
    }

    fn finish(&mut self, slot: usize, res: io::Result<()>) {
        let Some(inf) = self.slots[slot].take() else {
            return;
        };
        self.free.push(slot);
        let out = res.map(|()| match inf.op.kind {
            OpKind::Read { mut buf, len, .. } => {
                // SAFETY: the kernel initialised the `len` bytes after the padding (completion
                // checked `done_bytes == len`), and the capacity covers them.
                unsafe { buf.set_len(buf.len() + len) };
                OpOutput::Read(buf)
            }
            _ => OpOutput::Done,
        });
        let _ = inf.op.done.send(out);
    }
}
