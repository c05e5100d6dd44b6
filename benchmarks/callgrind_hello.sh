#!/bin/sh
# Instructions per `hello` request, counted by valgrind's callgrind: repeatable on a
# noisy machine, so a change to the hot path can be judged by instructions, not only by
# req/s.
#
# Method: unyoke serves the shared harness's apps:hello under `valgrind --tool=callgrind`
# (pinned to CPU 1). A client (plain Python, not under valgrind) opens ONE keep-alive
# connection, sends WARMUP requests, then N more, and closes; the server is stopped with
# SIGINT so callgrind writes its totals (all threads summed). A baseline run does the same
# with N = 0, so start-up, imports, warm-up and shutdown cancel out:
#
#     instructions/request = (Ir(measured) - Ir(baseline)) / N
#
# Every (measured, baseline) pair is repeated REPS times; the last line is machine-readable.
#
# usage: sh benchmarks/callgrind_hello.sh            (env: N=2000 WARMUP=200 REPS=3)
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
HARNESS=${UNYOKE_BENCH_HARNESS:-$(cd "$REPO/../shared/bench" 2>/dev/null && pwd)}
VENV=${UNYOKE_BENCH_VENV:-/tmp/unyoke-bench-venv}
PY="$VENV/bin/python"
N=${N:-2000}
WARMUP=${WARMUP:-200}
REPS=${REPS:-3}
PORT=${PORT:-18950}
WORK=$(mktemp -d /tmp/unyoke-callgrind.XXXXXX)

[ -x "$PY" ] || { echo "no venv at $VENV: run benchmarks/setup.sh" >&2; exit 1; }
[ -f "$HARNESS/apps.py" ] || { echo "shared harness not found: set UNYOKE_BENCH_HARNESS" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "valgrind missing: run benchmarks/setup.sh" >&2; exit 1; }
. "$HERE/callgrind_server.sh"

# The client: WARMUP + COUNT sequential keep-alive GETs on one connection, each response
# read whole (Content-Length), the request as wrk sends it.
cat >"$WORK/client.py" <<'EOF'
import re
import socket
import sys

port, warmup, count = (int(a) for a in sys.argv[1:4])
sock = socket.create_connection(("127.0.0.1", port), timeout=120)
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
request = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
buffered = b""
for _ in range(warmup + count):
    sock.sendall(request)
    while b"\r\n\r\n" not in buffered:
        chunk = sock.recv(65536)
        if not chunk:
            sys.exit("server closed the connection")
        buffered += chunk
    head, _, rest = buffered.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        sys.exit(f"unexpected response: {head[:80]!r}")
    length = int(re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head).group(1))
    while len(rest) < length:
        rest += sock.recv(65536)
    buffered = rest[length:]
sock.close()
EOF

# run COUNT LABEL: prints the total instruction count (Ir) of one server life.
run() {
    count=$1
    label=$2
    out="$WORK/$label"
    callgrind_serve "$out" "$out.log" -- "$PY" "$WORK/client.py" "$PORT" "$WARMUP" "$count"
    # callgrind's totals line ("summary:" in 3.x files; "totals:" as a fallback)
    cat "$out".* | awk '/^summary:/ {s += $2; found = 1} /^totals:/ {t += $2}
        END {if (found) print s; else print t}'
}

echo "unyoke $("$PY" -c 'import importlib.metadata as m; print(m.version("unyoke"))') under $(valgrind --version), app apps:hello, one keep-alive connection"
echo "requests per measured run: $N (after $WARMUP warm-up); baseline: 0 (after $WARMUP warm-up)"
results=""
rep=1
while [ "$rep" -le "$REPS" ]; do
    measured=$(run "$N" "measured$rep")
    baseline=$(run 0 "baseline$rep")
    per=$(( (measured - baseline) / N ))
    echo "rep $rep: measured Ir=$measured baseline Ir=$baseline -> $per instructions/request"
    results="$results $per"
    rep=$((rep + 1))
done
median=$(printf '%s\n' $results | sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : int((a[NR / 2] + a[NR / 2 + 1]) / 2)}')
echo "instructions/request: $median (median of$results)"
echo "CALLGRIND_JSON {\"instructions_per_request\": $median, \"reps\": [$(echo $results | tr ' ' ',')], \"requests\": $N, \"warmup\": $WARMUP, \"valgrind\": \"$(valgrind --version)\"}"
rm -rf "$WORK"
