//! One request/response exchange, shared between its connection task (inside the
//! runtime) and the application code (on a dispatch thread).
//!
//! The application side pulls body bytes and pushes the response; the connection task
//! reads and writes the socket. They meet in [`Exchange`], under one small mutex.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use unyoke_http::{BodyFraming, RequestHead};

use crate::connection::ConnInfo;

/// Wakes a connection task; implemented by the dispatcher (which may defer the wake).
pub trait Waking: Send + Sync {
    /// Wakes `waker` now or soon.
    fn wake(&self, waker: Waker);
    /// The calling application thread will take the gate back (see `Dispatcher::want_gate`).
    fn want_gate(&self);
    /// The calling application thread has the gate again.
    fn got_gate(&self);
    /// See `Dispatcher::must_drive`.
    fn must_drive(&self) -> bool;
    /// See `Dispatcher::may_drive`.
    fn may_drive(&self) -> bool;
    /// See `Dispatcher::drive`.
    fn drive(
        &self,
        limit: Option<Duration>,
        ready: &mut dyn FnMut(&mut Context<'_>) -> bool,
    ) -> bool;
}

/// Why a body read failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// The client sent a malformed body or closed mid-body (status for the log).
    Malformed(u16),
    /// The client went away.
    Disconnected,
    /// Nothing arrived within the inactivity timeout.
    Timeout,
}

/// What a non-blocking body read found.
#[derive(Debug)]
pub enum BodyRead {
    /// Bytes (at most the amount asked for).
    Data(Bytes),
    /// The body is complete.
    Eof,
    /// Nothing buffered yet: the connection task has been asked for more; wait.
    Pending,
    /// The body cannot be read.
    Error(BodyError),
}

/// What a non-blocking body read into the caller's memory found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFill {
    /// This many bytes were written at the start of the caller's memory.
    Filled(usize),
    /// The body is complete.
    Eof,
    /// Nothing yet: the memory is lent to the connection task, which may read the body
    /// straight into it; wait, then call again (or take it back with
    /// [`Exchange::take_back_target`]).
    Pending,
    /// The body cannot be read.
    Error(BodyError),
}

/// The application's memory, lent to the connection task so that body bytes go from the
/// socket into the object the application gets (a Python `bytes`) without a copy.
pub(crate) struct Target {
    pub(crate) ptr: *mut u8,
    pub(crate) len: usize,
    /// Bytes the connection task has written at `ptr` so far.
    pub(crate) filled: usize,
}

// SAFETY: the pointer is only written through under the exchange's lock, while the
// lender keeps the memory alive and untouched (see `Exchange::try_read_body_into`).
unsafe impl Send for Target {}

/// A piece of the response body.
#[derive(Debug)]
pub enum OutChunk {
    /// Bytes to send.
    Data(Bytes),
    /// `len` bytes of `file` from `offset` (sendfile on plain TCP, read+write otherwise).
    File {
        /// The open file.
        file: std::fs::File,
        /// Where to start.
        offset: u64,
        /// How many bytes.
        len: u64,
    },
}

impl OutChunk {
    fn len(&self) -> u64 {
        match self {
            OutChunk::Data(b) => b.len() as u64,
            OutChunk::File { len, .. } => *len,
        }
    }
}

/// The response head as the application gave it, ready for the wire.
#[derive(Debug)]
pub struct ResponseStart {
    /// Status line and header lines, each ending in CRLF, without the final CRLF and
    /// without Date/Server/Connection/Transfer-Encoding (the connection adds those).
    pub head: Vec<u8>,
    /// The status code (for the log and the framing rules).
    pub status: u16,
    /// How the body is framed.
    pub framing: BodyFraming,
    /// Whether the connection may persist after this response.
    pub keep_alive: bool,
    /// The last `inline_body` bytes of `head` are not head but the start of the body:
    /// a small whole body travels with the head (one allocation less per response). The
    /// connection writes them after the head, under the framing, before any chunk.
    pub inline_body: usize,
}

impl ResponseStart {
    /// The head proper and the body bytes carried after it (see `inline_body`).
    pub(crate) fn head_and_inline_body(&self) -> (&[u8], &[u8]) {
        let at = self.head.len() - self.inline_body.min(self.head.len());
        self.head.split_at(at)
    }
}

