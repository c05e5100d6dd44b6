"""WSGI apps that use unyoke's extensions, for tests/e2e/test_extensions.py and
tests/e2e/test_settings.py. Served as `tests.apps.extensions:app`; the path picks the
behaviour: `/<group>/<name>?<options>`.

- `/defer/...`  deferred responses (`environ['unyoke.defer']`): answered from a
  `threading.Timer`, from an asyncio loop in another thread, or from another request
  (a responder parked in `PARKED` under a key and finished by `/defer/finish`);
- `/op/...`     coroutine operations (`unyoke.sleep`, `unyoke.wait`, `unyoke.future`,
  `unyoke.signal`), also through WSGI middleware (`/mw/...`);
- `/hook/...`   post hooks (`environ['unyoke.posthooks']`);
- `/continue/...` `100 Continue` with headers;
- `/settings/...` small responses that show a setting's effect.

What happens inside the server (a hook ran, a responder's on_close fired) is appended
to `<state dir>/<kind>.log` with tests.apps.common.record, so the test can read it.
`mount_main`, `mount_api` and `mount_v2` are three apps that say who they are, for
mounts (`--mount /api=tests.apps.extensions:mount_api`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Dict, Iterator, List, Optional
from wsgiref.validate import validator

from werkzeug.middleware.lint import LintMiddleware
from werkzeug.middleware.shared_data import SharedDataMiddleware

from tests.apps.common import (
    Environ,
    StartResponse,
    environ_summary,
    json_response,
    query,
    record,
    record_call,
    state_dir,
    text_response,
)

Handler = Callable[[Environ, StartResponse], Any]
ROUTES: Dict[str, Handler] = {}

#: Deferred responders parked by one request for another to finish, by key.
PARKED: Dict[str, Any] = {}
#: Groups of parked responders, finished all at once by `/defer/release`.
GROUPS: Dict[str, List[Any]] = {}
#: How many generators entered `unyoke.wait(name)`, and how many came back, by name.
WAITING: Dict[str, int] = {}
RESUMED: Dict[str, int] = {}

_lock = threading.Lock()
_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="future-worker")
_loop: Optional[asyncio.AbstractEventLoop] = None


def route(name: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        ROUTES[name] = handler
        return handler

    return register


def app(environ: Environ, start_response: StartResponse) -> Any:
    path = environ.get("PATH_INFO", "")
    parts = path.strip("/").split("/")
    name = "/".join(parts[:2])
    handler = ROUTES.get(name)
    if handler is None:
        return text_response(start_response, f"no route {path}".encode(), "404 Not Found")
    return handler(environ, start_response)


def json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, sort_keys=True).encode("utf-8")


def thread_name() -> str:
    return threading.current_thread().name


# -- deferred responses ----------------------------------------------------------------------


@route("defer/timer")
def defer_timer(environ: Environ, start_response: StartResponse) -> Any:
    """Answered by a threading.Timer after `delay` s: write twice, then finish() (so
    the response gets a Content-Length). Headers name the threads involved."""
    q = query(environ)
    responder = environ["unyoke.defer"]()
    app_thread = thread_name()

    def answer() -> None:
        responder.start_response(
            "200 OK",
            [
                ("Content-Type", "text/plain"),
                ("X-App-Thread", app_thread),
                ("X-Answer-Thread", thread_name()),
            ],
        )
        responder.write(b"answered ")
        responder.write(b"by a timer")
        responder.finish(q.get("tail", "").encode())

    threading.Timer(float(q.get("delay", "0.2")), answer).start()
    return responder


def asyncio_loop() -> asyncio.AbstractEventLoop:
    """An asyncio loop running forever in a thread of its own (started on first use)."""
    global _loop
    with _lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="asyncio-loop", daemon=True).start()
        return _loop


@route("defer/asyncio")
def defer_asyncio(environ: Environ, start_response: StartResponse) -> Any:
    """Answered by a coroutine on an asyncio loop in another thread: the head and a
    first part after `delay` s (flushed), the rest `delay` s later."""
    delay = float(query(environ).get("delay", "0.1"))
    responder = environ["unyoke.defer"]()

    async def answer() -> None:
        await asyncio.sleep(delay)
        responder.start_response(
            "200 OK", [("Content-Type", "text/plain"), ("X-Answer-Thread", thread_name())]
        )
        responder.write(b"from asyncio, ")
        responder.flush()
        await asyncio.sleep(delay)
        responder.finish(b"finished")

    asyncio.run_coroutine_threadsafe(answer(), asyncio_loop())
    return responder


def _on_close_recorder(key: str) -> Callable[[], None]:
    def on_close() -> None:
        record("on_close", key)

    return on_close


@route("defer/park")
def defer_park(environ: Environ, start_response: StartResponse) -> Any:
    """Parks a responder under `key` without starting it; `/defer/finish`, `/defer/start`
    or `/defer/status` take it up later. Its on_close is recorded in on_close.log."""
    key = query(environ)["key"]
    responder = environ["unyoke.defer"]()
    responder.on_close(_on_close_recorder(key))
    with _lock:
        PARKED[key] = responder
    record("parked", key)
    return responder


@route("defer/stream")
def defer_stream(environ: Environ, start_response: StartResponse) -> Any:
    """Parks a responder under `key`, then starts its response with `size` bytes (or
    `fill`, default `first;`) sent with flush(callback); the callback records
    `<key> <time>` in flushed.log. `when=timer` (default) does that from a timer thread
    once the app returned; `when=app` inside the app call, which then goes on for
    `pause` s. Finish it with `/defer/finish?key=..&start=0`."""
    q = query(environ)
    key = q["key"]
    size = int(q.get("size", "0"))
    first = b"x" * size if size else q.get("fill", "first;").encode()
    responder = environ["unyoke.defer"]()
    responder.on_close(_on_close_recorder(key))
    with _lock:
        PARKED[key] = responder

    def start() -> None:
        responder.start_response("200 OK", [("Content-Type", "application/octet-stream")])
        responder.write(first)
        responder.flush(lambda: record("flushed", f"{key} {time.time():.6f}"))
        record("parked", key)

    if q.get("when", "timer") == "app":
        start()
        time.sleep(float(q.get("pause", "0")))
    else:
        threading.Timer(0.0, start).start()
    return responder


@route("defer/finish")
def defer_finish(environ: Environ, start_response: StartResponse) -> List[bytes]:
    """Finishes the responder parked under `key` from this request's thread: with
    `start=1` (default) it calls start_response first; the body is `body`."""
    q = query(environ)
    key = q["key"]
    with _lock:
        responder = PARKED.pop(key)
    if q.get("start", "1") == "1":
        responder.start_response(
            "200 OK", [("Content-Type", "text/plain"), ("X-Answer-Thread", thread_name())]
        )
    if q.get("write"):
        responder.write(q["write"].encode())
        responder.flush()
    responder.finish(q.get("body", f"finished {key}").encode())
    return text_response(start_response, f"finished {key}".encode())


@route("defer/status")
def defer_status(environ: Environ, start_response: StartResponse) -> List[bytes]:
    """What the responder parked under `key` says now, and what each of its methods does
    (each may raise): `closed` first, then start_response, write, flush and finish."""
    key = query(environ)["key"]
    with _lock:
        responder = PARKED[key]
    import unyoke._unyoke

    report: Dict[str, Any] = {"closed": responder.closed}
    calls = [
        ("start_response", lambda: responder.start_response("200 OK", [])),
        ("write", lambda: responder.write(b"late")),
        ("flush", responder.flush),
        ("finish", responder.finish),
    ]
    for name, call in calls:
        try:
            call()
            report[name] = None
        except Exception as exc:
            report[name] = {
                "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                "client_disconnected": isinstance(exc, unyoke._unyoke.ClientDisconnected),
                "oserror": isinstance(exc, OSError),
                "message": str(exc),
            }
    body = json_bytes(report)
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


@route("defer/never")
def defer_never(environ: Environ, start_response: StartResponse) -> Any:
    """Returns a responder that nobody ever starts (for responseless_timeout)."""
    return defer_park(environ, start_response)


@route("defer/many")
def defer_many(environ: Environ, start_response: StartResponse) -> Any:
    """Adds a responder to group `group`; `/defer/release` finishes the whole group."""
    group = query(environ)["group"]
    responder = environ["unyoke.defer"]()
    with _lock:
        GROUPS.setdefault(group, []).append(responder)
    return responder


@route("defer/count")
def defer_count(environ: Environ, start_response: StartResponse) -> List[bytes]:
    group = query(environ)["group"]
    with _lock:
        count = len(GROUPS.get(group, []))
    return text_response(start_response, str(count).encode())


@route("defer/release")
def defer_release(environ: Environ, start_response: StartResponse) -> List[bytes]:
    """One threading.Timer finishes every responder of `group`, each with its number.
    Records `<group> <finished> <errors>` in released.log when done."""
    group = query(environ)["group"]
    with _lock:
        responders = GROUPS.pop(group, [])

    def finish_all() -> None:
        errors = 0
        for number, responder in enumerate(responders):
            try:
                responder.start_response("200 OK", [("Content-Type", "text/plain")])
                responder.finish(b"done %d" % number)
            except Exception:
                errors += 1
        record("released", f"{group} {len(responders) - errors} {errors}")

    threading.Timer(0.0, finish_all).start()
    return text_response(start_response, str(len(responders)).encode())


# -- coroutine operations --------------------------------------------------------------------


def _count(table: Dict[str, int], name: str) -> None:
    with _lock:
        table[name] = table.get(name, 0) + 1


def outcome(environ: Environ) -> Dict[str, Any]:
    """What the server put in the environ after an operation, JSON-safe."""
    exc = environ.get("unyoke.exception")
    result = environ.get("unyoke.result", "<missing>")
    return {
        "result": result
        if isinstance(result, (str, int, float, dict, list, type(None)))
        else repr(result),
        "timed_out": environ.get("unyoke.timed_out", "<missing>"),
        "exception": None
        if exc is None
        else {
            "type": exc[0].__name__,
            "value": str(exc[1]),
            "is_instance": isinstance(exc[1], exc[0]),
            "traceback_frames": _frames(exc[2]),
        },
    }


def _frames(tb: Any) -> List[str]:
    names = []
    while tb is not None:
        names.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return names


@route("op/sleep")
def op_sleep(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    """Sleeps `s` seconds with unyoke.sleep; returns the elapsed time and the outcome."""
    seconds = float(query(environ).get("s", "0.5"))
    start_response("200 OK", [("Content-Type", "application/json")])
    started = time.monotonic()
    op = environ["unyoke.sleep"](seconds)
    yield op
    report = outcome(environ)
    report["elapsed"] = time.monotonic() - started
    report["op_value"] = repr(op)
    yield json_bytes(report)


@route("op/wait")
def op_wait(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    """Waits on `name` (for at most `timeout` s when given); returns the outcome. When
    the server closes the generator while it waits, records `name` in op_closed.log."""
    q = query(environ)
    name = q["name"]
    timeout = float(q["timeout"]) if "timeout" in q else None
    start_response("200 OK", [("Content-Type", "application/json")])
    started = time.monotonic()
    _count(WAITING, name)
    try:
        yield environ["unyoke.wait"](name, timeout)
    except GeneratorExit:
        record("op_closed", name)
        raise
    _count(RESUMED, name)
    report = outcome(environ)
    report["elapsed"] = time.monotonic() - started
    yield json_bytes(report)


@route("op/waiting")
def op_waiting(environ: Environ, start_response: StartResponse) -> List[bytes]:
    """How many generators entered and left unyoke.wait(name)."""
    name = query(environ)["name"]
    with _lock:
        counts = {"waiting": WAITING.get(name, 0), "resumed": RESUMED.get(name, 0)}
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json_bytes(counts)]


def _signal_value(q: Dict[str, str]) -> Any:
    if "json" in q:
        return json.loads(q["json"])
    return q.get("value")


@route("op/signal")
def op_signal(environ: Environ, start_response: StartResponse) -> List[bytes]:
    """unyoke.signal(name, value) from this request; returns how many were woken."""
    q = query(environ)
    woken = environ["unyoke.signal"](q["name"], _signal_value(q))
    return text_response(start_response, str(woken).encode())


@route("op/signal_later")
def op_signal_later(environ: Environ, start_response: StartResponse) -> List[bytes]:
    """unyoke.signal(name, value) from a background thread `delay` s from now; records
    `<name> <woken> <thread>` in signalled.log."""
    q = query(environ)
    signal = environ["unyoke.signal"]

    def fire() -> None:
        woken = signal(q["name"], _signal_value(q))
        record("signalled", f"{q['name']} {woken} {thread_name()}")

    threading.Timer(float(q.get("delay", "0.3")), fire).start()
    return text_response(start_response, b"scheduled")


def _work(mode: str, delay: float) -> Any:
    time.sleep(delay)
    if mode == "raise":
        raise LookupError(f"failed in {thread_name()}")
    return {"computed_in": thread_name(), "answer": 42}


@route("op/future")
def op_future(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    """Waits for a concurrent.futures future. `mode`: ok (a result), raise (an
    exception), done (already complete when yielded), manual (a bare Future completed by
    a timer thread), asyncio (a coroutine run on the asyncio loop thread with
    asyncio.run_coroutine_threadsafe)."""
    q = query(environ)
    mode, delay = q.get("mode", "ok"), float(q.get("delay", "0.2"))
    future: Future[Any]
    if mode == "manual":
        future = Future()
        threading.Timer(delay, future.set_result, ("set by a timer",)).start()
    elif mode == "asyncio":

        async def coroutine() -> str:
            await asyncio.sleep(delay)
            return f"awaited in {thread_name()}"

        future = asyncio.run_coroutine_threadsafe(coroutine(), asyncio_loop())
    else:
        future = _executor.submit(_work, "raise" if mode == "raise" else "ok", delay)
        if mode == "done":
            future.result()
    start_response("200 OK", [("Content-Type", "application/json")])
    yield environ["unyoke.future"](future)
    yield json_bytes(outcome(environ))


@route("op/stream_wait")
def op_stream_wait(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    """Sends `before;`, waits on `name` (parked mid-response), then sends the value."""
    name = query(environ)["name"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"before;"
    _count(WAITING, name)
    try:
        yield environ["unyoke.wait"](name, 30)
    except GeneratorExit:
        record("op_closed", name)
        raise
    _count(RESUMED, name)
    yield f"after:{environ['unyoke.result']}".encode()


# -- middleware ---------------------------------------------------------------------------------


class ReYield:
    """A hand-written middleware: iterates the app's body and re-yields every chunk
    (as a gzip or a logging middleware does), closes it, and records how many chunks
    passed in reyield.log."""

    def __init__(self, inner: Handler):
        self.inner = inner

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        body = self.inner(environ, start_response)
        chunks = 0
        try:
            for chunk in body:
                chunks += 1
                yield chunk
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
            record("reyield", f"{environ.get('PATH_INFO')} {chunks}")


def mw_inner(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    """Sleeps, then waits for a future, each through the middleware around it."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    started = time.monotonic()
    yield environ["unyoke.sleep"](0.3)
    slept = time.monotonic() - started
    yield b"slept %.3f;" % slept
    yield environ["unyoke.future"](_executor.submit(_work, "ok", 0.05))
    yield b"future %d;" % environ["unyoke.result"]["answer"]


