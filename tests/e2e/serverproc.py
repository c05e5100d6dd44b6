"""Run a real unyoke server process for a test: start, wait until it listens, stop.

The process is `python -m unyoke MODULE:APP --bind ... [args]`, run from the
repository root so that `tests.apps.<module>:<app>` imports. Its stdout and stderr
(the access log and the error log) go to a file the test can read. Test apps share
state with the test through a directory named by UNYOKE_TEST_STATE_DIR.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from tests.e2e import rawhttp

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


class ServerStartError(Exception):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def parse_bind(bind: str) -> rawhttp.Address:
    """The address a client connects to for a --bind value."""
    if bind.startswith("unix:"):
        return bind[len("unix:") :]
    host, _, port = bind.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return (host, int(port))


def unyoke_command(app: str, args: Sequence[str] = (), binds: Sequence[str] = ()) -> List[str]:
    cmd = [sys.executable, "-m", "unyoke", app]
    for bind in binds:
        cmd += ["--bind", bind]
    return cmd + list(args)


def subprocess_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO_ROOT), env.get("PYTHONPATH", "")] if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class ServerProcess:
    """A unyoke server process serving `app` (a "module:attribute" string)."""

    def __init__(
        self,
        app: str,
        args: Sequence[str] = (),
        *,
        workdir: Path,
        binds: Optional[Sequence[str]] = None,
        env: Optional[Dict[str, str]] = None,
        ready_timeout: float = READY_TIMEOUT,
    ):
        self.app = app
        self.args = list(args)
        self.workdir = Path(workdir)
        self.state_dir = self.workdir / "state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "server.log"
        self.requested_binds = list(binds) if binds else None
        self.extra_env = dict(env or {})
        self.ready_timeout = ready_timeout
        self.binds: List[str] = []
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.returncode: Optional[int] = None

    # -- life cycle ----------------------------------------------------------

    def start(self) -> ServerProcess:
        last_error: Optional[Exception] = None
        for _attempt in range(3):
            try:
                self._start_once()
                return self
            except ServerStartError as exc:
                # A free port picked by us may be taken by someone else in between.
                last_error = exc
                if self.requested_binds or "in use" not in str(exc).lower():
                    raise
        assert last_error is not None
        raise last_error

    def _start_once(self) -> None:
        self.binds = self.requested_binds or [f"127.0.0.1:{free_port()}"]
        env = subprocess_env({"UNYOKE_TEST_STATE_DIR": str(self.state_dir), **self.extra_env})
        self.command = unyoke_command(self.app, self.args, self.binds)
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(
                self.command,
                cwd=str(REPO_ROOT),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        deadline = time.monotonic() + self.ready_timeout
        pending = [parse_bind(b) for b in self.binds]
        while pending:
            if self.process.poll() is not None:
                self.returncode = self.process.returncode
                raise ServerStartError(
                    f"server exited with {self.process.returncode} before listening on "
                    f"{self.binds}; command {self.command}; log:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(
                    f"server not listening on {pending} after {self.ready_timeout}s; "
                    f"log:\n{self.log()}"
                )
            if _accepts(pending[0]):
                pending.pop(0)
            else:
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> Optional[int]:
        """Send `sig`, wait up to `timeout` s, then SIGKILL. Returns the exit code."""
        proc = self.process
        if proc is None:
            return self.returncode
        if proc.poll() is None:
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
                self.killed = True
        self.returncode = proc.returncode
        return self.returncode

    killed = False

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- addresses -------------------------------------------------------------

    @property
    def address(self) -> rawhttp.Address:
        return parse_bind(self.binds[0])

    @property
    def addresses(self) -> List[rawhttp.Address]:
        return [parse_bind(b) for b in self.binds]

    @property
    def host(self) -> str:
        address = self.address
        assert isinstance(address, tuple)
        return address[0]

    @property
    def port(self) -> int:
        address = self.address
        assert isinstance(address, tuple)
        return address[1]

    @property
    def url(self) -> str:
        host = self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    # -- talking to it -----------------------------------------------------------

    def connect(self, timeout: float = rawhttp.DEFAULT_TIMEOUT) -> rawhttp.RawConnection:
        return rawhttp.RawConnection(self.address, timeout=timeout)

    def request(self, raw: bytes, method: str = "GET", close_wait: float = 0.0) -> rawhttp.Exchange:
        """One request on a fresh connection. `closed` is only meaningful with a
        `close_wait` (seconds to wait for the server to close after the response)."""
        return rawhttp.request(self.address, raw, method=method, close_wait=close_wait)

    def get(
        self, target: str, headers: Optional[List[Tuple[str, str]]] = None
    ) -> rawhttp.HTTPResponse:
        """One GET on a fresh connection; returns the final response."""
        with self.connect() as conn:
            conn.send(rawhttp.build_request("GET", target, headers))
            return conn.read_final_response()[1]

    # -- what it logged, what the apps recorded -----------------------------------

    def log(self) -> str:
        try:
            return self.log_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if text in self.log():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def state_path(self, name: str) -> Path:
        return self.state_dir / name

    def state_lines(self, kind: str) -> List[str]:
        """Lines an app recorded with tests.apps.common.record(kind, ...)."""
        try:
            text = (self.state_dir / f"{kind}.log").read_text("utf-8")
        except FileNotFoundError:
            return []
        return [line for line in text.split("\n") if line]

    def wait_for_state(self, kind: str, line: str, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if line in self.state_lines(kind):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def app_calls(self) -> int:
        """How many times the app (one that records its calls) has been called."""
        return len(self.state_lines("calls"))

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS line")

    def wakeups(self) -> int:
        """Voluntary context switches of all the server process's threads so far: each is
        a thread going to sleep, so this counts how often they were woken."""
        total = 0
        for task in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{task}/status") as status:
                    for line in status:
                        if line.startswith("voluntary_ctxt_switches:"):
                            total += int(line.split()[1])
            except FileNotFoundError:  # the thread exited meanwhile
                pass
        return total

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process (all its threads) so far."""
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _accepts(address: rawhttp.Address) -> bool:
    try:
        if isinstance(address, str):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.connect(address)
        else:
            with socket.create_connection(address, timeout=1.0):
                pass
        return True
    except OSError:
        return False


def panic_lines(log: str) -> List[str]:
    """Lines of a server log that show a Rust panic or a fatal runtime error."""
    markers = ("panicked at", "RUST_BACKTRACE", "fatal runtime error", "Segmentation fault")
    return [line for line in log.splitlines() if any(m in line for m in markers)]


PathLike = Union[str, Path]
