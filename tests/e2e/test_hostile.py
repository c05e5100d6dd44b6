"""Slow and hostile clients at CI scale: the server keeps answering a normal client.

Each attack runs for a few seconds against its own server process while a probe client
sends GET /hello on fresh connections; the probe's p99 latency during the attack is
printed next to the quiet figure (run with -s to see it) and only a generous bound is
asserted (tests do not assert timings finely; the full-scale ratios are measured by
scripts/hostile.py and recorded in docs/security.md). The server's RSS must stay bounded.

Also here: EMFILE on accept does not spin a core, a pipelined request after a rejected
one is never processed, and a CI-scale mixed soak with a bound on RSS growth
(scripts/soak.py runs the
full one).

The attack functions take their scale as arguments so scripts/hostile.py reuses them.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import pytest

from tests.e2e.rawhttp import build_request
from tests.e2e.serverproc import ServerProcess

pytestmark = pytest.mark.timeout(120)

APP = "tests.apps.misbehaving:app"
PROBE_INTERVAL = 0.02


# -- measuring -------------------------------------------------------------------------------


def one_get(address: Tuple[str, int], target: str = "/hello", timeout: float = 10.0) -> float:
    """Latency of one GET on a fresh connection (raises if it is not a 200)."""
    start = time.monotonic()
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(build_request("GET", target, [("Connection", "close")]))
        data = b""
        while True:
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
    if not data.startswith(b"HTTP/1.1 200 "):
        raise AssertionError(f"probe got {data[:200]!r}")
    return time.monotonic() - start


@dataclass
class Probe:
    """A normal client: GET /hello every PROBE_INTERVAL, latencies recorded."""

    address: Tuple[str, int]
    latencies: List[float] = field(default_factory=list)
    failures: List[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: Optional[threading.Thread] = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.latencies.append(one_get(self.address))
            except Exception as exc:  # recorded, asserted by the test
                self.failures.append(repr(exc))
            self._stop.wait(PROBE_INTERVAL)

    def __enter__(self) -> Probe:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(30)

    def p99(self) -> float:
        if len(self.latencies) < 2:
            return max(self.latencies, default=float("nan"))
        return statistics.quantiles(self.latencies, n=100)[98]


def quiet_p99(address: Tuple[str, int], seconds: float) -> float:
    with Probe(address) as probe:
        time.sleep(seconds)
    assert not probe.failures, probe.failures[:3]
    return probe.p99()


# -- attacks ------------------------------------------------------------------------------------


@dataclass
class AttackResult:
    name: str
    clients: int
    seconds: float
    quiet_p99: float
    attack_p99: float
    probes: int
    probe_failures: List[str]
    rss_before_kib: int
    rss_peak_kib: int
    rss_after_kib: int
    server_cpu_seconds: float
    closed_by_server: int

    def report(self) -> str:
        ratio = self.attack_p99 / self.quiet_p99 if self.quiet_p99 else float("nan")
        return (
            f"{self.name}: {self.clients} clients for {self.seconds:.0f}s: probe p99 "
            f"{self.attack_p99 * 1000:.1f} ms (quiet {self.quiet_p99 * 1000:.1f} ms, "
            f"x{ratio:.1f}) over {self.probes} probes, {len(self.probe_failures)} failed; "
            f"server RSS {self.rss_before_kib // 1024} -> peak {self.rss_peak_kib // 1024} "
            f"-> {self.rss_after_kib // 1024} MiB; server CPU {self.server_cpu_seconds:.2f}s; "
            f"attack connections closed by the server: {self.closed_by_server}"
        )


def _connect_many(
    address: Tuple[str, int], n: int, rcvbuf: Optional[int] = None
) -> List[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(10)
        s.connect(address)
        s.setblocking(False)
        socks.append(s)
    return socks


def _trickle(
    address: Tuple[str, int],
    n: int,
    seconds: float,
    prefix: bytes,
    drip: bytes,
    stop: threading.Event,
) -> int:
    """n connections send `prefix`, then one byte of `drip` per second each (reconnecting
    when the server closes one). Returns how many the server closed."""
    closed = 0
    socks = _connect_many(address, n)
    for s in socks:
        s.send(prefix)
    position = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not stop.is_set():
        byte = drip[position % len(drip) : position % len(drip) + 1]
        position += 1
        for i, s in enumerate(socks):
            try:
                s.send(byte)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                closed += 1
                s.close()
                try:
                    socks[i] = _connect_many(address, 1)[0]
                    socks[i].send(prefix)
                except OSError:
                    pass
        stop.wait(1.0)
    for s in socks:
        s.close()
    return closed


def slowloris(address: Tuple[str, int], n: int, seconds: float, stop: threading.Event) -> int:
    """One header byte per second per client, the head never finished."""
    return _trickle(
        address, n, seconds, b"GET /hello HTTP/1.1\r\nHost: x\r\n", b"X-Slow: abcdefgh\r\n", stop
    )


def slow_post(address: Tuple[str, int], n: int, seconds: float, stop: threading.Event) -> int:
    """A complete head, then one body byte per second to an app that reads the body."""
    head = b"POST /read_slowly HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    return _trickle(address, n, seconds, head, b"a", stop)


def never_read(address: Tuple[str, int], n: int, seconds: float, stop: threading.Event) -> int:
    """Ask for 16 MiB each with a small receive buffer, never read."""
    socks = _connect_many(address, n, rcvbuf=4096)
    for s in socks:
        s.send(build_request("GET", "/big?size=16777216"))
    stop.wait(seconds)
    for s in socks:
        s.close()
    return 0


def flood(address: Tuple[str, int], n: int, seconds: float, stop: threading.Event) -> int:
    """n idle connections (nothing sent), more than --max-size allows; each closed by the
    server is replaced at once."""
    closed = 0
    socks = _connect_many(address, n)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not stop.is_set():
        for i, s in enumerate(socks):
            try:
                if s.recv(1) == b"":
                    raise ConnectionResetError
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                pass
            closed += 1
            s.close()
            try:
                socks[i] = _connect_many(address, 1)[0]
            except OSError:
                pass
        stop.wait(0.2)
    for s in socks:
        s.close()
    return closed


def run_attack(
    server: ServerProcess,
    name: str,
    attack: Callable[[Tuple[str, int], int, float, threading.Event], int],
    clients: int,
    seconds: float,
    quiet_seconds: float = 2.0,
) -> AttackResult:
    address = server.address
    assert isinstance(address, tuple)
    quiet = quiet_p99(address, quiet_seconds)
    rss_before = server.rss_kib()
    cpu_before = server.cpu_seconds()
    stop = threading.Event()
    closed: List[int] = []
    attacker = threading.Thread(
        target=lambda: closed.append(attack(address, clients, seconds, stop)), daemon=True
    )
    attacker.start()
    time.sleep(min(2.0, seconds / 4))  # let the attack build up before probing
    peak = rss_before
    with Probe(address) as probe:
        while attacker.is_alive():
            peak = max(peak, server.rss_kib())
            attacker.join(0.5)
    stop.set()
    cpu = server.cpu_seconds() - cpu_before
    time.sleep(0.5)
    result = AttackResult(
        name,
        clients,
        seconds,
        quiet,
        probe.p99(),
        len(probe.latencies),
        probe.failures,
        rss_before,
        peak,
        server.rss_kib(),
        cpu,
        closed[0] if closed else -1,
    )
    print("\n" + result.report())
    return result


def check(result: AttackResult, p99_bound: float = 1.0, rss_growth_mib: int = 256) -> None:
    assert not result.probe_failures, result.probe_failures[:3]
    assert result.probes >= 10, result.report()
    assert result.attack_p99 < p99_bound, result.report()
    assert (result.rss_peak_kib - result.rss_before_kib) // 1024 < rss_growth_mib, result.report()


# -- the tests ------------------------------------------------------------------------------------


@pytest.fixture
def server(servers) -> ServerProcess:
    return servers.start(APP, "--no-access-log")


def test_slowloris(server):
    check(run_attack(server, "slowloris", slowloris, clients=200, seconds=12))


def test_slow_post(servers):
    """More slow-POST clients than threads: bodies are read before the app is called, so
    none of them holds a thread (with the body streamed at the head, the probe starves)."""
    server = servers.start(APP, "--no-access-log", "--threads", "8")
    check(run_attack(server, "slow POST", slow_post, clients=50, seconds=10))


def test_clients_that_never_read(server):
    result = run_attack(server, "never read", never_read, clients=50, seconds=8)
    check(result)


def test_flood_past_max_size(servers):
    server = servers.start(APP, "--no-access-log", "--max-size", "100", "--header-timeout", "1")
    result = run_attack(server, "flood past max_size=100", flood, clients=400, seconds=12)
    # Not a 1 s bound: past max_size a normal client waits in the listen backlog behind
    # the flood's queued connections, and slots free only as header_timeout (1 s here)
    # closes idle ones, so it waits about (flood / max_size) x header_timeout = 3-4 s.
    assert not result.probe_failures, result.probe_failures[:3]
    assert result.probes >= 2, result.report()
    assert result.attack_p99 < 400 / 100 * 1 + 2.0, result.report()
    assert (result.rss_peak_kib - result.rss_before_kib) // 1024 < 256, result.report()


def test_emfile_on_accept_does_not_spin(servers):
    server = servers.start(APP, "--no-access-log")
    address = server.address
    assert isinstance(address, tuple)
    one_get(address)
    limit = 64
    import subprocess

    subprocess.run(["prlimit", f"--pid={server.pid}", f"--nofile={limit}:{limit}"], check=True)
    socks = _connect_many(address, limit * 2)  # more than the server may hold open
    try:
        time.sleep(1.0)
        cpu_before = server.cpu_seconds()
        time.sleep(4.0)
        spent = server.cpu_seconds() - cpu_before
        print(
            f"\nEMFILE: {limit * 2} connections over a limit of {limit} fds: "
            f"server CPU {spent:.3f}s in 4s"
        )
        assert spent < 0.5, f"server spent {spent:.2f}s CPU in 4s while out of descriptors"
    finally:
        for s in socks:
            s.close()
    time.sleep(0.5)
    deadline = time.monotonic() + 15
    while True:  # serves again once descriptors are free
        try:
            one_get(address, timeout=5)
            break
        except (OSError, AssertionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_pipelined_request_after_a_rejected_one_is_never_processed(servers):
    server = servers.start("tests.apps.behaviour:app")
    with server.connect() as conn:
        conn.send(
            b"GET /first HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        _, response = conn.read_final_response()
        assert response.status == 400
        assert conn.wait_closed(5.0)
    time.sleep(0.3)
    assert "smuggled" not in server.log()
    assert server.app_calls() == 0


# -- leaks ----------------------------------------------------------------------------------------


def _load_soak():
    import importlib.util

    from tests.e2e.serverproc import REPO_ROOT

    spec = importlib.util.spec_from_file_location("unyoke_soak", REPO_ROOT / "scripts" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_soak_mixed_requests_rss_flat(servers):
    """20,000 mixed requests (scripts/soak.py's mix): RSS after the first 4,000 grows by
    less than 16 MiB (about 20-25 MiB in all here)."""
    soak = _load_soak()
    server = servers.start(APP, "--no-access-log")
    samples, errors = soak.soak(server, 20_000, clients=4, sample_every=1.0, quiet=True)
    assert not errors, errors[:5]
    warm = [rss for _, done, rss in samples if done >= 4_000]
    print(f"\nsoak 20,000: RSS samples (MiB) {[round(r, 1) for _, _, r in samples]}")
    assert warm and max(warm) - warm[0] < 16, samples


def test_no_python_object_leak_in_process():
    """5,000 requests through an in-process unyoke.Server: after a warm-up of 1,000, the
    count of live Python objects and the traced Python allocations stay flat."""
    import gc
    import tracemalloc

    import unyoke

    from tests.apps.misbehaving import app

    def batch(address: Tuple[str, int], n: int) -> None:
        kinds = ["/hello", "/stream?chunks=4", "/error", "/str_body", "/none", "/big?size=70000"]
        with socket.create_connection(address, timeout=10) as sock:
            f = sock.makefile("rb")
            for i in range(n):
                target = kinds[i % len(kinds)]
                sock.sendall(build_request("GET", target))
                status = f.readline()
                assert status.split()[1] in (b"200", b"500"), status
                length, chunked = None, False
                while True:
                    line = f.readline()
                    if line == b"\r\n":
                        break
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                    if name.lower() == b"transfer-encoding":
                        chunked = True
                if chunked:
                    while True:
                        size = int(f.readline().split(b";")[0], 16)
                        f.read(size + 2)
                        if size == 0:
                            break
                else:
                    f.read(length or 0)

    with unyoke.Server(app, port=0, access_log=False, log_level="critical") as running:
        address = ("127.0.0.1", running.port)
        batch(address, 1_000)
        gc.collect()
        tracemalloc.start()
        objects_before = len(gc.get_objects())
        traced_before = tracemalloc.get_traced_memory()[0]
        batch(address, 4_000)
        gc.collect()
        objects_after = len(gc.get_objects())
        traced_after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
    print(
        f"\nPython objects {objects_before} -> {objects_after}; traced "
        f"{traced_before} -> {traced_after} bytes over 4,000 requests"
    )
    assert objects_after - objects_before < 500, (objects_before, objects_after)
    assert traced_after - traced_before < 1 << 20, (traced_before, traced_after)
