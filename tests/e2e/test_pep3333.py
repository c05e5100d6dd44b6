"""PEP 3333 behaviour of the WSGI bridge against a real server (issue 2, part 4)."""

from __future__ import annotations

import hashlib
import io
import itertools
import socket
import struct
import time
import uuid
from typing import Any, Dict, List, Optional, Tuple

import pytest

from tests.apps.behaviour import BAD_HEADERS, BAD_STATUS
from tests.apps.common import pattern_bytes
from tests.e2e.rawhttp import (
    ConnectionClosed,
    HTTPResponse,
    IncompleteResponse,
    RawConnection,
    build_request,
    chunked,
)
from tests.e2e.serverproc import ServerProcess

pytestmark = pytest.mark.timeout(60)

APP = "tests.apps.behaviour:app"
SENTINEL = "UNYOKE_TEST_SENTINEL_NOT_IN_ENVIRON"


@pytest.fixture(scope="module")
def server(module_servers) -> ServerProcess:
    return module_servers.start(APP, "--inbuf-overflow", "65536", env={SENTINEL: "must-not-leak"})


@pytest.fixture(scope="module")
def configured(module_servers) -> ServerProcess:
    return module_servers.start(
        APP,
        "--url-scheme",
        "https",
        "--environ",
        "EXTRA_KEY=extra value",
        "--environ",
        "OTHER_KEY=2",
        "--threads",
        "4",
        "--server-name",
        "example.test",
        "--expose-tracebacks",
    )


@pytest.fixture(scope="module")
def validated(module_servers) -> ServerProcess:
    return module_servers.start("tests.apps.validated:app")


def exchange(
    server: ServerProcess,
    method: str = "GET",
    target: str = "/",
    headers: Optional[List[Tuple[str, str]]] = None,
    body: bytes = b"",
    version: str = "HTTP/1.1",
    raw: Optional[bytes] = None,
) -> Tuple[HTTPResponse, int]:
    """One request on a fresh connection: (final response, client port)."""
    with server.connect() as conn:
        conn.send(raw if raw is not None else build_request(method, target, headers, body, version))
        return conn.read_final_response(method)[1], conn.local_port


def environ_for(server: ServerProcess, *args: Any, **kwargs: Any) -> Tuple[Dict[str, Any], int]:
    response, port = exchange(server, *args, **kwargs)
    assert response.status == 200, response
    return response.json()["environ"], port


# -- the CGI keys ---------------------------------------------------------------------------


def test_cgi_keys_of_a_simple_get(server):
    environ, client_port = environ_for(server, target="/plain/path?a=1&b=%20x")
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["SCRIPT_NAME"] == ""
    assert environ["PATH_INFO"] == "/plain/path"
    assert environ["QUERY_STRING"] == "a=1&b=%20x"
    assert isinstance(environ["SERVER_NAME"], str) and environ["SERVER_NAME"]
    assert environ["SERVER_PORT"] == str(server.port)
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["REMOTE_ADDR"] == "127.0.0.1"
    assert environ["REMOTE_PORT"] == str(client_port)
    assert environ["HTTP_HOST"] == "localhost"
    assert environ["RAW_URI"] == "/plain/path?a=1&b=%20x"
    assert environ["REQUEST_URI"] == "/plain/path?a=1&b=%20x"
    for key in (
        "REQUEST_METHOD",
        "SCRIPT_NAME",
        "PATH_INFO",
        "SERVER_NAME",
        "SERVER_PORT",
        "SERVER_PROTOCOL",
        "REMOTE_ADDR",
        "REMOTE_PORT",
        "RAW_URI",
        "REQUEST_URI",
    ):
        assert environ["__types__"][key] == "str", key


@pytest.mark.parametrize(
    "method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PURGE", "M-SEARCH"]
)
def test_request_method_is_passed_as_sent(server, method):
    environ, _ = environ_for(server, method, "/m", body=b"x")
    assert environ["REQUEST_METHOD"] == method


