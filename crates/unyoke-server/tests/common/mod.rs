//! Test fixtures for the engine: a gate that behaves like the GIL, a handler whose
//! behaviour is chosen by the request path, an engine on 127.0.0.1, and a raw client.

#![allow(dead_code)] // Each test binary uses a different part of the fixtures.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use unyoke_http::plan_response;
use unyoke_server::{
    BodyError, BodyRead, Config, Engine, Exchange, Gate, Handler, Listener, ListenerKind, OutChunk,
    PeerAddr, ResponseStart, OUTPUT_HIGH_WATER,
};

/// Bound on every socket operation of the test client.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

// ----- the gate -----

thread_local! {
    /// Whether this thread holds a [`TestGate`] (a dispatch thread serves one engine).
    static HOLDING: Cell<bool> = const { Cell::new(false) };
}

/// A lock released and re-taken by the thread that holds it, like the GIL. As with the
/// GIL binding (`unyoke-py/src/gate.rs`), releasing a gate not held and acquiring a gate
/// already held are no-ops; they are counted, since the dispatcher should not do either.
#[derive(Default)]
pub struct TestGate {
    held: Mutex<bool>,
    free: Condvar,
    /// `release` without holding, or `acquire` while holding.
    pub unbalanced: AtomicUsize,
}

impl TestGate {
    /// Whether the calling thread holds the gate.
    pub fn held_here(&self) -> bool {
        HOLDING.with(Cell::get)
    }
}

impl Gate for TestGate {
    fn run_thread(&self, body: &mut dyn FnMut()) {
        self.acquire();
        body();
        self.release();
    }

    fn release(&self) {
        if !HOLDING.with(Cell::get) {
            self.unbalanced.fetch_add(1, Ordering::Relaxed);
            return;
        }
        HOLDING.with(|h| h.set(false));
        *self.held.lock() = false;
        self.free.notify_one();
    }

