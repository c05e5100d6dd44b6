"""Every setting of unyoke, in one table.

The command line (``unyoke --help``), the keyword arguments of :func:`unyoke.serve`,
:func:`unyoke.server` and :class:`unyoke.Server`, and ``docs/settings.md`` are all derived
from :data:`SETTINGS`; nothing else lists a default. Regenerate the docs with::

    python -m unyoke.config --markdown > docs/settings.md
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .addresses import BIND_FORMS, parse_bind
from .errors import ConfigError, UnknownSettingError

#: The kinds of value a setting can hold; each has a Python check and a command-line form.
KINDS = ("int", "float", "bool", "str", "choice", "path", "list", "networks", "mapping", "callable")

#: The largest integer a size or count setting accepts (the engine stores them as 64-bit).
MAX_INT = 2**62
#: The longest duration accepted: about 31 years (the engine's timers overflow near 2**64 ns).
MAX_SECONDS = 1e9

#: Keys a ``log_format`` string may use, with a sample value to check a format at start-up.
LOG_FORMAT_KEYS: Dict[str, Any] = {
    "client_ip": "127.0.0.1",
    "date_time": "22/Nov/2025 20:52:00",
    "request_line": "GET / HTTP/1.1",
    "status_code": 200,
    "body_length": 12,
    "wall_seconds": 0.000123,
}

#: Parameter names of eventlet.wsgi.server() that unyoke spells differently.
RENAMED = {
    "log_output": "access_log",
    "debug": "expose_tracebacks",
    "request_queue_size": "backlog",
    "socket_timeout": "inactivity_timeout",
}


@dataclass(frozen=True)
class Setting:
    """One row of the settings table."""

    name: str
    section: str
    kind: str
    default: Any
    help: str
    unit: str = ""
    metavar: str = ""
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    choices: Tuple[str, ...] = ()
    #: What ``None`` (the default) means; set only for settings whose default is derived.
    none_means: str = ""
    #: ``False`` for command-line-only settings (``factory``).
    python: bool = True
    #: ``False`` for Python-only settings (callables such as ``on_connect``).
    cli: bool = True
    #: Non-empty while a value other than the default is not implemented yet: the reason.
    not_yet: str = ""
    #: Extra check of a value already of the right kind; raises ``ValueError(problem)``.
    check: Optional[Callable[[Any], None]] = None
    #: Words accepted for a value, as ``(word, value)``: ``--workers auto`` is 0.
    words: Tuple[Tuple[str, Any], ...] = ()

    @property
    def flag(self) -> str:
        """The command-line form: ``--max-request-body-size``."""
        return "--" + self.name.replace("_", "-")

    @property
    def flags(self) -> str:
        """Every command-line spelling, ``--keepalive / --no-keepalive`` for a boolean."""
        if self.kind == "bool":
            return f"{self.flag} / --no-{self.flag[2:]}"
        return self.flag

    @property
    def cli_metavar(self) -> str:
        """The placeholder for the value in ``--help``."""
        if self.metavar:
            return self.metavar
        if self.choices:
            return "{" + ",".join(self.choices) + "}"
        if self.unit == "bytes":
            return "BYTES"
        return {"int": "N", "float": "SECONDS", "path": "FILE"}.get(self.kind, "VALUE")

    def default_text(self) -> str:
        """The default, as the help and the docs show it."""
        if self.default is None:
            return self.none_means or "none"
        if self.kind == "bool":
            return "on" if self.default else "off"
        if self.kind in ("list", "networks", "mapping") and not self.default:
            return "none"
        if self.kind == "int" and self.unit == "bytes" and self.default >= 1024:
            return f"{self.default} ({human_size(self.default)})"
        if self.kind == "float":
            return f"{self.default:g}"
        return str(self.default)

    def summary(self) -> str:
        """Unit and default in one phrase: ``bytes; default 1024 (1 KiB)``."""
        parts = [self.unit] if self.unit else []
        if self.kind == "choice":
            parts.append("one of " + ", ".join(self.choices))
        parts.append(f"default {self.default_text()}")
        if self.not_yet:
            parts.append(f"{self.not_yet}: only the default is accepted")
        return "; ".join(parts)


def human_size(size: int) -> str:
    """``262144`` → ``256 KiB``; sizes not a whole number of KiB stay in bytes."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