#[derive(Default)]
pub(crate) struct Inner {
    // Request body, filled by the connection task.
    pub(crate) body: VecDeque<Bytes>,
    pub(crate) body_buffered: usize,
    pub(crate) body_eof: bool,
    pub(crate) body_error: Option<BodyError>,
    /// The application waits for body bytes.
    pub(crate) demand: bool,
    /// Where the connection task may read the body's next bytes straight into.
    pub(crate) target: Option<Target>,
    /// The application reads the body in pieces it could lend memory for (see
    /// `Exchange::try_read_body_into`): the connection stops reading a Content-Length
    /// body ahead of it, so that the rest goes from the socket straight into that memory.
    pub(crate) lending: bool,
    /// The application asked for body bytes through the buffered path (`try_read_body`:
    /// a chunked body, `readline`, a large read): the connection reads the body ahead of
    /// it, up to `inbuf_overflow`. A Content-Length body it has not asked for is not read
    /// ahead beyond the pre-read (see `Conn::exchange`).
    pub(crate) buffered_reader: bool,
    /// Extra header lines for `100 Continue` (each ending in CRLF).
    pub(crate) continue_headers: Vec<u8>,
    // Response, filled by the application.
    pub(crate) start: Option<ResponseStart>,
    pub(crate) start_taken: bool,
    pub(crate) out: VecDeque<OutChunk>,
    pub(crate) out_bytes: u64,
    pub(crate) finished: bool,
    /// The response cannot be completed: close the connection after what was sent.
    pub(crate) aborted: bool,
    /// The application has more to produce once the output drains.
    pub(crate) want_more: bool,
    // Parking (coroutine operations): the handler stops producing until `unpark` or
    // the deadline; then the connection asks for `Handler::resume`.
    pub(crate) parked: bool,
    pub(crate) park_deadline: Option<Instant>,
    pub(crate) unparked: bool,
    pub(crate) park_timed_out: bool,
    /// A runtime-driving application thread waits for body bytes or output room.
    pub(crate) app_waker: Option<Waker>,
    /// Watch the connection for the client leaving while the response is pending.
    pub(crate) watch_client: bool,
    /// Body bytes written to the socket so far.
    pub(crate) written: u64,
    /// Ask for `Handler::written` once `written` reaches this.
    pub(crate) written_target: Option<u64>,
    // Connection state.
    pub(crate) gone: bool,
    task_waker: Option<Waker>,
    signaled: bool,
}

impl Inner {
    /// Whether an application thread waiting for the body may go on.
    fn body_ready(&self) -> bool {
        !self.body.is_empty()
            || self.body_eof
            || self.body_error.is_some()
            || self.target.as_ref().is_some_and(|t| t.filled > 0)
    }
}

/// How a park ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkOutcome {
    /// `unpark` was called.
    Unparked,
    /// The deadline passed first.
    TimedOut,
}

/// The state one request shares between its connection and its application call.
pub struct Exchange<S> {
    /// The request head.
    pub head: RequestHead,
    /// The connection it arrived on.
    pub conn: Arc<ConnInfo>,
    /// When the head was complete.
    pub started: Instant,
    /// How many requests the connection served before this one since it was accepted or
    /// taken back from the idle shelf (0: its first, e.g. on a connection used once).
    pub earlier_requests: u32,
    pub(crate) inner: Mutex<Inner>,
    body_cv: Condvar,
    waking: Arc<dyn Waking>,
    /// The handler's per-request state (e.g. the response iterator).
    pub state: Mutex<Option<S>>,
}

/// Exchanges of finished requests, kept for the next ones, last in first out.
///
/// An exchange is ~600 bytes: with many requests in flight, glibc's small per-thread
/// cache (7 blocks a size) overflows and every request paid for the allocator's slower
/// paths. callgrind (benchmarks/callgrind_cache.sh's method, `hello`): at 64 connections
/// 14,298-14,510 -> 13,985-14,140 instructions per request; at 256, 14,223 -> 13,789, and
/// last-level cache misses 77.1 -> 72.4 (a pool of 128 left half of 256 to the allocator,
/// and changed nothing there).
pub(crate) struct ExchangePool<S> {
    free: Mutex<Vec<Arc<Exchange<S>>>>,
    waking: Arc<dyn Waking>,
    /// Stands in for the connection of a pooled exchange, so that the pool keeps nothing
    /// of a connection alive (its addresses, what the handler cached for it).
    vacant: Arc<ConnInfo>,
}

