//! Idle connections set aside: a connection (plain TCP or UNIX) that has waited
//! [`SHELVE_AFTER`] for its next request leaves its task and the runtime's poller and is
//! kept here as a file descriptor and a few numbers, watched by one epoll set of its own.
//! When bytes (or a hang-up) arrive, it is taken back and gets a new task.
//!
//! Why: a waiting connection's task (its future, timers and registration) is about
//! 1.3 KiB; one set aside is one 64-byte slot. Servers in front of many clients (browsers,
//! pooling proxies, mobile apps) hold mostly idle connections, and with 10,000 of them the
//! difference is 12 MiB per worker. Busy connections never come here: the wait before
//! shelving is far longer than a request's round trip, so the fast path pays nothing but
//! one comparison per request, and a connection that does come back pays one task
//! allocation and four `epoll_ctl` calls.
//!
//! Everything here runs on the runtime's thread; the mutex is uncontended.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::unix::AsyncFd;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::connection::{ConnInfo, PeerAddr, Policy};
use crate::engine::Shared;
use crate::Handler;

/// How long a connection waits for bytes in its own task before it is set aside.
pub(crate) const SHELVE_AFTER: Duration = Duration::from_secs(1);

/// How often expired shelved connections are looked for (their timeouts are this precise).
pub(crate) const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// After this many connections were shelved, the allocator is asked to give the memory
/// their tasks used back to the kernel, once the burst is over (see [`TrimPacer`]).
const TRIM_AFTER_SHELVED: usize = 64;

/// During a long burst of shelving, the allocator is also trimmed after this many, so
/// that memory comes back while the burst goes on, not only a quiet moment after it.
const TRIM_DURING_BURST: usize = 1024;

/// Most slots reserved when the shelf is made (see [`IdlePool::new`]).
const RESERVE_UP_TO: usize = 65_536;

/// A socket that can be set aside (TLS sessions cannot: their state is in user space).
pub(crate) enum Shelvable {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Shelvable {
    /// The socket `fd`, of the kind recorded when it was shelved.
    fn from_fd(fd: OwnedFd, unix: bool) -> Shelvable {
        if unix {
            Shelvable::Unix(fd.into())
        } else {
            Shelvable::Tcp(fd.into())
        }
    }

    /// Rebuilds what the application may know about the connection from its socket;
    /// an error if it is no longer connected.
    fn info(&self, id: u64, policy: &Arc<Policy>) -> io::Result<ConnInfo> {
        let (peer, local) = match self {
            Shelvable::Unix(s) => (
                PeerAddr::Unix(String::new()),
                PeerAddr::unix(s.local_addr().ok().as_ref().and_then(|a| a.as_pathname())),
            ),
            Shelvable::Tcp(s) => (
                PeerAddr::Tcp(s.peer_addr()?),
                PeerAddr::Tcp(s.local_addr()?),
            ),
        };
        Ok(ConnInfo {
            id,
            peer,
            local,
            tls: false,
            policy: Arc::clone(policy),
            cache: Default::default(),
        })
    }
}

/// A connection taken back from the shelf, to be served again.
pub(crate) struct Woken {
    pub(crate) io: Shelvable,
    pub(crate) info: Arc<ConnInfo>,
    pub(crate) permit: OwnedSemaphorePermit,
    /// Set if the connection has not sent its first request: the header timeout from
    /// its accept still runs.
    pub(crate) first_deadline: Option<Instant>,
}

struct Entry {
    fd: OwnedFd,
    unix: bool,
    generation: u32,
    id: u64,
    /// Close it then (the keep-alive timeout, or the first request's header timeout).
    deadline: Instant,
    first: bool,
    /// Kept only when it cannot be rebuilt from the socket (PROXY protocol addresses) or
    /// a connection hook will be told about the close.
    info: Option<Arc<ConnInfo>>,
    permit: OwnedSemaphorePermit,
}

#[derive(Default)]
struct Inner {
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    generations: Vec<u32>,
    len: usize,
    trim: TrimPacer,
}

/// Decides when freed connection tasks are handed back to the kernel. A trim costs a walk
/// of the heap and gives back pages that busy connections would fault in again, so it is
/// not done for every connection that goes idle: only after a burst of at least
/// [`TRIM_AFTER_SHELVED`], once shelving has paused for [`SWEEP_EVERY`], and every
/// [`TRIM_DURING_BURST`] within a long one. Trimming only at the end left an RSS sample
/// taken ~1.5 s after a burst of 5,000 to land before the trim or between two of them.
#[derive(Default)]
struct TrimPacer {
    /// Shelved since the last trim.
    since_trim: usize,
    /// Shelved since the last burst ended (a burst may span several trims).
    in_burst: usize,
    last_shelved: Option<Instant>,
}

impl TrimPacer {
    fn shelved(&mut self, now: Instant) {
        self.since_trim += 1;
        self.in_burst += 1;
        self.last_shelved = Some(now);
    }