def _check_header_value(value: str) -> None:
    if not value or not all(" " <= char <= "~" for char in value):
        raise ValueError(f"must be printable ASCII without line breaks, got {value!r}")


def _check_log_format(value: str) -> None:
    try:
        value % LOG_FORMAT_KEYS
    except KeyError as error:
        known = ", ".join(LOG_FORMAT_KEYS)
        raise ValueError(f"unknown key {error.args[0]!r}; the keys are {known}") from None
    except (TypeError, ValueError) as error:
        raise ValueError(f"{value!r} is not a %-format string: {error}") from None


def _check_environ(value: Mapping[Any, Any]) -> None:
    for key in value:
        if not isinstance(key, str) or not key:
            raise ValueError(f"keys must be non-empty strings, got {key!r}")


def check_app_reference(reference: str) -> None:
    """Check the form ``module:attribute`` (or a bare ``module``) without importing anything."""
    module, colon, attribute = reference.partition(":")
    names = module.split(".") + (attribute.split(".") if colon else [])
    if not all(name.isidentifier() for name in names):
        raise ValueError(f"expected MODULE:APP (like mysite.wsgi:application), got {reference!r}")


def _check_mounts(value: Mapping[Any, Any]) -> None:
    for prefix, app in value.items():
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            raise ValueError(f"a mount prefix must be a path starting with '/', got {prefix!r}")
        if prefix != "/" and prefix.endswith("/"):
            raise ValueError(f"a mount prefix must not end with '/': {prefix!r}")
        if isinstance(app, str):
            check_app_reference(app)
        elif not callable(app):
            raise ValueError(f"{prefix!r} must map to an application or 'module:app', got {app!r}")


def _check_bind(value: Sequence[str]) -> None:
    for spec in value:
        parse_bind(spec)


def _check_networks(value: Sequence[str]) -> None:
    for network in value:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ValueError(
                f"{network!r} is not an IP network (like 10.0.0.0/8, 192.168.1.7 or ::1/128)"
            ) from None


def _check_metrics(value: str) -> None:
    address = parse_bind(value)
    if address.kind != "tcp":
        raise ValueError(f"expected HOST:PORT (a TCP address), got {value!r}")


_NETWORK = "Listening"
_PROCESS = "Workers and threads"
_LIMITS = "Request limits"
_TIMEOUTS = "Timeouts"
_HTTP = "HTTP"
_APP = "Application"
_LOGGING = "Logging"
_TLS = "TLS"
_PROXY = "Proxies and networks"