@pytest.mark.parametrize(
    "target, path_info",
    [
        ("/caf%C3%A9", "/caf\xc3\xa9"),
        ("/a%2Fb", "/a/b"),
        ("/sp%20ace", "/sp ace"),
        ("/plus+sign", "/plus+sign"),
        ("/pct%25", "/pct%"),
        ("/%7Euser", "/~user"),
        ("/%e9t%E9", "/\xe9t\xe9"),
        ("//double//slashes/", "//double//slashes/"),
        ("/with;params=1", "/with;params=1"),
        ("/q%3Fmark?real=query", "/q?mark"),
    ],
)
def test_path_info_is_percent_decoded_then_latin1(server, target, path_info):
    environ, _ = environ_for(server, target=target)
    assert environ["PATH_INFO"] == path_info
    assert environ["RAW_URI"] == target
    assert environ["REQUEST_URI"] == target


def test_query_string_is_raw(server):
    environ, _ = environ_for(server, target="/q?x=%41&y=caf%C3%A9&z=a+b&&w")
    assert environ["QUERY_STRING"] == "x=%41&y=caf%C3%A9&z=a+b&&w"
    assert environ["PATH_INFO"] == "/q"


@pytest.mark.parametrize("target", ["/no-query", "/empty-query?"])
def test_query_string_empty_when_absent(server, target):
    environ, _ = environ_for(server, target=target)
    assert environ.get("QUERY_STRING", "") == ""
    assert environ["PATH_INFO"] == target.rstrip("?")


def test_server_protocol_is_as_sent(server):
    response, _ = exchange(server, raw=b"GET /ten HTTP/1.0\r\n\r\n")
    assert response.json()["environ"]["SERVER_PROTOCOL"] == "HTTP/1.0"
    environ, _ = environ_for(server, target="/eleven")
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"


def test_content_type_and_length_when_sent(server):
    environ, _ = environ_for(
        server, "POST", "/ct", [("Content-Type", "text/plain; charset=utf-8")], body=b"12345"
    )
    assert environ["CONTENT_TYPE"] == "text/plain; charset=utf-8"
    assert environ["CONTENT_LENGTH"] == "5"
    assert "HTTP_CONTENT_TYPE" not in environ
    assert "HTTP_CONTENT_LENGTH" not in environ


def test_content_type_and_length_absent_or_empty_when_not_sent(server):
    environ, _ = environ_for(server, target="/no-body")
    assert environ.get("CONTENT_TYPE", "") == ""
    assert environ.get("CONTENT_LENGTH", "") in ("", "0")


def test_repeated_headers_are_joined(server):
    environ, _ = environ_for(
        server,
        target="/multi",
        headers=[
            ("X-Multi", "a"),
            ("Accept", "text/html"),
            ("x-multi", "b"),
            ("X-MULTI", "c"),
            ("Accept", "application/json"),
        ],
    )
    assert environ["HTTP_X_MULTI"] == "a, b, c"
    assert environ["HTTP_ACCEPT"] == "text/html, application/json"


def test_repeated_identical_short_values_are_joined(server):
    # One-character strings are shared objects in CPython: a repeated header must still
    # be seen as repeated, not as the first of its name.
    environ, _ = environ_for(
        server, target="/same", headers=[("X-One", "1"), ("X-One", "1"), ("X-Two", "")]
    )
    assert environ["HTTP_X_ONE"] == "1, 1"
    assert environ["HTTP_X_TWO"] == ""


def test_known_header_names_in_any_case_and_with_underscores(server):
    environ, _ = environ_for(
        server,
        target="/known",
        headers=[
            ("USER-AGENT", "shouting"),
            ("sec-FETCH-mode", "navigate"),
            ("Upgrade-Insecure-Requests", "1"),
            ("User_Agent", "evil"),
            ("Accept_Language", "evil"),
            ("X-A-Rather-Long-Header-Name-Beyond-The-Known-Ones", "long"),
        ],
    )
    assert environ["HTTP_USER_AGENT"] == "shouting"
    assert environ["HTTP_SEC_FETCH_MODE"] == "navigate"
    assert environ["HTTP_UPGRADE_INSECURE_REQUESTS"] == "1"
    assert "HTTP_ACCEPT_LANGUAGE" not in environ
    assert environ["HTTP_X_A_RATHER_LONG_HEADER_NAME_BEYOND_THE_KNOWN_ONES"] == "long"


