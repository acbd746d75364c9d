//! The simulated link between the two nodes: two byte streams that behave like one TCP
//! connection (each direction in order, with latency, jitter and a bandwidth limit), carrying
//! frames encoded with `repl_core::wire::codec`. A side that closes sends a close marker after
//! what it already sent; a partition holds a direction's bytes back (TCP retransmits) until it
//! heals or the ping timeout ends the connection.

use std::collections::VecDeque;

use bytes::BytesMut;
use repl_core::link::Link;
use repl_core::wire::{Decoder, Packet, Protocol};

/// What travels on one direction.
#[derive(Debug)]
pub enum Chunk {
    /// One encoded frame; `corrupt` says how the simulator damaged it, `original` is the
    /// packet that was encoded (the receiver compares what it decodes).
    Frame {
        bytes: Vec<u8>,
        corrupt: Corrupt,
        original: Packet,
    },
    /// The sender closed its end after what precedes.
    Close,
}

/// A deliberate corruption of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corrupt {
    None,
    /// A byte of the frame header's magic: the decoder must refuse the stream.
    Framing,
    /// A byte of a data payload covered by the integrity digest: the engine must refuse it.
    Payload,
}

/// Timing of one direction, drawn per run and changed by slow-link faults.
#[derive(Debug, Clone, Copy)]
pub struct DirTiming {
    pub latency_ns: u64,
    pub jitter_ns: u64,
    /// Nanoseconds per KiB (bandwidth).
    pub ns_per_kib: u64,
}

/// One direction of the connection (from node `i` to the other).
#[derive(Debug)]
pub struct Dir {
    pub queue: VecDeque<(u64, Chunk)>,
    /// When the sender's last byte left (bandwidth).
    busy_until: u64,
    /// When the last queued chunk arrives (keeps delivery in order).
    last_at: u64,
    /// A partition holds this direction's bytes back.
    pub blocked: bool,
    pub timing: DirTiming,
    /// Multiplies latency and per-byte time while a slow-link fault is on.
    pub slow: u64,
}

/// A node's end of the connection.
#[derive(Debug)]
pub enum SideState {
    /// No connection on this end.
    Closed,
    /// The link handshake (features, auth, protocol) is running.
    Handshaking(Box<Link>),
    /// Established: packets belong to the engine; `protocol` is what was agreed.
    Established { protocol: Protocol },
}

/// One end: its state and its receive stream.
#[derive(Debug)]
pub struct Side {
    pub state: SideState,
    pub decoder: Decoder,
    pub buf: BytesMut,
}

impl Side {
    pub fn closed() -> Side {
        Side {
            state: SideState::Closed,
            decoder: Decoder::new(),
            buf: BytesMut::new(),
        }
    }

    pub fn is_open(&self) -> bool {
        !matches!(self.state, SideState::Closed)
    }

    pub fn established(&self) -> Option<Protocol> {
        match self.state {
            SideState::Established { protocol } => Some(protocol),
            _ => None,
        }
    }
}

/// The connection between node 0 and node 1.
#[derive(Debug)]
pub struct Net {
    /// Counts connections; events of an older one are ignored.
    pub gen: u64,
    pub sides: [Side; 2],
    /// `dirs[i]` carries what node `i` sends.
    pub dirs: [Dir; 2],
}

impl Net {
    pub fn new(timing: [DirTiming; 2]) -> Net {
        let dir = |t| Dir {
            queue: VecDeque::new(),
            busy_until: 0,
            last_at: 0,
            blocked: false,
            timing: t,
            slow: 1,
        };
        Net {
            gen: 0,
            sides: [Side::closed(), Side::closed()],
            dirs: [dir(timing[0]), dir(timing[1])],
        }
    }

    /// Either end is still open.
    pub fn any_open(&self) -> bool {
        self.sides.iter().any(Side::is_open)
    }

    /// Nothing is queued in either direction.
    pub fn empty(&self) -> bool {
        self.dirs.iter().all(|d| d.queue.is_empty())
    }

    pub fn partitioned(&self) -> bool {
        self.dirs.iter().any(|d| d.blocked)
    }

    /// Starts connection `gen + 1` with both ends handshaking.
    pub fn open(&mut self, links: [Link; 2]) {
        self.gen += 1;
        let [a, b] = links;
        for (side, link) in self.sides.iter_mut().zip([a, b]) {
            *side = Side::closed();
            side.state = SideState::Handshaking(Box::new(link));
        }
        for d in &mut self.dirs {
            d.queue.clear();
        }
    }

    /// Queues a chunk from `from` and returns when it arrives; `None` when `from` is closed.
    pub fn send(
        &mut self,
        from: usize,
        chunk: Chunk,
        bytes: u64,
        now: u64,
        jitter: u64,
    ) -> Option<u64> {
        if !self.sides[from].is_open() {
            return None;
        }
        let d = &mut self.dirs[from];
        let slow = d.slow.max(1);
        let start = now.max(d.busy_until);
        d.busy_until = start + d.timing.ns_per_kib * slow * bytes / 1024;
        let at = (d.busy_until + d.timing.latency_ns * slow + jitter.min(d.timing.jitter_ns))
            .max(d.last_at)
            .max(now + 1);
        d.last_at = at;
        d.queue.push_back((at, chunk));
        Some(at)
    }

    /// `from` closes its end: a close marker follows what it sent, and what travels towards
    /// it is dropped. Returns when the marker arrives.
    pub fn close(&mut self, from: usize, now: u64, extra_delay: u64) -> Option<u64> {
        if !self.sides[from].is_open() {
            return None;
        }
        let at = self.send(from, Chunk::Close, 0, now + extra_delay, 0);
        self.sides[from] = Side::closed();
        self.dirs[1 - from].queue.clear();
        at
    }

    /// Both ends go away at once (the connection timed out or was reset).
    pub fn tear_down(&mut self) {
        self.sides = [Side::closed(), Side::closed()];
        for d in &mut self.dirs {
            d.queue.clear();
        }
    }

    /// The next chunk of direction `dir` if it is due and not held back by a partition.
    pub fn pop_due(&mut self, dir: usize, now: u64) -> Option<Chunk> {
        let d = &mut self.dirs[dir];
        if d.blocked {
            return None;
        }
        match d.queue.front() {
            Some((at, _)) if *at <= now => d.queue.pop_front().map(|(_, c)| c),
            _ => None,
        }
    }

    /// Arrival times of everything queued in `dir` (to reschedule after a partition heals).
    pub fn pending_times(&self, dir: usize) -> Vec<u64> {
        self.dirs[dir].queue.iter().map(|(at, _)| *at).collect()
    }
}
