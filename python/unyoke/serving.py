"""The Python API: :func:`serve`, :func:`server` and :class:`Server`, over the Rust engine."""

from __future__ import annotations

import atexit
import contextlib
import logging
import socket
import threading
import weakref
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Type

from . import config, logs
from .errors import ConfigError, StartupError
from .importer import resolve_mounts
from .listeners import (
    Listener,
    close_listeners,
    listener_from_socket,
    open_listeners,
    release_sockets,
)
from .signals import CHECK_SIGNALS_EVERY, ShutdownOnSignal

if TYPE_CHECKING:
    from ._unyoke import Engine

#: A WSGI application: ``app(environ, start_response)`` returning an iterable of bytes.
WSGIApp = Callable[..., Any]

log = logging.getLogger(logs.LOGGER_NAME)


def engine_class() -> Type[Engine]:
    """The engine class, imported on first use so the rest of the package works without it."""
    try:
        from ._unyoke import Engine
    except ImportError as error:
        raise StartupError(
            "the unyoke engine (the Rust extension unyoke._unyoke) is not built or not "
            f"importable: run `make install` or `pip install .` ({error})"
        ) from None
    return Engine


def _check_app(app: Any) -> None:
    if not callable(app):
        raise TypeError(f"app must be a WSGI application (a callable), got {app!r}")


def _settings(given: Dict[str, Any]) -> Dict[str, Any]:
    values = config.validate(given)
    config.check_supported(values)
    return values


def _start_engine(app: WSGIApp, listeners: List[Listener], values: Dict[str, Any]) -> Engine:
    """Make the engine over ``listeners``; the sockets unyoke made are closed (the engine
    holds duplicates), the unix socket files stay until :func:`close_listeners`."""
    settings = dict(values)
    if settings["server_name"] is None:
        settings["server_name"] = listeners[0].server_name
    try:
        settings["mounts"] = resolve_mounts(values["mounts"])
        engine = engine_class()(app, [listener.engine_tuple() for listener in listeners], settings)
    except BaseException:
        close_listeners(listeners)
        raise
    release_sockets(listeners)
    return engine


def _announce(listeners: List[Listener], values: Dict[str, Any]) -> None:
    tls = values["certfile"] is not None
    where = ", ".join(listener.url(tls) for listener in listeners)
    log.info("unyoke listening on %s (threads=%d)", where, values["threads"])


def serve_listeners(app: WSGIApp, listeners: List[Listener], values: Dict[str, Any]) -> None:
    """Run the engine over ``listeners`` in the foreground (as :func:`serve` does).

    On the main thread, SIGINT and SIGTERM shut it down gracefully (see signals.py); they
    are handled from before the engine is made, so none is lost while it starts.
    """
    on_main_thread = threading.current_thread() is threading.main_thread()
    signals = ShutdownOnSignal(values["graceful_timeout"])
    try:
        with signals if on_main_thread else contextlib.nullcontext(signals):
            engine = _start_engine(app, listeners, values)
            signals.attach(engine.shutdown, engine.signal_arrived)
            _announce(listeners, values)
            engine.run(check_signals_every=CHECK_SIGNALS_EVERY)
    finally:
        close_listeners(listeners)
    log.info("unyoke stopped")


def serve(
    app: WSGIApp,
    host: Optional[str] = None,
    port: Optional[int] = None,
    **settings: Any,
) -> None:
    """Serve ``app`` until SIGINT or SIGTERM (or until the engine is shut down), then return.

    ``host`` and ``port`` default to the settings table's (127.0.0.1:8000); ``bind`` replaces
    both. Every other keyword is a setting of docs/settings.md. Called from the main thread,
    it handles SIGINT and SIGTERM itself: stop accepting, give requests in flight
    ``graceful_timeout`` seconds, return. If logging is not configured, unyoke's log goes to
    stderr. Raises :class:`ConfigError` for a bad setting and :class:`StartupError` when an
    address cannot be bound or the engine is missing.
    """
    _check_app(app)
    if host is not None:
        settings["host"] = host
    if port is not None:
        settings["port"] = port
    values = _settings(settings)
    logs.configure(values["log_level"])
    _serve_any(app, open_listeners(values), values)


def _serve_any(app: WSGIApp, listeners: List[Listener], values: Dict[str, Any]) -> None:
    """One process, or worker processes forked with ``app`` already loaded."""
    from . import supervisor

    if not supervisor.needs_supervisor(values):
        serve_listeners(app, listeners, values)
        return

    def load_app() -> WSGIApp:
        return app

    code = supervisor.Supervisor(load_app, listeners, values, preloaded=True).run()
    if code:
        raise StartupError("no worker could start (see the log)")


