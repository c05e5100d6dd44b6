"""Engine behaviour: listeners, timeouts, backpressure, shutdown, concurrency, the CLI
and the embeddable Server (issue 2, parts 3, 5, 6 and 7)."""

from __future__ import annotations

import email.utils
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from tests.e2e.rawhttp import ConnectionClosed, RawConnection, build_request
from tests.e2e.serverproc import REPO_ROOT, ServerProcess, free_port, subprocess_env

pytestmark = pytest.mark.timeout(90)

APP = "tests.apps.behaviour:app"


@pytest.fixture(scope="module")
def server(module_servers) -> ServerProcess:
    return module_servers.start(APP)


@pytest.fixture
def short_dir():
    """A short directory for unix sockets (sun_path holds 108 bytes)."""
    path = tempfile.mkdtemp(prefix="uy-", dir="/tmp")
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


def echo_environ(address, target: str = "/") -> Dict[str, str]:
    with RawConnection(address) as conn:
        conn.send(build_request("GET", target))
        _, response = conn.read_final_response()
    assert response.status == 200, response
    return response.json()["environ"]


# -- listeners -----------------------------------------------------------------------------


def ipv6_loopback_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback_available(), reason="this machine has no IPv6 loopback")
def test_ipv6_bind(servers):
    port = free_port("::1")
    srv = servers.start(APP, binds=[f"[::1]:{port}"])
    environ = echo_environ(("::1", port), "/v6")
    assert environ["PATH_INFO"] == "/v6"
    assert environ["REMOTE_ADDR"] == "::1"
    assert environ["SERVER_PORT"] == str(port)
    assert srv.alive()


def test_unix_socket_bind(servers, short_dir):
    path = str(short_dir / "s.sock")
    srv = servers.start(APP, binds=[f"unix:{path}"])
    assert srv.address == path
    environ = echo_environ(path, "/over-unix?x=1")
    assert environ["PATH_INFO"] == "/over-unix"
    assert environ["QUERY_STRING"] == "x=1"
    # Keep-alive and bodies work the same over a unix socket.
    with RawConnection(path) as conn:
        for i in range(3):
            conn.send(build_request("POST", f"/u{i}", body=b"unix body %d" % i))
            _, response = conn.read_final_response()
            assert response.json()["body"] == f"unix body {i}"


def test_two_tcp_binds_and_a_unix_socket_at_once(servers, short_dir):
    first, second = free_port(), free_port()
    path = str(short_dir / "both.sock")
    servers.start(APP, binds=[f"127.0.0.1:{first}", f"127.0.0.1:{second}", f"unix:{path}"])
    assert echo_environ(("127.0.0.1", first), "/first")["SERVER_PORT"] == str(first)
    assert echo_environ(("127.0.0.1", second), "/second")["SERVER_PORT"] == str(second)
    assert echo_environ(path, "/third")["PATH_INFO"] == "/third"


# -- timeouts --------------------------------------------------------------------------------


def drip(conn: RawConnection, data: bytes, interval: float, limit: float) -> Optional[float]:
    """Send `data` one byte per `interval` s; the time at which the server cut the
    connection off (EOF, reset or a response), or None if it never did within `limit`."""
    start = time.monotonic()
    for byte in data:
        if time.monotonic() - start > limit:
            return None
        readable, _, _ = select.select([conn.sock], [], [], interval)
        if readable:
            return time.monotonic() - start
        if not conn.try_send(bytes([byte])):
            return time.monotonic() - start
    return None


def test_header_timeout_cuts_off_a_slow_client(servers):
    srv = servers.start(APP, "--header-timeout", "2")
    with srv.connect(timeout=10) as conn:
        raw = b"GET /slowloris HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100 + b"\r\n\r\n"
        cut_after = drip(conn, raw, interval=1.0, limit=20.0)
        assert cut_after is not None, "a client sending one byte a second was never cut off"
        assert cut_after < 10.0
        try:
            _, response = conn.read_final_response()
            assert response.status == 408, response
        except ConnectionClosed:
            pass
        assert conn.wait_closed(5.0)
    assert not any("/slowloris" in line for line in srv.state_lines("calls"))
    assert srv.get("/after-slowloris").status == 200


def test_idle_connection_without_request_is_closed(servers):
    srv = servers.start(APP, "--header-timeout", "2", "--keepalive-timeout", "2")
    with srv.connect(timeout=15) as conn:
        start = time.monotonic()
        assert conn.wait_closed(12.0), "an idle connection was never closed"
        assert time.monotonic() - start < 12.0
        assert conn.buf == b"", "no response is due to a client that sent nothing"