/// A request's exchange, given back to the pool when the request is over, whichever way
/// it ends.
pub(crate) struct Recycled<'a, S> {
    ex: Option<Arc<Exchange<S>>>,
    pool: &'a ExchangePool<S>,
}

impl<S> std::ops::Deref for Recycled<'_, S> {
    type Target = Arc<Exchange<S>>;
    fn deref(&self) -> &Arc<Exchange<S>> {
        // Some until dropped.
        self.ex.as_ref().expect("exchange present until drop")
    }
}

impl<S> Drop for Recycled<'_, S> {
    fn drop(&mut self) {
        if let Some(ex) = self.ex.take() {
            self.pool.give(ex);
        }
    }
}

/// Most exchanges kept (about 600 bytes each, 150 KiB in all): one per connection of a
/// few hundred taking turns; beyond, they go back to the allocator.
const EXCHANGE_POOL_MAX: usize = 256;

impl<S> ExchangePool<S> {
    pub(crate) fn new(waking: Arc<dyn Waking>, vacant: Arc<ConnInfo>) -> Self {
        ExchangePool {
            free: Mutex::new(Vec::new()),
            waking,
            vacant,
        }
    }

    /// An exchange for a new request: a pooled one if there is one. Requests take it
    /// through [`ExchangePool::take_recycled`], so that it comes back.
    fn take(
        &self,
        head: RequestHead,
        conn: Arc<ConnInfo>,
        earlier_requests: u32,
    ) -> Arc<Exchange<S>> {
        let pooled = self.free.lock().pop();
        if let Some(mut ex) = pooled {
            // Always unique: `give` keeps only exchanges nobody else holds, and there are
            // no weak references to exchanges.
            if let Some(e) = Arc::get_mut(&mut ex) {
                e.renew(head, conn, earlier_requests);
                return ex;
            }
        }
        Arc::new(Exchange::new(
            head,
            conn,
            earlier_requests,
            Arc::clone(&self.waking),
        ))
    }

    /// An exchange for a new request, which goes back to the pool when dropped.
    pub(crate) fn take_recycled(
        &self,
        head: RequestHead,
        conn: Arc<ConnInfo>,
        earlier_requests: u32,
    ) -> Recycled<'_, S> {
        Recycled {
            ex: Some(self.take(head, conn, earlier_requests)),
            pool: self,
        }
    }

    /// Lets the pooled exchanges go (when the allocator is asked to give memory back).
    pub(crate) fn clear(&self) {
        let free = std::mem::take(&mut *self.free.lock());
        drop(free);
    }

    /// Takes a finished exchange back, if nobody else holds it (an application thread may
    /// still, e.g. a deferred responder kept past the response: then it is dropped).
    pub(crate) fn give(&self, mut ex: Arc<Exchange<S>>) {
        let Some(e) = Arc::get_mut(&mut ex) else {
            return;
        };
        e.clear(Arc::clone(&self.vacant));
        let mut free = self.free.lock();
        if free.len() < EXCHANGE_POOL_MAX {
            free.push(ex);
        }
    }
}

/// Output above which the application should stop producing until the socket drains.
pub const OUTPUT_HIGH_WATER: u64 = 512 * 1024;

impl<S> Exchange<S> {
    pub(crate) fn new(
        head: RequestHead,
        conn: Arc<ConnInfo>,
        earlier_requests: u32,
        waking: Arc<dyn Waking>,
    ) -> Self {
        Exchange {
            head,
            conn,
            started: Instant::now(),
            earlier_requests,
            inner: Mutex::new(Inner::default()),
            body_cv: Condvar::new(),
            waking,
            state: Mutex::new(None),
        }
    }