def test_repeated_cookie_headers_are_joined_with_semicolons(server):
    environ, _ = environ_for(
        server, target="/c", headers=[("Cookie", "a=1"), ("Cookie", "b=2; c=3")]
    )
    assert environ["HTTP_COOKIE"] == "a=1; b=2; c=3"


def test_header_names_with_underscores_are_dropped(server):
    environ, _ = environ_for(
        server,
        target="/underscore",
        headers=[("X_Under", "evil"), ("X-Under", "good"), ("X_Only", "evil"), ("X-After", "1")],
    )
    assert environ["HTTP_X_UNDER"] == "good"
    assert "HTTP_X_ONLY" not in environ
    assert environ["HTTP_X_AFTER"] == "1"


def test_content_length_with_underscore_does_not_frame_or_leak(server):
    raw = b"GET /cl-underscore HTTP/1.1\r\nHost: x\r\nContent_Length: 5\r\n\r\n"
    with server.connect() as conn:
        conn.send(raw + build_request("GET", "/after-underscore"))
        first = conn.read_final_response()[1].json()
        assert first["body"] == ""
        assert first["environ"].get("CONTENT_LENGTH", "") in ("", "0")
        assert conn.read_final_response()[1].json()["environ"]["PATH_INFO"] == "/after-underscore"


def test_non_ascii_header_values_are_latin1(server):
    raw = (
        b"GET /latin HTTP/1.1\r\nHost: x\r\nX-Latin: caf\xe9\r\n"
        b"X-Utf8: caf\xc3\xa9\r\nX-High: \xff\x80\r\n\r\n"
    )
    response, _ = exchange(server, raw=raw)
    environ = response.json()["environ"]
    assert environ["HTTP_X_LATIN"] == "caf\xe9"
    assert environ["HTTP_X_UTF8"] == "caf\xc3\xa9"
    assert environ["HTTP_X_HIGH"] == "\xff\x80"


def test_header_values_are_trimmed_and_names_case_folded(server):
    raw = b"GET /trim HTTP/1.1\r\nHost: x\r\nx-lower-case: \t padded  value \t\r\n\r\n"
    response, _ = exchange(server, raw=raw)
    assert response.json()["environ"]["HTTP_X_LOWER_CASE"] == "padded  value"


def test_wsgi_keys(server):
    environ, _ = environ_for(server, target="/wsgi")
    types = environ["__types__"]
    assert environ["__wsgi_version_repr__"] == "(1, 0)"
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["wsgi.input_terminated"] is True
    assert types["wsgi.multithread"] == "bool"
    assert types["wsgi.multiprocess"] == "bool"
    assert types["wsgi.run_once"] == "bool" and environ["wsgi.run_once"] is False
    assert "wsgi.input" in environ and "wsgi.errors" in environ
    assert "wsgi.file_wrapper" in environ


def test_environ_is_not_a_copy_of_os_environ(server):
    environ, _ = environ_for(server, target="/os")
    for key in (SENTINEL, "PATH", "HOME", "PYTHONPATH", "UNYOKE_TEST_STATE_DIR"):
        assert key not in environ, key


def test_environ_is_fresh_per_request(server):
    first, _ = environ_for(server, target="/one", headers=[("X-Only-First", "1")])
    second, _ = environ_for(server, target="/two")
    assert first["HTTP_X_ONLY_FIRST"] == "1"
    assert "HTTP_X_ONLY_FIRST" not in second


def test_settings_reach_the_environ(configured):
    environ, _ = environ_for(configured, target="/configured")
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["EXTRA_KEY"] == "extra value"
    assert environ["OTHER_KEY"] == "2"
    assert environ["SERVER_NAME"] == "example.test"
    assert environ["wsgi.multithread"] is True


# -- start_response ---------------------------------------------------------------------------


