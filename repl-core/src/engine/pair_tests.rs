//! Two engines joined by an in-memory link: the handshake, mirrored writes, resync and link
//! loss, scripted. `repl-sim` runs the same wiring under seeded faults.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use super::*;
use crate::engine::{CallId, LinkParams, NetConfig};
use crate::time::Instant;
use crate::types::Uuid;
use crate::uuid::GenerationUuids;
use crate::wire::{IntegrityAlg, Packet, Protocol};

/// What travels on one direction of the link.
#[derive(Debug)]
enum OnWire {
    Packet(Packet),
    /// The sender closed the link after what precedes.
    Close,
}

struct Node {
    e: Engine,
    d: MemDisk,
    completions: Vec<(ReqId, Result<Option<Bytes>, RequestError>)>,
    events: Vec<Event>,
    /// Keep disk operations instead of performing them (to observe ordering).
    hold_disk: bool,
    held: Vec<(OpId, DiskOp)>,
    /// Data writes fail (a dying disk).
    fail_writes: bool,
    /// Exit statuses of the handlers the engine waits for; a handler not listed is held in
    /// `held_calls` until the test answers it.
    handler_exit: HashMap<Handler, i32>,
    held_calls: Vec<(Handler, CallId)>,
}

impl Node {
    fn logs(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Log(l) => Some(l.clone()),
                _ => None,
            })
            .collect()
    }

    fn logged(&self, needle: &str) -> bool {
        self.logs().iter().any(|l| l.contains(needle))
    }

    fn completed(&self, req: ReqId) -> bool {
        self.completions.iter().any(|(r, _)| *r == req)
    }

    /// Whether the engine asked for this handler and waited for it.
    fn called(&self, h: Handler) -> bool {
        self.events
            .iter()
            .any(|e| matches!(e, Event::HandlerCall { handler, .. } if *handler == h))
    }
}

struct Pair {
    n: [Node; 2],
    wire: [VecDeque<OnWire>; 2],
    /// Node i's end of the link is open (it has not closed or lost it).
    open: [bool; 2],
    now: Instant,
    protocol: Protocol,
}

/// The pair's `net` options. The request timer is off (`ko-count 0`): `settle` jumps to the
/// next timer, and tests that hold a disk would otherwise see the connection time out.
fn net_config(protocol: Protocol) -> NetConfig {
    NetConfig {
        protocol,
        two_primaries: false,
        integrity: Some(IntegrityAlg::Crc32c),
        resync_rate_kib: 1 << 20,
        timeout_ds: 60,
        ko_count: 0,
    }
}

impl Pair {
    fn new(protocol: Protocol) -> Pair {
        Pair::with_sizes(protocol, [DEV, DEV])
    }

    fn with_sizes(protocol: Protocol, devs: [u64; 2]) -> Pair {
        let make = |seed: u64| {
            let mut d = MemDisk::created_with(devs[seed as usize - 1]);
            let mut cfg = config(61);
            cfg.seed = seed;
            cfg.net = Some(net_config(protocol));
            let mut e = Engine::attach(cfg, d.on_disk()).unwrap();
            settle(&mut e, &mut d);
            e.command(Command::Connect, false).unwrap();
            settle(&mut e, &mut d);
            assert_eq!(e.state().conn, ConnState::WFConnection);
            Node {
                e,
                d,
                completions: vec![],
                events: vec![],
                hold_disk: false,
                held: vec![],
                fail_writes: false,
                handler_exit: HashMap::from([
                    (Handler::BeforeResyncTarget, 0),
                    (Handler::BeforeResyncSource, 0),
                ]),
                held_calls: vec![],
            }
        };
        Pair {
            n: [make(1), make(2)],
            wire: [VecDeque::new(), VecDeque::new()],
            open: [false, false],
            now: Instant::from_nanos(1),
            protocol,
        }
    }

    /// What node `i`'s link agrees on (node 0 breaks ties).
    fn link_params(&self, i: usize) -> LinkParams {
        LinkParams {
            protocol: self.protocol,
            integrity: Some(IntegrityAlg::Crc32c),
            resolve_conflicts: i == 0,
            discard_my_data: false,
            version: crate::wire::MAX_VERSION,
        }
    }

    fn connect(&mut self) {
        for i in 0..2 {
            let params = self.link_params(i);
            self.n[i].e.peer_connected(params);
            self.open[i] = true;
        }
        self.settle();
    }

    /// The link breaks under both nodes at once.
    fn cut(&mut self) {
        self.wire = [VecDeque::new(), VecDeque::new()];
        for i in 0..2 {
            if self.open[i] {
                self.open[i] = false;
                self.n[i].e.peer_lost();
            }
        }
        self.settle();
    }

    /// Drains every node's outputs once and delivers one packet each way.
    fn step(&mut self) -> bool {
        let mut busy = false;
        let now = self.now;
        for i in 0..2 {
            while let Some(o) = self.n[i].e.poll_output() {
                busy = true;
                match o {
                    Output::Disk { op, kind } => {
                        if self.n[i].hold_disk {
                            self.n[i].held.push((op, kind));
                        } else if self.n[i].fail_writes && matches!(kind, DiskOp::Write { .. }) {
                            self.n[i].e.disk_done(op, DiskResult::Failed, now);
                        } else {
                            let r = self.n[i].d.perform(&kind);
                            self.n[i].e.disk_done(op, r, now);
                        }
                    }
                    Output::Complete { req, result } => self.n[i].completions.push((req, result)),
                    Output::Event(ev) => {
                        if let Event::HandlerCall { handler, call } = ev {
                            match self.n[i].handler_exit.get(&handler) {
                                Some(&status) => self.n[i].e.handler_returned(call, status, now),
                                None => self.n[i].held_calls.push((handler, call)),
                            }
                        }
                        self.n[i].events.push(ev);
                    }
                    Output::Send(p) => {
                        if self.open[i] {
                            self.wire[i].push_back(OnWire::Packet(p));
                        }
                    }
                    Output::Disconnect { .. } => {
                        if self.open[i] {
                            self.open[i] = false;
                            self.wire[i].push_back(OnWire::Close);
                            self.wire[1 - i].clear();
                        }
                    }
                }
            }
        }
        for i in 0..2 {
            let to = 1 - i;
            if let Some(w) = self.wire[i].pop_front() {
                busy = true;
                match w {
                    OnWire::Packet(p) => {
                        if self.open[to] {
                            let now = self.now;
                            self.n[to].e.receive(p, now);
                        }
                    }
                    OnWire::Close => {
                        if self.open[to] {
                            self.open[to] = false;
                            self.n[to].e.peer_lost();
                        }
                    }
                }
            }
        }
        busy
    }

    /// Runs until nothing moves and no timer is due, advancing simulated time to timers.
    fn settle(&mut self) {
        for _ in 0..1_000_000 {
            while self.step() {}
            let next = self.n.iter().filter_map(|n| n.e.next_tick()).min();
            let Some(at) = next else {
                return;
            };
            self.now = self.now.max(at);
            let now = self.now;
            for n in &mut self.n {
                if n.e.next_tick().is_some_and(|t| t <= now) {
                    n.e.tick(now);
                }
            }
        }
        panic!("the pair never settled");
    }

    fn submit(&mut self, i: usize, r: Request) -> ReqId {
        let now = self.now;
        let req = self.n[i].e.submit(r, now).unwrap();
        self.settle();
        req
    }

    fn conns(&self) -> (ConnState, ConnState) {
        (self.n[0].e.state().conn, self.n[1].e.state().conn)
    }

    fn disks(&self) -> (DiskState, DiskState) {
        (self.n[0].e.state().disk, self.n[1].e.state().disk)
    }

    /// The data areas of both disks are byte-identical.
    fn assert_identical(&self) {
        let size = self.n[0].e.size.min(self.n[1].e.size) as usize;
        let (a, b) = (&self.n[0].d.bytes[..size], &self.n[1].d.bytes[..size]);
        if a != b {
            let first = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(0);
            panic!("data differs from byte {first}");
        }
    }

    /// Both nodes fully synced and connected, node 0 Primary.
    fn synced(protocol: Protocol) -> Pair {
        let mut p = Pair::new(protocol);
        p.connect();
        p.n[0]
            .e
            .command(Command::Primary { force: true }, false)
            .unwrap();
        p.settle();
        assert_eq!(p.conns(), (ConnState::Connected, ConnState::Connected));
        assert_eq!(p.disks(), (DiskState::UpToDate, DiskState::UpToDate));
        p
    }
}

