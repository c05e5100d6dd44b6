"""WSGI apps that break PEP 3333 in the ways real apps do, plus the well-behaved routes
the hostile-client tests and the soak need (hello, big, stream, echo, slow body reader).

Routes (PATH_INFO):
  /hello                 200 "hello"
  /big?size=N            200 with N bytes (default 4 MiB), Content-Length
  /stream?chunks=N       200, N chunks of 1 KiB, no Content-Length (chunked)
  /echo                  200, the request body read whole
  /read_slowly           200, the request body read in 1-byte reads, its length
  /error                 raises before start_response
  /str_body              returns a str instead of bytes
  /str_item              an iterable whose second item is a str
  /no_start              returns a body without calling start_response
  /start_twice           calls start_response twice without exc_info
  /raise_mid             streams one chunk, then raises (no Content-Length)
  /raise_mid_cl          Content-Length 100, sends 10 bytes, then raises
  /none                  returns None
  /yield_after_close     an iterable that yields again after close()
  /cl_more               Content-Length 5, sends 10 bytes
  /cl_more_one           the same in one piece
  /cl_fewer              Content-Length 10, sends 5 bytes
  /hop_by_hop?name=X     sets hop-by-hop header X (Connection, Keep-Alive, ...)
  /invalid_header        a header value with CRLF
Every mistake route records that it ran in the state dir (tests.apps.common.record).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator

from tests.apps.common import query, record

Environ = Dict[str, Any]
StartResponse = Callable[..., Any]

TEXT = [("Content-Type", "text/plain")]
CHUNK = b"x" * 1024


def _hello(environ: Environ, start_response: StartResponse) -> Any:
    start_response("200 OK", [*TEXT, ("Content-Length", "5")])
    return [b"hello"]


def _big(environ: Environ, start_response: StartResponse) -> Any:
    size = int(query(environ).get("size", 4 << 20))
    start_response("200 OK", [*TEXT, ("Content-Length", str(size))])
    block = b"b" * 65536

    def body() -> Iterator[bytes]:
        left = size
        while left > 0:
            piece = block[: min(left, len(block))]
            left -= len(piece)
            yield piece

    return body()


def _stream(environ: Environ, start_response: StartResponse) -> Any:
    chunks = int(query(environ).get("chunks", 16))
    start_response("200 OK", TEXT)
    return (CHUNK for _ in range(chunks))


def _echo(environ: Environ, start_response: StartResponse) -> Any:
    body = environ["wsgi.input"].read()
    start_response("200 OK", [*TEXT, ("Content-Length", str(len(body)))])
    return [body]


def _read_slowly(environ: Environ, start_response: StartResponse) -> Any:
    stream = environ["wsgi.input"]
    total = 0
    while stream.read(1):
        total += 1
    body = str(total).encode()
    start_response("200 OK", [*TEXT, ("Content-Length", str(len(body)))])
    return [body]


def _error(environ: Environ, start_response: StartResponse) -> Any:
    raise RuntimeError("misbehaving-error-marker")


def _str_body(environ: Environ, start_response: StartResponse) -> Any:
    record("str_body", "ran")
    start_response("200 OK", TEXT)
    return "a str, not bytes"


def _str_item(environ: Environ, start_response: StartResponse) -> Any:
    record("str_item", "ran")
    start_response("200 OK", TEXT)
    return [b"bytes first, ", "then a str"]


def _no_start(environ: Environ, start_response: StartResponse) -> Any:
    record("no_start", "ran")
    return [b"start_response was never called"]


def _start_twice(environ: Environ, start_response: StartResponse) -> Any:
    start_response("200 OK", TEXT)
    start_response("201 Created", TEXT)
    return [b"second start_response accepted"]


def _raise_mid(environ: Environ, start_response: StartResponse) -> Any:
    start_response("200 OK", TEXT)

    def body() -> Iterator[bytes]:
        yield b"first-chunk;"
        raise RuntimeError("raise-mid-stream-marker")

    return body()


def _raise_mid_cl(environ: Environ, start_response: StartResponse) -> Any:
    start_response("200 OK", [*TEXT, ("Content-Length", "100")])

    def body() -> Iterator[bytes]:
        yield b"0123456789"
        raise RuntimeError("raise-mid-length-marker")

    return body()


def _none(environ: Environ, start_response: StartResponse) -> Any:
    record("none", "ran")
    start_response("200 OK", TEXT)
    return None


class _YieldsAfterClose:
    """An iterable whose iterator keeps going after close() (a broken app's buffer)."""

    def __init__(self) -> None:
        self.closed = False
        self.after_close = 0

    def __iter__(self) -> _YieldsAfterClose:
        return self

    def __next__(self) -> bytes:
        if self.closed:
            self.after_close += 1
            record("yield_after_close", f"next after close #{self.after_close}")
            return b"after-close"
        return b"data"

    def close(self) -> None:
        # Called by the server once the response is done or the client left; the app
        # forgets to stop its iterator.
        self.closed = True
        record("yield_after_close", "closed")


def _yield_after_close(environ: Environ, start_response: StartResponse) -> Any:
    # Content-Length bounds the body: the server must stop iterating at 8 bytes, call
    # close(), and never iterate again.
    start_response("200 OK", [*TEXT, ("Content-Length", "8")])
    return _YieldsAfterClose()


def _cl_more(environ: Environ, start_response: StartResponse) -> Any:
    start_response("200 OK", [*TEXT, ("Content-Length", "5")])
    return [b"12345", b"EXTRA"]


def _cl_more_one(environ: Environ, start_response: StartResponse) -> Any:
    start_response("200 OK", [*TEXT, ("Content-Length", "5")])
    return [b"12345EXTRA"]


def _cl_fewer(environ: Environ, start_response: StartResponse) -> Any:
    start_response("200 OK", [*TEXT, ("Content-Length", "10")])
    return [b"12345"]


def _hop_by_hop(environ: Environ, start_response: StartResponse) -> Any:
    name = query(environ).get("name", "Connection")
    value = {
        "Connection": "close",
        "Keep-Alive": "timeout=5",
        "Transfer-Encoding": "chunked",
        "Upgrade": "websocket",
        "Proxy-Connection": "keep-alive",
        "TE": "trailers",
        "Trailer": "X-T",
    }.get(name, "x")
    start_response("200 OK", [*TEXT, (name, value), ("Content-Length", "2")])
    return [b"ok"]


def _invalid_header(environ: Environ, start_response: StartResponse) -> Any:
    start_response("200 OK", [*TEXT, ("X-Bad", "a\r\nX-Injected: 1")])
    return [b"must not be sent"]


ROUTES: Dict[str, Callable[[Environ, StartResponse], Any]] = {
    "/hello": _hello,
    "/big": _big,
    "/stream": _stream,
    "/echo": _echo,
    "/read_slowly": _read_slowly,
    "/error": _error,
    "/str_body": _str_body,
    "/str_item": _str_item,
    "/no_start": _no_start,
    "/start_twice": _start_twice,
    "/raise_mid": _raise_mid,
    "/raise_mid_cl": _raise_mid_cl,
    "/none": _none,
    "/yield_after_close": _yield_after_close,
    "/cl_more": _cl_more,
    "/cl_more_one": _cl_more_one,
    "/cl_fewer": _cl_fewer,
    "/hop_by_hop": _hop_by_hop,
    "/invalid_header": _invalid_header,
}


def app(environ: Environ, start_response: StartResponse) -> Any:
    handler = ROUTES.get(environ.get("PATH_INFO", ""))
    if handler is None:
        start_response("404 Not Found", [*TEXT, ("Content-Length", "9")])
        return [b"not found"]
    return handler(environ, start_response)
