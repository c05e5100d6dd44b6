//! The engine over real sockets on 127.0.0.1: framing, persistence, limits, timeouts,
//! dispatch, shutdown. The handler and the client are in `common/mod.rs`.
//!
//! Timeouts and dispatch are observable only in time, so those tests assert generous
//! time bounds (the one exception to "tests never assert a timing"); every socket
//! operation is bounded, so a broken engine fails a test instead of hanging the run.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    big_body, count, get, is_current_imf_fixdate, is_imf_fixdate_shape, post, send_in_background,
    test_config, Client, Request, Server, BIG_LEN, IO_TIMEOUT, STREAM_BODY,
};
use unyoke_http::Limits;
use unyoke_server::{BodyError, Config};

// ----- 1. a plain response -----

#[test]
fn hello_has_exact_head_date_and_server() {
    let server = Server::start(test_config());
    let mut c = server.client();
    c.send(&get("/hello"));
    let r = c.read_response();
    assert_eq!(r.status_line, "HTTP/1.1 200 OK");
    assert_eq!(r.header("content-length"), Some("5"));
    assert_eq!(r.body, b"hello");
    assert_eq!(r.header("server"), Some("unyoke-test"));
    let date = r.header("date").expect("a Date header");
    assert!(
        is_imf_fixdate_shape(date),
        "Date {date:?} is not IMF-fixdate"
    );
    assert!(is_current_imf_fixdate(date), "Date {date:?} is not now");
    // Persistent by default on HTTP/1.1: no Connection header, no chunking.
    assert_eq!(r.header("connection"), None);
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.headers.len(), 3, "unexpected headers in {r:?}");
    drop(c);
    server.stop();
}

#[test]
fn empty_identity_sends_no_server_header() {
    let server = Server::start(Config {
        identity: Vec::new(),
        ..test_config()
    });
    let mut c = server.client();
    c.send(&get("/hello"));
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("server"), None);
    drop(c);
    server.stop();
}

#[test]
fn unknown_path_is_404_and_connection_persists() {
    let server = Server::start(test_config());
    let mut c = server.client();
    c.send(&get("/nope"));
    let r = c.read_response();
    assert_eq!(r.status_line, "HTTP/1.1 404 Not Found");
    assert_eq!(r.body, b"not found");
    c.send(&get("/hello"));
    assert_eq!(c.read_response().body, b"hello");
    drop(c);
    server.stop();
}

// ----- 2. persistence -----

#[test]
fn keep_alive_serves_two_requests_on_one_connection() {
    let server = Server::start(test_config());
    let mut c = server.client();
    c.send(&get("/hello"));
    let first = c.read_response();
    c.send(&get("/hello"));
    let second = c.read_response();
    assert_eq!((first.status, &first.body[..]), (200, &b"hello"[..]));
    assert_eq!((second.status, &second.body[..]), (200, &b"hello"[..]));
    assert_eq!(server.probe.calls.load(Ordering::Relaxed), 2);
    assert_eq!(server.engine.stats().open_connections, 1);
    drop(c);
    server.stop();
}

#[test]
fn http10_without_keep_alive_closes_after_the_response() {
    let server = Server::start(test_config());
    let mut c = server.client();
    c.send(b"GET /hello HTTP/1.0\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello");
    assert!(r.says_close(), "HTTP/1.0 response must say close: {r:?}");
    c.expect_closed();
    server.stop();
}

#[test]
fn http10_with_keep_alive_persists_and_says_so() {
    let server = Server::start(test_config());
    let mut c = server.client();
    c.send(b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.body, b"hello");
    assert_eq!(r.header("connection"), Some("keep-alive"));
    c.send(b"GET /hello HTTP/1.0\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.body, b"hello");
    c.expect_closed();
    server.stop();
}

#[test]
fn connection_close_is_honoured() {
    let server = Server::start(test_config());
    let mut c = server.client();
    c.send(b"GET /hello HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.body, b"hello");
    assert!(r.says_close(), "{r:?}");
    c.expect_closed();
    server.stop();
}

#[test]
fn keepalive_setting_off_closes_every_connection() {
    let server = Server::start(Config {
        keepalive: false,
        ..test_config()
    });
    let mut c = server.client();
    c.send(&get("/hello"));
    let r = c.read_response();
    assert_eq!(r.body, b"hello");
    assert!(r.says_close(), "{r:?}");
    c.expect_closed();
    server.stop();
}

#[test]
fn client_half_close_after_request_still_gets_the_response() {
    let server = Server::start(test_config());
    let mut c = server.client();
    c.send(&get("/sleep?ms=50"));
    c.stream
        .shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    let r = c.read_response();
    assert_eq!(r.body, b"slept");
    c.expect_closed();
    server.stop();
}

#[test]
fn request_pipelined_after_connection_close_is_not_answered() {
    let server = Server::start(test_config());
    let mut c = server.client();
    let mut req = b"GET /hello HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".to_vec();
    req.extend(get("/hello"));
    c.send(&req);
    let all = c.read_to_close();
    assert_eq!(
        count(&all, b"HTTP/1.1 "),
        1,
        "{:?}",
        String::from_utf8_lossy(&all)
    );
    assert!(
        all.ends_with(b"\r\n\r\nhello"),
        "{:?}",
        String::from_utf8_lossy(&all)
    );
    server.stop();
}

// ----- 3. pipelining -----

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = Server::start(test_config());
    let mut c = server.client();
    let mut batch = get("/sleep?ms=50");
    batch.extend(post("/echo", b"second"));
    batch.extend(get("/stream"));
    batch.extend(get("/hello"));
    c.send(&batch);
    assert_eq!(c.read_response().body, b"slept");
    assert_eq!(c.read_response().body, b"second");
    assert_eq!(c.read_response().body, STREAM_BODY);
    assert_eq!(c.read_response().body, b"hello");
    c.expect_silence(Duration::from_millis(100));
    drop(c);
    server.stop();
}

#[test]
fn fifty_pipelined_requests_in_one_write() {
    let server = Server::start(test_config());
    let mut c = server.client();
    let mut batch = Vec::new();
    for i in 0..50 {
        batch.extend(post("/echo", format!("request {i}").as_bytes()));
    }
    let writer = send_in_background(&c.stream, batch);
    for i in 0..50 {
        assert_eq!(c.read_response().body, format!("request {i}").as_bytes());
    }
    writer.join().expect("writer thread");
    drop(c);
    server.stop();
}

// ----- 4. request bodies -----

#[test]
fn echo_small_content_length_body() {
    let server = Server::start(test_config());
    let mut c = server.client();
    c.send(&post("/echo", b"hello, body"));
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello, body");
    drop(c);
    server.stop();
}

#[test]
fn echo_one_mebibyte_body() {
    let server = Server::start(test_config());
    let mut c = server.client();
    let body: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let writer = send_in_background(&c.stream, post("/echo", &body));
    let r = c.read_response();
    writer.join().expect("writer thread");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("1048576"));
    assert!(r.body == body, "the 1 MiB body came back different");
    // The connection is still in step.
    c.send(&get("/hello"));
    assert_eq!(c.read_response().body, b"hello");
    drop(c);
    server.stop();
}

