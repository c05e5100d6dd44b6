"""SIGINT and SIGTERM: stop the engine gracefully, as soon as the signal arrives.

While the engine runs, the main thread sleeps in it, and Python signal handlers run only
when it wakes to check for them. CPython's C-level handler writes each signal's number to
the wake-up file descriptor (:func:`signal.set_wakeup_fd`) as the signal arrives; a thread
watches it, calls the thread-safe ``engine.shutdown()`` itself for SIGINT and SIGTERM (to
stop accepting at once), and for any signal has the engine wake the main thread to run
the handlers (``engine.signal_arrived()``). So the main thread needs no frequent check
(an idle server's main thread woke 20 times a second for one every 50 ms): it checks
every :data:`CHECK_SIGNALS_EVERY` only in case a wake-up is missed. Whichever of the
handler and the watcher sees a shutdown signal first acts on it; the other then has
nothing to do.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from types import FrameType, TracebackType
from typing import Any, Callable, Dict, Optional, Type, Union

from .logs import LOGGER_NAME

log = logging.getLogger(LOGGER_NAME)

#: The signals that stop the server.
SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: How often the engine checks for pending signal handlers besides when woken for one
#: (seconds): a fallback, e.g. for a signal whose wake-up byte did not fit in the buffer.
CHECK_SIGNALS_EVERY = 1.0

_Handler = Union[Callable[[int, Optional[FrameType]], Any], int, None]
_STOP_WATCHING = b"\0"  # no signal has number 0


class ShutdownOnSignal:
    """While entered (on the main thread), SIGINT and SIGTERM shut the engine down.

    The first signal stops accepting and gives requests in flight ``grace`` seconds; a second
    one ends them at once. The engine is attached with :meth:`attach` once it exists; a
    signal that came before is acted on then. On exit, the previous handlers and wake-up fd
    are restored.
    """

    def __init__(self, grace: float) -> None:
        self._grace = grace
        self._shutdown: Optional[Callable[[float], None]] = None
        self._signal_arrived: Optional[Callable[[], None]] = None
        self._lock = threading.Lock()
        # How many shutdown signals the handler and the watcher have each seen, and how
        # many were acted on (the most either has seen, as each signal reaches both).
        self._seen = {"handler": 0, "watcher": 0}
        self._acted = 0
        self._pending: list[str] = []
        self._previous_handlers: Dict[int, _Handler] = {}
        self._previous_wakeup_fd = -1
        self._reader: Optional[socket.socket] = None
        self._writer: Optional[socket.socket] = None
        self._watcher: Optional[threading.Thread] = None

    @property
    def received(self) -> int:
        """How many shutdown signals were acted on."""
        return self._acted

    def attach(
        self,
        shutdown: Callable[[float], None],
        signal_arrived: Optional[Callable[[], None]] = None,
    ) -> None:
        """Give the engine's ``shutdown`` (called now if a signal came already) and its
        ``signal_arrived`` (called for every signal from then on)."""
        with self._lock:
            self._shutdown = shutdown
            self._signal_arrived = signal_arrived
            pending, self._pending = self._pending, []
        for index, name in enumerate(pending):
            self._stop(name, first=index == 0)

    def __enter__(self) -> ShutdownOnSignal:
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        self._reader, self._writer = reader, writer
        self._watcher = threading.Thread(target=self._watch, name="unyoke signals", daemon=True)
        self._watcher.start()
        for sig in SHUTDOWN_SIGNALS:
            self._previous_handlers[sig] = signal.signal(sig, self._on_signal)
        self._previous_wakeup_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        assert self._reader is not None and self._writer is not None
        try:
            self._writer.send(_STOP_WATCHING)
        except OSError:
            pass  # the buffer is full of signal numbers: the watcher is awake anyway
        if self._watcher is not None:
            self._watcher.join()
        self._reader.close()
        self._writer.close()

    def _watch(self) -> None:
        assert self._reader is not None
        while True:
            try:
                data = self._reader.recv(64)
            except OSError:
                return
            for signum in data:
                if signum in SHUTDOWN_SIGNALS:
                    self._saw_by_watcher(signum)
            if not data or _STOP_WATCHING[0] in data:
                return
            with self._lock:
                signal_arrived = self._signal_arrived
            if signal_arrived is not None:
                signal_arrived()

    def _saw_by_watcher(self, signum: int) -> None:
        self._saw("watcher", signum)

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        self._saw("handler", signum)

    def _saw(self, who: str, signum: int) -> None:
        with self._lock:
            self._seen[who] += 1
            if self._seen[who] <= self._acted:
                return  # the other path acted on this signal already
            self._acted += 1
            first = self._acted == 1
            name = signal.Signals(signum).name
            if self._shutdown is None:
                self._pending.append(name)
                return
        self._stop(name, first)

    def _stop(self, name: str, first: bool) -> None:
        assert self._shutdown is not None
        if first:
            log.info(
                "%s received: shutting down, %gs for requests in flight (again to stop now)",
                name,
                self._grace,
            )
            self._shutdown(self._grace)
        else:
            log.info("%s received again: stopping now", name)
            self._shutdown(0.0)