#[test]
fn fresh_pair_connects_inconsistent_then_force_primary_syncs_everything() {
    let mut p = Pair::new(Protocol::C);
    p.connect();
    assert_eq!(p.conns(), (ConnState::Connected, ConnState::Connected));
    assert_eq!(
        p.disks(),
        (DiskState::Inconsistent, DiskState::Inconsistent)
    );
    assert!(p.n[0].logged("uuid_compare()=0 by rule 10"));
    // Something on node 0's disk that only a full sync carries over.
    p.n[0].d.put(12345 * 512, &[7; 4096]);
    p.n[0]
        .e
        .command(Command::Primary { force: true }, false)
        .unwrap();
    p.settle();
    assert!(
        p.n[1].logged("uuid_compare()=-2 by rule 20"),
        "{:?}",
        p.n[1].logs()
    );
    assert!(p.n[1].logged("Began resync as SyncTarget (will sync"));
    assert!(p.n[0].logged("Began resync as SyncSource"));
    assert!(p.n[1].logged("Resync done"));
    assert!(p.n[1].called(Handler::BeforeResyncTarget));
    assert!(p.n[0].called(Handler::BeforeResyncSource));
    assert!(p.n[1]
        .events
        .contains(&Event::Handler(Handler::AfterResyncTarget)));
    assert_eq!(p.conns(), (ConnState::Connected, ConnState::Connected));
    assert_eq!(p.disks(), (DiskState::UpToDate, DiskState::UpToDate));
    assert_eq!(p.n[0].e.state().pdsk, DiskState::UpToDate);
    assert_eq!(p.n[1].e.state().peer, Role::Primary);
    assert_eq!(p.n[0].e.out_of_sync_blocks(), 0);
    assert_eq!(p.n[1].e.out_of_sync_blocks(), 0);
    let (a, b) = (p.n[0].e.uuids(), p.n[1].e.uuids());
    let masked =
        |u: GenerationUuids| [u.current, u.bitmap, u.history[0], u.history[1]].map(|x| x.masked());
    assert_eq!(masked(a), masked(b), "{a} vs {b}");
    p.assert_identical();
    // Both superblocks say UpToDate and agree after the resync.
    assert_eq!(p.n[1].d.superblock().uuids, p.n[1].e.uuids());
}

#[test]
fn protocol_c_completes_only_after_the_peer_wrote() {
    let mut p = Pair::synced(Protocol::C);
    p.n[1].hold_disk = true;
    let req = p.submit(0, write(1 << 20, 9, 8192));
    assert!(!p.n[0].completed(req), "completed before the peer's disk");
    assert_eq!(p.n[0].e.status().counters.pe, 1);
    let held = std::mem::take(&mut p.n[1].held);
    p.n[1].hold_disk = false;
    for (op, kind) in held {
        let r = p.n[1].d.perform(&kind);
        p.n[1].e.disk_done(op, r, p.now);
    }
    p.settle();
    assert!(p.n[0].completed(req));
    assert_eq!(p.n[0].e.status().counters.pe, 0);
    assert_eq!(p.n[0].e.out_of_sync_blocks(), 0);
    p.assert_identical();
    assert!(p.n[0].e.status().counters.ns >= 8);
    assert!(p.n[1].e.status().counters.nr >= 8);
}

#[test]
fn protocol_a_completes_on_send_and_b_on_receipt() {
    for (protocol, completes_without_peer_disk) in [(Protocol::A, true), (Protocol::B, true)] {
        let mut p = Pair::synced(protocol);
        p.n[1].hold_disk = true;
        let req = p.submit(0, write(0, 3, 4096));
        assert_eq!(
            p.n[0].completed(req),
            completes_without_peer_disk,
            "{protocol:?}"
        );
        // Not forgotten: the epoch is unconfirmed until the peer's disk is done.
        assert_eq!(p.n[0].e.requests.len(), 1, "{protocol:?}");
        p.cut();
        assert_eq!(
            p.n[0].e.out_of_sync_blocks(),
            1,
            "{protocol:?}: an unconfirmed write is out of sync after the link is lost"
        );
    }
}

#[test]
fn flush_waits_for_the_peer_flush() {
    let mut p = Pair::synced(Protocol::C);
    p.submit(0, write(0, 1, 4096));
    p.n[1].hold_disk = true;
    let req = p.submit(0, Request::Flush);
    assert!(!p.n[0].completed(req));
    assert!(p.n[1].held.iter().any(|(_, k)| *k == DiskOp::Flush));
    let held = std::mem::take(&mut p.n[1].held);
    p.n[1].hold_disk = false;
    for (op, kind) in held {
        let r = p.n[1].d.perform(&kind);
        p.n[1].e.disk_done(op, r, p.now);
    }
    p.settle();
    assert!(p.n[0].completed(req));
}

#[test]
fn disconnected_writes_resync_only_what_changed() {
    let mut p = Pair::synced(Protocol::C);
    p.cut();
    assert_eq!(
        p.conns(),
        (ConnState::WFConnection, ConnState::WFConnection)
    );
    let before = p.n[0].e.uuids();
    assert_ne!(
        before.bitmap.0, 0,
        "a Primary losing its peer starts a new generation"
    );
    // 1% of the volume, in 64 KiB pieces.
    let size = p.n[0].e.size;
    let mut written = 0;
    let mut at = 0;
    while written < size / 100 {
        p.submit(0, write(at, 5, 65536));
        written += 65536;
        at += (size / 50) & !4095;
    }
    let oos = p.n[0].e.out_of_sync_blocks();
    assert_eq!(oos * 4096, written);
    assert_eq!(
        p.n[1].e.out_of_sync_blocks(),
        0,
        "the Secondary saw no writes"
    );
    p.n[1].events.clear();
    p.connect();
    assert!(
        p.n[1].logged("uuid_compare()=-1 by rule 50"),
        "{:?}",
        p.n[1].logs()
    );
    let synced: u64 = p.n[1]
        .logs()
        .iter()
        .find_map(|l| {
            l.strip_prefix("Began resync as SyncTarget (will sync ")
                .and_then(|r| r.split(' ').next())
                .and_then(|k| k.parse().ok())
        })
        .unwrap();
    assert_eq!(
        synced * 1024,
        written,
        "only the changed blocks are resynced"
    );
    assert_eq!(p.disks(), (DiskState::UpToDate, DiskState::UpToDate));
    assert_eq!(p.conns(), (ConnState::Connected, ConnState::Connected));
    p.assert_identical();
}

#[test]
fn new_current_uuid_clear_bitmap_skips_the_initial_sync() {
    let mut p = Pair::new(Protocol::C);
    p.connect();
    p.n[0]
        .e
        .command(Command::NewCurrentUuid { clear_bitmap: true }, false)
        .unwrap();
    p.settle();
    assert_eq!(p.disks(), (DiskState::UpToDate, DiskState::UpToDate));
    assert_eq!(p.conns(), (ConnState::Connected, ConnState::Connected));
    assert!(p.n[0].logged("Preparing to skip initial sync"));
    assert!(!p.n[1].logged("Began resync"));
    assert_eq!(
        p.n[0].e.uuids().current.masked(),
        p.n[1].e.uuids().current.masked()
    );
}

#[test]
fn split_brain_is_detected_and_both_go_standalone() {
    let mut p = Pair::synced(Protocol::C);
    p.cut();
    p.n[1]
        .e
        .command(Command::Primary { force: false }, false)
        .unwrap();
    p.settle();
    p.submit(0, write(0, 1, 4096));
    p.submit(1, write(8192, 2, 4096));
    p.connect();
    for i in 0..2 {
        assert!(
            p.n[i].logged("Split-Brain detected but unresolved, dropping connection!"),
            "node {i}: {:?}",
            p.n[i].logs()
        );
        assert!(p.n[i].events.contains(&Event::Handler(Handler::SplitBrain)));
    }
    assert_eq!(p.conns(), (ConnState::StandAlone, ConnState::StandAlone));
}

#[test]
fn unrelated_data_never_syncs() {
    let mut p = Pair::new(Protocol::C);
    // Two volumes that were never one: no UUID in common.
    for (i, base) in [(0, 0x1000u64), (1, 0x2000)] {
        p.n[i].e.sb.uuids = GenerationUuids {
            current: Uuid(base),
            bitmap: Uuid(base + 0x10),
            history: [Uuid(base + 0x20), Uuid(base + 0x30)],
        };
        p.n[i].e.state.disk = DiskState::UpToDate;
    }
    p.connect();
    assert!(p.n[0].logged("Unrelated data, aborting!"));
    assert_eq!(p.conns(), (ConnState::StandAlone, ConnState::StandAlone));
    assert!(!p.n[1].logged("Began resync"));
}

