"""Every seed setting of issue 3, part 7, with a test that shows its effect on a real
server over a real socket (the names are eventlet's and ginsfsm's; docs/settings.md
describes each).

Some effects are also covered elsewhere, for other reasons: the environ settings in
test_pep3333.py::test_settings_reach_the_environ, expose_tracebacks in
test_pep3333.py::test_expose_tracebacks_puts_the_traceback_in_the_body, identity in
test_http_rules.py::test_server_header_is_the_identity_setting, keepalive off in
test_http_rules.py::test_no_keepalive_setting_closes_http11, a started deferred response
ended by inactivity_timeout and a deferred one never started ended by
responseless_timeout in test_extensions.py. This module keeps one test per setting so
that it is the catalogue.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional

import pytest

from tests.e2e.rawhttp import (
    ConnectionClosed,
    HTTPResponse,
    RawConnection,
    build_request,
)
from tests.e2e.serverproc import ServerProcess

pytestmark = pytest.mark.timeout(90)

APP = "tests.apps.extensions:app"

#: eventlet's access log format, every key, separated so the test can split it.
EVENTLET_KEYS_FORMAT = (
    "ACCESS|%(client_ip)s|%(date_time)s|%(request_line)s|%(status_code)s|"
    "%(body_length)s|%(wall_seconds).6f"
)


@pytest.fixture(scope="module")
def default(module_servers) -> ServerProcess:
    """Every setting at its default."""
    return module_servers.start(APP)


@pytest.fixture(scope="module")
def configured(module_servers) -> ServerProcess:
    return module_servers.start(
        APP,
        "--identity",
        "Acme-Gateway/2.0",
        "--url-scheme",
        "https",
        "--server-name",
        "example.test",
        "--environ",
        "EXTRA_KEY=extra value",
        "--environ",
        "deployment.region=eu-west",
        "--expose-tracebacks",
        "--capitalize-response-headers",
        "--log-format",
        EVENTLET_KEYS_FORMAT,
    )


def new_id() -> str:
    return uuid.uuid4().hex[:12]


def get(
    server: ServerProcess,
    target: str,
    headers: Optional[List[Any]] = None,
    version: str = "HTTP/1.1",
    timeout: float = 10.0,
) -> HTTPResponse:
    with RawConnection(server.address, timeout=timeout) as conn:
        conn.send(build_request("GET", target, headers, version=version))
        return conn.read_final_response()[1]


def echo_environ(server: ServerProcess, target: str = "/settings/echo") -> Dict[str, Any]:
    response = get(server, target)
    assert response.status == 200, response
    return response.json()["environ"]


def access_line(server: ServerProcess, marker: str, timeout: float = 10.0) -> str:
    """The access log line that contains `marker` (the log is written in batches)."""
    assert server.wait_for_log(marker, timeout), server.log()[-2000:]
    return next(line for line in server.log().splitlines() if marker in line)


# -- origins ------------------------------------------------------------------------------------


def test_origins_closes_other_networks_at_accept(servers):
    """A client outside `origins` is accepted by the kernel, then closed by the server
    before any byte of a response; the application never sees its request."""
    srv = servers.start(APP, "--origins", "10.0.0.0/8")
    marker = new_id()
    with srv.connect() as conn:
        conn.try_send(build_request("GET", f"/settings/echo?refused={marker}"))
        with pytest.raises(ConnectionClosed):
            conn.read_response()
        assert conn.buf == b""
    time.sleep(0.3)
    assert not any(marker in line for line in srv.state_lines("calls"))


def test_origins_serves_the_listed_networks(servers):
    srv = servers.start(APP, "--origins", "10.0.0.0/8,127.0.0.1/32")
    assert echo_environ(srv)["REMOTE_ADDR"] == "127.0.0.1"


# -- maximum_simultaneous_requests --------------------------------------------------------------


def wait_for_line(server: ServerProcess, kind: str, prefix: str, timeout: float = 10.0) -> bool:
    """Until a line starting with `prefix` is in `<state>/<kind>.log`."""
    deadline = time.monotonic() + timeout
    while not any(line.startswith(prefix) for line in server.state_lines(kind)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def sleep_lines(server: ServerProcess) -> List[List[str]]:
    return [line.split() for line in server.state_lines("sleep")]


def test_maximum_simultaneous_requests_makes_excess_requests_wait(servers):
    """With a bound of 2, a third request (on its own connection) is not handed to the
    application until one of the first two finished; then it is served normally.

    Past the bound a request waits at most `inactivity_timeout`; then it is answered
    503 and its connection closed (the next test)."""
    srv = servers.start(APP, "--maximum-simultaneous-requests", "2")
    results: Dict[str, HTTPResponse] = {}

    def one(ident: str) -> None:
        results[ident] = get(srv, f"/settings/sleep?s=1&id={ident}", timeout=20)

    threads = []
    for ident in ("a", "b", "c"):
        thread = threading.Thread(target=one, args=(ident,))
        thread.start()
        threads.append(thread)
        time.sleep(0.2)
    for thread in threads:
        thread.join(30)
    assert {k: r.status for k, r in results.items()} == {"a": 200, "b": 200, "c": 200}
    lines = sleep_lines(srv)
    started = {ident: float(t) for kind, ident, t in lines if kind == "start"}
    ended = {ident: float(t) for kind, ident, t in lines if kind == "end"}
    assert started["c"] >= min(ended["a"], ended["b"]), lines


def test_maximum_simultaneous_requests_past_the_bound_is_503_after_inactivity_timeout(servers):
    srv = servers.start(
        APP, "--maximum-simultaneous-requests", "1", "--inactivity-timeout", "1", "--threads", "4"
    )
    holder: Dict[str, HTTPResponse] = {}
    thread = threading.Thread(
        target=lambda: holder.update(slow=get(srv, "/settings/sleep?s=3&id=slow", timeout=20))
    )
    thread.start()
    assert wait_for_line(srv, "sleep", "start slow ")
    with srv.connect() as conn:
        started = time.monotonic()
        conn.send(build_request("GET", "/settings/sleep?s=0&id=excess"))
        _, response = conn.read_final_response()
        waited = time.monotonic() - started
        assert response.status == 503, response
        assert b"too many requests" in response.body
        assert 0.8 <= waited < 2.9, waited
        assert conn.wait_closed(5.0)
    thread.join(20)
    assert holder["slow"].status == 200
    assert not any("excess" in line for line in srv.state_lines("sleep"))


# -- inbuf_overflow -----------------------------------------------------------------------------


def bytes_accepted_before_the_app_reads(
    server: ServerProcess, name: str, size: int, first: int = 0, line: bool = False
) -> int:
    """Send a `size`-byte body to an app that reads `first` bytes of it (or one line) and
    then waits; how many bytes the kernel took before sending stalled for a second. Then
    open the gate and check that the app reads the whole body intact."""
    body = bytes(range(256)) * (size // 256)
    with server.connect(timeout=20) as conn:
        # A small send buffer on our side, so that what is taken is mostly the server's.
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        # The head and the default pre-read (64 KiB), or what the app reads first: then
        # it waits.
        sent = max(65536, first)
        conn.send(
            build_request(
                "POST",
                f"/settings/gated_sha?name={name}&first={first}&line={int(line)}",
                [("Content-Length", str(size))],
            )
            + body[:sent]
        )
        assert server.wait_for_state("gate", f"waiting {name}")
        conn.sock.settimeout(1.0)
        while sent < size:
            try:
                sent += conn.sock.send(body[sent : sent + 65536])
            except TimeoutError:
                break
        accepted = sent
        server.state_path(f"gate-{name}").touch()
        conn.sock.settimeout(20)
        conn.send(body[sent:])
        _, response = conn.read_final_response()
    expected = hashlib.sha256(body).hexdigest()
    assert response.json() == {"length": size, "sha256": expected}
    return accepted


def test_inbuf_overflow_bounds_what_is_read_ahead_of_the_app(servers):
    """Once the application reads through the buffered path (here `readline`), the server
    reads ahead at most `inbuf_overflow` bytes of the body it has not asked for yet; then
    TCP flow control holds the client back."""
    size = 20 << 20
    small = servers.start(APP, "--inbuf-overflow", "65536")
    large = servers.start(APP, "--inbuf-overflow", str(8 << 20))
    held_small = bytes_accepted_before_the_app_reads(small, "small", size, line=True)
    held_large = bytes_accepted_before_the_app_reads(large, "large", size, line=True)
    assert held_small < 2 << 20, f"{held_small} bytes taken with inbuf_overflow=64 KiB"
    assert held_large >= 8 << 20, f"only {held_large} bytes taken with inbuf_overflow=8 MiB"


def test_a_body_not_asked_for_is_not_read_ahead(servers):
    """A Content-Length body the application has not started reading is read only up to
    `body_preread` (64 KiB) before its call: the rest waits in the kernel's buffer, so
    that a queued upload holds no more than that, and the application's reads take the
    body straight from the socket. The body arrives intact."""
    srv = servers.start(APP, "--inbuf-overflow", str(8 << 20))
    held = bytes_accepted_before_the_app_reads(srv, "unasked", 20 << 20)
    assert held < 4 << 20, f"{held} bytes taken before the app asked for any"


def test_a_body_read_in_pieces_is_not_read_ahead(servers):
    """Once the application reads a Content-Length body in pieces (here one read of
    64 KiB), the rest waits in the kernel's buffer (TCP flow control) until it asks, so
    that it goes from the socket straight into the bytes the application gets: the
    server takes far less than `inbuf_overflow`, and the body arrives intact."""
    srv = servers.start(APP, "--inbuf-overflow", str(8 << 20))
    held = bytes_accepted_before_the_app_reads(srv, "pieces", 20 << 20, first=65536)
    assert held < 4 << 20, f"{held} bytes taken after the app read a piece"


# -- body_preread ---------------------------------------------------------------------------------


def test_body_preread_calls_the_app_once_the_body_is_in(servers):
    """By default a small body is read before the call: a client sending it slowly holds
    no application thread meanwhile."""
    srv = servers.start(APP)
    body = b"0123456789"
    with srv.connect(timeout=10) as conn:
        conn.send(
            build_request("POST", "/settings/gated_sha?name=pre", [("Content-Length", "10")])
            + body[:5]
        )
        assert not srv.wait_for_state("gate", "waiting pre", timeout=0.5), "called too early"
        conn.send(body[5:])
        assert srv.wait_for_state("gate", "waiting pre")
        srv.state_path("gate-pre").touch()
        _, response = conn.read_final_response()
    assert response.json() == {"length": 10, "sha256": hashlib.sha256(body).hexdigest()}


def test_body_preread_zero_calls_the_app_at_the_head(servers):
    srv = servers.start(APP, "--body-preread", "0")
    body = b"0123456789"
    with srv.connect(timeout=10) as conn:
        conn.send(
            build_request("POST", "/settings/gated_sha?name=head", [("Content-Length", "10")])
        )
        assert srv.wait_for_state("gate", "waiting head"), "not called at the head"
        srv.state_path("gate-head").touch()
        conn.send(body)
        _, response = conn.read_final_response()
    assert response.json() == {"length": 10, "sha256": hashlib.sha256(body).hexdigest()}


def test_body_preread_stalled_is_408_without_a_call(servers):
    srv = servers.start(APP, "--inactivity-timeout", "1")
    with srv.connect(timeout=10) as conn:
        conn.send(
            build_request("POST", "/settings/gated_sha?name=stall", [("Content-Length", "10")])
            + b"01234"
        )
        _, response = conn.read_final_response()
        assert response.status == 408, response
        assert b"request body not received in time" in response.body
        assert conn.wait_closed(5.0)
    assert "waiting stall" not in srv.state_lines("gate")


# -- timeouts -------------------------------------------------------------------------------------


def test_responseless_timeout_applies_to_any_response_that_does_not_start(servers):
    """Not only deferred responses: an application call that blocks past the timeout
    before start_response is answered 503 (and its late answer dropped)."""
    srv = servers.start(APP, "--responseless-timeout", "0.5")
    ident = new_id()
    started = time.monotonic()
    response = get(srv, f"/settings/sleep?s=2&id={ident}")
    assert response.status == 503
    assert b"did not respond in time" in response.body
    assert time.monotonic() - started < 1.8
    assert get(srv, "/settings/sleep?s=0.1&id=quick").status == 200
    # The application call itself ran to its end (its answer was dropped).
    assert wait_for_line(srv, "sleep", f"end {ident} ")


def test_inactivity_timeout_gives_up_on_a_client_that_stops_reading(servers):
    """A response the client stops reading: once no byte has moved for
    `inactivity_timeout`, the server closes the connection and the iterable."""
    srv = servers.start(APP, "--inactivity-timeout", "1")
    ident = new_id()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.settimeout(10)
    sock.connect(srv.address)
    try:
        sock.sendall(build_request("GET", f"/settings/stream?id={ident}&count=2000"))
        started = time.monotonic()
        assert srv.wait_for_state("close", f"{ident} closed", 15)
        assert time.monotonic() - started < 10
        received = 0
        while True:
            try:
                data = sock.recv(1 << 20)
            except ConnectionResetError:
                break
            if not data:
                break
            received += len(data)
        assert received < 2000 * 65536
    finally:
        sock.close()


# -- identity, url_scheme, server_name, environ ---------------------------------------------------


def test_identity_is_the_server_header(configured, default):
    assert get(configured, "/settings/echo").header("Server") == "Acme-Gateway/2.0"
    assert get(default, "/settings/echo").header("Server") == "unyoke"
    # Also on the responses the server writes itself.
    with configured.connect() as conn:
        conn.send(b"GET /bad path HTTP/1.1\r\nHost: x\r\n\r\n")
        _, response = conn.read_final_response()
    assert response.status == 400
    assert response.header("Server") == "Acme-Gateway/2.0"


def test_url_scheme(configured, default):
    assert echo_environ(configured)["wsgi.url_scheme"] == "https"
    assert echo_environ(default)["wsgi.url_scheme"] == "http"


def test_server_name(configured, default):
    assert echo_environ(configured)["SERVER_NAME"] == "example.test"
    assert echo_environ(default)["SERVER_NAME"] == "127.0.0.1"


def test_environ_adds_keys_to_every_request(configured, default):
    for _ in range(2):
        environ = echo_environ(configured)
        assert environ["EXTRA_KEY"] == "extra value"
        assert environ["deployment.region"] == "eu-west"
    assert "EXTRA_KEY" not in echo_environ(default)


# -- expose_tracebacks --------------------------------------------------------------------------


def test_expose_tracebacks(configured, default):
    marker = f"boom-{new_id()}"
    exposed = get(configured, f"/settings/raise?marker={marker}")
    assert exposed.status == 500
    assert b"Traceback (most recent call last)" in exposed.body
    assert f"RuntimeError: {marker}".encode() in exposed.body
    hidden = get(default, f"/settings/raise?marker={marker}")
    assert hidden.status == 500
    assert marker.encode() not in hidden.body
    assert b"Traceback" not in hidden.body
    # Either way the traceback goes to the error log.
    assert default.wait_for_log(f"RuntimeError: {marker}")


# -- keepalive ----------------------------------------------------------------------------------


def test_keepalive_on_serves_several_requests_per_connection(default):
    with default.connect() as conn:
        for i in range(3):
            conn.send(build_request("GET", f"/settings/echo?n={i}"))
            _, response = conn.read_final_response()
            assert response.json()["environ"]["QUERY_STRING"] == f"n={i}"
            assert "close" not in response.header_tokens("Connection")


def test_keepalive_off_closes_after_one_response(servers):
    srv = servers.start(APP, "--no-keepalive")
    with srv.connect() as conn:
        conn.send(build_request("GET", "/settings/echo?n=1") + build_request("GET", "/second"))
        _, response = conn.read_final_response()
        assert response.status == 200
        assert "close" in response.header_tokens("Connection")
        assert conn.wait_closed(5.0), "a second response came on a no-keepalive connection"


# -- busy_poll ------------------------------------------------------------------------------------


def _cpu_of_paced_requests(srv: ServerProcess, count: int, gap: float) -> float:
    """Server CPU seconds spent on COUNT requests sent GAP seconds apart on one connection."""
    with srv.connect() as conn:
        conn.send(build_request("GET", "/settings/echo"))
        conn.read_final_response()
        before = srv.cpu_seconds()
        for _ in range(count):
            time.sleep(gap)
            conn.send(build_request("GET", "/settings/echo"))
            _, response = conn.read_final_response()
            assert response.status == 200
        return srv.cpu_seconds() - before


def test_busy_poll_polls_through_waits_shorter_than_its_window(servers):
    polling = servers.start(APP, "--busy-poll", "10000")
    sleeping = servers.start(APP, "--busy-poll", "0")
    # 60 requests 4 ms apart: every wait is within the 10 ms window, so the polling server
    # spends the waits polling (about 240 ms of CPU) where the other sleeps (a few ms).
    polled = _cpu_of_paced_requests(polling, 60, 0.004)
    slept = _cpu_of_paced_requests(sleeping, 60, 0.004)
    assert polled > 0.1, (polled, slept)
    assert polled > 3 * slept, (polled, slept)


def test_busy_poll_leaves_an_idle_server_idle(servers):
    srv = servers.start(APP, "--busy-poll", "10000")
    # Polling on (waits within the window), then silence: the first long wait ends it.
    _cpu_of_paced_requests(srv, 20, 0.001)
    time.sleep(0.1)
    before = srv.cpu_seconds()
    time.sleep(1.0)
    assert srv.cpu_seconds() - before < 0.05


# -- max_http_version -----------------------------------------------------------------------------


def test_max_http_version_http10_answers_as_an_http10_server(servers):
    srv = servers.start(APP, "--max-http-version", "HTTP/1.0")
    with srv.connect() as conn:
        conn.send(build_request("GET", "/settings/bytes?n=50"))
        _, response = conn.read_final_response()
        assert response.version == "HTTP/1.0"
        assert response.status == 200
        # No chunked coding: a body of unknown length is delimited by the close.
        assert response.header("Transfer-Encoding") is None
        assert response.framing == "close"
        assert response.body == (b"0123456789" * 5)
        assert conn.wait_closed(5.0)
    # A response of known length is still framed by its Content-Length.
    with srv.connect() as conn:
        conn.send(build_request("GET", "/settings/headers"))
        _, response = conn.read_final_response()
    assert response.version == "HTTP/1.0"
    assert response.framing == "length"


# -- minimum_chunk_size ---------------------------------------------------------------------------


def test_minimum_chunk_size_coalesces_small_pieces(servers, default):
    """1000 one-byte pieces: one chunk each by default; with a minimum of 256 bytes,
    chunks of at least 256 bytes (the last one excepted)."""
    body = b"0123456789" * 100
    plain = get(default, "/settings/bytes?n=1000")
    assert plain.framing == "chunked"
    assert plain.body == body
    assert len(plain.chunk_sizes) == 1000
    srv = servers.start(APP, "--minimum-chunk-size", "256")
    coalesced = get(srv, "/settings/bytes?n=1000")
    assert coalesced.framing == "chunked"
    assert coalesced.body == body
    assert 1 < len(coalesced.chunk_sizes) <= 4, coalesced.chunk_sizes
    assert all(size >= 256 for size in coalesced.chunk_sizes[:-1]), coalesced.chunk_sizes


# -- capitalize_response_headers ----------------------------------------------------------------


def test_capitalize_response_headers(configured, default):
    capitalized = get(configured, "/settings/headers")
    names = [name for name, _ in capitalized.headers]
    for name in ("Content-Type", "X-Custom-Header", "X-Already-Upper", "Content-Length"):
        assert name in names, capitalized.headers
    as_given = [name for name, _ in get(default, "/settings/headers").headers]
    for name in ("content-TYPE", "x-custom-header", "X-ALREADY-UPPER", "content-length"):
        assert name in as_given


# -- log_format, log_x_forwarded_for --------------------------------------------------------------


def test_log_format_with_eventlets_keys(configured):
    ident = new_id()
    target = f"/settings/sleep?s=0.3&id={ident}"
    before = datetime.now(timezone.utc).replace(microsecond=0)
    response = get(configured, target)
    after = datetime.now(timezone.utc)
    assert response.status == 200
    line = access_line(configured, target)
    _, client_ip, date_time, request_line, status, length, wall = line.split("|")
    assert client_ip == "127.0.0.1"
    assert re.fullmatch(r"\d\d/[A-Z][a-z]{2}/\d{4} \d\d:\d\d:\d\d", date_time), date_time
    logged = datetime.strptime(date_time, "%d/%b/%Y %H:%M:%S").replace(tzinfo=timezone.utc)
    assert before <= logged <= after, (before, logged, after)
    assert request_line == f"GET {target} HTTP/1.1"
    assert status == "200"
    assert int(length) == len(response.body)
    assert 0.3 <= float(wall) < 5.0
    assert re.fullmatch(r"\d+\.\d{6}", wall)


def test_log_x_forwarded_for_on_by_default(default):
    ident = new_id()
    get(default, f"/settings/echo?xff={ident}", [("X-Forwarded-For", "203.0.113.7, 10.0.0.2")])
    line = access_line(default, f"xff={ident}")
    assert line.startswith("203.0.113.7,10.0.0.2,127.0.0.1 - - ["), line


def test_log_x_forwarded_for_off(servers):
    srv = servers.start(APP, "--no-log-x-forwarded-for")
    ident = new_id()
    get(srv, f"/settings/echo?xff={ident}", [("X-Forwarded-For", "203.0.113.7")])
    line = access_line(srv, f"xff={ident}")
    assert line.startswith("127.0.0.1 - - ["), line
    assert "203.0.113.7" not in line
