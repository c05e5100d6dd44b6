"""One WSGI app with many behaviours, chosen by path: `/_/<behaviour>/...?<options>`.

Any other path echoes the request: the environ (as JSON) and the body read with
`wsgi.input.read()`. Every call is recorded in `<state dir>/calls.log`, so a test can
prove that a rejected request never reached the app. Served as
`tests.apps.behaviour:app`.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import time
from typing import Any, Callable, Dict, Iterator, List

from tests.apps.common import (
    Environ,
    StartResponse,
    environ_summary,
    json_response,
    pattern_bytes,
    query,
    record,
    record_call,
    state_dir,
    text_response,
)

Handler = Callable[[Environ, StartResponse], Any]
ROUTES: Dict[str, Handler] = {}


def route(name: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        ROUTES[name] = handler
        return handler

    return register


def app(environ: Environ, start_response: StartResponse) -> Any:
    record_call(environ)
    path = environ.get("PATH_INFO", "")
    if path.startswith("/_/"):
        name = path[3:].split("/", 1)[0]
        handler = ROUTES.get(name)
        if handler is not None:
            return handler(environ, start_response)
    return echo(environ, start_response)


def echo(environ: Environ, start_response: StartResponse) -> List[bytes]:
    body = environ["wsgi.input"].read()
    return json_response(
        start_response,
        {
            "environ": environ_summary(environ),
            "body": body.decode("latin-1"),
            "body_len": len(body),
        },
    )


@route("scribble")
def scribble(environ: Environ, start_response: StartResponse) -> List[bytes]:
    """Changes its environ (a key added, per-connection ones changed and removed), then
    echoes it: the next request on the connection must not see any of it."""
    environ["scribbled"] = "yes"
    environ["SERVER_NAME"] = "scribbled.example"
    del environ["REMOTE_ADDR"]
    del environ["REMOTE_PORT"]
    return echo(environ, start_response)


# -- request bodies ----------------------------------------------------------------


@route("noread")
def noread(environ: Environ, start_response: StartResponse) -> List[bytes]:
    """Answers without touching wsgi.input (no 100 Continue may be sent)."""
    return text_response(start_response, b"answered without reading")


@route("gate")
def gate(environ: Environ, start_response: StartResponse) -> List[bytes]:
    """Waits until the test creates `<state dir>/gate-<name>`, then reads and echoes."""
    name = query(environ).get("name", "default")
    path = os.path.join(state_dir() or ".", f"gate-{name}")
    record("gate", f"waiting {name}")
    deadline = time.monotonic() + 15
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    return echo(environ, start_response)


@route("input")
def input_ops(environ: Environ, start_response: StartResponse) -> List[bytes]:
    """Runs `ops` (comma-separated: read, read:N, readline, readline:N, readlines, iter)
    on wsgi.input and returns each result, bytes decoded as latin-1."""
    stream = environ["wsgi.input"]
    results: List[Any] = []
    for op in query(environ).get("ops", "read").split(","):
        name, _, arg = op.partition(":")
        if name == "read":
            data = stream.read(int(arg)) if arg else stream.read()
            results.append(data.decode("latin-1"))
        elif name == "readline":
            data = stream.readline(int(arg)) if arg else stream.readline()
            results.append(data.decode("latin-1"))
        elif name == "readlines":
            lines = stream.readlines(int(arg)) if arg else stream.readlines()
            results.append([line.decode("latin-1") for line in lines])
        elif name == "iter":
            results.append([line.decode("latin-1") for line in stream])
        else:
            raise ValueError(f"unknown op {op!r}")
    return json_response(start_response, results)


@route("sha")
def sha(environ: Environ, start_response: StartResponse) -> List[bytes]:
    """Reads the body in blocks of `block` bytes; returns its length and sha256. With
    `id`, a read that raises is recorded as `<id> <exception type>`."""
    q = query(environ)
    block = int(q.get("block", "65536"))
    digest = hashlib.sha256()
    length = 0
    reads = 0
    stream = environ["wsgi.input"]
    while True:
        try:
            data = stream.read(block)
        except Exception as e:
            if "id" in q:
                record("sha", f"{q['id']} {type(e).__name__}")
            raise
        if not data:
            break
        if len(data) > block:
            raise AssertionError(f"read({block}) returned {len(data)} bytes")
        reads += 1
        length += len(data)
        digest.update(data)
    return json_response(
        start_response, {"length": length, "sha256": digest.hexdigest(), "reads": reads}
    )


@route("stream_echo")
def stream_echo(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    """Echoes each body line as soon as it can be read: proves the body streams in."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    stream = environ["wsgi.input"]
    while True:
        line = stream.readline()
        if not line:
            return
        yield line


