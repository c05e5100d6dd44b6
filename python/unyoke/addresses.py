"""What a ``bind`` address means: ``HOST:PORT``, ``[V6]:PORT``, ``unix:/PATH``, ``fd://N``.

Parsing only, no sockets: :mod:`unyoke.listeners` turns a :class:`BindAddress` into
listening sockets.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass

#: ``sun_path`` holds 108 bytes on Linux, the last one for the terminating NUL.
MAX_UNIX_PATH_BYTES = 107

BIND_FORMS = "HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N"


@dataclass(frozen=True)
class BindAddress:
    """One parsed ``bind`` value.

    ``kind`` is ``"tcp"`` (``host``, ``port``), ``"unix"`` (``path``; a path starting with
    ``@`` is in Linux's abstract namespace) or ``"fd"`` (``fd``, an inherited listening socket).
    """

    kind: str
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "fd":
            return f"fd://{self.fd}"
        return format_host_port(self.host, self.port)


def format_host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets (``[::1]:8000``)."""
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def parse_port(text: str) -> int:
    """A TCP port number from its decimal text, 0 to 65535."""
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"port must be a number from 0 to 65535, got {text!r}")
    port = int(text)
    if port > 65535:
        raise ValueError(f"port must be a number from 0 to 65535, got {port}")
    return port


def parse_bind(spec: str) -> BindAddress:
    """Parse one ``bind`` value; raises ``ValueError`` saying what is wrong with it."""
    if not isinstance(spec, str):
        raise ValueError(f"expected a string ({BIND_FORMS}), got {type(spec).__name__}")
    if spec != spec.strip() or not spec:
        raise ValueError(f"expected {BIND_FORMS}, got {spec!r}")
    if spec.startswith("unix:"):
        return _parse_unix(spec, spec[len("unix:") :])
    if spec.startswith("fd://"):
        number = spec[len("fd://") :]
        if not number.isdigit() or not number.isascii():
            raise ValueError(f"fd://N needs a file descriptor number, got {spec!r}")
        return BindAddress(kind="fd", fd=int(number))
    if "://" in spec:
        raise ValueError(f"unknown address scheme in {spec!r}: expected {BIND_FORMS}")
    if spec.startswith("["):
        host, sep, rest = spec[1:].partition("]")
        if not sep:
            raise ValueError(f"missing ']' after the IPv6 address in {spec!r}")
        if not rest.startswith(":"):
            raise ValueError(f"missing port after [{host}] in {spec!r}: write [{host}]:8000")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in {spec!r} is not an IPv6 address") from None
        return BindAddress(kind="tcp", host=host, port=_port_of(spec, rest[1:]))
    host, sep, port_text = spec.rpartition(":")
    if not sep:
        raise ValueError(f"missing port in {spec!r}: write {spec}:8000")
    if ":" in host:
        raise ValueError(f"write an IPv6 address in brackets: [{host}]:{port_text}")
    if not host:
        raise ValueError(
            f"missing host in {spec!r}: write 0.0.0.0{spec} for every IPv4 address, "
            f"[::]{spec} for every IPv6 address"
        )
    return BindAddress(kind="tcp", host=host, port=_port_of(spec, port_text))


def _port_of(spec: str, text: str) -> int:
    try:
        return parse_port(text)
    except ValueError as error:
        raise ValueError(f"{error} (in {spec!r})") from None


def _parse_unix(spec: str, path: str) -> BindAddress:
    if not path:
        raise ValueError(f"missing path in {spec!r}: write unix:/run/app.sock")
    if "\0" in path:
        raise ValueError(f"a unix socket path cannot contain a NUL byte: {spec!r}")
    if path.startswith("@") and not sys.platform.startswith("linux"):
        raise ValueError(f"abstract unix sockets (@name) exist only on Linux: {spec!r}")
    size = len(os.fsencode(path))
    if size > MAX_UNIX_PATH_BYTES:
        raise ValueError(
            f"unix socket path is {size} bytes long, the limit is {MAX_UNIX_PATH_BYTES}: "
            f"{spec!r}; use a shorter path"
        )
    return BindAddress(kind="unix", path=path)