def test_idle_keepalive_connection_is_closed(servers):
    srv = servers.start(APP, "--keepalive-timeout", "2")
    with srv.connect(timeout=15) as conn:
        conn.send(build_request("GET", "/ka-idle"))
        _, response = conn.read_final_response()
        assert response.status == 200
        assert conn.wait_closed(12.0), "an idle keep-alive connection was never closed"


def test_inactivity_timeout_during_a_body(servers):
    srv = servers.start(APP, "--inactivity-timeout", "2")
    with srv.connect(timeout=15) as conn:
        conn.send(build_request("POST", "/stalled", [("Content-Length", "100")]) + b"only a part")
        start = time.monotonic()
        try:
            _, response = conn.read_final_response()
            assert response.status >= 400, response
        except ConnectionClosed:
            pass
        assert conn.wait_closed(12.0)
        assert time.monotonic() - start < 12.0
    assert srv.get("/after-stall").status == 200


# -- backpressure ------------------------------------------------------------------------------


def test_clients_that_do_not_read_do_not_grow_memory(server):
    """20 clients ask for a 52 MB stream each and never read it."""
    for _ in range(3):  # warm up the allocator and the app
        assert server.get("/_/stream?size=65536&count=4").status == 200
    baseline = server.rss_kib()
    clients: List[socket.socket] = []
    peak = baseline
    try:
        for _ in range(20):
            sock = socket.create_connection(server.address, timeout=10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.sendall(build_request("GET", "/_/stream?size=65536&count=800"))
            clients.append(sock)
        deadline = time.monotonic() + 6.0
        while time.monotonic() < deadline:
            peak = max(peak, server.rss_kib())
            time.sleep(0.1)
    finally:
        for sock in clients:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
    growth_mib = (peak - baseline) / 1024
    assert growth_mib < 150, f"RSS grew by {growth_mib:.0f} MiB for 20 clients that do not read"
    assert server.get("/after-backpressure").status == 200


def test_a_slow_reader_gets_the_whole_stream(server):
    with server.connect(timeout=20) as conn:
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        conn.send(build_request("GET", "/_/stream?size=65536&count=160"))
        time.sleep(1.0)  # the server fills the socket buffers, then must wait for us
        _, response = conn.read_final_response()
    assert len(response.body) == 65536 * 160
    assert response.body == b"s" * (65536 * 160)


# -- dispatch ------------------------------------------------------------------------------------


def assert_quick_request_answered_during(server, route: str, done_word: str) -> None:
    """Starts `/_/<route>?s=3` on one connection; once it runs, a quick request on another
    connection must be answered within 2 s and before the slow one ends."""
    ident = uuid.uuid4().hex[:8]
    slow_result: Dict[str, object] = {}

    def slow() -> None:
        with server.connect(timeout=20) as conn:
            conn.send(build_request("GET", f"/_/{route}?s=3&id={ident}"))
            slow_result["response"] = conn.read_final_response()[1]

    thread = threading.Thread(target=slow)
    thread.start()
    try:
        assert server.wait_for_state(route, f"start {ident}")
        start = time.monotonic()
        quick = server.get("/quick")
        quick_done = time.monotonic()
        assert quick.status == 200
        assert quick_done - start < 2.0, f"a quick request waited {quick_done - start:.2f}s"
        assert "response" not in slow_result, f"the {route} request finished first"
    finally:
        thread.join(20)
    body = slow_result["response"].body  # type: ignore[union-attr]
    assert body == f"{done_word} {ident}".encode()


def test_a_blocking_app_does_not_stall_other_connections(server):
    assert_quick_request_answered_during(server, "sleep", "slept")


def test_a_computing_app_does_not_stall_other_connections(server):
    """A call that computes for 3 s without giving the GIL up of its own accord: the
    standby takes the loop over and shares the GIL with it, so a quick request is
    answered meanwhile."""
    assert_quick_request_answered_during(server, "spin", "spun")


def test_an_idle_server_sleeps(servers):
    """With no connection open, the server's threads wake only for the fallback check
    for signals (every second). They woke ~270 times a second when the standby looked at
    the idle leader every 4 ms, ~40 with the Date clock's 100 ms tick and a check for
    signals every 50 ms, ~21 with the tick alone."""
    srv = servers.start(APP)
    assert srv.get("/quick").status == 200
    time.sleep(2.0)  # the housekeeping sleeps after 1 s without a connection
    before = srv.wakeups()
    time.sleep(2.0)
    woken = srv.wakeups() - before
    assert woken < 20, f"{woken} wake-ups in 2 s of idleness"


def test_the_date_is_current_after_a_long_idle(servers):
    """The Date clock is not refreshed while no connection is open: the connection that
    ends the idleness refreshes it before its first response."""
    srv = servers.start(APP)
    assert srv.get("/quick").status == 200
    time.sleep(3.5)
    response = srv.get("/quick")
    header = response.header("Date")
    assert header is not None
    date = email.utils.parsedate_to_datetime(header).timestamp()
    assert abs(date - time.time()) <= 1.5, header


def test_the_applications_own_signal_handler_runs(servers):
    """A handler the application set for a signal other than the server's own runs on
    the main thread while the engine serves, each time the signal comes."""
    srv = servers.start("tests.apps.user_signal:app")
    assert srv.get("/").body == b"0"
    for expected in (b"1", b"2"):
        os.kill(srv.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while (body := srv.get("/").body) != expected:
            assert time.monotonic() < deadline, f"the handler's count is {body!r}"
            time.sleep(0.02)


def test_a_blocking_call_after_a_long_idle_does_not_stall_others(servers):
    """The standby of an idle server sleeps until a call starts; the call that ends the
    idleness must still be watched, and taken over when it blocks."""
    srv = servers.start(APP)
    assert srv.get("/quick").status == 200
    time.sleep(1.0)
    assert_quick_request_answered_during(srv, "sleep", "slept")


def test_blocking_requests_run_concurrently_with_default_settings(server):
    """Ten requests sleeping 1 s each: serialised they would take 10 s."""
    results: List[int] = []

    def one(i: int) -> None:
        response = server.get(f"/_/sleep?s=1&id=c{i}")
        results.append(response.status)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    elapsed = time.monotonic() - start
    assert results == [200] * 10
    assert elapsed < 6.0, f"10 concurrent 1 s requests took {elapsed:.1f}s"


# -- shutdown ------------------------------------------------------------------------------------


def test_sigterm_finishes_the_request_in_flight_and_exits_0(servers):
    srv = servers.start(APP)
    ident = uuid.uuid4().hex[:8]
    result: Dict[str, object] = {}

    def slow() -> None:
        try:
            with srv.connect(timeout=20) as conn:
                conn.send(build_request("GET", f"/_/sleep?s=3&id={ident}"))
                result["response"] = conn.read_final_response()[1]
        except Exception as exc:  # reported below
            result["error"] = exc
        result["done_at"] = time.monotonic()

    thread = threading.Thread(target=slow)
    thread.start()
    assert srv.wait_for_state("sleep", f"start {ident}")
    assert srv.process is not None
    os.kill(srv.pid, signal.SIGTERM)
    # New connections are refused while the slow request is still running.
    refused_at = None
    while "done_at" not in result:
        try:
            with socket.create_connection(srv.address, timeout=1) as probe:
                probe.sendall(build_request("GET", "/after-sigterm"))
                probe.settimeout(1)
                if probe.recv(1) == b"":
                    refused_at = time.monotonic()
                    break
        except OSError:
            refused_at = time.monotonic()
            break
        time.sleep(0.05)
    thread.join(20)
    assert "error" not in result, result
    assert result["response"].status == 200  # type: ignore[union-attr]
    assert result["response"].body == f"slept {ident}".encode()  # type: ignore[union-attr]
    assert srv.process.wait(timeout=20) == 0, srv.log()[-2000:]
    srv.returncode = 0
    # A probe that raced the signal's delivery may have been served: what is required is
    # that new connections are refused while the slow request is still running.
    assert refused_at is not None, "kept accepting after SIGTERM"
    assert refused_at <= result["done_at"], "kept accepting after SIGTERM"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_on_idle_server_exits_0(servers, sig):
    srv = servers.start(APP)
    assert srv.get("/before-signal").status == 200
    assert srv.stop(sig=sig, timeout=15) == 0, srv.log()[-2000:]
    assert not srv.killed
    assert "Traceback" not in srv.log()


def test_graceful_timeout_bounds_the_wait(servers):
    srv = servers.start(APP, "--graceful-timeout", "1")
    ident = uuid.uuid4().hex[:8]
    conn = srv.connect(timeout=30)
    try:
        conn.send(build_request("GET", f"/_/sleep?s=20&id={ident}"))
        assert srv.wait_for_state("sleep", f"start {ident}")
        start = time.monotonic()
        os.kill(srv.pid, signal.SIGTERM)
        assert srv.process is not None
        srv.process.wait(timeout=15)
        assert time.monotonic() - start < 10.0
    finally:
        conn.close()
        srv.stop()


# -- the CLI -----------------------------------------------------------------------------------


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "unyoke", *args],
        cwd=str(REPO_ROOT),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_clean_error(
    result: subprocess.CompletedProcess, *mentions: str, max_lines: int = 1
) -> None:
    output = result.stderr + result.stdout
    lines = [line for line in output.splitlines() if line.strip()]
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    assert "panicked" not in output, output
    assert 1 <= len(lines) <= max_lines, output
    for mention in mentions:
        assert mention in output, output


def test_cli_missing_module():
    port = free_port()
    result = run_cli("tests.apps.does_not_exist:app", "--bind", f"127.0.0.1:{port}")
    assert_clean_error(result, "does_not_exist")


def test_cli_missing_attribute():
    port = free_port()
    result = run_cli("tests.apps.behaviour:no_such_app", "--bind", f"127.0.0.1:{port}")
    assert_clean_error(result, "no_such_app")


def test_cli_port_in_use():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(APP, "--bind", f"127.0.0.1:{port}")
    assert_clean_error(result, str(port))


def test_cli_bad_flag_value():
    result = run_cli(APP, "--threads", "abc")
    assert_clean_error(result, "threads", max_lines=3)


def test_cli_unknown_flag():
    result = run_cli(APP, "--no-such-flag")
    assert_clean_error(result, "--no-such-flag", max_lines=3)


def test_cli_console_script_and_python_m_agree(servers):
    script = shutil.which("unyoke")
    if script is None:
        pytest.fail("the 'unyoke' console script is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [script, APP, "--bind", f"127.0.0.1:{port}"],
        cwd=str(REPO_ROOT),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                environ = echo_environ(("127.0.0.1", port), "/console-script")
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert environ["PATH_INFO"] == "/console-script"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        if proc.stderr:
            proc.stderr.close()


def test_cli_help_documents_defaults():
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in (
        "--bind",
        "--threads",
        "--max-request-header-size",
        "--header-timeout",
        "--inbuf-overflow",
        "--no-keepalive",
        "--identity",
        "--expose-tracebacks",
    ):
        assert flag in result.stdout, flag
    assert "default" in result.stdout


# -- logs ----------------------------------------------------------------------------------------


def test_access_log_line_per_request(server):
    marker = f"/access-{uuid.uuid4().hex}"
    assert server.get(marker + "?q=1").status == 200
    assert server.wait_for_log(marker), server.log()[-2000:]
    line = next(line for line in server.log().splitlines() if marker in line)
    assert " 200 " in line
    assert "127.0.0.1" in line
    assert "GET " in line


def test_no_access_log(servers):
    srv = servers.start(APP, "--no-access-log")
    marker = f"/quiet-{uuid.uuid4().hex}"
    assert srv.get(marker).status == 200
    assert srv.get("/_/raise?marker=flush-" + marker).status == 500
    assert srv.wait_for_log("flush-" + marker)  # the error log is still written
    assert marker not in srv.log().replace("flush-" + marker, "")


def test_log_format_setting(servers):
    srv = servers.start(APP, "--log-format", "ACCESS %(status_code)s %(request_line)s")
    marker = f"/fmt-{uuid.uuid4().hex}"
    assert srv.get(marker).status == 200
    assert srv.wait_for_log(f"ACCESS 200 GET {marker} HTTP/1.1"), srv.log()[-2000:]


# -- embedding -------------------------------------------------------------------------------------


def embedded_app(environ, start_response):
    body = f"embedded {environ['PATH_INFO']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


@pytest.mark.timeout(60)
def test_embedded_server_start_and_stop():
    import unyoke

    for round_ in range(2):
        srv = unyoke.Server(embedded_app, bind=["127.0.0.1:0"])
        srv.start()
        try:
            assert isinstance(srv.port, int) and srv.port > 0
            with RawConnection(("127.0.0.1", srv.port)) as conn:
                conn.send(build_request("GET", f"/round{round_}"))
                _, response = conn.read_final_response()
            assert response.status == 200
            assert response.body == f"embedded /round{round_}".encode()
            port = srv.port
        finally:
            srv.stop()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()


@pytest.mark.timeout(60)
def test_embedded_server_as_context_manager_with_requests():
    import requests
    import unyoke

    with unyoke.Server(embedded_app, bind=["127.0.0.1:0"]) as srv:
        response = requests.get(f"http://127.0.0.1:{srv.port}/ctx", timeout=10)
        assert response.status_code == 200
        assert response.text == "embedded /ctx"
