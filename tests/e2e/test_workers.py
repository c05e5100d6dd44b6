"""Worker processes under the supervisor: real processes, real sockets, real signals.

The app is written to a temporary directory by each test (so a reload can change it) and
answers "VERSION PID"; `/sleep?S` sleeps S seconds after recording its start in the state
directory, `/missing` is a 404.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest

from tests.e2e.serverproc import REPO_ROOT, ServerProcess, free_port

pytestmark = pytest.mark.timeout(120)

APP = """
import os, time
VERSION = "{version}"

def app(environ, start_response):
    path = environ["PATH_INFO"]
    query = environ.get("QUERY_STRING", "")
    if path == "/sleep":
        seconds, _, tag = query.partition("&")
        state = os.environ.get("UNYOKE_TEST_STATE_DIR")
        if state:
            with open(os.path.join(state, "started.log"), "a") as f:
                f.write(f"{{os.getpid()}} {{tag}}\\n")
        time.sleep(float(seconds))
    if path == "/spin":
        end = time.monotonic() + float(query)
        while time.monotonic() < end:
            pass
    status = "404 Not Found" if path == "/missing" else "200 OK"
    body = f"{{VERSION}} {{os.getpid()}}".encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def write_app(directory: Path, version: str = "v1") -> None:
    (directory / "workerapp.py").write_text(APP.format(version=version))


