//! Who runs the application, and when: leader/followers over one current-thread runtime.
//!
//! One thread at a time is the *leader*: it drives the tokio runtime (all sockets, all
//! timers) and, when requests are ready, runs the application calls itself, outside the
//! runtime, without handing them to another thread. That is the fast path: no hand-off,
//! no wake-up, one lock acquisition (the [`Gate`], i.e. the GIL) held across many requests.
//!
//! A second thread, the *standby*, waits to take the gate. The leader only gives the gate
//! up when an application call blocks (the GIL is released around blocking I/O), when
//! the interpreter forces a switch, or when the runtime has nothing to do. If the standby
//! gets the gate while the leader is inside an application call, that call is blocking
//! the event loop: the standby becomes the leader and drives the runtime (the runtime's
//! core is free, since application calls run outside `block_on`), and wakes another
//! thread to stand by. The displaced thread finishes its call and goes back to the pool.
//! So a blocking call costs one thread for its duration and never stalls other
//! connections; a fast call costs nothing extra. `threads` bounds how many threads exist,
//! i.e. how many calls may block at once.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::busy_poll::BusyPoll;

/// The lock that application calls need (for Python: the GIL).
///
/// A dispatch thread's whole life runs inside `run_thread`, holding the gate except
/// between `release` and `acquire`. `acquire` blocks until the gate is free.
pub trait Gate: Send + Sync + 'static {
    /// Runs `body` holding the gate (for Python: attached to the interpreter).
    fn run_thread(&self, body: &mut dyn FnMut());
    /// Gives the gate up (the thread will sleep or wait).
    fn release(&self);
    /// Takes the gate back, waiting for it.
    fn acquire(&self);
}

/// A unit of application work, run by a dispatch thread while it holds the gate.
pub trait Job: Send + 'static {
    /// Runs the job.
    fn run(self);
    /// What the job works on, for reports of calls that run long.
    fn subject(&self) -> Option<Arc<dyn Subject>> {
        None
    }
}

/// Something a running job can be described by (e.g. its request line).
pub trait Subject: Send + Sync {
    /// A one-line description.
    fn describe(&self) -> String;
}

/// What each dispatch thread runs now: when it started, and on what.
/// A call in progress: when it started (on the coarse clock: read on every call, and
/// reported in seconds) and what it serves.
type RunningSlot = Mutex<Option<(Duration, Arc<dyn Subject>)>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Leader,
    Standby,
    Idle,
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaderState {
    /// No thread is leader (all are blocked in application calls, or starting).
    Absent,
    /// The leader drives the runtime, holding the gate.
    Io,
    /// The leader sleeps in the I/O driver, gate released.
    Parked,
    /// The leader runs an application call.
    App,
}

struct Control {
    leader: LeaderState,
    /// Identity of the current leader (a counter, so a displaced leader can tell).
    leader_token: u64,
    next_token: u64,
    /// A thread is waiting to take the gate.
    standby: bool,
    /// Until when the standby watches eagerly (see `stand_by`); set by takeovers.
    eager_until: Option<Instant>,
    /// The standby sleeps on `standby_cv` until a call starts (or the leader is gone): a
    /// lazy standby after a long idle, or an eager one that found the leader parked. The
    /// leader's own wake-ups leave it asleep, since a leader in I/O has no call to be
    /// taken over from. Lazy: an idle server's housekeeping woke the leader every 100 ms,
    /// and a standby woken by each went back to its 4 ms ticks for another
    /// `LAZY_IDLE_TICKS` (~220 wake-ups a second of the standby on an idle server,
    /// measured; docs/design.md). Eager: woken at every unpark, it went back to waiting
    /// on the gate and took it at the leader's next park, a round of the gate per
    /// wake-up of the leader (sleep-c64, `perf stat` on the server's core: 10.5 -> 9.1
    /// context switches and 9.5 -> 7.9 futex calls per request; CPU per request 61-74
    /// against 65-77 us in interleaved runs, inside the host's noise).
    standby_asleep: bool,
    /// Threads waiting in `idle_cv` for a role.
    idle: usize,
    /// How many idle threads have been asked to become standby or leader.
    summoned: usize,
    threads: usize,
    max_threads: usize,
    /// The CPU clock of the leader's thread (see [`cpu`]), to tell a call that computes
    /// from one that waits.
    leader_clock: Option<cpu::Clock>,
    /// Tokens of leaders displaced from a call that kept computing, still in that call:
    /// each one shares the gate with whoever leads now.
    displaced_computing: Vec<u64>,
    /// Threads displaced from leading while in an application call, still in that call.
    displaced: usize,
    /// The leader drives the runtime from inside an application call (`drive`).
    driving_in_call: bool,
    /// Wakers deferred by the leader while it ran application code outside the runtime;
    /// whoever drives the runtime next wakes them from inside it (cheap).
    pending_wakes: Vec<Waker>,
    stopping: bool,
}