    /// Whether to trim now (called at each sweep).
    fn due(&mut self, now: Instant) -> bool {
        let burst_over = self
            .last_shelved
            .is_some_and(|t| now.saturating_duration_since(t) >= SWEEP_EVERY);
        let trim = if burst_over {
            // The end of a burst that was large enough, even when a trim during it left
            // only a few connections since: their tasks may pin the pages of the rest.
            self.in_burst >= TRIM_AFTER_SHELVED && self.since_trim > 0
        } else {
            self.since_trim >= TRIM_DURING_BURST
        };
        if trim {
            self.since_trim = 0;
            if burst_over {
                self.in_burst = 0;
            }
        }
        trim
    }
}

impl Inner {
    fn with_capacity(slots: usize) -> Inner {
        Inner {
            slots: Vec::with_capacity(slots),
            free: Vec::with_capacity(slots),
            generations: Vec::with_capacity(slots),
            ..Inner::default()
        }
    }
}

/// The shelf of one engine.
pub(crate) struct IdlePool {
    epoll: OwnedFd,
    inner: Mutex<Inner>,
}

/// What a connection that leaves the shelf closed needs for its bookkeeping.
pub(crate) struct Closed {
    info: Option<Arc<ConnInfo>>,
    _permit: OwnedSemaphorePermit,
}

impl IdlePool {
    /// A shelf for up to `max_size` connections. Its slot vectors are reserved now (pages
    /// the kernel maps only as slots are used): grown by doubling during a burst of
    /// connections going idle, each step copied the vector and left the old one as a hole
    /// among the burst's other allocations, which the allocator could not always give
    /// back afterwards.
    pub(crate) fn new(max_size: usize) -> io::Result<IdlePool> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new fd we own.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(IdlePool {
            // SAFETY: `fd` was just created and is owned by nobody else.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            inner: Mutex::new(Inner::with_capacity(max_size.min(RESERVE_UP_TO))),
        })
    }