#[test]
fn crashed_primary_comes_back_as_target_of_the_promoted_secondary() {
    let mut p = Pair::synced(Protocol::C);
    let r = p.submit(0, write(4096, 0xAA, 4096));
    assert!(p.n[0].completed(r));
    // Node 0 dies: its engine is gone, its disk keeps what reached it.
    p.wire = [VecDeque::new(), VecDeque::new()];
    p.open = [false, false];
    p.n[1].e.peer_lost();
    p.settle();
    p.n[1]
        .e
        .command(Command::Primary { force: false }, false)
        .unwrap();
    p.settle();
    assert_eq!(
        p.n[1].d.get(4096, 4096),
        &[0xAA; 4096][..],
        "acked write on the peer"
    );
    p.submit(1, write(1 << 20, 0xBB, 4096));
    // Node 0 restarts from its disk.
    let mut cfg = config(61);
    cfg.seed = 9;
    cfg.net = Some(net_config(Protocol::C));
    let d = &mut p.n[0].d;
    let mut e = Engine::attach(cfg, d.on_disk()).unwrap();
    settle(&mut e, d);
    e.command(Command::Connect, false).unwrap();
    settle(&mut e, d);
    assert!(e.crashed_primary);
    p.n[0].e = e;
    p.n[0].events.clear();
    p.connect();
    assert!(
        p.n[0].logged("Began resync as SyncTarget"),
        "{:?}",
        p.n[0].logs()
    );
    assert_eq!(p.disks(), (DiskState::UpToDate, DiskState::UpToDate));
    p.assert_identical();
}

#[test]
fn resync_keeps_to_the_configured_rate() {
    let mut p = Pair::new(Protocol::C);
    for n in &mut p.n {
        if let Some(net) = n.e.cfg.net.as_mut() {
            net.resync_rate_kib = 10_240;
        }
    }
    p.connect();
    let start = p.now;
    p.n[0]
        .e
        .command(Command::Primary { force: true }, false)
        .unwrap();
    p.settle();
    let took = p.now - start;
    let kib = p.n[0].e.size / 1024;
    let expected = Duration::from_secs_f64(kib as f64 / 10_240.0);
    let ratio = took.as_secs_f64() / expected.as_secs_f64();
    assert!(
        (0.9..=1.1).contains(&ratio),
        "took {took:?}, expected {expected:?}"
    );
}

#[test]
fn writes_during_resync_win_over_older_resync_data() {
    let mut p = Pair::new(Protocol::C);
    for n in &mut p.n {
        if let Some(net) = n.e.cfg.net.as_mut() {
            net.resync_rate_kib = 4096;
        }
    }
    p.connect();
    p.n[0]
        .e
        .command(Command::Primary { force: true }, false)
        .unwrap();
    // Interleave application writes with the resync's ticks.
    for i in 0..200u64 {
        while p.step() {}
        let at = (i * 7919 % 1000) * 65536;
        let req = p.n[0].e.submit(write(at, i as u8, 8192), p.now).unwrap();
        while p.step() {}
        assert!(p.n[0].completed(req));
        if let Some(t) = p.n[1].e.next_tick() {
            p.now = t;
            p.n[1].e.tick(t);
        }
    }
    p.settle();
    assert_eq!(p.disks(), (DiskState::UpToDate, DiskState::UpToDate));
    p.assert_identical();
}

#[test]
fn a_failed_disk_detaches_and_the_primary_serves_from_its_peer() {
    let mut p = Pair::synced(Protocol::C);
    p.submit(0, write(0, 0x11, 4096));
    p.n[0].fail_writes = true;
    let w = p.submit(0, write(4096, 0x22, 4096));
    assert_eq!(
        p.n[0].completions.last(),
        Some(&(w, Ok(None))),
        "the peer has the data, so the write succeeds"
    );
    assert_eq!(p.n[0].e.state().disk, DiskState::Diskless);
    assert!(p.n[0].events.contains(&Event::Detached));
    assert_eq!(p.n[1].e.state().pdsk, DiskState::Diskless);
    let r = p.submit(
        0,
        Request::Read {
            offset: 0,
            len: 8192,
        },
    );
    let mut expect = vec![0x11; 4096];
    expect.extend_from_slice(&[0x22; 4096]);
    assert_eq!(
        p.n[0].completions.last(),
        Some(&(r, Ok(Some(Bytes::from(expect))))),
        "reads come from the peer"
    );
    let before = p.n[1].e.out_of_sync_blocks();
    p.submit(0, write(1 << 20, 0x33, 8192));
    assert_eq!(p.n[1].d.get(1 << 20, 8192), &[0x33; 8192][..]);
    assert_eq!(
        p.n[1].e.out_of_sync_blocks(),
        before + 2,
        "the Secondary marks what its diskless Primary lacks"
    );
    let f = p.submit(0, Request::Flush);
    assert!(p.n[0].completed(f));
}

#[test]
fn the_secondary_left_with_the_only_disk_starts_a_new_generation() {
    let mut p = Pair::synced(Protocol::C);
    let before = p.n[1].e.uuids();
    p.n[0].fail_writes = true;
    p.submit(0, write(0, 0x11, 4096));
    assert_eq!(p.n[0].e.state().disk, DiskState::Diskless);
    let after = p.n[1].e.uuids();
    assert_ne!(after.current, before.current, "a new generation began");
    assert_eq!(after.bitmap, before.current);
    assert!(p.n[1].logged("new current UUID"));
    assert_eq!(p.n[1].d.superblock().uuids, after, "and it is durable");
}

#[test]
fn a_diskless_primary_write_fails_when_the_peer_cannot_write_it() {
    for protocol in [Protocol::A, Protocol::B, Protocol::C] {
        let mut p = Pair::synced(protocol);
        p.n[0].fail_writes = true;
        p.submit(0, write(0, 0x11, 4096));
        assert_eq!(p.n[0].e.state().disk, DiskState::Diskless, "{protocol:?}");
        p.n[1].fail_writes = true;
        let w = p.submit(0, write(8192, 0x22, 4096));
        assert_eq!(
            p.n[0].completions.last(),
            Some(&(w, Err(RequestError::Detached))),
            "{protocol:?}: no disk holds it"
        );
        assert_eq!(
            p.n[1].e.state().disk,
            DiskState::Diskless,
            "{protocol:?}: on-io-error detach on the peer too"
        );
    }
}

#[test]
fn a_primary_sync_target_reads_out_of_sync_blocks_from_the_source() {
    let mut p = Pair::synced(Protocol::C);
    p.submit(0, write(65536, 0x5A, 4096));
    p.n[0].e.command(Command::Secondary, false).unwrap();
    p.settle();
    for n in &mut p.n {
        if let Some(net) = n.e.cfg.net.as_mut() {
            net.resync_rate_kib = 4;
        }
    }
    // Node 1's copy of the block rots; invalidate makes it a full-sync target.
    p.n[1].d.put(65536, &[0; 4096]);
    p.n[1].e.command(Command::Invalidate, false).unwrap();
    while p.step() {}
    assert_eq!(p.conns(), (ConnState::SyncSource, ConnState::SyncTarget));
    p.n[1]
        .e
        .command(Command::Primary { force: false }, false)
        .unwrap();
    while p.step() {}
    let req = p.n[1]
        .e
        .submit(
            Request::Read {
                offset: 65536,
                len: 4096,
            },
            p.now,
        )
        .unwrap();
    while p.step() {}
    assert_eq!(
        p.n[1].completions.last(),
        Some(&(req, Ok(Some(Bytes::from(vec![0x5A; 4096])))))
    );
    p.settle();
    assert_eq!(p.disks(), (DiskState::UpToDate, DiskState::UpToDate));
    p.assert_identical();
}

#[test]
fn fresh_nodes_of_different_sizes_agree_on_the_smaller() {
    let mut p = Pair::with_sizes(Protocol::C, [DEV, DEV / 2]);
    let small = p.n[1].e.size;
    assert!(p.n[0].e.size > small);
    p.connect();
    assert_eq!(p.conns(), (ConnState::Connected, ConnState::Connected));
    assert_eq!(p.n[0].e.size, small, "the larger node shrinks to its peer");
    assert_eq!(p.n[0].e.status().size.bytes(), small);
    p.n[0]
        .e
        .command(Command::Primary { force: true }, false)
        .unwrap();
    p.settle();
    assert_eq!(p.disks(), (DiskState::UpToDate, DiskState::UpToDate));
    let out_of_range = p.n[0].e.submit(write(small, 1, 4096), p.now);
    assert!(matches!(out_of_range, Err(SubmitError::OutOfRange { .. })));
}