#: Real middleware around the app, outermost first: werkzeug's SharedDataMiddleware
#: (serves this directory under /mw/files, passes the rest through), the standard
#: library's wsgiref.validate.validator and werkzeug's LintMiddleware (each wraps the
#: body iterator in a checking iterator), and the hand-written ReYield.
mw_app = SharedDataMiddleware(
    validator(LintMiddleware(ReYield(mw_inner))),
    {"/mw/files": os.path.dirname(os.path.abspath(__file__))},
)


@route("mw/ops")
def mw_ops(environ: Environ, start_response: StartResponse) -> Any:
    return mw_app(environ, start_response)


@route("mw/files")
def mw_files(environ: Environ, start_response: StartResponse) -> Any:
    return mw_app(environ, start_response)


# -- post hooks ---------------------------------------------------------------------------------


def hook(environ: Environ, ident: str, second: str, *, kw: str = "") -> None:
    record(
        "hooks",
        json.dumps(
            {
                "id": ident,
                "args": [second],
                "kw": kw,
                "path": environ.get("PATH_INFO"),
                "time": time.time(),
                "thread": thread_name(),
            },
            sort_keys=True,
        ),
    )


def failing_hook(environ: Environ, ident: str) -> None:
    raise RuntimeError(f"hook-failure-{ident}")