#[test]
fn echo_chunked_body() {
    let server = Server::start(test_config());
    let mut c = server.client();
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n",
    );
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello world");
    c.send(&get("/hello"));
    assert_eq!(c.read_response().body, b"hello");
    drop(c);
    server.stop();
}

#[test]
fn echo_body_arriving_in_slow_pieces() {
    // The handler finds nothing buffered and waits (gate released) several times.
    let server = Server::start(test_config());
    let mut c = server.client();
    c.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n");
    for piece in [&b"3\r\nabc\r\n"[..], b"3\r\ndef\r\n", b"0\r\n\r\n"] {
        thread::sleep(Duration::from_millis(30));
        c.send(piece);
    }
    let r = c.read_response();
    assert_eq!(r.body, b"abcdef");
    drop(c);
    server.stop();
}

#[test]
fn unread_small_body_is_discarded_and_connection_persists() {
    let server = Server::start(test_config());
    let mut c = server.client();
    let mut req = post("/hello", &[b'x'; 1000]);
    req.extend(get("/hello"));
    c.send(&req);
    let r = c.read_response();
    assert_eq!(r.body, b"hello");
    assert!(!r.says_close(), "{r:?}");
    let r = c.read_response();
    assert_eq!(r.body, b"hello");
    drop(c);
    server.stop();
}

#[test]
fn unread_large_body_closes_the_connection() {
    let server = Server::start(Config {
        body_preread: 0,
        ..test_config()
    });
    let mut c = server.client();
    // Head only: the body (1 MiB) never comes, so it cannot be discarded in time.
    c.send(b"POST /hello HTTP/1.1\r\nHost: test\r\nContent-Length: 1048576\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.body, b"hello");
    assert!(r.says_close(), "{r:?}");
    c.expect_closed();
    server.stop();
}

#[test]
fn chunked_body_above_the_limit_is_a_body_error_and_closes() {
    let server = Server::start(Config {
        limits: Limits {
            max_request_body_size: 8,
            ..Limits::default()
        },
        ..test_config()
    });
    let mut c = server.client();
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n",
    );
    let r = c.read_response();
    assert_eq!(r.status, 413);
    assert!(r.says_close(), "{r:?}");
    c.expect_closed();
    assert_eq!(
        *server.probe.body_errors.lock(),
        vec![BodyError::Malformed(413)]
    );
    server.stop();
}

#[test]
fn client_gone_mid_body_is_a_disconnected_body_error() {
    let server = Server::start(Config {
        body_preread: 0,
        ..test_config()
    });
    let mut c = server.client();
    c.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n0123456789");
    thread::sleep(Duration::from_millis(50));
    drop(c);
    eventually("the handler to see the body error", || {
        !server.probe.body_errors.lock().is_empty()
    });
    assert_eq!(
        *server.probe.body_errors.lock(),
        vec![BodyError::Disconnected]
    );
    server.stop();
}

#[test]
fn stalled_body_is_a_timeout_body_error_and_closes() {
    let server = Server::start(Config {
        inactivity_timeout: Duration::from_millis(300),
        body_preread: 0,
        ..test_config()
    });
    let mut c = server.client();
    let t0 = Instant::now();
    c.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n0123456789");
    // The handler aborts: no response was started, so nothing is sent.
    c.expect_closed();
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    eventually("the handler to see the body error", || {
        !server.probe.body_errors.lock().is_empty()
    });
    assert_eq!(*server.probe.body_errors.lock(), vec![BodyError::Timeout]);
    server.stop();
}

#[test]
fn body_is_read_before_the_handler_is_called() {
    let server = Server::start(test_config());
    let mut c = server.client();
    c.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\n01234");
    thread::sleep(Duration::from_millis(150));
    assert_eq!(
        server.probe.calls.load(Ordering::SeqCst),
        0,
        "the handler was called before the body was in"
    );
    c.send(b"56789");
    let r = c.read_response();
    assert_eq!(r.body, b"0123456789");
    assert_eq!(server.probe.calls.load(Ordering::SeqCst), 1);
    assert_eq!(server.probe.body_waiting.load(Ordering::SeqCst), 0);
    server.stop();
}

