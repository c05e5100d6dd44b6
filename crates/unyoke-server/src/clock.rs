//! The `Date` header value, formatted once per second rather than per request.

use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

/// A cached IMF-fixdate, refreshed by a timer task of the engine.
pub struct DateCache {
    value: Mutex<([u8; 29], u64)>,
}

impl Default for DateCache {
    fn default() -> Self {
        let cache = DateCache {
            value: Mutex::new(([b' '; 29], u64::MAX)),
        };
        cache.refresh();
        cache
    }
}

impl DateCache {
    /// Re-reads the clock; formats only when the second changed.
    pub fn refresh(&self) {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut v = self.value.lock();
        if v.1 != secs {
            *v = (unyoke_http::http_date(secs), secs);
        }
    }

    /// The current value, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
    pub fn get(&self) -> [u8; 29] {
        self.value.lock().0
    }
}