    fn acquire(&self) {
        if HOLDING.with(Cell::get) {
            self.unbalanced.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut held = self.held.lock();
        while *held {
            self.free.wait(&mut held);
        }
        *held = true;
        HOLDING.with(|h| h.set(true));
    }
}

// ----- the handler -----

/// What the handler saw, for the tests to check.
#[derive(Default)]
pub struct Probe {
    /// `Handler::call` invocations.
    pub calls: AtomicUsize,
    /// `Handler::resume` invocations.
    pub resumes: AtomicUsize,
    /// Exchanges whose handler kept state (so `Handler::close` is due).
    pub kept: AtomicUsize,
    /// `Handler::close` invocations.
    pub closes: AtomicUsize,
    /// Handlers now inside a `/sleep` (gate released).
    pub sleeping: AtomicUsize,
    /// Handler code run without the gate, or two handlers running at once.
    pub violations: AtomicUsize,
    /// Handlers now waiting for body bytes (gate released).
    pub body_waiting: AtomicUsize,
    /// Times `/big` waited for the output to drain.
    pub write_waits: AtomicUsize,
    /// `/big` found the client gone (from `wait_writable` or `send`).
    pub write_gone: AtomicUsize,
    /// Body errors the handler was told about.
    pub body_errors: Mutex<Vec<BodyError>>,
    /// A handler is running application code (holding the gate) right now.
    inside: AtomicBool,
}

impl Probe {
    fn enter(&self, gate: &TestGate) {
        if !gate.held_here() || self.inside.swap(true, Ordering::AcqRel) {
            self.violations.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn leave(&self) {
        self.inside.store(false, Ordering::Release);
    }

    /// Asserts that the handler always ran holding the gate, alone, and that every
    /// exchange that kept state was closed once.
    pub fn check(&self) {
        assert_eq!(
            self.violations.load(Ordering::Relaxed),
            0,
            "handler code ran without the gate, or concurrently with other handler code, \
             or was resumed or closed when it should not have been"
        );
        assert_eq!(
            self.kept.load(Ordering::Relaxed),
            self.closes.load(Ordering::Relaxed),
            "every exchange that kept state must be closed, once"
        );
    }

    /// Waits until `count` handlers are inside `/sleep`; false after `within`.
    pub fn wait_sleeping(&self, count: usize, within: Duration) -> bool {
        Self::wait_count(&self.sleeping, count, within)
    }

    /// Waits until `count` handlers wait for body bytes; false after `within`.
    pub fn wait_body_waiting(&self, count: usize, within: Duration) -> bool {
        Self::wait_count(&self.body_waiting, count, within)
    }

    fn wait_count(counter: &AtomicUsize, count: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while counter.load(Ordering::Acquire) < count {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(2));
        }
        true
    }
}

/// Responds according to the request path:
///
/// - `/hello`: 200, `Content-Length: 5`, `hello`.
/// - `/echo`: reads the whole body (releasing the gate while it waits, as `wsgi.input`
///   releases the GIL) and answers with it.
/// - `/stream`: no Content-Length; chunks sent over a call and one `resume`.
/// - `/sleep?ms=N`: releases the gate for N ms (as CPython does around `time.sleep`).
/// - `/fail`: `Content-Length: 10`, 5 bytes, then `abort()`.
/// - `/fail-chunked`: no Content-Length, one chunk, then `abort()`.
/// - `/short`: `Content-Length: 10`, 5 bytes, then `finish()` (a handler bug).
/// - `/long`: `Content-Length: 5`, 11 bytes, then `finish()` (a handler bug).
/// - `/big?mb=N`: N MiB ([`BIG_LEN`] without `mb`) of [`big_body`], with Content-Length,
///   sent in 64 KiB pieces; waits (gate released) with `wait_writable` whenever the
///   queue passes the high-water mark.
/// - `/is-started`: calls `Exchange::is_started` before and after starting.
/// - `/whoami`: `<peer> <local>` (`unix:<path>` for a UNIX socket).
/// - anything else: 404.
pub struct TestHandler {
    gate: Arc<TestGate>,
    probe: Arc<Probe>,
}

/// Chunks of `/stream`: the call sends `STREAM_CALL` (with an empty chunk in the
/// middle, which must not end a chunked body), the resume sends `STREAM_RESUME`.
pub const STREAM_CALL: [&[u8]; 3] = [b"one\n", b"", b"two\n"];
/// See [`STREAM_CALL`].
pub const STREAM_RESUME: &[u8] = b"three\n";
/// The whole `/stream` body.
pub const STREAM_BODY: &[u8] = b"one\ntwo\nthree\n";

/// Length of the `/big` body without `mb=`.
pub const BIG_LEN: usize = 4 * 1024 * 1024;

/// The bytes `range` of a `/big` body: they show where a piece went missing or repeated.
pub fn big_body(range: std::ops::Range<usize>) -> Vec<u8> {
    range.map(|i| (i % 253) as u8).collect()
}

/// The number after `key` in a query string such as `ms=300`.
fn query_number(query: &[u8], key: &str) -> Option<u64> {
    std::str::from_utf8(query)
        .ok()?
        .strip_prefix(key)?
        .parse()
        .ok()
}

type Ex = Arc<Exchange<u32>>;

/// A response head built like the binding's `prepare_head`: status line, the handler's
/// headers, and the framing `plan_response` chooses.
fn response_start(ex: &Exchange<u32>, status: u16, content_length: Option<u64>) -> ResponseStart {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        413 => "Content Too Large",
        _ => "Other",
    };
    let mut head = format!("HTTP/1.1 {status} {reason}\r\n").into_bytes();
    if let Some(n) = content_length {
        unyoke_http::write_header(&mut head, b"Content-Length", n.to_string().as_bytes());
    }
    let plan = plan_response(
        ex.head.is_head(),
        ex.head.version,
        ex.keep_alive(),
        status,
        content_length,
    );
    ResponseStart {
        head,
        status,
        framing: plan.body,
        keep_alive: plan.keep_alive,
        inline_body: 0,
    }
}

fn respond_bytes(ex: &Exchange<u32>, status: u16, body: &[u8]) {
    let start = response_start(ex, status, Some(body.len() as u64));
    ex.respond(start, [OutChunk::Data(Bytes::copy_from_slice(body))]);
}

impl TestHandler {
    fn path(ex: &Exchange<u32>) -> (&[u8], &[u8]) {
        let target = ex.head.target();
        match target.iter().position(|&b| b == b'?') {
            Some(q) => (&target[..q], &target[q + 1..]),
            None => (target, b""),
        }
    }