#[test]
fn slow_bodies_do_not_hold_threads() {
    // Twice as many clients trickling bodies as there are threads: with the body read
    // before the call, none of them holds a thread and a plain GET is answered at once.
    let server = Server::start(Config {
        threads: 2,
        ..test_config()
    });
    let mut slow: Vec<Client> = (0..4).map(|_| server.client()).collect();
    for c in &mut slow {
        c.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 3\r\n\r\na");
    }
    thread::sleep(Duration::from_millis(100));
    let mut c = server.client();
    c.read_timeout(Duration::from_secs(1));
    c.send(&get("/hello"));
    assert_eq!(c.read_response().body, b"hello");
    assert_eq!(server.probe.calls.load(Ordering::SeqCst), 1);
    for s in &mut slow {
        s.send(b"bc");
    }
    for s in &mut slow {
        assert_eq!(s.read_response().body, b"abc");
    }
    server.stop();
}

#[test]
fn body_larger_than_the_preread_reaches_the_handler_before_it_ends() {
    let server = Server::start(Config {
        body_preread: 1024,
        ..test_config()
    });
    let mut c = server.client();
    let body = big_body(0..4096);
    let mut req = b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 4096\r\n\r\n".to_vec();
    req.extend_from_slice(&body[..2048]);
    c.send(&req);
    assert!(
        server.probe.wait_body_waiting(1, Duration::from_secs(1)),
        "the handler should be called once the preread is in, and wait for the rest"
    );
    c.send(&body[2048..]);
    assert_eq!(c.read_response().body, body);
    server.stop();
}

#[test]
fn stalled_preread_is_a_408_without_a_call() {
    let server = Server::start(Config {
        inactivity_timeout: Duration::from_millis(300),
        ..test_config()
    });
    let mut c = server.client();
    c.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n0123456789");
    let r = c.read_response();
    assert_eq!(r.status, 408);
    assert!(r.says_close(), "{r:?}");
    c.expect_closed();
    assert_eq!(server.probe.calls.load(Ordering::SeqCst), 0);
    server.stop();
}

#[test]
fn client_gone_during_preread_is_never_dispatched() {
    let server = Server::start(test_config());
    let mut c = server.client();
    c.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n0123456789");
    thread::sleep(Duration::from_millis(50));
    drop(c);
    eventually("the request to be finished", || {
        server.engine.stats().requests_in_flight == 0
    });
    assert_eq!(server.probe.calls.load(Ordering::SeqCst), 0);
    assert_eq!(server.engine.stats().requests_total, 1);
    server.stop();
}

// ----- 5. streamed responses -----

#[test]
fn stream_is_chunked_on_http11_and_resumed_once() {
    let server = Server::start(test_config());
    let mut c = server.client();
    c.send(&get("/stream"));
    let r = c.read_head();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.header("content-length"), None);
    // Strict decoding: the empty chunk from the handler must not appear as `0\r\n\r\n`.
    assert_eq!(c.read_chunked(), STREAM_BODY);
    assert_eq!(server.probe.resumes.load(Ordering::Relaxed), 1);
    // Still in step after a chunked response.
    c.send(&get("/hello"));
    assert_eq!(c.read_response().body, b"hello");
    drop(c);
    server.stop();
}

#[test]
fn stream_is_close_delimited_on_http10() {
    let server = Server::start(test_config());
    let mut c = server.client();
    c.send(b"GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = c.read_head();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.header("content-length"), None);
    assert!(r.says_close(), "{r:?}");
    assert_eq!(c.read_to_close(), STREAM_BODY);
    server.stop();
}

#[test]
fn head_request_gets_headers_only_and_stays_in_step() {
    let server = Server::start(test_config());
    let mut c = server.client();
    c.send(b"HEAD /hello HTTP/1.1\r\nHost: test\r\n\r\n");
    let r = c.read_response_to(Request::Head);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("5"));
    c.send(&get("/hello"));
    let r = c.read_response();
    assert_eq!(r.status_line, "HTTP/1.1 200 OK");
    assert_eq!(r.body, b"hello");
    drop(c);
    server.stop();
}

#[test]
fn head_request_to_a_stream_sends_no_body_and_stays_in_step() {
    let server = Server::start(test_config());
    let mut c = server.client();
    c.send(b"HEAD /stream HTTP/1.1\r\nHost: test\r\n\r\n");
    let r = c.read_response_to(Request::Head);
    assert_eq!(r.status, 200);
    c.send(&get("/hello"));
    let r = c.read_response();
    assert_eq!(r.status_line, "HTTP/1.1 200 OK");
    assert_eq!(r.body, b"hello");
    drop(c);
    server.stop();
}

#[test]
fn body_beyond_content_length_is_cut_and_connection_stays_in_step() {
    let server = Server::start(test_config());
    let mut c = server.client();
    c.send(&get("/long"));
    let r = c.read_response();
    assert_eq!(r.body, b"hello");
    c.send(&get("/hello"));
    let r = c.read_response();
    assert_eq!(r.status_line, "HTTP/1.1 200 OK");
    assert_eq!(r.body, b"hello");
    drop(c);
    server.stop();
}

#[test]
fn large_response_waits_for_the_socket_and_arrives_whole() {
    let server = Server::start(test_config());
    let mut c = server.client();
    c.send(&get("/big"));
    let r = c.read_head();
    assert_eq!(
        r.header("content-length"),
        Some(BIG_LEN.to_string().as_str())
    );
    // Read slowly at first, so that the handler has to wait for room.
    thread::sleep(Duration::from_millis(100));
    let body = c.read_exact(BIG_LEN);
    assert!(
        body == big_body(0..BIG_LEN),
        "the 4 MiB body came back different"
    );
    assert!(server.probe.write_waits.load(Ordering::Relaxed) > 0);
    c.send(&get("/hello"));
    assert_eq!(c.read_response().body, b"hello");
    drop(c);
    server.stop();
}

