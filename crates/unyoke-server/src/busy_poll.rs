//! Busy polling: a moment of polling for events before the runtime sleeps.
//!
//! When the runtime has nothing to do it sleeps in `epoll_wait`, and on a lightly loaded
//! core the sleep costs more than it lasts: the core goes idle (on a VM the vCPU halts
//! and the hypervisor takes it back), and the next event has to wake it up again (an
//! interrupt or an inter-processor interrupt, the idle exit, a context switch back to the
//! leader). At one connection that is a good part of each request's round trip. So when
//! the last waits for an event were short, the leader first polls the runtime's epoll
//! instance without blocking, for up to the window (`busy_poll`, 50 µs by default), and
//! sleeps as usual only if nothing came. Linux does the same inside the kernel on VMs
//! that have its haltpoll idle driver (up to 200 µs, adaptive); many VMs, this one
//! included, do not.
//!
//! It is cheap where it does not help: under load the runtime rarely parks (events are
//! already waiting), and when traffic is sparse the last waits were long, so nothing is
//! polled. The dispatcher also skips it while application calls run on other threads (a
//! blocking workload): those threads need the core when their call returns; and while
//! the leader drives the runtime from inside a call that waits for body bytes: reading
//! them the instant they arrive keeps TCP's receive window from growing.
//!
//! tokio does not expose its epoll instance; [`new_epoll`] finds it as the epoll
//! descriptor that appeared while the runtime was built. Nothing depends on it being
//! right: polling the wrong descriptor (or a closed one) only ends the poll early or lets
//! it run to the window, after which the runtime sleeps in its own `epoll_wait` as usual.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// The epoll instances open in this process: descriptors that are `anon_inode:[eventpoll]`
/// in `/proc/self/fd` (empty where /proc is not mounted: busy polling is then off).
pub(crate) fn epoll_fds() -> Vec<RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:[eventpoll]")
        })
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// The one epoll instance opened since `before` (a list from [`epoll_fds`]), as one of
/// its descriptors. tokio's I/O driver holds two descriptors of its instance (its poll,
/// and a clone of its registry for the handles); they are told to be the same instance by
/// their `fdinfo` (the registered descriptors with their tokens). None when no instance
/// or more than one is new, e.g. another thread opened one meanwhile.
pub(crate) fn new_epoll(before: &[RawFd]) -> Option<RawFd> {
    let new: Vec<RawFd> = epoll_fds()
        .into_iter()
        .filter(|fd| !before.contains(fd))
        .collect();
    let registered = |fd: RawFd| -> Option<Vec<String>> {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
        Some(
            info.lines()
                .filter(|l| l.starts_with("tfd:"))
                .map(str::to_owned)
                .collect(),
        )
    };
    let (&first, rest) = new.split_first()?;
    let reference = registered(first)?;
    rest.iter()
        .all(|&fd| registered(fd).as_ref() == Some(&reference))
        .then_some(first)
}

/// How a [`BusyPoll::before_sleep`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Polled {
    /// Not polled: the last waits were not all within the window, or polling was not
    /// allowed.
    Skipped,
    /// An event came within the window: the runtime's `epoll_wait` returns at once.
    Ready,
    /// The window passed without an event: the runtime sleeps.
    Expired,
}

/// Busy polling of one epoll instance, for the runtime's park hooks. Only the thread
/// driving the runtime calls it (one at a time); the fields are atomics because that
/// thread changes when another takes the runtime over.
#[derive(Debug)]
pub(crate) struct BusyPoll {
    epoll: RawFd,
    window: Duration,
    origin: Instant,
    /// When the runtime last went to sleep, in nanoseconds since `origin`.
    slept_at: AtomicU64,
    /// How many of the last waits for an event (polled or slept) in a row were within
    /// the window (counted up to [`SHORT_WAITS`]).
    short_waits: AtomicU8,
}

/// Short waits in a row before polling. One is not enough: a timer that fires on an idle
/// server often ends in a task waking another from outside the runtime, whose wake-up is
/// then waiting for the next park (a wait of nothing), and that would have every timer
/// tick poll a whole window.
const SHORT_WAITS: u8 = 2;

impl BusyPoll {
    /// Polls `epoll` for up to `window` before each sleep that follows a short wait.
    pub(crate) fn new(epoll: RawFd, window: Duration) -> BusyPoll {
        BusyPoll {
            epoll,
            window,
            origin: Instant::now(),
            slept_at: AtomicU64::new(0),
            short_waits: AtomicU8::new(0),
        }
    }

