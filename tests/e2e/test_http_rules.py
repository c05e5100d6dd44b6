"""RFC 9112 rules over raw sockets against a real server (issue 2, part 2).

Every rejected request must get its exact status, the connection must close where
framing is in doubt, and nothing may reach the app: the app behind these servers
records each call, and would answer 200 to anything that got through.
"""

from __future__ import annotations

import email.utils
import re
import time
import uuid
from typing import Iterable, Optional

import pytest

from tests.e2e.rawhttp import ConnectionClosed, HTTPResponse, build_request, chunked
from tests.e2e.serverproc import ServerProcess

pytestmark = pytest.mark.timeout(60)

APP = "tests.apps.behaviour:app"
ONE_GIB = 1 << 30


@pytest.fixture(scope="module")
def server(module_servers) -> ServerProcess:
    return module_servers.start(APP)


@pytest.fixture(scope="module")
def small(module_servers) -> ServerProcess:
    """Small limits, so that the boundaries can be probed cheaply."""
    return module_servers.start(
        APP,
        "--max-request-body-size",
        "1000",
        "--url-length-limit",
        "200",
        "--max-request-header-size",
        "4096",
    )


def echo_of(response: HTTPResponse) -> dict:
    assert response.status == 200, response
    return response.json()


def assert_rejected(
    server: ServerProcess,
    raw: bytes,
    statuses: Iterable[int] = (400,),
    *,
    reaches_app: bool = False,
) -> HTTPResponse:
    """`raw` gets one final response with a status in `statuses`, then the connection closes.

    Unless `reaches_app`, the app must not have been called (body-framing errors may
    only be found after the app started reading, so those pass reaches_app=True).
    """
    statuses = set(statuses)
    calls_before = server.app_calls()
    with server.connect() as conn:
        conn.try_send(raw)
        try:
            _, response = conn.read_final_response()
        except ConnectionClosed:
            pytest.fail(f"server closed the connection without a response; expected {statuses}")
        assert response.status in statuses, f"expected {statuses}, got {response!r}"
        assert conn.wait_closed(5.0), (
            f"connection not closed after {response.status}; extra bytes {conn.buf[:200]!r}"
        )
    if not reaches_app:
        assert server.app_calls() == calls_before, (
            f"a rejected request reached the app: {server.state_lines('calls')[calls_before:]}"
        )
    return response


def test_app_call_log_records_requests(server):
    """The rejection tests rely on the app's call log: it must see accepted requests."""
    before = server.app_calls()
    marker = f"/counted-{uuid.uuid4().hex}"
    assert server.get(marker).status == 200
    assert server.app_calls() == before + 1
    assert server.state_lines("calls")[-1] == f"GET {marker}"


def send_and_read(server: ServerProcess, raw: bytes, count: int, method: str = "GET"):
    with server.connect() as conn:
        conn.send(raw)
        responses = [conn.read_final_response(method)[1] for _ in range(count)]
        return responses, conn.wait_closed(1.0)


# -- limits -----------------------------------------------------------------------------


def test_header_size_over_default_limit_is_431_and_closes(server):
    big = "a" * (262144 + 1000)
    assert_rejected(server, build_request(headers=[("X-Big", big)]), {431})


def test_many_headers_over_default_limit_is_431(server):
    headers = [(f"X-H{i}", "v" * 90) for i in range(3000)]  # ~300 KB
    assert_rejected(server, build_request(headers=headers), {431})


def test_header_size_under_default_limit_is_served(server):
    big = "b" * 200_000
    response = server.get("/under-limit", headers=[("X-Big", big)])
    assert echo_of(response)["environ"]["HTTP_X_BIG"] == big


def test_url_over_default_limit_is_414_and_closes(server):
    assert_rejected(server, build_request(target="/" + "u" * 8300), {414})


def test_url_under_default_limit_is_served(server):
    target = "/" + "u" * 8000
    assert echo_of(server.get(target))["environ"]["PATH_INFO"] == target


def test_content_length_over_default_body_limit_is_413_before_reading(server):
    raw = build_request("POST", "/", [("Content-Length", str(ONE_GIB + 1))])
    assert_rejected(server, raw, {413})


def test_configured_url_limit(small):
    assert echo_of(small.get("/" + "a" * 150))["environ"]["PATH_INFO"] == "/" + "a" * 150
    assert_rejected(small, build_request(target="/" + "a" * 260), {414})