/// The dispatch pool. Shared by the runtime hooks, the connection tasks and the threads.
pub struct Dispatcher<J: Job> {
    control: Mutex<Control>,
    idle_cv: Condvar,
    standby_cv: Condvar,
    exit_cv: Condvar,
    queue: Mutex<VecDeque<J>>,
    /// Waker of the leader's `block_on` future, set while it waits for jobs.
    leader_waker: Mutex<Option<Waker>>,
    has_jobs: AtomicBool,
    gate: Arc<dyn Gate>,
    /// Application threads waiting to take the gate back (announced by `want_gate`).
    gate_wanted: AtomicUsize,
    gate_notify: tokio::sync::Notify,
    /// The runtime, for a leader that must drive it from inside a call.
    rt: Mutex<Option<Arc<tokio::runtime::Runtime>>>,
    /// Counts application calls started by leaders (the lazy standby's clock).
    job_seq: AtomicU64,
    /// One slot per dispatch thread (by index), for [`Dispatcher::running`].
    running: Vec<RunningSlot>,
    next_slot: AtomicUsize,
    /// Takeovers of the runtime from a call that blocked (gave the gate up).
    takeovers_blocked: AtomicU64,
    /// Takeovers from a call that kept computing (see `stand_by` for how that is told).
    takeovers_computing: AtomicU64,
    /// Polling before the runtime sleeps (see `busy_poll.rs`), when on and set up.
    busy_poll: std::sync::OnceLock<BusyPoll>,
}

/// How often a lazy standby looks at the leader; a call running this long (one to two
/// ticks) gets the standby waiting for the gate. Each look is two context switches on the
/// leader's core: at 1 ms (2,000 a second) they cost a Flask app ~12 % of its CPU time per
/// request (cache refills), at 4 ms 0.10 switches per request instead of 0.38, and a call
/// that blocks is still taken over within 4-8 ms, about the interpreter's own switch
/// interval (5 ms).
const LAZY_TICK: Duration = Duration::from_millis(4);
/// Ticks of a parked leader after which a lazy standby sleeps until a call starts.
const LAZY_IDLE_TICKS: u32 = 100;
/// How long the standby stays eager after a takeover.
const EAGER_AFTER_TAKEOVER: Duration = Duration::from_millis(200);
/// A wait for the gate this long means it was taken by force (the interpreter hands the
/// GIL to a waiting thread after its switch interval, 5 ms by default), not released by
/// a blocking call (then it is free within microseconds).
const FORCED_SWITCH: Duration = Duration::from_millis(3);