def server(sock: socket.socket, app: WSGIApp, **settings: Any) -> None:
    """Serve ``app`` on ``sock``, a socket already bound and listening (as eventlet.wsgi does).

    Blocks like :func:`serve`; ``sock`` is closed when the server exits. ``host``, ``port``
    and ``bind`` do not apply.
    """
    _check_app(app)
    for name in ("host", "port", "bind"):
        if name in settings:
            raise ConfigError(name, "does not apply to server(), which serves on the socket given")
    values = _settings(settings)
    logs.configure(values["log_level"])
    listener = listener_from_socket(sock)
    try:
        _serve_any(app, [listener], values)
    finally:
        sock.close()


_running: weakref.WeakSet[Server] = weakref.WeakSet()


@atexit.register
def _stop_running_servers() -> None:
    for running in list(_running):
        with contextlib.suppress(Exception):  # exiting anyway: an engine error changes nothing
            running.stop(grace=0.0)


class Server:
    """A server running in a background thread, for tests, notebooks and embedding.

    ::

        with unyoke.Server(app, port=0) as running:
            requests.get(running.url)

    ``start()`` binds (raising :class:`StartupError` at once if it cannot) and returns with
    the server listening; ``addresses``, ``port`` and ``url`` then tell where. ``stop()``
    shuts it down and waits for the engine to finish.
    """

    def __init__(self, app: WSGIApp, **settings: Any) -> None:
        _check_app(app)
        self.app = app
        #: Every setting, validated, defaults filled in.
        self.settings = _settings(settings)
        from . import supervisor

        if supervisor.needs_supervisor(self.settings):
            raise ConfigError(
                "workers",
                "Server() runs in a thread of this process; worker processes and their "
                "options (max_requests, worker_timeout, metrics) need serve() or the unyoke "
                "command",
            )
        #: Where it listens once started: ``["127.0.0.1:8000", "unix:/run/app.sock"]``.
        self.addresses: List[str] = []
        #: The TCP port of the first TCP listener (the real one when port 0 was asked for).
        self.port: Optional[int] = None
        self._listeners: List[Listener] = []
        self._engine: Optional[Engine] = None
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the first TCP listener (``unix:/path`` if there is none)."""
        if not self._listeners:
            raise RuntimeError("the server is not started")
        tls = self.settings["certfile"] is not None
        for listener in self._listeners:
            if listener.kind == "tcp":
                return listener.url(tls)
        return self._listeners[0].url(tls)

    @property
    def running(self) -> bool:
        """Whether the engine is serving."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Server:
        """Bind, start the engine in a background thread, and return once listening."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("the server is already started")
            logs.configure(self.settings["log_level"], add_handler=False)
            self.settings["mounts"] = resolve_mounts(self.settings["mounts"])
            listeners = open_listeners(self.settings)
            self._engine = _start_engine(self.app, listeners, self.settings)
            self._listeners = listeners
            self.addresses = [listener.display for listener in listeners]
            ports = [listener.port for listener in listeners if listener.kind == "tcp"]
            self.port = ports[0] if ports else None
            self._thread = threading.Thread(
                target=self._run, name=f"unyoke {self.addresses[0]}", daemon=True
            )
            self._thread.start()
            _running.add(self)
        _announce(listeners, self.settings)
        return self

    def _run(self) -> None:
        assert self._engine is not None
        try:
            # Off the main thread no signal handler runs here: the checks are idle wake-ups.
            self._engine.run(check_signals_every=CHECK_SIGNALS_EVERY)
        except BaseException as error:  # handed to the thread that calls stop()
            self._error = error

    def stats(self) -> Dict[str, int]:
        """The engine's counters: open_connections, requests_in_flight, requests_total, ..."""
        if self._engine is None:
            raise RuntimeError("the server is not started")
        return self._engine.stats()

    def stop(self, grace: Optional[float] = None) -> None:
        """Stop accepting, give requests in flight ``grace`` seconds (default
        ``graceful_timeout``), wait for the engine to finish, remove unix socket files.

        Re-raises an exception the engine ended with. Stopping a stopped server does nothing.
        """
        with self._lock:
            engine, thread = self._engine, self._thread
            if engine is None or thread is None:
                return
            seconds = self.settings["graceful_timeout"] if grace is None else grace
            engine.shutdown(seconds)
            thread.join()
            self._engine = self._thread = None
            close_listeners(self._listeners)
            _running.discard(self)
            error, self._error = self._error, None
        if error is not None:
            raise error

    def __enter__(self) -> Server:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.stop()