    /// `t` in nanoseconds since `origin`.
    fn since_origin(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The runtime is about to sleep: poll first if the last waits were short and
    /// `allowed`.
    pub(crate) fn before_sleep(&self, allowed: bool) -> Polled {
        let start = Instant::now();
        self.slept_at
            .store(self.since_origin(start), Ordering::Relaxed);
        if !allowed || self.short_waits.load(Ordering::Relaxed) < SHORT_WAITS {
            return Polled::Skipped;
        }
        loop {
            let mut pfd = libc::pollfd {
                fd: self.epoll,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, a zero timeout. An epoll descriptor is readable
            // when its instance has events ready; a closed one gives POLLNVAL (and the
            // runtime then sleeps as usual).
            let n = unsafe { libc::poll(&mut pfd, 1, 0) };
            if n != 0 {
                return Polled::Ready;
            }
            if start.elapsed() >= self.window {
                return Polled::Expired;
            }
            std::hint::spin_loop();
        }
    }

    /// The runtime woke up: count the wait if it was short.
    pub(crate) fn after_wake(&self) {
        let waited = self
            .since_origin(Instant::now())
            .saturating_sub(self.slept_at.load(Ordering::Relaxed));
        let short = u128::from(waited) <= self.window.as_nanos();
        let n = self.short_waits.load(Ordering::Relaxed);
        let n = if short {
            n.saturating_add(1).min(SHORT_WAITS)
        } else {
            0
        };
        self.short_waits.store(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    fn epoll() -> OwnedFd {
        // SAFETY: plain system call; the descriptor is owned by the returned OwnedFd.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(fd >= 0, "epoll_create1 failed");
        // SAFETY: fd is a new descriptor nobody else owns.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    /// A pipe whose read end is registered in `ep`; returns (read end, write end).
    fn registered_pipe(ep: &OwnedFd) -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: fds has room for the two descriptors.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both are new descriptors nobody else owns.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 7,
        };
        // SAFETY: valid descriptors and event.
        let rc =
            unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, r.as_raw_fd(), &mut ev) };
        assert_eq!(rc, 0);
        (r, w)
    }

    fn write_byte(w: &OwnedFd) {
        // SAFETY: one byte from a valid buffer to a pipe's write end.
        assert_eq!(
            unsafe { libc::write(w.as_raw_fd(), b"x".as_ptr().cast(), 1) },
            1
        );
    }

    // Other tests of this process open and close epoll instances (their runtimes) at any
    // moment, which can make a scan ambiguous: each scenario gets a few tries.
    const TRIES: usize = 50;

    #[test]
    fn finds_the_runtimes_epoll_instance() {
        let (rt, fd) = (0..TRIES)
            .find_map(|_| {
                let before = epoll_fds();
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                new_epoll(&before).map(|fd| (rt, fd))
            })
            .expect("the runtime's epoll instance is found");
        // A socket registered with the runtime shows up in that instance's fdinfo.
        let listener = rt.block_on(async {
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind")
        });
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).expect("fdinfo");
        let needle = format!("tfd: {:>8}", listener.as_raw_fd());
        assert!(info.contains(&needle), "{needle:?} not in {info}");
    }

    #[test]
    fn two_new_instances_are_ambiguous() {
        let told = (0..TRIES).any(|_| {
            let before = epoll_fds();
            let a = epoll();
            let b = epoll();
            let (_r, _w) = registered_pipe(&a);
            let two = new_epoll(&before);
            drop(b);
            let one = new_epoll(&before);
            two.is_none() && one == Some(a.as_raw_fd())
        });
        assert!(told);
    }

    #[test]
    fn polls_only_after_short_waits() {
        let ep = epoll();
        let (_r, w) = registered_pipe(&ep);
        let bp = BusyPoll::new(ep.as_raw_fd(), Duration::from_secs(5));
        // Nothing known about the last waits: no polling.
        assert_eq!(bp.before_sleep(true), Polled::Skipped);
        bp.after_wake(); // at once: a short wait, but only one
        assert_eq!(bp.before_sleep(true), Polled::Skipped);
        bp.after_wake(); // two in a row
        write_byte(&w);
        assert_eq!(bp.before_sleep(true), Polled::Ready);
        bp.after_wake();
        // Not allowed (calls run on other threads): no polling even after a short wait.
        assert_eq!(bp.before_sleep(false), Polled::Skipped);
    }

    #[test]
    fn a_poll_without_events_expires_and_a_long_wait_stops_polling() {
        let ep = epoll();
        let (_r, _w) = registered_pipe(&ep);
        // A window long enough that the test's own steps fit in it on a busy machine.
        let bp = BusyPoll::new(ep.as_raw_fd(), Duration::from_millis(50));
        for _ in 0..SHORT_WAITS {
            bp.before_sleep(true);
            bp.after_wake();
        }
        assert_eq!(bp.before_sleep(true), Polled::Expired);
        // The runtime then sleeps; a wait longer than the window ends the polling.
        std::thread::sleep(Duration::from_millis(150));
        bp.after_wake();
        assert_eq!(bp.before_sleep(true), Polled::Skipped);
    }
}