thread_local! {
    static LEADER_TOKEN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// This dispatch thread's slot in `Dispatcher::running`.
    static SLOT: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// A call the standby watches: which one, since when, and how much its thread had run
/// then.
struct Watch {
    seq: u64,
    token: u64,
    since: Instant,
    cpu: Option<Duration>,
}

/// Shortest watch from which a call's share of the CPU is judged (a shorter one is mostly
/// the standby's own wake-up).
const MIN_JUDGED: Duration = Duration::from_millis(1);

impl Watch {
    fn start(c: &Control, seq: u64) -> Watch {
        Watch {
            seq,
            token: c.leader_token,
            since: Instant::now(),
            cpu: c.leader_clock.and_then(cpu::Clock::read),
        }
    }

    /// Whether this is the call the leader runs now.
    fn is(&self, c: &Control, seq: u64) -> bool {
        self.seq == seq && self.token == c.leader_token
    }

    /// Whether the call computes: its thread ran for at least a quarter of the time
    /// watched (a call that waits, in I/O, a sleep or on a lock, runs for almost none of
    /// it; one that computes, for nearly all of it, less what other tenants of a busy host
    /// take: on a core shared with one other busy thread, half, which a threshold of half
    /// misread as waiting about every other time).
    /// `None` when it cannot be told: no CPU clock, or too short a watch. (While a
    /// displaced call shares the gate, a call waiting for the gate looks like one that
    /// waits: `stand_by` then counts every call as computing.)
    fn computing(&self, c: &Control) -> Option<bool> {
        self.ran_for(c, 4)
    }

    /// Whether the leader's thread ran for at least 1/`part` of the time watched (`None`:
    /// no CPU clock, or too short a watch).
    fn ran_for(&self, c: &Control, part: u32) -> Option<bool> {
        let watched = self.since.elapsed();
        if watched < MIN_JUDGED {
            return None;
        }
        let ran = c.leader_clock?.read()?.checked_sub(self.cpu?)?;
        Some(ran * part >= watched)
    }
}

/// How long a call that computes runs before the standby takes the loop over, when
/// `displaced` calls that computed are still running: a tick, doubled for each. The loop
/// is then shared between the calls (the gate passes every switch interval), which is
/// fair to short requests behind a long one; but every call displaced slows the next, and
/// without the doubling a load of calls each a few milliseconds long (Django on a busy
/// host) fed on itself: a takeover per three requests, 4.5 context switches per request
/// (docs/design.md).
fn budget(displaced: usize) -> Duration {
    LAZY_TICK * (1u32 << displaced.min(6))
}

/// Per-thread CPU clocks: how long a thread has run, read from another thread.
mod cpu {
    use std::time::Duration;

    /// The CPU-time clock of one thread.
    #[derive(Debug, Clone, Copy)]
    pub(super) struct Clock(libc::clockid_t);

    impl Clock {
        /// The clock of the calling thread, where the platform has one.
        pub(super) fn of_this_thread() -> Option<Clock> {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            {
                let mut id: libc::clockid_t = 0;
                // SAFETY: `pthread_self` is the calling thread, alive; `id` is a valid
                // place for the result.
                let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut id) };
                (rc == 0).then_some(Clock(id))
            }
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            {
                None
            }
        }

        /// How long the thread has run. `None` if the clock cannot be read (its thread
        /// has exited: the kernel answers EINVAL).
        pub(super) fn read(self) -> Option<Duration> {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `ts` is a valid place for the result; an unknown clock is an error
            // return, not undefined behaviour.
            let rc = unsafe { libc::clock_gettime(self.0, &mut ts) };
            if rc != 0 {
                return None;
            }
            Some(Duration::new(
                u64::try_from(ts.tv_sec).ok()?,
                u32::try_from(ts.tv_nsec).ok()?,
            ))
        }
    }
}

impl<J: Job> Dispatcher<J> {
    /// A pool of at most `max_threads` threads (at least 2: a leader and a standby).
    pub fn new(gate: Arc<dyn Gate>, max_threads: usize) -> Arc<Self> {
        Arc::new(Dispatcher {
            control: Mutex::new(Control {
                leader: LeaderState::Absent,
                leader_token: 0,
                next_token: 1,
                standby: false,
                eager_until: None,
                standby_asleep: false,
                idle: 0,
                summoned: 0,
                threads: 0,
                max_threads: max_threads.max(2),
                leader_clock: None,
                displaced_computing: Vec::new(),
                displaced: 0,
                driving_in_call: false,
                pending_wakes: Vec::new(),
                stopping: false,
            }),
            idle_cv: Condvar::new(),
            standby_cv: Condvar::new(),
            exit_cv: Condvar::new(),
            queue: Mutex::new(VecDeque::new()),
            leader_waker: Mutex::new(None),
            has_jobs: AtomicBool::new(false),
            gate,
            gate_wanted: AtomicUsize::new(0),
            gate_notify: tokio::sync::Notify::new(),
            rt: Mutex::new(None),
            job_seq: AtomicU64::new(0),
            running: (0..max_threads.max(2) * 2)
                .map(|_| Mutex::new(None))
                .collect(),
            next_slot: AtomicUsize::new(0),
            takeovers_blocked: AtomicU64::new(0),
            takeovers_computing: AtomicU64::new(0),
            busy_poll: std::sync::OnceLock::new(),
        })
    }

    /// Queues a job; called from connection tasks (inside the runtime).
    pub fn submit(&self, job: J) {
        self.queue.lock().push_back(job);
        self.has_jobs.store(true, Ordering::Release);
        if let Some(w) = self.leader_waker.lock().take() {
            w.wake();
        }
    }

    /// Wakes a connection task from application code. When the caller is the current
    /// leader (running outside the runtime), the wake is deferred until it re-enters the
    /// runtime, which turns an eventfd write into a queue push.
    pub fn wake(&self, waker: Waker) {
        {
            let mut c = self.control.lock();
            if Self::calling_leader(&c) {
                c.pending_wakes.push(waker);
                return;
            }
        }
        waker.wake();
    }

