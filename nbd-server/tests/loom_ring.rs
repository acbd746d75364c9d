//! loom models of what the io_uring disk thread shares with its callers: `src/uring/handoff.rs`,
//! compiled here as is (queue, sticky wake-up, shutdown, and the thread's loop), over a stand-in
//! kernel whose operations finish at the next wait and an eventfd made of a loom `Mutex` and
//! `Condvar`. A caller that would wait for ever, or a thread that would never return, is a loom
//! deadlock.
//!
//! `RUSTFLAGS="--cfg tandem_loom" cargo test -p nbd-server --test loom_ring --release`
//! (`scripts/loom.sh` runs every model).
#![cfg(tandem_loom)]

#[path = "../src/uring/handoff.rs"]
mod handoff;

use std::io;

use handoff::{Event, Kernel, Submitter, Wake};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

/// How an operation's caller was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Done,
    /// Failed by the thread (`Kernel::fail`, `Kernel::fail_in_flight`).
    Failed,
    /// Refused by `Submitter::submit` and failed by the caller, as `Ring::submit` does.
    Refused,
    /// Dropped unanswered: the caller's oneshot receiver sees the sender gone.
    Dropped,
}

type Slot = Arc<(Mutex<Option<Outcome>>, Condvar)>;

/// An operation; its reply slot stands for the oneshot channel.
struct Op {
    reply: Option<Slot>,
}

impl Op {
    fn answer(mut self, o: Outcome) {
        answer(self.reply.take().expect("answered once"), o);
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if let Some(r) = self.reply.take() {
            answer(r, Outcome::Dropped);
        }
    }
}

fn answer(slot: Slot, o: Outcome) {
    let mut v = slot.0.lock().unwrap();
    assert!(v.is_none(), "an operation was answered twice");
    *v = Some(o);
    slot.1.notify_all();
}

/// The caller's end of an operation.
struct Waiter(Slot);

impl Waiter {
    /// Blocks until answered (a lost operation is a deadlock).
    fn wait(&self) -> Outcome {
        let mut v = self.0 .0.lock().unwrap();
        loop {
            if let Some(o) = *v {
                return o;
            }
            v = self.0 .1.wait(v).unwrap();
        }
    }
}

fn op() -> (Op, Waiter) {
    let slot: Slot = Arc::new((Mutex::new(None), Condvar::new()));
    (
        Op {
            reply: Some(slot.clone()),
        },
        Waiter(slot),
    )
}

/// An eventfd: a counter that a read (when armed) takes whole.
struct EventFd {
    count: Mutex<u64>,
    cv: Condvar,
}

impl Wake for EventFd {
    fn wake(&self) {
        *self.count.lock().unwrap() += 1;
        self.cv.notify_all();
    }
}

/// The ring: operations finish at the wait after they start; the armed eventfd read finishes
/// once the counter is non-zero; with neither, the wait blocks on the eventfd, as
/// `submit_and_wait(1)` would.
#[derive(Default)]
struct FakeKernel {
    /// Most operations in flight.
    capacity: usize,
    armed: bool,
    started: Vec<(u64, Op)>,
    /// Reported by a wait, not yet handled by `complete`.
    reported: Vec<(u64, Op)>,
    next_token: u64,
    arms: usize,
    waits: usize,
    /// The arm (counted from 1) that fails.
    fail_arm: Option<usize>,
    /// The wait (counted from 1) that fails, and how.
    fail_wait: Option<(usize, io::ErrorKind)>,
}

impl FakeKernel {
    fn with_capacity(capacity: usize) -> FakeKernel {
        FakeKernel {
            capacity,
            ..FakeKernel::default()
        }
    }
}

impl Kernel for FakeKernel {
    type Op = Op;
    type Wake = EventFd;

    fn arm_wake(&mut self, _: &EventFd) -> io::Result<()> {
        self.arms += 1;
        if self.fail_arm == Some(self.arms) {
            return Err(io::Error::other("arm failed"));
        }
        assert!(!self.armed, "wake-up armed twice");
        self.armed = true;
        Ok(())
    }

    fn wait(&mut self, wake: &EventFd, events: &mut Vec<Event>) -> io::Result<()> {
        self.waits += 1;
        if let Some((n, kind)) = self.fail_wait {
            if n == self.waits {
                return Err(io::Error::new(kind, "wait failed"));
            }
        }
        for (token, op) in self.started.drain(..) {
            events.push(Event::Done { token, res: 0 });
            self.reported.push((token, op));
        }
        let mut count = wake.count.lock().unwrap();
        loop {
            if self.armed && *count > 0 {
                *count = 0;
                self.armed = false;
                events.push(Event::Wake);
            }
            if !events.is_empty() {
                return Ok(());
            }
            count = wake.cv.wait(count).unwrap();
        }
    }

    fn start(&mut self, op: Op) -> Result<(), Op> {
        if self.in_flight() >= self.capacity {
            return Err(op);
        }
        self.next_token += 1;
        self.started.push((self.next_token, op));
        Ok(())
    }

    fn complete(&mut self, token: u64, _: i32) {
        let i = self
            .reported
            .iter()
            .position(|(t, _)| *t == token)
            .expect("a completion for an operation in flight");
        self.reported.swap_remove(i).1.answer(Outcome::Done);
    }

    fn in_flight(&self) -> usize {
        self.started.len() + self.reported.len()
    }

    fn fail_in_flight(&mut self, _: &io::Error) {
        for (_, op) in self.started.drain(..).chain(self.reported.drain(..)) {
            op.answer(Outcome::Failed);
        }
    }

    fn fail(op: Op, _: &io::Error) {
        op.answer(Outcome::Failed);
    }
}

type Tx = Submitter<Op, EventFd>;