def assert_500_then_connection_still_serves(server: ServerProcess, target: str) -> HTTPResponse:
    with server.connect() as conn:
        conn.send(build_request("GET", target))
        _, response = conn.read_final_response()
        assert response.status == 500, response
        assert response.header("X-Injected") is None
        assert response.header("X-Bad") is None
        assert b"must not be sent" not in response.body
        conn.send(build_request("GET", "/after-500"))
        _, nxt = conn.read_final_response()
        assert nxt.json()["environ"]["PATH_INFO"] == "/after-500"
    return response


@pytest.mark.parametrize("kind", sorted(BAD_STATUS))
def test_bad_status_from_app_is_500(server, kind):
    assert_500_then_connection_still_serves(server, f"/_/bad_status?kind={kind}")


@pytest.mark.parametrize("kind", sorted(BAD_HEADERS))
def test_bad_header_from_app_is_500(server, kind):
    assert_500_then_connection_still_serves(server, f"/_/bad_header?kind={kind}")


def test_valid_headers_off_the_fast_path(server):
    with server.connect() as conn:
        conn.send(build_request("GET", "/_/good_headers"))
        _, response = conn.read_final_response()
        assert (response.status, response.reason) == (200, "Fine")
        assert b"\r\nX-Latin: caf\xe9\r\n" in response.raw_head
        assert response.header("X-Subclass") == "sub"
        assert response.header("X-A-Header-Name-Longer-Than-Twenty-Bytes") == "long"
        assert [v for k, v in response.headers if k.lower() == "content-length"] == ["5"]
        assert response.body == b"hello"
        # The application's Connection header is not passed on; its close is honoured.
        assert response.header("Connection") == "close"
        assert conn.wait_closed(5.0)


def test_start_response_twice_without_exc_info_is_an_error(server):
    assert_500_then_connection_still_serves(server, "/_/start_twice")
    lines = server.state_lines("start_twice")
    assert lines and "no error" not in lines, lines


def test_exc_info_before_headers_sent_replaces_status(server):
    response, _ = exchange(server, target="/_/exc_before")
    assert response.status == 500
    assert response.reason == "Replaced By App"
    assert response.header("X-Second") == "1"
    assert response.header("X-First") is None
    assert response.body == b"replaced"


def test_exc_info_after_headers_sent_reraises_and_closes(server):
    with server.connect() as conn:
        conn.send(build_request("GET", "/_/exc_after"))
        try:
            _, response = conn.read_final_response()
        except IncompleteResponse as exc:
            response = exc.response
        else:
            pytest.fail(f"a response cut by an exception must not look complete: {response!r}")
        assert response.status == 200
        assert response.body.startswith(b"partial")
        assert conn.wait_closed(5.0)
    assert server.wait_for_state("exc_after", "ValueError:exc-after-marker"), server.state_lines(
        "exc_after"
    )
    assert server.wait_for_log("exc-after-marker")


def test_write_callable_then_iterable(server):
    response, _ = exchange(server, target="/_/write")
    assert response.status == 200
    assert response.body == b"wawbicid"


def test_write_callable_with_content_length(server):
    response, _ = exchange(server, target="/_/write_cl")
    assert response.header("Content-Length") == "8"
    assert response.body == b"wawbicid"


def test_write_callable_only(server):
    response, _ = exchange(server, target="/_/write_only")
    assert response.body == b"w0;w1;w2;"


def test_lazy_start_response_in_generator(server):
    response, _ = exchange(server, target="/_/lazy")
    assert response.status == 201
    assert response.header("X-Lazy") == "yes"
    assert response.body == b"lazy-body"


def test_start_response_after_empty_yield(server):
    response, _ = exchange(server, target="/_/empty_then_lazy")
    assert response.status == 202
    assert response.body == b"after-empty"


# -- wsgi.input -----------------------------------------------------------------------------

INPUT_BODY = b"first line\nsecond line is longer\n\nfourth\r\nno-newline-tail"

INPUT_OPS = [
    "read",
    "read:-1",
    "read,read",
    "read:0,read:3,read:3,read:100,read:5",
    "readline,readline,readline,readline,readline,readline",
    "readline:4,readline:4,readline:100,readline:3,readline",
    "readlines",
    "readlines,readline,read",
    "iter",
    "readline,read:5,readline:2,iter",
    "read:1,readlines",
    "readline,readline,read",
    "read:11,iter,read:1",
    "readline:1000,readline:2,read:4,readline",
]


