//! The engine: configuration, the runtime, the accept loops, shutdown and statistics.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tokio::sync::{Notify, Semaphore};
use unyoke_http::Limits;

use crate::access_log::{AccessLog, LogFormat};
use crate::clock::DateCache;
use crate::connection::{self, ConnInfo, Ended, PeerAddr, Policy, Start};
use crate::dispatch::{Dispatcher, Gate, Job};
use crate::exchange::{Exchange, ExchangePool, Waking};
use crate::idle::{IdlePool, Shelvable, Woken};
use crate::listener::{Listener, TokioListener};
use crate::Handler;

/// Engine settings (the Python side validates them and documents them).
#[derive(Debug, Clone)]
pub struct Config {
    /// Request limits (431/414/413).
    pub limits: Limits,
    /// Time to receive a whole request head once it began (and for the first request,
    /// from the accept); then 408 and close.
    pub header_timeout: Duration,
    /// How long an idle keep-alive connection is kept.
    pub keepalive_timeout: Duration,
    /// Time without progress while reading a body or writing a response; then close.
    pub inactivity_timeout: Duration,
    /// Most open connections; beyond, new ones wait in the listen backlog.
    pub max_size: usize,
    /// Whether connections may persist.
    pub keepalive: bool,
    /// Most dispatch threads (how many application calls may block at once).
    pub threads: usize,
    /// The `Server` header value (empty: none).
    pub identity: Vec<u8>,
    /// Request body bytes read ahead of the application; beyond, reading waits for it.
    pub inbuf_overflow: u64,
    /// Request body bytes read before the application is called (capped by
    /// `inbuf_overflow`); 0 calls it at the head. Requests with `Expect: 100-continue`
    /// are always called at the head.
    pub body_preread: u64,
    /// The access log format, or None for no access log.
    pub access_log: Option<LogFormat>,
    /// Prefix the client address with X-Forwarded-For in the access log.
    pub log_x_forwarded_for: bool,
    /// A response not started this long after the request head ends with 503 (None: no limit).
    pub responseless_timeout: Option<Duration>,
    /// Networks allowed to connect (empty: everyone); others are closed at accept.
    pub origins: Vec<Network>,
    /// Most requests in progress at once (0: no limit); further requests wait for a slot
    /// for up to `inactivity_timeout`, then get 503.
    pub maximum_simultaneous_requests: usize,
    /// TLS for TCP listeners (see [`crate::tls_server_config`]); the handshake must finish
    /// within `header_timeout`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Expect a PROXY protocol header (v1 or v2) first on every TCP connection; the
    /// client address it carries replaces the peer's. Connections without one are closed.
    pub proxy_protocol: bool,
    /// How long the runtime polls for events before it sleeps, after short waits (see
    /// `busy_poll.rs`); zero: never.
    pub busy_poll: Duration,
}

/// An IP network, e.g. `10.0.0.0/8` (an IPv4 network also matches IPv4-mapped IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl Network {
    /// Parses `ADDR/PREFIX` or a bare address.
    pub fn parse(s: &str) -> Result<Network, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("{s:?}: bad prefix length"))?,
            None => max,
        };
        Ok(Network { addr, prefix })
    }

    /// Whether `ip` is in the network.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.prefix))
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.prefix))
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(75),
            inactivity_timeout: Duration::from_secs(60),
            max_size: 10_000,
            keepalive: true,
            threads: 64,
            identity: b"unyoke".to_vec(),
            inbuf_overflow: 512 * 1024,
            body_preread: 64 * 1024,
            access_log: None,
            log_x_forwarded_for: true,
            responseless_timeout: None,
            origins: Vec::new(),
            maximum_simultaneous_requests: 0,
            tls: None,
            proxy_protocol: false,
            busy_poll: Duration::from_micros(50),
        }
    }
}