#[test]
fn client_gone_while_the_handler_waits_for_room() {
    let server = Server::start(test_config());
    let mut c = server.client();
    // 256 MiB: far more than the socket buffers hold, so the handler is still sending
    // (or waiting for room) when the client leaves.
    c.send(&get("/big?mb=256"));
    assert_eq!(c.read_head().status, 200);
    eventually("the handler to wait for room", || {
        server.probe.write_waits.load(Ordering::Relaxed) > 1
    });
    drop(c);
    eventually("the handler to learn that the client is gone", || {
        server.probe.write_gone.load(Ordering::Relaxed) == 1
    });
    server.stop();
}

// ----- 6. malformed requests -----

/// Sends `request`, expects one response with `status` and `Connection: close`, then
/// the connection closed with nothing more.
fn expect_rejected(config: Config, request: Vec<u8>, status: u16) {
    let server = Server::start(config);
    let mut c = server.client();
    let writer = send_in_background(&c.stream, request);
    let r = c.read_response();
    assert_eq!(r.status, status, "{r:?}");
    assert!(r.says_close(), "{r:?}");
    c.expect_closed();
    writer.join().expect("writer thread");
    assert_eq!(server.probe.calls.load(Ordering::Relaxed), 0);
    server.stop();
}

#[test]
fn bad_request_line_is_400() {
    expect_rejected(
        test_config(),
        b"GET /hello HTTP/1.1 x\r\nHost: t\r\n\r\n".to_vec(),
        400,
    );
    expect_rejected(
        test_config(),
        b"GET  /hello HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
        400,
    );
}

#[test]
fn content_length_with_transfer_encoding_is_400() {
    expect_rejected(
        test_config(),
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\
          Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            .to_vec(),
        400,
    );
}

#[test]
fn long_url_is_414() {
    let mut req = b"GET /".to_vec();
    req.extend(vec![b'a'; 1024 * 1024]);
    req.extend(b" HTTP/1.1\r\nHost: t\r\n\r\n");
    let config = Config {
        limits: Limits {
            url_length_limit: 1024,
            ..Limits::default()
        },
        ..test_config()
    };
    expect_rejected(config, req, 414);
}

#[test]
fn too_large_header_is_431() {
    let mut req = b"GET /hello HTTP/1.1\r\nHost: t\r\nX-Big: ".to_vec();
    req.extend(vec![b'b'; 16 * 1024]);
    req.extend(b"\r\n\r\n");
    let config = Config {
        limits: Limits {
            max_request_header_size: 4096,
            ..Limits::default()
        },
        ..test_config()
    };
    expect_rejected(config, req, 431);
}

#[test]
fn content_length_above_the_limit_is_413() {
    let config = Config {
        limits: Limits {
            max_request_body_size: 1000,
            ..Limits::default()
        },
        ..test_config()
    };
    expect_rejected(
        config,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n".to_vec(),
        413,
    );
}

#[test]
fn http2_request_line_is_505() {
    expect_rejected(
        test_config(),
        b"GET /hello HTTP/2.0\r\nHost: t\r\n\r\n".to_vec(),
        505,
    );
}

#[test]
fn request_pipelined_after_a_rejected_one_gets_no_response() {
    let server = Server::start(test_config());
    let mut c = server.client();
    let mut req = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\
                    Transfer-Encoding: chunked\r\n\r\n"
        .to_vec();
    req.extend(get("/hello"));
    c.send(&req);
    let all = c.read_to_close();
    assert!(
        all.starts_with(b"HTTP/1.1 400 "),
        "{:?}",
        String::from_utf8_lossy(&all)
    );
    assert_eq!(
        count(&all, b"HTTP/1.1 "),
        1,
        "{:?}",
        String::from_utf8_lossy(&all)
    );
    assert_eq!(server.probe.calls.load(Ordering::Relaxed), 0);
    server.stop();
}

// ----- 7. dispatch -----

#[test]
fn blocking_call_does_not_stall_other_connections() {
    let server = Server::start(test_config());
    let mut sleeper = server.client();
    sleeper.send(&get("/sleep?ms=300"));
    assert!(
        server.probe.wait_sleeping(1, Duration::from_secs(1)),
        "the /sleep handler never started"
    );
    let mut other = server.client();
    let t0 = Instant::now();
    other.send(&get("/hello"));
    let r = other.read_response();
    let elapsed = t0.elapsed();
    assert_eq!(r.body, b"hello");
    // The point of the dispatcher: the other call does not wait for the blocked one
    // (300 ms). The bound is generous; a stalled loop would take 300 ms or more.
    assert!(
        elapsed < Duration::from_millis(250),
        "/hello took {elapsed:?} while /sleep blocked"
    );
    assert_eq!(sleeper.read_response().body, b"slept");
    drop((sleeper, other));
    server.stop();
}

#[test]
fn eight_blocking_calls_run_concurrently() {
    let server = Server::start(Config {
        threads: 16,
        ..test_config()
    });
    let addr = server.addr;
    let t0 = Instant::now();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.send(&get("/sleep?ms=300"));
                c.read_response().body
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().expect("client thread"), b"slept");
    }
    let elapsed = t0.elapsed();
    assert!(
        elapsed < Duration::from_millis(1500),
        "8 x 300 ms blocking calls took {elapsed:?}: they were serialised"
    );
    assert!(server.engine.stats().threads <= 16);
    server.stop();
}