#: Every setting, in the order of ``--help`` and of the docs.
SETTINGS: Tuple[Setting, ...] = (
    # Listening
    Setting(
        "host",
        _NETWORK,
        "str",
        "127.0.0.1",
        metavar="HOST",
        help="Host name or IP address to listen on; a name is resolved and every address it "
        "has is bound. Ignored when bind is given.",
    ),
    Setting(
        "port",
        _NETWORK,
        "int",
        8000,
        metavar="PORT",
        minimum=0,
        maximum=65535,
        help="TCP port to listen on; 0 picks a free port. Ignored when bind is given.",
    ),
    Setting(
        "bind",
        _NETWORK,
        "list",
        (),
        metavar="ADDRESS",
        check=_check_bind,
        help=f"Address to listen on, repeatable: {BIND_FORMS} (an inherited listening "
        "socket). A unix socket file is created with mode 0666 (restrict access with the "
        "directory's permissions); a stale one is replaced. When given, host and port are "
        "ignored.",
    ),
    Setting(
        "backlog",
        _NETWORK,
        "int",
        2048,
        unit="connections",
        minimum=1,
        maximum=2**31 - 1,
        help="Connections the kernel queues before unyoke accepts them (the listen(2) "
        "backlog, capped by net.core.somaxconn).",
    ),
    Setting(
        "max_size",
        _NETWORK,
        "int",
        10000,
        unit="connections",
        minimum=1,
        maximum=MAX_INT,
        help="Most client connections open at once; further ones wait in the listen backlog "
        "until one closes.",
    ),
    # Workers and threads
    Setting(
        "workers",
        _PROCESS,
        "int",
        1,
        unit="processes",
        minimum=0,
        maximum=1024,
        words=(("auto", 0),),
        help="Worker processes, each with its own engine and copy of the application, "
        "sharing the listening sockets (0 or auto: one per core). Above 1, a supervisor "
        "process binds the sockets, forks the workers and restarts one that dies; SIGHUP "
        "reloads them, SIGTTIN and SIGTTOU add and remove one (docs/deployment.md).",
    ),
    Setting(
        "max_requests",
        _PROCESS,
        "int",
        0,
        unit="requests",
        minimum=0,
        maximum=MAX_INT,
        help="Requests a worker serves before it stops gracefully and is replaced (0 = no "
        "limit); a leak in the application then costs a restart, not the machine. Runs "
        "under a supervisor.",
    ),
    Setting(
        "max_requests_jitter",
        _PROCESS,
        "int",
        0,
        unit="requests",
        minimum=0,
        maximum=MAX_INT,
        help="Random number of requests, from -J to +J, added to max_requests for each "
        "worker, so that workers do not all restart at once.",
    ),
    Setting(
        "worker_timeout",
        _PROCESS,
        "float",
        0.0,
        unit="seconds",
        minimum=0.0,
        maximum=MAX_SECONDS,
        help="Longest an application call may run (0 = no limit): the supervisor logs the "
        "request of an older one and kills and replaces its worker (the requests in flight "
        "in that worker are lost). A worker silent this long is killed too.",
    ),
    Setting(
        "preload",
        _PROCESS,
        "bool",
        False,
        python=False,
        help="Import the application once in the supervisor, before the workers are forked "
        "(less memory, shared start-up work; SIGHUP then restarts workers with the same "
        "code).",
    ),
    Setting(
        "reload",
        _PROCESS,
        "bool",
        False,
        python=False,
        help="For development: restart the workers when a .py file under the current "
        "directory changes (polled every second).",
    ),
    Setting(
        "threads",
        _PROCESS,
        "int",
        64,
        unit="threads",
        minimum=1,
        maximum=100000,
        help="Most application calls that may block at once (database, files, sleep); a "
        "request that finds them all busy waits for one.",
    ),
    Setting(
        "maximum_simultaneous_requests",
        _PROCESS,
        "int",
        0,
        unit="requests",
        minimum=0,
        maximum=MAX_INT,
        help="Most requests in progress at once across all connections (0 = unlimited); a "
        "further request waits for one to finish, up to inactivity_timeout, then gets 503.",
    ),
    Setting(
        "busy_poll",
        _PROCESS,
        "int",
        50,
        unit="microseconds",
        minimum=0,
        maximum=10000,
        help="How long the event loop polls for new events before it sleeps, when its last "
        "waits were at most this long and no application call runs on another thread (0 = "
        "never). On a lightly loaded core it saves the wake-up from idle (more requests per "
        "second and lower latency at few connections, for CPU time the core would spend "
        "idle); under load the loop rarely sleeps, and sparse traffic never polls. Set 0 "
        "where idle CPU is not free: tight container CPU quotas, autoscaling on CPU use.",
    ),
    # Request limits
    Setting(
        "max_request_header_size",
        _LIMITS,
        "int",
        256 * 1024,
        unit="bytes",
        minimum=1,
        maximum=MAX_INT,
        help="Largest request head (request line and headers); a larger one is answered "
        "with 431 and the connection is closed.",
    ),
    Setting(
        "max_request_body_size",
        _LIMITS,
        "int",
        1 << 30,
        unit="bytes",
        minimum=0,
        maximum=MAX_INT,
        help="Largest request body, checked against Content-Length before reading and while "
        "reading a chunked body; a larger one is answered with 413 and the connection is "
        "closed.",
    ),
    Setting(
        "url_length_limit",
        _LIMITS,
        "int",
        8192,
        unit="bytes",
        minimum=1,
        maximum=MAX_INT,
        help="Longest request target (the URL in the request line); a longer one is answered "
        "with 414 and the connection is closed.",
    ),
    Setting(
        "inbuf_overflow",
        _LIMITS,
        "int",
        512 * 1024,
        unit="bytes",
        minimum=0,
        maximum=MAX_INT,
        help="Request body bytes read ahead of the application; beyond them the body is "
        "read only as the application reads it, so a request holds at most this much memory. "
        "A chunked body is read ahead from the call on; a Content-Length body only once the "
        "application reads it through readline, read() of more than 1 MiB or iteration. "
        "Until then (beyond body_preread), and when it reads with read(n) (n up to 1 MiB), it "
        "waits in the kernel's buffer and goes from the socket straight into the bytes each "
        "read returns.",
    ),
    Setting(
        "body_preread",
        _LIMITS,
        "int",
        64 * 1024,
        unit="bytes",
        minimum=0,
        maximum=MAX_INT,
        help="Request body bytes the server reads before it calls the application (the "
        "whole body when it is smaller; at most inbuf_overflow), so that a client sending "
        "its body slowly holds a connection, not a thread. A client that stops sending for "
        "inactivity_timeout meanwhile gets 408. 0 calls the application as soon as the head "
        "is in, and the body streams to it as it arrives. Requests with Expect: "
        "100-continue are always passed on at the head.",
    ),
    # Timeouts
    Setting(
        "header_timeout",
        _TIMEOUTS,
        "float",
        10.0,
        unit="seconds",
        minimum=0.001,
        maximum=MAX_SECONDS,
        help="Time a client has to send a complete request head; then the connection is "
        "closed, after a 408 if some bytes of the request had arrived.",
    ),
    Setting(
        "inactivity_timeout",
        _TIMEOUTS,
        "float",
        60.0,
        unit="seconds",
        minimum=0.001,
        maximum=MAX_SECONDS,
        help="Time without a byte in either direction on a connection with a request in "
        "progress; then the connection is closed.",
    ),
    Setting(
        "keepalive_timeout",
        _TIMEOUTS,
        "float",
        75.0,
        unit="seconds",
        minimum=0.001,
        maximum=MAX_SECONDS,
        help="Time an idle keep-alive connection is kept open waiting for the next request; "
        "then it is closed. After a second of waiting, an idle connection is set aside "
        "as a 64-byte slot (no task, no buffers), so the default is nginx's, long enough "
        "for browsers and pooled clients.",
    ),
    Setting(
        "responseless_timeout",
        _TIMEOUTS,
        "float",
        0.0,
        unit="seconds",
        minimum=0.0,
        maximum=MAX_SECONDS,
        help="Time a request may wait for its response to start (0 = no limit); then it is "
        "answered with 503 and logged. Meant for deferred responses.",
    ),
    Setting(
        "graceful_timeout",
        _TIMEOUTS,
        "float",
        30.0,
        unit="seconds",
        minimum=0.0,
        maximum=MAX_SECONDS,
        help="On SIGINT or SIGTERM, time the requests in flight get to finish after the "
        "server stops accepting; then it exits.",
    ),
    # HTTP
    Setting(
        "keepalive",
        _HTTP,
        "bool",
        True,
        help="Keep connections open between requests; off closes each connection after "
        "one response.",
    ),
    Setting(
        "max_http_version",
        _HTTP,
        "choice",
        "HTTP/1.1",
        choices=("HTTP/1.1", "HTTP/1.0"),
        metavar="VERSION",
        help="Highest HTTP version the server answers with; HTTP/1.0 makes it behave as an "
        "HTTP/1.0 server (no chunked responses) for clients or apps that need one.",
    ),
    Setting(
        "url_scheme",
        _HTTP,
        "choice",
        "http",
        choices=("http", "https"),
        metavar="SCHEME",
        help="wsgi.url_scheme given to the application; https behind a proxy that terminates TLS.",
    ),
    Setting(
        "identity",
        _HTTP,
        "str",
        "unyoke",
        metavar="NAME",
        check=_check_header_value,
        help="Value of the Server response header.",
    ),
    Setting(
        "server_name",
        _HTTP,
        "str",
        None,
        metavar="NAME",
        none_means="the host of the first listener (localhost for a unix socket)",
        help="SERVER_NAME in the environ of every request.",
    ),
    Setting(
        "capitalize_response_headers",
        _HTTP,
        "bool",
        False,
        help="Rewrite the application's response header names as Foo-Bar.",
    ),
    Setting(
        "minimum_chunk_size",
        _HTTP,
        "int",
        0,
        unit="bytes",
        minimum=0,
        maximum=MAX_INT,
        help="Gather the pieces a streaming application yields until at least this many "
        "bytes are ready before writing them (0 = write each piece as it comes).",
    ),
    Setting(
        "expose_tracebacks",
        _HTTP,
        "bool",
        False,
        help="Put the traceback of an application error in the body of its 500 response "
        "(for development only: it shows code and data to the client).",
    ),
    # Application
    Setting(
        "environ",
        _APP,
        "mapping",
        {},
        metavar="KEY=VALUE",
        check=_check_environ,
        help="Extra key put in the environ of every request, repeatable.",
    ),
    Setting(
        "mounts",
        _APP,
        "mapping",
        {},
        metavar="PREFIX=MODULE:APP",
        check=_check_mounts,
        help="Serve another application under a path prefix, repeatable "
        "(--mount /api=pkg.api:app). A request goes to the application of the longest "
        "prefix it starts with at a '/' boundary, with SCRIPT_NAME the prefix and PATH_INFO "
        "the rest; other requests go to the main application. In Python the values may be "
        "applications or 'module:app' strings.",
    ),
    Setting(
        "on_connect",
        _APP,
        "callable",
        None,
        cli=False,
        help="Called with a dict (id, peer, local) when a client connection opens; peer and "
        "local are (host, port) tuples, or a path for a unix socket.",
    ),
    Setting(
        "on_disconnect",
        _APP,
        "callable",
        None,
        cli=False,
        help="Called with the same dict as on_connect when the connection closes.",
    ),
    Setting(
        "factory",
        _APP,
        "bool",
        False,
        python=False,
        help="APP is a factory: call APP() with no arguments to get the application.",
    ),
    # Logging
    Setting(
        "access_log",
        _LOGGING,
        "bool",
        True,
        help="Write one line per request to stderr, in log_format.",
    ),
    Setting(
        "log_format",
        _LOGGING,
        "str",
        '%(client_ip)s - - [%(date_time)s] "%(request_line)s" %(status_code)s '
        "%(body_length)s %(wall_seconds).6f",
        metavar="FORMAT",
        check=_check_log_format,
        help="Format of an access log line, a %-format string with the keys "
        + ", ".join(LOG_FORMAT_KEYS)
        + ".",
    ),
    Setting(
        "log_x_forwarded_for",
        _LOGGING,
        "bool",
        True,
        help="Add the X-Forwarded-For header of a request to client_ip in the access log.",
    ),
    Setting(
        "log_level",
        _LOGGING,
        "choice",
        "info",
        choices=("debug", "info", "warning", "error", "critical"),
        metavar="LEVEL",
        help="Level of unyoke's own log (the 'unyoke' logger): start-up, shutdown and "
        "application errors with their tracebacks.",
    ),
    # TLS
    Setting(
        "certfile",
        _TLS,
        "path",
        None,
        metavar="FILE",
        none_means="no TLS",
        help="PEM file with the server's certificate chain; needs keyfile.",
    ),
    Setting(
        "keyfile",
        _TLS,
        "path",
        None,
        metavar="FILE",
        none_means="no TLS",
        help="PEM file with the private key of certfile; needs certfile.",
    ),
    Setting(
        "ca_certs",
        _TLS,
        "path",
        None,
        metavar="FILE",
        none_means="no client certificates",
        help="PEM file of the certificate authorities of client certificates; with it, "
        "every TLS client must present a certificate they signed. Needs certfile.",
    ),
    Setting(
        "metrics",
        _LOGGING,
        "str",
        None,
        metavar="HOST:PORT",
        none_means="off",
        check=_check_metrics,
        help="Serve Prometheus metrics (text format, any path) on this TCP address from the "
        "supervisor, summed over the workers: requests by status class, in flight, open "
        "connections, request durations, bytes in and out, worker restarts. Reported by "
        "each worker every half second. Runs under a supervisor.",
    ),
    # Proxies and networks
    Setting(
        "origins",
        _PROXY,
        "networks",
        (),
        metavar="NETWORKS",
        check=_check_networks,
        help="Networks allowed to connect over TCP, comma-separated CIDRs "
        "(10.0.0.0/8,127.0.0.1); a connection from elsewhere is closed at once, nothing "
        "read. Empty: everyone.",
    ),
    Setting(
        "forwarded_allow_ips",
        _PROXY,
        "networks",
        (),
        metavar="NETWORKS",
        check=_check_networks,
        help="Proxies whose Forwarded, X-Forwarded-For and X-Forwarded-Proto headers are "
        "believed, comma-separated CIDRs: from them, REMOTE_ADDR and wsgi.url_scheme come "
        "from those headers. Empty: nobody's.",
    ),
    Setting(
        "proxy_protocol",
        _PROXY,
        "bool",
        False,
        help="Expect a PROXY protocol header (v1 or v2, as HAProxy, nginx and cloud load "
        "balancers send) at the start of every connection; the client address it carries "
        "becomes REMOTE_ADDR. A connection without one is closed.",
    ),
)

