"""The application floor: what the real-app workloads' applications cost on their own.

The shared harness's floor.py does this for `hello`; this does it for the Flask and Django
apps of the suite (apps/flask_json.py, apps/django_template.py). No sockets, no server: a
tight loop builds the environ a server would hand over for wrk's `GET /` (the keys
unyoke's environ has, the same request headers), calls the application, iterates the body
and calls its close(), as PEP 3333 asks. 1e6 / (µs per call) is then the most req/s any
WSGI server can reach on one core with this application under this interpreter: a server
only adds its own work (I/O, parsing, the response) to the application's.

Run pinned to the server's core, as the benchmark does (`taskset -c 1`):

    python3 benchmarks/app_floor.py [--n 5000] [--repeat 5] [--json]

The `floor` phase of benchmarks/run.py runs it with the bench venv's Python (Flask and
Django live there) and the report sets the figure beside the peers' and unyoke's req/s.
"""

import argparse
import gc
import io
import json
import statistics
import sys
import time

from run import APPS_DIR, EXTRA_WORKLOADS

sys.path.insert(0, APPS_DIR)

# workload -> module:callable, as benchmarks/run.py serves them
APPS = {workload: spec for workload, (_, _, spec) in EXTRA_WORKLOADS.items()}

# The request wrk sends, as a server's environ carries it.
HEADERS = {"HTTP_HOST": "127.0.0.1:8000"}


class FileWrapper:
    """Stands in for wsgi.file_wrapper (neither app uses it)."""

    def __init__(self, f: object, blksize: int = 8192) -> None:
        self.f, self.blksize = f, blksize


def environ() -> dict[str, object]:
    env: dict[str, object] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "RAW_URI": "/",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_SOFTWARE": "floor",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "54321",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.file_wrapper": FileWrapper,
    }
    env.update(HEADERS)
    return env


def call(app, start_response) -> int:  # type: ignore[no-untyped-def]
    """One request: the call, the body iterated, close() called. Returns the body size."""
    result = app(environ(), start_response)
    try:
        return sum(len(piece) for piece in result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()


def measure(spec: str, n: int, repeat: int) -> dict[str, object]:
    module, _, name = spec.partition(":")
    app = getattr(__import__(module), name)
    statuses: list[str] = []

    def start_response(status, headers, exc_info=None):  # type: ignore[no-untyped-def]
        statuses.append(status)
        return lambda data: None

    size = call(app, start_response)
    if not statuses or not statuses[0].startswith("200"):
        raise SystemExit(f"{spec}: answered {statuses[:1]!r}, not 200")
    for _ in range(min(n, 2000)):  # warm-up: caches, the specialising interpreter
        call(app, start_response)
    runs = []
    for _ in range(repeat):
        statuses.clear()
        gc.collect()
        t0 = time.perf_counter()
        for _ in range(n):
            call(app, start_response)
        runs.append((time.perf_counter() - t0) / n * 1e6)
    us = statistics.median(runs)
    return {
        "app": spec,
        "body_bytes": size,
        "us_median": round(us, 2),
        "us_runs": [round(r, 2) for r in runs],
        "max_rps_one_core": int(1e6 / us),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=5000, help="calls per timed run (Django: a tenth)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs; the median is reported")
    p.add_argument("--json", action="store_true", help="one JSON line instead of a table")
    p.add_argument("--only", default="", help="comma list of workloads (default: all)")
    args = p.parse_args()
    chosen = [w for w in APPS if not args.only or w in args.only.split(",")]
    results = {}
    for w in chosen:
        n = args.n if w != "django-c64" else max(1, args.n // 10)
        results[w] = measure(APPS[w], n, args.repeat)
    doc = {"python": sys.version.split()[0], "results": results}
    if args.json:
        print(json.dumps(doc))
        return
    for w, r in results.items():
        us, most = r["us_median"], r["max_rps_one_core"]
        print(f"{w:<12} {r['app']:<22} {us:>9.2f} µs/call  {most:>8,} req/s at most")


if __name__ == "__main__":
    main()