#[test]
fn an_up_to_date_node_refuses_a_smaller_peer() {
    let mut p = Pair::with_sizes(Protocol::C, [DEV, DEV / 2]);
    p.n[0]
        .e
        .command(Command::Primary { force: true }, false)
        .unwrap();
    p.settle();
    p.connect();
    assert!(p.n[0].logged("The peer's disk size is too small!"));
    assert_eq!(p.n[0].e.state().conn, ConnState::StandAlone);
}

#[test]
fn a_corrupted_payload_fails_the_digest_and_drops_the_link() {
    let mut p = Pair::synced(Protocol::C);
    let data = Bytes::from(vec![7u8; 4096]);
    let now = p.now;
    p.n[1].e.receive(
        Packet::Data {
            id: 99,
            sector: crate::types::Sector(8),
            len: 4096,
            kind: crate::wire::DataKind::Write,
            flags: crate::wire::DataFlags::SEND_WRITE_ACK,
            epoch: 0,
            digest: Some(crc32c::crc32c(&data) ^ 1),
            data,
        },
        now,
    );
    let mut disconnected = false;
    while let Some(o) = p.n[1].e.poll_output() {
        match o {
            Output::Event(ev) => p.n[1].events.push(ev),
            Output::Disconnect { reconnect } => disconnected = reconnect,
            _ => {}
        }
    }
    assert!(p.n[1].logged("Digest integrity check FAILED: 8s +4096"));
    assert!(disconnected, "the link is dropped and retried");
    assert_eq!(p.n[1].d.get(4096, 4096), &[0; 4096][..], "nothing written");
    assert_eq!(p.n[1].e.state().conn, ConnState::WFConnection);
}

#[test]
fn down_lets_mirrored_writes_finish_before_it_demotes_and_disconnects() {
    let mut p = Pair::synced(Protocol::C);
    p.n[1].hold_disk = true;
    let req = p.submit(0, write(8192, 0x66, 4096));
    p.n[0].e.command(Command::Down, false).unwrap();
    p.settle();
    assert!(!p.n[0].events.contains(&Event::Down), "waits for the write");
    assert_eq!(p.n[0].e.state().role, Role::Primary);
    let held = std::mem::take(&mut p.n[1].held);
    p.n[1].hold_disk = false;
    for (op, kind) in held {
        let r = p.n[1].d.perform(&kind);
        p.n[1].e.disk_done(op, r, p.now);
    }
    p.settle();
    assert!(p.n[0].completions.contains(&(req, Ok(None))));
    assert!(p.n[0].events.contains(&Event::Down));
    assert_eq!(p.n[0].e.state().role, Role::Secondary);
    assert_eq!(p.n[1].d.get(8192, 4096), &[0x66; 4096][..]);
    assert_eq!(p.n[1].e.state().conn, ConnState::WFConnection);
    assert_eq!(
        p.n[0].e.out_of_sync_blocks(),
        0,
        "the write reached both disks"
    );
}

#[test]
fn promotion_during_the_handshake_is_refused_as_transient() {
    let mut p = Pair::new(Protocol::C);
    let params = p.link_params(0);
    p.n[0].e.peer_connected(params);
    assert_eq!(p.n[0].e.state().conn, ConnState::WFReportParams);
    assert_eq!(
        p.n[0].e.command(Command::Primary { force: true }, false),
        Err(StateChangeError::InTransientState.into()),
        "the peer decides on the UUIDs it already has"
    );
}

impl Pair {
    /// Turns on the request timer on both nodes (`timeout` 6 s, this `ko-count`).
    fn ko_count(&mut self, ko: u32) {
        for n in &mut self.n {
            if let Some(net) = n.e.cfg.net.as_mut() {
                net.timeout_ds = 60;
                net.ko_count = ko;
            }
        }
    }

    /// Node `i` lets its held disk operations finish and stops holding.
    fn release_disk(&mut self, i: usize) {
        self.n[i].hold_disk = false;
        for (op, kind) in std::mem::take(&mut self.n[i].held) {
            let r = self.n[i].d.perform(&kind);
            let now = self.now;
            self.n[i].e.disk_done(op, r, now);
        }
    }

    /// Node `i`'s clock reads `at`: it ticks, and what follows is delivered.
    fn tick_at(&mut self, i: usize, at: Instant) {
        self.now = at;
        self.n[i].e.tick(at);
        while self.step() {}
    }

    /// Whether node `i` passed through this connection state.
    fn went_through(&self, i: usize, conn: ConnState) -> bool {
        self.n[i]
            .events
            .iter()
            .any(|e| matches!(e, Event::StateChanged { new, .. } if new.conn == conn))
    }
}

#[test]
fn a_peer_that_never_acks_a_write_is_dropped_after_ko_count_times_timeout() {
    let mut p = Pair::synced(Protocol::C);
    p.ko_count(7);
    // The Secondary's disk hangs: the write never completes there, so it is never acked.
    p.n[1].hold_disk = true;
    let t0 = p.now;
    let req = p.n[0].e.submit(write(1 << 20, 9, 4096), t0).unwrap();
    while p.step() {}
    let et = Duration::from_secs(42);
    assert_eq!(p.n[0].e.next_tick(), Some(t0 + et));
    p.tick_at(0, t0 + (et - Duration::from_millis(1)));
    assert_eq!(p.conns(), (ConnState::Connected, ConnState::Connected));
    assert!(!p.n[0].completed(req), "protocol C waits for the peer");
    let before = p.n[0].e.uuids();
    p.tick_at(0, t0 + et);
    assert!(
        p.n[0].logged(
            "Remote failed to finish a request within 42000ms > ko-count (7) * timeout (60 * 0.1s)"
        ),
        "{:?}",
        p.n[0].logs()
    );
    assert!(p.went_through(0, ConnState::Timeout));
    assert_eq!(
        p.conns(),
        (ConnState::WFConnection, ConnState::WFConnection)
    );
    // Degraded, as after any lost connection: the write completes on the local disk, its
    // blocks are out of sync, and a new generation begins.
    assert!(p.n[0].completions.contains(&(req, Ok(None))));
    assert_eq!(p.n[0].e.out_of_sync_blocks(), 1);
    assert_ne!(p.n[0].e.uuids().current, before.current);
    let w = p.submit(0, write(2 << 20, 7, 4096));
    assert!(p.n[0].completions.contains(&(w, Ok(None))));
    // The disk comes back (its late write belongs to the old connection); the nodes
    // reconnect and resync.
    p.release_disk(1);
    p.settle();
    p.connect();
    assert_eq!(p.conns(), (ConnState::Connected, ConnState::Connected));
    assert_eq!(p.disks(), (DiskState::UpToDate, DiskState::UpToDate));
    assert_eq!(p.n[0].e.out_of_sync_blocks(), 0);
    p.assert_identical();
    // What the timer remembers of sent requests goes with them.
    for k in 0..64 {
        p.submit(0, write(k * 8192, 1, 4096));
    }
    assert!(p.n[0].e.net_log.is_empty(), "{:?}", p.n[0].e.net_log);
}

#[test]
fn a_peer_that_never_acks_a_barrier_is_dropped_under_protocol_a() {
    let mut p = Pair::synced(Protocol::A);
    p.ko_count(2);
    p.n[1].hold_disk = true;
    let t0 = p.now;
    let req = p.n[0].e.submit(write(1 << 20, 9, 4096), t0).unwrap();
    while p.step() {}
    assert!(
        p.n[0].completed(req),
        "protocol A completes on the local write"
    );
    let et = Duration::from_secs(12);
    p.tick_at(0, t0 + (et - Duration::from_millis(1)));
    assert_eq!(p.conns(), (ConnState::Connected, ConnState::Connected));
    p.tick_at(0, t0 + et);
    assert!(
        p.n[0].logged("Remote failed to answer a P_BARRIER"),
        "{:?}",
        p.n[0].logs()
    );
    assert!(p.went_through(0, ConnState::Timeout));
    assert_eq!(
        p.n[0].e.out_of_sync_blocks(),
        1,
        "the peer never confirmed it"
    );
}

#[test]
fn ko_count_0_never_drops_the_connection() {
    let mut p = Pair::synced(Protocol::C);
    p.ko_count(0);
    p.n[1].hold_disk = true;
    let t0 = p.now;
    let req = p.n[0].e.submit(write(1 << 20, 9, 4096), t0).unwrap();
    while p.step() {}
    assert_eq!(p.n[0].e.next_tick(), None);
    p.tick_at(0, t0 + Duration::from_secs(3600));
    assert_eq!(p.conns(), (ConnState::Connected, ConnState::Connected));
    assert!(!p.n[0].completed(req));
    p.release_disk(1);
    p.settle();
    assert!(p.n[0].completions.contains(&(req, Ok(None))));
}

