#!/bin/sh
# One-time setup of unyoke's benchmark suite on a fresh machine (run as root).
#
# Everything lands OUTSIDE the repository:
#   * Debian packages: wrk (load generator), libev-dev (bjoern builds against it),
#     valgrind (callgrind_hello.sh);
#   * a throwaway venv, $UNYOKE_BENCH_VENV (default /tmp/unyoke-bench-venv), with the peer
#     servers from PyPI, flask + django for the real-app workloads, matplotlib for the
#     chart, and unyoke itself built from this checkout (maturin, release profile, with its
#     cargo target dir under /tmp so it never touches the repository's target/);
#   * the hyper hello-world "I/O limit" server, built by the shared harness's
#     limits/setup_hyper.sh under $UNYOKE_BENCH_HYPER_DIR (default /tmp/hyperhello).
#
# Re-running it is cheap: existing venv, peers and hyper binary are reused; unyoke is
# rebuilt from the working tree every time (that is what is being measured).
#
# usage: sh benchmarks/setup.sh
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
HARNESS=${UNYOKE_BENCH_HARNESS:-$(cd "$REPO/../shared/bench" 2>/dev/null && pwd)}
VENV=${UNYOKE_BENCH_VENV:-/tmp/unyoke-bench-venv}
HYPER_DIR=${UNYOKE_BENCH_HYPER_DIR:-/tmp/hyperhello}
PYTHON=${PYTHON:-python3}
LOG=${UNYOKE_BENCH_LOGDIR:-/tmp/unyoke-bench-setup}
mkdir -p "$LOG"
failed=""

if [ -z "$HARNESS" ] || [ ! -f "$HARNESS/run.py" ]; then
    echo "shared harness not found (expected ../shared/bench beside the repo; set UNYOKE_BENCH_HARNESS)" >&2
    exit 1
fi

if [ "$(id -u)" = 0 ]; then
    apt-get update >"$LOG/apt.log" 2>&1
    apt-get install -y --no-install-recommends wrk libev-dev valgrind >>"$LOG/apt.log" 2>&1 \
        || { echo "apt-get install failed (see $LOG/apt.log)" >&2; exit 1; }
else
    echo "not root: skipping apt (needs wrk, libev-dev, valgrind)" >&2
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV" || exit 1
PIP="$VENV/bin/pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
"$PIP" install -q --upgrade pip wheel >"$LOG/pip_base.log" 2>&1
# fastwsgi 0.0.9 imports pkg_resources, which setuptools >= 81 no longer ships
"$PIP" install -q "setuptools<81" >>"$LOG/pip_base.log" 2>&1

install() {  # name, then pip arguments
    name=$1; shift
    if "$PIP" install -q "$@" >"$LOG/pip_$name.log" 2>&1; then
        echo "installed $name"
    else
        echo "FAILED    $name (see $LOG/pip_$name.log)"
        failed="$failed $name"
    fi
}

for p in granian bjoern fastwsgi gunicorn waitress cheroot flask django matplotlib; do
    install "$p" "$p"
done
# meinheld 1.0.2 pins greenlet<0.5, which does not compile on CPython 3.11. Its own C
# extension does build, so (as the shared harness does) install it without its
# dependencies, next to a current greenlet: an unsupported combination, but it serves.
install greenlet greenlet
install meinheld --no-deps meinheld

# unyoke from this checkout: pip builds the wheel with maturin (release profile). By default
# from the committed HEAD, exported with `git archive` to /tmp, so that edits in progress in
# the work tree neither break the build nor get measured by accident;
# UNYOKE_BENCH_SOURCE=worktree builds the work tree as it is instead.
SRC="$REPO"
rev=""
if [ "${UNYOKE_BENCH_SOURCE:-head}" != worktree ] && rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null); then
    SRC=/tmp/unyoke-bench-src
    rm -rf "$SRC" && mkdir -p "$SRC"
    git -C "$REPO" archive HEAD | tar -x -C "$SRC"
    stamp="$rev (HEAD)"
elif rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null); then
    stamp="$rev + work tree"
else
    stamp="no git"
fi
# cargo's build output outside the repository too (the repo's Makefile points it inside)
export CARGO_TARGET_DIR="${UNYOKE_BENCH_TARGET_DIR:-/tmp/unyoke-bench-target}"
install unyoke --force-reinstall --no-deps "$SRC"
echo "$stamp, built $(date -u +%Y-%m-%dT%H:%MZ)" >"$VENV/unyoke-build.txt"

"$VENV/bin/python" - <<'EOF'
import importlib.metadata as m
for p in ["unyoke", "granian", "bjoern", "fastwsgi", "meinheld", "greenlet", "gunicorn",
          "waitress", "cheroot", "flask", "django", "matplotlib"]:
    try:
        print(f"  {p:<11} {m.version(p)}")
    except m.PackageNotFoundError:
        print(f"  {p:<11} MISSING")
EOF

if [ -x "$HYPER_DIR/target/release/hyperhello" ]; then
    echo "hyper limit server already built: $HYPER_DIR/target/release/hyperhello"
# (with cargo's default target dir: the harness's script looks for $HYPER_DIR/target, and
# CARGO_TARGET_DIR, exported above for unyoke's build, would send the binary elsewhere)
elif env -u CARGO_TARGET_DIR HYPER_DIR="$HYPER_DIR" sh "$HARNESS/limits/setup_hyper.sh" >"$LOG/hyper.log" 2>&1 \
        && [ -x "$HYPER_DIR/target/release/hyperhello" ]; then
    echo "built $HYPER_DIR/target/release/hyperhello"
else
    echo "FAILED    hyper limit server (see $LOG/hyper.log)"
    failed="$failed hyper"
fi

if [ -n "$failed" ]; then
    echo "setup incomplete:$failed" >&2
    exit 1
fi
echo "setup done: venv $VENV, hyper $HYPER_DIR/target/release/hyperhello"