/// Starts the thread over `kernel`, as `Ring::start` does.
fn start(kernel: FakeKernel) -> (Arc<Tx>, thread::JoinHandle<FakeKernel>) {
    let fd = EventFd {
        count: Mutex::new(0),
        cv: Condvar::new(),
    };
    let (tx, inbox) = handoff::channel(fd);
    let t = thread::spawn(move || {
        let mut kernel = kernel;
        handoff::run(&mut kernel, inbox);
        kernel
    });
    (Arc::new(tx), t)
}

/// Submits as `Ring::submit` does: a refused operation is failed by the caller.
fn submit(tx: &Tx) -> Waiter {
    let (op, w) = op();
    if let Err(op) = tx.submit(op) {
        op.answer(Outcome::Refused);
    }
    w
}

/// Stops the thread as `Ring`'s drop does, and checks it left nothing in flight.
fn shut_down(tx: &Tx, t: thread::JoinHandle<FakeKernel>) {
    tx.close();
    let kernel = t.join().unwrap();
    assert_eq!(
        kernel.in_flight(),
        0,
        "the thread returned with work in flight"
    );
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b.check(f);
}

/// Two callers race each other and the thread (which takes one operation at a time into the
/// kernel); each gets its result, so no wake-up given while the thread is taking the queue,
/// re-arming or about to block is lost.
#[test]
fn every_operation_completes_and_no_wake_up_is_lost() {
    model(|| {
        let (tx, t) = start(FakeKernel::with_capacity(1));
        let callers: Vec<_> = (0..2)
            .map(|_| {
                let tx = tx.clone();
                thread::spawn(move || assert_eq!(submit(&tx).wait(), Outcome::Done))
            })
            .collect();
        for c in callers {
            c.join().unwrap();
        }
        shut_down(&tx, t);
    });
}

/// A caller that gave up on its operations (a dropped request future) and then the device
/// dropped: the thread still finishes them before it returns (the kernel owns their buffers
/// until then).
#[test]
fn closing_finishes_the_work_already_queued() {
    model(|| {
        let (tx, t) = start(FakeKernel::with_capacity(1));
        let caller = {
            let tx = tx.clone();
            thread::spawn(move || [submit(&tx), submit(&tx)])
        };
        let waiters = caller.join().unwrap();
        shut_down(&tx, t);
        for w in waiters {
            assert_eq!(w.wait(), Outcome::Done);
        }
    });
}

/// A submission racing the close is either done or refused, never left queued.
#[test]
fn a_submission_racing_the_close_is_answered() {
    model(|| {
        let (tx, t) = start(FakeKernel::with_capacity(4));
        let caller = {
            let tx = tx.clone();
            thread::spawn(move || submit(&tx).wait())
        };
        tx.close();
        let o = caller.join().unwrap();
        assert!(matches!(o, Outcome::Done | Outcome::Refused), "{o:?}");
        shut_down(&tx, t);
    });
}

/// The wake-up cannot be re-armed: the thread would no longer hear its callers, so it stops
/// and fails what it holds, and later submissions are refused rather than queued for no one.
#[test]
fn a_failed_re_arm_stops_the_thread_and_answers_everyone() {
    model(|| {
        let kernel = FakeKernel {
            fail_arm: Some(2),
            ..FakeKernel::with_capacity(1)
        };
        let (tx, t) = start(kernel);
        let callers: Vec<_> = (0..2)
            .map(|_| {
                let tx = tx.clone();
                thread::spawn(move || submit(&tx).wait())
            })
            .collect();
        for c in callers {
            let o = c.join().unwrap();
            assert!(matches!(o, Outcome::Failed | Outcome::Refused), "{o:?}");
        }
        assert_eq!(submit(&tx).wait(), Outcome::Refused);
        shut_down(&tx, t);
    });
}

/// The wait fails with operations in flight and queued: all are failed, and the close still
/// returns.
#[test]
fn a_failed_wait_answers_everyone() {
    model(|| {
        let kernel = FakeKernel {
            fail_wait: Some((2, io::ErrorKind::Other)),
            ..FakeKernel::with_capacity(1)
        };
        let (tx, t) = start(kernel);
        let caller = {
            let tx = tx.clone();
            thread::spawn(move || [submit(&tx), submit(&tx)])
        };
        for w in caller.join().unwrap() {
            let o = w.wait();
            assert!(o != Outcome::Dropped, "{o:?}");
        }
        shut_down(&tx, t);
    });
}

/// An interrupted wait is retried, not taken for a failure.
#[test]
fn an_interrupted_wait_is_retried() {
    model(|| {
        let kernel = FakeKernel {
            fail_wait: Some((1, io::ErrorKind::Interrupted)),
            ..FakeKernel::with_capacity(1)
        };
        let (tx, t) = start(kernel);
        let caller = {
            let tx = tx.clone();
            thread::spawn(move || submit(&tx).wait())
        };
        assert_eq!(caller.join().unwrap(), Outcome::Done);
        shut_down(&tx, t);
    });
}

/// The thread is gone without running its loop (it panicked): a racing submission is refused or
/// its operation dropped, which its caller sees; nothing waits for ever.
#[test]
fn a_vanished_thread_leaves_no_caller_waiting() {
    model(|| {
        let fd = EventFd {
            count: Mutex::new(0),
            cv: Condvar::new(),
        };
        let (tx, inbox) = handoff::channel::<Op, _>(fd);
        let t = thread::spawn(move || drop(inbox));
        let o = submit(&tx).wait();
        assert!(matches!(o, Outcome::Refused | Outcome::Dropped), "{o:?}");
        t.join().unwrap();
        assert_eq!(submit(&tx).wait(), Outcome::Refused);
    });
}