def test_configured_header_limit(small):
    assert echo_of(small.get("/h", headers=[("X-A", "a" * 3000)]))["environ"]["HTTP_X_A"]
    assert_rejected(small, build_request(headers=[("X-A", "a" * 5000)]), {431})


def test_body_at_configured_limit_is_served(small):
    body = b"z" * 1000
    response = small.request(build_request("POST", "/", body=body)).response
    assert echo_of(response)["body_len"] == 1000


def test_content_length_one_over_configured_limit_is_413(small):
    raw = build_request("POST", "/", [("Content-Length", "1001")]) + b"z" * 1001
    assert_rejected(small, raw, {413})


def test_chunked_body_over_configured_limit_is_413(small):
    body = chunked(b"y" * 1400, sizes=[600, 600])
    raw = build_request("POST", "/", [("Transfer-Encoding", "chunked")]) + body
    # The app may already be reading when the total passes the limit.
    assert_rejected(small, raw, {413}, reaches_app=True)


def test_chunked_body_at_configured_limit_is_served(small):
    body = chunked(b"y" * 1000, sizes=[600])
    raw = build_request("POST", "/", [("Transfer-Encoding", "chunked")]) + body
    assert echo_of(small.request(raw).response)["body_len"] == 1000


# -- request smuggling and malformed heads ------------------------------------------------

H = "Host: example.test\r\n"