#[test]
fn the_sync_target_waits_for_before_resync_target_while_packets_flow() {
    let mut p = Pair::new(Protocol::C);
    p.n[1].handler_exit.remove(&Handler::BeforeResyncTarget);
    p.connect();
    p.n[0]
        .e
        .command(Command::Primary { force: true }, false)
        .unwrap();
    p.settle();
    assert_eq!(p.conns(), (ConnState::SyncSource, ConnState::WFSyncUUID));
    let [(Handler::BeforeResyncTarget, call)] = p.n[1].held_calls[..] else {
        panic!("{:?}", p.n[1].held_calls);
    };
    assert!(!p.n[1].logged("Began resync"));
    // Writes are mirrored and acked meanwhile.
    let w = p.submit(0, write(4096, 0x44, 4096));
    assert!(p.n[0].completions.contains(&(w, Ok(None))));
    assert_eq!(p.n[1].d.get(4096, 4096), &[0x44; 4096][..]);
    // A stale answer (another call) changes nothing.
    p.n[1].e.handler_returned(CallId(call.0 + 1000), 0, p.now);
    p.settle();
    assert_eq!(p.conns(), (ConnState::SyncSource, ConnState::WFSyncUUID));
    p.n[1].e.handler_returned(call, 0, p.now);
    p.settle();
    assert!(p.n[1].logged("Began resync as SyncTarget"));
    assert_eq!(p.conns(), (ConnState::Connected, ConnState::Connected));
    assert_eq!(p.disks(), (DiskState::UpToDate, DiskState::UpToDate));
    p.assert_identical();
}

#[test]
fn a_failing_before_resync_target_drops_the_connection_for_good() {
    let mut p = Pair::new(Protocol::C);
    p.n[1].handler_exit.insert(Handler::BeforeResyncTarget, 1);
    p.connect();
    p.n[0]
        .e
        .command(Command::Primary { force: true }, false)
        .unwrap();
    p.settle();
    assert!(
        p.n[1].logged("before-resync-target handler returned 1, dropping connection."),
        "{:?}",
        p.n[1].logs()
    );
    assert!(p.went_through(1, ConnState::Disconnecting));
    assert!(!p.n[1].logged("Began resync"));
    assert_eq!(p.conns(), (ConnState::WFConnection, ConnState::StandAlone));
    assert!(!p.n[1].e.wants_link(), "no automatic reconnect");
}

#[test]
fn before_resync_source_exit_3_is_ignored_and_other_failures_drop() {
    let mut p = Pair::new(Protocol::C);
    p.n[0].handler_exit.insert(Handler::BeforeResyncSource, 3);
    p.connect();
    p.n[0]
        .e
        .command(Command::Primary { force: true }, false)
        .unwrap();
    p.settle();
    assert!(p.n[0].logged("before-resync-source handler returned 3, ignoring. Old userland tools?"));
    assert_eq!(p.disks(), (DiskState::UpToDate, DiskState::UpToDate));

    let mut p = Pair::new(Protocol::C);
    p.n[0].handler_exit.insert(Handler::BeforeResyncSource, 5);
    p.connect();
    p.n[0]
        .e
        .command(Command::Primary { force: true }, false)
        .unwrap();
    p.settle();
    assert!(p.n[0].logged("before-resync-source handler returned 5, dropping connection."));
    assert_eq!(p.conns(), (ConnState::StandAlone, ConnState::WFConnection));
    assert_eq!(p.n[1].e.state().disk, DiskState::Inconsistent);
}

impl Pair {
    /// Node 0 (Primary) writes 1 MiB while the link is down, then reconnects with node 1's
    /// disk held, so that the resync stays under way.
    fn resync_under_way() -> Pair {
        let mut p = Pair::synced(Protocol::C);
        p.cut();
        p.submit(0, write(0, 0x44, 1 << 20));
        p.n[1].hold_disk = true;
        for i in 0..2 {
            let params = p.link_params(i);
            p.n[i].e.peer_connected(params);
            p.open[i] = true;
        }
        // No timers: the target's resync ticks would never end while its disk is held.
        while p.step() {}
        assert_eq!(p.conns(), (ConnState::SyncSource, ConnState::SyncTarget));
        p
    }
}

#[test]
fn an_invalidate_reaches_an_old_peer_once_its_superblock_is_durable() {
    let mut p = Pair::synced(Protocol::C);
    // A peer of wire version 1 knows no cluster-wide state change: it learns the disk state.
    p.cut();
    for i in 0..2 {
        let params = LinkParams {
            version: crate::wire::MIN_VERSION,
            ..p.link_params(i)
        };
        p.n[i].e.peer_connected(params);
        p.open[i] = true;
    }
    p.settle();
    assert_eq!(p.disks(), (DiskState::UpToDate, DiskState::UpToDate));
    p.n[1].hold_disk = true;
    p.n[1].e.command(Command::Invalidate, false).unwrap();
    p.settle();
    assert_eq!(p.n[1].e.state().disk, DiskState::Inconsistent);
    assert_eq!(
        p.n[0].e.state().pdsk,
        DiskState::UpToDate,
        "the peer hears nothing before the Inconsistent superblock is on disk"
    );
    assert_eq!(p.conns(), (ConnState::Connected, ConnState::Connected));
    p.release_disk(1);
    p.settle();
    assert!(p.n[1].logged("Began resync as SyncTarget"));
    assert_eq!(p.disks(), (DiskState::UpToDate, DiskState::UpToDate));
    p.assert_identical();
}

#[test]
fn a_sync_source_that_loses_its_target_starts_a_generation_and_resumes_from_the_bitmap() {
    let mut p = Pair::resync_under_way();
    let before = p.n[0].e.uuids();
    p.cut();
    p.release_disk(1);
    p.settle();
    let after = p.n[0].e.uuids();
    assert_ne!(after.current.masked(), before.current.masked());
    assert_eq!(after.bitmap, before.bitmap, "the sync UUID stays");
    assert_eq!(p.n[0].d.superblock().uuids, after, "and it is durable");
    p.n[0].events.clear();
    p.connect();
    assert!(
        p.n[0].logged("uuid_compare()=1 by rule 70"),
        "{:?}",
        p.n[0].logs()
    );
    assert!(!p.n[0].logged("full sync"));
    assert_eq!(p.disks(), (DiskState::UpToDate, DiskState::UpToDate));
    p.assert_identical();
}

#[test]
fn a_peer_disk_that_fails_mid_resync_ends_the_resync() {
    let mut p = Pair::resync_under_way();
    p.n[0].fail_writes = true;
    p.submit(0, write(8 << 20, 0x55, 4096));
    assert_eq!(p.n[0].e.state().disk, DiskState::Diskless);
    assert!(p.n[1].logged("Resync aborted"), "{:?}", p.n[1].logs());
    let s = p.n[1].e.state();
    assert_eq!(
        (s.conn, s.disk, s.pdsk),
        (
            ConnState::Connected,
            DiskState::Inconsistent,
            DiskState::Diskless
        )
    );
    p.release_disk(1);
    p.settle();
    assert!(p.n[1].e.out_of_sync_blocks() > 0, "the bits stay");
    assert_eq!(p.n[1].e.state().conn, ConnState::Connected);
}

#[test]
fn writes_for_a_diskless_peer_wait_for_the_bitmap_that_records_them() {
    let mut p = Pair::synced(Protocol::C);
    p.n[0].fail_writes = true;
    p.submit(0, write(0, 0x11, 4096));
    assert_eq!(p.n[1].e.state().pdsk, DiskState::Diskless);
    p.n[1].hold_disk = true;
    p.n[0].e.submit(write(1 << 20, 0x66, 4096), p.now).unwrap();
    p.settle();
    let held: Vec<&DiskOp> = p.n[1].held.iter().map(|(_, k)| k).collect();
    assert!(
        matches!(held.first(), Some(DiskOp::MetaWrite { .. })),
        "the bitmap goes first: {held:?}"
    );
    assert!(
        !held.iter().any(|k| matches!(k, DiskOp::Write { .. })),
        "the data waits for it: {held:?}"
    );
    p.release_disk(1);
    p.settle();
    assert_eq!(p.n[1].d.get(1 << 20, 4096), &[0x66; 4096][..]);
}

// ---- cluster-wide state changes ----

impl Node {
    /// The results of commands that waited for the peer, in order.
    fn done(&self) -> Vec<Result<(), CommandError>> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::CommandDone { result } => Some(result.clone()),
                _ => None,
            })
            .collect()
    }

    /// The connection states this node went through.
    fn conn_path(&self) -> Vec<ConnState> {
        let mut path = Vec::new();
        for e in &self.events {
            if let Event::StateChanged { old, new } = e {
                if old.conn != new.conn && path.last() != Some(&new.conn) {
                    path.push(new.conn);
                }
            }
        }
        path
    }
}

