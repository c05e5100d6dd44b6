#!/usr/bin/env python3
"""unyoke's benchmark suite: unyoke beside the peer WSGI servers, in the same run.

    sh benchmarks/setup.sh          # once per machine (apt, venv with the peers, hyper)
    python3 benchmarks/run.py       # everything, ~50 min; results/<date>-<machine>/

It drives the shared harness (``../shared/bench/run.py``, found beside the repository or
through $UNYOKE_BENCH_HARNESS) without copying or changing it: the harness is imported,
two real-app workloads are registered in its workload table (its own code then starts,
pins, checks, warms up, measures and stops every server exactly as for its built-in
workloads), and its ``main()`` is called with its own command line. Phases:

  floor      the pure-Python floor (harness floor.py, pinned to CPU 1)
  matrix     every workload x every server, interleaved repetitions (harness matrix)
  idle       5,000 idle keep-alive connections (harness --idle), plus the same servers
             with no idle connection, for the new-request latency "with none"
  callgrind  instructions per hello request (callgrind_hello.sh)
  report     report.md + chart.png in the results folder, copied to results/latest.md
             when the run is the newest full one (every phase, every workload)

``--report DIR`` re-renders report.md and chart.png from the raw files saved in DIR.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
APPS_DIR = os.path.join(HERE, "apps")
RESULTS = os.path.join(HERE, "results")
HARNESS = os.environ.get(
    "UNYOKE_BENCH_HARNESS", os.path.normpath(os.path.join(REPO, "..", "shared", "bench"))
)
VENV = os.environ.get("UNYOKE_BENCH_VENV", "/tmp/unyoke-bench-venv")
HYPER = os.environ.get("UNYOKE_BENCH_HYPER", "/tmp/hyperhello/target/release/hyperhello")

OURS = "unyoke"
# unyoke with every setting at its default (the targets are for defaults)
OURS_CMD = "{python} -m unyoke {app} --bind {host}:{port} --no-access-log"
OURS_CONFIG = "defaults: 1 process, app on the engine's dispatch, --threads 64 (default)"
PEERS = ["granian", "bjoern", "fastwsgi", "meinheld", "gunicorn", "waitress", "cheroot"]
LIMIT = "hyper-limit"
# thread-per-connection servers (gunicorn sync, cheroot) are left out of the idle test:
# they cannot hold 5,000 connections by design, and only burn the time budget trying
IDLE_SERVERS = [OURS, "bjoern", "fastwsgi", "granian", "meinheld", "waitress", LIMIT]

SHARED_WORKLOADS = [
    "hello-c1",
    "hello-c64",
    "hello-c256",
    "big-c64",
    "stream-c64",
    "sleep-c64",
    "echo-c16",
]
# workload -> (app name in the harness's tables, wrk connections, module:callable)
EXTRA_WORKLOADS = {
    "flask-c64": ("flask", 64, "flask_json:app"),
    "django-c64": ("django", 64, "django_template:app"),
}
ALL_WORKLOADS = SHARED_WORKLOADS + list(EXTRA_WORKLOADS)
# The measuring phases, in the order they run (the report is rendered after any of them).
ALL_PHASES = ("floor", "matrix", "idle", "callgrind")

# The targets (#5), as ratios to the best peer in the same run.
TARGET_TEXT = {
    "hello-c1": ">= 1.2x best peer",
    "hello-c64": "<= 10 us CPU/req, and >= 1.3x best peer or >= 90% of hyper; p99 <= best peer's",
    "hello-c256": "<= 10 us CPU/req, and >= 1.3x best peer or >= 90% of hyper; p99 <= best peer's",
    "big-c64": ">= 1.5x best peer",
    "stream-c64": ">= 2x best peer",
    "sleep-c64": ">= 5,760 req/s (90% of 64 conns / 10 ms)",
    "echo-c16": ">= 1.5x best peer",
    "flask-c64": ">= 1.2x best peer",
    "django-c64": ">= 1.2x best peer",
}
RATIO_TARGET = {
    "hello-c1": 1.2,
    "big-c64": 1.5,
    "stream-c64": 2.0,
    "echo-c16": 1.5,
    "flask-c64": 1.2,
    "django-c64": 1.2,
}
WRK_SATURATED_PCT = 95.0
# "a new request among 5,000 idle connections as fast as with none": allowed slack
IDLE_LATENCY_SLACK = 1.5


# --------------------------------------------------------------------------
# the shared harness, run in this process with the real-app workloads registered
# --------------------------------------------------------------------------
def _load_harness():
    path = os.path.join(HARNESS, "run.py")
    spec = importlib.util.spec_from_file_location("shared_bench_run", path)
    if spec is None or spec.loader is None:
        sys.exit(f"shared harness not found at {path} (set UNYOKE_BENCH_HARNESS)")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _app_body(target):
    """The body `module:callable` answers to GET / (for the harness's pre-flight check)."""
    import wsgiref.util

    mod, _, attr = target.partition(":")
    app = getattr(importlib.import_module(mod), attr)
    environ = {}
    wsgiref.util.setup_testing_defaults(environ)
    status = []
    result = app(environ, lambda s, h, e=None: status.append(s))
    try:
        body = b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    if not status or not status[0].startswith("200"):
        sys.exit(f"{target} answered {status} in-process")
    return body


def harness_main(argv):
    """`run.py _harness ARGS`: the shared harness's main() with the extra workloads."""
    harness = _load_harness()
    sys.path.insert(0, HARNESS)
    import apps as shared_apps  # the module the harness's pre-flight check reads

    sys.path.insert(0, APPS_DIR)
    # servers are started with PYTHONPATH = harness dir + ours, so they import the apps
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (APPS_DIR, os.environ.get("PYTHONPATH")) if p
    )
    for workload, (app, conns, target) in EXTRA_WORKLOADS.items():
        harness.WORKLOADS[workload] = (app, conns, "report.lua")
        harness.ALL_WL.append(workload)
        shared_apps.EXPECTED[app] = _app_body(target)
    targets = {app: target for app, _, target in EXTRA_WORKLOADS.values()}
    expand = harness.expand

    def expand_with_extra_apps(template, app, port, extra=None):
        values = {"app": targets[app]} if app in targets else {}
        values.update(extra or {})
        return expand(template, app, port, values)

    harness.expand = expand_with_extra_apps  # {app} -> flask_json:app for the new apps
    sys.argv = [os.path.join(HARNESS, "run.py"), *argv]
    harness.main()