BAD_HEADS = {
    # framing: RFC 9112 §6.1, §6.3
    "cl_and_te": (
        f"POST / HTTP/1.1\r\n{H}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        {400},
    ),
    "te_and_cl": (
        f"POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        {400},
    ),
    "cl_and_te_tab": (
        f"POST / HTTP/1.1\r\n{H}Content-Length: 5\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n",
        {400},
    ),
    "two_cl_differ": (
        f"POST / HTTP/1.1\r\n{H}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        {400},
    ),
    "cl_list_differ": (f"POST / HTTP/1.1\r\n{H}Content-Length: 5, 6\r\n\r\nhello!", {400}),
    "cl_plus": (f"POST / HTTP/1.1\r\n{H}Content-Length: +5\r\n\r\nhello", {400}),
    "cl_minus": (f"POST / HTTP/1.1\r\n{H}Content-Length: -5\r\n\r\nhello", {400}),
    "cl_hex": (f"POST / HTTP/1.1\r\n{H}Content-Length: 0x5\r\n\r\nhello", {400}),
    "cl_inner_space": (f"POST / HTTP/1.1\r\n{H}Content-Length: 5 5\r\n\r\nhello", {400}),
    "cl_decimal": (f"POST / HTTP/1.1\r\n{H}Content-Length: 5.0\r\n\r\nhello", {400}),
    "cl_underscore": (f"POST / HTTP/1.1\r\n{H}Content-Length: 0_5\r\n\r\nhello", {400}),
    "cl_word": (f"POST / HTTP/1.1\r\n{H}Content-Length: five\r\n\r\nhello", {400}),
    "cl_empty": (f"POST / HTTP/1.1\r\n{H}Content-Length: \r\n\r\nhello", {400}),
    "cl_overflow": (
        f"POST / HTTP/1.1\r\n{H}Content-Length: 99999999999999999999999\r\n\r\n",
        {400, 413},
    ),
    "te_gzip_only": (f"POST / HTTP/1.1\r\n{H}Transfer-Encoding: gzip\r\n\r\nhello", {400, 501}),
    "te_chunked_not_last": (
        f"POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        {400, 501},
    ),
    "te_chunked_not_last_two_lines": (
        f"POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n"
        "Transfer-Encoding: identity\r\n\r\n0\r\n\r\n",
        {400, 501},
    ),
    "te_identity": (f"POST / HTTP/1.1\r\n{H}Transfer-Encoding: identity\r\n\r\nhello", {400, 501}),
    "te_unknown_coding": (
        f"POST / HTTP/1.1\r\n{H}Transfer-Encoding: foo, chunked\r\n\r\n0\r\n\r\n",
        {400, 501},
    ),
    "te_chunked_twice": (
        f"POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        {400, 501},
    ),
    "te_chunked_on_http10": (
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        {400},
    ),
    # field syntax: RFC 9112 §5, §2.2
    "obs_fold_space": (f"GET / HTTP/1.1\r\n{H}X-A: one\r\n two\r\n\r\n", {400}),
    "obs_fold_tab": (f"GET / HTTP/1.1\r\n{H}X-A: one\r\n\ttwo\r\n\r\n", {400}),
    "whitespace_line_after_request_line": (f"GET / HTTP/1.1\r\n {H}\r\n", {400}),
    "bare_cr_in_value": (f"GET / HTTP/1.1\r\n{H}X-A: a\rb\r\n\r\n", {400}),
    "bare_cr_in_request_line": (f"GET /a\rb HTTP/1.1\r\n{H}\r\n", {400}),
    "nul_in_value": (f"GET / HTTP/1.1\r\n{H}X-A: a\x00b\r\n\r\n", {400}),
    "nul_in_name": (f"GET / HTTP/1.1\r\n{H}X\x00A: b\r\n\r\n", {400}),
    "nul_in_target": (f"GET /a\x00b HTTP/1.1\r\n{H}\r\n", {400}),
    "space_before_colon": (f"GET / HTTP/1.1\r\n{H}X-A : b\r\n\r\n", {400}),
    "tab_before_colon": (f"GET / HTTP/1.1\r\n{H}X-A\t: b\r\n\r\n", {400}),
    "host_space_before_colon": ("GET / HTTP/1.1\r\nHost : example.test\r\n\r\n", {400}),
    "name_paren": (f"GET / HTTP/1.1\r\n{H}X(A): b\r\n\r\n", {400}),
    "name_space": (f"GET / HTTP/1.1\r\n{H}X A: b\r\n\r\n", {400}),
    "name_quote": (f'GET / HTTP/1.1\r\n{H}X"A: b\r\n\r\n', {400}),
    "name_slash": (f"GET / HTTP/1.1\r\n{H}X/A: b\r\n\r\n", {400}),
    "name_comma": (f"GET / HTTP/1.1\r\n{H}X,A: b\r\n\r\n", {400}),
    "name_brace": (f"GET / HTTP/1.1\r\n{H}X{{A}}: b\r\n\r\n", {400}),
    "name_empty": (f"GET / HTTP/1.1\r\n{H}: b\r\n\r\n", {400}),
    "name_non_ascii": (f"GET / HTTP/1.1\r\n{H}X-\xc9: b\r\n\r\n", {400}),
    "line_without_colon": (f"GET / HTTP/1.1\r\n{H}NoColonHere\r\n\r\n", {400}),
    # request line: RFC 9112 §3
    "version_2_0": (f"GET / HTTP/2.0\r\n{H}\r\n", {505}),
    "version_1_2": (f"GET / HTTP/1.2\r\n{H}\r\n", {505}),
    "version_3_0": (f"GET / HTTP/3.0\r\n{H}\r\n", {505}),
    "version_lowercase": (f"GET / http/1.1\r\n{H}\r\n", {400, 505}),
    "version_garbage": (f"GET / HTTP/1.x\r\n{H}\r\n", {400, 505}),
    "version_missing": (f"GET /\r\n{H}\r\n", {400}),
    "double_space_in_request_line": (f"GET  / HTTP/1.1\r\n{H}\r\n", {400}),
    "method_with_separator": (f"GE(T / HTTP/1.1\r\n{H}\r\n", {400}),
    "method_non_ascii": (f"G\xc9T / HTTP/1.1\r\n{H}\r\n", {400}),
    "empty_target": (f"GET  HTTP/1.1\r\n{H}\r\n", {400}),
    # Host: RFC 9112 §3.2
    "missing_host_http11": ("GET / HTTP/1.1\r\nX-A: b\r\n\r\n", {400}),
    "two_hosts_http11": ("GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", {400}),
}


@pytest.mark.parametrize("name", sorted(BAD_HEADS))
def test_malformed_request_is_rejected_and_never_reaches_app(server, name):
    raw, statuses = BAD_HEADS[name]
    assert_rejected(server, raw.encode("latin-1"), statuses)