impl Pair {
    /// Both Secondary, connected and UpToDate.
    fn secondaries() -> Pair {
        let mut p = Pair::synced(Protocol::C);
        p.n[0].e.command(Command::Secondary, false).unwrap();
        p.settle();
        for n in &mut p.n {
            n.events.clear();
        }
        p
    }

    /// Switches `allow-two-primaries` on for both nodes (the next connection agrees on it).
    fn allow_two_primaries(&mut self) {
        for n in &mut self.n {
            n.e.cfg.context.allow_two_primaries = true;
            if let Some(net) = n.e.cfg.net.as_mut() {
                net.two_primaries = true;
            }
        }
    }

    fn roles(&self) -> (Role, Role) {
        (self.n[0].e.state().role, self.n[1].e.state().role)
    }
}

#[test]
fn a_connected_promotion_waits_for_the_peer() {
    let mut p = Pair::secondaries();
    p.n[1]
        .e
        .command(Command::Primary { force: false }, false)
        .unwrap();
    assert!(p.n[1].e.command_pending());
    assert_eq!(
        p.n[1].e.state().role,
        Role::Secondary,
        "not before the answer"
    );
    assert_eq!(
        p.n[1].e.command(Command::Invalidate, false),
        Err(StateChangeError::InTransientState.into()),
        "one state change at a time"
    );
    p.settle();
    assert!(!p.n[1].e.command_pending());
    assert_eq!(p.n[1].done(), vec![Ok(())]);
    assert_eq!(p.roles(), (Role::Secondary, Role::Primary));
    assert_eq!(p.n[0].e.state().peer, Role::Primary);
    assert!(p.n[0].done().is_empty());
    // A local change (demotion) is not cluster-wide.
    p.n[1].e.command(Command::Secondary, false).unwrap();
    assert!(!p.n[1].e.command_pending());
}

#[test]
fn the_peer_refuses_a_second_primary() {
    let mut p = Pair::synced(Protocol::C);
    // Knowing the peer is Primary, the node refuses by itself.
    let err = p.n[1]
        .e
        .command(Command::Primary { force: false }, false)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "State change failed: (-1) Multiple primaries not allowed by config"
    );
    assert!(!p.n[1].e.command_pending());
    // A request from a peer that did not know yet: the Primary refuses it.
    let now = p.now;
    p.n[0].e.receive(
        Packet::StateChgReq(crate::state::StateChange {
            role: Some(Role::Primary),
            ..Default::default()
        }),
        now,
    );
    let mut replies = Vec::new();
    while let Some(o) = p.n[0].e.poll_output() {
        if let Output::Send(Packet::StateChgReply(r)) = o {
            replies.push(r);
        }
    }
    assert_eq!(replies, vec![Err(StateChangeError::TwoPrimaries)]);
    // The requester reports the peer's refusal as DRBD does.
    let mut p = Pair::secondaries();
    p.n[1].e.command(Command::InvalidateRemote, false).unwrap();
    assert!(p.n[1].e.command_pending());
    // The request is lost on its way; an answer comes anyway.
    while p.n[1].e.poll_output().is_some() {}
    p.n[1].e.receive(
        Packet::StateChgReply(Err(StateChangeError::ResyncRunning)),
        now,
    );
    assert!(!p.n[1].e.command_pending());
    p.step();
    assert_eq!(
        p.n[1].done(),
        vec![Err(StateChangeError::CwFailedByPeer.into())]
    );
    assert!(p.n[1].logged(
        "Requested state change failed by peer: Can not start OV/resync since it is already active (-8)"
    ));
    assert_eq!(p.conns(), (ConnState::Connected, ConnState::Connected));
}

#[test]
fn crossing_promotions_are_serialised() {
    let mut p = Pair::secondaries();
    for i in 0..2 {
        p.n[i]
            .e
            .command(Command::Primary { force: false }, false)
            .unwrap();
        assert!(p.n[i].e.command_pending());
    }
    p.settle();
    // Node 0 resolves conflicts: it answers node 1's request with SS_CONCURRENT_ST_CHG and
    // its own is granted; node 1, now seeing a Primary peer, fails its own.
    assert_eq!(p.roles(), (Role::Primary, Role::Secondary));
    assert_eq!(p.n[0].done(), vec![Ok(())]);
    assert_eq!(
        p.n[1].done(),
        vec![Err(StateChangeError::TwoPrimaries.into())]
    );
    assert!(!p.n[1].e.command_pending());
    assert_eq!(p.conns(), (ConnState::Connected, ConnState::Connected));
    let w = p.submit(0, write(0, 7, 4096));
    assert!(p.n[0].completed(w));
    p.assert_identical();
}

#[test]
fn crossing_promotions_with_allow_two_primaries_both_succeed() {
    let mut p = Pair::new(Protocol::C);
    p.allow_two_primaries();
    p.connect();
    p.n[0]
        .e
        .command(Command::Primary { force: true }, false)
        .unwrap();
    p.settle();
    p.n[0].e.command(Command::Secondary, false).unwrap();
    p.settle();
    for n in &mut p.n {
        n.events.clear();
    }
    for i in 0..2 {
        p.n[i]
            .e
            .command(Command::Primary { force: false }, false)
            .unwrap();
    }
    p.settle();
    assert_eq!(p.roles(), (Role::Primary, Role::Primary));
    assert_eq!(p.n[0].done(), vec![Ok(())]);
    // Refused once as concurrent, asked again (drbd_set_role's retry) and granted.
    assert!(p.n[1].logged(
        "Requested state change failed by peer: Concurrent state changes detected and aborted (-19)"
    ));
    assert_eq!(p.n[1].done(), vec![Ok(())]);
}

#[test]
fn invalidate_remote_makes_the_peer_a_full_sync_target() {
    let mut p = Pair::synced(Protocol::C);
    p.submit(0, write(65536, 0x5A, 8192));
    for n in &mut p.n {
        n.events.clear();
    }
    // Node 1's copy rots where the bitmap cannot know it.
    p.n[1].d.put(65536, &[0; 4096]);
    p.n[0].e.command(Command::InvalidateRemote, false).unwrap();
    assert!(p.n[0].e.command_pending());
    p.settle();
    assert_eq!(p.n[0].done(), vec![Ok(())]);
    assert_eq!(
        p.n[0].conn_path(),
        vec![
            ConnState::StartingSyncS,
            ConnState::SyncSource,
            ConnState::Connected
        ]
    );
    assert_eq!(
        p.n[1].conn_path(),
        vec![
            ConnState::StartingSyncT,
            ConnState::WFSyncUUID,
            ConnState::SyncTarget,
            ConnState::Connected
        ]
    );
    let began = format!(
        "Began resync as SyncSource (will sync {} KB",
        p.n[0].e.size.div_ceil(4096) * 4
    );
    assert!(p.n[0].logged(&began), "{:?}", p.n[0].logs());
    assert_eq!(p.disks(), (DiskState::UpToDate, DiskState::UpToDate));
    assert_eq!(p.n[0].e.out_of_sync_blocks(), 0);
    assert_eq!(p.n[1].e.out_of_sync_blocks(), 0);
    let (a, b) = (p.n[0].e.uuids(), p.n[1].e.uuids());
    assert_eq!((a.bitmap, a.history), (b.bitmap, b.history));
    assert_eq!(
        a.current.0 | 1,
        b.current.0 | 1,
        "equal but for the role bit"
    );
    p.assert_identical();
}

#[test]
fn invalidate_remote_towards_a_primary_holds_its_writes_until_the_resync_runs() {
    let mut p = Pair::synced(Protocol::C);
    p.n[1].e.command(Command::InvalidateRemote, false).unwrap();
    // The request reaches node 0 (Primary), which becomes the target and answers.
    p.step();
    p.step();
    assert_eq!(p.n[0].e.state().conn, ConnState::WFSyncUUID);
    assert_eq!(p.n[0].e.state().disk, DiskState::Inconsistent);
    let req = p.n[0].e.submit(write(4096, 0x33, 4096), p.now).unwrap();
    assert_eq!(
        p.n[0].e.status().counters.lo,
        0,
        "the write waits for the sync UUID"
    );
    p.settle();
    assert!(p.n[0].completed(req));
    assert_eq!(p.roles(), (Role::Primary, Role::Secondary));
    assert_eq!(p.disks(), (DiskState::UpToDate, DiskState::UpToDate));
    assert_eq!(&p.n[1].d.bytes[4096..8192], &[0x33; 4096][..]);
    p.assert_identical();
}

