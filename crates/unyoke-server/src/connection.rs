//! One connection: read requests, hand them to the dispatcher, write the responses, in
//! order, with every timeout and limit. The life of a connection is in `serve`.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout, timeout_at, Instant};
use unyoke_http::{
    chunk_header, BodyFraming, BodyKind, ChunkHeader, Event, RequestDecoder, RequestError,
    LAST_CHUNK,
};

use crate::access_log::Entry;
use crate::engine::{Shared, WorkItem};
use crate::exchange::{BodyError, Exchange, OutChunk, ResponseStart};
use crate::idle::{Shelvable, SHELVE_AFTER};
use crate::Handler;

/// A peer or local address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAddr {
    /// An IPv4 or IPv6 address and port.
    Tcp(SocketAddr),
    /// A UNIX socket (peers are unnamed).
    Unix(String),
}

impl PeerAddr {
    /// A UNIX socket's address: its path, or empty for an unnamed one.
    pub(crate) fn unix(path: Option<&std::path::Path>) -> PeerAddr {
        PeerAddr::Unix(path.map(|p| p.display().to_string()).unwrap_or_default())
    }
}

/// What the application may know about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// A number unique within the engine.
    pub id: u64,
    /// The client.
    pub peer: PeerAddr,
    /// The local end.
    pub local: PeerAddr,
    /// The connection is TLS.
    pub tls: bool,
    pub(crate) policy: Arc<Policy>,
    /// What the handler keeps for this connection (see [`HandlerCache`]).
    pub cache: HandlerCache,
}

/// What a handler keeps per connection: e.g. the connection's addresses as its own
/// objects, made once instead of on every request. A copy of a `ConnInfo` starts empty,
/// since copies are made to change the addresses.
#[derive(Default)]
pub struct HandlerCache(std::sync::OnceLock<Box<dyn std::any::Any + Send + Sync>>);

impl HandlerCache {
    /// The kept value, made by `make` the first time (an error is returned and nothing
    /// kept). `None` if what is kept is of another type (one handler per engine, so only
    /// if it was used with two types).
    pub fn get_or_try_init<V: std::any::Any + Send + Sync, E>(
        &self,
        make: impl FnOnce() -> Result<V, E>,
    ) -> Result<Option<&V>, E> {
        if let Some(v) = self.0.get() {
            return Ok(v.downcast_ref());
        }
        // (Another thread setting it meanwhile wins; its value is as good.)
        let _ = self.0.set(Box::new(make()?));
        Ok(self.0.get().and_then(|v| v.downcast_ref()))
    }
}

impl Clone for HandlerCache {
    fn clone(&self) -> Self {
        HandlerCache::default()
    }
}

impl std::fmt::Debug for HandlerCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "HandlerCache(set)"
        } else {
            "HandlerCache(empty)"
        })
    }
}

/// Server-wide switches a connection consults per request.
#[derive(Debug)]
pub(crate) struct Policy {
    pub(crate) keepalive: bool,
    pub(crate) stopping: AtomicBool,
}

impl ConnInfo {
    /// A connection that is none: no addresses, nothing cached. It stands in for the
    /// connection of a pooled exchange (see `ExchangePool`), so that the pool keeps
    /// nothing of a real one alive.
    pub(crate) fn vacant(id: u64, policy: Arc<Policy>) -> Arc<Self> {
        Arc::new(ConnInfo {
            id,
            peer: PeerAddr::unix(None),
            local: PeerAddr::unix(None),
            tls: false,
            policy,
            cache: HandlerCache::default(),
        })
    }

    /// Whether the server lets connections persist right now (setting, shutdown).
    pub fn keep_alive_allowed(&self) -> bool {
        self.policy.keepalive && !self.policy.stopping.load(Ordering::Relaxed)
    }
}

/// A stream the engine can serve: TCP, UNIX, later TLS.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Whether `poll_read_ready` waits for the socket (false: it is ready at once).
    const READINESS: bool = false;

    /// Ready when a read would not block (or cannot tell: then at once).
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = cx;
        Poll::Ready(Ok(()))
    }

    /// The socket, to be set aside while idle (see `idle.rs`); None if it cannot be.
    fn into_shelvable(self) -> Option<Shelvable>
    where
        Self: Sized,
    {
        None
    }

    /// Sends `len` bytes of `file` from `offset`; `sendfile(2)` where the transport allows.
    fn send_file<'a>(
        &'a mut self,
        file: &'a std::fs::File,
        offset: u64,
        len: u64,
    ) -> Pin<Box<dyn std::future::Future<Output = io::Result<u64>> + Send + 'a>> {
        Box::pin(copy_file(self, file, offset, len))
    }
}

impl Transport for tokio::net::UnixStream {
    const READINESS: bool = true;

    fn into_shelvable(self) -> Option<Shelvable> {
        self.into_std().ok().map(Shelvable::Unix)
    }

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::UnixStream::poll_read_ready(self, cx)
    }
}

impl Transport for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {}

impl Transport for tokio::net::TcpStream {
    const READINESS: bool = true;

    fn into_shelvable(self) -> Option<Shelvable> {
        self.into_std().ok().map(Shelvable::Tcp)
    }

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
    }

    fn send_file<'a>(
        &'a mut self,
        file: &'a std::fs::File,
        offset: u64,
        len: u64,
    ) -> Pin<Box<dyn std::future::Future<Output = io::Result<u64>> + Send + 'a>> {
        Box::pin(async move {
            use std::os::fd::AsRawFd;
            let mut off = offset as libc::off_t;
            let end = offset + len;
            let mut sent = 0u64;
            while (off as u64) < end {
                self.writable().await?;
                let want = ((end - off as u64).min(1 << 30)) as usize;
                let sock = self.as_raw_fd();
                let ffd = file.as_raw_fd();
                let r = self.try_io(tokio::io::Interest::WRITABLE, || {
                    // SAFETY: both descriptors are open for the duration of the call; `off`
                    // is a valid pointer to a local.
                    let n = unsafe { libc::sendfile(sock, ffd, &mut off, want) };
                    if n < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(n as usize)
                    }
                });
                match r {
                    Ok(0) => break, // file shorter than promised
                    Ok(n) => sent += n as u64,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
            Ok(sent)
        })
    }
}