BAD_CHUNKED_BODIES = {
    "size_not_hex": b"zz\r\nhello\r\n0\r\n\r\n",
    "size_empty": b"\r\nhello\r\n0\r\n\r\n",
    "size_leading_space": b" 5\r\nhello\r\n0\r\n\r\n",
    "size_underscore": b"5_0\r\nhello\r\n0\r\n\r\n",
    "size_plus": b"+5\r\nhello\r\n0\r\n\r\n",
    "size_overflow": b"ffffffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    "data_longer_than_size": b"3\r\nhello\r\n0\r\n\r\n",
    "data_not_followed_by_crlf": b"5\r\nhelloXX0\r\n\r\n",
    "size_line_bare_lf_in_ext": b"5;a\nb\r\nhello\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(BAD_CHUNKED_BODIES))
def test_malformed_chunked_body_is_400_and_closes(server, name):
    raw = (
        f"POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n".encode()
        + BAD_CHUNKED_BODIES[name]
    )
    statuses = {400, 413} if name == "size_overflow" else {400}
    assert_rejected(server, raw, statuses, reaches_app=True)


def test_content_length_with_surrounding_whitespace_is_valid(server):
    """OWS around a field value is not part of it (RFC 9110 §5.5): " 5 " is 5."""
    raw = f"POST / HTTP/1.1\r\n{H}Content-Length:   5 \t\r\n\r\nhello".encode()
    assert echo_of(server.request(raw).response)["body"] == "hello"


def test_identical_content_length_headers_are_not_a_desync(server):
    """Two equal Content-Length values may be accepted or rejected, never misframed."""
    raw = f"POST / HTTP/1.1\r\n{H}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello".encode()
    with server.connect() as conn:
        conn.send(raw + build_request("GET", "/after-equal-cl"))
        _, response = conn.read_final_response()
        if response.status == 400:
            assert conn.wait_closed(5.0)
            return
        assert echo_of(response)["body"] == "hello"
        _, second = conn.read_final_response()
        assert echo_of(second)["environ"]["PATH_INFO"] == "/after-equal-cl"


def test_host_not_required_on_http10(server):
    with server.connect() as conn:
        conn.send(b"GET /no-host HTTP/1.0\r\n\r\n")
        _, response = conn.read_final_response()
    assert echo_of(response)["environ"]["PATH_INFO"] == "/no-host"


def test_server_keeps_serving_after_rejections(server):
    for name in ("cl_and_te", "obs_fold_space", "version_2_0"):
        raw, _ = BAD_HEADS[name]
        server.request(raw.encode("latin-1"))
    assert echo_of(server.get("/still-alive"))["environ"]["PATH_INFO"] == "/still-alive"


# -- keep-alive ---------------------------------------------------------------------------


def test_http11_is_persistent_by_default(server):
    with server.connect() as conn:
        for i in range(3):
            conn.send(build_request("GET", f"/ka{i}"))
            _, response = conn.read_final_response()
            environ = echo_of(response)["environ"]
            assert environ["PATH_INFO"] == f"/ka{i}"
            assert environ["REMOTE_PORT"] == str(conn.local_port)
        assert "close" not in response.header_tokens("connection")


def test_each_request_gets_a_fresh_environ_with_its_own_connection_addresses(server):
    # The server keeps what is the same for every request on a connection (addresses,
    # SERVER_NAME) and copies it per request: one request's changes to its environ must
    # not reach the next, and interleaved connections keep their own addresses.
    with server.connect() as first, server.connect() as second:
        # (A connection's first request builds its environ directly; the kept template
        # serves the requests after it, so the scribbling request is the second.)
        first.send(build_request("GET", "/echo"))
        first.read_final_response()
        first.send(build_request("GET", "/_/scribble"))
        _, response = first.read_final_response()
        assert echo_of(response)["environ"]["scribbled"] == "yes"
        for conn in (second, first, second):
            conn.send(build_request("GET", "/echo"))
            _, response = conn.read_final_response()
            environ = echo_of(response)["environ"]
            assert "scribbled" not in environ
            assert environ["SERVER_NAME"] != "scribbled.example"
            assert environ["REMOTE_ADDR"] == "127.0.0.1"
            assert environ["REMOTE_PORT"] == str(conn.local_port)
        assert first.local_port != second.local_port


@pytest.mark.parametrize("value", ["close", "Close", "CLOSE", "keep-alive, close", "close, te"])
def test_http11_connection_close_closes_after_response(server, value):
    raw = build_request("GET", "/bye", [("Connection", value)])
    exchange = server.request(raw, close_wait=5.0)
    assert exchange.status == 200
    assert exchange.closed
    assert "close" in exchange.response.header_tokens("connection")


def test_http10_closes_by_default(server):
    exchange = server.request(b"GET /old HTTP/1.0\r\n\r\n", close_wait=5.0)
    assert exchange.status == 200
    assert exchange.closed


def test_http10_keep_alive_is_either_honoured_or_closed(server):
    with server.connect() as conn:
        conn.send(b"GET /old-ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        _, response = conn.read_final_response()
        assert echo_of(response)["environ"]["SERVER_PROTOCOL"] == "HTTP/1.0"
        if "keep-alive" not in response.header_tokens("connection"):
            assert conn.wait_closed(5.0), "1.0 connection kept open without Connection: keep-alive"
            return
        assert response.framing == "length"
        conn.send(b"GET /old-ka-2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        _, second = conn.read_final_response()
        assert echo_of(second)["environ"]["PATH_INFO"] == "/old-ka-2"


def test_no_keepalive_setting_closes_http11(servers):
    srv = servers.start(APP, "--no-keepalive")
    exchange = srv.request(build_request("GET", "/x"), close_wait=5.0)
    assert exchange.status == 200
    assert exchange.closed


# -- pipelining ----------------------------------------------------------------------------


def test_pipelined_requests_are_answered_in_order(server):
    raw = b"".join(build_request("GET", f"/pipe{i}") for i in range(5))
    responses, _ = send_and_read(server, raw, 5)
    assert [echo_of(r)["environ"]["PATH_INFO"] for r in responses] == [
        f"/pipe{i}" for i in range(5)
    ]


def test_pipelined_requests_with_bodies(server):
    raw = (
        build_request("POST", "/p-cl", body=b"first body")
        + build_request("POST", "/p-chunked", [("Transfer-Encoding", "chunked")])
        + chunked(b"second body", sizes=[3, 4])
        + build_request("GET", "/p-get")
        + build_request("PUT", "/p-last", [("Connection", "close")], body=b"last")
    )
    responses, closed = send_and_read(server, raw, 4)
    echoed = [(echo_of(r)["environ"]["PATH_INFO"], echo_of(r)["body"]) for r in responses]
    assert echoed == [
        ("/p-cl", "first body"),
        ("/p-chunked", "second body"),
        ("/p-get", ""),
        ("/p-last", "last"),
    ]
    assert closed


def test_request_pipelined_after_a_rejected_one_is_never_processed(server):
    marker = f"/never-{uuid.uuid4().hex}"
    raw = (
        f"POST / HTTP/1.1\r\n{H}Content-Length: 1\r\nContent-Length: 2\r\n\r\nab".encode()
        + build_request("GET", marker)
    )
    assert_rejected(server, raw, {400})
    assert not any(marker in line for line in server.state_lines("calls"))


def test_request_pipelined_after_connection_close_is_never_processed(server):
    marker = f"/never-{uuid.uuid4().hex}"
    raw = build_request("GET", "/closing", [("Connection", "close")]) + build_request("GET", marker)
    responses, closed = send_and_read(server, raw, 1)
    assert echo_of(responses[0])["environ"]["PATH_INFO"] == "/closing"
    assert closed
    assert not any(marker in line for line in server.state_lines("calls"))


def test_request_split_across_many_writes(server):
    body = b"0123456789" * 5
    raw = build_request("POST", "/split", [("Transfer-Encoding", "chunked")]) + chunked(
        body, sizes=[7, 13]
    )
    with server.connect() as conn:
        for i in range(0, len(raw), 7):
            conn.send(raw[i : i + 7])
            time.sleep(0.005)
        _, response = conn.read_final_response()
    assert echo_of(response)["body"] == body.decode()


# -- Expect: 100-continue --------------------------------------------------------------------


def test_100_continue_is_sent_only_when_the_app_reads(server):
    name = uuid.uuid4().hex
    body = b"the body after 100"
    head = build_request(
        "POST",
        f"/_/gate?name={name}",
        [("Expect", "100-continue"), ("Content-Length", str(len(body)))],
    )
    with server.connect() as conn:
        conn.send(head)
        assert server.wait_for_state("gate", f"waiting {name}")
        assert conn.nothing_arrives(0.5), f"sent before the app read the body: {conn.buf!r}"
        server.state_path(f"gate-{name}").touch()
        interim = conn.read_response()
        assert interim.status == 100, interim
        assert interim.version == "HTTP/1.1"
        conn.send(body)
        _, final = conn.read_final_response()
    assert echo_of(final)["body"] == body.decode()


def test_100_continue_then_final_response_for_reading_app(server):
    body = b"x" * 100
    head = build_request("POST", "/reads", [("Expect", "100-continue"), ("Content-Length", "100")])
    with server.connect() as conn:
        conn.send(head)
        interim = conn.read_response()
        assert interim.status == 100
        assert interim.body == b""
        conn.send(body)
        final = conn.read_response()
        assert echo_of(final)["body_len"] == 100
        conn.send(build_request("GET", "/after-100"))
        assert echo_of(conn.read_response())["environ"]["PATH_INFO"] == "/after-100"


def test_no_100_continue_when_the_app_answers_without_reading(server):
    """The unread body is then discarded (connection reusable) or the connection closes;
    either way the body is never parsed as a request (no desync)."""
    smuggled = f"/smuggled-{uuid.uuid4().hex}"
    body = build_request("GET", smuggled)
    head = build_request(
        "POST", "/_/noread", [("Expect", "100-continue"), ("Content-Length", str(len(body)))]
    )
    with server.connect() as conn:
        conn.send(head)
        first = conn.read_response()
        assert first.status == 200, f"expected the final response and no 100: {first!r}"
        assert first.body == b"answered without reading"
        # The client may send the body anyway (RFC 9110 §10.1.1), then a next request.
        conn.try_send(body + build_request("GET", "/after-noread"))
        try:
            _, second = conn.read_final_response()
        except ConnectionClosed:
            second = None
        if second is not None:
            assert echo_of(second)["environ"]["PATH_INFO"] == "/after-noread"
    assert not any(smuggled in line for line in server.state_lines("calls"))


def test_expect_100_with_body_already_sent(server):
    body = b"eager client"
    raw = build_request("POST", "/eager", [("Expect", "100-continue")], body=body)
    with server.connect() as conn:
        conn.send(raw)
        interim, final = conn.read_final_response()
        assert all(r.status == 100 for r in interim)
        assert echo_of(final)["body"] == body.decode()
        conn.send(build_request("GET", "/after-eager"))
        assert echo_of(conn.read_final_response()[1])["environ"]["PATH_INFO"] == "/after-eager"


# -- chunked request bodies -------------------------------------------------------------------


def post_chunked(server: ServerProcess, encoded: bytes, then: Optional[str] = None) -> dict:
    raw = build_request("POST", "/chunked", [("Transfer-Encoding", "chunked")]) + encoded
    if then:
        raw += build_request("GET", then)
    with server.connect() as conn:
        conn.send(raw)
        result = echo_of(conn.read_final_response()[1])
        if then:
            assert echo_of(conn.read_final_response()[1])["environ"]["PATH_INFO"] == then
    return result


def test_chunked_body_with_extensions(server):
    encoded = b'5;foo=bar\r\nhello\r\n6;a;b="q x"\r\n world\r\n0;last=1\r\n\r\n'
    assert post_chunked(server, encoded, then="/after-ext")["body"] == "hello world"


def test_chunked_body_with_trailers(server):
    encoded = b"5\r\nhello\r\n0\r\nX-Trailer: one\r\nX-Other: two\r\n\r\n"
    result = post_chunked(server, encoded, then="/after-trailers")
    assert result["body"] == "hello"
    assert "CONTENT_LENGTH" not in result["environ"] or result["environ"]["CONTENT_LENGTH"] == ""


def test_chunked_body_with_uppercase_hex_and_leading_zeros(server):
    encoded = b"000A\r\n0123456789\r\n00b\r\nabcdefghijk\r\n000\r\n\r\n"
    assert post_chunked(server, encoded)["body"] == "0123456789abcdefghijk"


def test_chunked_body_of_one_byte_chunks(server):
    body = bytes(range(32, 127))
    assert post_chunked(server, chunked(body, sizes=[1] * len(body)))["body"] == body.decode()


def test_empty_chunked_body(server):
    assert post_chunked(server, b"0\r\n\r\n", then="/after-empty")["body"] == ""


# -- response framing ---------------------------------------------------------------------------


def test_content_length_from_app_is_kept(server):
    response = server.get("/_/cl?n=1234")
    assert response.header("Content-Length") == "1234"
    assert response.header("Transfer-Encoding") is None
    assert response.framing == "length"
    assert response.body == b"x" * 1234


def test_no_length_on_http11_is_chunked(server):
    response = server.get("/_/nolength?parts=4")
    assert response.framing == "chunked"
    assert response.header("Content-Length") is None
    assert response.body == b"part0;part1;part2;part3;"


def test_no_length_on_http10_is_close_delimited(server):
    with server.connect() as conn:
        conn.send(b"GET /_/nolength?parts=4 HTTP/1.0\r\n\r\n")
        _, response = conn.read_final_response()
        assert response.framing in ("close", "length"), response
        assert response.header("Transfer-Encoding") is None
        assert response.body == b"part0;part1;part2;part3;"
        assert conn.wait_closed(5.0)


def test_chunked_response_survives_keep_alive(server):
    with server.connect() as conn:
        for _ in range(3):
            conn.send(build_request("GET", "/_/nolength?parts=2"))
            assert conn.read_final_response()[1].body == b"part0;part1;"


def assert_no_body_then_next_request_parses(server, method, target, status):
    with server.connect() as conn:
        conn.send(build_request(method, target) + build_request("GET", "/next-after-no-body"))
        _, response = conn.read_final_response(method)
        assert response.status == status
        assert response.header("Transfer-Encoding") is None
        # Stray body bytes would be read here as the start of the next response.
        _, nxt = conn.read_final_response()
        assert echo_of(nxt)["environ"]["PATH_INFO"] == "/next-after-no-body", nxt
    return response


def test_head_keeps_content_length_and_sends_no_body(server):
    response = assert_no_body_then_next_request_parses(server, "HEAD", "/_/cl?n=4321", 200)
    assert response.header("Content-Length") == "4321"


@pytest.mark.parametrize("n", [13, 1024, 1025])
def test_small_list_bodies_around_the_inline_limit(server, n):
    # Bodies up to 1 KiB travel in the head's buffer: exact bytes for GET, none for HEAD,
    # and the next request on the connection parses either way.
    with server.connect() as conn:
        conn.send(build_request("GET", f"/_/cl?n={n}") + build_request("GET", "/next"))
        _, response = conn.read_final_response()
        assert response.status == 200
        assert response.header("Content-Length") == str(n)
        assert response.body == b"x" * n
        _, nxt = conn.read_final_response()
        assert echo_of(nxt)["environ"]["PATH_INFO"] == "/next", nxt
    response = assert_no_body_then_next_request_parses(server, "HEAD", f"/_/cl?n={n}", 200)
    assert response.header("Content-Length") == str(n)


def test_head_of_streamed_response_sends_no_body(server):
    assert_no_body_then_next_request_parses(server, "HEAD", "/_/nolength?parts=3", 200)


def test_head_of_echo_sends_no_body(server):
    response = assert_no_body_then_next_request_parses(server, "HEAD", "/head-echo", 200)
    assert int(response.header("Content-Length") or "0") > 0


def test_204_sends_no_body(server):
    response = assert_no_body_then_next_request_parses(server, "GET", "/_/status/204", 204)
    assert response.header("Content-Length") in (None, "0")
    assert response.header("X-From-App") == "yes"


def test_304_sends_no_body(server):
    response = assert_no_body_then_next_request_parses(server, "GET", "/_/status/304", 304)
    assert response.header("ETag") == '"abc"'


def test_404_from_app_has_its_body(server):
    response = server.get("/_/status/404")
    assert response.status == 404
    assert response.body == b"body-that-must-not-be-sent"


IMF_FIXDATE = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"\d{4} \d{2}:\d{2}:\d{2} GMT$"
)


def test_date_header_is_imf_fixdate_and_current(server):
    response = server.get("/date")
    dates = response.header_all("Date")
    assert len(dates) == 1, response.headers
    assert IMF_FIXDATE.match(dates[0]), dates[0]
    sent = email.utils.parsedate_to_datetime(dates[0]).timestamp()
    assert abs(sent - time.time()) < 10


def test_date_header_advances(server):
    first = email.utils.parsedate_to_datetime(server.get("/d1").header("Date") or "").timestamp()
    time.sleep(2.1)
    second = email.utils.parsedate_to_datetime(server.get("/d2").header("Date") or "").timestamp()
    assert second > first


def test_server_header_is_the_default_identity(server):
    response = server.get("/identity")
    assert response.header_all("Server") == ["unyoke"]


def test_server_header_is_the_identity_setting(servers):
    srv = servers.start(APP, "--identity", "test-identity/1.0")
    response = srv.get("/identity")
    assert response.header_all("Server") == ["test-identity/1.0"]


def test_error_responses_are_well_formed(server):
    raw, _ = BAD_HEADS["version_2_0"]
    response = assert_rejected(server, raw.encode(), {505})
    assert response.header("Date") is not None
    assert response.framing in ("length", "close")
