"""A stand-in for the Rust engine, so the Python face is tested without it."""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, List, Optional, Tuple


class FakeEngine:
    """Stands in for unyoke._unyoke.Engine: keeps the listeners (dup'd, as the engine does)
    open until shut down, records what it was given, serves nothing."""

    instances: List[FakeEngine] = []
    #: Called (with the engine) when run() starts, from the thread that runs it.
    on_run: Optional[Callable[[FakeEngine], None]] = None
    #: Raised by __init__ or run(), when set.
    init_error: Optional[BaseException] = None
    run_error: Optional[BaseException] = None
    #: How many shutdown() calls it takes to stop.
    stop_after = 1

    def __init__(
        self, app: Callable[..., Any], listeners: List[Tuple[int, str, str]], settings: Any
    ) -> None:
        if FakeEngine.init_error is not None:
            raise FakeEngine.init_error
        self.app = app
        self.listeners = listeners
        self.fds = [os.dup(fd) for fd, _, _ in listeners]
        self.settings = settings
        self.graces: List[float] = []
        self.shutdown_threads: List[str] = []
        self.stopped = threading.Event()
        self.ran = False
        self.check_signals_every: Optional[float] = None
        self.signals_arrived = 0
        FakeEngine.instances.append(self)

    def run(self, check_signals_every: float) -> None:
        self.ran = True
        self.check_signals_every = check_signals_every
        try:
            if FakeEngine.on_run is not None:
                FakeEngine.on_run(self)
            if FakeEngine.run_error is not None:
                raise FakeEngine.run_error
            while not self.stopped.wait(0.01):
                pass  # like the engine, let the main thread's signal handlers run meanwhile
        finally:
            for fd in self.fds:
                os.close(fd)

    def shutdown(self, grace: float = 30.0) -> None:
        self.graces.append(grace)
        self.shutdown_threads.append(threading.current_thread().name)
        if len(self.graces) >= FakeEngine.stop_after:
            self.stopped.set()

    def signal_arrived(self) -> None:
        self.signals_arrived += 1

    def stats(self) -> dict[str, int]:
        return {"open_connections": 0, "requests_in_flight": 0, "requests_total": 0}


def send_signal_soon(signum: int, times: int = 1) -> Callable[[FakeEngine], None]:
    """An on_run hook that sends this process ``signum`` from another thread."""

    def hook(engine: FakeEngine) -> None:
        def send() -> None:
            for _ in range(times):
                os.kill(os.getpid(), signum)
                time.sleep(0.2)  # a signal sent again before its handler ran is delivered once

        threading.Timer(0.05, send).start()

    return hook


def stop_at_once(engine: FakeEngine) -> None:
    """An on_run hook that shuts the engine down as soon as it runs."""
    engine.shutdown(1.5)