def reference(ops: str, body: bytes) -> List[Any]:
    stream = io.BytesIO(body)
    results: List[Any] = []
    for op in ops.split(","):
        name, _, arg = op.partition(":")
        if name == "read":
            results.append((stream.read(int(arg)) if arg else stream.read()).decode("latin-1"))
        elif name == "readline":
            results.append(
                (stream.readline(int(arg)) if arg else stream.readline()).decode("latin-1")
            )
        elif name == "readlines":
            results.append([line.decode("latin-1") for line in stream.readlines()])
        elif name == "iter":
            results.append([line.decode("latin-1") for line in stream])
    return results


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("ops", INPUT_OPS)
def test_wsgi_input_methods(server, ops, framing):
    target = f"/_/input?ops={ops}"
    if framing == "chunked":
        raw = build_request("POST", target, [("Transfer-Encoding", "chunked")]) + chunked(
            INPUT_BODY, sizes=[5, 1, 17, 3, 9]
        )
    else:
        raw = build_request("POST", target, body=INPUT_BODY)
    response, _ = exchange(server, raw=raw)
    assert response.status == 200, response
    assert response.json() == reference(ops, INPUT_BODY)


@pytest.mark.parametrize(
    "method, headers", [("POST", [("Content-Length", "0")]), ("GET", [])], ids=["cl0", "get"]
)
def test_wsgi_input_of_empty_body(server, method, headers):
    # Requests without a body share one exhausted input object: a request with a body in
    # between, and the same empty-body request again, must each see their own body.
    ops = "/_/input?ops=read,readline,readlines,iter,read:5"
    for _ in range(2):
        response, _ = exchange(server, method, ops, headers)
        assert response.json() == ["", "", [], [], ""]
        response, _ = exchange(server, raw=build_request("POST", ops, body=b"a\nbc"))
        assert response.json() == ["a\nbc", "", [], [], ""]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_body_above_inbuf_overflow(server, framing):
    body = pattern_bytes(2 * 1024 * 1024 + 123, seed=7)
    if framing == "chunked":
        raw = build_request(
            "POST", "/_/sha?block=65536", [("Transfer-Encoding", "chunked")]
        ) + chunked(body, sizes=[100_000] * 20)
    else:
        raw = build_request("POST", "/_/sha?block=65536", body=body)
    response, _ = exchange(server, raw=raw)
    result = response.json()
    assert result["length"] == len(body)
    assert result["sha256"] == hashlib.sha256(body).hexdigest()
    assert result["reads"] == -(-len(body) // 65536), "read(n) must return n bytes until the end"


def test_large_body_read_all_at_once(server):
    body = pattern_bytes(1024 * 1024, seed=3)
    response, _ = exchange(server, "POST", "/_/input?ops=read:1048576,read", body=body)
    first, rest = response.json()
    assert first.encode("latin-1") == body
    assert rest == ""


def sha_of(body: bytes, block: int) -> Dict[str, Any]:
    """What /_/sha answers for `body` read in blocks of `block` bytes."""
    return {
        "length": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "reads": -(-len(body) // block),
    }


@pytest.mark.parametrize("block", [1000, 65536, 300_000])
def test_body_read_in_pieces_as_it_trickles_in(server, block):
    """The client sends the body in uneven pieces with pauses: each read(block) still
    returns exactly `block` bytes until the end, assembled from what arrived (the
    server reads the body straight into the bytes the application gets, a piece at a
    time), and the body is intact."""
    body = pattern_bytes(700_001, seed=11)
    with server.connect(timeout=20) as conn:
        conn.send(
            build_request("POST", f"/_/sha?block={block}", [("Content-Length", str(len(body)))])
        )
        at = 0
        for size in itertools.cycle([1, 70_000, 5, 123_457, 40_000]):
            if at >= len(body):
                break
            conn.send(body[at : at + size])
            at += size
            time.sleep(0.01)
        _, response = conn.read_final_response()
    assert response.json() == sha_of(body, block)


def test_request_pipelined_after_a_body_read_in_pieces(server):
    """A request sent right behind a large body is served next: the body's reads stop at
    its Content-Length, the rest stays for the next request."""
    body = pattern_bytes(300_000, seed=5)
    with server.connect(timeout=20) as conn:
        conn.send(
            build_request("POST", "/_/sha?block=65536", body=body)
            + build_request("POST", "/_/sha?block=10", body=b"next")
        )
        _, first = conn.read_final_response()
        _, second = conn.read_final_response()
    assert first.json() == sha_of(body, 65536)
    assert second.json() == sha_of(b"next", 10)


def test_client_leaving_mid_body_fails_the_read_and_spares_the_server(server):
    """A client that closes in the middle of a body the application is reading: the
    waiting read raises ClientDisconnected, and the server goes on serving."""
    ident = new_id()
    with server.connect(timeout=20) as conn:
        conn.send(
            build_request("POST", f"/_/sha?block=65536&id={ident}", [("Content-Length", "1000000")])
            + pattern_bytes(200_000, seed=2)
        )
        time.sleep(0.3)
    assert server.wait_for_state("sha", f"{ident} ClientDisconnected")
    body = pattern_bytes(100_000, seed=3)
    response, _ = exchange(server, "POST", "/_/sha?block=65536", body=body)
    assert response.json() == sha_of(body, 65536)


@pytest.fixture(scope="module")
def streaming(module_servers) -> ServerProcess:
    """Calls the app at the head: no body is read before the call."""
    return module_servers.start(APP, "--body-preread", "0")


def first_line_echoed_before_the_rest(server: ServerProcess, first: bytes) -> None:
    """Sends `first` (one line) as a chunk of a chunked body to an app that echoes lines;
    its echo must arrive before the client sends the rest."""
    with server.connect(timeout=10) as conn:
        conn.send(build_request("POST", "/_/stream_echo", [("Transfer-Encoding", "chunked")]))
        conn.send(b"%x\r\n" % len(first) + first + b"\r\n")
        head = conn.read_head()
        assert head.status == 200
        assert conn._read_until(first[-6:]), "first line not echoed before the body ended"
        conn.send(b"6\r\nworld\n\r\n0\r\n\r\n")
        rest = conn._read_until(b"0\r\n\r\n")
        assert b"world\n" in rest


def test_body_streams_to_the_app_as_it_arrives(streaming):
    """The app reads the first line and answers it before the client sends the rest."""
    first_line_echoed_before_the_rest(streaming, b"hello\n")


def test_body_beyond_the_preread_streams_to_the_app(server):
    """With the default pre-read (64 KiB here), a body larger than it still streams: the
    app is called once that much is in and answers before the client sends the rest."""
    first_line_echoed_before_the_rest(server, b"x" * 69_999 + b"\n")


# -- close() ----------------------------------------------------------------------------------


def new_id() -> str:
    return uuid.uuid4().hex[:12]


def test_close_called_after_success(server):
    ident = new_id()
    response, _ = exchange(server, target=f"/_/close?id={ident}")
    assert response.body == b"one,two"
    assert server.wait_for_state("close", f"{ident} 1")
    assert f"{ident} 2" not in server.state_lines("close"), "close() called twice"


def test_close_called_for_generator(server):
    ident = new_id()
    response, _ = exchange(server, target=f"/_/close_gen?id={ident}")
    assert response.body == b"gen-one,gen-two"
    assert server.wait_for_state("close", f"{ident} 1")


def test_close_called_after_exception_mid_iteration(server):
    ident = new_id()
    with server.connect() as conn:
        conn.send(build_request("GET", f"/_/close?id={ident}&mode=raise"))
        try:
            conn.read_final_response()
        except (IncompleteResponse, ConnectionClosed):
            pass
    assert server.wait_for_state("close", f"{ident} 1")
    assert server.wait_for_log(f"close-raise-{ident}")


def test_close_called_when_client_disconnects_mid_stream(server):
    ident = new_id()
    conn = server.connect()
    try:
        conn.send(build_request("GET", f"/_/close?id={ident}&mode=endless"))
        head = conn.read_head()
        assert head.status == 200
        received = 0
        while received < 1_000_000:
            assert conn._fill(), "server closed an endless stream"
            received += len(conn.buf)
            conn.buf = b""
    finally:
        # Reset rather than FIN: the server sees the client gone on its next write.
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
    assert server.wait_for_state("close", f"{ident} 1", timeout=15), (
        "close() not called after disconnect"
    )
    assert server.get("/after-disconnect").status == 200


def test_close_called_for_head(server):
    ident = new_id()
    response, _ = exchange(server, "HEAD", f"/_/close?id={ident}")
    assert response.status == 200 and response.body == b""
    assert server.wait_for_state("close", f"{ident} 1")


# -- wsgi.file_wrapper ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query, expected",
    [
        ("size=300000", (0, 300000)),
        ("size=300000&offset=1000", (1000, 300000)),
        ("size=300000&cl=none", (0, 300000)),
        ("size=300000&kind=bytesio", (0, 300000)),
        ("size=300000&kind=bytesio&cl=none", (0, 300000)),
        ("size=1&block=1", (0, 1)),
        ("size=0", (0, 0)),
        ("size=5000000&block=65536", (0, 5000000)),
    ],
)
def test_file_wrapper_sends_the_file(server, query, expected):
    size = int(query.split("size=")[1].split("&")[0])
    start, end = expected
    ident = new_id()
    with server.connect() as conn:
        conn.send(build_request("GET", f"/_/file?{query}&id={ident}"))
        _, response = conn.read_final_response()
        assert response.status == 200
        assert len(response.body) == end - start
        assert response.body == pattern_bytes(size)[start:end]
        conn.send(build_request("GET", "/after-file"))
        assert conn.read_final_response()[1].json()["environ"]["PATH_INFO"] == "/after-file"
    assert server.wait_for_state("close", f"file:{ident}"), "the file was not closed"


def test_file_wrapper_respects_a_shorter_content_length(server):
    with server.connect() as conn:
        conn.send(build_request("GET", "/_/file?size=50000&cl=1000"))
        _, response = conn.read_final_response()
        assert response.header("Content-Length") == "1000"
        assert response.body == pattern_bytes(50000)[:1000]
        conn.send(build_request("GET", "/after-short-file"))
        _, nxt = conn.read_final_response()
        assert nxt.json()["environ"]["PATH_INFO"] == "/after-short-file"


def test_file_wrapper_on_http10(server):
    response, _ = exchange(server, raw=b"GET /_/file?size=70000&cl=none HTTP/1.0\r\n\r\n")
    assert response.body == pattern_bytes(70000)


def test_file_wrapper_head(server):
    response, _ = exchange(server, "HEAD", "/_/file?size=70000")
    assert response.header("Content-Length") == "70000"
    assert response.body == b""


# -- exceptions and wsgi.errors -----------------------------------------------------------------


def test_app_exception_is_500_without_traceback_and_logged(server):
    marker = f"raise-marker-{new_id()}"
    with server.connect() as conn:
        conn.send(build_request("GET", f"/_/raise?marker={marker}"))
        _, response = conn.read_final_response()
        assert response.status == 500
        assert b"Traceback" not in response.body
        assert marker.encode() not in response.body
        conn.send(build_request("GET", "/after-exception"))
        _, nxt = conn.read_final_response()
        assert nxt.json()["environ"]["PATH_INFO"] == "/after-exception"
    assert server.wait_for_log(marker), "exception not logged"
    assert_traceback_logged(server, f"RuntimeError: {marker}", "in raise_")


def assert_traceback_logged(server: ServerProcess, exception_line: str, frame: str) -> None:
    """The log holds a full traceback (header, the app's frame) ending in `exception_line`."""
    assert server.wait_for_log(exception_line)
    log = server.log()
    end = log.find(exception_line)
    start = log.rfind("Traceback (most recent call last):", 0, end)
    assert start >= 0, f"no traceback before {exception_line!r}:\n{log[-3000:]}"
    assert "behaviour.py" in log[start:end] and frame in log[start:end], log[start : end + 200]


def test_app_exception_after_start_response_is_500(server):
    marker = f"after-start-{new_id()}"
    with server.connect() as conn:
        conn.send(build_request("GET", f"/_/raise_after_start?marker={marker}"))
        _, response = conn.read_final_response()
        assert response.status == 500
        conn.send(build_request("GET", "/after-exception-2"))
        assert conn.read_final_response()[1].status == 200
    assert_traceback_logged(server, f"RuntimeError: {marker}", "in raise_after_start")


def test_exception_mid_stream_cuts_the_response(server):
    marker = f"mid-{new_id()}"
    with server.connect() as conn:
        conn.send(build_request("GET", f"/_/raise_mid?marker={marker}"))
        with pytest.raises(IncompleteResponse) as info:
            conn.read_final_response()
        assert info.value.response.status == 200
        assert info.value.response.body.startswith(b"first-chunk")
        assert conn.wait_closed(5.0)
    assert_traceback_logged(server, f"RuntimeError: {marker}", "in raise_mid")


def test_expose_tracebacks_puts_the_traceback_in_the_body(configured):
    marker = f"exposed-{new_id()}"
    response, _ = exchange(configured, target=f"/_/raise?marker={marker}")
    assert response.status == 500
    assert b"Traceback" in response.body
    assert marker.encode() in response.body


def test_wsgi_errors_goes_to_the_error_log(server):
    marker = f"errors-marker-{new_id()}"
    response, _ = exchange(server, target=f"/_/errors?marker={marker}")
    assert response.body == b"written"
    assert server.wait_for_log(marker)
    assert server.wait_for_log(f"second-line-{marker}")


# -- wsgiref.validate ----------------------------------------------------------------------------


def test_validator_wrapped_apps(validated):
    cases = [
        (build_request("GET", "/hello"), "GET", 200, b"hello from a validated app"),
        (build_request("GET", "/generator"), "GET", 200, b"chunk0;chunk1;chunk2;chunk3;chunk4;"),
        (build_request("GET", "/lazy"), "GET", 201, b"lazy"),
        (
            build_request("POST", "/post", body=b"l1\nrest of the body"),
            "POST",
            200,
            b"line=l1\n|rest=rest of the body",
        ),
        (
            build_request("POST", "/post", [("Transfer-Encoding", "chunked")])
            + chunked(b"c1\nchunked rest", sizes=[2, 3]),
            "POST",
            200,
            b"line=c1\n|rest=chunked rest",
        ),
        (build_request("POST", "/lines", body=b"a\nb\nc"), "POST", 200, b"a\n|b\n|c"),
        (build_request("GET", "/write"), "GET", 200, b"written;returned"),
        (build_request("GET", "/exc_info"), "GET", 500, b"error page"),
        (build_request("GET", "/errors"), "GET", 200, b"ok"),
        (build_request("GET", "/no_content"), "GET", 204, b""),
        (build_request("HEAD", "/hello"), "HEAD", 200, b""),
        (build_request("GET", "/missing"), "GET", 404, b"no such route"),
        (b"GET /hello HTTP/1.0\r\n\r\n", "GET", 200, b"hello from a validated app"),
    ]
    for raw, method, status, body in cases:
        with RawConnection(validated.address) as conn:
            conn.send(raw)
            _, response = conn.read_final_response(method)
        assert (response.status, response.body) == (status, body), (
            raw[:60],
            response,
            validated.log()[-3000:],
        )
    # Everything on one keep-alive connection as well.
    with RawConnection(validated.address) as conn:
        for raw, method, status, body in cases[:-1]:
            conn.send(raw)
            _, response = conn.read_final_response(method)
            assert (response.status, response.body) == (status, body), raw[:60]
    log = validated.log()
    for problem in ("AssertionError", "WSGIWarning", "garbage collected without being closed"):
        assert problem not in log, log[-3000:]


def test_validator_sees_every_required_key(validated):
    """validator() raises on a missing or mistyped key: a 200 proves the environ passed."""
    response, _ = exchange(
        validated, raw=b"GET /hello?x=1 HTTP/1.1\r\nHost: h\r\nCookie: a=b\r\n\r\n"
    )
    assert response.status == 200, validated.log()[-2000:]
    assert response.body == b"hello from a validated app"