#[test]
fn invalidate_while_connected_goes_through_starting_sync_t() {
    let mut p = Pair::synced(Protocol::C);
    p.submit(0, write(0, 0x11, 4096));
    p.n[1].d.put(0, &[0; 4096]);
    for n in &mut p.n {
        n.events.clear();
    }
    p.n[1].e.command(Command::Invalidate, false).unwrap();
    assert!(p.n[1].e.command_pending());
    let mut bitmaps = 0;
    loop {
        for w in &p.wire {
            bitmaps += w
                .iter()
                .filter(|x| matches!(x, OnWire::Packet(Packet::Bitmap { .. })))
                .count();
        }
        if !p.step() {
            break;
        }
    }
    p.settle();
    assert_eq!(bitmaps, 0, "no bitmap exchange: both sides set every bit");
    assert_eq!(p.n[1].done(), vec![Ok(())]);
    assert_eq!(
        p.n[1].conn_path(),
        vec![
            ConnState::StartingSyncT,
            ConnState::WFSyncUUID,
            ConnState::SyncTarget,
            ConnState::Connected
        ]
    );
    assert_eq!(
        p.n[0].conn_path()[..2],
        [ConnState::StartingSyncS, ConnState::SyncSource]
    );
    assert_eq!(p.disks(), (DiskState::UpToDate, DiskState::UpToDate));
    p.assert_identical();
    // Without a connection a Secondary that is not StandAlone cannot be invalidated (8.4).
    p.cut();
    let err = p.n[1].e.command(Command::Invalidate, false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "State change failed: (-15) Need a connection to start verify or resync"
    );
}

#[test]
fn invalidate_remote_refusals() {
    let mut p = Pair::synced(Protocol::C);
    for n in &mut p.n {
        if let Some(net) = n.e.cfg.net.as_mut() {
            net.resync_rate_kib = 4;
        }
    }
    p.n[1].e.command(Command::Invalidate, false).unwrap();
    for _ in 0..20 {
        p.step();
    }
    assert_eq!(p.conns(), (ConnState::SyncSource, ConnState::SyncTarget));
    for i in 0..2 {
        assert_eq!(
            p.n[i].e.command(Command::InvalidateRemote, false),
            Err(StateChangeError::ResyncRunning.into())
        );
    }
    p.settle();
    // Disconnected and Secondary: DRBD asks for StartingSyncS, which needs the connection.
    p.n[1].e.command(Command::Disconnect, false).unwrap();
    p.settle();
    assert_eq!(
        p.n[1].e.command(Command::InvalidateRemote, false),
        Err(StateChangeError::NeedConnection.into())
    );
    assert_eq!(
        p.n[0].e.command(Command::InvalidateRemote, false),
        Err(StateChangeError::NeedConnection.into()),
        "WFConnection is not StandAlone"
    );
}

#[test]
fn invalidate_remote_standalone_makes_the_next_connection_a_full_sync() {
    let mut p = Pair::synced(Protocol::C);
    p.n[0].e.command(Command::Disconnect, false).unwrap();
    p.settle();
    p.open = [false, false];
    p.wire = [VecDeque::new(), VecDeque::new()];
    p.n[1].e.peer_lost();
    p.settle();
    p.n[0].e.command(Command::InvalidateRemote, false).unwrap();
    assert!(!p.n[0].e.command_pending());
    p.settle();
    assert_eq!(p.n[0].e.state().pdsk, DiskState::Inconsistent);
    let all = p.n[0].e.size.div_ceil(4096);
    assert_eq!(p.n[0].e.out_of_sync_blocks(), all);
    p.n[1].d.put(1 << 20, &[9; 4096]);
    p.n[0].e.command(Command::Connect, false).unwrap();
    p.connect();
    p.settle();
    assert!(
        p.n[0].logged(&format!("will sync {} KB", all * 4)),
        "{:?}",
        p.n[0].logs()
    );
    assert_eq!(p.disks(), (DiskState::UpToDate, DiskState::UpToDate));
    p.assert_identical();
}

#[test]
fn a_lost_connection_ends_a_pending_request() {
    // A promotion is then tried alone (DRBD's SS_CW_NO_NEED): with dont-care fencing it
    // succeeds, in a new generation.
    let mut p = Pair::secondaries();
    let before = p.n[1].e.uuids().current;
    p.n[1]
        .e
        .command(Command::Primary { force: false }, false)
        .unwrap();
    p.cut();
    assert!(!p.n[1].e.command_pending());
    assert_eq!(p.n[1].done(), vec![Ok(())]);
    assert_eq!(p.n[1].e.state().role, Role::Primary);
    assert_ne!(p.n[1].e.uuids().current, before);
    // A full sync cannot start without the peer.
    let mut p = Pair::secondaries();
    p.n[0].e.command(Command::InvalidateRemote, false).unwrap();
    p.cut();
    assert!(!p.n[0].e.command_pending());
    assert_eq!(
        p.n[0].done(),
        vec![Err(StateChangeError::NeedConnection.into())]
    );
    assert_eq!(p.n[0].e.state().conn, ConnState::WFConnection);
    // The answer of the old link never reaches the new one's requests.
    p.connect();
    p.settle();
    assert_eq!(p.conns(), (ConnState::Connected, ConnState::Connected));
    p.n[0].e.command(Command::Disconnect, false).unwrap();
    p.settle();
    assert_eq!(p.n[0].done().len(), 1);
}

#[test]
fn a_node_without_a_disk_connects_and_serves_through_its_peer() {
    let mut p = Pair::synced(Protocol::C);
    p.n[0].e.command(Command::Secondary, false).unwrap();
    p.settle();
    // Node 1 becomes a `disk none` node: a diskless engine in place of its disk.
    let mut cfg = config(61);
    cfg.seed = 9;
    cfg.net = Some(net_config(Protocol::C));
    let mut e = Engine::diskless(cfg).unwrap();
    assert_eq!(e.state().disk, DiskState::Diskless);
    e.command(Command::Connect, false).unwrap();
    p.cut();
    p.n[1].e = e;
    p.n[1].events.clear();
    p.connect();
    assert_eq!(p.conns(), (ConnState::Connected, ConnState::Connected));
    assert_eq!(p.disks(), (DiskState::UpToDate, DiskState::Diskless));
    assert_eq!(p.n[1].e.state().pdsk, DiskState::UpToDate);
    assert_eq!(p.n[0].e.state().pdsk, DiskState::Diskless);
    assert_eq!(p.n[1].e.size(), p.n[0].e.size(), "the size is the peer's");
    assert!(!p.n[1].logged("Began resync"), "nothing to resync");
    p.n[1]
        .e
        .command(Command::Primary { force: false }, false)
        .unwrap();
    p.settle();
    let w = p.submit(1, write(8192, 0x7E, 4096));
    assert_eq!(p.n[1].completions.last(), Some(&(w, Ok(None))));
    assert_eq!(p.n[0].d.get(8192, 4096), &[0x7E; 4096][..]);
    let r = p.submit(
        1,
        Request::Read {
            offset: 8192,
            len: 4096,
        },
    );
    assert_eq!(
        p.n[1].completions.last(),
        Some(&(r, Ok(Some(Bytes::from(vec![0x7E; 4096])))))
    );
}

/// Node `i`'s disk failed (writes fail until `fail_writes` is cleared); it is attached again
/// while connected and must rejoin through the handshake and a resync from its peer.
fn reattach_after_failure(i: usize) {
    let mut p = Pair::synced(Protocol::C);
    p.submit(0, write(0, 0x11, 4096));
    p.n[i].fail_writes = true;
    p.submit(0, write(4096, 0x22, 4096));
    assert_eq!(p.n[i].e.state().disk, DiskState::Diskless);
    // Writes while the disk is gone reach only the other node.
    for k in 0..8u64 {
        p.submit(0, write((k + 2) * 65536, 0x30 + k as u8, 8192));
    }
    p.n[i].fail_writes = false;
    let disk = p.n[i].d.on_disk();
    p.n[i].events.clear();
    p.n[i].e.reattach(disk).unwrap();
    assert_eq!(p.n[i].e.state().disk, DiskState::Negotiating);
    // A write while the disk is being placed waits for the handshake, then reaches both.
    let held = p.n[0].e.submit(write(5 << 20, 0x99, 4096), p.now).unwrap();
    assert!(!p.n[0].completed(held));
    p.settle();
    assert_eq!(
        p.n[0].completions.iter().find(|(r, _)| *r == held),
        Some(&(held, Ok(None)))
    );
    for n in &p.n {
        assert_eq!(n.d.get(5 << 20, 4096), &[0x99; 4096][..]);
    }
    assert_eq!(p.conns(), (ConnState::Connected, ConnState::Connected));
    assert_eq!(p.disks(), (DiskState::UpToDate, DiskState::UpToDate));
    assert!(
        p.n[i].logged("Began resync as SyncTarget"),
        "{:?}",
        p.n[i].logs()
    );
    assert!(p.n[i].events.contains(&Event::MetadataWritten));
    assert_eq!(p.n[0].e.state().role, Role::Primary, "the role stays");
    p.assert_identical();
    // Writes and reads go on with both disks.
    p.submit(0, write(1 << 20, 0x44, 4096));
    assert_eq!(p.n[1].d.get(1 << 20, 4096), &[0x44; 4096][..]);
    let r = p.submit(
        0,
        Request::Read {
            offset: 2 * 65536,
            len: 8192,
        },
    );
    assert_eq!(
        p.n[0].completions.last(),
        Some(&(r, Ok(Some(Bytes::from(vec![0x30; 8192])))))
    );
    p.assert_identical();
}