    fn echo(&self, ex: &Ex) {
        let mut body = Vec::new();
        loop {
            match ex.try_read_body(64 * 1024) {
                BodyRead::Data(d) => body.extend_from_slice(&d),
                BodyRead::Eof => break,
                BodyRead::Pending if ex.must_drive() => {
                    // The sequence of `Input::next_chunk` when no thread could take
                    // over: drive the engine from here, gate held (but no handler code
                    // runs meanwhile, and the gate may be lent to other threads).
                    self.probe.leave();
                    self.probe.body_waiting.fetch_add(1, Ordering::AcqRel);
                    ex.drive_until_body();
                    self.probe.body_waiting.fetch_sub(1, Ordering::AcqRel);
                    self.probe.enter(&self.gate);
                }
                BodyRead::Pending => {
                    // The sequence of `Input::next_chunk` under `py.allow_threads`.
                    self.probe.leave();
                    self.gate.release();
                    self.probe.body_waiting.fetch_add(1, Ordering::AcqRel);
                    ex.wait_body();
                    self.probe.body_waiting.fetch_sub(1, Ordering::AcqRel);
                    self.gate.acquire();
                    ex.gate_taken();
                    self.probe.enter(&self.gate);
                }
                BodyRead::Error(e) => {
                    self.probe.body_errors.lock().push(e);
                    match e {
                        BodyError::Malformed(status) => {
                            let mut start = response_start(ex, status, Some(0));
                            start.keep_alive = false;
                            ex.respond(start, []);
                        }
                        BodyError::Disconnected | BodyError::Timeout => ex.abort(),
                    }
                    return;
                }
            }
        }
        respond_bytes(ex, 200, &body);
    }

    fn big(&self, ex: &Ex, query: &[u8]) {
        const PIECE: usize = 64 * 1024;
        let len = query_number(query, "mb=").map_or(BIG_LEN, |mb| mb as usize * 1024 * 1024);
        ex.start(response_start(ex, 200, Some(len as u64)));
        for at in (0..len).step_by(PIECE) {
            if ex.queued_bytes() >= OUTPUT_HIGH_WATER {
                self.probe.write_waits.fetch_add(1, Ordering::Relaxed);
                self.probe.leave();
                let alive = if ex.must_drive() {
                    ex.drive_until_writable()
                } else {
                    self.gate.release();
                    let alive = ex.wait_writable();
                    self.gate.acquire();
                    ex.gate_taken();
                    alive
                };
                self.probe.enter(&self.gate);
                if !alive {
                    self.probe.write_gone.fetch_add(1, Ordering::Relaxed);
                    ex.abort();
                    return;
                }
            }
            let piece = Bytes::from(big_body(at..(at + PIECE).min(len)));
            if !ex.send(OutChunk::Data(piece)) {
                self.probe.write_gone.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        ex.finish();
    }

    fn sleep(&self, ex: &Ex, query: &[u8]) {
        let ms = query_number(query, "ms=").unwrap_or(300);
        self.probe.leave();
        self.gate.release();
        self.probe.sleeping.fetch_add(1, Ordering::AcqRel);
        thread::sleep(Duration::from_millis(ms));
        self.probe.sleeping.fetch_sub(1, Ordering::AcqRel);
        self.gate.acquire();
        self.probe.enter(&self.gate);
        respond_bytes(ex, 200, b"slept");
    }
}

impl Handler for TestHandler {
    type State = u32;

    fn call(&self, ex: &Ex) {
        self.probe.enter(&self.gate);
        self.probe.calls.fetch_add(1, Ordering::Relaxed);
        let (path, query) = Self::path(ex);
        match path {
            b"/hello" => respond_bytes(ex, 200, b"hello"),
            b"/earlier" => respond_bytes(ex, 200, ex.earlier_requests.to_string().as_bytes()),
            b"/echo" => self.echo(ex),
            b"/sleep" => self.sleep(ex, query),
            b"/big" => self.big(ex, query),
            b"/stream" => {
                *ex.state.lock() = Some(0);
                self.probe.kept.fetch_add(1, Ordering::Relaxed);
                ex.start(response_start(ex, 200, None));
                for chunk in STREAM_CALL {
                    ex.send(OutChunk::Data(Bytes::from_static(chunk)));
                }
                ex.want_more();
            }
            b"/fail" => {
                ex.start(response_start(ex, 200, Some(10)));
                ex.send(OutChunk::Data(Bytes::from_static(b"12345")));
                ex.abort();
            }
            b"/fail-chunked" => {
                ex.start(response_start(ex, 200, None));
                ex.send(OutChunk::Data(Bytes::from_static(b"part")));
                ex.abort();
            }
            b"/short" => {
                ex.start(response_start(ex, 200, Some(10)));
                ex.send(OutChunk::Data(Bytes::from_static(b"12345")));
                ex.finish();
            }
            b"/long" => {
                ex.start(response_start(ex, 200, Some(5)));
                ex.send(OutChunk::Data(Bytes::from_static(b"hello world")));
                ex.finish();
            }
            b"/is-started" => {
                let before = ex.is_started();
                ex.start(response_start(ex, 200, Some(2)));
                let after = ex.is_started();
                let body: &'static [u8] = match (before, after) {
                    (false, true) => b"ok",
                    _ => b"no",
                };
                ex.send(OutChunk::Data(Bytes::from_static(body)));
                ex.finish();
            }
            b"/whoami" => {
                let show = |a: &PeerAddr| match a {
                    PeerAddr::Tcp(a) => a.to_string(),
                    PeerAddr::Unix(p) => format!("unix:{p}"),
                };
                let body = format!("{} {}", show(&ex.conn.peer), show(&ex.conn.local));
                respond_bytes(ex, 200, body.as_bytes());
            }
            _ => respond_bytes(ex, 404, b"not found"),
        }
        self.probe.leave();
    }

    fn resume(&self, ex: &Ex) {
        self.probe.enter(&self.gate);
        self.probe.resumes.fetch_add(1, Ordering::Relaxed);
        let resumed = {
            let mut state = ex.state.lock();
            let n = state.get_or_insert(0);
            *n += 1;
            *n
        };
        if resumed == 1 {
            ex.send(OutChunk::Data(Bytes::from_static(STREAM_RESUME)));
            ex.finish();
        } else {
            // Resumed twice for one want_more: cut the response so the test notices.
            self.probe.violations.fetch_add(1, Ordering::Relaxed);
            ex.abort();
        }
        self.probe.leave();
    }

    fn close(&self, ex: &Ex) {
        self.probe.enter(&self.gate);
        if ex.state.lock().is_none() {
            // The engine closes only exchanges that kept something.
            self.probe.violations.fetch_add(1, Ordering::Relaxed);
        }
        self.probe.closes.fetch_add(1, Ordering::Relaxed);
        self.probe.leave();
    }
}

// ----- the engine -----

/// An engine serving [`TestHandler`] on 127.0.0.1, run on a background thread.
pub struct Server {
    pub engine: Arc<Engine<TestHandler>>,
    pub addr: SocketAddr,
    pub probe: Arc<Probe>,
    pub gate: Arc<TestGate>,
    /// How many times `run` called its tick (every hour, or at once after `tick_now`).
    pub ticks: Arc<AtomicUsize>,
    done: mpsc::Receiver<io::Result<()>>,
    finished: bool,
}

/// A config with short timeouts, so that a failing test fails fast.
pub fn test_config() -> Config {
    Config {
        identity: b"unyoke-test".to_vec(),
        header_timeout: Duration::from_secs(3),
        keepalive_timeout: Duration::from_secs(3),
        inactivity_timeout: Duration::from_secs(3),
        threads: 8,
        ..Config::default()
    }
}

impl Server {
    /// Binds 127.0.0.1:0, builds the engine and runs it on a thread.
    pub fn start(config: Config) -> Server {
        Server::start_with(config, None)
    }