    /// Wakes the tasks whose wakes were deferred during a call. The vector goes back
    /// afterwards, so that its capacity serves the next call (a request used to pay for
    /// growing it anew).
    fn wake_pending(&self) {
        let mut wakes = {
            let mut c = self.control.lock();
            if c.pending_wakes.is_empty() {
                return; // (taking it would drop its capacity)
            }
            std::mem::take(&mut c.pending_wakes)
        };
        for w in wakes.drain(..) {
            w.wake();
        }
        let mut c = self.control.lock();
        if c.pending_wakes.is_empty() {
            c.pending_wakes = wakes;
        }
    }

    /// The application calls running now, with how long they have run, longest first.
    pub fn running(&self) -> Vec<(Duration, String)> {
        let now = crate::clock::coarse_now();
        let mut calls: Vec<(Duration, String)> = self
            .running
            .iter()
            .filter_map(|s| {
                s.lock()
                    .as_ref()
                    .map(|(t, subj)| (now.saturating_sub(*t), subj.describe()))
            })
            .collect();
        calls.sort_by_key(|c| std::cmp::Reverse(c.0));
        calls
    }

    fn slot(&self) -> Option<&RunningSlot> {
        let mut i = SLOT.with(|s| s.get());
        if i == usize::MAX {
            i = self.next_slot.fetch_add(1, Ordering::Relaxed);
            SLOT.with(|s| s.set(i));
        }
        self.running.get(i)
    }

    /// Number of dispatch threads alive.
    pub fn threads(&self) -> usize {
        self.control.lock().threads
    }

    /// Takeovers of the runtime so far: from calls that blocked, from calls that computed.
    pub fn takeovers(&self) -> (u64, u64) {
        (
            self.takeovers_blocked.load(Ordering::Relaxed),
            self.takeovers_computing.load(Ordering::Relaxed),
        )
    }

    /// Polls the runtime's epoll instance (`epoll`) for up to `window` before the leader
    /// sleeps, after short waits (see `busy_poll.rs`). Set once, before the runtime runs.
    pub(crate) fn set_busy_poll(&self, epoll: std::os::fd::RawFd, window: Duration) {
        let _ = self.busy_poll.set(BusyPoll::new(epoll, window));
    }

    /// Hook for the runtime: the leader is about to sleep in the I/O driver.
    pub fn before_park(&self) {
        let mut c = self.control.lock();
        if c.leader == LeaderState::Io {
            c.leader = LeaderState::Parked;
            // No busy polling while displaced calls run: their threads need this core
            // when the call returns (a sleep ends, a query answers), and polling would
            // only compete with them for it. Nor while the leader drives the runtime from
            // inside a call (waiting for body bytes): bytes read the instant they arrive
            // keep TCP's receive window from growing (docs/design.md). (A poll may have
            // the standby see a parked leader a moment longer: harmless, nothing waits on
            // the loop then.)
            let poll = c.displaced == 0 && !c.driving_in_call;
            drop(c);
            self.gate.release();
            if let Some(bp) = self.busy_poll.get() {
                bp.before_sleep(poll);
            }
        }
    }

    /// Hook for the runtime: the leader woke up in the I/O driver.
    pub fn after_unpark(&self) {
        if let Some(bp) = self.busy_poll.get() {
            bp.after_wake();
        }
        let parked = self.control.lock().leader == LeaderState::Parked;
        if parked {
            self.gate.acquire();
            self.control.lock().leader = LeaderState::Io;
        }
    }

    /// Lets another thread waiting for the gate run, from inside the runtime: called when
    /// an application thread announced it wants the gate back (see [`Dispatcher::want_gate`])
    /// and periodically, so that threads finishing a blocking call are not starved while
    /// the leader is busy with I/O (the interpreter's own switch requests are only seen
    /// when Python code runs, which the I/O loop does not).
    pub fn yield_gate(&self) {
        let is_io = self.control.lock().leader == LeaderState::Io;
        if !is_io {
            return;
        }
        self.gate.release();
        // Give an announced waiter the chance to take the gate before taking it back: a
        // plain release-and-acquire would usually win the race against a thread that
        // still has to be scheduled.
        let mut spins = 0;
        while self.gate_wanted.load(Ordering::Acquire) > 0 && spins < 50 {
            thread::yield_now();
            spins += 1;
        }
        self.gate.acquire();
    }