/// Counters of the engine.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    /// Connections open now.
    pub open_connections: u64,
    /// Requests whose response is not finished.
    pub requests_in_flight: u64,
    /// Requests received since start.
    pub requests_total: u64,
    /// Bytes read from clients.
    pub bytes_in: u64,
    /// Bytes written to clients.
    pub bytes_out: u64,
    /// Dispatch threads alive.
    pub threads: u64,
    /// Open connections set aside while idle (counted in `open_connections` too).
    pub idle_connections: u64,
    /// Responses by status class: index 0 for none sent (client gone), 1 for 1xx … 5 for 5xx.
    pub responses_by_class: [u64; 6],
    /// Request durations (head received → response end): counts per bucket of
    /// [`DURATION_BUCKETS`] (cumulative is the reader's job), the last one +Inf.
    pub duration_buckets: [u64; DURATION_BUCKETS.len() + 1],
    /// Sum of request durations, in microseconds.
    pub duration_sum_us: u64,
    /// Times a standby thread took the event loop over from an application call that
    /// blocked (gave the GIL up): the call runs on, the loop with it.
    pub takeovers_blocked: u64,
    /// Times a standby thread took the event loop over from an application call that kept
    /// computing past its budget (a 4 ms tick, doubled for each computing call displaced
    /// and still running).
    pub takeovers_computing: u64,
}

/// Upper bounds, in seconds, of the request duration histogram (Prometheus' defaults).
pub const DURATION_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
pub(crate) struct Counters {
    open: AtomicU64,
    in_flight: AtomicU64,
    total: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    by_class: [AtomicU64; 6],
    durations: [AtomicU64; DURATION_BUCKETS.len() + 1],
    duration_sum_us: AtomicU64,
}