    /// Like [`Server::start`], also listening on the UNIX socket `unix_path`.
    pub fn start_with(config: Config, unix_path: Option<&std::path::Path>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let mut listeners = vec![Listener::from_fd(
            listener.as_raw_fd(),
            ListenerKind::Tcp,
            format!("http://{addr}"),
        )
        .expect("Listener::from_fd")];
        // The engine owns a duplicate: close ours, so that a stopped engine refuses.
        drop(listener);
        if let Some(path) = unix_path {
            let unix = std::os::unix::net::UnixListener::bind(path).expect("bind a UNIX socket");
            listeners.push(
                Listener::from_fd(
                    unix.as_raw_fd(),
                    ListenerKind::Unix,
                    format!("unix:{}", path.display()),
                )
                .expect("Listener::from_fd"),
            );
        }
        let gate = Arc::new(TestGate::default());
        let probe = Arc::new(Probe::default());
        let handler = TestHandler {
            gate: Arc::clone(&gate),
            probe: Arc::clone(&probe),
        };
        let gate_dyn: Arc<dyn Gate> = gate.clone();
        let engine =
            Arc::new(Engine::new(config, listeners, handler, gate_dyn).expect("Engine::new"));
        let (tx, done) = mpsc::channel();
        let runner = Arc::clone(&engine);
        let ticks = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&ticks);
        thread::Builder::new()
            .name("engine-run".into())
            .spawn(move || {
                let tick = || {
                    counted.fetch_add(1, Ordering::SeqCst);
                    true
                };
                let _ = tx.send(runner.run(Duration::from_secs(3600), tick));
            })
            .expect("spawn the engine thread");
        Server {
            engine,
            addr,
            probe,
            gate,
            ticks,
            done,
            finished: false,
        }
    }

