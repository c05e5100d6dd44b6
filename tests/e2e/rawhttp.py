"""A small, strict HTTP/1.x client over raw sockets, for tests that must see the wire.

It sends exactly the bytes it is given and parses what comes back without any
leniency a real client would add: the status line, the headers (a list, case
preserved, in order), and the body framed by Content-Length, chunked coding or the
connection's close. It reports whether the server closed the connection.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any, List, NamedTuple, Optional, Tuple, Union

Address = Union[Tuple[str, int], str]  # (host, port) for TCP, a path for a UNIX socket

DEFAULT_TIMEOUT = 10.0


class ConnectionClosed(Exception):
    """The server closed the connection before a response (or more of one) arrived."""


class IncompleteResponse(Exception):
    """The connection closed in the middle of a framed response body."""

    def __init__(self, message: str, response: HTTPResponse):
        super().__init__(message)
        self.response = response


class ProtocolError(Exception):
    """The server sent bytes that are not a well-formed HTTP/1.x response."""


@dataclass
class HTTPResponse:
    version: str
    status: int
    reason: str
    headers: List[Tuple[str, str]]
    body: bytes = b""
    raw_head: bytes = b""
    framing: str = "none"  # "length", "chunked", "close" or "none" (no body by rule)
    trailers: List[Tuple[str, str]] = field(default_factory=list)
    chunk_sizes: List[int] = field(default_factory=list)

    def header(self, name: str) -> Optional[str]:
        """The first value of header `name` (case-insensitive), or None."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None

    def header_all(self, name: str) -> List[str]:
        lname = name.lower()
        return [value for key, value in self.headers if key.lower() == lname]

    def header_tokens(self, name: str) -> List[str]:
        """Comma-separated tokens of every `name` header, lower-cased."""
        tokens = []
        for value in self.header_all(name):
            tokens.extend(t.strip().lower() for t in value.split(",") if t.strip())
        return tokens

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 300 else self.body[:300] + b"..."
        return (
            f"<HTTPResponse {self.version} {self.status} {self.reason!r} "
            f"headers={self.headers!r} framing={self.framing} body={body!r}>"
        )


NO_BODY_STATUSES = (204, 304)


def _response_has_no_body(method: str, status: int) -> bool:
    return method.upper() == "HEAD" or 100 <= status < 200 or status in NO_BODY_STATUSES