impl Counters {
    pub(crate) fn bytes_in(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn bytes_out(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn request_started(&self) {
        self.total.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn request_finished(&self, status: u16, took: Duration) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let class = usize::from(status / 100).min(5);
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.durations[bucket].fetch_add(1, Ordering::Relaxed);
        self.duration_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
}

/// What the dispatcher runs for a handler.
pub(crate) enum WorkItem<H: Handler> {
    Call(Arc<Exchange<H::State>>),
    Resume(Arc<Exchange<H::State>>),
    Close(Arc<Exchange<H::State>>),
    Written(Arc<Exchange<H::State>>),
    Connection(Arc<ConnInfo>, bool),
}

pub(crate) struct Task<H: Handler> {
    handler: Arc<H>,
    item: WorkItem<H>,
}

impl<S: Send + 'static> crate::dispatch::Subject for Exchange<S> {
    fn describe(&self) -> String {
        let h = &self.head;
        format!(
            "{} {} {} from {:?}",
            String::from_utf8_lossy(h.method()),
            String::from_utf8_lossy(h.target()),
            h.version.as_str(),
            self.conn.peer
        )
    }
}

impl<H: Handler> Job for Task<H> {
    fn subject(&self) -> Option<Arc<dyn crate::dispatch::Subject>> {
        match &self.item {
            WorkItem::Call(ex) | WorkItem::Resume(ex) => {
                Some(Arc::clone(ex) as Arc<dyn crate::dispatch::Subject>)
            }
            _ => None,
        }
    }

    fn run(self) {
        match &self.item {
            WorkItem::Call(ex) => self.handler.call(ex),
            WorkItem::Resume(ex) => self.handler.resume(ex),
            WorkItem::Close(ex) => self.handler.close(ex),
            WorkItem::Written(ex) => self.handler.written(ex),
            WorkItem::Connection(info, open) => self.handler.connection_event(info, *open),
        }
    }
}

struct DispatchWaking<H: Handler>(Arc<Dispatcher<Task<H>>>);

impl<H: Handler> Waking for DispatchWaking<H> {
    fn wake(&self, waker: Waker) {
        self.0.wake(waker);
    }
    fn want_gate(&self) {
        self.0.want_gate();
    }
    fn got_gate(&self) {
        self.0.got_gate();
    }
    fn must_drive(&self) -> bool {
        self.0.must_drive()
    }
    fn may_drive(&self) -> bool {
        self.0.may_drive()
    }
    fn drive(
        &self,
        limit: Option<Duration>,
        ready: &mut dyn FnMut(&mut std::task::Context<'_>) -> bool,
    ) -> bool {
        self.0.drive(limit, ready)
    }
}

/// State shared by every connection of the engine.
pub(crate) struct Shared<H: Handler> {
    pub(crate) config: Config,
    pub(crate) date: DateCache,
    pub(crate) access_log: Option<AccessLog>,
    pub(crate) stats: Counters,
    pub(crate) policy: Arc<Policy>,
    pub(crate) stop_notify: Notify,
    /// The housekeeping task sleeps until a connection comes (see [`housekeeping`]).
    housekeeping_asleep: AtomicBool,
    housekeeping_wake: Notify,
    /// Slots for requests in progress, when `maximum_simultaneous_requests` is set.
    pub(crate) request_slots: Option<Arc<Semaphore>>,
    /// Idle connections set aside.
    pub(crate) idle: IdlePool,
    /// Read buffers of waiting connections, for the next one with bytes to read.
    pub(crate) buffers: crate::connection::BufferPool,
    connection_events: bool,
    handler: Arc<H>,
    dispatcher: Arc<Dispatcher<Task<H>>>,
    /// Exchanges of finished requests, for the next ones.
    pub(crate) exchanges: ExchangePool<H::State>,
    next_conn_id: AtomicU64,
    /// What the thread in [`Engine::run`] waits for.
    run_state: Mutex<RunState>,
    run_cv: Condvar,
}

/// What wakes the thread in [`Engine::run`]: the end of shutdown, or a request to call
/// its `tick` now ([`Engine::tick_now`]).
#[derive(Default)]
struct RunState {
    done: bool,
    tick_now: bool,
}

impl<H: Handler> Shared<H> {
    pub(crate) fn submit(&self, item: WorkItem<H>) {
        self.dispatcher.submit(Task {
            handler: Arc::clone(&self.handler),
            item,
        });
    }

    /// The bookkeeping of a connection's end (`info` is needed only for the hook).
    pub(crate) fn connection_closed(&self, info: Option<Arc<ConnInfo>>) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
        if self.connection_events {
            if let Some(info) = info {
                self.submit(WorkItem::Connection(info, false));
            }
        }
    }

    fn finish(&self) {
        self.run_state.lock().done = true;
        self.run_cv.notify_all();
    }
}

/// A server: listeners, a runtime, dispatch threads, and a handler.
pub struct Engine<H: Handler> {
    shared: Arc<Shared<H>>,
    rt: Arc<tokio::runtime::Runtime>,
    listeners: Mutex<Option<Vec<Listener>>>,
    shutdown_started: Mutex<bool>,
}

impl<H: Handler> Engine<H> {
    /// Builds the engine; nothing runs until [`Engine::run`].
    pub fn new(
        config: Config,
        listeners: Vec<Listener>,
        handler: H,
        gate: Arc<dyn Gate>,
    ) -> io::Result<Self> {
        tune_allocator();
        let dispatcher: Arc<Dispatcher<Task<H>>> = Dispatcher::new(gate, config.threads);
        let (d1, d2) = (Arc::clone(&dispatcher), Arc::clone(&dispatcher));
        // The epoll instances open before the runtime is built: tokio's is the new one.
        let epolls = (!config.busy_poll.is_zero()).then(crate::busy_poll::epoll_fds);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(move || d1.before_park())
            .on_thread_unpark(move || d2.after_unpark())
            .build()?;
        if let Some(epoll) = epolls.and_then(|before| crate::busy_poll::new_epoll(&before)) {
            dispatcher.set_busy_poll(epoll, config.busy_poll);
        }
        let access_log = config.access_log.clone().map(AccessLog::new);
        let policy = Arc::new(Policy {
            keepalive: config.keepalive,
            stopping: Default::default(),
        });
        let waking: Arc<dyn Waking> = Arc::new(DispatchWaking::<H>(Arc::clone(&dispatcher)));
        let request_slots = (config.maximum_simultaneous_requests > 0)
            .then(|| Arc::new(Semaphore::new(config.maximum_simultaneous_requests)));
        let max_size = config.max_size;
        let vacant = ConnInfo::vacant(0, Arc::clone(&policy));
        let shared = Arc::new(Shared {
            config,
            date: DateCache::default(),
            access_log,
            stats: Counters::default(),
            policy,
            stop_notify: Notify::new(),
            housekeeping_asleep: AtomicBool::new(false),
            housekeeping_wake: Notify::new(),
            request_slots,
            idle: IdlePool::new(max_size)?,
            buffers: Default::default(),
            connection_events: handler.wants_connection_events(),
            handler: Arc::new(handler),
            dispatcher,
            exchanges: ExchangePool::new(waking, vacant),
            next_conn_id: AtomicU64::new(1),
            run_state: Mutex::new(RunState::default()),
            run_cv: Condvar::new(),
        });
        Ok(Engine {
            shared,
            rt: Arc::new(rt),
            listeners: Mutex::new(Some(listeners)),
            shutdown_started: Mutex::new(false),
        })
    }

    /// Serves until shutdown completes. `tick` is called on the calling thread (e.g. to
    /// run signal handlers) every `tick_every`, and at once after [`Engine::tick_now`];
    /// if it returns false, shutdown starts with no grace period.
    pub fn run(&self, tick_every: Duration, mut tick: impl FnMut() -> bool) -> io::Result<()> {
        let listeners = self
            .listeners
            .lock()
            .take()
            .ok_or_else(|| io::Error::other("engine already ran"))?;
        let limit = Arc::new(Semaphore::new(self.shared.config.max_size.max(1)));
        {
            let _guard = self.rt.enter();
            for l in listeners {
                let l = l.into_tokio()?;
                self.rt
                    .spawn(accept_loop(Arc::clone(&self.shared), l, Arc::clone(&limit)));
            }
        }
        self.rt.spawn(housekeeping(Arc::clone(&self.shared)));
        self.rt.spawn(crate::idle::watch(Arc::clone(&self.shared)));
        self.rt
            .spawn(Arc::clone(&self.shared.dispatcher).gate_yielder());
        self.shared.dispatcher.start(Arc::clone(&self.rt));
        let mut state = self.shared.run_state.lock();
        while !state.done {
            let timed_out = !state.tick_now
                && self
                    .shared
                    .run_cv
                    .wait_for(&mut state, tick_every)
                    .timed_out();
            if (timed_out || state.tick_now) && !state.done {
                state.tick_now = false;
                drop(state);
                if !tick() {
                    self.shutdown(Duration::ZERO);
                }
                state = self.shared.run_state.lock();
            }
        }
        drop(state);
        self.shared.dispatcher.stop();
        self.shared.dispatcher.join(Duration::from_secs(2));
        if let Some(log) = &self.shared.access_log {
            log.flush();
        }
        Ok(())
    }

    /// Has the thread in [`Engine::run`] call its `tick` now rather than at the next
    /// interval: a signal arrived, and its handler has to run on that thread. Thread-safe.
    pub fn tick_now(&self) {
        self.shared.run_state.lock().tick_now = true;
        self.shared.run_cv.notify_all();
    }

    /// Stops accepting; requests in flight get `grace` to finish; idle connections close.
    /// Returns at once; [`Engine::run`] returns when it is over.
    pub fn shutdown(&self, grace: Duration) {
        let mut started = self.shutdown_started.lock();
        if *started {
            if grace.is_zero() {
                self.shared.finish();
            }
            return;
        }
        *started = true;
        self.shared.policy.stopping.store(true, Ordering::SeqCst);
        let shared = Arc::clone(&self.shared);
        self.rt.spawn(async move {
            shared.stop_notify.notify_waiters();
            let deadline = tokio::time::Instant::now() + grace;
            loop {
                shared.stop_notify.notify_waiters();
                crate::idle::sweep(&shared, tokio::time::Instant::now(), true);
                if shared.stats.open.load(Ordering::Relaxed) == 0
                    || tokio::time::Instant::now() >= deadline
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            shared.finish();
        });
        if grace.is_zero() {
            self.shared.finish();
        }
    }

    /// The application calls running now (age, request), longest first: what a stuck
    /// worker is stuck on.
    pub fn running_calls(&self) -> Vec<(Duration, String)> {
        self.shared.dispatcher.running()
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.stats;
        let (takeovers_blocked, takeovers_computing) = self.shared.dispatcher.takeovers();
        Stats {
            open_connections: c.open.load(Ordering::Relaxed),
            requests_in_flight: c.in_flight.load(Ordering::Relaxed),
            requests_total: c.total.load(Ordering::Relaxed),
            bytes_in: c.bytes_in.load(Ordering::Relaxed),
            bytes_out: c.bytes_out.load(Ordering::Relaxed),
            threads: self.shared.dispatcher.threads() as u64,
            idle_connections: self.shared.idle.len() as u64,
            responses_by_class: std::array::from_fn(|i| c.by_class[i].load(Ordering::Relaxed)),
            duration_buckets: std::array::from_fn(|i| c.durations[i].load(Ordering::Relaxed)),
            duration_sum_us: c.duration_sum_us.load(Ordering::Relaxed),
            takeovers_blocked,
            takeovers_computing,
        }
    }
}

/// Keeps freed memory for reuse instead of returning it to the kernel at once: request
/// bodies pass through 64 KiB buffers, and glibc's defaults would trim and re-fault them
/// on every request (page faults measured at 15% of the CPU of a 1 MiB upload).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 * 1024 * 1024);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 * 1024 * 1024);
    }
}

/// The clock for `Date`, access-log flushing, and gate yields while requests are in
/// flight. Ticks every 5 ms while busy, every 100 ms when idle (an idle server should not
/// wake up 200 times a second).
async fn housekeeping<H: Handler>(shared: Arc<Shared<H>>) {
    let mut last_refresh = tokio::time::Instant::now();
    let mut last_sweep = last_refresh;
    let mut quiet_ticks = 0u32;
    loop {
        let busy = shared.stats.in_flight.load(Ordering::Relaxed) > 0;
        if busy || shared.stats.open.load(Ordering::Relaxed) > 0 {
            quiet_ticks = 0;
        } else {
            quiet_ticks += 1;
        }
        if quiet_ticks > QUIET_TICKS_BEFORE_SLEEP {
            // No connection, no call, for a while (long enough for the sweep to have
            // trimmed after the last ones): nothing to refresh, flush or sweep until a
            // connection comes, and the accept loop wakes this task (and refreshes the
            // date) when one does. Ticking on, it woke the idle leader ~20 times a second
            // (tokio's timer wheel wakes the runtime twice for each 100 ms sleep).
            // (Tasks share one runtime thread at a time: the accept loop cannot run
            // between this flag and the wait.)
            shared.housekeeping_asleep.store(true, Ordering::Relaxed);
            shared.housekeeping_wake.notified().await;
            quiet_ticks = 0;
        }
        tokio::time::sleep(Duration::from_millis(if busy { 5 } else { 100 })).await;
        if busy {
            // Lets a thread that finished a blocking call have the gate even when the
            // leader is busy with I/O for a long time.
            shared.dispatcher.yield_gate();
        }
        if last_refresh.elapsed() >= Duration::from_millis(100) {
            last_refresh = tokio::time::Instant::now();
            shared.date.refresh();
            if let Some(log) = &shared.access_log {
                log.flush();
            }
        }
        let now = tokio::time::Instant::now();
        if now.saturating_duration_since(last_sweep) >= crate::idle::SWEEP_EVERY {
            last_sweep = now;
            let stopping = shared.policy.stopping.load(Ordering::Relaxed);
            crate::idle::sweep(&shared, now, stopping);
        }
    }
}

/// Housekeeping ticks (100 ms each) with no connection open and no call in flight
/// before it sleeps until a connection comes: 1 s, four sweeps.
const QUIET_TICKS_BEFORE_SLEEP: u32 = 10;

/// Runs one connection (the future `serve` makes), then the bookkeeping of its end, or
/// sets it aside when it went idle. The future is made here rather than passed in: a
/// future argument would be stored twice in this one's state (as the argument and as the
/// awaited value), doubling the task.
async fn connection_task<H: Handler, T: connection::Transport, F>(
    shared: Arc<Shared<H>>,
    info: Arc<ConnInfo>,
    permit: tokio::sync::OwnedSemaphorePermit,
    serve: impl FnOnce(Arc<Shared<H>>, Arc<ConnInfo>) -> F,
) where
    F: std::future::Future<Output = Ended<T>>,
{
    let ended = serve(Arc::clone(&shared), Arc::clone(&info)).await;
    let (info, permit) = match ended {
        Ended::Closed => (info, permit),
        Ended::Idle {
            io,
            info,
            deadline,
            first,
        } => {
            // A graceful stop closes idle keep-alive connections rather than shelving them.
            let stopping = shared.policy.stopping.load(Ordering::Relaxed) && !first;
            match io.into_shelvable() {
                Some(io) if !stopping => {
                    // The connection's description is kept only if it cannot be read
                    // back from the socket, or a hook will want it at the close; as a
                    // copy, which leaves the handler's cache (objects made for its
                    // requests) behind.
                    let keep = (shared.config.proxy_protocol || shared.connection_events)
                        .then(|| Arc::new((*info).clone()));
                    match shared
                        .idle
                        .shelve(io, keep, info.id, permit, deadline, first)
                    {
                        Ok(()) => return,
                        // Not shelved: the socket (dropped here) closes.
                        Err((_io, permit)) => (info, permit),
                    }
                }
                _ => (info, permit),
            }
        }
    };
    shared.connection_closed(Some(info));
    drop(permit);
}

/// Gives a connection taken back from the idle shelf a task again.
pub(crate) fn unshelve<H: Handler>(shared: &Arc<Shared<H>>, w: Woken) {
    let Woken {
        io,
        info,
        permit,
        first_deadline,
    } = w;
    let start = Start::Unshelved { first_deadline };
    let registered = match io {
        Shelvable::Tcp(s) => tokio::net::TcpStream::from_std(s)
            .map(|s| spawn_connection(shared, s, Arc::clone(&info), permit, start)),
        Shelvable::Unix(s) => tokio::net::UnixStream::from_std(s)
            .map(|s| spawn_connection(shared, s, Arc::clone(&info), permit, start)),
    };
    if registered.is_err() {
        shared.connection_closed(Some(info));
    }
}

/// One task for a plain connection (see [`connection_task`]).
fn spawn_connection<H: Handler, T: connection::Transport + Sync>(
    shared: &Arc<Shared<H>>,
    io: T,
    info: Arc<ConnInfo>,
    permit: tokio::sync::OwnedSemaphorePermit,
    start: Start,
) {
    let serve = move |sh, i| connection::serve(sh, io, i, start);
    tokio::spawn(connection_task(Arc::clone(shared), info, permit, serve));
}

async fn accept_loop<H: Handler>(
    shared: Arc<Shared<H>>,
    listener: TokioListener,
    limit: Arc<Semaphore>,
) {
    let local = match &listener {
        TokioListener::Tcp(l) => l
            .local_addr()
            .map(PeerAddr::Tcp)
            .unwrap_or(PeerAddr::Unix(String::new())),
        TokioListener::Unix(l) => {
            let addr = l.local_addr().ok();
            PeerAddr::unix(addr.as_ref().and_then(|a| a.as_pathname()))
        }
    };
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&limit).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shared.stop_notify.notified() => return,
        };
        if shared.policy.stopping.load(Ordering::Relaxed) {
            return;
        }
        let accepted = tokio::select! {
            a = accept(&listener) => a,
            _ = shared.stop_notify.notified() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                if let PeerAddr::Tcp(addr) = &peer {
                    let origins = &shared.config.origins;
                    if !origins.is_empty() && !origins.iter().any(|n| n.contains(addr.ip())) {
                        // Not from an allowed network: close at once, nothing read.
                        drop(stream);
                        drop(permit);
                        continue;
                    }
                }
                let id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
                let tls = match (&stream, &shared.config.tls) {
                    (Accepted::Tcp(_), Some(cfg)) => {
                        Some(tokio_rustls::TlsAcceptor::from(Arc::clone(cfg)))
                    }
                    _ => None,
                };
                let info = Arc::new(ConnInfo {
                    id,
                    peer,
                    tls: tls.is_some(),
                    local: local.clone(),
                    policy: Arc::clone(&shared.policy),
                    cache: Default::default(),
                });
                shared.stats.open.fetch_add(1, Ordering::Relaxed);
                if shared.housekeeping_asleep.load(Ordering::Relaxed)
                    && shared.housekeeping_asleep.swap(false, Ordering::Relaxed)
                {
                    // The date went stale while nothing was served: fresh for this
                    // connection's first response, which may come before the task runs.
                    shared.date.refresh();
                    shared.housekeeping_wake.notify_one();
                }
                if shared.connection_events {
                    shared.submit(WorkItem::Connection(Arc::clone(&info), true));
                }
                // One task per connection, its future the connection's own state machine
                // (no box, no copy of it in a wrapper): an idle connection costs one
                // allocation. TLS connections get their own task type, so plain ones
                // never carry the size of the TLS session state.
                match stream {
                    Accepted::Tcp(s) => {
                        let _ = s.set_nodelay(true);
                        match tls {
                            None => spawn_connection(&shared, s, info, permit, Start::Accepted),
                            Some(acceptor) => {
                                let serve = move |sh, i| serve_tls(sh, s, i, acceptor);
                                let shared = Arc::clone(&shared);
                                tokio::spawn(connection_task(shared, info, permit, serve));
                            }
                        }
                    }
                    Accepted::Unix(s) => {
                        spawn_connection(&shared, s, info, permit, Start::Accepted)
                    }
                }
            }
            Err(e) => {
                drop(permit);
                // EMFILE/ENFILE/ENOMEM: back off instead of spinning on a ready listener.
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                ) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// The TLS handshake (bounded by the header timeout), then the connection. A failed or
/// slow handshake costs only its own connection. Kept out of the accept task so that a
/// plain connection's task does not carry the size of a TLS session.
async fn serve_tls<H: Handler>(
    shared: Arc<Shared<H>>,
    stream: tokio::net::TcpStream,
    info: Arc<ConnInfo>,
    acceptor: tokio_rustls::TlsAcceptor,
) -> Ended<tokio::net::TcpStream> {
    let deadline = tokio::time::Instant::now() + shared.config.header_timeout;
    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        // A TLS session cannot be set aside: `Ended::Idle` is never returned for it.
        Ok(Ok(s)) => match connection::serve(shared, s, info, Start::Accepted).await {
            Ended::Closed | Ended::Idle { .. } => Ended::Closed,
        },
        _ => Ended::Closed,
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &TokioListener) -> io::Result<(Accepted, PeerAddr)> {
    match listener {
        TokioListener::Tcp(l) => {
            let (s, a) = l.accept().await?;
            Ok((Accepted::Tcp(s), PeerAddr::Tcp(a)))
        }
        TokioListener::Unix(l) => {
            let (s, _) = l.accept().await?;
            Ok((Accepted::Unix(s), PeerAddr::Unix(String::new())))
        }
    }
}
