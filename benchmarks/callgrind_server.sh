# Sourced by callgrind_hello.sh and callgrind_cache.sh (POSIX sh): one life of unyoke
# under callgrind. Uses HARNESS (the shared harness, whose apps:hello is served), PY (the
# venv's python) and PORT.
#
# callgrind_serve OUT LOG VALGRIND_OPTION... -- CLIENT...
#   starts `python -m unyoke apps:hello` on 127.0.0.1:PORT under `valgrind
#   --tool=callgrind` with the given options (its profile in OUT.<pid>, its output in LOG),
#   pinned to CPU 1, with --busy-poll 0 (the polling before the event loop sleeps runs as
#   long as the client takes to send the next request: its instructions measure the
#   client's timing, not the work per request, and would make the count unrepeatable);
#   waits until it listens (up to 10 minutes: valgrind starts slowly);
#   runs CLIENT... on CPU 0; then stops the server with SIGINT, so that callgrind writes its
#   totals (SIGTERM after two minutes).
callgrind_serve() {
    cs_out=$1
    cs_log=$2
    shift 2
    cs_opts=""
    while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
        cs_opts="$cs_opts $1"
        shift
    done
    [ "$#" -gt 0 ] && shift
    rm -f "$cs_out".*
    # $cs_opts unquoted on purpose: one word per option (no option here has a space).
    # shellcheck disable=SC2086
    (cd "$HARNESS" && PYTHONPATH="$HARNESS" exec taskset -c 1 valgrind --tool=callgrind \
        $cs_opts --callgrind-out-file="$cs_out.%p" "$PY" -m unyoke apps:hello \
        --bind "127.0.0.1:$PORT" --no-access-log --busy-poll 0) >"$cs_log" 2>&1 &
    cs_pid=$!
    cs_waited=0
    until grep -q "listening on" "$cs_log"; do
        if ! kill -0 "$cs_pid" 2>/dev/null || [ "$cs_waited" -ge 600 ]; then
            echo "server did not start under valgrind; log: $cs_log" >&2
            kill -KILL "$cs_pid" 2>/dev/null || true
            exit 1
        fi
        sleep 1
        cs_waited=$((cs_waited + 1))
    done
    taskset -c 0 "$@"
    kill -INT "$cs_pid"
    cs_waited=0
    while kill -0 "$cs_pid" 2>/dev/null; do
        if [ "$cs_waited" -ge 120 ]; then kill -TERM "$cs_pid" 2>/dev/null || true; fi
        sleep 1
        cs_waited=$((cs_waited + 1))
    done
    wait "$cs_pid" || true
}