# -- response framing ----------------------------------------------------------------


@route("cl")
def with_length(environ: Environ, start_response: StartResponse) -> List[bytes]:
    n = int(query(environ).get("n", "10"))
    return text_response(start_response, b"x" * n)


@route("nolength")
def without_length(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    parts = int(query(environ).get("parts", "3"))
    start_response("200 OK", [("Content-Type", "text/plain")])
    for i in range(parts):
        yield f"part{i};".encode()


@route("status")
def status(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    """`/_/status/<code>`: that status, and a body the server must drop for 204/304/HEAD."""
    code = int(environ["PATH_INFO"].split("/")[3])
    reasons = {200: "OK", 204: "No Content", 304: "Not Modified", 404: "Not Found"}
    headers = [("X-From-App", "yes")]
    if code == 304:
        headers.append(("ETag", '"abc"'))
    start_response(f"{code} {reasons.get(code, 'Whatever')}", headers)
    yield b"body-that-must-not-be-sent"


@route("stream")
def stream(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    """`count` chunks of `size` bytes, without Content-Length."""
    q = query(environ)
    size, count = int(q.get("size", "65536")), int(q.get("count", "16"))
    chunk = b"s" * size
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    for _ in range(count):
        yield chunk


@route("lazy")
def lazy(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    """start_response is called inside the first iteration of the generator."""
    start_response("201 Created", [("X-Lazy", "yes"), ("Content-Type", "text/plain")])
    yield b"lazy-"
    yield b"body"


@route("empty_then_lazy")
def empty_then_lazy(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    """Yields an empty string before calling start_response (allowed until a non-empty one)."""
    yield b""
    start_response("202 Accepted", [("Content-Type", "text/plain")])
    yield b"after-empty"


# -- start_response and exc_info ------------------------------------------------------


@route("exc_before")
def exc_before(environ: Environ, start_response: StartResponse) -> List[bytes]:
    start_response("200 OK", [("X-First", "1"), ("Content-Type", "text/plain")])
    try:
        raise ValueError("exc-before-marker")
    except ValueError:
        start_response(
            "500 Replaced By App",
            [("X-Second", "1"), ("Content-Type", "text/plain")],
            sys.exc_info(),
        )
    return [b"replaced"]


@route("exc_after")
def exc_after(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"partial"
    try:
        raise ValueError("exc-after-marker")
    except ValueError:
        try:
            start_response("500 Too Late", [("Content-Type", "text/plain")], sys.exc_info())
        except BaseException as exc:  # the server must re-raise the app's exception
            record("exc_after", f"{type(exc).__name__}:{exc}")
            raise
        record("exc_after", "start_response returned")
    yield b"never"


@route("start_twice")
def start_twice(environ: Environ, start_response: StartResponse) -> List[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    try:
        start_response("201 Created", [("Content-Type", "text/plain")])
    except BaseException as exc:
        record("start_twice", type(exc).__name__)
        raise
    record("start_twice", "no error")
    return [b"second start_response accepted"]


BAD_STATUS = {
    "short_code": "20 OK",
    "no_reason": "200",
    "letters": "2OO OK",
    "four_digits": "2000 OK",
    "crlf": "200 OK\r\nX-Injected: 1",
    "lf": "200 OK\nX-Injected: 1",
    "bytes": b"200 OK",
    "int": 200,
    "leading_space": " 200 OK",
    "non_ascii_reason": "200 \xd6K",
}

BAD_HEADERS = {
    "value_lf": [("X-Bad", "a\nb")],
    "value_crlf": [("X-Bad", "a\r\nX-Injected: 1")],
    "value_cr": [("X-Bad", "a\rb")],
    "value_nul": [("X-Bad", "a\x00b")],
    "name_colon": [("X:Bad", "a")],
    "name_space": [("X Bad", "a")],
    "name_empty": [("", "a")],
    "name_lf": [("X-Bad\n", "a")],
    "name_bytes": [(b"X-Bad", "a")],
    "value_bytes": [("X-Bad", b"a")],
    "value_int": [("X-Bad", 1)],
    "value_not_latin1": [("X-Bad", "\u20ac")],
    "value_surrogate": [("X-Bad", "a\ud800")],
    "name_non_ascii": [("X-B\xe4d", "a")],
    "name_long_with_space": [("X-A-Header-Name-Longer-Than-Twenty Bytes", "a")],
    "name_te": [("te", "trailers")],
    "content_length_signed": [("Content-Length", "+5")],
    "content_length_two": [("Content-Length", "5"), ("content-length", "6")],
    "triple": [("X-Bad", "a", "b")],
    "not_a_list": "X-Bad: a",
}


class _Text(str):
    """A str subclass, as some frameworks pass for header names and values."""


@route("good_headers")
def good_headers(environ: Environ, start_response: StartResponse) -> List[bytes]:
    """Valid headers the fast path of start_response does not read in place: a latin-1
    value, str subclasses, a repeated Content-Length in another case, a long name, and
    `Connection: Keep-Alive, Close` (dropped, but the connection closes)."""
    start_response(
        _Text("200 Fine"),
        [
            ("X-Latin", "caf\xe9"),
            (_Text("X-Subclass"), _Text("sub")),
            ("Content-Length", "5"),
            ("CONTENT-LENGTH", "5"),
            ("X-A-Header-Name-Longer-Than-Twenty-Bytes", "long"),
            ("Connection", "Keep-Alive, Close"),
        ],
    )
    return [b"hello"]


@route("bad_status")
def bad_status(environ: Environ, start_response: StartResponse) -> List[bytes]:
    start_response(BAD_STATUS[query(environ)["kind"]], [("Content-Type", "text/plain")])
    return [b"must not be sent with a broken status"]


@route("bad_header")
def bad_header(environ: Environ, start_response: StartResponse) -> List[bytes]:
    start_response("200 OK", BAD_HEADERS[query(environ)["kind"]])
    return [b"must not be sent with a broken header"]


# -- write() ---------------------------------------------------------------------------


@route("write")
def write(environ: Environ, start_response: StartResponse) -> List[bytes]:
    """write() twice, then an iterable: the body is the concatenation, in order."""
    writer = start_response("200 OK", [("Content-Type", "text/plain")])
    writer(b"wa")
    writer(b"wb")
    return [b"ic", b"id"]


@route("write_cl")
def write_cl(environ: Environ, start_response: StartResponse) -> List[bytes]:
    writer = start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "8")])
    writer(b"wawb")
    return [b"icid"]


@route("write_only")
def write_only(environ: Environ, start_response: StartResponse) -> List[bytes]:
    writer = start_response("200 OK", [("Content-Type", "text/plain")])
    for i in range(3):
        writer(f"w{i};".encode())
    return []


# -- exceptions ------------------------------------------------------------------------


@route("raise")
def raise_(environ: Environ, start_response: StartResponse) -> List[bytes]:
    marker = query(environ).get("marker", "raise-marker")
    raise RuntimeError(marker)


@route("raise_after_start")
def raise_after_start(environ: Environ, start_response: StartResponse) -> List[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    raise RuntimeError(query(environ).get("marker", "raise-after-start-marker"))


@route("raise_mid")
def raise_mid(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"first-chunk"
    raise RuntimeError(query(environ).get("marker", "raise-mid-marker"))


@route("errors")
def errors(environ: Environ, start_response: StartResponse) -> List[bytes]:
    stream = environ["wsgi.errors"]
    stream.write(query(environ)["marker"] + "\n")
    stream.writelines(["second-line-" + query(environ)["marker"] + "\n"])
    stream.flush()
    return text_response(start_response, b"written")


# -- close() -----------------------------------------------------------------------------


class ClosingIterable:
    """An iterable (not an iterator) whose close() is recorded in close.log."""

    def __init__(self, ident: str, mode: str):
        self.ident = ident
        self.mode = mode
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        if self.mode == "ok":
            yield b"one,"
            yield b"two"
        elif self.mode == "raise":
            yield b"one,"
            raise RuntimeError(f"close-raise-{self.ident}")
        elif self.mode == "endless":
            chunk = b"e" * 65536
            for _ in range(200_000):  # ~13 GB: only a disconnect ends it in a test
                yield chunk
        else:
            raise ValueError(self.mode)

    def close(self) -> None:
        self.closed += 1
        record("close", f"{self.ident} {self.closed}")


@route("close")
def closing(environ: Environ, start_response: StartResponse) -> ClosingIterable:
    q = query(environ)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return ClosingIterable(q["id"], q.get("mode", "ok"))


@route("close_gen")
def closing_generator(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    ident = query(environ)["id"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    try:
        yield b"gen-one,"
        yield b"gen-two"
    finally:
        record("close", f"{ident} 1")


# -- files -------------------------------------------------------------------------------


class TrackedFile(io.FileIO):
    """A real file (it has a fileno for sendfile) whose close() is recorded."""

    ident = ""

    def close(self) -> None:
        if not self.closed:
            record("close", f"file:{self.ident}")
        super().close()


class TrackedBytesIO(io.BytesIO):
    ident = ""

    def close(self) -> None:
        if not self.closed:
            record("close", f"file:{self.ident}")
        super().close()


def _data_file(size: int) -> str:
    path = os.path.join(state_dir() or ".", f"file-{size}.bin")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.{time.monotonic_ns()}.tmp"
        with open(tmp, "wb") as out:
            out.write(pattern_bytes(size))
        os.replace(tmp, path)
    return path


@route("file")
def file(environ: Environ, start_response: StartResponse) -> Any:
    """wsgi.file_wrapper over a file of `size` pattern bytes, from `offset`.

    `cl`: "none" (no Content-Length), "full" (the bytes from offset), or a number.
    `kind`: "file" (a real file, sendfile-able) or "bytesio" (no fileno).
    """
    q = query(environ)
    size, offset = int(q.get("size", "100000")), int(q.get("offset", "0"))
    ident = q.get("id", "")
    filelike: Any
    if q.get("kind", "file") == "file":
        filelike = TrackedFile(_data_file(size), "rb")
    else:
        filelike = TrackedBytesIO(pattern_bytes(size))
    filelike.ident = ident
    filelike.seek(offset)
    headers = [("Content-Type", "application/octet-stream")]
    cl = q.get("cl", "full")
    if cl == "full":
        headers.append(("Content-Length", str(size - offset)))
    elif cl != "none":
        headers.append(("Content-Length", cl))
    start_response("200 OK", headers)
    return environ["wsgi.file_wrapper"](filelike, int(q.get("block", "8192")))


# -- time ----------------------------------------------------------------------------------


@route("sleep")
def sleep(environ: Environ, start_response: StartResponse) -> List[bytes]:
    q = query(environ)
    ident = q.get("id", "")
    record("sleep", f"start {ident}")
    time.sleep(float(q.get("s", "0.5")))
    record("sleep", f"end {ident}")
    return text_response(start_response, f"slept {ident}".encode())


@route("spin")
def spin(environ: Environ, start_response: StartResponse) -> List[bytes]:
    """Computes for `s` seconds: holds the GIL but for the interpreter's forced switches."""
    q = query(environ)
    ident = q.get("id", "")
    record("spin", f"start {ident}")
    end = time.monotonic() + float(q.get("s", "0.5"))
    while time.monotonic() < end:
        pass
    record("spin", f"end {ident}")
    return text_response(start_response, f"spun {ident}".encode())