    /// Connections on the shelf now.
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().len
    }

    /// Sets a connection aside. On failure the socket is handed back (the caller closes
    /// it as usual).
    pub(crate) fn shelve(
        &self,
        io: Shelvable,
        info: Option<Arc<ConnInfo>>,
        id: u64,
        permit: OwnedSemaphorePermit,
        deadline: Instant,
        first: bool,
    ) -> Result<(), (Shelvable, OwnedSemaphorePermit)> {
        let (fd, unix): (OwnedFd, bool) = match io {
            Shelvable::Tcp(s) => (s.into(), false),
            Shelvable::Unix(s) => (s.into(), true),
        };
        let mut inner = self.inner.lock();
        let idx = match inner.free.pop() {
            Some(i) => i as usize,
            None => {
                inner.slots.push(None);
                inner.generations.push(0);
                inner.slots.len() - 1
            }
        };
        let generation = inner.generations[idx].wrapping_add(1);
        inner.generations[idx] = generation;
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: (u64::from(generation) << 32) | idx as u64,
        };
        // SAFETY: both fds are open; `ev` is a valid epoll_event for the call's duration.
        let r = unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &mut ev,
            )
        };
        if r < 0 {
            inner.free.push(idx as u32);
            return Err((Shelvable::from_fd(fd, unix), permit));
        }
        inner.slots[idx] = Some(Entry {
            fd,
            unix,
            generation,
            id,
            deadline,
            first,
            info,
            permit,
        });
        inner.len += 1;
        inner.trim.shelved(Instant::now());
        Ok(())
    }

    /// Takes back the connections that have bytes (or a hang-up) waiting.
    fn take_ready(&self, policy: &Arc<Policy>) -> Vec<Woken> {
        const BATCH: usize = 64;
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; BATCH];
        // SAFETY: `events` has room for BATCH entries; a zero timeout never blocks.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                BATCH as libc::c_int,
                0,
            )
        };
        let mut woken = Vec::new();
        if n <= 0 {
            return woken;
        }
        let mut inner = self.inner.lock();
        for ev in &events[..n as usize] {
            let data = ev.u64;
            let (idx, generation) = ((data & 0xffff_ffff) as usize, (data >> 32) as u32);
            let Some(entry) = take(&mut inner, idx, generation) else {
                continue;
            };
            self.forget(&entry);
            let io = Shelvable::from_fd(entry.fd, entry.unix);
            let info = match entry.info {
                Some(i) => i,
                None => match io.info(entry.id, policy) {
                    Ok(i) => Arc::new(i),
                    // No longer connected (the peer reset it): dropping it closes it.
                    Err(_) => continue,
                },
            };
            woken.push(Woken {
                io,
                info,
                permit: entry.permit,
                first_deadline: entry.first.then_some(entry.deadline),
            });
        }
        woken
    }

    fn forget(&self, entry: &Entry) {
        // SAFETY: both fds are open; a null event is allowed for EPOLL_CTL_DEL.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                entry.fd.as_raw_fd(),
                std::ptr::null_mut(),
            );
        }
    }

    /// Removes (and so closes) the connections whose time is up, or, when `stopping`,
    /// every connection that has already had a request (one that has not keeps its header
    /// timeout through a graceful stop, as in its own task). Also says whether a burst of
    /// shelving is over, so that freed memory should be given back.
    fn sweep(&self, now: Instant, stopping: bool) -> (Vec<Closed>, bool) {
        let mut inner = self.inner.lock();
        let mut closed = Vec::new();
        if inner.len > 0 {
            for idx in 0..inner.slots.len() {
                let expired = match &inner.slots[idx] {
                    Some(e) => e.deadline <= now || (stopping && !e.first),
                    None => false,
                };
                if expired {
                    if let Some(e) = inner.slots[idx].take() {
                        inner.free.push(idx as u32);
                        inner.len -= 1;
                        closed.push(Closed {
                            info: e.info,
                            _permit: e.permit,
                        });
                        // Dropping `e.fd` closes the socket and leaves the epoll set.
                    }
                }
            }
        }
        let trim = inner.trim.due(now);
        (closed, trim)
    }
}

fn take(inner: &mut Inner, idx: usize, generation: u32) -> Option<Entry> {
    let slot = inner.slots.get_mut(idx)?;
    if slot.as_ref().map(|e| e.generation) != Some(generation) {
        return None;
    }
    let e = slot.take()?;
    inner.free.push(idx as u32);
    inner.len -= 1;
    Some(e)
}

/// Returns free heap pages to the kernel. The engine keeps freed memory by default (see
/// `tune_allocator`), which is right for request buffers reused at once but would keep
/// the tasks of thousands of connections that went idle in a burst for good.
fn trim_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The descriptor of the shelf's epoll set, for the runtime to watch.
struct EpollFd(RawFd);

