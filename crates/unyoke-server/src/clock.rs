//! The `Date` header value, formatted once per second rather than per request, and a
//! coarse monotonic clock for the bookkeeping that needs no precision.

use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

/// A cached IMF-fixdate, refreshed by a timer task of the engine.
///
/// Read on every response, written once a second: a sequence lock, so that a read is a
/// few plain loads (a mutex cost two atomic read-modify-writes per response).
pub struct DateCache {
    /// Even when `words` is stable, odd while the writer changes it.
    seq: AtomicU64,
    /// The 29 bytes of the date, padded to 32, as four words.
    words: [AtomicU64; 4],
    /// The second last formatted; also serialises writers.
    secs: Mutex<u64>,
}

impl Default for DateCache {
    fn default() -> Self {
        let cache = DateCache {
            seq: AtomicU64::new(0),
            words: Default::default(),
            secs: Mutex::new(u64::MAX),
        };
        cache.refresh();
        cache
    }
}

impl DateCache {
    /// Re-reads the clock; formats only when the second changed.
    pub fn refresh(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut secs = self.secs.lock();
        if *secs == now {
            return;
        }
        *secs = now;
        self.publish(now);
    }

    /// Stores the date of `secs`. Writers must be serialised (`refresh` holds `secs`).
    fn publish(&self, secs: u64) {
        let mut padded = [b' '; 32];
        padded[..29].copy_from_slice(&unyoke_http::http_date(secs));
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        // The odd sequence must be visible before any new word.
        fence(Ordering::Release);
        for (word, bytes) in self.words.iter().zip(padded.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(bytes);
            word.store(u64::from_ne_bytes(b), Ordering::Relaxed);
        }
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// The current value, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
    pub fn get(&self) -> [u8; 29] {
        loop {
            let before = self.seq.load(Ordering::Acquire);
            let mut padded = [0u8; 32];
            for (word, bytes) in self.words.iter().zip(padded.chunks_exact_mut(8)) {
                bytes.copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
            }
            // The words' loads must complete before the sequence is checked again.
            fence(Ordering::Acquire);
            if before.is_multiple_of(2) && self.seq.load(Ordering::Relaxed) == before {
                let mut out = [0u8; 29];
                out.copy_from_slice(&padded[..29]);
                return out;
            }
            std::hint::spin_loop();
        }
    }
}

/// A monotonic clock with the kernel tick's resolution (a few milliseconds), read
/// without the time-stamp counter: for durations reported in seconds (how long the
/// calls in progress have run), taken on every call.
pub fn coarse_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the call only writes it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_cache_reads_what_was_formatted() {
        let cache = DateCache::default();
        let got = cache.get();
        let secs = *cache.secs.lock();
        assert_eq!(got, unyoke_http::http_date(secs));
        assert!(cache.seq.load(Ordering::Relaxed).is_multiple_of(2));
    }

    #[test]
    fn date_cache_readers_never_see_a_torn_value() {
        let cache = std::sync::Arc::new(DateCache::default());
        let writer = {
            let cache = std::sync::Arc::clone(&cache);
            std::thread::spawn(move || {
                for s in 0..20_000u64 {
                    // Alternate between two very different dates.
                    cache.publish(if s % 2 == 0 { 0 } else { 4_000_000_000 });
                }
            })
        };
        let a = unyoke_http::http_date(0);
        let b = unyoke_http::http_date(4_000_000_000);
        let first = cache.get();
        while !writer.is_finished() {
            let got = cache.get();
            assert!(got == a || got == b || got == first, "torn date {got:?}");
        }
        writer.join().unwrap();
    }

    #[test]
    fn coarse_clock_moves_forward() {
        let a = coarse_now();
        std::thread::sleep(Duration::from_millis(30));
        let b = coarse_now();
        assert!(a > Duration::ZERO);
        assert!(b > a);
    }
}
