"""Listening sockets: from ``bind`` addresses, or a socket the caller made, to the engine.

unyoke opens its sockets in Python, where errors become clear messages, and hands the engine
``(fd, kind, display)`` for each; the engine ``dup()``s the descriptors.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from .addresses import BindAddress, format_host_port, parse_bind
from .errors import StartupError

log = logging.getLogger("unyoke")

#: Mode of a unix socket file unyoke creates: anyone who can reach the directory may connect
#: (as uvicorn and hypercorn do); restrict access with the directory's permissions.
UNIX_SOCKET_MODE = 0o666

#: errnos that mean "this machine has no such address (family)": an address a host name
#: resolves to is skipped for these when another address of the name could be bound.
_UNAVAILABLE = (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)


@dataclass
class Listener:
    """A bound, listening socket and what to say about it."""

    sock: socket.socket
    #: ``"tcp"`` or ``"unix"``, as the engine takes it.
    kind: str
    #: ``127.0.0.1:8000``, ``[::1]:8000``, ``unix:/run/app.sock``.
    display: str
    #: SERVER_NAME when the ``server_name`` setting is not given.
    server_name: str
    #: The real port of a TCP listener (so port 0 tells what it got), 0 for unix.
    port: int = 0
    #: The unix socket file unyoke created (removed on close), with its (st_dev, st_ino).
    unix_path: Optional[str] = None
    unix_identity: Optional[Tuple[int, int]] = None
    #: Whether unyoke made the socket (and may close it once the engine holds a duplicate).
    owned: bool = True

    def url(self, tls: bool = False) -> str:
        """Where a client reaches it: ``http://127.0.0.1:8000`` or ``unix:/run/app.sock``
        (TLS is for TCP listeners only)."""
        if self.kind == "unix":
            return self.display
        return f"{'https' if tls else 'http'}://{self.display}"

    def engine_tuple(self) -> Tuple[int, str, str]:
        """``(fd, kind, display)`` for ``unyoke._unyoke.Engine``."""
        return (self.sock.fileno(), self.kind, self.display)


#: The first file descriptor systemd passes (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3


def systemd_listen_fds() -> List[int]:
    """The sockets systemd passed to this process (``LISTEN_FDS``, for ``LISTEN_PID``).

    As sd_listen_fds(3) does, the variables are removed once read, so that a process this
    one starts does not take the sockets for its own.
    """
    pid, count = os.environ.get("LISTEN_PID", ""), os.environ.get("LISTEN_FDS", "")
    if not pid.isdigit() or int(pid) != os.getpid() or not count.isdigit():
        return []
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    return list(range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)))


def addresses_to_bind(settings: Mapping[str, Any]) -> List[BindAddress]:
    """The ``bind`` addresses; else the sockets systemd passed; else ``host``/``port``."""
    if settings["bind"]:
        return [parse_bind(spec) for spec in settings["bind"]]
    activated = systemd_listen_fds()
    if activated:
        return [BindAddress(kind="fd", fd=fd) for fd in activated]
    return [BindAddress(kind="tcp", host=settings["host"], port=settings["port"])]


def open_listeners(settings: Mapping[str, Any]) -> List[Listener]:
    """Bind and listen on every address the settings name; raises :class:`StartupError`."""
    listeners: List[Listener] = []
    try:
        for address in addresses_to_bind(settings):
            listeners += open_address(address, settings["backlog"])
    except BaseException:
        close_listeners(listeners)
        raise
    return listeners


def open_address(address: BindAddress, backlog: int) -> List[Listener]:
    """Listeners for one address: one per address a host name resolves to."""
    if address.kind == "unix":
        return [_open_unix(address.path, backlog)]
    if address.kind == "fd":
        return [_inherit_fd(address.fd)]
    return _open_tcp(address.host, address.port, backlog)


def _describe(error: OSError, where: str, port: int = -1) -> str:
    code = error.errno
    if code == errno.EADDRINUSE:
        reason = "address already in use (another server listens there: stop it or pick "
        reason += "another port)" if port >= 0 else "another path)"
    elif code in (errno.EACCES, errno.EPERM):
        reason = "permission denied"
        if 0 < port < 1024:
            reason += " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    elif code == errno.EADDRNOTAVAIL:
        reason = "address not available: no network interface of this machine has it"
    elif code == errno.ENOENT:
        reason = f"no such directory: {os.path.dirname(where[len('unix:') :]) or '.'!r}"
    else:
        reason = error.strerror or str(error)
    return f"cannot listen on {where}: {reason}"


def _open_tcp(host: str, port: int, backlog: int) -> List[Listener]:
    try:
        infos = socket.getaddrinfo(
            host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
    except socket.gaierror as error:
        raise StartupError(f"cannot resolve host {host!r}: {error.strerror}") from None
    seen = set()
    candidates: List[Tuple[int, Tuple[Any, ...]]] = []
    for info_family, _, _, _, info_address in infos:
        if info_family not in (socket.AF_INET, socket.AF_INET6) or info_address[:2] in seen:
            continue
        seen.add(info_address[:2])
        candidates.append((info_family, tuple(info_address)))
    listeners: List[Listener] = []
    skipped: List[str] = []
    try:
        for family, sockaddr in candidates:
            if port == 0 and listeners:
                # Every address of one name gets the same port, the one the first one got.
                sockaddr = (sockaddr[0], listeners[0].port, *sockaddr[2:])
            where = format_host_port(str(sockaddr[0]), int(sockaddr[1]))
            try:
                listeners.append(_bind_tcp(family, sockaddr, backlog, host))
            except OSError as error:
                if error.errno in _UNAVAILABLE and len(candidates) > 1:
                    skipped.append(f"{where} ({error.strerror})")
                    continue
                raise StartupError(_describe(error, where, int(sockaddr[1]))) from None
    except BaseException:
        close_listeners(listeners)
        raise
    if not listeners:
        raise StartupError(f"cannot listen on any address of {host!r}: {', '.join(skipped)}")
    for where in skipped:
        log.warning("%s resolves to %s, which cannot be bound here: skipped", host, where)
    return listeners


def _bind_tcp(family: int, sockaddr: Any, backlog: int, host: str) -> Listener:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # So that [::]:80 and 0.0.0.0:80 can both be bound, one per family.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return _tcp_listener(sock, server_name=host)


def _tcp_listener(sock: socket.socket, server_name: str = "", owned: bool = True) -> Listener:
    bound = sock.getsockname()
    address, port = str(bound[0]), int(bound[1])
    return Listener(
        sock=sock,
        kind="tcp",
        display=format_host_port(address, port),
        server_name=server_name or address,
        port=port,
        owned=owned,
    )


def _open_unix(path: str, backlog: int) -> Listener:
    where = f"unix:{path}"
    abstract = path.startswith("@")
    if not abstract:
        _remove_stale_socket(path, where)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind("\0" + path[1:] if abstract else path)
        identity = None
        if not abstract:
            os.chmod(path, UNIX_SOCKET_MODE)
            status = os.stat(path)
            identity = (status.st_dev, status.st_ino)
        sock.listen(backlog)
    except OSError as error:
        sock.close()
        raise StartupError(_describe(error, where)) from None
    except BaseException:
        sock.close()
        raise
    return Listener(
        sock=sock,
        kind="unix",
        display=where,
        server_name="localhost",
        unix_path=None if abstract else path,
        unix_identity=identity,
    )


def _remove_stale_socket(path: str, where: str) -> None:
    """Remove a socket file no server listens on any more; refuse to touch anything else."""
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as error:
        raise StartupError(_describe(error, where)) from None
    if not stat.S_ISSOCK(status.st_mode):
        raise StartupError(f"cannot listen on {where}: the path exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        pass  # nobody listens: a leftover of a server that did not clean up
    except OSError as error:
        raise StartupError(_describe(error, where)) from None
    else:
        raise StartupError(f"cannot listen on {where}: another server is listening on it")
    finally:
        probe.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        raise StartupError(f"cannot remove the stale socket {path!r}: {error.strerror}") from None


def _inherit_fd(fd: int) -> Listener:
    where = f"fd://{fd}"
    try:
        sock = socket.socket(fileno=fd)
    except OSError as error:
        raise StartupError(f"cannot listen on {where}: {error.strerror or error}") from None
    try:
        return listener_from_socket(sock, owned=True)
    except StartupError as error:
        sock.detach()  # not ours to close: the caller passed it in
        raise StartupError(f"{where}: {error}") from None


def listener_from_socket(sock: socket.socket, owned: bool = False) -> Listener:
    """A Listener for a socket the caller bound and put in listening state."""
    if not isinstance(sock, socket.socket):
        raise StartupError(f"expected a listening socket.socket, got {type(sock).__name__}")
    if type(sock).__module__ == "ssl" or hasattr(sock, "do_handshake"):
        raise StartupError("TLS sockets are not supported yet: pass a plain listening socket")
    if sock.fileno() < 0:
        raise StartupError("the socket is closed")
    if sock.type != socket.SOCK_STREAM or sock.family not in (
        socket.AF_INET,
        socket.AF_INET6,
        socket.AF_UNIX,
    ):
        raise StartupError("not a TCP or unix stream socket")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise StartupError("the socket is not listening: call sock.listen() first")
    if sock.family == socket.AF_UNIX:
        name = sock.getsockname()
        if isinstance(name, bytes):
            name = "@" + name[1:].decode("utf-8", "replace")
        return Listener(sock, "unix", f"unix:{name}", "localhost", owned=owned)
    return _tcp_listener(sock, owned=owned)


def release_sockets(listeners: Sequence[Listener]) -> None:
    """Close the socket objects unyoke made, once the engine holds its own duplicates."""
    for listener in listeners:
        if listener.owned:
            listener.sock.close()


def close_listeners(listeners: Sequence[Listener]) -> None:
    """Close the sockets unyoke made and remove the unix socket files it created."""
    release_sockets(listeners)
    for listener in listeners:
        path = listener.unix_path
        if path is None:
            continue
        try:
            status = os.lstat(path)
            # Another server may have replaced the file since: remove only our own.
            if (status.st_dev, status.st_ino) == listener.unix_identity:
                os.unlink(path)
        except OSError:
            pass