async fn copy_file<T: AsyncWrite + Unpin + ?Sized>(
    out: &mut T,
    file: &std::fs::File,
    offset: u64,
    len: u64,
) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 256 * 1024];
    let mut done = 0u64;
    while done < len {
        let want = ((len - done) as usize).min(buf.len());
        let n = file.read_at(&mut buf[..want], offset + done)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).await?;
        done += n as u64;
    }
    Ok(done)
}

/// How much to read at a time while waiting for a request head.
const HEAD_READ_SIZE: usize = 8 * 1024;
/// How much to read at a time while receiving a request body.
const BODY_READ_SIZE: usize = 64 * 1024;

/// Body pieces up to this size are copied into the write buffer after the head (at most
/// COALESCE_CHUNKS of them), larger ones are written from where they are.
const COALESCE_UP_TO: usize = 1024;
const COALESCE_CHUNKS: usize = 16;

/// Buffers up to this size are kept between the requests of a connection (a read buffer
/// in the engine's [`BufferPool`]); larger ones (a body's) are freed when it goes idle.
const KEEP_BUFFER_UP_TO: usize = 16 * 1024;

/// Most read buffers the pool keeps (8 KiB each: at most 2 MiB).
const BUFFER_POOL_MAX: usize = 256;

/// The read buffers of connections waiting for their next request, for whichever
/// connection has bytes to read next. A connection waiting in its task holds no read
/// buffer: 5,000 clients that each sent a request and went quiet used to hold 8 KiB each
/// until they were set aside, and the burst left the heap fragmented (shared-harness idle
/// test: 0.16 to 0.99 KiB per idle connection after the trim; with the pool -0.05 to 0.33,
/// peak RSS 27-32 MiB instead of 38-44).
/// Busy connections pass buffers around instead of allocating one per request; the pool
/// is emptied when the allocator is trimmed (see `idle::sweep`).
#[derive(Default)]
pub(crate) struct BufferPool(parking_lot::Mutex<Vec<BytesMut>>);

impl BufferPool {
    /// A pooled buffer, or an empty one (it allocates on its first reserve).
    fn take(&self) -> BytesMut {
        self.0.lock().pop().unwrap_or_default()
    }

    /// Keeps `buf` for another connection if it is empty and small, else frees it.
    fn give(&self, buf: BytesMut) {
        if buf.is_empty() && buf.capacity() > 0 && buf.capacity() <= KEEP_BUFFER_UP_TO {
            let mut pool = self.0.lock();
            if pool.len() < BUFFER_POOL_MAX {
                pool.push(buf);
            }
        }
    }

    /// Frees every pooled buffer.
    pub(crate) fn clear(&self) {
        let bufs = std::mem::take(&mut *self.0.lock());
        drop(bufs);
    }
}

/// How much earlier than [`SHELVE_AFTER`] a waiting connection may be set aside, so that
/// its timer need not be moved on every request.
const SHELVE_SLACK: Duration = Duration::from_millis(250);

/// Largest unread request body the server reads and discards to keep a connection alive
/// after the application answered without reading it; above it, the connection closes.
const DISCARD_LIMIT: u64 = 64 * 1024;

enum HeadOutcome {
    Head(unyoke_http::RequestHead),
    Close,
    /// Nothing arrived for [`SHELVE_AFTER`]: set the connection aside. Carries the
    /// deadline of its wait (the keep-alive timeout, or the first request's header timeout).
    Idle(Instant),
}

/// How a connection's task begins.
pub(crate) enum Start {
    /// Just accepted.
    Accepted,
    /// Taken back from the idle shelf; `first_deadline` is set if its first request has
    /// not come yet (its header timeout still runs).
    Unshelved { first_deadline: Option<Instant> },
}

/// How a connection's task ends.
pub(crate) enum Ended<T> {
    /// The connection is closed.
    Closed,
    /// The connection waits for its next request and may be set aside.
    Idle {
        io: T,
        info: Arc<ConnInfo>,
        deadline: Instant,
        first: bool,
    },
}

struct Conn<'a, H: Handler, T: Transport> {
    shared: &'a Arc<Shared<H>>,
    io: T,
    buf: BytesMut,
    decoder: RequestDecoder,
    info: Arc<ConnInfo>,
    wbuf: Vec<u8>,
    /// Requests served by this task (see [`Exchange::earlier_requests`]).
    served: u32,
}

/// Serves one connection until it closes or goes idle long enough to be set aside.
pub(crate) async fn serve<H: Handler, T: Transport>(
    shared: Arc<Shared<H>>,
    io: T,
    info: Arc<ConnInfo>,
    start: Start,
) -> Ended<T> {
    let mut io = io;
    let mut buf = BytesMut::new();
    let (mut first, mut first_deadline) = match start {
        Start::Accepted => (true, None),
        Start::Unshelved { first_deadline } => (first_deadline.is_some(), first_deadline),
    };
    let info = if shared.config.proxy_protocol && matches!(start, Start::Accepted) {
        // The proxy speaks first; without a valid header the connection is closed
        // without a response (it is not from the proxy).
        match read_proxy_header(&shared, &mut io, &mut buf).await {
            Some(unyoke_http::ProxyInfo::Forwarded {
                source,
                destination,
            }) => {
                let mut i = (*info).clone();
                i.peer = PeerAddr::Tcp(source);
                i.local = PeerAddr::Tcp(destination);
                Arc::new(i)
            }
            Some(unyoke_http::ProxyInfo::Local) => info,
            None => return Ended::Closed,
        }
    } else {
        info
    };
    let mut conn = Conn {
        decoder: RequestDecoder::new(shared.config.limits),
        shared: &shared,
        io,
        buf,
        info,
        wbuf: Vec::new(),
        served: 0,
    };
    // The timer and the stop signal of the waits between requests, made once per
    // connection and pinned here, in the task: moving a registered timer's deadline later
    // is one atomic exchange, where a new timer per wait cost an insertion into the timer
    // wheel and a removal (each under the driver's lock) on every request, and the stop
    // signal joins its waiter list once, not on every request (once signalled it stays
    // ready, so a stop during a request closes the next wait at once). Not boxed: two
    // small allocations living from the first request to the shelving fragmented the
    // memory that idle connections give back.
    let idle_timer = tokio::time::sleep_until(Instant::now());
    tokio::pin!(idle_timer);
    let idle_stop = shared.stop_notify.notified();
    tokio::pin!(idle_stop);
    loop {
        let head = match conn
            .read_head(
                first,
                first_deadline.take(),
                idle_timer.as_mut(),
                idle_stop.as_mut(),
            )
            .await
        {
            HeadOutcome::Head(h) => h,
            HeadOutcome::Close => break,
            HeadOutcome::Idle(deadline) => {
                return Ended::Idle {
                    io: conn.io,
                    info: conn.info,
                    deadline,
                    first,
                }
            }
        };
        first = false;
        // Not boxed: the box cost an allocation, a 960-byte copy and a free per request
        // (~265 instructions of ~16,960), while the memory it spared belonged to
        // connections idle for under `SHELVE_AFTER` only (a shelved one has no task).
        match conn.exchange(head).await {
            Ok(true) => continue,
            Ok(false) | Err(_) => break,
        }
    }
    let _ = conn.io.shutdown().await;
    Ended::Closed
}