    /// A client connected to the server.
    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Waits for `run` to return; false after `within`.
    pub fn wait_run_returned(&mut self, within: Duration) -> bool {
        match self.done.recv_timeout(within) {
            Ok(result) => {
                result.expect("Engine::run failed");
                self.finished = true;
                true
            }
            Err(_) => false,
        }
    }

    /// Graceful shutdown; asserts that `run` returns, then [`Probe::check`].
    pub fn stop(mut self) {
        self.engine.shutdown(Duration::from_secs(1));
        assert!(
            self.wait_run_returned(Duration::from_secs(4)),
            "Engine::run did not return after shutdown"
        );
        self.probe.check();
        assert_eq!(
            self.gate.unbalanced.load(Ordering::Relaxed),
            0,
            "the dispatcher released a gate it did not hold, or acquired one it held"
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.finished {
            // A test failed (or stop() was not called): stop without grace and without
            // waiting forever, so that one failure does not hang the whole run.
            self.engine.shutdown(Duration::ZERO);
            let _ = self.done.recv_timeout(Duration::from_secs(4));
        }
    }
}

// ----- the client -----

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status_line: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The value of the only header named `name` (case-insensitive); panics if repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut found = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str());
        let first = found.next();
        assert!(found.next().is_none(), "header {name} repeated in {self:?}");
        first
    }

    /// Whether the response says the connection closes.
    pub fn says_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// How to read a response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Any method but HEAD.
    Get,
    /// HEAD: no body whatever the headers say.
    Head,
}

/// A raw HTTP client over a blocking socket with timeouts.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
    /// How the server closed: "EOF" or "reset" (for failure messages).
    pub closed_by: &'static str,
}