#: The settings by name.
BY_NAME: Dict[str, Setting] = {setting.name: setting for setting in SETTINGS}

#: The command-line flag of each ``mapping`` setting, singular: ``--environ``, ``--mount``.
_MAPPING_FLAGS = {"environ": "--environ", "mounts": "--mount"}


def _flag_of(setting: Setting) -> str:
    if setting.kind == "list":
        return setting.flag
    return _MAPPING_FLAGS.get(setting.name, setting.flag)


def flag_for(name: str) -> str:
    """The command-line flag of setting ``name`` (``--mount`` for ``mounts``)."""
    return _flag_of(BY_NAME[name])


def defaults() -> Dict[str, Any]:
    """Every setting with its default value (fresh lists and dicts)."""
    return {setting.name: _copy(setting.default) for setting in SETTINGS}


def _copy(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return value


def _type_name(value: Any) -> str:
    return type(value).__name__


def coerce(setting: Setting, value: Any) -> Any:
    """Check ``value`` for ``setting`` and return it in canonical form; raises ConfigError."""
    try:
        return _coerce(setting, value)
    except ValueError as error:
        raise ConfigError(setting.name, str(error)) from None


def _coerce(setting: Setting, value: Any) -> Any:
    if value is None:
        if setting.default is None:
            return None
        raise ValueError("must not be None")
    kind = setting.kind
    result: Any
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"expected True or False, got {value!r}")
        result = value
    elif kind == "int":
        for word, meaning in setting.words:
            if isinstance(value, str) and value.lower() == word:
                value = meaning
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {value!r} ({_type_name(value)})")
        result = _in_range(setting, value)
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number of seconds, got {value!r}")
        if math.isnan(value):
            raise ValueError("expected a number of seconds, got nan")
        result = _in_range(setting, float(value))
    elif kind == "str":
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r} ({_type_name(value)})")
        result = value
    elif kind == "choice":
        if isinstance(value, str):
            for choice in setting.choices:
                if value.lower() == choice.lower():
                    return choice
        raise ValueError(f"expected one of {', '.join(setting.choices)}, got {value!r}")
    elif kind == "path":
        if not isinstance(value, (str, os.PathLike)):
            raise ValueError(f"expected a file path, got {value!r}")
        result = os.fspath(value)
        if isinstance(result, bytes):
            result = os.fsdecode(result)
        if not result:
            raise ValueError("expected a file path, got an empty string")
    elif kind == "list":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
            raise ValueError(f"expected a list of strings, got {value!r}")
        result = list(items)
    elif kind == "networks":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
            raise ValueError(f"expected networks as a list of strings, got {value!r}")
        result = [item.strip() for item in items if item.strip()]
    elif kind == "callable":
        if not callable(value):
            raise ValueError(f"expected a callable, got {value!r}")
        result = value
    elif kind == "mapping":
        if not isinstance(value, Mapping):
            raise ValueError(f"expected a mapping, got {value!r} ({_type_name(value)})")
        result = dict(value)
    else:  # pragma: no cover - the table only uses KINDS
        raise AssertionError(f"unknown kind {kind!r}")
    if setting.check is not None:
        setting.check(result)
    return result