    /// Makes an exchange from the pool (see [`ExchangePool::give`]: nothing of its last
    /// request is left) the exchange of a new request.
    fn renew(&mut self, head: RequestHead, conn: Arc<ConnInfo>, earlier_requests: u32) {
        // Every field, so that a new one cannot be forgotten here.
        let Exchange {
            head: old_head,
            conn: old_conn,
            started,
            earlier_requests: earlier,
            inner: _,   // reset by `clear`
            body_cv: _, // no waiter: nobody else holds the exchange
            waking: _,  // the engine's, the same for every exchange of the pool
            state: _,   // reset by `clear`
        } = self;
        *old_head = head;
        *old_conn = conn;
        *started = Instant::now();
        *earlier = earlier_requests;
    }

    /// Lets go of what the finished request held: its head (which shares the connection's
    /// read buffer), its connection (`vacant` stands in), its body and response pieces,
    /// the handler's state.
    fn clear(&mut self, vacant: Arc<ConnInfo>) {
        self.head = RequestHead::default();
        self.conn = vacant;
        *self.inner.get_mut() = Inner::default();
        *self.state.get_mut() = None;
    }

    fn signal(&self, inner: &mut Inner) {
        inner.signaled = true;
        if let Some(w) = inner.task_waker.take() {
            self.waking.wake(w);
        }
    }