# --------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------
def _venv_python():
    return os.path.join(VENV, "bin", "python")


def _floor(script, path):
    """Runs a floor script (`--json`) with the venv's Python on the server's core (CPU 1)
    and saves the one JSON line it prints to `path`."""
    text = subprocess.run(
        ["taskset", "-c", "1", _venv_python(), script, "--json"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    with open(path, "w") as f:
        f.write(text + "\n")
    print(text)


def _ensure_venv_python(argv):
    """Re-run under the bench venv's Python (flask, django and matplotlib live there)."""
    py = _venv_python()
    if not os.path.exists(py):
        sys.exit(f"no bench venv at {VENV}: run `sh benchmarks/setup.sh` first")
    if os.path.realpath(sys.prefix) != os.path.realpath(VENV):
        os.execv(py, [py, os.path.abspath(__file__), *argv])


def _machine_tag():
    model = "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1]
                    break
    except OSError:
        pass
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")
    slug = "-".join(slug.split("-")[:3])
    return f"{os.cpu_count()}cpu-{slug}"


def _cmd_out(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def _ours_version():
    version = _cmd_out(
        [_venv_python(), "-c", "import importlib.metadata as m; print(m.version('unyoke'))"]
    )
    try:
        with open(os.path.join(VENV, "unyoke-build.txt")) as f:
            version += " (" + f.read().strip() + ")"
    except OSError:
        pass
    return version


def _loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _cpu_times():
    """(busy, steal, total) jiffies over all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, fields[7], sum(fields)


class Phase:
    """Times a phase and records the machine's load and steal around it (the box is shared)."""

    def __init__(self, meta, name):
        self.meta, self.name = meta, name

    def __enter__(self):
        print(f"\n=== {self.name} (load {_loadavg()}) ===", flush=True)
        self.t0, self.cpu0 = time.monotonic(), _cpu_times()
        return self

    def __exit__(self, *exc):
        busy0, steal0, total0 = self.cpu0
        busy1, steal1, total1 = _cpu_times()
        span = max(1, total1 - total0)
        self.meta.setdefault("phases", {})[self.name] = dict(
            seconds=round(time.monotonic() - self.t0),
            machine_busy_pct=round(100 * (busy1 - busy0) / span, 1),
            steal_pct=round(100 * (steal1 - steal0) / span, 1),
            loadavg_end=_loadavg(),
        )
        _save_json(os.path.join(self.meta["_out"], "meta.json"), self.meta)


def _save_json(path, data):
    with open(path, "w") as f:
        json.dump({k: v for k, v in data.items() if not k.startswith("_")}, f, indent=1)
        f.write("\n")


def _harness(args, extra):
    argv = [
        _venv_python(),
        os.path.abspath(__file__),
        "_harness",
        "--venv",
        VENV,
        "--hyper",
        args.hyper,
        "--server",
        f"{OURS}={OURS_CMD}",
        "--server-version",
        f"{OURS}={_ours_version()}",
        *extra,
    ]
    print("+", " ".join(argv[3:]), flush=True)
    return subprocess.run(argv, check=False).returncode


def run_all(args):
    servers = [s for s in args.servers.split(",") if s]
    workloads = [w for w in args.workloads.split(",") if w]
    unknown = [w for w in workloads if w not in ALL_WORKLOADS]
    if unknown:
        sys.exit(f"unknown workloads {unknown}; known: {', '.join(ALL_WORKLOADS)}")
    phases = [p for p in args.phases.split(",") if p]
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: run `sh benchmarks/setup.sh` first")
    if LIMIT in servers and not os.path.exists(args.hyper):
        sys.exit(f"hyper limit server missing at {args.hyper}: run benchmarks/setup.sh")

    now = dt.datetime.now()
    out = args.out or os.path.join(RESULTS, f"{now:%Y-%m-%d}-{_machine_tag()}")
    if not args.out and os.path.exists(os.path.join(out, "report.md")):
        out += f"-{now:%H%M}"
    os.makedirs(out, exist_ok=True)
    meta_path = os.path.join(out, "meta.json")
    meta = {}
    if os.path.exists(meta_path):  # resuming: keep what earlier phases recorded
        with open(meta_path) as f:
            meta = json.load(f)
    meta.update(
        date=now.isoformat(timespec="seconds"),
        machine=_machine_tag(),
        hostname=platform.node(),
        kernel=platform.release(),
        cpu_model=_machine_tag(),
        cpus=os.cpu_count(),
        python=_cmd_out([_venv_python(), "-c", "import sys; print(sys.version.split()[0])"]),
        wrk=_cmd_out(["sh", "-c", "wrk -v 2>&1 | head -1"]),
        unyoke=_ours_version(),
        harness=HARNESS,
        reps=args.reps,
        duration_s=args.duration,
        warmup_s=args.warmup,
        servers=servers,
        workloads=workloads,
        idle_servers=IDLE_SERVERS,
        idle_conns=args.idle_conns,
        loadavg_start=_loadavg(),
    )
    meta["_out"] = out
    _save_json(meta_path, meta)
    print(f"results -> {out}", flush=True)

    if "floor" in phases:
        with Phase(meta, "floor"):
            _floor(os.path.join(HARNESS, "floor.py"), os.path.join(out, "floor.json"))
            # the same for the real-app workloads: what their applications cost alone
            _floor(os.path.join(HERE, "app_floor.py"), os.path.join(out, "app_floor.json"))
    if "matrix" in phases:
        with Phase(meta, "matrix"):
            _harness(
                args,
                [
                    "--only",
                    ",".join(servers),
                    "--workloads",
                    ",".join(workloads),
                    "--reps",
                    str(args.reps),
                    "--duration",
                    str(args.duration),
                    "--warmup",
                    str(args.warmup),
                    "--out",
                    os.path.join(out, "matrix"),
                ],
            )
    if "idle" in phases:
        idle_servers = [s for s in IDLE_SERVERS if s in servers]
        with Phase(meta, "idle"):
            for _ in range(args.idle_reps):  # each pass runs every server: interleaved
                _harness(
                    args,
                    [
                        "--idle",
                        "--idle-conns",
                        str(args.idle_conns),
                        "--only",
                        ",".join(idle_servers),
                        "--out",
                        os.path.join(out, "idle"),
                    ],
                )
            _harness(
                args,
                [
                    "--idle",
                    "--idle-conns",
                    "0",
                    "--only",
                    ",".join(idle_servers),
                    "--out",
                    os.path.join(out, "idle-none"),
                ],
            )
    if "callgrind" in phases:
        with Phase(meta, "callgrind"):
            env = dict(os.environ, UNYOKE_BENCH_HARNESS=HARNESS, UNYOKE_BENCH_VENV=VENV)
            proc = subprocess.run(
                ["sh", os.path.join(HERE, "callgrind_hello.sh")],
                capture_output=True,
                text=True,
                env=env,
            )
            print(proc.stdout + proc.stderr)
            with open(os.path.join(out, "callgrind.txt"), "w") as f:
                f.write(proc.stdout)
    meta["loadavg_end"] = _loadavg()
    _save_json(meta_path, meta)
    render(out)


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------
def _read_json(path):
    """One JSON document from a file, or None when it is missing or not JSON."""
    try:
        with open(path) as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def _read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _ms(us):
    if us is None:
        return "-"
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def _mib(kb):
    return "-" if not kb else f"{kb / 1024:.1f} MiB"


def _num(x, fmt="{:,.0f}"):
    return "-" if x is None else fmt.format(x)


def _cpu_us(rec):
    if not rec.get("requests") or rec.get("server_cpu_s") is None:
        return None
    return rec["server_cpu_s"] * 1e6 / rec["requests"]


def summarize(records):
    """{workload: {server: stats}} with medians over the repetitions."""
    table = {}
    for rec in records:
        table.setdefault(rec["workload"], {}).setdefault(rec["server"], []).append(rec)
    out = {}
    for workload, by_server in table.items():
        for server, recs in by_server.items():
            ok = [r for r in recs if r.get("rps") is not None]
            stats = dict(
                runs=len(recs),
                ok=len(ok),
                failed=sorted({str(r.get("status")) for r in recs if r.get("rps") is None}),
                version=recs[0].get("version", "?"),
                config=recs[0].get("config", ""),
                rps=_median([r["rps"] for r in ok]),
                rps_reps=[r["rps"] for r in ok],
                p50=_median([r.get("lat_p50_us") for r in ok]),
                p99=_median([r.get("lat_p99_us") for r in ok]),
                errors=[r.get("errors") for r in ok],
                rss=_median([r.get("rss_peak_kb") for r in ok]),
                cpu_us=_median([_cpu_us(r) for r in ok]),
                srv_cpu=_median([r.get("server_cpu_pct") for r in ok]),
                wrk_cpu=_median([r.get("wrk_cpu_pct") for r in ok]),
                steal=_median([r.get("steal_pct") for r in ok]),
                check=",".join(sorted({str(r.get("check", "?")) for r in ok})) or "-",
            )
            out.setdefault(workload, {})[server] = stats
    return out


def _limit_rps(workload, summary, app_floor):
    """The most req/s any server could reach on this workload, where the run measured it:
    the hyper server's req/s for hello-c1 (the I/O alone, no Python), the application
    floor's for the real apps (the application alone, no I/O). None elsewhere."""
    if workload == "hello-c1":
        hyper = summary.get(workload, {}).get(LIMIT)
        return hyper["rps"] if hyper and hyper["rps"] else None
    v = (app_floor or {}).get("results", {}).get(workload)
    return v["max_rps_one_core"] if v else None


def best_peer(by_server):
    """The peer with the highest median req/s whose answers passed the pre-flight check."""
    peers = [
        (s, st)
        for s, st in by_server.items()
        if s not in (OURS, LIMIT) and st["rps"] and st["check"].startswith("ok")
    ]
    return max(peers, key=lambda t: t[1]["rps"]) if peers else (None, None)


def verdict(workload, ours, peer, hyper):
    """(met?, why) against the issue's target for this workload."""
    if not ours or not ours["rps"]:
        return False, "unyoke did not run"
    if workload == "sleep-c64":
        return ours["rps"] >= 5760, f"{ours['rps']:,.0f} of the ideal 6,400"
    if not peer:
        return False, "no peer result"
    ratio = ours["rps"] / peer["rps"]
    if workload in RATIO_TARGET:
        return ratio >= RATIO_TARGET[workload], f"{ratio:.2f}x"
    # hello-c64 / hello-c256
    cpu_ok = ours["cpu_us"] is not None and ours["cpu_us"] <= 10
    of_hyper = ours["rps"] / hyper["rps"] if hyper and hyper["rps"] else 0
    rps_ok = ratio >= 1.3 or of_hyper >= 0.9
    p99_ok = ours["p99"] is not None and peer["p99"] is not None and ours["p99"] <= peer["p99"]
    why = (
        f"{ours['cpu_us']:.1f} µs/req, {ratio:.2f}x, {100 * of_hyper:.0f}% of hyper, "
        f"p99 {_ms(ours['p99'])} vs {_ms(peer['p99'])}"
    )
    if cpu_ok and rps_ok and p99_ok:
        return True, why
    wrk_bound = (ours["wrk_cpu"] or 0) >= WRK_SATURATED_PCT
    if cpu_ok and wrk_bound and not rps_ok:
        return p99_ok, why + "; req/s capped by wrk (its CPU saturated), CPU target holds"
    return False, why


def _idle_summary(path):
    by_server = {}
    for rec in _read_jsonl(path):
        by_server.setdefault(rec["server"], []).append(rec)
    out = {}
    for server, recs in by_server.items():
        good = [r for r in recs if r.get("rss_idle_kb")]
        per = [
            (r["rss_idle_kb"] - r["rss_start_kb"]) / max(1, r["opened"])
            for r in good
            if r.get("opened")
        ]
        out[server] = dict(
            reps=len(recs),
            status=sorted({r.get("status", "?") for r in recs}),
            opened=_median([r.get("opened") for r in recs]),
            open_failed=_median([r.get("open_failed") for r in recs]),
            kib_per_conn=_median(per),
            rss_idle_kb=_median([r.get("rss_idle_kb") for r in good]),
            rss_start_kb=_median([r.get("rss_start_kb") for r in recs]),
            new_ok=_median([r.get("new_ok") for r in recs]),
            new_tried=_median([r.get("new_tried") for r in recs]),
            new_p50_ms=_median([r.get("new_p50_ms") for r in recs]),
            reused_ok=_median([r.get("reused_ok") for r in recs]),
            reused_reps=[r.get("reused_ok") for r in recs],
        )
    return out


def _order(names):
    rank = {n: i for i, n in enumerate([OURS, *PEERS, LIMIT])}
    return sorted(names, key=lambda n: (rank.get(n, 50), n))


def chart(summary, workloads, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    servers = _order({s for w in workloads for s in summary.get(w, {})})
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(13, 8.5), sharex=True)
    width = 0.8 / max(1, len(servers))
    colors = plt.get_cmap("tab10")
    for i, server in enumerate(servers):
        xs, ratios, cpus = [], [], []
        for j, w in enumerate(workloads):
            st = summary.get(w, {}).get(server)
            _, peer = best_peer(summary.get(w, {}))
            if not st or not st["rps"] or not peer:
                continue
            xs.append(j + (i - (len(servers) - 1) / 2) * width)
            ratios.append(st["rps"] / peer["rps"])
            cpus.append(st["cpu_us"])
        style = dict(color="black") if server == OURS else dict(color=colors(i % 10))
        if server == LIMIT:
            style = dict(color="lightgray", hatch="//", edgecolor="gray")
        ax1.bar(xs, ratios, width, label=server, **style)
        if server == OURS:
            for x, r in zip(xs, ratios, strict=True):
                ax1.annotate(f"{r:.2f}x", (x, r), ha="center", va="bottom", fontsize=8)
        ax2.bar(xs, cpus, width, label=server, **style)
    ax1.axhline(1.0, color="red", linewidth=0.8)
    ax1.set_yscale("log")
    ax1.set_ylabel("req/s ÷ best peer's (median, log)")
    ax1.set_title("unyoke vs peers: throughput relative to the best peer (higher is better)")
    ax2.set_yscale("log")
    ax2.set_ylabel("server CPU µs per request (log)")
    ax2.set_title("server CPU time per request (lower is better; steadiest on a noisy box)")
    ax2.set_xticks(range(len(workloads)))
    ax2.set_xticklabels(workloads)
    top = max((b.get_height() for b in ax1.patches), default=1.0)
    ax1.set_ylim(top=top * 3)  # room for the value above the tallest bar
    handles, labels = ax1.get_legend_handles_labels()
    fig.legend(handles, labels, ncol=len(servers), fontsize=8, loc="lower center")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _share(part, whole):
    """part as a percentage of whole, or None when either is missing."""
    return 100 * part / whole if part and whole else None


def _shown_path(path):
    path = os.path.abspath(path)
    return os.path.relpath(path, REPO) if path.startswith(REPO + os.sep) else path


def _full_run_start(folder):
    """When the run saved in `folder` started, if it is a full run (every phase, every
    workload); None for a partial run or anything else."""
    try:
        with open(os.path.join(folder, "meta.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    phases_done = set(meta.get("phases") or {})
    full = set(ALL_PHASES) <= phases_done and set(ALL_WORKLOADS) <= set(meta.get("workloads") or [])
    return meta.get("date") if full else None


def render(out):
    meta = {}
    if os.path.exists(os.path.join(out, "meta.json")):
        with open(os.path.join(out, "meta.json")) as f:
            meta = json.load(f)
    records = _read_jsonl(os.path.join(out, "matrix", "raw.jsonl"))
    summary = summarize(records)
    workloads = [w for w in ALL_WORKLOADS if w in summary]
    lines = [f"# unyoke benchmark: {os.path.basename(out)}", ""]
    lines += [
        f"Machine: {meta.get('cpus', '?')} CPUs ({meta.get('cpu_model', '?')}), host "
        f"`{meta.get('hostname', '?')}`, kernel {meta.get('kernel', '?')}, Python "
        f"{meta.get('python', '?')}, {meta.get('wrk', 'wrk ?')}. unyoke {meta.get('unyoke', '?')}.",
        "",
        f"Method: the shared harness ({meta.get('reps', '?')} interleaved repetitions, medians; "
        f"{meta.get('warmup_s', 2)} s warm-up, {meta.get('duration_s', 5)} s measured; server "
        "on CPU 1, `wrk -t1` on CPU 0). `CPU µs/req` = server CPU time ÷ completed requests, "
        "the steadiest figure on this shared, noisy machine; `steal` = hypervisor steal "
        "during the run; `srv/wrk CPU%` shows which side was the bottleneck (wrk ≥ 95 % = "
        "the load generator is saturated). Ratios are to the best peer (highest median "
        "req/s among the peers whose answer passed the pre-flight check).",
        "",
    ]
    phases = meta.get("phases", {})
    if phases:
        lines.append(
            "Machine load during each phase (other engineers compile on it): "
            + "; ".join(
                f"{k} {v['seconds']} s, busy {v['machine_busy_pct']} %, steal {v['steal_pct']} %"
                for k, v in phases.items()
            )
            + "."
        )
        lines.append("")
    notes = os.path.join(out, "notes.md")
    if os.path.exists(notes):  # written by hand after a run: what the numbers need said
        with open(notes) as f:
            lines += ["## Notes on this run", "", f.read().strip(), ""]
    if records:
        lines.append("![chart](chart.png)")
        lines.append("")

    app_floor = _read_json(os.path.join(out, "app_floor.json"))
    # headline
    lines += [
        "## Headline: unyoke against the best peer, per workload",
        "",
        "| workload | unyoke req/s | best peer | best peer req/s | ratio | unyoke CPU µs/req "
        "| peer CPU µs/req | p99 unyoke / peer | wrk CPU% | target | met |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for w in workloads:
        by = summary[w]
        ours = by.get(OURS)
        name, peer = best_peer(by)
        met, why = verdict(w, ours, peer, by.get(LIMIT))
        ratio = ours["rps"] / peer["rps"] if ours and ours["rps"] and peer else None
        limit = _limit_rps(w, summary, app_floor)
        if not met and limit and peer and peer["rps"] * RATIO_TARGET.get(w, 0) > limit:
            why += f"; the target is above the limit measured beside it, {limit:,.0f}"
        lines.append(
            f"| {w} | {_num(ours and ours['rps'])} | {name or '-'} | {_num(peer and peer['rps'])} "
            f"| {_num(ratio, '{:.2f}x')} | {_num(ours and ours['cpu_us'], '{:.1f}')} "
            f"| {_num(peer and peer['cpu_us'], '{:.1f}')} "
            f"| {_ms(ours and ours['p99'])} / {_ms(peer and peer['p99'])} "
            f"| {_num(ours and ours['wrk_cpu'])} | {TARGET_TEXT.get(w, '')} "
            f"| {'yes' if met else '**no**'} ({why}) |"
        )
    lines.append("")

    # limits
    floor = _read_json(os.path.join(out, "floor.json"))
    lines += ["## How much of each limit unyoke reaches", ""]
    hello = [w for w in ("hello-c1", "hello-c64", "hello-c256") if w in summary]
    if hello and any(LIMIT in summary[w] for w in hello):
        lines += [
            "The I/O limit: a Rust hyper hello-world server, no Python, same pinning "
            "(`wrk` saturates near it: see its CPU%).",
            "",
            "| workload | hyper req/s | unyoke req/s | unyoke / hyper req/s | hyper CPU µs/req "
            "| unyoke CPU µs/req | hyper CPU ÷ unyoke CPU |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for w in hello:
            h, o = summary[w].get(LIMIT), summary[w].get(OURS)
            if not h or not o or not h["rps"] or not o["rps"]:
                continue
            lines.append(
                f"| {w} | {h['rps']:,.0f} | {o['rps']:,.0f} | {100 * o['rps'] / h['rps']:.0f} % "
                f"| {_num(h['cpu_us'], '{:.1f}')} | {_num(o['cpu_us'], '{:.1f}')} "
                f"| {_num(_share(h['cpu_us'], o['cpu_us']), '{:.0f} %')} |"
            )
        lines.append("")
    if floor:
        o = summary.get("hello-c64", {}).get(OURS)
        lines += [
            f"The pure-Python floor (`floor.py`, Python {floor.get('python')}, CPU 1): a loop "
            "that builds an environ, calls `hello` and joins the body, no I/O. 1e6 ÷ µs per "
            "call is the most req/s any WSGI server could reach on one core if it did that "
            "much Python per request. unyoke builds the environ in Rust, so it can beat "
            "variants b and c.",
            "",
            "| floor variant | µs/call | implied max req/s | unyoke hello-c64 CPU µs/req | "
            "unyoke's share of the floor's rate (floor µs ÷ unyoke µs) |",
            "|---|---:|---:|---:|---:|",
        ]
        for v in floor.get("results", []):
            share = (100 * v["us_median"] / o["cpu_us"]) if o and o["cpu_us"] else None
            lines.append(
                f"| {v['variant']}: {v['desc']} | {v['us_median']:.3f} | "
                f"{v['max_rps_one_core']:,} | {_num(o and o['cpu_us'], '{:.1f}')} | "
                f"{_num(share, '{:.0f} %')} |"
            )
        lines.append("")

    real = [w for w in (app_floor or {}).get("results", {}) if w in summary]
    if real:
        lines += [
            f"The application floor (`benchmarks/app_floor.py`, Python {app_floor.get('python')}, "
            "CPU 1): the real-app workloads' applications called in a loop with the environ a "
            "server hands over, body iterated, `close()` called, no server and no I/O. 1e6 ÷ "
            "µs per call is the most req/s any WSGI server can reach with that application on "
            "one core; a ratio target above it cannot be met by any server.",
            "",
            "| workload | app alone µs/call | most req/s any server can reach | best peer req/s "
            "| target (ratio x best peer) | unyoke req/s | unyoke's share of the app's limit |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for w in real:
            v = app_floor["results"][w]
            o = summary[w].get(OURS)
            _, peer = best_peer(summary[w])
            target = peer["rps"] * RATIO_TARGET[w] if peer and peer["rps"] else None
            share = 100 * o["rps"] / v["max_rps_one_core"] if o and o["rps"] else None
            lines.append(
                f"| {w} | {v['us_median']:.1f} | {v['max_rps_one_core']:,} "
                f"| {_num(peer and peer['rps'])} | {_num(target)}"
                f"{' (above the limit)' if target and target > v['max_rps_one_core'] else ''} "
                f"| {_num(o and o['rps'])} | {_num(share, '{:.0f} %')} |"
            )
        lines.append("")

    # callgrind
    cg_path = os.path.join(out, "callgrind.txt")
    if os.path.exists(cg_path):
        with open(cg_path) as f:
            cg_text = f.read()
        lines += [
            "## callgrind: instructions per hello request",
            "",
            "`sh benchmarks/callgrind_hello.sh`: unyoke under `valgrind --tool=callgrind`, "
            "one keep-alive connection, (Ir of 200 warm-up + N requests - Ir of 200 warm-up "
            "alone) ÷ N. All threads of the server process are summed. The server runs "
            "with `--busy-poll 0`: its polling before sleep lasts as long as the client "
            "takes to send the next request, which would make the count depend on timing.",
            "",
            "```",
            "\n".join(
                line for line in cg_text.splitlines() if not line.startswith("CALLGRIND_JSON")
            ),
            "```",
            "",
        ]

    # idle
    idle = _idle_summary(os.path.join(out, "idle", "idle.jsonl"))
    none = _idle_summary(os.path.join(out, "idle-none", "idle.jsonl"))
    if idle:
        conns = meta.get("idle_conns", 5000)
        lines += [
            f"## Idle: {conns:,} keep-alive connections open and silent",
            "",
            "Harness `--idle` (each connection makes one request, then sits idle), medians "
            "over the passes. `KiB/conn` = (RSS with the idle connections - RSS at start) ÷ "
            "connections opened. The new-request latency is a fresh connection's GET among "
            "the idle ones, against the same with no idle connection (`idle-none`). "
            "gunicorn (sync) and cheroot are thread-per-connection and are not run here.",
            "",
            "| server | opened (failed) | RSS at start | RSS with idle conns | KiB/conn "
            "| new request p50 among idle | p50 with none | new requests OK "
            "| idle conns answered afterwards, per pass |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for server in _order(idle):
            r, n = idle[server], none.get(server, {})
            lines.append(
                f"| {server} | {_num(r['opened'])} ({_num(r['open_failed'])}) "
                f"| {_mib(r['rss_start_kb'])} "
                f"| {_mib(r['rss_idle_kb'])} | {_num(r['kib_per_conn'], '{:.1f}')} "
                f"| {_num(r['new_p50_ms'], '{:.2f} ms')} "
                f"| {_num(n.get('new_p50_ms'), '{:.2f} ms')} "
                f"| {_num(r['new_ok'])}/{_num(r['new_tried'])} "
                f"| {', '.join(_num(x) for x in r['reused_reps'])} |"
            )
        o, b = idle.get(OURS), idle.get("bjoern")
        if o:
            held = (
                o["opened"] == conns
                and not o["open_failed"]
                and all(x == conns for x in o["reused_reps"])
            )
            mem_ok = (
                b is not None
                and o["kib_per_conn"] is not None
                and b["kib_per_conn"] is not None
                and o["kib_per_conn"] <= b["kib_per_conn"]
            )
            n_p50 = none.get(OURS, {}).get("new_p50_ms")
            lat_ok = (
                o["new_p50_ms"] is not None
                and n_p50 is not None
                and o["new_p50_ms"] <= IDLE_LATENCY_SLACK * n_p50
            )
            lines += [
                "",
                f"Target: {conns:,} held with no setting changed: "
                f"{'yes' if held else '**no**'}; memory per idle connection ≤ bjoern's: "
                f"{'yes' if mem_ok else '**no**'} ({_num(o['kib_per_conn'], '{:.1f}')} vs "
                f"{_num(b and b['kib_per_conn'], '{:.1f}')} KiB); a new request among them as "
                f"fast as with none (within {IDLE_LATENCY_SLACK}x): "
                f"{'yes' if lat_ok else '**no**'}.",
            ]
        lines.append("")

    # full tables
    if workloads:
        lines += [
            "## Every workload, every server",
            "",
            "Median over the repetitions; `per rep` lists every repetition's req/s (the spread).",
        ]
    for w in workloads:
        by = summary[w]
        name, peer = best_peer(by)
        conns = next((r["conns"] for r in records if r["workload"] == w), "?")
        lines += [
            "",
            f"### {w} (wrk -t1 -c{conns})",
            "",
            "| server | req/s | per rep | ratio to best peer | p50 | p99 | errors per rep "
            "| peak RSS | CPU µs/req | srv/wrk CPU% | steal% | check |",
            "|---|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---|",
        ]
        rows = sorted(by.items(), key=lambda t: -(t[1]["rps"] or -1))
        for server, st in rows:
            if not st["rps"]:
                lines.append(f"| {server} | FAILED ({'; '.join(st['failed'])}) |||||||||||")
                continue
            label = f"**{server}**" if server == OURS else server
            lines.append(
                f"| {label} | {st['rps']:,.0f} | {', '.join(f'{x:,.0f}' for x in st['rps_reps'])} "
                f"| {_num(peer and st['rps'] / peer['rps'], '{:.2f}x')} "
                f"| {_ms(st['p50'])} | {_ms(st['p99'])} "
                f"| {', '.join(str(e) for e in st['errors'])} | {_mib(st['rss'])} "
                f"| {_num(st['cpu_us'], '{:.1f}')} | {_num(st['srv_cpu'])}/{_num(st['wrk_cpu'])} "
                f"| {_num(st['steal'])} | {st['check']} |"
            )
    if summary:
        versions = {}
        for w in workloads:
            for server, st in summary[w].items():
                versions.setdefault(server, (st["version"], st["config"]))
        lines += ["", "## Servers", "", "| server | version | configuration |", "|---|---|---|"]
        for server in _order(versions):
            version, config = versions[server]
            if server == OURS:
                config = OURS_CONFIG
            lines.append(f"| {server} | {version} | {config} |")
        lines += [
            "",
            "Exact commands: `matrix/summary.md` (written by the harness). Raw data: "
            "`matrix/raw.jsonl`, `idle/idle.jsonl`, `idle-none/idle.jsonl`, `floor.json`, "
            "`app_floor.json`, `callgrind.txt`, `meta.json`. Re-render with "
            f"`python3 benchmarks/run.py --report {_shown_path(out)}`.",
        ]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    if workloads:
        chart(summary, workloads, os.path.join(out, "chart.png"))
    # results/latest.md: the newest full run's report, links rebased (a partial run, or an
    # older run re-rendered, leaves it alone)
    if os.path.dirname(os.path.abspath(out)) == os.path.abspath(RESULTS):
        started = {d: _full_run_start(os.path.join(RESULTS, d)) for d in os.listdir(RESULTS)}
        full = {d: t for d, t in started.items() if t}
        rel = os.path.basename(out)
        if rel in full and max(full, key=full.__getitem__) == rel:
            latest = re.sub(r"\]\((chart\.png)\)", rf"]({rel}/\1)", text)
            latest = latest.replace("Exact commands: `matrix/", f"Exact commands: `{rel}/matrix/")
            with open(os.path.join(RESULTS, "latest.md"), "w") as f:
                f.write(latest)
    print(text)
    print(f"wrote {os.path.join(out, 'report.md')}")


def main():
    argv = sys.argv[1:]
    if argv[:1] == ["_harness"]:
        harness_main(argv[1:])
        return
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    ap.add_argument("--duration", type=int, default=5, help="measured seconds per run")
    ap.add_argument("--warmup", type=int, default=2, help="discarded warm-up seconds per run")
    ap.add_argument(
        "--servers",
        default=",".join([OURS, *PEERS, LIMIT]),
        help="comma list (default: unyoke, the peers and hyper-limit)",
    )
    ap.add_argument("--workloads", default=",".join(ALL_WORKLOADS), help="comma list")
    ap.add_argument(
        "--phases",
        default=",".join(ALL_PHASES),
        help=f"comma list of {', '.join(ALL_PHASES)} (the report always runs)",
    )
    ap.add_argument("--idle-conns", type=int, default=5000)
    ap.add_argument("--idle-reps", type=int, default=2, help="interleaved passes of the idle test")
    ap.add_argument("--hyper", default=HYPER, help="the hyper limit server's binary")
    ap.add_argument("--out", help="results folder (default results/<date>-<machine>)")
    ap.add_argument(
        "--report", metavar="DIR", help="only re-render DIR's report from its raw files"
    )
    args = ap.parse_args(argv)
    _ensure_venv_python(argv)
    if args.report:
        render(os.path.abspath(args.report))
    else:
        run_all(args)


if __name__ == "__main__":
    main()