def app_env(directory: Path) -> Dict[str, str]:
    return {
        "PYTHONPATH": os.pathsep.join([str(directory), str(REPO_ROOT)]),
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def start(servers, tmp_path: Path, *args: str, version: str = "v1") -> ServerProcess:
    write_app(tmp_path, version)
    return servers.start("workerapp:app", "--no-access-log", *args, env=app_env(tmp_path))


def get(server: ServerProcess, target: str, timeout: float = 30.0) -> Tuple[int, str]:
    """One request on a fresh connection: (status, body)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    try:
        conn.request("GET", target)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def pid_of(body: str) -> int:
    return int(body.split()[1])


def children(pid: int) -> List[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def wait_workers(server: ServerProcess, count: int, timeout: float = 20.0) -> List[int]:
    assert wait_until(lambda: len(children(server.pid)) == count, timeout), (
        f"expected {count} workers, have {children(server.pid)}; log:\n{server.log()[-3000:]}"
    )
    return children(server.pid)


def started(server: ServerProcess) -> List[Tuple[int, str]]:
    return [(int(p), tag) for p, tag in (line.split() for line in server.state_lines("started"))]


def test_workers_share_the_load(servers, tmp_path: Path) -> None:
    server = start(servers, tmp_path, "--workers", "2")
    workers = wait_workers(server, 2)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: get(server, f"/sleep?0.3&{i}"), range(32)))
    assert all(status == 200 for status, _ in results)
    pids = {pid_of(body) for _, body in results}
    assert pids == set(workers)


def test_workers_auto_is_one_per_core(servers, tmp_path: Path) -> None:
    server = start(servers, tmp_path, "--workers", "auto")
    wait_workers(server, len(os.sched_getaffinity(0)))
    assert get(server, "/")[0] == 200


def test_killed_worker_is_replaced_and_only_its_requests_are_lost(servers, tmp_path: Path) -> None:
    server = start(servers, tmp_path, "--workers", "2")
    workers = wait_workers(server, 2)
    outcomes: Dict[str, str] = {}

    def slow(tag: str) -> None:
        try:
            status, body = get(server, f"/sleep?3&{tag}")
            outcomes[tag] = f"{status} {pid_of(body)}"
        except (OSError, http.client.HTTPException) as error:
            outcomes[tag] = f"lost {type(error).__name__}"

    threads = [threading.Thread(target=slow, args=(f"r{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: len(started(server)) == 8)
    victim = workers[0]
    os.kill(victim, signal.SIGKILL)
    for thread in threads:
        thread.join()
    on_victim = {tag for pid, tag in started(server) if pid == victim}
    lost = {tag for tag, outcome in outcomes.items() if outcome.startswith("lost")}
    assert lost == on_victim
    for tag, outcome in outcomes.items():
        if tag not in on_victim:
            assert outcome == f"200 {workers[1]}"
    replaced = wait_workers(server, 2)
    assert victim not in replaced and workers[1] in replaced
    assert server.wait_for_log(f"worker {victim} died (signal SIGKILL)")
    assert get(server, "/")[0] == 200


def test_sigterm_completes_requests_in_flight_and_exits_0(servers, tmp_path: Path) -> None:
    server = start(servers, tmp_path, "--workers", "2", "--graceful-timeout", "20")
    wait_workers(server, 2)
    count = 12
    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(get, server, f"/sleep?2&g{i}") for i in range(count)]
        assert wait_until(lambda: len(started(server)) == count)
        os.kill(server.pid, signal.SIGTERM)
        completed = cut = 0
        for future in futures:
            try:
                status, _ = future.result()
                completed += status == 200
                cut += status != 200
            except (OSError, http.client.HTTPException):
                cut += 1
    code = server.process.wait(timeout=30)  # type: ignore[union-attr]
    server.returncode = code  # stopped by the test
    print(f"graceful stop: {completed} completed, {cut} cut")
    assert (completed, cut) == (count, 0)
    assert code == 0
    # Once stopping, nothing is accepted any more.
    with pytest.raises(OSError):
        get(server, "/", timeout=2)


class LoadLoop:
    """Client threads, each sending requests one after another on fresh connections."""

    def __init__(self, server: ServerProcess, threads: int = 4) -> None:
        self.server = server
        self.sent = 0
        self.failed: List[str] = []
        self.bodies: List[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def __enter__(self) -> LoadLoop:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, body = get(self.server, "/", timeout=10)
                outcome: Optional[str] = None if status == 200 else f"status {status}"
            except (OSError, http.client.HTTPException) as error:
                outcome, body = repr(error), ""
            with self._lock:
                self.sent += 1
                if outcome is None:
                    self.bodies.append(body)
                else:
                    self.failed.append(outcome)

    def latest(self) -> str:
        with self._lock:
            return self.bodies[-1] if self.bodies else ""


def test_sighup_reload_under_load_refuses_nothing(servers, tmp_path: Path) -> None:
    server = start(servers, tmp_path, "--workers", "2")
    old = set(wait_workers(server, 2))
    with LoadLoop(server) as load:
        time.sleep(1.0)
        write_app(tmp_path, "v2-changed")
        os.kill(server.pid, signal.SIGHUP)
        assert wait_until(lambda: load.latest().startswith("v2-changed"))
        assert wait_until(lambda: not (set(children(server.pid)) & old))
        time.sleep(1.0)
    print(f"reload under load: {load.sent} sent, {len(load.failed)} failed")
    assert load.failed == []
    new = set(children(server.pid))
    assert len(new) == 2 and not new & old
    assert {get(server, "/")[1].split()[0] for _ in range(10)} == {"v2-changed"}


def test_sigttin_and_sigttou(servers, tmp_path: Path) -> None:
    server = start(servers, tmp_path, "--workers", "2")
    wait_workers(server, 2)
    os.kill(server.pid, signal.SIGTTIN)
    wait_workers(server, 3)
    os.kill(server.pid, signal.SIGTTOU)  # signals of one kind coalesce: one at a time
    wait_workers(server, 2)
    os.kill(server.pid, signal.SIGTTOU)
    wait_workers(server, 1)
    os.kill(server.pid, signal.SIGTTOU)  # never below one
    time.sleep(1.0)
    wait_workers(server, 1)
    assert get(server, "/")[0] == 200


def test_max_requests_recycles_workers(servers, tmp_path: Path) -> None:
    server = start(
        servers, tmp_path, "--workers", "1", "--max-requests", "10", "--max-requests-jitter", "2"
    )
    wait_workers(server, 1)
    pids = []
    for _ in range(60):
        status, body = get(server, "/")
        assert status == 200
        pids.append(pid_of(body))
        time.sleep(0.04)
    assert len(set(pids)) >= 3
    # No worker serves much more than max_requests + jitter (plus what arrives before the
    # check that runs every half second).
    assert max(pids.count(pid) for pid in set(pids)) <= 12 + 15
    assert "(max_requests): replacing it" in server.log()


def test_worker_timeout_kills_a_stuck_worker_and_logs_the_request(servers, tmp_path: Path) -> None:
    server = start(servers, tmp_path, "--workers", "1", "--worker-timeout", "2")
    (stuck,) = wait_workers(server, 1)
    with pytest.raises((OSError, http.client.HTTPException)):
        get(server, "/sleep?60&stuck")
    assert server.wait_for_log("GET /sleep?60&stuck HTTP/1.1")
    assert f"worker {stuck} timed out" in server.log()
    # The log line comes before the kill: wait for the stuck worker to be replaced.
    assert wait_until(lambda: children(server.pid) not in ([], [stuck]), 20.0), server.log()
    (replacement,) = wait_workers(server, 1)
    assert replacement != stuck
    status, body = get(server, "/")
    assert (status, pid_of(body)) == (200, replacement)


def scrape(port: int) -> Dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type", "").startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    finally:
        conn.close()
    samples: Dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            assert re.match(r"# (HELP|TYPE) unyoke_\w+ ", line) or not line, line
            continue
        match = re.fullmatch(r'(unyoke_\w+(?:\{\w+="[^"]*"\})?) (\S+)', line)
        assert match, line
        samples[match.group(1)] = float(match.group(2))
    return samples


def test_metrics_sum_the_workers(servers, tmp_path: Path) -> None:
    metrics_port = free_port()
    server = start(servers, tmp_path, "--workers", "2", "--metrics", f"127.0.0.1:{metrics_port}")
    wait_workers(server, 2)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: get(server, f"/sleep?0.05&{i}"), range(40)))
    assert {status for status, _ in results} == {200}
    assert len({pid_of(body) for _, body in results}) == 2
    assert get(server, "/missing")[0] == 404

    def counted() -> bool:
        samples = scrape(metrics_port)
        return (
            samples['unyoke_requests_total{class="2xx"}'] == 40
            and samples['unyoke_requests_total{class="4xx"}'] == 1
        )

    assert wait_until(counted, 10)
    samples = scrape(metrics_port)
    assert samples["unyoke_workers"] == 2
    assert samples["unyoke_requests_in_flight"] == 0
    assert samples["unyoke_idle_connections"] == 0
    assert samples["unyoke_request_duration_seconds_count"] == 41
    assert samples['unyoke_request_duration_seconds_bucket{le="+Inf"}'] == 41
    assert samples["unyoke_request_duration_seconds_sum"] >= 40 * 0.05
    buckets = [v for k, v in samples.items() if k.startswith("unyoke_request_duration_seconds_b")]
    assert buckets == sorted(buckets)
    assert samples["unyoke_bytes_received_total"] > 41 * 30
    assert samples["unyoke_bytes_sent_total"] > 41 * 60
    assert samples["unyoke_worker_restarts_total"] == 0
    # Each sleeping call gives the GIL up while the loop waits on it: the standby takes
    # the loop over at least once in 40 such calls, and nothing here computes for long.
    assert samples['unyoke_loop_takeovers_total{reason="blocked"}'] >= 1
    assert samples['unyoke_loop_takeovers_total{reason="computing"}'] == 0
    # Counters survive a worker's death; the restart is counted.
    os.kill(children(server.pid)[0], signal.SIGKILL)
    wait_workers(server, 2)
    assert wait_until(lambda: scrape(metrics_port)["unyoke_worker_restarts_total"] == 1, 10)
    assert scrape(metrics_port)['unyoke_requests_total{class="2xx"}'] == 40


def test_metrics_count_loop_takeovers_by_reason(servers, tmp_path: Path) -> None:
    """A call computing for 1.5 s has the loop taken over (computing) while requests keep
    being answered; calls that sleep have it taken over as blocked."""
    metrics_port = free_port()
    server = start(servers, tmp_path, "--workers", "1", "--metrics", f"127.0.0.1:{metrics_port}")
    wait_workers(server, 1)
    with ThreadPoolExecutor(4) as pool:
        spinning = pool.submit(get, server, "/spin?1.5")
        time.sleep(0.3)
        assert not spinning.done()
        quick = [get(server, f"/?{i}")[0] for i in range(5)]
        assert quick == [200] * 5
        assert not spinning.done(), "the quick requests waited for the computing one"
        assert spinning.result()[0] == 200
    assert wait_until(lambda: scrape(metrics_port)['unyoke_requests_total{class="2xx"}'] == 6, 10)
    samples = scrape(metrics_port)
    assert samples['unyoke_loop_takeovers_total{reason="computing"}'] >= 1
    assert samples['unyoke_loop_takeovers_total{reason="blocked"}'] == 0
    assert get(server, "/sleep?0.3")[0] == 200
    assert wait_until(
        lambda: scrape(metrics_port)['unyoke_loop_takeovers_total{reason="blocked"}'] >= 1, 10
    )


def test_preload_imports_once_and_app_errors_stop_the_start(servers, tmp_path: Path) -> None:
    server = start(servers, tmp_path, "--workers", "2", "--preload")
    wait_workers(server, 2)
    assert "application preloaded" in server.log()
    (tmp_path / "brokenapp.py").write_text("raise RuntimeError('boom at import')\n")
    broken = ServerProcess(
        "brokenapp:app", ["--workers", "2"], workdir=tmp_path / "broken", env=app_env(tmp_path)
    )
    try:
        broken.start()  # the supervisor listens before the workers import the app
    except Exception:
        pass
    assert broken.process is not None
    assert broken.process.wait(timeout=20) == 1
    assert "boom at import" in broken.log()
    assert "the first worker could not start" in broken.log()


def test_reload_restarts_workers_when_a_file_changes(tmp_path: Path) -> None:
    write_app(tmp_path, "v1")
    port = free_port()
    server = ServerProcess(
        "workerapp:app",
        ["--reload", "--no-access-log"],
        workdir=tmp_path / "run",
        binds=[f"127.0.0.1:{port}"],
        env=app_env(tmp_path),
    )
    # --reload watches the current directory: run it from the app's.
    import tests.e2e.serverproc as serverproc

    original = serverproc.REPO_ROOT
    serverproc.REPO_ROOT = tmp_path
    try:
        server.start()
    finally:
        serverproc.REPO_ROOT = original
    try:
        assert get(server, "/")[1].startswith("v1 ")
        time.sleep(1.1)
        write_app(tmp_path, "v2-edited")
        assert wait_until(lambda: get(server, "/")[1].startswith("v2-edited "), 15)
    finally:
        assert server.stop() == 0
