"""Applications that break PEP 3333: each gets a log line naming its mistake, the client
gets a 500 (nothing sent yet) or a closed connection that cannot pass for a complete
response (something already sent), and the worker keeps serving the next request.

Already covered elsewhere, not repeated here (tests/e2e/test_pep3333.py):
- a broken status line and broken header names/values (CRLF injection, NUL, bytes,
  non-latin-1, not a list): test_bad_status_from_app_is_500, test_bad_header_from_app_is_500
  (500, nothing injected, the same connection serves again);
- start_response twice without exc_info: test_start_response_twice_without_exc_info_is_an_error
  (500 and the app sees the exception); here only its log line is checked;
- an exception in the middle of a chunked stream: test_exception_mid_stream_cuts_the_response
  (here also with Content-Length, and the missing last chunk is checked explicitly);
- an exception before/after start_response: test_app_exception_is_500_without_traceback_and_logged.
"""

from __future__ import annotations

import socket
import time
from typing import Tuple

import pytest

from tests.e2e.rawhttp import IncompleteResponse, build_request
from tests.e2e.serverproc import ServerProcess

pytestmark = pytest.mark.timeout(60)

APP = "tests.apps.misbehaving:app"


@pytest.fixture(scope="module")
def server(module_servers) -> ServerProcess:
    return module_servers.start(APP)


def raw_exchange(server: ServerProcess, target: str, wait: float = 5.0) -> Tuple[bytes, bool]:
    """Everything the server sends for one GET, and whether it closed the connection."""
    sock = socket.create_connection(server.address, timeout=wait)
    try:
        sock.sendall(build_request("GET", target))
        data = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                piece = sock.recv(65536)
            except TimeoutError:
                return data, False
            if not piece:
                return data, True
            data += piece
            sock.settimeout(max(0.05, min(1.0, deadline - time.monotonic())))
        return data, False
    finally:
        sock.close()


def assert_serves_again(server: ServerProcess) -> None:
    response = server.get("/hello")
    assert response.status == 200 and response.body == b"hello", response


def assert_500(server: ServerProcess, target: str) -> None:
    response = server.get(target)
    assert response.status == 500, response
    assert b"must not be sent" not in response.body
    assert response.header("X-Injected") is None


@pytest.mark.parametrize(
    "target, log_text",
    [
        ("/str_body", "TypeError: the response iterable yielded str, not bytes"),
        ("/str_item", "TypeError: the response iterable yielded str, not bytes"),
        ("/no_start", "the application returned without calling start_response"),
        ("/start_twice", "start_response called a second time without exc_info"),
        ("/none", "the application returned NoneType, which is not an iterable of bytes"),
        ("/invalid_header", 'invalid value for header "X-Bad"'),
        ("/hop_by_hop?name=Transfer-Encoding", 'hop-by-hop header "Transfer-Encoding"'),
        ("/hop_by_hop?name=Keep-Alive", 'hop-by-hop header "Keep-Alive"'),
        ("/hop_by_hop?name=Upgrade", 'hop-by-hop header "Upgrade"'),
        ("/hop_by_hop?name=TE", 'hop-by-hop header "TE"'),
    ],
)
def test_mistake_before_the_head_is_a_logged_500(server, target, log_text):
    assert_500(server, target)
    assert server.wait_for_log(log_text), server.log()[-2000:]
    # The log line names the request, so an operator can find the route.
    line = next(line for line in server.log().splitlines() if "[ERROR]" in line and target in line)
    assert "GET" in line, line
    assert_serves_again(server)


def test_connection_close_from_the_app_closes_after_a_complete_response(server):
    """`Connection: close` is the one hop-by-hop field an app may use: the server honours
    it (the response is complete, then the connection closes)."""
    data, closed = raw_exchange(server, "/hop_by_hop?name=Connection")
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\nok"), data
    assert closed
    assert_serves_again(server)


def test_raise_mid_chunked_stream_never_sends_the_last_chunk(server):
    data, closed = raw_exchange(server, "/raise_mid")
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head, head
    assert b"first-chunk;" in body
    assert not body.endswith(b"0\r\n\r\n"), "a cut response passed off as complete"
    assert closed
    assert server.wait_for_log("RuntimeError: raise-mid-stream-marker")
    assert_serves_again(server)


def test_raise_mid_length_body_closes_short(server):
    data, closed = raw_exchange(server, "/raise_mid_cl")
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Content-Length: 100" in head
    assert body == b"0123456789"
    assert closed, "a short Content-Length body must end with a close"
    assert server.wait_for_log("RuntimeError: raise-mid-length-marker")
    assert_serves_again(server)


def test_yield_after_close_is_never_iterated_again(server):
    with server.connect() as conn:
        conn.send(build_request("GET", "/yield_after_close"))
        _, response = conn.read_final_response()
        assert response.body == b"datadata"
    assert server.wait_for_state("yield_after_close", "closed", timeout=3.0)
    time.sleep(0.3)
    assert server.state_lines("yield_after_close") == ["closed"], server.state_lines(
        "yield_after_close"
    )
    assert_serves_again(server)


def test_content_length_fewer_bytes_closes_the_connection(server):
    """The client sees a short body and a close: it cannot take it as complete."""
    with server.connect() as conn:
        conn.send(build_request("GET", "/cl_fewer"))
        with pytest.raises(IncompleteResponse) as info:
            conn.read_final_response()
        assert info.value.response.body == b"12345"
        assert conn.wait_closed(5.0)
    assert_serves_again(server)


@pytest.mark.parametrize("target", ["/cl_more", "/cl_more_one"])
def test_content_length_more_bytes_is_cut_at_the_length(server, target):
    """The extra bytes never reach the wire (they would be read as the next response)."""
    with server.connect() as conn:
        conn.send(build_request("GET", target))
        _, response = conn.read_final_response()
        assert response.body == b"12345"
        assert conn.nothing_arrives(0.5) or conn.wait_closed(0.1)
    assert_serves_again(server)


def test_content_length_fewer_bytes_is_logged(server):
    raw_exchange(server, "/cl_fewer")
    assert server.wait_for_log("Content-Length", timeout=2.0) and "/cl_fewer" in "".join(
        line for line in server.log().splitlines() if "[ERROR]" in line or "[WARNING]" in line
    ), server.log()[-1500:]


def test_content_length_more_bytes_is_logged(server):
    raw_exchange(server, "/cl_more")
    time.sleep(1.0)
    assert "/cl_more" in "".join(
        line for line in server.log().splitlines() if "[ERROR]" in line or "[WARNING]" in line
    ), server.log()[-1500:]