    pub(crate) fn poll_signal(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.inner.lock();
        if inner.signaled {
            inner.signaled = false;
            return Poll::Ready(());
        }
        match &inner.task_waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => inner.task_waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    pub(crate) fn lock(&self) -> parking_lot::MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// Wakes the application side (a thread blocked on the body or on output room, or a
    /// driving leader). Must be called without the exchange lock held.
    pub(crate) fn notify_app(&self) {
        self.body_cv.notify_all();
        let waker = self.inner.lock().app_waker.take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Waits for body bytes like [`Exchange::wait_body`], but for a caller that must
    /// drive the runtime itself (see [`Exchange::must_drive`]); the gate stays held.
    pub fn drive_until_body(&self) {
        self.drive_for_body(None);
    }

    /// Drives the runtime until body bytes (or the end, or an error) are in, for at most
    /// `limit`; returns whether they are. For the leader, whose own call waits for a body
    /// that is on its way: driving for a moment costs less than handing the runtime to
    /// another thread and back (two context switches per wait).
    pub fn drive_for_body(&self, limit: Option<Duration>) -> bool {
        self.waking.drive(limit, &mut |cx| {
            let mut inner = self.inner.lock();
            if inner.body_ready() {
                return true;
            }
            inner.app_waker = Some(cx.waker().clone());
            false
        })
    }

    /// Whether the caller may drive the runtime for a moment while it waits (it is the
    /// thread driving the engine, inside its call).
    pub fn may_drive(&self) -> bool {
        self.waking.may_drive()
    }

    /// Waits for output room like [`Exchange::wait_writable`], driving the runtime.
    /// Returns false if the client is gone.
    pub fn drive_until_writable(&self) -> bool {
        self.waking.drive(None, &mut |cx| {
            let mut inner = self.inner.lock();
            if inner.out_bytes < OUTPUT_HIGH_WATER || inner.gone || inner.aborted {
                return true;
            }
            inner.app_waker = Some(cx.waker().clone());
            false
        });
        !self.inner.lock().gone
    }

    /// Whether the caller must use the `drive_until_*` waits instead of blocking: it is
    /// the thread driving the engine and no other thread can take over.
    pub fn must_drive(&self) -> bool {
        self.waking.must_drive()
    }

    // ----- application side -----

    /// Reads up to `max` body bytes without blocking.
    pub fn try_read_body(&self, max: usize) -> BodyRead {
        let mut inner = self.inner.lock();
        inner.buffered_reader = true;
        if let Some(data) = self.pop_body(&mut inner, max) {
            return BodyRead::Data(data);
        }
        if let Some(e) = inner.body_error {
            return BodyRead::Error(e);
        }
        if inner.body_eof {
            return BodyRead::Eof;
        }
        if !inner.demand {
            inner.demand = true;
            self.signal(&mut inner);
        }
        BodyRead::Pending
    }

    /// Takes up to `max` bytes from the front of the queued body, if any; keeps the
    /// read-ahead going.
    fn pop_body(&self, inner: &mut Inner, max: usize) -> Option<Bytes> {
        let front = inner.body.front_mut()?;
        let data = if front.len() <= max {
            inner.body.pop_front().unwrap_or_default()
        } else {
            front.split_to(max)
        };
        inner.body_buffered -= data.len();
        if !inner.body_eof && !inner.demand {
            // Keep the read-ahead going.
            self.signal(inner);
        }
        Some(data)
    }

    /// Reads up to `len` body bytes into `dst` without blocking: bytes already buffered
    /// are copied there; if there are none, `dst` is lent to the connection task, which
    /// may then read the body from the socket straight into it (a Content-Length body,
    /// nothing else buffered) and say so in a later call.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `len` bytes, and nothing else may read or write
    /// it from the call until the next call on this exchange returns something other than
    /// `Pending`, or [`Exchange::take_back_target`] returns.
    pub unsafe fn try_read_body_into(&self, dst: *mut u8, len: usize) -> BodyFill {
        let mut inner = self.inner.lock();
        inner.lending = true;
        if let Some(t) = inner.target.take() {
            if t.filled > 0 {
                return BodyFill::Filled(t.filled);
            }
        }
        if let Some(data) = self.pop_body(&mut inner, len) {
            // SAFETY: the caller guarantees `dst` is writable for `len` >= data.len()
            // bytes, and `data` (a buffer of ours) cannot overlap the caller's memory.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
            return BodyFill::Filled(data.len());
        }
        if let Some(e) = inner.body_error {
            return BodyFill::Error(e);
        }
        if inner.body_eof || len == 0 {
            return BodyFill::Eof;
        }
        inner.target = Some(Target {
            ptr: dst,
            len,
            filled: 0,
        });
        inner.demand = true;
        // Also when the task already reads for a demand: it switches to the target.
        self.signal(&mut inner);
        BodyFill::Pending
    }

    /// Ends the loan of [`Exchange::try_read_body_into`]: the connection task no longer
    /// writes to the memory once this returns. Returns how many bytes it had written
    /// there (body bytes the caller now owns).
    pub fn take_back_target(&self) -> usize {
        self.inner.lock().target.take().map_or(0, |t| t.filled)
    }

    /// Blocks until body bytes, the end of the body, or an error are there. Call without
    /// the gate (GIL) held, after `try_read_body` returned `Pending`; call
    /// [`Exchange::gate_taken`] once the gate is held again.
    pub fn wait_body(&self) {
        let mut inner = self.inner.lock();
        while !inner.body_ready() {
            self.body_cv.wait(&mut inner);
        }
        drop(inner);
        self.waking.want_gate();
    }

    /// Pairs with [`Exchange::wait_body`]: the gate is held again.
    pub fn gate_taken(&self) {
        self.waking.got_gate();
    }

    /// Why the body could not be read, if it could not.
    pub fn body_error(&self) -> Option<BodyError> {
        self.inner.lock().body_error
    }

    /// Sets header lines (each `Name: value\r\n`) for the `100 Continue` response.
    pub fn set_continue_headers(&self, lines: Vec<u8>) {
        self.inner.lock().continue_headers = lines;
    }

    /// Starts the response. Returns false if the client is gone.
    pub fn start(&self, start: ResponseStart) -> bool {
        let mut inner = self.inner.lock();
        inner.start = Some(start);
        self.signal(&mut inner);
        !inner.gone
    }

    /// Whether the response head has been handed over.
    pub fn is_started(&self) -> bool {
        let inner = self.inner.lock();
        inner.start.is_some() || inner.start_taken
    }

    /// Queues body bytes. Returns false if the client is gone (the bytes are dropped).
    pub fn send(&self, chunk: OutChunk) -> bool {
        let mut inner = self.inner.lock();
        if inner.gone || inner.aborted {
            return false;
        }
        inner.out_bytes += chunk.len();
        inner.out.push_back(chunk);
        self.signal(&mut inner);
        true
    }

    /// Starts the response and queues its whole body in one step, then finishes.
    pub fn respond(&self, start: ResponseStart, body: impl IntoIterator<Item = OutChunk>) -> bool {
        let mut inner = self.inner.lock();
        inner.start = Some(start);
        if !inner.gone {
            for chunk in body {
                inner.out_bytes += chunk.len();
                inner.out.push_back(chunk);
            }
        }
        inner.finished = true;
        self.signal(&mut inner);
        !inner.gone
    }

    /// Blocks while more than [`OUTPUT_HIGH_WATER`] bytes wait to be written, so that a
    /// `write()` loop cannot queue without bound. Call without the gate held; returns
    /// false if the client is gone. Call [`Exchange::gate_taken`] once the gate is held again.
    pub fn wait_writable(&self) -> bool {
        let mut inner = self.inner.lock();
        while inner.out_bytes >= OUTPUT_HIGH_WATER && !inner.gone && !inner.aborted {
            self.body_cv.wait(&mut inner);
        }
        let alive = !inner.gone;
        drop(inner);
        self.waking.want_gate();
        alive
    }

    /// Bytes queued and not yet taken by the connection.
    pub fn queued_bytes(&self) -> u64 {
        self.inner.lock().out_bytes
    }

    /// Asks to be resumed (`Handler::resume`) once the queued output has been written.
    pub fn want_more(&self) {
        let mut inner = self.inner.lock();
        inner.want_more = true;
        self.signal(&mut inner);
    }

    /// The response is complete.
    pub fn finish(&self) {
        let mut inner = self.inner.lock();
        inner.finished = true;
        self.signal(&mut inner);
    }

    /// The response cannot be completed properly: the connection closes after what was
    /// queued (so a truncated body never passes for a whole one).
    pub fn abort(&self) {
        let mut inner = self.inner.lock();
        inner.aborted = true;
        inner.finished = true;
        self.signal(&mut inner);
    }

    /// Stops the response until [`Exchange::unpark`] is called (from any thread) or
    /// `deadline` passes; then the connection calls `Handler::resume`.
    pub fn park(&self, deadline: Option<Instant>) {
        let mut inner = self.inner.lock();
        inner.parked = true;
        inner.park_deadline = deadline;
        inner.park_timed_out = false;
        // An unpark may already have come (e.g. a future that was done at once).
        self.signal(&mut inner);
    }

    /// The response may take long (e.g. it is deferred): watch for the client leaving,
    /// so that `is_gone` tells and `Handler::close` comes when it does.
    pub fn watch_client(&self) {
        let mut inner = self.inner.lock();
        inner.watch_client = true;
        self.signal(&mut inner);
    }

    /// Ends a park; the handler is resumed soon. Safe from any thread; extra calls are
    /// ignored.
    pub fn unpark(&self) {
        let mut inner = self.inner.lock();
        if inner.parked || !inner.unparked {
            inner.unparked = true;
            self.signal(&mut inner);
        }
    }

    /// How the last park ended, clearing it (None if no park ended).
    pub fn take_park_outcome(&self) -> Option<ParkOutcome> {
        let mut inner = self.inner.lock();
        if inner.park_timed_out {
            inner.park_timed_out = false;
            inner.unparked = false;
            Some(ParkOutcome::TimedOut)
        } else if inner.unparked {
            inner.unparked = false;
            Some(ParkOutcome::Unparked)
        } else {
            None
        }
    }

    /// Body bytes written to the socket so far.
    pub fn written(&self) -> u64 {
        self.inner.lock().written
    }

    /// Asks for `Handler::written` once `target` body bytes are on the wire (queued
    /// bytes count from the start of the body).
    pub fn notify_when_written(&self, target: u64) {
        let mut inner = self.inner.lock();
        inner.written_target = Some(inner.written_target.map_or(target, |t| t.min(target)));
        self.signal(&mut inner);
    }

    /// The client has gone away.
    pub fn is_gone(&self) -> bool {
        self.inner.lock().gone
    }

    /// Whether the connection may persist after this request, as far as the request
    /// and the server allow (the framing may still turn it off).
    pub fn keep_alive(&self) -> bool {
        self.head.keep_alive && self.conn.keep_alive_allowed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::Policy;
    use bytes::BytesMut;
    use unyoke_http::{Event, Limits, RequestDecoder};

    struct NoWaking;

    impl Waking for NoWaking {
        fn wake(&self, waker: Waker) {
            waker.wake();
        }
        fn want_gate(&self) {}
        fn got_gate(&self) {}
        fn must_drive(&self) -> bool {
            false
        }
        fn may_drive(&self) -> bool {
            false
        }
        fn drive(
            &self,
            _limit: Option<Duration>,
            _ready: &mut dyn FnMut(&mut Context<'_>) -> bool,
        ) -> bool {
            false
        }
    }

    fn conn(id: u64) -> Arc<ConnInfo> {
        ConnInfo::vacant(
            id,
            Arc::new(Policy {
                keepalive: true,
                stopping: Default::default(),
            }),
        )
    }

    /// A head decoded from `buf`, sharing its memory (as from a connection's buffer).
    fn head(buf: &mut BytesMut, target: &str) -> RequestHead {
        buf.extend_from_slice(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        match RequestDecoder::new(Limits::default()).decode(buf) {
            Ok(Some(Event::Head(h))) => h,
            other => panic!("not a head: {other:?}"),
        }
    }

    fn pool() -> ExchangePool<String> {
        ExchangePool::new(Arc::new(NoWaking), conn(0))
    }

    #[test]
    fn a_finished_exchange_is_reused_with_nothing_of_its_request_left() {
        let pool = pool();
        let mut buf = BytesMut::with_capacity(4096);
        let first_conn = conn(1);
        let ex = pool.take(head(&mut buf, "/first"), Arc::clone(&first_conn), 3);
        {
            let mut inner = ex.lock();
            inner.body.push_back(Bytes::from_static(b"body"));
            inner.body_eof = true;
            inner.finished = true;
            inner.continue_headers.extend_from_slice(b"X: y\r\n");
        }
        *ex.state.lock() = Some("state".to_string());
        let first = Arc::as_ptr(&ex);
        pool.give(ex);
        // The head's bytes and the connection are let go of at once, not when reused.
        assert!(
            buf.try_reclaim(4096),
            "the head still shares the read buffer"
        );
        assert_eq!(Arc::strong_count(&first_conn), 1);

        let ex = pool.take(head(&mut buf, "/second"), conn(2), 0);
        assert_eq!(Arc::as_ptr(&ex), first, "the pooled exchange is reused");
        assert_eq!(ex.head.target(), b"/second");
        assert_eq!(ex.conn.id, 2);
        assert_eq!(ex.earlier_requests, 0);
        assert!(ex.state.lock().is_none());
        let inner = ex.lock();
        assert!(inner.body.is_empty() && !inner.body_eof && !inner.finished);
        assert!(inner.continue_headers.is_empty());
    }

    #[test]
    fn an_exchange_still_held_elsewhere_is_not_pooled() {
        let pool = pool();
        let mut buf = BytesMut::with_capacity(4096);
        let ex = pool.take(head(&mut buf, "/a"), conn(1), 0);
        let kept = Arc::clone(&ex); // e.g. a deferred responder an application kept
        pool.give(ex);
        assert!(pool.free.lock().is_empty());
        let other = pool.take(head(&mut buf, "/b"), conn(2), 0);
        assert!(!Arc::ptr_eq(&kept, &other));
        assert_eq!(kept.head.target(), b"/a", "the held exchange is left alone");
    }

    #[test]
    fn a_recycled_exchange_goes_back_when_dropped_on_any_way_out() {
        let pool = pool();
        let mut buf = BytesMut::with_capacity(4096);
        let first = {
            let ex = pool.take_recycled(head(&mut buf, "/a"), conn(1), 0);
            Arc::as_ptr(&ex)
        };
        assert_eq!(pool.free.lock().len(), 1);
        // A request that ends in a panic (caught, as the engine's tasks are) gives its
        // exchange back too.
        let mut second = std::ptr::null();
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let ex = pool.take_recycled(head(&mut buf, "/b"), conn(2), 0);
            second = Arc::as_ptr(&ex);
            panic!("request failed");
        }));
        assert!(unwound.is_err());
        assert!(
            std::ptr::eq(second, first),
            "the pooled exchange was reused"
        );
        assert_eq!(pool.free.lock().len(), 1);
    }

    #[test]
    fn the_pool_keeps_a_bounded_number() {
        let pool = pool();
        let mut buf = BytesMut::with_capacity(64);
        let many: Vec<_> = (0..EXCHANGE_POOL_MAX + 10)
            .map(|i| pool.take(head(&mut buf, "/"), conn(i as u64), 0))
            .collect();
        for ex in many {
            pool.give(ex);
        }
        assert_eq!(pool.free.lock().len(), EXCHANGE_POOL_MAX);
    }
}