class RawConnection:
    """One client connection. Bytes go out verbatim; responses are parsed strictly."""

    def __init__(self, address: Address, timeout: float = DEFAULT_TIMEOUT):
        self.address = address
        self.timeout = timeout
        if isinstance(address, str):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(address)
        else:
            self.sock = socket.create_connection(address, timeout=timeout)
        self.buf = b""
        self.eof = False  # the server closed (EOF or reset) its side

    # -- sending -------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def try_send(self, data: bytes) -> bool:
        """Send, tolerating the server having closed already. True when all was sent."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def local_port(self) -> int:
        return int(self.sock.getsockname()[1])

    # -- receiving -----------------------------------------------------------

    def _fill(self, timeout: Optional[float] = None) -> bool:
        """Read more bytes into the buffer. False on EOF/reset. Raises socket.timeout."""
        if self.eof:
            return False
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            data = self.sock.recv(262144)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _read_until(self, marker: bytes, limit: int = 1 << 20) -> bytes:
        while True:
            index = self.buf.find(marker)
            if index >= 0:
                out = self.buf[: index + len(marker)]
                self.buf = self.buf[index + len(marker) :]
                return out
            if len(self.buf) > limit:
                raise ProtocolError(f"no {marker!r} within {limit} bytes: {self.buf[:200]!r}")
            if not self._fill():
                raise ConnectionClosed(f"connection closed while waiting for {marker!r}")

    def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionClosed(f"connection closed with {n - len(self.buf)} bytes missing")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_head(self) -> HTTPResponse:
        """Read a status line and headers. Raises ConnectionClosed on EOF before any byte."""
        if not self.buf and not self._fill():
            raise ConnectionClosed("connection closed before a response")
        head = self._read_until(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        status_line = lines[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"bad status line {status_line!r}")
        version, status = parts[0], int(parts[1])
        reason = parts[2] if len(parts) > 2 else ""
        if len(parts[1]) != 3:
            raise ProtocolError(f"bad status code in {status_line!r}")
        headers = []
        for line in lines[1:]:
            if b":" not in line or line[:1] in (b" ", b"\t"):
                raise ProtocolError(f"bad header line {line!r} in {head!r}")
            name, _, value = line.partition(b":")
            if name != name.strip() or not name:
                raise ProtocolError(f"bad header name {name!r}")
            headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
        return HTTPResponse(version, status, reason, headers, raw_head=head)

    def read_response(self, method: str = "GET") -> HTTPResponse:
        """Read the next response, 1xx included, with its body framed per RFC 9112 §6.3."""
        response = self.read_head()
        if _response_has_no_body(method, response.status):
            response.framing = "none"
            return response
        te = response.header_tokens("transfer-encoding")
        lengths = response.header_all("content-length")
        if te:
            if te[-1] != "chunked":
                raise ProtocolError(f"response transfer-encoding {te!r} does not end in chunked")
            if lengths:
                raise ProtocolError("response has both Content-Length and Transfer-Encoding")
            response.framing = "chunked"
            self._read_chunked(response)
        elif lengths:
            if len(set(lengths)) != 1 or not lengths[0].isdigit():
                raise ProtocolError(f"bad response Content-Length {lengths!r}")
            response.framing = "length"
            n = int(lengths[0])
            try:
                response.body = self._read_exact(n)
            except ConnectionClosed as exc:
                response.body, self.buf = self.buf, b""
                raise IncompleteResponse(f"body shorter than Content-Length {n}", response) from exc
        else:
            response.framing = "close"
            while self._fill():
                pass
            response.body, self.buf = self.buf, b""
        return response

    def _read_chunked(self, response: HTTPResponse) -> None:
        body = []
        try:
            while True:
                line = self._read_until(b"\r\n", limit=4096)[:-2]
                size_text = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size line {line!r}") from None
                if size == 0:
                    break
                response.chunk_sizes.append(size)
                body.append(self._read_exact(size))
                if self._read_exact(2) != b"\r\n":
                    raise ProtocolError("chunk data not followed by CRLF")
            while True:
                line = self._read_until(b"\r\n", limit=65536)[:-2]
                if not line:
                    break
                name, _, value = line.partition(b":")
                response.trailers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
        except ConnectionClosed as exc:
            response.body = b"".join(body) + self.buf
            self.buf = b""
            raise IncompleteResponse("connection closed inside a chunked body", response) from exc
        response.body = b"".join(body)

    def read_final_response(self, method: str = "GET") -> Tuple[List[HTTPResponse], HTTPResponse]:
        """Read 1xx interim responses (returned in a list) and the final response."""
        interim = []
        while True:
            response = self.read_response(method)
            if response.status >= 200:
                return interim, response
            interim.append(response)

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """True once the server has closed (EOF or reset) within `timeout` seconds.

        Bytes that arrive meanwhile stay in `self.buf`; they mean the connection was
        not closed cleanly after the last response, so the answer is then False.
        """
        if self.eof:
            return not self.buf
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                if not self._fill(timeout=remaining):
                    return not self.buf
            except TimeoutError:
                return False
            if self.buf:
                return False

    def nothing_arrives(self, timeout: float) -> bool:
        """True when no byte and no EOF arrive within `timeout` (an absence check)."""
        if self.buf or self.eof:
            return False
        try:
            if not self._fill(timeout=timeout):
                return False
        except TimeoutError:
            return True
        return False


class Exchange(NamedTuple):
    status: int
    headers: List[Tuple[str, str]]
    body: bytes
    closed: bool
    response: HTTPResponse


def request(
    address: Address,
    raw: bytes,
    method: str = "GET",
    close_wait: float = 1.0,
    timeout: float = DEFAULT_TIMEOUT,
) -> Exchange:
    """Send `raw` on a new connection and read one final response.

    `closed` says whether the server closed the connection within `close_wait`
    seconds after that response (bytes arriving instead count as not closed).
    """
    with RawConnection(address, timeout=timeout) as conn:
        conn.send(raw)
        _, response = conn.read_final_response(method)
        closed = conn.wait_closed(close_wait)
        return Exchange(response.status, response.headers, response.body, closed, response)


def build_request(
    method: str = "GET",
    target: str = "/",
    headers: Optional[List[Tuple[str, str]]] = None,
    body: bytes = b"",
    version: str = "HTTP/1.1",
    host: Optional[str] = "localhost",
    content_length: Optional[bool] = None,
) -> bytes:
    """Serialise a well-formed request; Content-Length is added when there is a body."""
    lines = [f"{method} {target} {version}"]
    names = {name.lower() for name, _ in headers or []}
    if host is not None and "host" not in names:
        lines.append(f"Host: {host}")
    for name, value in headers or []:
        lines.append(f"{name}: {value}")
    if content_length is None:
        content_length = bool(body) and "transfer-encoding" not in names
    if content_length and "content-length" not in names:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(body: bytes, sizes: Optional[List[int]] = None, trailers: bytes = b"") -> bytes:
    """Encode `body` in chunks of the given sizes (the rest in one chunk), then the last chunk."""
    out = []
    pos = 0
    for size in sizes or []:
        piece = body[pos : pos + size]
        if not piece:
            break
        out.append(b"%x\r\n%s\r\n" % (len(piece), piece))
        pos += len(piece)
    if pos < len(body):
        out.append(b"%x\r\n%s\r\n" % (len(body) - pos, body[pos:]))
    out.append(b"0\r\n" + trailers + b"\r\n")
    return b"".join(out)