/// Reads and strips a PROXY protocol header (v1 or v2) within the header timeout.
async fn read_proxy_header<H: Handler, T: Transport>(
    shared: &Shared<H>,
    io: &mut T,
    buf: &mut BytesMut,
) -> Option<unyoke_http::ProxyInfo> {
    let deadline = Instant::now() + shared.config.header_timeout;
    loop {
        match unyoke_http::parse_proxy_header(buf) {
            Ok(Some((info, n))) => {
                let _ = buf.split_to(n);
                return Some(info);
            }
            Ok(None) => {}
            Err(_) => return None,
        }
        buf.reserve(512);
        match timeout_at(deadline, io.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => shared.stats.bytes_in(n),
            _ => return None,
        }
    }
}

impl<H: Handler, T: Transport> Conn<'_, H, T> {
    /// Reads until a request head is complete. Between requests the keep-alive timeout
    /// applies; once a byte of a head arrived, the header timeout bounds the whole head
    /// (for the first request, from the accept: `first_deadline` when it was set earlier).
    async fn read_head(
        &mut self,
        first: bool,
        first_deadline: Option<Instant>,
        mut timer: Pin<&mut tokio::time::Sleep>,
        mut stop: Pin<&mut tokio::sync::futures::Notified<'_>>,
    ) -> HeadOutcome {
        let cfg = &self.shared.config;
        let mut deadline: Option<Instant> = if first {
            Some(first_deadline.unwrap_or_else(|| Instant::now() + cfg.header_timeout))
        } else {
            None
        };
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(Event::Head(head))) => return HeadOutcome::Head(head),
                Ok(Some(_)) => return HeadOutcome::Close,
                Ok(None) => {}
                Err(e) => {
                    self.send_error(e).await;
                    return HeadOutcome::Close;
                }
            }
            let idle = self.buf.is_empty() && self.decoder.is_idle();
            if !idle && deadline.is_none() {
                deadline = Some(Instant::now() + cfg.header_timeout);
            }
            let now = Instant::now();
            let until = deadline.unwrap_or(now + cfg.keepalive_timeout);
            if idle {
                // A waiting connection holds no read buffer (it goes to the pool). Between
                // requests it keeps its small write buffer (saving its growth on every
                // request) for as long as it waits in its task: at most SHELVE_AFTER for a
                // socket that can be set aside (one timer either way), which then frees
                // the whole task.
                if self.buf.capacity() > 0 {
                    self.shared.buffers.give(std::mem::take(&mut self.buf));
                }
                if first || self.wbuf.capacity() > KEEP_BUFFER_UP_TO {
                    self.wbuf = Vec::new();
                }
                let shelve_at = now + SHELVE_AFTER;
                let shelve = T::READINESS && shelve_at < until;
                let wait_until = if shelve { shelve_at } else { until };
                // A shelving time already close to the new one is kept (the connection is
                // set aside at most SHELVE_SLACK early): at thousands of requests a
                // second, most waits then leave the timer alone.
                if !(shelve && timer.deadline() + SHELVE_SLACK >= wait_until) {
                    timer.as_mut().reset(wait_until);
                }
                // A connection that has not sent its first request yet may be one the
                // kernel queued just before the stop (a reload, a rolling restart): it
                // keeps its header timeout (the grace period bounds it anyway) and is
                // answered with `Connection: close`. Idle keep-alive connections close now.
                let io = &self.io;
                let ready = tokio::select! {
                    biased;
                    r = std::future::poll_fn(|cx| io.poll_read_ready(cx)) => Ok(r),
                    _ = timer.as_mut() => Err(()),
                    _ = stop.as_mut(), if !first => return HeadOutcome::Close,
                };
                match ready {
                    Ok(Ok(())) => {}
                    Err(()) if shelve => return HeadOutcome::Idle(until),
                    _ => return HeadOutcome::Close,
                }
            }
            if self.buf.capacity() == 0 {
                self.buf = self.shared.buffers.take();
            }
            self.make_room(HEAD_READ_SIZE);
            if idle && T::READINESS {
                // Readiness can be stale: tokio reports a fresh connection ready at once (an
                // edge-triggered registration could otherwise miss bytes already there).
                // Try one read without waiting; if nothing is there, give the buffer back
                // and wait for readiness again (the failed read cleared it), so that a
                // connection that has sent nothing holds no buffer.
                let read = self.io.read_buf(&mut self.buf);
                tokio::pin!(read);
                match poll_once(read.as_mut()).await {
                    Poll::Pending => {
                        self.shared.buffers.give(std::mem::take(&mut self.buf));
                        continue;
                    }
                    Poll::Ready(Ok(0)) => return HeadOutcome::Close,
                    Poll::Ready(Ok(n)) => {
                        self.shared.stats.bytes_in(n);
                        continue;
                    }
                    Poll::Ready(Err(_)) => return HeadOutcome::Close,
                }
            }
            let stop = &self.shared.stop_notify;
            let read = tokio::select! {
                biased;
                r = timeout_at(until, self.io.read_buf(&mut self.buf)) => r,
                _ = stop.notified(), if idle && !first => return HeadOutcome::Close,
            };
            match read {
                Err(_) => {
                    if !idle {
                        self.send_simple(
                            408,
                            "Request Timeout",
                            "request head not received in time",
                        )
                        .await;
                    }
                    return HeadOutcome::Close;
                }
                Ok(Ok(0)) => {
                    return match self.decoder.decode_eof(&mut self.buf) {
                        Ok(Some(Event::Head(head))) => HeadOutcome::Head(head),
                        _ => HeadOutcome::Close,
                    };
                }
                Ok(Ok(n)) => self.shared.stats.bytes_in(n),
                Ok(Err(_)) => return HeadOutcome::Close,
            }
        }
    }

    /// Makes room to read about `size` bytes. Body chunks handed to the application are
    /// slices of the read buffer, so a consumed buffer is replaced rather than grown:
    /// growing a shared buffer copies it, and large allocations cost page faults.
    fn make_room(&mut self, size: usize) {
        if self.buf.is_empty() {
            if self.buf.capacity() < size / 2 {
                // Takes back the whole allocation when nothing else holds a slice of it
                // (the previous request is over), else allocates anew: nothing to copy.
                self.buf.reserve(size);
            }
        } else if self.buf.capacity() - self.buf.len() < size / 8 {
            self.buf.reserve(size);
        }
    }

    /// Moves decoded body events from the buffer into the exchange. Returns Ok(true) when
    /// the body is complete.
    fn pump_body(&mut self, ex: &Exchange<H::State>) -> Result<bool, RequestError> {
        let mut inner = ex.lock();
        let mut delivered = false;
        let done = loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(Event::Data(d))) => {
                    inner.body_buffered += d.len();
                    inner.body.push_back(d);
                    delivered = true;
                }
                Ok(Some(Event::End)) => {
                    inner.body_eof = true;
                    delivered = true;
                    break true;
                }
                Ok(Some(Event::Head(_))) => break true,
                Ok(None) => break false,
                Err(e) => {
                    inner.body_error = Some(BodyError::Malformed(e.status()));
                    drop(inner);
                    ex.notify_app();
                    return Err(e);
                }
            }
        };
        if delivered {
            inner.demand = false;
            drop(inner);
            ex.notify_app();
        }
        Ok(done)
    }

    /// `pump_body`, with its outcome recorded: the body is done once complete or malformed.
    fn absorb_body(
        &mut self,
        ex: &Exchange<H::State>,
        body_done: &mut bool,
        malformed: &mut Option<RequestError>,
    ) {
        match self.pump_body(ex) {
            Ok(done) => *body_done = done,
            Err(e) => {
                *malformed = Some(e);
                *body_done = true;
            }
        }
    }

    /// One request: dispatch it, feed its body, write its response. Returns whether the
    /// connection may carry another request.
    async fn exchange(&mut self, head: unyoke_http::RequestHead) -> io::Result<bool> {
        let shared = self.shared;
        let cfg = &shared.config;
        let expect = head.expect_continue;
        let mut body_done = head.body == BodyKind::Empty;
        let ex = shared
            .exchanges
            .take_recycled(head, Arc::clone(&self.info), self.served);
        self.served = self.served.saturating_add(1);
        shared.stats.request_started();
        let mut malformed: Option<RequestError> = None;
        if body_done {
            // Consume the End event of an empty body.
            let _ = self.decoder.decode(&mut self.buf);
            ex.lock().body_eof = true;
        } else {
            self.absorb_body(&ex, &mut body_done, &mut malformed);
        }
        // Read the body ahead of the call, up to `body_preread` bytes: a client that sends
        // its body slowly then costs a connection, not a dispatch thread blocked in
        // `wsgi.input.read()`. A client that asked for 100 Continue waits for the app to
        // read, so its request is dispatched at the head.
        let preread = cfg.body_preread.min(cfg.inbuf_overflow);
        while malformed.is_none()
            && !body_done
            && !expect
            && (ex.lock().body_buffered as u64) < preread
        {
            self.make_room(BODY_READ_SIZE);
            match timeout(cfg.inactivity_timeout, self.io.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {
                    shared.stats.bytes_in(n);
                    self.absorb_body(&ex, &mut body_done, &mut malformed);
                }
                Err(_) => {
                    self.send_simple(408, "Request Timeout", "request body not received in time")
                        .await;
                    self.abandon(&ex, 408);
                    return Ok(false);
                }
                // The client closed or failed before its body was in: nobody to answer.
                Ok(_) => {
                    self.abandon(&ex, 0);
                    return Ok(false);
                }
            }
        }
        // With `maximum_simultaneous_requests`, wait for a slot (bounded, then 503).
        let _slot = match &shared.request_slots {
            None => None,
            Some(slots) => {
                let deadline = Instant::now() + cfg.inactivity_timeout;
                match timeout_at(deadline, Arc::clone(slots).acquire_owned()).await {
                    Ok(Ok(permit)) => Some(permit),
                    _ => {
                        shared.stats.request_finished(503, ex.started.elapsed());
                        self.send_simple(
                            503,
                            "Service Unavailable",
                            "too many requests in progress",
                        )
                        .await;
                        return Ok(false);
                    }
                }
            }
        };
        shared.submit(WorkItem::Call(Arc::clone(&ex)));

        let mut continue_sent = false;
        let mut writer = BodyWriter::default();
        let mut chunks: VecDeque<OutChunk> = VecDeque::new();
        let mut head_written = false;
        let mut aborted = false;
        let mut gone = false;
        let mut last_progress = Instant::from_std(ex.started);
        let responseless_deadline = cfg.responseless_timeout.map(|t| Instant::now() + t);
        loop {
            // Body bytes may go straight into the application's memory when it lent some
            // and nothing is buffered ahead of them (see `Exchange::try_read_body_into`).
            let room = self.decoder.passthrough_room(self.buf.len());
            let (want_read, demand, park_deadline, watch_client, direct) = {
                let inner = ex.lock();
                // A Content-Length body is read ahead of the application (into our
                // buffer, up to `inbuf_overflow`) only once it has read through the
                // buffered path and lent no memory. Until it asks, and once it lends
                // memory, the rest waits in the kernel's buffer (TCP's own read-ahead)
                // and goes from the socket straight into the application's bytes: read
                // ahead while the request waits for its call, half of a 1 MiB upload
                // (echo-c16) was copied once more, and every queued upload held
                // `inbuf_overflow` of memory. A chunked body (no room) is always read
                // ahead: its framing has to be decoded anyway.
                let read_ahead = (inner.body_buffered as u64) < cfg.inbuf_overflow
                    && (!expect || continue_sent)
                    && (room == 0 || (inner.buffered_reader && !inner.lending));
                let park = if inner.parked && !inner.unparked {
                    inner.park_deadline
                } else {
                    None
                };
                let want_read = !body_done && (inner.demand || read_ahead);
                (
                    want_read,
                    inner.demand,
                    park,
                    inner.watch_client || inner.parked,
                    want_read && room > 0 && lent_room(&inner) > 0,
                )
            };
            if demand && expect && !continue_sent && !head_written && !body_done {
                continue_sent = true;
                let mut line = b"HTTP/1.1 100 Continue\r\n".to_vec();
                line.extend_from_slice(&ex.lock().continue_headers);
                line.extend_from_slice(b"\r\n");
                if self.write_timed(&line).await.is_err() {
                    gone = true;
                    break;
                }
                continue;
            }
            // For a response that may take long (deferred, parked), keep reading once the
            // body is in (into the buffer, for a pipelined request) to notice a client that
            // leaves. Quick responses skip this: it would cost a syscall per request.
            let watch_eof = body_done
                && watch_client
                && !gone
                && self.buf.len() < cfg.limits.max_request_header_size;
            if want_read && !direct {
                self.make_room(BODY_READ_SIZE);
            } else if watch_eof {
                self.make_room(HEAD_READ_SIZE);
            }
            // The next timer: a parked response's deadline, the responseless timeout, or
            // the inactivity timeout of a started response.
            let mut timer: Option<(Instant, Timer)> =
                park_deadline.map(|d| (Instant::from_std(d), Timer::Park));
            if !head_written {
                if let Some(d) = responseless_deadline {
                    if timer.is_none_or(|(t, _)| d < t) {
                        timer = Some((d, Timer::Responseless));
                    }
                }
            } else {
                let d = last_progress + cfg.inactivity_timeout;
                if timer.is_none_or(|(t, _)| d < t) {
                    timer = Some((d, Timer::Inactive));
                }
            }
            let exr = &ex;
            let inactivity = cfg.inactivity_timeout;
            // The timed branches are async blocks: select! builds every branch's future,
            // disabled ones included, and a timer costs a runtime-handle lookup to build
            // and a clock read; inside a block, that happens only if it is polled.
            tokio::select! {
                biased;
                _ = std::future::poll_fn(|cx| exr.poll_signal(cx)) => {}
                _ = async { if let Some((t, _)) = timer { tokio::time::sleep_until(t).await } }, if timer.is_some() => {
                    match timer.map(|(_, k)| k) {
                        Some(Timer::Park) => {
                            let mut inner = ex.lock();
                            if inner.parked && !inner.unparked {
                                inner.parked = false;
                                inner.park_timed_out = true;
                                drop(inner);
                                shared.submit(WorkItem::Resume(Arc::clone(&ex)));
                            }
                        }
                        Some(Timer::Responseless) => {
                            let started = { let i = ex.lock(); i.start.is_some() || i.start_taken };
                            if !started {
                                ex.lock().gone = true;
                                ex.notify_app();
                                self.send_simple(503, "Service Unavailable", "the application did not respond in time").await;
                                // Logged once, with the others, at the end of the exchange.
                                writer.status = 503;
                                aborted = true;
                                gone = true;
                            }
                        }
                        Some(Timer::Inactive) => {
                            // A started response that made no progress: give up on it.
                            aborted = true;
                            gone = true;
                        }
                        None => {}
                    }
                }
                r = async {
                    let read = async {
                        if direct {
                            let io = &mut self.io;
                            std::future::poll_fn(|cx| poll_read_lent(io, exr, room, cx)).await
                        } else {
                            self.io.read_buf(&mut self.buf).await.map(Got::Buffered)
                        }
                    };
                    timeout_at(Instant::now() + inactivity, read).await
                }, if want_read || watch_eof => {
                    match r {
                        Ok(Ok(Got::Buffered(0) | Got::Lent(0))) => {
                            // The client closed its side: mid-body, or while waiting.
                            let mut inner = ex.lock();
                            if !body_done {
                                inner.body_error = Some(BodyError::Disconnected);
                            }
                            drop(inner);
                            ex.notify_app();
                            body_done = true;
                            gone = true;
                        }
                        Ok(Ok(Got::Buffered(n))) => {
                            shared.stats.bytes_in(n);
                            if want_read {
                                self.absorb_body(&ex, &mut body_done, &mut malformed);
                            }
                        }
                        Ok(Ok(Got::Lent(n))) => {
                            shared.stats.bytes_in(n);
                            self.decoder.passed_through(n as u64);
                            ex.lock().demand = false;
                            ex.notify_app();
                            if self.decoder.passthrough_room(0) == 0 {
                                // All in: the decoder's End marks the body complete.
                                self.absorb_body(&ex, &mut body_done, &mut malformed);
                            }
                        }
                        // The loan ended before anything was read: look again.
                        Ok(Ok(Got::Nothing)) => {}
                        Ok(Err(_)) => {
                            if !body_done {
                                ex.lock().body_error = Some(BodyError::Disconnected);
                            }
                            ex.notify_app();
                            body_done = true;
                            gone = true;
                        }
                        Err(_) => {
                            if !body_done {
                                ex.lock().body_error = Some(BodyError::Timeout);
                                ex.notify_app();
                                body_done = true;
                                gone = true;
                            }
                            // Waiting for the application is not the client's inactivity.
                        }
                    }
                }
            }
            {
                // A park that ended by unpark: resume the handler.
                let mut inner = ex.lock();
                if inner.parked && inner.unparked {
                    inner.parked = false;
                    drop(inner);
                    shared.submit(WorkItem::Resume(Arc::clone(&ex)));
                }
            }
            if gone {
                break;
            }
            // Write whatever the application queued.
            let (start, finished, abort, want_more) = {
                let mut inner = ex.lock();
                let start = inner.start.take();
                if start.is_some() {
                    inner.start_taken = true;
                }
                // Swapped rather than drained into a new vector: the two queues keep
                // their capacity across the turns of a streamed response.
                std::mem::swap(&mut inner.out, &mut chunks);
                inner.out_bytes = 0;
                let want_more = std::mem::take(&mut inner.want_more);
                (start, inner.finished, inner.aborted, want_more)
            };
            if !chunks.is_empty() {
                // A writer waiting for room may go on.
                ex.notify_app();
            }
            if let Some(mut start) = start {
                if malformed.is_some()
                    || (!body_done && !self.can_discard(&ex, expect, continue_sent))
                {
                    start.keep_alive = false;
                }
                writer.begin(&start, ex.head.is_head());
                self.wbuf.clear();
                self.encode_head(&start, ex.head.version == unyoke_http::Version::Http10);
                let (_, body) = start.head_and_inline_body();
                if !body.is_empty() {
                    // (Under the framing: nothing for a HEAD request, cut at the length.)
                    let n = writer.admit_len(body.len() as u64) as usize;
                    self.wbuf.extend_from_slice(&body[..n]);
                }
                head_written = true;
            } else if !head_written && !chunks.is_empty() {
                // Body without a head: a handler bug. Drop it rather than desync.
                chunks.clear();
                continue;
            }
            if head_written
                && (!self.wbuf.is_empty() || !chunks.is_empty() || (finished && !writer.ended))
            {
                let end = finished && !abort;
                match self.write_body(&mut writer, &mut chunks, end).await {
                    // (Not read when the response is over: spare the clock.)
                    Ok(()) if !finished => last_progress = Instant::now(),
                    Ok(()) => {}
                    Err(_) => {
                        gone = true;
                        break;
                    }
                }
                let mut inner = ex.lock();
                inner.written = writer.sent;
                if inner.written_target.is_some_and(|t| writer.sent >= t) {
                    inner.written_target = None;
                    drop(inner);
                    shared.submit(WorkItem::Written(Arc::clone(&ex)));
                }
            }
            if finished {
                aborted = abort || !writer.complete();
                break;
            }
            if want_more {
                shared.submit(WorkItem::Resume(Arc::clone(&ex)));
            }
        }

        if gone {
            ex.lock().gone = true;
        }
        // Wakes an application thread blocked on the body or on output room.
        ex.notify_app();
        if ex.state.lock().is_some() {
            // Only requests that kept something (an iterable to close) need the trip.
            shared.submit(WorkItem::Close(Arc::clone(&ex)));
        }
        // A response never started (client gone first) counts as status 0.
        self.record(&ex, &writer);
        if gone || aborted || malformed.is_some() || !writer.keep_alive {
            return Ok(false);
        }
        if !body_done {
            return Ok(self.discard_body(&ex).await);
        }
        Ok(!self.shared.policy.stopping.load(Ordering::Relaxed))
    }

    /// Counts a finished exchange in the statistics and writes its access-log line.
    fn record(&self, ex: &Exchange<H::State>, writer: &BodyWriter) {
        self.shared
            .stats
            .request_finished(writer.status, ex.started.elapsed());
        if let Some(log) = &self.shared.access_log {
            self.log_request(log, ex, writer);
        }
    }

    /// Ends an exchange the application never saw (the client failed during the body's
    /// pre-read): counted and logged with `status` (0: no response).
    fn abandon(&self, ex: &Exchange<H::State>, status: u16) {
        let writer = BodyWriter {
            status,
            ..BodyWriter::default()
        };
        self.record(ex, &writer);
    }

    /// Whether an unread body is small enough to read and drop after the response.
    fn can_discard(&self, ex: &Exchange<H::State>, expect: bool, continue_sent: bool) -> bool {
        if expect && !continue_sent {
            // The client may be waiting for 100 and never send the body: close.
            return false;
        }
        matches!(ex.head.body, BodyKind::Length(n) if n <= DISCARD_LIMIT)
    }

    async fn discard_body(&mut self, ex: &Exchange<H::State>) -> bool {
        let deadline = Instant::now()
            + self
                .shared
                .config
                .inactivity_timeout
                .min(Duration::from_secs(5));
        loop {
            match self.pump_body(ex) {
                Ok(true) => return true,
                Ok(false) => {}
                Err(_) => return false,
            }
            ex.lock().body.clear();
            self.make_room(BODY_READ_SIZE);
            match timeout_at(deadline, self.io.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return false,
            }
        }
    }

    fn encode_head(&mut self, start: &ResponseStart, http10: bool) {
        let cfg = &self.shared.config;
        let w = &mut self.wbuf;
        w.extend_from_slice(start.head_and_inline_body().0);
        w.extend_from_slice(b"Date: ");
        w.extend_from_slice(&self.shared.date.get());
        w.extend_from_slice(b"\r\n");
        if !cfg.identity.is_empty() {
            w.extend_from_slice(b"Server: ");
            w.extend_from_slice(&cfg.identity);
            w.extend_from_slice(b"\r\n");
        }
        if start.framing == BodyFraming::Chunked {
            w.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
        if !start.keep_alive {
            w.extend_from_slice(b"Connection: close\r\n");
        } else if http10 {
            w.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        w.extend_from_slice(b"\r\n");
    }

    /// Writes the pending head (in `wbuf`) and `chunks` (emptied) with the response's
    /// framing.
    async fn write_body(
        &mut self,
        writer: &mut BodyWriter,
        chunks: &mut VecDeque<OutChunk>,
        end: bool,
    ) -> io::Result<()> {
        let small = chunks.iter().all(|c| match c {
            OutChunk::Data(d) => d.len() <= COALESCE_UP_TO,
            OutChunk::File { .. } => false,
        }) && chunks.len() <= COALESCE_CHUNKS;
        if small {
            // Small pieces are copied after the head and written with one plain write:
            // cheaper than gathering them (the common `[b"Hello"]` response is one write).
            let chunked = writer.framing == Some(BodyFraming::Chunked);
            for chunk in chunks.drain(..) {
                if let OutChunk::Data(d) = chunk {
                    if let Some(d) = writer.admit(d) {
                        if chunked {
                            self.wbuf
                                .extend_from_slice(chunk_header(d.len()).as_bytes());
                            self.wbuf.extend_from_slice(&d);
                            self.wbuf.extend_from_slice(b"\r\n");
                        } else {
                            self.wbuf.extend_from_slice(&d);
                        }
                    }
                }
            }
            if end {
                self.wbuf.extend_from_slice(writer.end());
            }
            if !self.wbuf.is_empty() {
                let limit = self.shared.config.inactivity_timeout;
                timed(self.io.write_all(&self.wbuf), limit).await?;
                self.shared.stats.bytes_out(self.wbuf.len());
            }
            self.wbuf.clear();
            return Ok(());
        }
        let mut headers: Vec<ChunkHeader> = Vec::new();
        let mut datas: Vec<Bytes> = Vec::with_capacity(chunks.len());
        let mut files: Vec<(std::fs::File, u64, u64)> = Vec::new();
        let mut pending_files_after: Vec<usize> = Vec::new();
        for chunk in chunks.drain(..) {
            match chunk {
                OutChunk::Data(d) => {
                    if let Some(d) = writer.admit(d) {
                        if writer.framing == Some(BodyFraming::Chunked) {
                            headers.push(chunk_header(d.len()));
                        }
                        datas.push(d);
                    }
                }
                OutChunk::File { file, offset, len } => {
                    let len = writer.admit_len(len);
                    if len > 0 {
                        pending_files_after.push(datas.len());
                        files.push((file, offset, len));
                    }
                }
            }
        }
        if files.is_empty() {
            let ending: &[u8] = if end { writer.end() } else { b"" };
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(2 + datas.len() * 3);
            if !self.wbuf.is_empty() {
                slices.push(IoSlice::new(&self.wbuf));
            }
            let chunked = writer.framing == Some(BodyFraming::Chunked);
            for (i, d) in datas.iter().enumerate() {
                if chunked {
                    slices.push(IoSlice::new(headers[i].as_bytes()));
                    slices.push(IoSlice::new(d));
                    slices.push(IoSlice::new(b"\r\n"));
                } else {
                    slices.push(IoSlice::new(d));
                }
            }
            if !ending.is_empty() {
                slices.push(IoSlice::new(ending));
            }
            let total: usize = slices.iter().map(|s| s.len()).sum();
            let limit = self.shared.config.inactivity_timeout;
            timed(write_all_vectored(&mut self.io, &mut slices), limit).await?;
            self.shared.stats.bytes_out(total);
            self.wbuf.clear();
            return Ok(());
        }
        // Files among the chunks (rare): boxed, so that its state does not size every
        // exchange's future (it took it over the allocator's small-block limit).
        Box::pin(self.write_in_order(writer, headers, datas, files, pending_files_after, end)).await
    }

    /// Writes the head, data pieces and files in order, one piece at a time.
    async fn write_in_order(
        &mut self,
        writer: &mut BodyWriter,
        headers: Vec<ChunkHeader>,
        datas: Vec<Bytes>,
        files: Vec<(std::fs::File, u64, u64)>,
        pending_files_after: Vec<usize>,
        end: bool,
    ) -> io::Result<()> {
        let head = std::mem::take(&mut self.wbuf);
        if !head.is_empty() {
            self.write_timed(&head).await?;
        }
        let chunked = writer.framing == Some(BodyFraming::Chunked);
        let mut file_iter = files.into_iter();
        let mut next_file_at = pending_files_after.into_iter().peekable();
        for (i, d) in datas.iter().enumerate() {
            while next_file_at.peek() == Some(&i) {
                next_file_at.next();
                if let Some((f, off, len)) = file_iter.next() {
                    self.write_file(&f, off, len, chunked).await?;
                }
            }
            if chunked {
                self.write_timed(headers[i].as_bytes()).await?;
                self.write_timed(d).await?;
                self.write_timed(b"\r\n").await?;
            } else {
                self.write_timed(d).await?;
            }
        }
        for (f, off, len) in file_iter {
            self.write_file(&f, off, len, chunked).await?;
        }
        if end {
            let ending = writer.end();
            if !ending.is_empty() {
                self.write_timed(ending).await?;
            }
        }
        Ok(())
    }

    async fn write_file(
        &mut self,
        file: &std::fs::File,
        offset: u64,
        len: u64,
        chunked: bool,
    ) -> io::Result<()> {
        if chunked {
            self.write_timed(chunk_header(len as usize).as_bytes())
                .await?;
        }
        let sent = self.io.send_file(file, offset, len).await?;
        self.shared.stats.bytes_out(sent as usize);
        if sent < len {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if chunked {
            self.write_timed(b"\r\n").await?;
        }
        Ok(())
    }

    async fn write_timed(&mut self, data: &[u8]) -> io::Result<()> {
        timed(
            self.io.write_all(data),
            self.shared.config.inactivity_timeout,
        )
        .await?;
        self.shared.stats.bytes_out(data.len());
        Ok(())
    }

    /// Sends a plain-text error response with `Connection: close`. Boxed: it is rare, and
    /// inline its state (two buffers and a write timer) would size every connection's
    /// task, idle ones included.
    fn send_simple<'a>(
        &'a mut self,
        status: u16,
        reason: &'a str,
        detail: &'a str,
    ) -> Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(self.send_simple_inner(status, reason, detail))
    }

    async fn send_simple_inner(&mut self, status: u16, reason: &str, detail: &str) {
        let body = format!("{status} {reason}\n{detail}\n");
        let date = self.shared.date.get();
        let mut msg = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\nDate: ",
            body.len()
        )
        .into_bytes();
        msg.extend_from_slice(&date);
        msg.extend_from_slice(b"\r\n");
        if !self.shared.config.identity.is_empty() {
            msg.extend_from_slice(b"Server: ");
            msg.extend_from_slice(&self.shared.config.identity);
            msg.extend_from_slice(b"\r\n");
        }
        msg.extend_from_slice(b"\r\n");
        msg.extend_from_slice(body.as_bytes());
        let _ = self.write_timed(&msg).await;
    }

    async fn send_error(&mut self, e: RequestError) {
        self.send_simple(e.status(), e.reason(), e.detail()).await;
    }

    fn log_request(
        &self,
        log: &crate::access_log::AccessLog,
        ex: &Exchange<H::State>,
        writer: &BodyWriter,
    ) {
        let head = &ex.head;
        let forwarded_for = if self.shared.config.log_x_forwarded_for {
            head.header(b"x-forwarded-for").filter(|v| !v.is_empty())
        } else {
            None
        };
        log.log(&Entry {
            forwarded_for,
            client_ip: match &self.info.peer {
                PeerAddr::Tcp(a) => Some(a.ip()),
                PeerAddr::Unix(_) => None,
            },
            method: head.method(),
            target: head.target(),
            version: head.version.as_str(),
            status: writer.status,
            body_length: writer.sent,
            wall_seconds: ex.started.elapsed().as_secs_f64(),
        });
    }
}