#[test]
fn a_secondary_reattached_after_a_disk_error_resyncs_from_its_peer() {
    reattach_after_failure(1);
}

#[test]
fn a_primary_reattached_after_a_disk_error_becomes_sync_target_and_stays_primary() {
    reattach_after_failure(0);
}

#[test]
fn a_disconnected_primary_does_not_attach_data_it_may_not_hold() {
    let mut p = Pair::synced(Protocol::C);
    p.n[0].fail_writes = true;
    p.submit(0, write(0, 0x11, 4096));
    assert_eq!(p.n[0].e.state().disk, DiskState::Diskless);
    p.cut();
    p.n[0].fail_writes = false;
    let disk = p.n[0].d.on_disk();
    assert_eq!(
        p.n[0].e.reattach(disk.clone()),
        Err(AttachError::DataNotCurrent)
    );
    // A Secondary may: its disk waits for the next handshake.
    p.n[0].e.command(Command::Secondary, false).unwrap();
    p.settle();
    p.n[0].e.reattach(disk).unwrap();
    p.settle();
    assert!(p.n[0].e.state().disk > DiskState::Negotiating);
    p.connect();
    assert_eq!(p.disks(), (DiskState::UpToDate, DiskState::UpToDate));
    p.assert_identical();
}

#[test]
fn a_sync_target_losing_its_disk_aborts_the_resync_and_catches_up_once_attached_again() {
    let mut p = Pair::synced(Protocol::C);
    p.submit(0, write(65536, 0x5A, 4096));
    for n in &mut p.n {
        if let Some(net) = n.e.cfg.net.as_mut() {
            net.resync_rate_kib = 64;
        }
    }
    p.n[1].e.command(Command::Invalidate, false).unwrap();
    while p.step() {}
    assert_eq!(p.conns(), (ConnState::SyncSource, ConnState::SyncTarget));
    // The target's disk starts failing: the first resync write detaches it.
    p.n[1].fail_writes = true;
    p.settle();
    assert_eq!(p.n[1].e.state().disk, DiskState::Diskless);
    assert!(p.n[1].logged("Resync aborted"), "{:?}", p.n[1].logs());
    assert!(p.n[0].logged("Resync aborted"), "{:?}", p.n[0].logs());
    assert_eq!(p.conns(), (ConnState::Connected, ConnState::Connected));
    assert_eq!(p.n[0].e.state().pdsk, DiskState::Diskless);
    // Writes meanwhile, then the disk is attached again and the resync runs to the end.
    p.submit(0, write(3 << 20, 0x77, 8192));
    p.n[1].fail_writes = false;
    let disk = p.n[1].d.on_disk();
    p.n[1].e.reattach(disk).unwrap();
    p.settle();
    assert_eq!(p.conns(), (ConnState::Connected, ConnState::Connected));
    assert_eq!(p.disks(), (DiskState::UpToDate, DiskState::UpToDate));
    p.assert_identical();
}

#[test]
fn a_detached_secondary_stays_connected_and_catches_up_once_attached_again() {
    let mut p = Pair::synced(Protocol::C);
    p.submit(0, write(0, 0x11, 4096));
    // A mirrored write is on the Secondary's disk when the detach comes: the detach waits.
    p.n[1].hold_disk = true;
    let on_disk = p.submit(0, write(65536, 0x22, 4096));
    p.n[1].e.command(Command::Detach, false).unwrap();
    p.settle();
    assert_eq!(p.n[1].e.state().disk, DiskState::UpToDate);
    assert!(!p.n[1].events.contains(&Event::Detached));
    // A write that arrives meanwhile waits too, and finds no disk once the detach is done.
    let later = p.n[0].e.submit(write(131072, 0x33, 4096), p.now).unwrap();
    p.settle();
    assert!(!p.n[0].completed(later));
    let before = p.n[1].d.get(131072, 4096).to_vec();
    p.release_disk(1);
    p.settle();
    assert!(p.n[1].events.contains(&Event::Detached));
    assert_eq!(p.disks(), (DiskState::UpToDate, DiskState::Diskless));
    assert_eq!(p.conns(), (ConnState::Connected, ConnState::Connected));
    assert_eq!(p.n[0].e.state().pdsk, DiskState::Diskless);
    for r in [on_disk, later] {
        assert!(p.n[0].completions.contains(&(r, Ok(None))), "{r:?}");
    }
    assert_eq!(p.n[1].d.get(65536, 4096), &[0x22; 4096][..]);
    assert_eq!(p.n[1].d.get(131072, 4096), &before[..], "not written");
    // The metadata was left clean, with what the disk holds in sync.
    let sb = p.n[1].d.superblock();
    assert!(sb.flags.contains(MdFlags::AL_CLEAN), "{:?}", sb.flags);
    assert!(sb.flags.contains(MdFlags::CONSISTENT));
    // The refused write is out of sync on the Primary, and so is the one the detach waited
    // for: its epoch's barrier ack came after the peer's disk went.
    assert!(p.n[0].e.bitmap.any(16..17) && p.n[0].e.bitmap.any(32..33));
    assert_eq!(p.n[0].e.out_of_sync_blocks(), 2);
    // Writes go on to the Primary's disk only, then the disk comes back and catches up.
    p.submit(0, write(1 << 20, 0x44, 8192));
    assert_eq!(p.n[0].e.out_of_sync_blocks(), 4);
    let disk = p.n[1].d.on_disk();
    p.n[1].e.reattach(disk).unwrap();
    p.settle();
    assert_eq!(p.conns(), (ConnState::Connected, ConnState::Connected));
    assert_eq!(p.disks(), (DiskState::UpToDate, DiskState::UpToDate));
    assert!(
        p.n[1].logged("Began resync as SyncTarget"),
        "{:?}",
        p.n[1].logs()
    );
    p.assert_identical();
}

#[test]
fn a_primary_detaches_while_its_peer_is_up_to_date_and_serves_from_it() {
    let mut p = Pair::synced(Protocol::C);
    p.submit(0, write(0, 0x5C, 8192));
    p.n[0].e.command(Command::Detach, false).unwrap();
    p.settle();
    assert_eq!(p.disks(), (DiskState::Diskless, DiskState::UpToDate));
    assert_eq!(p.n[0].e.state().role, Role::Primary);
    let r = p.submit(
        0,
        Request::Read {
            offset: 0,
            len: 8192,
        },
    );
    assert_eq!(
        p.n[0].completions.last(),
        Some(&(r, Ok(Some(Bytes::from(vec![0x5C; 8192])))))
    );
    p.submit(0, write(4096, 0x6D, 4096));
    assert_eq!(p.n[1].d.get(4096, 4096), &[0x6D; 4096][..]);
    // Detaching a Diskless node does nothing, as in DRBD.
    p.n[0].e.command(Command::Detach, false).unwrap();
    let disk = p.n[0].d.on_disk();
    p.n[0].e.reattach(disk).unwrap();
    p.settle();
    assert_eq!(p.disks(), (DiskState::UpToDate, DiskState::UpToDate));
    p.assert_identical();
}

#[test]
fn a_primary_without_a_peer_keeps_its_disk() {
    let mut p = Pair::synced(Protocol::C);
    p.cut();
    assert_eq!(
        p.n[0].e.command(Command::Detach, false),
        Err(StateChangeError::NoUpToDateDisk.into())
    );
    assert_eq!(p.n[0].e.state().disk, DiskState::UpToDate);
    // A Secondary alone may detach; its metadata is left clean.
    p.n[1].e.command(Command::Detach, false).unwrap();
    p.settle();
    assert_eq!(p.n[1].e.state().disk, DiskState::Diskless);
    assert!(p.n[1].d.superblock().flags.contains(MdFlags::AL_CLEAN));
}