#[test]
fn mixed_concurrent_load_is_answered_correctly() {
    let server = Server::start(test_config());
    let addr = server.addr;
    let clients: Vec<_> = (0..6u8)
        .map(|k| {
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                let body = vec![b'a' + k; 100 * 1024];
                for i in 0..12 {
                    match (i + k as usize) % 4 {
                        0 => {
                            c.send(&get("/hello"));
                            assert_eq!(c.read_response().body, b"hello");
                        }
                        1 => {
                            c.send(&post("/echo", &body));
                            assert!(c.read_response().body == body, "echo differs");
                        }
                        2 => {
                            c.send(&get("/stream"));
                            assert_eq!(c.read_response().body, STREAM_BODY);
                        }
                        _ => {
                            c.send(&get("/sleep?ms=20"));
                            assert_eq!(c.read_response().body, b"slept");
                        }
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client thread");
    }
    assert_eq!(server.probe.calls.load(Ordering::Relaxed), 72);
    server.stop();
}

#[test]
fn more_blocking_calls_than_threads_all_complete() {
    // Two threads: one call may block at a time, the others wait their turn.
    let server = Server::start(Config {
        threads: 2,
        ..test_config()
    });
    let addr = server.addr;
    let clients: Vec<_> = (0..3)
        .map(|_| {
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.send(&get("/sleep?ms=100"));
                c.read_response().body
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().expect("client thread"), b"slept");
    }
    assert!(server.engine.stats().threads <= 2);
    server.stop();
}

#[test]
fn handlers_waiting_for_bodies_on_every_thread_still_get_them() {
    // Each handler waits for its body with the gate released, on its own thread; the
    // bodies can only arrive if some thread still drives the connections.
    let server = Server::start(Config {
        threads: 2,
        body_preread: 0,
        ..test_config()
    });
    let mut clients: Vec<Client> = (0..2).map(|_| server.client()).collect();
    for c in &mut clients {
        c.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\n");
    }
    assert!(
        server.probe.wait_body_waiting(2, Duration::from_secs(1)),
        "both handlers should be waiting for their bodies"
    );
    for c in &mut clients {
        c.send(b"hello");
    }
    for c in &mut clients {
        c.read_timeout(Duration::from_secs(1));
        assert_eq!(c.read_response().body, b"hello");
    }
    drop(clients);
    server.stop();
}

#[test]
fn handlers_waiting_for_output_room_on_every_thread_still_get_it() {
    let server = Server::start(Config {
        threads: 2,
        ..test_config()
    });
    let mut clients: Vec<Client> = (0..2).map(|_| server.client()).collect();
    for c in &mut clients {
        // Each response is larger than what the socket buffers can take at once, so
        // each handler ends up waiting for room (gate released) on its own thread.
        c.send(&get("/big?mb=16"));
    }
    // Read the first response whole: its handler must be able to go on.
    let first = &mut clients[0];
    first.read_timeout(Duration::from_secs(1));
    let r = first.read_head();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("16777216"));
    assert_eq!(first.read_exact(16 * 1024 * 1024).len(), 16 * 1024 * 1024);
    drop(clients);
    server.stop();
}

// ----- 8. timeouts -----

#[test]
fn partial_head_times_out_with_408() {
    let server = Server::start(Config {
        header_timeout: Duration::from_millis(300),
        ..test_config()
    });
    let mut c = server.client();
    let t0 = Instant::now();
    c.send(b"GET /hello HTTP/1.1\r\nHost: te");
    let r = c.read_response();
    assert_eq!(r.status, 408);
    assert!(r.says_close(), "{r:?}");
    c.expect_closed();
    assert_closed_between(t0, 250, 1000);
    server.stop();
}

#[test]
fn partial_second_head_times_out_with_408() {
    let server = Server::start(Config {
        header_timeout: Duration::from_millis(300),
        ..test_config()
    });
    let mut c = server.client();
    c.send(&get("/hello"));
    assert_eq!(c.read_response().body, b"hello");
    let t0 = Instant::now();
    c.send(b"GET /hel");
    let r = c.read_response();
    assert_eq!(r.status, 408);
    c.expect_closed();
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    server.stop();
}

#[test]
fn silent_new_connection_is_closed_after_the_header_timeout() {
    let server = Server::start(Config {
        header_timeout: Duration::from_millis(300),
        ..test_config()
    });
    let mut c = server.client();
    let t0 = Instant::now();
    // Nothing was sent, so there is nothing to answer: just close.
    c.expect_closed();
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    server.stop();
}

/// Asserts that what started at `t0` ended between `lo_ms` and `hi_ms` later.
fn assert_closed_between(t0: Instant, lo_ms: u64, hi_ms: u64) {
    let elapsed = t0.elapsed();
    assert!(
        elapsed >= Duration::from_millis(lo_ms),
        "closed too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(hi_ms),
        "closed too late: {elapsed:?}"
    );
}

#[test]
fn idle_keep_alive_connection_is_closed_after_the_keepalive_timeout() {
    let server = Server::start(Config {
        keepalive_timeout: Duration::from_millis(300),
        ..test_config()
    });
    let mut c = server.client();
    c.send(&get("/hello"));
    assert_eq!(c.read_response().body, b"hello");
    let t0 = Instant::now();
    c.expect_closed();
    assert_closed_between(t0, 250, 1000);
    server.stop();
}

// ----- 9. connection limit -----

#[test]
fn max_size_holds_a_third_connection_until_one_closes() {
    let server = Server::start(Config {
        max_size: 2,
        ..test_config()
    });
    let mut a = server.client();
    let mut b = server.client();
    for c in [&mut a, &mut b] {
        c.send(&get("/hello"));
        assert_eq!(c.read_response().body, b"hello");
    }
    // The third connects (the kernel's backlog) but is not served.
    let mut third = server.client();
    third.send(&get("/hello"));
    third.expect_silence(Duration::from_millis(300));
    assert_eq!(server.engine.stats().open_connections, 2);
    drop(a);
    let t0 = Instant::now();
    let r = third.read_response();
    assert_eq!(r.body, b"hello");
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    drop((b, third));
    server.stop();
}

// ----- 10. graceful shutdown -----

#[test]
fn graceful_shutdown_finishes_in_flight_and_refuses_new() {
    let mut server = Server::start(test_config());
    let mut idle = server.client();
    idle.send(&get("/hello"));
    assert_eq!(idle.read_response().body, b"hello");
    let mut sleeper = server.client();
    sleeper.send(&get("/sleep?ms=300"));
    assert!(server.probe.wait_sleeping(1, Duration::from_secs(1)));

    server.engine.shutdown(Duration::from_secs(5));

    // An idle keep-alive connection is closed at once.
    let t0 = Instant::now();
    idle.expect_closed();
    assert!(
        t0.elapsed() < Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    // New connections are refused once the listener is closed. (One that reached the
    // backlog just before is reset instead.)
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match TcpStream::connect_timeout(&server.addr, IO_TIMEOUT) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => break,
            Err(e) if e.kind() != ErrorKind::ConnectionReset => {
                panic!("unexpected connect error: {e}")
            }
            _ => {
                assert!(Instant::now() < deadline, "still accepting after shutdown");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
    // The request in flight completes, then its connection closes.
    let r = sleeper.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"slept");
    sleeper.expect_closed();
    assert!(
        server.wait_run_returned(Duration::from_secs(2)),
        "run did not return after the last connection closed"
    );
    server.probe.check();
}

#[test]
fn shutdown_with_no_grace_returns_promptly() {
    let mut server = Server::start(test_config());
    let mut sleeper = server.client();
    sleeper.send(&get("/sleep?ms=300"));
    assert!(server.probe.wait_sleeping(1, Duration::from_secs(1)));
    let t0 = Instant::now();
    server.engine.shutdown(Duration::ZERO);
    assert!(server.wait_run_returned(Duration::from_secs(3)));
    assert!(t0.elapsed() < Duration::from_secs(3));
    drop(sleeper);
}

#[test]
fn tick_now_has_run_call_its_tick_at_once() {
    // The tick (the binding's check for signal handlers) is due every hour here: only
    // tick_now can make it run within the test.
    let server = Server::start(test_config());
    for expected in 1..=2 {
        server.engine.tick_now();
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.ticks.load(Ordering::SeqCst) < expected {
            assert!(Instant::now() < deadline, "tick {expected} did not run");
            thread::sleep(Duration::from_millis(5));
        }
    }
    assert_eq!(server.ticks.load(Ordering::SeqCst), 2);
    server.stop();
}

// ----- 11. Expect: 100-continue -----

#[test]
fn expect_100_continue_is_sent_when_the_body_is_read() {
    let server = Server::start(test_config());
    let mut c = server.client();
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\
          Expect: 100-continue\r\n\r\n",
    );
    // The body is held back until the interim response arrives.
    let interim = c.read_head();
    assert_eq!(interim.status_line, "HTTP/1.1 100 Continue");
    assert!(interim.headers.is_empty(), "{interim:?}");
    c.expect_silence(Duration::from_millis(50));
    c.send(b"hello");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello");
    c.send(&get("/hello"));
    assert_eq!(c.read_response().body, b"hello");
    drop(c);
    server.stop();
}

#[test]
fn expect_100_continue_is_not_sent_when_the_body_is_not_read() {
    let server = Server::start(test_config());
    let mut c = server.client();
    c.send(
        b"POST /hello HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\
          Expect: 100-continue\r\n\r\n",
    );
    let r = c.read_response();
    assert_eq!(r.status, 200, "expected the final response, got {r:?}");
    assert_eq!(r.body, b"hello");
    // The client may still send the body or not: the connection cannot persist.
    assert!(r.says_close(), "{r:?}");
    c.expect_closed();
    server.stop();
}

#[test]
fn expect_100_continue_with_the_body_sent_at_once() {
    // Clients may stop waiting for 100 and send the body: an interim response may still
    // come, but the final one must be right and the connection in step.
    let server = Server::start(test_config());
    let mut c = server.client();
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\
          Expect: 100-continue\r\n\r\nhello",
    );
    let mut r = c.read_response();
    if r.status == 100 {
        r = c.read_response();
    }
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello");
    c.send(&get("/hello"));
    assert_eq!(c.read_response().body, b"hello");
    drop(c);
    server.stop();
}

#[test]
fn expect_100_continue_is_ignored_on_http10() {
    let server = Server::start(test_config());
    let mut c = server.client();
    c.send(b"POST /echo HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    c.expect_silence(Duration::from_millis(150));
    c.send(b"hello");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello");
    server.stop();
}

// ----- 12. failed responses -----

#[test]
fn aborted_response_is_short_and_closes() {
    let server = Server::start(test_config());
    let mut c = server.client();
    let mut req = get("/fail");
    req.extend(get("/hello"));
    c.send(&req);
    let r = c.read_head();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("10"));
    // Five bytes of ten, then the end: the pipelined request is not answered.
    assert_eq!(c.read_to_close(), b"12345");
    server.stop();
}

#[test]
fn aborted_chunked_response_has_no_last_chunk_and_closes() {
    let server = Server::start(test_config());
    let mut c = server.client();
    c.send(&get("/fail-chunked"));
    let r = c.read_head();
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(c.read_to_close(), b"4\r\npart\r\n");
    server.stop();
}

#[test]
fn finished_short_response_closes() {
    let server = Server::start(test_config());
    let mut c = server.client();
    let mut req = get("/short");
    req.extend(get("/hello"));
    c.send(&req);
    let r = c.read_head();
    assert_eq!(r.header("content-length"), Some("10"));
    assert_eq!(c.read_to_close(), b"12345");
    server.stop();
}

// ----- the Exchange API -----

#[test]
fn is_started_reports_the_response_state() {
    let server = Server::start(test_config());
    let mut c = server.client();
    c.read_timeout(Duration::from_secs(1));
    c.send(&get("/is-started"));
    let r = c.read_response();
    assert_eq!(r.body, b"ok");
    drop(c);
    server.stop();
}

// ----- connection information and listeners -----

#[test]
fn handler_sees_peer_and_local_addresses() {
    let server = Server::start(test_config());
    let mut c = server.client();
    c.send(&get("/whoami"));
    let r = c.read_response();
    let expected = format!(
        "{} {}",
        c.stream.local_addr().expect("local_addr"),
        server.addr
    );
    assert_eq!(String::from_utf8_lossy(&r.body), expected);
    drop(c);
    server.stop();
}

/// A server also listening on a UNIX socket in a fresh temporary directory.
fn unix_server(tag: &str) -> (Server, std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("unyoke-engine-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("unix.sock");
    let _ = std::fs::remove_file(&path);
    (Server::start_with(test_config(), Some(&path)), dir, path)
}

fn unix_client(path: &std::path::Path) -> std::os::unix::net::UnixStream {
    let unix = std::os::unix::net::UnixStream::connect(path).expect("connect");
    unix.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    unix.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    unix
}

/// Asks `/whoami` with `Connection: close`; the answer names the UNIX socket.
fn expect_whoami_over_unix(unix: &mut std::os::unix::net::UnixStream, path: &std::path::Path) {
    unix.write_all(b"GET /whoami HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut all = Vec::new();
    unix.read_to_end(&mut all).expect("read until close");
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text:?}");
    assert!(
        text.ends_with(&format!("\r\n\r\nunix: unix:{}", path.display())),
        "{text:?}"
    );
}

#[test]
fn unix_socket_listener_serves_beside_tcp() {
    let (server, dir, path) = unix_server("test");
    let mut unix = unix_client(&path);
    expect_whoami_over_unix(&mut unix, &path);
    // TCP still works beside it.
    let mut c = server.client();
    c.send(&get("/hello"));
    assert_eq!(c.read_response().body, b"hello");
    drop(c);
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

// ----- idle connections set aside -----
//
// A connection that waits `SHELVE_AFTER` (1 s) for its next request leaves its task and
// is kept as a bare socket (idle.rs); these tests wait past that, then check that the
// shelved connection is still served, and still timed out and closed as before.

/// Longer than the wait before a connection is set aside.
const PAST_SHELVING: Duration = Duration::from_millis(1500);

/// Waits until the engine's idle-connection count is `n`; false after 2 s.
fn wait_idle_count(server: &Server, n: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if server.engine.stats().idle_connections == n {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    false
}

/// A client that made one request, then sat silent until its connection was set aside.
fn shelved_client(server: &Server) -> Client {
    let mut c = server.client();
    c.send(&get("/hello"));
    assert_eq!(c.read_response().body, b"hello");
    thread::sleep(PAST_SHELVING);
    assert_eq!(server.engine.stats().idle_connections, 1);
    c
}

#[test]
fn earlier_requests_counts_from_the_accept_and_from_the_shelf() {
    let server = Server::start(test_config());
    let mut c = shelved_client(&server);
    // Taken back from the shelf: counted anew (the /hello before it is not counted).
    for expected in ["0", "1", "2"] {
        c.send(&get("/earlier"));
        assert_eq!(c.read_response().body, expected.as_bytes());
    }
    let mut fresh = server.client();
    c.send(&get("/earlier"));
    fresh.send(&get("/earlier"));
    assert_eq!(c.read_response().body, b"3");
    assert_eq!(fresh.read_response().body, b"0");
}

#[test]
fn idle_keep_alive_connection_is_shelved_and_served_again() {
    let server = Server::start(test_config());
    let mut c = server.client();
    c.send(&get("/hello"));
    assert_eq!(c.read_response().body, b"hello");
    assert_eq!(server.engine.stats().idle_connections, 0);
    thread::sleep(PAST_SHELVING);
    let stats = server.engine.stats();
    assert_eq!(stats.idle_connections, 1, "not set aside after 1.5 s idle");
    assert_eq!(
        stats.open_connections, 1,
        "a shelved connection is still open"
    );
    // Taken back when bytes arrive, several times over, and served in order.
    for round in 0..2 {
        c.send(&get("/whoami"));
        let r = c.read_response();
        assert_eq!(r.status, 200, "round {round}");
        let text = String::from_utf8_lossy(&r.body).to_string();
        let local = c.stream.local_addr().expect("local_addr").to_string();
        assert_eq!(text, format!("{local} {}", server.addr), "round {round}");
        assert_eq!(server.engine.stats().idle_connections, 0);
        c.send(&get("/hello"));
        assert_eq!(c.read_response().body, b"hello");
        thread::sleep(PAST_SHELVING);
        assert_eq!(server.engine.stats().idle_connections, 1, "round {round}");
    }
    // Pipelined requests on a shelved connection are all answered.
    let mut two = get("/hello");
    two.extend(get("/whoami"));
    c.send(&two);
    assert_eq!(c.read_response().body, b"hello");
    assert_eq!(c.read_response().status, 200);
    drop(c);
    server.stop();
}

#[test]
fn shelved_connection_is_closed_at_its_keepalive_timeout() {
    let server = Server::start(Config {
        keepalive_timeout: Duration::from_millis(2500),
        ..test_config()
    });
    let mut c = server.client();
    c.read_timeout(Duration::from_secs(5));
    c.send(&get("/hello"));
    assert_eq!(c.read_response().body, b"hello");
    let t0 = Instant::now();
    c.expect_closed();
    assert_closed_between(t0, 2400, 3500);
    assert!(wait_idle_count(&server, 0));
    assert_eq!(server.engine.stats().open_connections, 0);
    server.stop();
}

#[test]
fn silent_new_connection_is_shelved_and_keeps_its_header_timeout() {
    let server = Server::start(Config {
        header_timeout: Duration::from_millis(2500),
        ..test_config()
    });
    let t0 = Instant::now();
    let mut c = server.client();
    c.read_timeout(Duration::from_secs(5));
    thread::sleep(PAST_SHELVING);
    assert_eq!(server.engine.stats().idle_connections, 1);
    // Bytes of a head wake it; the header timeout still counts from the accept.
    c.send(b"GET /hello HTTP/1.1\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 408);
    assert_closed_between(t0, 2400, 3500);
    c.expect_closed();

    // One that never sends anything is closed at the header timeout, from the shelf.
    let t0 = Instant::now();
    let mut quiet = server.client();
    quiet.read_timeout(Duration::from_secs(5));
    quiet.expect_closed();
    assert_closed_between(t0, 2400, 3500);
    assert!(wait_idle_count(&server, 0));
    assert_eq!(server.engine.stats().open_connections, 0);
    server.stop();
}

#[test]
fn silent_new_connection_is_served_from_the_shelf() {
    let server = Server::start(test_config());
    let mut c = server.client();
    thread::sleep(PAST_SHELVING);
    assert_eq!(server.engine.stats().idle_connections, 1);
    c.send(&get("/hello"));
    assert_eq!(c.read_response().body, b"hello");
    drop(c);
    server.stop();
}

#[test]
fn shelved_connection_whose_client_leaves_is_closed() {
    let server = Server::start(test_config());
    let c = shelved_client(&server);
    drop(c);
    assert!(wait_idle_count(&server, 0), "the hang-up was not noticed");
    let deadline = Instant::now() + Duration::from_secs(2);
    while server.engine.stats().open_connections != 0 {
        assert!(Instant::now() < deadline, "the connection was never closed");
        thread::sleep(Duration::from_millis(10));
    }
    server.stop();
}

#[test]
fn graceful_shutdown_closes_shelved_keep_alive_connections() {
    let mut server = Server::start(test_config());
    let mut c = shelved_client(&server);
    let t0 = Instant::now();
    server.engine.shutdown(Duration::from_secs(5));
    c.expect_closed();
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    assert!(
        server.wait_run_returned(Duration::from_secs(2)),
        "run did not return after the shelved connection closed"
    );
}

#[test]
fn shelved_connections_count_against_max_size() {
    let server = Server::start(Config {
        max_size: 1,
        ..test_config()
    });
    let a = shelved_client(&server);
    let mut b = server.client();
    b.send(&get("/hello"));
    b.expect_silence(Duration::from_millis(300));
    drop(a);
    assert_eq!(b.read_response().body, b"hello");
    drop(b);
    server.stop();
}

#[test]
fn shelved_connection_keeps_its_proxy_protocol_addresses() {
    // The addresses a PROXY header gave cannot be read back from the socket: the shelf
    // must keep them for the requests after it.
    let server = Server::start(Config {
        proxy_protocol: true,
        ..test_config()
    });
    let mut c = server.client();
    let mut first = b"PROXY TCP4 192.0.2.7 198.51.100.9 40000 8443\r\n".to_vec();
    first.extend(get("/whoami"));
    c.send(&first);
    let expected = "192.0.2.7:40000 198.51.100.9:8443";
    assert_eq!(String::from_utf8_lossy(&c.read_response().body), expected);
    thread::sleep(PAST_SHELVING);
    assert_eq!(server.engine.stats().idle_connections, 1);
    c.send(&get("/whoami"));
    assert_eq!(String::from_utf8_lossy(&c.read_response().body), expected);
    drop(c);
    server.stop();
}

#[test]
fn shelved_unix_connection_is_served_again() {
    let (server, dir, path) = unix_server("shelf");
    let mut unix = unix_client(&path);
    thread::sleep(PAST_SHELVING);
    assert_eq!(server.engine.stats().idle_connections, 1);
    expect_whoami_over_unix(&mut unix, &path);
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

// ----- counters -----

#[test]
fn stats_count_requests_and_connections() {
    let server = Server::start(test_config());
    let mut c = server.client();
    let mut received = 0;
    for _ in 0..3 {
        c.send(&get("/hello"));
        let r = c.read_response();
        assert_eq!(r.body, b"hello");
        received += r.body.len();
    }
    // The counters move just after the response is written: poll them.
    let stats = || server.engine.stats();
    eventually("the requests to be counted finished", || {
        stats().requests_in_flight == 0
    });
    let s = stats();
    assert_eq!(s.requests_total, 3);
    assert_eq!(s.open_connections, 1);
    assert_eq!(s.bytes_in, 3 * get("/hello").len() as u64);
    assert!(s.bytes_out > received as u64);
    assert!(s.threads >= 2);
    drop(c);
    eventually("the closed connection to be uncounted", || {
        stats().open_connections == 0
    });
    server.stop();
}

/// Waits up to a second for `condition`.
fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}