/// What a connection waits for besides the socket and the application.
#[derive(Clone, Copy)]
enum Timer {
    Park,
    Responseless,
    Inactive,
}

/// What an exchange's read of the socket got.
enum Got {
    /// Bytes appended to the connection's buffer (0: the client closed).
    Buffered(usize),
    /// Body bytes written into the memory the application lent (0: the client closed).
    Lent(usize),
    /// Nothing: the loan ended before the socket had bytes.
    Nothing,
}

/// Room left in the memory the application lent for body bytes; 0 if it lent none, or if
/// body bytes are queued (they come first).
fn lent_room(inner: &crate::exchange::Inner) -> usize {
    match &inner.target {
        Some(t) if inner.body.is_empty() => t.len - t.filled,
        _ => 0,
    }
}

/// Reads at most `room` body bytes from `io` straight into the memory the application
/// lent (see `Exchange::try_read_body_into`), under the exchange's lock, so that the
/// application cannot take the memory back in the middle.
fn poll_read_lent<T: Transport, S>(
    io: &mut T,
    ex: &Exchange<S>,
    room: u64,
    cx: &mut Context<'_>,
) -> Poll<io::Result<Got>> {
    let mut inner = ex.lock();
    let free = lent_room(&inner);
    let Some(t) = inner.target.as_mut().filter(|_| free > 0) else {
        return Poll::Ready(Ok(Got::Nothing));
    };
    let cap = free.min(usize::try_from(room).unwrap_or(usize::MAX));
    // SAFETY: the lender keeps `t.len` bytes at `t.ptr` alive and untouched while the
    // loan stands, and it only ends under this lock, which is held until the read is
    // over; `t.filled + cap <= t.len`. ReadBuf treats the memory as uninitialised.
    let mem = unsafe {
        std::slice::from_raw_parts_mut(t.ptr.add(t.filled).cast::<std::mem::MaybeUninit<u8>>(), cap)
    };
    let mut rb = tokio::io::ReadBuf::uninit(mem);
    match Pin::new(io).poll_read(cx, &mut rb) {
        Poll::Ready(Ok(())) => {
            let n = rb.filled().len();
            t.filled += n;
            Poll::Ready(Ok(Got::Lent(n)))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

/// Applies the response framing to the body as it is written.
#[derive(Default)]
struct BodyWriter {
    framing: Option<BodyFraming>,
    status: u16,
    /// Body bytes sent (before framing).
    sent: u64,
    ended: bool,
    keep_alive: bool,
}

impl BodyWriter {
    fn begin(&mut self, start: &ResponseStart, _is_head: bool) {
        self.framing = Some(start.framing);
        self.status = start.status;
        self.keep_alive = start.keep_alive && start.framing != BodyFraming::Close;
    }

    /// The part of `d` that may be sent under the framing (a Content-Length caps it).
    fn admit(&mut self, d: Bytes) -> Option<Bytes> {
        let n = self.admit_len(d.len() as u64) as usize;
        if n == 0 {
            None
        } else if n < d.len() {
            Some(d.slice(..n))
        } else {
            Some(d)
        }
    }

    fn admit_len(&mut self, len: u64) -> u64 {
        let n = match self.framing {
            None | Some(BodyFraming::NoBody) => 0,
            Some(BodyFraming::Length(total)) => len.min(total.saturating_sub(self.sent)),
            Some(BodyFraming::Chunked) | Some(BodyFraming::Close) => len,
        };
        self.sent += n;
        n
    }

    fn end(&mut self) -> &'static [u8] {
        self.ended = true;
        if self.framing == Some(BodyFraming::Chunked) {
            LAST_CHUNK
        } else {
            b""
        }
    }

    /// Whether what was sent is a whole response under its framing.
    fn complete(&self) -> bool {
        match self.framing {
            Some(BodyFraming::Length(total)) => self.sent == total && self.ended,
            Some(BodyFraming::Chunked) => self.ended,
            Some(_) => true,
            None => false,
        }
    }
}

/// Polls `fut` once: its output if it is ready now, else `Pending` (it can be polled on).
async fn poll_once<F: Future + ?Sized>(mut fut: Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await
}

/// Runs `op` (a write) with `limit` as its inactivity timeout. The timer is made only if
/// the first attempt does not finish at once: a write that the socket takes whole (nearly
/// every response) then costs no timer and no clock read. The timer is boxed: it would
/// otherwise size every exchange's future, for the rarer writes that wait.
async fn timed<T, F: Future<Output = io::Result<T>>>(op: F, limit: Duration) -> io::Result<T> {
    tokio::pin!(op);
    match poll_once(op.as_mut()).await {
        Poll::Ready(r) => r,
        Poll::Pending => match Box::pin(timeout_at(Instant::now() + limit, op)).await {
            Ok(r) => r,
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        },
    }
}

/// Writes every slice, advancing through partial writes.
async fn write_all_vectored<T: AsyncWrite + Unpin>(
    io: &mut T,
    mut slices: &mut [IoSlice<'_>],
) -> io::Result<()> {
    while !slices.is_empty() {
        let n = std::future::poll_fn(|cx: &mut Context<'_>| -> Poll<io::Result<usize>> {
            Pin::new(&mut *io).poll_write_vectored(cx, slices)
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{BufferPool, HandlerCache, BUFFER_POOL_MAX, HEAD_READ_SIZE, KEEP_BUFFER_UP_TO};
    use bytes::BytesMut;

    #[test]
    fn buffer_pool_keeps_only_empty_small_buffers_and_at_most_its_bound() {
        let pool = BufferPool::default();
        let mut holding = BytesMut::with_capacity(HEAD_READ_SIZE);
        holding.extend_from_slice(b"GET");
        pool.give(holding); // Bytes of a pipelined request: never shared.
        pool.give(BytesMut::with_capacity(KEEP_BUFFER_UP_TO + 1)); // A body's: freed.
        pool.give(BytesMut::new()); // Nothing to keep.
        assert_eq!(pool.take().capacity(), 0, "nothing was pooled");
        for _ in 0..BUFFER_POOL_MAX + 5 {
            pool.give(BytesMut::with_capacity(HEAD_READ_SIZE));
        }
        let mut taken = 0;
        while pool.take().capacity() >= HEAD_READ_SIZE {
            taken += 1;
        }
        assert_eq!(taken, BUFFER_POOL_MAX);
        pool.give(BytesMut::with_capacity(HEAD_READ_SIZE));
        pool.clear();
        assert_eq!(pool.take().capacity(), 0, "cleared");
    }

    #[test]
    fn handler_cache_keeps_the_first_value_and_copies_start_empty() {
        let cache = HandlerCache::default();
        let failed: Result<Option<&u32>, &str> = cache.get_or_try_init(|| Err("no"));
        assert_eq!(failed, Err("no"));
        assert_eq!(cache.get_or_try_init(|| Ok::<_, ()>(7u32)), Ok(Some(&7)));
        assert_eq!(cache.get_or_try_init(|| Ok::<_, ()>(8u32)), Ok(Some(&7)));
        // Asked for another type: nothing (the kept value stays).
        assert_eq!(cache.get_or_try_init(|| Ok::<_, ()>("x")), Ok(None));
        let copy = cache.clone();
        assert_eq!(copy.get_or_try_init(|| Ok::<_, ()>(9u32)), Ok(Some(&9)));
    }
}
