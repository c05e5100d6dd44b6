//! unyoke's engine: listeners, connections, timers and the dispatch threads, on tokio.
//!
//! The engine knows HTTP (through `unyoke-http`) but not WSGI or Python: the application
//! side is a [`Handler`] and the lock it needs is a [`Gate`]. See `dispatch.rs` for how
//! application calls are run without a thread hand-off on the fast path.

mod access_log;
mod busy_poll;
mod clock;
mod connection;
mod dispatch;
mod engine;
mod exchange;
mod idle;
mod listener;
mod tls;

pub use access_log::LogFormat;
pub use clock::DateCache;
pub use connection::{ConnInfo, HandlerCache, PeerAddr};
pub use dispatch::{Dispatcher, Gate, Job};
pub use engine::{Config, Engine, Network, Stats, DURATION_BUCKETS};
pub use exchange::{
    BodyError, BodyFill, BodyRead, Exchange, OutChunk, ParkOutcome, ResponseStart,
    OUTPUT_HIGH_WATER,
};
pub use listener::{Listener, ListenerKind};
pub use tls::{server_config as tls_server_config, TlsError, TlsFiles};

use std::sync::Arc;

/// The application side of the engine. Its methods run on dispatch threads, with the
/// gate held, outside the runtime: they may block (the dispatcher copes).
pub trait Handler: Send + Sync + 'static {
    /// Per-request state the handler keeps in [`Exchange::state`].
    type State: Send + 'static;
    /// A request head arrived: run the application and start responding.
    fn call(&self, exchange: &Arc<Exchange<Self::State>>);
    /// The output queued after [`Exchange::want_more`] was written: produce more.
    fn resume(&self, exchange: &Arc<Exchange<Self::State>>);
    /// The exchange is over (response written, or client gone, or server stopping):
    /// release what the request holds (for WSGI: call the iterable's `close()`). Called
    /// only for exchanges whose [`Exchange::state`] was set: a request answered at once
    /// and holding nothing costs no trip back.
    fn close(&self, exchange: &Arc<Exchange<Self::State>>);
    /// The body bytes asked for with [`Exchange::notify_when_written`] are on the wire.
    fn written(&self, exchange: &Arc<Exchange<Self::State>>) {
        let _ = exchange;
    }
    /// Whether [`Handler::connection_event`] wants to be called (checked once).
    fn wants_connection_events(&self) -> bool {
        false
    }
    /// A connection opened (`open` true) or closed.
    fn connection_event(&self, info: &Arc<ConnInfo>, open: bool) {
        let _ = (info, open);
    }
}
