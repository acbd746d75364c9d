//! What the callers of a disk thread share with it: a queue of operations, a sticky wake-up and
//! the rules for stopping, and the thread's loop over any [`Kernel`].
//!
//! No io_uring here: `uring` supplies the kernel (and an eventfd as the [`Wake`]), and
//! `tests/loom_ring.rs` runs this same file over a stand-in under loom, which is why its only
//! synchronisation is [`sync`]'s.
//!
//! The protocol: [`Submitter::submit`] queues under the lock and then wakes the thread; the wake
//! is sticky (an eventfd counter), so one given while the thread is busy or about to block is
//! seen by its next wait. On a wake-up the thread takes everything queued, with whether the
//! callers' end is closed; closed under the same lock as the queue, so nothing can follow. It
//! stops once closed with nothing in flight or waiting. Once it has stopped, for any reason (an
//! error, a panic), [`Submitter::submit`] gives the operation back for the caller to fail, and
//! what was queued is failed or dropped: no operation waits for a thread that is gone.

use std::collections::VecDeque;
use std::io;
use std::sync::PoisonError;

use sync::{Arc, Mutex, MutexGuard};

/// std's types, or loom's when the loom models are built (`--cfg tandem_loom`, tests only; not
/// `--cfg loom`, under which tokio does not build).
mod sync {
    #[cfg(all(tandem_loom, test))]
    pub(super) use loom::sync::{Arc, Mutex, MutexGuard};
    #[cfg(not(all(tandem_loom, test)))]
    pub(super) use std::sync::{Arc, Mutex, MutexGuard};
}

/// Wakes the thread. Sticky: a wake given before the thread waits ends that wait at once.
pub(crate) trait Wake {
    fn wake(&self);
}

/// One thing a [`Kernel::wait`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// The armed wake-up fired (and is disarmed).
    Wake,
    /// An operation started with [`Kernel::start`] progressed or finished.
    Done { token: u64, res: i32 },
}

/// The thread's side of the I/O: io_uring in production, a stand-in under loom.
pub(crate) trait Kernel {
    type Op;
    type Wake: Wake;

    /// Arms the wake-up: a wait ends with [`Event::Wake`] once `wake` has been woken.
    ///
    /// # Errors
    /// It could not be armed; the thread stops, as it would no longer hear its callers.
    fn arm_wake(&mut self, wake: &Self::Wake) -> io::Result<()>;

    /// Submits what was started and blocks until at least one event, appended to `events`.
    ///
    /// # Errors
    /// `Interrupted` is retried; any other error stops the thread.
    fn wait(&mut self, wake: &Self::Wake, events: &mut Vec<Event>) -> io::Result<()>;

    /// Starts an operation; gives it back when the kernel is full (it is retried later).
    ///
    /// # Errors
    /// The operation, untouched, when no more fit in flight.
    fn start(&mut self, op: Self::Op) -> Result<(), Self::Op>;

    /// Handles an [`Event::Done`]: resubmits the rest, or answers the operation's caller.
    fn complete(&mut self, token: u64, res: i32);

    /// Operations started and not yet answered.
    fn in_flight(&self) -> usize;

    /// Answers every operation in flight with `e` (the thread is stopping).
    fn fail_in_flight(&mut self, e: &io::Error);

    /// Answers an operation that was never started with `e`.
    fn fail(op: Self::Op, e: &io::Error);
}

struct State<T> {
    queue: VecDeque<T>,
    /// The callers' end is closed: no more operations will come.
    closed: bool,
    /// The thread has stopped: no more operations will be taken.
    stopped: bool,
}

struct Shared<T, W> {
    state: Mutex<State<T>>,
    wake: W,
}

impl<T, W> Shared<T, W> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics under this lock; keep going if something ever does.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The callers' end.
pub(crate) struct Submitter<T, W> {
    shared: Arc<Shared<T, W>>,
}

/// The thread's end; dropping it (the thread returned or panicked) stops the handoff.
pub(crate) struct Inbox<T, W> {
    shared: Arc<Shared<T, W>>,
}

