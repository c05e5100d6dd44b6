#!/usr/bin/env bash
# Run every fuzz target for SECONDS each (default 60), one after the other.
#   crates/fuzz/run.sh 60        # what CI runs
#   JOBS=2 crates/fuzz/run.sh 600
# Installs cargo-fuzz if missing, seeds the corpora from gunicorn's request vectors
# (crates/fuzz/seed.py; skipped with a warning if they cannot be fetched), builds with
# RUSTC_BOOTSTRAP=1 (cargo-fuzz needs -Zsanitizer on a stable toolchain), and exits
# non-zero on the first target that finds a crash; the input is left in
# crates/fuzz/artifacts/<target>/.
set -euo pipefail

SECONDS_EACH="${1:-60}"
TARGETS="${TARGETS:-request chunked connection proxy}"
CARGO_FUZZ_VERSION="0.13.2"
FUZZ_DIR="$(cd "$(dirname "$0")" && pwd)"
export RUSTC_BOOTSTRAP=1
export PATH="$HOME/.cargo/bin:$PATH"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

cd "$FUZZ_DIR"
if ! python3 seed.py; then
    echo "warning: could not fetch gunicorn's vectors; fuzzing from the existing corpus" >&2
fi

cargo fuzz build -O --fuzz-dir .
for target in $TARGETS; do
    mkdir -p "corpus/$target"
    echo "== $target: ${SECONDS_EACH}s"
    # -max_len: the connection target needs room for pipelines; 4 KiB keeps runs fast.
    parallel=()
    if [ "${JOBS:-1}" -gt 1 ]; then
        parallel=(-fork="$JOBS")
    fi
    cargo fuzz run -O --fuzz-dir . "$target" "corpus/$target" -- \
        -max_total_time="$SECONDS_EACH" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 "${parallel[@]}"
done