impl AsRawFd for EpollFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Watches the shelf: every connection with bytes waiting gets a task again.
pub(crate) async fn watch<H: Handler>(shared: Arc<Shared<H>>) {
    let pool = &shared.idle;
    // SAFETY: the epoll fd is owned by the pool, which lives in `shared` and so outlives
    // this registration; it is neither closed nor replaced while registered.
    let registered = unsafe {
        AsyncFd::register_with_interest(
            EpollFd(pool.epoll.as_raw_fd()),
            tokio::io::Interest::READABLE,
        )
    };
    let Ok(afd) = registered else {
        return;
    };
    loop {
        let Ok(mut guard) = afd.readable().await else {
            return;
        };
        let woken = pool.take_ready(&shared.policy);
        if woken.is_empty() {
            guard.clear_ready();
            continue;
        }
        for w in woken {
            crate::engine::unshelve(&shared, w);
        }
    }
}

/// Closes the shelved connections whose time is up (see [`IdlePool::sweep`]), with the
/// same bookkeeping as a connection task's end.
pub(crate) fn sweep<H: Handler>(shared: &Shared<H>, now: Instant, stopping: bool) {
    let (closed, trim) = shared.idle.sweep(now, stopping);
    for c in closed {
        shared.connection_closed(c.info);
    }
    if trim {
        // The pooled read buffers and exchanges too: after a burst, they would pin what it
        // left (each in a page of its own, likely).
        shared.buffers.clear();
        shared.exchanges.clear();
        trim_allocator();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shelved_connection_is_one_64_byte_slot() {
        // The figure design.md gives for an idle connection's memory.
        assert_eq!(std::mem::size_of::<Option<Entry>>(), 64);
    }

    #[test]
    fn the_shelf_reserves_its_slots_up_front_within_a_bound() {
        let pool = IdlePool::new(10_000).expect("epoll set");
        let inner = pool.inner.lock();
        assert!(inner.slots.capacity() >= 10_000);
        assert!(inner.generations.capacity() >= 10_000);
        assert!(inner.free.capacity() >= 10_000);
        drop(inner);
        let huge = IdlePool::new(usize::MAX).expect("epoll set");
        assert!(huge.inner.lock().slots.capacity() < 2 * RESERVE_UP_TO);
    }

    #[test]
    fn a_few_idle_connections_do_not_trim() {
        let mut p = TrimPacer::default();
        let t0 = Instant::now();
        for _ in 0..TRIM_AFTER_SHELVED - 1 {
            p.shelved(t0);
        }
        assert!(!p.due(t0 + SWEEP_EVERY * 4));
        // The count carries over: one more makes a burst worth trimming after.
        p.shelved(t0 + SWEEP_EVERY * 4);
        assert!(!p.due(t0 + SWEEP_EVERY * 4));
        assert!(p.due(t0 + SWEEP_EVERY * 8));
        assert!(!p.due(t0 + SWEEP_EVERY * 12));
    }

    #[test]
    fn a_long_burst_trims_during_it_and_once_more_at_its_end() {
        let mut p = TrimPacer::default();
        let t0 = Instant::now();
        let mut trims = 0;
        let mut now = t0;
        for i in 0..3 * TRIM_DURING_BURST + 10 {
            now = t0 + Duration::from_micros(i as u64 * 100);
            p.shelved(now);
            trims += usize::from(p.due(now));
        }
        assert_eq!(trims, 3);
        // The ten shelved after the last trim in the burst are enough at its end.
        assert!(p.due(now + SWEEP_EVERY));
        assert!(!p.due(now + SWEEP_EVERY * 2));
        // A later small trickle does not count as the same burst.
        p.shelved(now + SWEEP_EVERY * 3);
        assert!(!p.due(now + SWEEP_EVERY * 5));
    }
}
