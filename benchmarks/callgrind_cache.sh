#!/bin/sh
# Cache misses per `hello` request with many connections taking turns, from callgrind's
# cache simulation: what a request costs in memory traffic once every connection's state
# no longer fits in the cache (hello at 256 connections), repeatable where the machine's
# own counters are not available (this VM exposes none to perf).
#
# Method: as callgrind_hello.sh, but with `--cache-sim=yes` and a last-level cache of
# LL (default 512 KiB, 8-way: one core's L2 on the benchmark machine, since the L3 is
# shared with other tenants). The client opens CONNS keep-alive connections and sends a
# round of one request on each (all in flight, like wrk), reads every response, and
# repeats; a baseline run makes ROUNDS_BASE rounds, the measured one ROUNDS, so
#
#     events/request = (events(measured) - events(baseline)) / (CONNS * (ROUNDS - ROUNDS_BASE))
#
# for each event callgrind records: Ir (instructions), D1mr/D1mw (first-level data read /
# write misses), DLmr/DLmw (last-level data read / write misses). One pair of runs; the
# last line is machine-readable.
#
# usage: sh benchmarks/callgrind_cache.sh    (env: CONNS=256 ROUNDS=14 ROUNDS_BASE=4
#        LL=524288,8,64)
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
HARNESS=${UNYOKE_BENCH_HARNESS:-$(cd "$REPO/../shared/bench" 2>/dev/null && pwd)}
VENV=${UNYOKE_BENCH_VENV:-/tmp/unyoke-bench-venv}
PY="$VENV/bin/python"
CONNS=${CONNS:-256}
ROUNDS=${ROUNDS:-14}
ROUNDS_BASE=${ROUNDS_BASE:-4}
LL=${LL:-524288,8,64}
PORT=${PORT:-18960}
WORK=$(mktemp -d /tmp/unyoke-callgrind-cache.XXXXXX)

[ -x "$PY" ] || { echo "no venv at $VENV: run benchmarks/setup.sh" >&2; exit 1; }
[ -f "$HARNESS/apps.py" ] || { echo "shared harness not found: set UNYOKE_BENCH_HARNESS" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "valgrind missing: run benchmarks/setup.sh" >&2; exit 1; }
[ "$ROUNDS" -gt "$ROUNDS_BASE" ] || { echo "ROUNDS must exceed ROUNDS_BASE" >&2; exit 1; }
. "$HERE/callgrind_server.sh"

# The client: CONNS connections; each round sends one GET on every connection, then reads
# every response whole (Content-Length). A round is quick, so no connection waits long
# enough to be shelved.
cat >"$WORK/client.py" <<'EOF'
import re
import socket
import sys

port, conns, rounds = (int(a) for a in sys.argv[1:4])
request = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
socks = [socket.create_connection(("127.0.0.1", port), timeout=120) for _ in range(conns)]
for _ in range(rounds):
    for s in socks:
        s.sendall(request)
    for s in socks:
        buffered = b""
        while b"\r\n\r\n" not in buffered:
            chunk = s.recv(65536)
            if not chunk:
                sys.exit("server closed a connection")
            buffered += chunk
        head, _, rest = buffered.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            sys.exit(f"unexpected response: {head[:80]!r}")
        length = int(re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head).group(1))
        while len(rest) < length:
            rest += s.recv(65536)
for s in socks:
    s.close()
EOF

# run ROUNDS LABEL: one server life, its profile in $WORK/LABEL.<pid>.
run() {
    callgrind_serve "$WORK/$2" "$WORK/$2.log" --cache-sim=yes --LL="$LL" -- \
        "$PY" "$WORK/client.py" "$PORT" "$CONNS" "$1"
}

echo "unyoke $("$PY" -c 'import importlib.metadata as m; print(m.version("unyoke"))') under $(valgrind --version), app apps:hello, $CONNS connections, LL=$LL"
run "$ROUNDS" measured
run "$ROUNDS_BASE" baseline
"$PY" - "$WORK" $((CONNS * (ROUNDS - ROUNDS_BASE))) <<'EOF'
import glob
import json
import sys

work, requests = sys.argv[1], int(sys.argv[2])


def totals(label):
    names, sums = None, None
    for path in glob.glob(f"{work}/{label}.*"):
        if path.endswith(".log"):
            continue
        with open(path) as f:
            for line in f:
                if line.startswith("events:"):
                    names = line.split()[1:]
                elif line.startswith(("summary:", "totals:")):
                    values = [int(v) for v in line.split()[1:]]
                    sums = values if sums is None else [a + b for a, b in zip(sums, values)]
                    break
    return names, sums


names, measured = totals("measured")
_, baseline = totals("baseline")
per = {n: round((m - b) / requests, 1) for n, m, b in zip(names, measured, baseline)}
print("per request: " + " ".join(f"{n}={v}" for n, v in per.items()))
print("CALLGRIND_CACHE_JSON " + json.dumps(dict(per, requests=requests)))
EOF
rm -rf "$WORK"
