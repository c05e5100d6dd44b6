"""Worker processes: a supervisor binds the sockets once and forks workers that share them.

Why fork: the listening sockets are inherited as they are (no fd passing), and ``--preload``
can share an imported application. The supervisor forks only from its main thread, with no
other thread running and before any engine exists in it: it is one ``selectors`` loop
(signals through the wake-up fd, the workers' report pipes, the metrics server). Without
``--preload`` the supervisor never imports the application, so a worker started after a
SIGHUP imports the code as it is on disk then.

Each worker runs one engine over the inherited sockets, and a reporter thread that writes a
JSON line to its pipe every :data:`REPORT_INTERVAL` seconds: the engine's ``stats()`` (for
metrics) and its longest application call in progress (for ``worker_timeout``). The same
thread stops the worker gracefully after ``max_requests``.

Signals to the supervisor: SIGTERM, SIGINT (graceful stop, exit 0), SIGHUP (new workers,
then the old ones drained as each new one is ready), SIGTTIN / SIGTTOU (one worker more or
less). A second SIGTERM or SIGINT ends the requests in flight at once.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from . import logs
from .addresses import parse_bind
from .errors import StartupError
from .importer import resolve_mounts
from .listeners import Listener, close_listeners
from .metrics import Totals, render
from .signals import CHECK_SIGNALS_EVERY, ShutdownOnSignal

log = logging.getLogger(logs.LOGGER_NAME)

#: Seconds between two reports of a worker to the supervisor.
REPORT_INTERVAL = 0.5
#: Exit status of a worker that could not load the application (or start its engine).
EXIT_CANNOT_START = 3
#: Back-off after a worker died before it was ready: 0.1 s, doubled each time, up to this.
MAX_BACKOFF = 10.0
#: Settings that only a supervisor can honour.
SUPERVISOR_SETTINGS = ("max_requests", "worker_timeout", "preload", "reload", "metrics")
#: Directories the ``reload`` watcher does not descend into.
_RELOAD_SKIP = {"__pycache__", "node_modules", "target", "build", "dist", "site-packages"}

_SUPERVISOR_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGCHLD,
)


def worker_count(values: Mapping[str, Any]) -> int:
    """The number of workers the settings ask for (``0``: one per core)."""
    workers = int(values["workers"])
    if workers == 0:
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            return os.cpu_count() or 1
    return workers


def needs_supervisor(values: Mapping[str, Any]) -> bool:
    """Whether the settings ask for a supervisor (otherwise one process serves, as before)."""
    if worker_count(values) != 1:
        return True
    return any(values.get(name) not in (None, False, 0, 0.0) for name in SUPERVISOR_SETTINGS)


@dataclass
class Worker:
    """What the supervisor knows of one worker process."""

    pid: int
    reader: int
    generation: int
    started: float
    buffer: bytes = b""
    ready: bool = False
    #: Told to stop (or stopping by itself): no longer counts as serving.
    stopping: bool = False
    kill_at: Optional[float] = None
    last_report: float = 0.0
    stats: Dict[str, Any] = field(default_factory=dict)
    #: The longest application call in progress: (seconds, request line), when reported.
    oldest_call: Optional[Tuple[float, str]] = None


class Supervisor:
    """Start, watch and replace worker processes over ``listeners``; see the module doc."""

    def __init__(
        self,
        load_app: Callable[[], Any],
        listeners: List[Listener],
        values: Dict[str, Any],
        *,
        preloaded: bool = False,
    ) -> None:
        self.load_app = load_app
        self.listeners = listeners
        self.values = values
        self.preloaded = preloaded
        self.target = worker_count(values)
        self.workers: Dict[int, Worker] = {}
        self.generation = 0
        self.restarts = 0
        self.totals = Totals()
        self.stopping = False
        self.stop_signals = 0
        self.failures = 0
        self.next_spawn = 0.0
        self.ever_ready = False
        self.exit_code = 0
        self._signals: List[int] = []
        self._selector = selectors.DefaultSelector()
        self._wake_reader: Optional[socket.socket] = None
        self._wake_writer: Optional[socket.socket] = None
        self._metrics_socket: Optional[socket.socket] = None
        self._reload_mtimes: Dict[str, float] = {}
        self._reload_next = 0.0

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until a graceful stop; returns the exit status (0, or 1 if no worker could
        ever start)."""
        previous = {sig: signal.getsignal(sig) for sig in _SUPERVISOR_SIGNALS}
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        self._wake_reader, self._wake_writer = reader, writer
        previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        for sig in _SUPERVISOR_SIGNALS:
            signal.signal(sig, self._on_signal)
        self._selector.register(reader, selectors.EVENT_READ, "signals")
        try:
            self._open_metrics()
            if self.values["reload"]:
                self._reload_mtimes = _python_files()
            log.info(
                "unyoke supervisor: %d worker%s (pid %d), %s",
                self.target,
                "" if self.target == 1 else "s",
                os.getpid(),
                "application preloaded" if self.preloaded else "each imports the application",
            )
            self._loop()
        finally:
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._selector.close()
            reader.close()
            writer.close()
            if self._metrics_socket is not None:
                self._metrics_socket.close()
            close_listeners(self.listeners)
        log.info("unyoke stopped")
        return self.exit_code

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)

    def _loop(self) -> None:
        while True:
            self._manage()
            if self.stopping and not self.workers:
                return
            for key, _ in self._selector.select(timeout=REPORT_INTERVAL / 2):
                if key.data == "signals":
                    try:
                        while key.fileobj.recv(256):  # type: ignore[union-attr]
                            pass
                    except OSError:
                        pass
                elif key.data == "metrics":
                    self._serve_metrics()
                elif isinstance(key.data, Worker):
                    self._read_reports(key.data)
            signals, self._signals = self._signals, []
            for signum in signals:
                self._handle_signal(signum)
            self._reap()

    def _handle_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stop_signals += 1
            name = signal.Signals(signum).name
            if self.stop_signals == 1:
                log.info(
                    "%s received: stopping %d worker(s), %gs for requests in flight",
                    name,
                    len(self.workers),
                    self.values["graceful_timeout"],
                )
                self._begin_stop()
            else:
                log.info("%s received again: stopping the workers now", name)
                for worker in self.workers.values():
                    _kill(worker.pid, signal.SIGTERM)
        elif self.stopping:
            return
        elif signum == signal.SIGHUP:
            self.generation += 1
            log.info(
                "SIGHUP received: starting %d new worker(s), then draining the old", self.target
            )
        elif signum == signal.SIGTTIN:
            self.target += 1
            log.info("SIGTTIN received: %d workers", self.target)
        elif signum == signal.SIGTTOU:
            if self.target > 1:
                self.target -= 1
            log.info("SIGTTOU received: %d worker(s)", self.target)

    def _begin_stop(self) -> None:
        self.stopping = True
        # The workers hold their own copies; closing ours means that once they stop
        # accepting, new connections are refused rather than left waiting in the backlog.
        close_listeners(self.listeners)
        grace = float(self.values["graceful_timeout"])
        for worker in self.workers.values():
            self._stop_worker(worker, grace)

    def _stop_worker(self, worker: Worker, grace: float) -> None:
        worker.stopping = True
        if worker.kill_at is None:
            # The engine ends the requests in flight itself after the grace; the supervisor
            # kills it only if it has not exited a little after.
            worker.kill_at = time.monotonic() + grace + 5.0
            _kill(worker.pid, signal.SIGTERM)

    # -- keeping the right workers ---------------------------------------------------------

    def _manage(self) -> None:
        now = time.monotonic()
        for worker in list(self.workers.values()):
            if worker.kill_at is not None and 0 <= worker.kill_at < now:
                log.warning("worker %d did not stop in time: killing it", worker.pid)
                _kill(worker.pid, signal.SIGKILL)
                worker.kill_at = now + 3600.0
            self._check_timeout(worker, now)
        if self.stopping:
            return
        if self.values["reload"] and now >= self._reload_next:
            self._reload_next = now + 1.0
            mtimes = _python_files()
            if mtimes != self._reload_mtimes:
                self._reload_mtimes = mtimes
                log.info("a .py file changed: reloading the workers")
                self.generation += 1
        current = [
            w for w in self.workers.values() if w.generation == self.generation and not w.stopping
        ]
        old = [
            w for w in self.workers.values() if w.generation != self.generation and not w.stopping
        ]
        # Too many current workers (SIGTTOU): stop the youngest, not-ready ones first.
        surplus = len(current) - self.target
        for worker in sorted(current, key=lambda w: (w.ready, -w.started))[: max(surplus, 0)]:
            self._stop_worker(worker, float(self.values["graceful_timeout"]))
        ready = sum(1 for w in current if w.ready)
        # Drain an old worker for each new one that is ready, never below the target.
        for worker in sorted(old, key=lambda w: w.started):
            if ready + len(old) <= self.target:
                break
            self._stop_worker(worker, float(self.values["graceful_timeout"]))
            old.remove(worker)
        while len(current) < self.target and now >= self.next_spawn:
            current.append(self._spawn())

    def _check_timeout(self, worker: Worker, now: float) -> None:
        limit = float(self.values["worker_timeout"])
        if not limit or not worker.ready or worker.pid not in self.workers:
            return
        what = None
        if worker.oldest_call is not None:
            seconds = worker.oldest_call[0] + (now - worker.last_report)
            if seconds > limit:
                what = f"{worker.oldest_call[1]} running for {seconds:.1f}s"
        elif now - worker.last_report > max(limit, 5 * REPORT_INTERVAL):
            what = f"no report for {now - worker.last_report:.1f}s"
        if what is None or worker.kill_at == -1.0:
            return
        log.error(
            "worker %d timed out (worker_timeout %gs): %s; killing it", worker.pid, limit, what
        )
        _kill(worker.pid, signal.SIGKILL)
        if not worker.stopping:
            self.restarts += 1
        worker.stopping = True
        worker.oldest_call = None
        worker.kill_at = -1.0  # killed: wait for it to be reaped

    def _spawn(self) -> Worker:
        reader, writer = os.pipe()
        jitter = int(self.values["max_requests_jitter"])
        max_requests = int(self.values["max_requests"])
        if max_requests:
            max_requests = max(1, max_requests + random.randint(-jitter, jitter))
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(reader)
                code = self._become_worker(writer, max_requests)
            except BaseException:
                traceback.print_exc()
            finally:
                _flush_and_exit(code)
        os.close(writer)
        os.set_blocking(reader, False)
        worker = Worker(
            pid=pid, reader=reader, generation=self.generation, started=time.monotonic()
        )
        worker.last_report = worker.started
        self.workers[pid] = worker
        self._selector.register(reader, selectors.EVENT_READ, worker)
        log.info("worker %d started", pid)
        return worker

    def _become_worker(self, writer: int, max_requests: int) -> int:
        # Drop what belongs to the supervisor: its signal handling, its descriptors.
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(sig, signal.SIG_IGN)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        self._selector.close()
        for other in self.workers.values():
            os.close(other.reader)
        for sock in (self._wake_reader, self._wake_writer, self._metrics_socket):
            if sock is not None:
                sock.close()
        values = dict(self.values)
        values["workers"] = worker_count(self.values)
        return run_worker(self.load_app, self.listeners, values, writer, max_requests)

    def _reap(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            self._read_reports(worker)
            self._selector.unregister(worker.reader)
            os.close(worker.reader)
            self.totals.worker_gone(worker.stats)
            self._worker_exited(worker, status)

    def _worker_exited(self, worker: Worker, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        how = f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        if worker.stopping:
            log.info("worker %d stopped (%s)", worker.pid, how)
            return
        if self.stopping:
            return
        if not worker.ready:
            if code == EXIT_CANNOT_START and not self.ever_ready:
                log.error("the first worker could not start (see above): stopping")
                self.exit_code = 1
                self._begin_stop()
                return
            self.failures += 1
            delay = min(0.1 * 2 ** (self.failures - 1), MAX_BACKOFF)
            self.next_spawn = time.monotonic() + delay
            log.error(
                "worker %d died while starting (%s); next start in %.1fs", worker.pid, how, delay
            )
        else:
            log.error("worker %d died (%s): replacing it", worker.pid, how)
        self.restarts += 1

    def _read_reports(self, worker: Worker) -> None:
        while True:
            try:
                data = os.read(worker.reader, 65536)
            except BlockingIOError:
                break
            except OSError:
                break
            if not data:
                break
            worker.buffer += data
        *lines, worker.buffer = worker.buffer.split(b"\n")
        for line in lines:
            try:
                report = json.loads(line)
            except ValueError:
                continue
            self._on_report(worker, report)

    def _on_report(self, worker: Worker, report: Dict[str, Any]) -> None:
        worker.last_report = time.monotonic()
        kind = report.get("kind")
        if kind == "ready":
            worker.ready = True
            self.ever_ready = True
            self.failures = 0
            log.info("worker %d ready", worker.pid)
        elif kind == "retire":
            if not worker.stopping:
                log.info(
                    "worker %d served %d requests (max_requests): replacing it",
                    worker.pid,
                    report.get("requests", 0),
                )
                worker.stopping = True
                worker.kill_at = time.monotonic() + float(self.values["graceful_timeout"]) + 5.0
                self.restarts += 1
        if "stats" in report:
            worker.stats = report["stats"]
        if "oldest_call" in report:
            call = report["oldest_call"]
            worker.oldest_call = (float(call[0]), str(call[1])) if call else None

    # -- metrics ---------------------------------------------------------------------------

    def _open_metrics(self) -> None:
        spec = self.values["metrics"]
        if not spec:
            return
        address = parse_bind(spec)
        try:
            sock = socket.create_server(
                (address.host, address.port),
                family=socket.AF_INET6 if ":" in address.host else socket.AF_INET,
            )
        except OSError as error:
            raise StartupError(f"cannot serve metrics on {spec}: {error.strerror}") from None
        sock.setblocking(False)
        self._metrics_socket = sock
        self._selector.register(sock, selectors.EVENT_READ, "metrics")
        log.info("metrics on http://%s/metrics", spec)

    def metrics_text(self) -> str:
        """The Prometheus text of now."""
        live = [w.stats for w in self.workers.values()]
        total = self.totals.sum(live)
        return render(total, self.totals.bounds, len(self.workers), self.restarts)

    def _serve_metrics(self) -> None:
        assert self._metrics_socket is not None
        try:
            conn, _ = self._metrics_socket.accept()
        except OSError:
            return
        # A scrape is small and quick: served in line, with a short timeout, so that a
        # stalled scraper delays the supervisor by at most a second.
        with conn:
            conn.settimeout(1.0)
            try:
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 8192:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                body = self.metrics_text().encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; "
                    b"charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                    % len(body)
                    + body
                )
            except OSError:
                return


# -- the worker side ---------------------------------------------------------------------------


def run_worker(
    load_app: Callable[[], Any],
    listeners: List[Listener],
    values: Dict[str, Any],
    writer: int,
    max_requests: int,
) -> int:
    """In a forked worker: load the app, serve the inherited sockets, report; the exit code."""
    from .serving import engine_class

    settings = dict(values)
    try:
        app = load_app()
        settings["mounts"] = resolve_mounts(values["mounts"])
        engine_type = engine_class()
    except StartupError as error:
        print(f"unyoke: error: {error}", file=sys.stderr)
        return EXIT_CANNOT_START
    except Exception:
        traceback.print_exc()
        print("unyoke: error: loading the application failed (traceback above)", file=sys.stderr)
        return EXIT_CANNOT_START
    logs.enable()
    if settings["server_name"] is None:
        settings["server_name"] = listeners[0].server_name
    signals = ShutdownOnSignal(values["graceful_timeout"])
    with signals:
        # A Ctrl-C in a terminal reaches every process of the group: the supervisor turns
        # it into one SIGTERM per worker, which the workers must not take as a second one.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            engine = engine_type(app, [listener.engine_tuple() for listener in listeners], settings)
        except (ValueError, OSError, RuntimeError) as error:
            print(f"unyoke: error: cannot start: {error}", file=sys.stderr)
            return EXIT_CANNOT_START
        for listener in listeners:
            listener.sock.close()  # the engine holds its duplicates
        signals.attach(engine.shutdown, engine.signal_arrived)
        reporter = _Reporter(engine, values, writer, max_requests)
        reporter.send({"kind": "ready"})
        reporter.start()
        engine.run(check_signals_every=CHECK_SIGNALS_EVERY)
        reporter.stop()
    # Stopped: a late SIGTERM from the supervisor must not turn a clean exit into a kill.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return 0


class _Reporter(threading.Thread):
    """Reports the worker's state to the supervisor; retires the worker after max_requests."""

    def __init__(self, engine: Any, values: Mapping[str, Any], writer: int, max_requests: int):
        super().__init__(name="unyoke reporter", daemon=True)
        self.engine = engine
        self.writer = writer
        self.max_requests = max_requests
        self.grace = float(values["graceful_timeout"])
        self.with_stats = bool(values["metrics"]) or bool(max_requests)
        self.with_calls = bool(values["worker_timeout"])
        self.retired = False
        self._stop_event = threading.Event()
        self._parent = os.getppid()

    def send(self, report: Dict[str, Any]) -> None:
        try:
            os.write(self.writer, json.dumps(report).encode() + b"\n")
        except OSError as error:
            if error.errno in (errno.EPIPE, errno.EBADF) and not self.retired:
                # The supervisor is gone: nobody would restart or stop this worker.
                self.retired = True
                self.engine.shutdown(self.grace)

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        while not self._stop_event.wait(REPORT_INTERVAL):
            report: Dict[str, Any] = {"kind": "report"}
            stats = None
            if self.with_stats:
                stats = self.engine.stats()
                report["stats"] = stats
            if self.with_calls:
                calls = self.engine.running_calls()
                report["oldest_call"] = list(calls[0]) if calls else None
            if os.getppid() != self._parent and not self.retired:
                log.warning("the supervisor is gone: worker %d stops", os.getpid())
                self.retired = True
                self.engine.shutdown(self.grace)
            self.send(report)
            if (
                stats is not None
                and self.max_requests
                and not self.retired
                and stats["requests_total"] >= self.max_requests
            ):
                self.retired = True
                self.send({"kind": "retire", "requests": stats["requests_total"]})
                self.engine.shutdown(self.grace)


# -- helpers ---------------------------------------------------------------------------------


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _flush_and_exit(code: int) -> None:
    for handler in logging.getLogger(logs.LOGGER_NAME).handlers + logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # exiting anyway
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # exiting anyway
            pass
    os._exit(code)


def _python_files(root: str = ".") -> Dict[str, float]:
    """Modification times of the .py files under ``root`` (for ``reload``)."""
    mtimes: Dict[str, float] = {}
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [
            d
            for d in subdirs
            if not d.startswith(".")
            and d not in _RELOAD_SKIP
            and not os.path.exists(os.path.join(directory, d, "pyvenv.cfg"))
        ]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                try:
                    mtimes[path] = os.stat(path).st_mtime
                except OSError:
                    pass
    return mtimes