impl Client {
    /// Connects, with [`IO_TIMEOUT`] on every read and write.
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Client {
            stream,
            buf: Vec::new(),
            eof: false,
            closed_by: "",
        }
    }

    /// Sends bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the server");
    }

    /// Changes the read timeout.
    pub fn read_timeout(&mut self, t: Duration) {
        self.stream.set_read_timeout(Some(t)).expect("timeout");
    }

    /// Reads more bytes into the buffer: Ok(0) at EOF (a reset counts as EOF).
    fn fill(&mut self) -> io::Result<usize> {
        if self.eof {
            return Ok(0);
        }
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => {
                self.eof = true;
                self.closed_by = "EOF";
                Ok(0)
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                self.eof = true;
                self.closed_by = "reset";
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }

    fn fill_or_panic(&mut self, what: &str) -> usize {
        match self.fill() {
            Ok(n) => n,
            Err(e) => panic!(
                "reading {what}: {e} (have {:?})",
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// Reads a response head; None if the connection closed before any byte of it.
    pub fn try_read_head(&mut self) -> Option<Response> {
        let end = loop {
            if let Some(pos) = find(&self.buf, b"\r\n\r\n") {
                break pos;
            }
            if self.fill_or_panic("a response head") == 0 {
                assert!(
                    self.buf.is_empty(),
                    "connection closed inside a response head: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                return None;
            }
        };
        let head: Vec<u8> = self.buf.drain(..end + 4).collect();
        let text = String::from_utf8(head).expect("response head is ASCII");
        let mut lines = text[..end].split("\r\n");
        let status_line = lines.next().expect("status line").to_string();
        let status = status_line
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        assert!(
            status_line.starts_with("HTTP/1.1 ") || status_line.starts_with("HTTP/1.0 "),
            "bad status line {status_line:?}"
        );
        let headers = lines
            .map(|l| {
                let (n, v) = l
                    .split_once(':')
                    .unwrap_or_else(|| panic!("bad header line {l:?}"));
                (n.to_string(), v.trim().to_string())
            })
            .collect();
        Some(Response {
            status_line,
            status,
            headers,
            body: Vec::new(),
        })
    }

    /// Reads a response head (panics if the connection closed first).
    pub fn read_head(&mut self) -> Response {
        match self.try_read_head() {
            Some(r) => r,
            None => panic!("connection closed ({}) before a response", self.closed_by),
        }
    }

    /// Reads exactly `n` bytes.
    pub fn read_exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(
                self.fill_or_panic("a body") > 0,
                "connection closed after {} of {n} bytes",
                self.buf.len()
            );
        }
        self.buf.drain(..n).collect()
    }

    fn read_line(&mut self) -> Vec<u8> {
        loop {
            if let Some(pos) = find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..pos + 2).collect();
                return line[..pos].to_vec();
            }
            assert!(
                self.fill_or_panic("a chunk line") > 0,
                "connection closed inside a chunked body"
            );
        }
    }

    /// Reads a chunked body strictly (sizes, CRLFs, last chunk, no trailers).
    pub fn read_chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line();
            let line = std::str::from_utf8(&line).expect("chunk size line is ASCII");
            let size = usize::from_str_radix(line, 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
            if size == 0 {
                let end = self.read_line();
                assert!(end.is_empty(), "unexpected trailer {end:?}");
                return body;
            }
            body.extend(self.read_exact(size));
            assert_eq!(
                self.read_exact(2),
                b"\r\n",
                "chunk data not followed by CRLF"
            );
        }
    }

    /// Reads until the server closes; returns what came.
    pub fn read_to_close(&mut self) -> Vec<u8> {
        while self.fill_or_panic("until the server closes") > 0 {}
        std::mem::take(&mut self.buf)
    }

    /// Reads one whole response.
    pub fn read_response_to(&mut self, request: Request) -> Response {
        let mut r = self.read_head();
        let bodiless = request == Request::Head
            || (100..200).contains(&r.status)
            || r.status == 204
            || r.status == 304;
        if bodiless {
            return r;
        }
        if let Some(te) = r.header("transfer-encoding") {
            assert_eq!(te, "chunked", "unexpected Transfer-Encoding");
            assert!(r.header("content-length").is_none(), "CL with TE");
            r.body = self.read_chunked();
        } else if let Some(cl) = r.header("content-length") {
            let n = cl.parse().expect("numeric Content-Length");
            r.body = self.read_exact(n);
        } else {
            r.body = self.read_to_close();
        }
        r
    }

    /// Reads one whole response to a request other than HEAD.
    pub fn read_response(&mut self) -> Response {
        self.read_response_to(Request::Get)
    }

    /// Asserts that the server closes the connection without sending anything more.
    pub fn expect_closed(&mut self) {
        let rest = self.read_to_close();
        assert!(
            rest.is_empty(),
            "expected the connection to close, got {:?}",
            String::from_utf8_lossy(&rest)
        );
    }

    /// Asserts that nothing arrives for `wait` (and the connection stays open).
    pub fn expect_silence(&mut self, wait: Duration) {
        self.read_timeout(wait);
        match self.fill() {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Ok(0) => panic!("the server closed the connection"),
            Ok(_) => panic!(
                "expected nothing, got {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
            Err(e) => panic!("read error: {e}"),
        }
        self.read_timeout(IO_TIMEOUT);
    }
}

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// How many times `needle` occurs in `hay`.
pub fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

/// Whether `s` is an IMF-fixdate (RFC 9110 §5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`,
/// within a few seconds of now.
pub fn is_current_imf_fixdate(s: &str) -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    (now.saturating_sub(3)..=now + 1).any(|t| unyoke_http::http_date(t) == s.as_bytes())
        && is_imf_fixdate_shape(s)
}

/// The shape of an IMF-fixdate, checked independently of the codec's formatter.
pub fn is_imf_fixdate_shape(s: &str) -> bool {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    b.len() == 29
        && DAYS.contains(&&s[0..3])
        && &s[3..5] == ", "
        && digits(5..7)
        && b[7] == b' '
        && MONTHS.contains(&&s[8..11])
        && b[11] == b' '
        && digits(12..16)
        && b[16] == b' '
        && digits(17..19)
        && b[19] == b':'
        && digits(20..22)
        && b[22] == b':'
        && digits(23..25)
        && &s[25..] == " GMT"
}

/// A GET request for `path` on HTTP/1.1.
pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").into_bytes()
}

/// A POST of `body` with Content-Length on HTTP/1.1.
pub fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// Writes `bytes` on a clone of the stream from another thread, ignoring errors (the
/// server may refuse and close before reading it all).
pub fn send_in_background(stream: &TcpStream, bytes: Vec<u8>) -> thread::JoinHandle<()> {
    let mut s = stream.try_clone().expect("clone the stream");
    thread::spawn(move || {
        let _ = s.write_all(&bytes);
    })
}