def _in_range(setting: Setting, value: Any) -> Any:
    unit = f" {setting.unit}" if setting.unit in ("bytes", "seconds") else ""
    if setting.minimum is not None and value < setting.minimum:
        raise ValueError(f"must be at least {setting.minimum:g}{unit}, got {value}")
    if setting.maximum is not None and value > setting.maximum:
        raise ValueError(f"must be at most {setting.maximum:g}{unit}, got {value}")
    return value


def unknown_setting(name: str, *, python: bool = True) -> UnknownSettingError:
    """The error for a keyword that is not a setting, with a suggestion where one fits."""
    if name in RENAMED:
        hint = f"; eventlet's {name!r} is called {RENAMED[name]!r} here"
    else:
        names = [s.name for s in SETTINGS if s.python or not python]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
    return UnknownSettingError(name, f"unknown setting{hint} (see docs/settings.md)")


def validate(settings: Mapping[str, Any], *, python: bool = True) -> Dict[str, Any]:
    """Check ``settings`` and return every setting, defaults filled in.

    ``python=True`` refuses settings that exist only on the command line (``factory``).
    Raises :class:`UnknownSettingError` for a name that is not a setting and
    :class:`ConfigError` for a bad value or a bad combination.
    """
    result = defaults()
    for name, value in settings.items():
        setting = BY_NAME.get(name)
        if setting is None or (python and not setting.python):
            raise unknown_setting(name, python=python)
        result[name] = coerce(setting, value)
    if (result["certfile"] is None) != (result["keyfile"] is None):
        given, missing = (
            ("certfile", "keyfile") if result["keyfile"] is None else ("keyfile", "certfile")
        )
        raise ConfigError(given, f"needs {missing} too: give both or neither")
    if result["ca_certs"] is not None and result["certfile"] is None:
        raise ConfigError("ca_certs", "needs certfile and keyfile: client certificates need TLS")
    for name in ("certfile", "keyfile", "ca_certs"):
        if result[name] is not None and not os.path.isfile(result[name]):
            raise ConfigError(name, f"no such file: {result[name]!r}")
    return result