@route("hook/list")
def hook_list(environ: Environ, start_response: StartResponse) -> List[bytes]:
    """A list body (answered in one step) with a post hook."""
    ident = query(environ)["id"]
    environ["unyoke.posthooks"].append((hook, (ident, "list"), {"kw": "v"}))
    return text_response(start_response, b"hooked list")


@route("hook/stream")
def hook_stream(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    """`size` bytes in 1 MiB chunks (no Content-Length) with a post hook."""
    q = query(environ)
    ident, size = q["id"], int(q.get("size", "1048576"))
    environ["unyoke.posthooks"].append((hook, (ident, "stream"), {"kw": "v"}))
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    chunk = b"h" * (1 << 20)
    sent = 0
    while sent < size:
        piece = chunk[: size - sent]
        sent += len(piece)
        yield piece


@route("hook/raise")
def hook_raise(environ: Environ, start_response: StartResponse) -> List[bytes]:
    """A hook that raises, then one that records: the second still runs."""
    ident = query(environ)["id"]
    environ["unyoke.posthooks"].append((failing_hook, (ident,), {}))
    environ["unyoke.posthooks"].append((hook, (ident, "after-failure"), {}))
    return text_response(start_response, b"hooked with a failing hook")


@route("hook/deferred")
def hook_deferred(environ: Environ, start_response: StartResponse) -> Any:
    """A deferred response (parked under `id`) with a post hook."""
    ident = query(environ)["id"]
    environ["unyoke.posthooks"].append((hook, (ident, "deferred"), {}))
    responder = environ["unyoke.defer"]()
    with _lock:
        PARKED[ident] = responder
    record("parked", ident)
    return responder


# -- 100 Continue --------------------------------------------------------------------------------

CONTINUE_HEADERS = [("Hundred-Continue-Header-1", "H1"), ("Hundred-Continue-Header-k", "Hk")]


@route("continue/read")
def continue_read(environ: Environ, start_response: StartResponse) -> List[bytes]:
    environ["wsgi.input"].set_hundred_continue_response_headers(CONTINUE_HEADERS)
    text = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Length", str(len(text)))])
    return [text]


@route("continue/noread")
def continue_noread(environ: Environ, start_response: StartResponse) -> List[bytes]:
    environ["wsgi.input"].set_hundred_continue_response_headers(CONTINUE_HEADERS)
    return text_response(start_response, b"answered without reading", "403 Forbidden")


# -- settings ------------------------------------------------------------------------------------


@route("settings/echo")
def settings_echo(environ: Environ, start_response: StartResponse) -> List[bytes]:
    """The environ (JSON-safe) and the body; records the call in calls.log."""
    record_call(environ)
    body = environ["wsgi.input"].read()
    return json_response(
        start_response, {"environ": environ_summary(environ), "body": body.decode("latin-1")}
    )


@route("settings/raise")
def settings_raise(environ: Environ, start_response: StartResponse) -> List[bytes]:
    raise RuntimeError(query(environ).get("marker", "settings-raise-marker"))


@route("settings/stream")
def settings_stream(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    """`count` chunks of 64 KiB without Content-Length; records `<id> closed` in
    close.log when the server closes the generator (done, or given up)."""
    q = query(environ)
    ident, count = q.get("id", ""), int(q.get("count", "16"))
    chunk = b"s" * 65536
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    try:
        for _ in range(count):
            yield chunk
    finally:
        record("close", f"{ident} closed")


@route("settings/bytes")
def settings_bytes(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    """`n` one-byte pieces, no Content-Length."""
    n = int(query(environ).get("n", "1000"))
    start_response("200 OK", [("Content-Type", "text/plain")])
    for i in range(n):
        yield b"%d" % (i % 10)


@route("settings/headers")
def settings_headers(environ: Environ, start_response: StartResponse) -> List[bytes]:
    """Response header names in odd cases."""
    start_response(
        "200 OK",
        [
            ("content-TYPE", "text/plain"),
            ("x-custom-header", "1"),
            ("X-ALREADY-UPPER", "2"),
            ("content-length", "2"),
        ],
    )
    return [b"ok"]


@route("settings/gated_sha")
def settings_gated_sha(environ: Environ, start_response: StartResponse) -> List[bytes]:
    """Reads `first` bytes of the body (default none), or one line with `line=1`, then
    waits until the test creates `<state>/gate-<name>`, then reads the rest in 64 KiB
    blocks: its length and sha256."""
    q = query(environ)
    name = q["name"]
    path = os.path.join(state_dir() or ".", f"gate-{name}")
    digest = hashlib.sha256()
    length = 0
    first = int(q.get("first", "0"))
    line = q.get("line") == "1"
    if first or line:
        reader = environ["wsgi.input"]
        data = reader.readline() if line else reader.read(first)
        length += len(data)
        digest.update(data)
    record("gate", f"waiting {name}")
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    while True:
        data = environ["wsgi.input"].read(65536)
        if not data:
            break
        length += len(data)
        digest.update(data)
    return text_response(
        start_response, json_bytes({"length": length, "sha256": digest.hexdigest()})
    )


@route("settings/sleep")
def settings_sleep(environ: Environ, start_response: StartResponse) -> List[bytes]:
    """Blocks `s` seconds (time.sleep, holding its thread); records start and end."""
    q = query(environ)
    ident = q.get("id", "")
    record("sleep", f"start {ident} {time.time():.6f}")
    time.sleep(float(q.get("s", "0.5")))
    record("sleep", f"end {ident} {time.time():.6f}")
    return text_response(start_response, f"slept {ident}".encode())


# -- mounts ---------------------------------------------------------------------------------------


def _who(name: str) -> Handler:
    def who(environ: Environ, start_response: StartResponse) -> List[bytes]:
        body = json_bytes(
            {
                "app": name,
                "SCRIPT_NAME": environ.get("SCRIPT_NAME"),
                "PATH_INFO": environ.get("PATH_INFO"),
                "QUERY_STRING": environ.get("QUERY_STRING"),
            }
        )
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    return who


mount_main = _who("main")
mount_site = _who("site")
mount_api = _who("api")
mount_v2 = _who("v2")