    /// An application thread is about to take the gate back after waiting for the
    /// engine (e.g. for body bytes): ask the leader to let go of it soon.
    pub fn want_gate(&self) {
        self.gate_wanted.fetch_add(1, Ordering::AcqRel);
        self.gate_notify.notify_one();
    }

    /// The thread that called [`Dispatcher::want_gate`] has the gate.
    pub fn got_gate(&self) {
        self.gate_wanted.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether the calling thread must drive the runtime itself rather than block while
    /// it waits for the engine (body bytes, output room): it is the leader, inside an
    /// application call, and no thread stands by to take over (the pool is exhausted).
    /// Blocking then would leave nobody to produce what it waits for.
    pub fn must_drive(&self) -> bool {
        let c = self.control.lock();
        Self::calling_leader(&c) && !c.standby
    }

    /// Whether the calling thread may drive the runtime while it waits (it is the leader,
    /// inside an application call): see [`Dispatcher::drive`] with a limit.
    pub fn may_drive(&self) -> bool {
        Self::calling_leader(&self.control.lock())
    }

    /// The calling thread is the leader and inside an application call.
    fn calling_leader(c: &Control) -> bool {
        let token = LEADER_TOKEN.with(|t| t.get());
        token != 0 && c.leader_token == token && c.leader == LeaderState::App
    }

    /// Drives the runtime from inside an application call until `ready` says so (see
    /// [`Dispatcher::must_drive`]), or until `limit` passed; returns whether `ready` said
    /// so. `ready` registers the waker it is given when it returns false. Jobs queued
    /// meanwhile run after the call.
    pub fn drive(
        &self,
        limit: Option<Duration>,
        ready: &mut dyn FnMut(&mut std::task::Context<'_>) -> bool,
    ) -> bool {
        let Some(rt) = self.rt.lock().clone() else {
            return false;
        };
        {
            let mut c = self.control.lock();
            c.leader = LeaderState::Io;
            c.driving_in_call = true;
        }
        // Made on the first poll: a timer needs the runtime's context.
        let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let done = rt.block_on(poll_fn(|cx| {
            self.wake_pending();
            if ready(cx) {
                return Poll::Ready(true);
            }
            if let Some(limit) = limit {
                let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if t.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(false);
                }
            }
            Poll::Pending
        }));
        {
            let mut c = self.control.lock();
            self.enter_call(&mut c);
            c.driving_in_call = false;
        }
        done
    }

    /// Runs inside the runtime: yields the gate whenever a thread announced it wants it.
    pub async fn gate_yielder(self: Arc<Self>) {
        loop {
            self.gate_notify.notified().await;
            while self.gate_wanted.load(Ordering::Acquire) > 0 {
                self.yield_gate();
                tokio::task::yield_now().await;
            }
        }
    }

    /// Starts the first dispatch thread, which becomes leader and drives `rt`.
    pub fn start(self: &Arc<Self>, rt: Arc<tokio::runtime::Runtime>) {
        *self.rt.lock() = Some(Arc::clone(&rt));
        let mut c = self.control.lock();
        c.threads += 1;
        drop(c);
        self.spawn_thread(rt, Role::Leader);
    }

    /// Stops every thread once it is out of its current call; wakes the leader.
    pub fn stop(&self) {
        let mut c = self.control.lock();
        c.stopping = true;
        self.idle_cv.notify_all();
        self.standby_cv.notify_all();
        drop(c);
        if let Some(w) = self.leader_waker.lock().take() {
            w.wake();
        }
    }

    /// Waits until every dispatch thread has exited, or `timeout` passed (then false).
    pub fn join(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut c = self.control.lock();
        while c.threads > 0 {
            self.idle_cv.notify_all();
            self.standby_cv.notify_all();
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let step = (now + Duration::from_millis(50)).min(deadline);
            self.exit_cv.wait_until(&mut c, step);
        }
        true
    }

    fn spawn_thread(self: &Arc<Self>, rt: Arc<tokio::runtime::Runtime>, role: Role) {
        let me = Arc::clone(self);
        let spawned = thread::Builder::new()
            .name("unyoke-dispatch".into())
            .spawn(move || me.thread_main(rt, role));
        if spawned.is_err() {
            // Out of threads: the pool stays smaller, and the role stays free.
            let mut c = self.control.lock();
            c.threads -= 1;
            match role {
                Role::Leader => {
                    c.leader = LeaderState::Absent;
                    self.wake_standby(&mut c);
                }
                Role::Standby => c.standby = false,
                Role::Idle | Role::Stop => {}
            }
        }
    }

    fn thread_main(self: Arc<Self>, rt: Arc<tokio::runtime::Runtime>, role: Role) {
        let mut role = Some(role);
        let gate = Arc::clone(&self.gate);
        gate.run_thread(&mut || {
            let Some(mut role) = role.take() else { return };
            if role == Role::Leader {
                let mut c = self.control.lock();
                Self::become_leader(&mut c);
            }
            loop {
                // Every role starts and ends with this thread holding the gate.
                role = match role {
                    Role::Leader => {
                        self.lead(&rt);
                        self.after_lead()
                    }
                    Role::Standby => self.stand_by(),
                    Role::Idle => self.idle_wait(),
                    Role::Stop => break,
                };
            }
        });
        let mut c = self.control.lock();
        c.threads -= 1;
        self.exit_cv.notify_all();
    }

    /// The leader starts (or goes back to) an application call: a standby asleep for
    /// want of calls has one to watch now.
    fn enter_call(&self, c: &mut Control) {
        c.leader = LeaderState::App;
        self.wake_standby(c);
    }

    /// Wakes the standby if it sleeps until a call starts.
    fn wake_standby(&self, c: &mut Control) {
        if c.standby_asleep {
            c.standby_asleep = false;
            self.standby_cv.notify_one();
        }
    }

    /// The standby, having set `standby_asleep`, sleeps on `standby_cv` until woken, the
    /// leader is no longer in I/O or parked (a call started, or there is no leader), or
    /// the pool stops.
    fn standby_wait(&self, c: &mut MutexGuard<'_, Control>) {
        while c.standby_asleep
            && !c.stopping
            && matches!(c.leader, LeaderState::Parked | LeaderState::Io)
        {
            self.standby_cv.wait(c);
        }
        c.standby_asleep = false;
    }

    /// Makes the calling thread the leader.
    fn become_leader(c: &mut Control) {
        c.leader = LeaderState::Io;
        c.leader_clock = cpu::Clock::of_this_thread();
        c.leader_token = c.next_token;
        c.next_token += 1;
        LEADER_TOKEN.with(|t| t.set(c.leader_token));
    }

    /// What a thread does after leading: stop, stand by, or idle.
    fn after_lead(&self) -> Role {
        LEADER_TOKEN.with(|t| t.set(0));
        let mut c = self.control.lock();
        if c.stopping {
            return Role::Stop;
        }
        if !c.standby {
            c.standby = true;
            return Role::Standby;
        }
        Role::Idle
    }

    /// Waits in the pool until summoned to stand by, needed as leader, or stopped.
    fn idle_wait(&self) -> Role {
        self.gate.release();
        let mut c = self.control.lock();
        c.idle += 1;
        let role = loop {
            if c.stopping {
                break Role::Stop;
            }
            if c.summoned > 0 {
                c.summoned -= 1;
                break Role::Standby;
            }
            if c.leader == LeaderState::Absent {
                Self::become_leader(&mut c);
                break Role::Leader;
            }
            self.idle_cv.wait(&mut c);
        };
        c.idle -= 1;
        drop(c);
        self.gate.acquire();
        role
    }

    /// Makes sure some thread stands by: summons an idle one or starts a new one.
    fn ensure_standby(self: &Arc<Self>, c: &mut Control, rt: &Arc<tokio::runtime::Runtime>) {
        if c.standby || c.stopping {
            return;
        }
        if c.idle > c.summoned {
            c.standby = true;
            c.summoned += 1;
            self.idle_cv.notify_one();
        } else if c.threads < c.max_threads {
            c.threads += 1;
            c.standby = true;
            self.spawn_thread(Arc::clone(rt), Role::Standby);
        }
    }

    /// The standby: watch the leader; if it is stuck in an application call, take over
    /// the runtime.
    ///
    /// Two ways of watching, chosen by what the load needs:
    /// - *eager*, after a takeover (a blocking workload): wait for the gate itself. A call
    ///   that blocks releases it, so the standby takes over at once; a leader that keeps
    ///   the gate is interrupted by the interpreter's switch interval (5 ms).
    /// - *lazy*, when calls have not blocked for a while (a fast workload): look at the
    ///   leader every tick (4 ms) without touching the gate, and only wait for the gate
    ///   when the same call has been running for a whole tick and waits (its thread ran
    ///   for less than half of it), or has run for its [`budget`] and computes. The fast
    ///   path then pays nothing: no gate hand-offs when the leader parks and wakes, and no
    ///   forced switches every 5 ms.
    fn stand_by(&self) -> Role {
        self.gate.release();
        // The call being watched, once the standby has seen it running.
        let mut watch: Option<Watch> = None;
        let mut idle_ticks = 0u32;
        loop {
            let eager = {
                let mut c = self.control.lock();
                if c.stopping {
                    c.standby = false;
                    drop(c);
                    self.gate.acquire();
                    return Role::Stop;
                }
                let eager = c.eager_until.is_some_and(|t| Instant::now() < t);
                if eager && c.leader == LeaderState::App {
                    // The wait for the gate itself is the look: watch the call from now.
                    let seq = self.job_seq.load(Ordering::Acquire);
                    if !watch.as_ref().is_some_and(|w| w.is(&c, seq)) {
                        watch = Some(Watch::start(&c, seq));
                    }
                }
                eager
            };
            if !eager {
                // Lazy: tick until the leader looks stuck (or is gone).
                let mut c = self.control.lock();
                loop {
                    if c.stopping || c.leader == LeaderState::Absent {
                        break;
                    }
                    let seq = self.job_seq.load(Ordering::Acquire);
                    if c.leader == LeaderState::App {
                        match &watch {
                            // The same call for a whole tick at least. One that waits (I/O,
                            // a sleep, a lock) is taken over now. One that computes waits
                            // for its budget: taking the loop over shares the gate between
                            // it and the next calls, so each call already displaced while
                            // computing lengthens the wait; and while one is, a call that
                            // seems to wait may only be waiting for the gate.
                            Some(w) if w.is(&c, seq) => {
                                let displaced = c.displaced_computing.len();
                                let waits = displaced == 0 && w.computing(&c) != Some(true);
                                if waits || w.since.elapsed() >= budget(displaced) {
                                    break;
                                }
                            }
                            _ => watch = Some(Watch::start(&c, seq)),
                        }
                    } else {
                        watch = None;
                    }
                    if c.leader == LeaderState::Parked {
                        idle_ticks = idle_ticks.saturating_add(1);
                    } else {
                        idle_ticks = 0;
                    }
                    if idle_ticks > LAZY_IDLE_TICKS {
                        // Long idle: sleep until a call starts (the leader notifies); its
                        // wake-ups for I/O or timers alone have nothing to watch.
                        c.standby_asleep = true;
                        self.standby_wait(&mut c);
                        idle_ticks = 0;
                    } else {
                        self.standby_cv.wait_for(&mut c, LAZY_TICK);
                    }
                }
            }
            // The wait itself is watched too: when the gate comes from a call that started
            // during the wait (no watch of it), a leader's thread that ran for less than
            // half the wait was not switched out by force (see below).
            let wait_watch = {
                let c = self.control.lock();
                Watch::start(&c, self.job_seq.load(Ordering::Acquire))
            };
            self.gate.acquire();
            let waited = wait_watch.since.elapsed();
            let mut c = self.control.lock();
            if c.stopping {
                c.standby = false;
                return Role::Stop;
            }
            let still_eager = c.eager_until.is_some_and(|t| Instant::now() < t);
            let seq = self.job_seq.load(Ordering::Acquire);
            match c.leader {
                LeaderState::App | LeaderState::Absent => {
                    let watched = watch.as_ref().filter(|w| w.is(&c, seq));
                    // Whether the call computes: from how much its thread ran while
                    // watched; failing that, from how the gate came: only after a switch
                    // interval means taken by force from a call that computes, not given
                    // up by one that blocks. But on a busy host the standby may wake long
                    // after a blocking call freed the gate: so not if the leader's thread
                    // ran for less than half the wait (its I/O, then the call). (More
                    // does not say the call computes: the I/O may be most of it.) With a
                    // displaced call computing, the gate is shared, and none of this
                    // tells: counted as computing.
                    let displaced = c.displaced_computing.len();
                    let computing = c.leader == LeaderState::App
                        && (displaced > 0
                            || watched.and_then(|w| w.computing(&c)).unwrap_or_else(|| {
                                waited >= FORCED_SWITCH
                                    && (wait_watch.token != c.leader_token
                                        || wait_watch.ran_for(&c, 2) != Some(false))
                            }));
                    if computing && watched.is_some_and(|w| w.since.elapsed() < budget(displaced)) {
                        // An eager wait that met a computing call before its budget:
                        // watch it lazily from now on (eagerness against calls that
                        // compute is a forced switch every switch interval).
                        c.eager_until = None;
                        drop(c);
                        self.gate.release();
                        thread::yield_now();
                        continue;
                    }
                    // The leader blocks the loop (or there is none): take over.
                    c.standby = false;
                    // Only a call that blocked makes the standby eager: eagerness means
                    // waiting on the gate all the time, which against calls that compute
                    // turns into a forced switch (and a takeover) every switch interval,
                    // each one extending it: one slow call would leave a CPU-bound app
                    // (Flask, Django) paying for switches for good.
                    if computing {
                        self.takeovers_computing.fetch_add(1, Ordering::Relaxed);
                        let token = c.leader_token;
                        c.displaced_computing.push(token);
                    } else if c.leader == LeaderState::App {
                        self.takeovers_blocked.fetch_add(1, Ordering::Relaxed);
                        c.eager_until = Some(Instant::now() + EAGER_AFTER_TAKEOVER);
                    }
                    if c.leader == LeaderState::App {
                        c.displaced += 1;
                    }
                    Self::become_leader(&mut c);
                    drop(c);
                    // If the call computes, the old leader is not blocked but waiting for
                    // the gate to finish its (running) call: lend it the gate once now, so
                    // its response is not held up until this thread next lets go. A
                    // blocked leader does not want it, but displaced calls whose wait
                    // has ended do: this is one of the few points where they get the
                    // gate from a leader busy with I/O (lending only to computing calls
                    // lost 6-12 % of sleep-c64's req/s; docs/design.md).
                    self.gate.release();
                    thread::yield_now();
                    self.gate.acquire();
                    return Role::Leader;
                }
                LeaderState::Parked if still_eager => {
                    // Nothing runs; sleep until a call starts.
                    c.standby_asleep = true;
                    drop(c);
                    self.gate.release();
                    self.standby_wait(&mut self.control.lock());
                }
                _ => {
                    // A gate lent by a busy leader, a forced switch, or a lazy check that
                    // found the call finished: hand the gate back.
                    drop(c);
                    self.gate.release();
                    watch = None;
                    thread::yield_now();
                }
            }
        }
    }

    /// The leader: drive the runtime until jobs are ready, run them, repeat. Returns when
    /// displaced (another thread took over while this one was in a call) or stopping.
    fn lead(self: &Arc<Self>, rt: &Arc<tokio::runtime::Runtime>) {
        let my_token = LEADER_TOKEN.with(|t| t.get());
        {
            let mut c = self.control.lock();
            self.ensure_standby(&mut c, rt);
        }
        loop {
            let stopping = rt.block_on(poll_fn(|cx| {
                self.wake_pending();
                if self.has_jobs.load(Ordering::Acquire) {
                    return Poll::Ready(false);
                }
                if self.control.lock().stopping {
                    return Poll::Ready(true);
                }
                *self.leader_waker.lock() = Some(cx.waker().clone());
                // A job may have been queued between the check and registering.
                if self.has_jobs.load(Ordering::Acquire) {
                    return Poll::Ready(false);
                }
                Poll::Pending
            }));
            if stopping {
                let mut c = self.control.lock();
                c.leader = LeaderState::Absent;
                return;
            }
            loop {
                let job = {
                    let mut q = self.queue.lock();
                    let job = q.pop_front();
                    if q.is_empty() {
                        self.has_jobs.store(false, Ordering::Release);
                    }
                    job
                };
                let Some(job) = job else { break };
                self.job_seq.fetch_add(1, Ordering::Release);
                self.enter_call(&mut self.control.lock());
                let slot = self.slot();
                if let (Some(slot), Some(subject)) = (slot, job.subject()) {
                    *slot.lock() = Some((crate::clock::coarse_now(), subject));
                }
                job.run();
                if let Some(slot) = slot {
                    *slot.lock() = None;
                }
                let mut c = self.control.lock();
                if c.leader_token != my_token {
                    // Another thread took over the runtime while this call blocked. Wakes
                    // deferred during the call are in `pending_wakes`, for the new leader.
                    c.displaced_computing.retain(|&t| t != my_token);
                    c.displaced = c.displaced.saturating_sub(1);
                    return;
                }
                c.leader = LeaderState::Io;
                if !c.standby {
                    self.ensure_standby(&mut c, rt);
                }
            }
        }
    }
}