def check_supported(settings: Mapping[str, Any]) -> None:
    """Refuse values that the table marks as not implemented yet."""
    for setting in SETTINGS:
        if setting.not_yet and settings.get(setting.name, setting.default) != setting.default:
            raise ConfigError(setting.name, setting.not_yet)


# The command line ---------------------------------------------------------------------------


def _argument_type(setting: Setting) -> Callable[[str], Any]:
    """Turn a flag's text into a value of the setting's kind (range checks come later)."""

    def parse_int(text: str) -> int:
        for word, meaning in setting.words:
            if text.lower() == word:
                return int(meaning)
        try:
            return int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a whole number{_of_unit(setting)}, got {text!r}"
            ) from None

    def parse_float(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}")
        return value

    def parse_text(text: str) -> str:
        return text

    if setting.kind == "int":
        return parse_int
    if setting.kind == "float":
        return parse_float
    return parse_text


def _of_unit(setting: Setting) -> str:
    return f" of {setting.unit}" if setting.unit else ""


def _escape(text: str) -> str:
    return text.replace("%", "%%")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting to ``parser``, grouped by section.

    A flag that is not given leaves no attribute on the namespace, so
    :func:`settings_from_arguments` knows which settings the user chose.
    """
    groups: Dict[str, Any] = {}
    for setting in SETTINGS:
        if not setting.cli:
            continue
        group = groups.get(setting.section)
        if group is None:
            group = groups[setting.section] = parser.add_argument_group(setting.section)
        help_text = _escape(f"{setting.help} [{setting.summary()}]")
        if setting.kind == "bool":
            group.add_argument(
                setting.flag,
                dest=setting.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        elif setting.kind in ("list", "networks", "mapping"):
            group.add_argument(
                _flag_of(setting),
                dest=setting.name,
                action="append",
                metavar=setting.cli_metavar,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            group.add_argument(
                setting.flag,
                dest=setting.name,
                type=_argument_type(setting),
                metavar=setting.cli_metavar,
                default=argparse.SUPPRESS,
                help=help_text,
            )


def _parse_pairs(setting: Setting, pairs: List[str]) -> Dict[str, str]:
    result: Dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(setting.name, f"expected {setting.cli_metavar}, got {pair!r}")
        result[key] = value
    return result


def settings_from_arguments(namespace: argparse.Namespace) -> Dict[str, Any]:
    """The settings the user gave on the command line (only those), as Python values."""
    given: Dict[str, Any] = {}
    for setting in SETTINGS:
        if not hasattr(namespace, setting.name):
            continue
        value = getattr(namespace, setting.name)
        if setting.kind == "mapping":
            value = _parse_pairs(setting, value)
        elif setting.kind == "networks":
            value = ",".join(value)  # --origins A,B --origins C: all of them
        given[setting.name] = value
    return given


# The docs -----------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown() -> str:
    """``docs/settings.md``: every setting by section, with flag, unit, default and effect."""
    lines = [
        "# Settings",
        "",
        "<!-- Generated from python/unyoke/config.py by "
        "`python -m unyoke.config --markdown > docs/settings.md`; do not edit by hand. -->",
        "",
        "Each setting is a keyword argument of `unyoke.serve()`, `unyoke.server()` and",
        "`unyoke.Server()`, and a command-line flag in kebab-case (`max_request_body_size` is",
        "`--max-request-body-size`). A boolean has both spellings (`--keepalive` /",
        "`--no-keepalive`); durations are seconds (fractions allowed) and sizes are bytes;",
        "`bind`, `environ` and `mounts` are repeated flags (`--bind`, `--environ KEY=VALUE`,",
        "`--mount PREFIX=MODULE:APP`); a list of networks is comma-separated CIDRs",
        "(`--origins 10.0.0.0/8,127.0.0.1`).",
        "",
    ]
    sections: List[str] = []
    for setting in SETTINGS:
        if setting.section not in sections:
            sections.append(setting.section)
    for section in sections:
        lines += [
            f"## {section}",
            "",
            "| setting | command line | unit | default | what it does |",
            "|---|---|---|---|---|",
        ]
        for s in SETTINGS:
            if s.section != section:
                continue
            name = f"`{s.name}`" if s.python else "(command line only)"
            if not s.cli:
                flag = "(Python only)"
            elif s.kind == "bool":
                flag = f"`{s.flag}` / `--no-{s.flag[2:]}`"
            else:
                flag = f"`{_flag_of(s)} {s.cli_metavar}`"
            unit = s.unit or (
                "one of " + ", ".join(f"`{c}`" for c in s.choices) if s.choices else ""
            )
            default = s.default_text()
            if s.default is not None and s.kind in ("str", "choice"):
                default = f"`{default}`"
            effect = s.help
            if s.not_yet:
                effect += (
                    f" **{s.not_yet[0].upper()}{s.not_yet[1:]}:** only the default is accepted."
                )
            lines.append(
                f"| {name} | {_cell(flag)} | {_cell(unit)} | {_cell(default)} | {_cell(effect)} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m unyoke.config --markdown`` prints docs/settings.md."""
    parser = argparse.ArgumentParser(prog="python -m unyoke.config", description=__doc__)
    parser.add_argument("--markdown", action="store_true", help="print docs/settings.md")
    arguments = parser.parse_args(argv)
    if not arguments.markdown:
        parser.print_help()
        return 2
    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