/// A handoff whose thread is woken through `wake`.
pub(crate) fn channel<T, W: Wake>(wake: W) -> (Submitter<T, W>, Inbox<T, W>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            closed: false,
            stopped: false,
        }),
        wake,
    });
    let inbox = Inbox {
        shared: shared.clone(),
    };
    (Submitter { shared }, inbox)
}

impl<T, W: Wake> Submitter<T, W> {
    /// Queues an operation and wakes the thread.
    ///
    /// # Errors
    /// The operation, untouched, once the end is closed or the thread has stopped: the caller
    /// answers it.
    pub(crate) fn submit(&self, op: T) -> Result<(), T> {
        {
            let mut s = self.shared.lock();
            if s.closed || s.stopped {
                return Err(op);
            }
            s.queue.push_back(op);
        }
        self.shared.wake.wake();
        Ok(())
    }

    /// Closes the callers' end: the thread finishes what it was given, then returns.
    pub(crate) fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.wake.wake();
    }
}

impl<T, W> Inbox<T, W> {
    /// The wake-up the thread arms.
    pub(crate) fn wake(&self) -> &W {
        &self.shared.wake
    }

    /// Moves every queued operation to `into`; true when the callers' end is closed, so that
    /// nothing more will come.
    pub(crate) fn take(&self, into: &mut VecDeque<T>) -> bool {
        let mut s = self.shared.lock();
        into.append(&mut s.queue);
        s.closed
    }

    /// Refuses further operations and hands back those queued, for the thread to fail.
    pub(crate) fn stop(&self) -> VecDeque<T> {
        let mut s = self.shared.lock();
        s.stopped = true;
        std::mem::take(&mut s.queue)
    }
}

impl<T, W> Drop for Inbox<T, W> {
    fn drop(&mut self) {
        // Dropped outside the lock: an operation's drop answers its caller (a oneshot sender).
        drop(self.stop());
    }
}

/// The thread's loop: takes operations when woken, starts them, handles completions, and
/// returns once the callers' end is closed and all work is done, or on an error after failing
/// every operation it holds.
pub(crate) fn run<K: Kernel>(kernel: &mut K, inbox: Inbox<K::Op, K::Wake>) {
    let mut backlog = VecDeque::new();
    let mut events = Vec::new();
    let mut closed = false;
    if let Err(e) = kernel.arm_wake(inbox.wake()) {
        return stop(kernel, &inbox, &mut backlog, "cannot arm the wake-up", &e);
    }
    loop {
        events.clear();
        if let Err(e) = kernel.wait(inbox.wake(), &mut events) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return stop(kernel, &inbox, &mut backlog, "wait failed", &e);
        }
        let mut deaf = None;
        for ev in events.drain(..) {
            match ev {
                Event::Wake => {
                    closed = inbox.take(&mut backlog);
                    if !closed {
                        deaf = kernel.arm_wake(inbox.wake()).err();
                    }
                }
                Event::Done { token, res } => kernel.complete(token, res),
            }
        }
        if let Some(e) = deaf {
            return stop(
                kernel,
                &inbox,
                &mut backlog,
                "cannot re-arm the wake-up",
                &e,
            );
        }
        while let Some(op) = backlog.pop_front() {
            if let Err(op) = kernel.start(op) {
                backlog.push_front(op);
                break;
            }
        }
        if closed && backlog.is_empty() && kernel.in_flight() == 0 {
            return;
        }
    }
}

/// Fails everything the thread holds or will be given.
fn stop<K: Kernel>(
    kernel: &mut K,
    inbox: &Inbox<K::Op, K::Wake>,
    backlog: &mut VecDeque<K::Op>,
    what: &str,
    e: &io::Error,
) {
    tracing::error!("disk thread: {what}: {e}");
    // Refuse first, so that no caller is answered before a later submission is refused.
    let queued = inbox.stop();
    kernel.fail_in_flight(e);
    for op in backlog.drain(..).chain(queued) {
        K::fail(op, e);
    }
}
