"""unyoke's extensions through a real server and real sockets (issue 3, parts 1-6):
deferred responses, coroutine operations, post hooks, `100 Continue` with headers,
mounts, channel events and stats.

The apps are in tests/apps/extensions.py; what happens inside the server (a hook ran,
an on_close fired) reaches the test through the state directory (tests/apps/common.py).
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import threading
import time
import uuid
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import quote

import pytest

from tests.e2e.rawhttp import (
    HTTPResponse,
    IncompleteResponse,
    RawConnection,
    build_request,
)
from tests.e2e.serverproc import ServerProcess

pytestmark = pytest.mark.timeout(90)

APP = "tests.apps.extensions:app"


@pytest.fixture(scope="module")
def server(module_servers) -> ServerProcess:
    return module_servers.start(APP, "--threads", "4")


def new_key() -> str:
    return uuid.uuid4().hex[:12]


def get(server: ServerProcess, target: str, timeout: float = 10.0) -> HTTPResponse:
    with RawConnection(server.address, timeout=timeout) as conn:
        conn.send(build_request("GET", target))
        return conn.read_final_response()[1]


def get_json(server: ServerProcess, target: str, timeout: float = 10.0) -> Any:
    response = get(server, target, timeout)
    assert response.status == 200, response
    return response.json()


def read_chunk(conn: RawConnection) -> bytes:
    """The next chunk of a chunked body (b"" for the last chunk, trailers consumed)."""
    line = conn._read_until(b"\r\n")[:-2]
    size = int(line.split(b";")[0], 16)
    if size == 0:
        while conn._read_until(b"\r\n") != b"\r\n":
            pass
        return b""
    data = conn._read_exact(size)
    assert conn._read_exact(2) == b"\r\n"
    return data


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def wait_parked(server: ServerProcess, key: str) -> None:
    assert server.wait_for_state("parked", key), f"the responder {key} was never parked"


def process_threads(server: ServerProcess) -> int:
    with open(f"/proc/{server.pid}/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads line")


def raise_open_files_limit(needed: int) -> None:
    """Raise this process's RLIMIT_NOFILE (servers started afterwards inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


# -- an asyncio client for thousands of connections ---------------------------------------------


async def async_response(reader: asyncio.StreamReader) -> Tuple[int, bytes]:
    """Read one response (Content-Length or chunked): (status, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"]))
    assert headers.get("transfer-encoding") == "chunked", head
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return status, body
        body += await reader.readexactly(size)
        await reader.readexactly(2)


async def open_many(
    address: Tuple[str, int], targets: List[str], batch: int = 250
) -> List[Tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """Open one connection per target and send a GET of it, `batch` at a time."""
    conns: List[Tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for start in range(0, len(targets), batch):
        part = targets[start : start + batch]
        opened = await asyncio.gather(*(asyncio.open_connection(*address) for _ in part))
        for (_, writer), target in zip(opened, part, strict=True):
            writer.write(build_request("GET", target))
        await asyncio.gather(*(writer.drain() for _, writer in opened))
        conns.extend(opened)
    return conns


async def close_all(conns: List[Tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    for _, writer in conns:
        writer.close()


# == 1. deferred responses =====================================================================


def test_deferred_response_answered_from_a_timer_thread(server):
    started = time.monotonic()
    response = get(server, "/defer/timer?delay=0.3&tail=!")
    assert time.monotonic() - started >= 0.3
    assert response.status == 200, response
    assert response.body == b"answered by a timer!"
    # finish() without a flush before: the whole body is known, so a Content-Length.
    assert response.framing == "length"
    assert response.header("Content-Length") == str(len(response.body))
    assert response.header("X-App-Thread") != response.header("X-Answer-Thread")


def test_deferred_response_finished_by_another_request(server):
    key = new_key()
    with server.connect() as waiting:
        waiting.send(build_request("GET", f"/defer/park?key={key}"))
        wait_parked(server, key)
        assert waiting.nothing_arrives(0.5), waiting.buf
        finisher = get(server, f"/defer/finish?key={key}&body=from-request-B")
        assert finisher.status == 200
        assert finisher.body == f"finished {key}".encode()
        _, response = waiting.read_final_response()
        assert response.status == 200
        assert response.body == b"from-request-B"
        assert response.header("Content-Length") == str(len(b"from-request-B"))
        # The connection carries on with the next request.
        waiting.send(build_request("GET", "/defer/count?group=none"))
        _, nxt = waiting.read_final_response()
        assert nxt.body == b"0"
    assert server.wait_for_state("on_close", key), "on_close runs after a normal finish too"


def test_deferred_response_from_an_asyncio_loop_in_another_thread(server):
    with server.connect() as conn:
        started = time.monotonic()
        conn.send(build_request("GET", "/defer/asyncio?delay=0.5"))
        head = conn.read_head()
        assert head.status == 200
        assert head.header("X-Answer-Thread") == "asyncio-loop"
        assert head.header_tokens("Transfer-Encoding") == ["chunked"]
        # flush() sent the first part on its own, before finish().
        assert read_chunk(conn) == b"from asyncio, "
        first_at = time.monotonic() - started
        rest = b""
        while True:
            chunk = read_chunk(conn)
            if not chunk:
                break
            rest += chunk
        finished_at = time.monotonic() - started
    assert rest == b"finished"
    assert first_at >= 0.5
    assert finished_at - first_at >= 0.4, "the end came with the first part, not 0.5 s later"


def test_flush_sends_at_once_and_finish_ends_the_chunked_body(server):
    key = new_key()
    with server.connect() as conn:
        conn.send(build_request("GET", f"/defer/stream?key={key}"))
        head = conn.read_head()
        assert head.status == 200
        assert head.header_tokens("Transfer-Encoding") == ["chunked"]
        assert head.header("Content-Length") is None
        assert read_chunk(conn) == b"first;"
        assert conn.nothing_arrives(0.3), conn.buf
        assert (
            get(server, f"/defer/finish?key={key}&start=0&write=second;&body=third").status == 200
        )
        assert read_chunk(conn) == b"second;"
        assert read_chunk(conn) == b"third"
        assert read_chunk(conn) == b""
        conn.send(build_request("GET", "/defer/count?group=none"))
        assert conn.read_final_response()[1].body == b"0"
    assert wait_until(
        lambda: any(line.startswith(f"{key} ") for line in server.state_lines("flushed"))
    )


def test_flush_callback_runs_once_the_bytes_are_on_the_wire(server):
    """16 MiB flushed to a client that has read only 1 MiB cannot be on the wire yet
    (the kernel buffers hold a few MiB): the callback must wait for the client."""
    key = new_key()
    size = 16 << 20
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.settimeout(10)
    sock.connect(server.address)
    try:
        sock.sendall(build_request("GET", f"/defer/stream?key={key}&size={size}"))
        received = 0
        while received < (1 << 20):
            data = sock.recv(65536)
            assert data
            received += len(data)
        time.sleep(1.0)
        flushed = [line for line in server.state_lines("flushed") if line.startswith(key)]
        assert flushed == [], "the flush callback ran before the bytes could be on the wire"
        resumed_at = time.time()
        while received < size:
            data = sock.recv(1 << 20)
            assert data
            received += len(data)
        assert wait_until(
            lambda: any(line.startswith(key) for line in server.state_lines("flushed"))
        ), "the flush callback never ran"
        line = next(line for line in server.state_lines("flushed") if line.startswith(key))
        assert float(line.split()[1]) >= resumed_at
        assert get(server, f"/defer/finish?key={key}&start=0&body=").status == 200
    finally:
        sock.close()


def test_flush_callback_given_inside_the_app_call(server):
    key = new_key()
    with server.connect() as conn:
        conn.send(build_request("GET", f"/defer/stream?key={key}&when=app&pause=0.2"))
        assert conn.read_head().status == 200
        assert read_chunk(conn) == b"first;"
        ran = wait_until(
            lambda: any(line.startswith(key) for line in server.state_lines("flushed")), 3.0
        )
        assert get(server, f"/defer/finish?key={key}&start=0&body=").status == 200
    assert ran, "the flush callback never ran although its bytes reached the client"


def test_client_that_left_is_reported_and_writing_raises(server):
    key = new_key()
    conn = server.connect()
    conn.send(build_request("GET", f"/defer/park?key={key}"))
    wait_parked(server, key)
    conn.close()
    assert server.wait_for_state("on_close", key), "on_close did not run when the client left"
    status = get_json(server, f"/defer/status?key={key}")
    assert status["closed"] is True
    for method in ("start_response", "write", "flush", "finish"):
        error = status[method]
        assert error is not None, f"{method} on a closed responder did not raise"
        assert error["client_disconnected"], error
        assert error["oserror"], error
    # Nothing else is lost: the server serves deferred responses as before.
    assert get(server, "/defer/timer?delay=0.05").status == 200


def test_responseless_timeout_answers_503_and_logs_it(servers):
    srv = servers.start(APP, "--responseless-timeout", "0.5")
    key = new_key()
    with srv.connect() as conn:
        started = time.monotonic()
        conn.send(build_request("GET", f"/defer/never?key={key}"))
        _, response = conn.read_final_response()
        elapsed = time.monotonic() - started
        assert response.status == 503, response
        assert 0.4 <= elapsed < 5.0
        assert "close" in response.header_tokens("Connection")
        assert conn.wait_closed(5.0)
    assert srv.wait_for_log(f'"GET /defer/never?key={key} HTTP/1.1" 503'), srv.log()[-2000:]
    assert srv.wait_for_state("on_close", key)
    status = get_json(srv, f"/defer/status?key={key}")
    assert status["closed"] is True
    assert status["write"]["client_disconnected"]
    # A deferred response that starts in time is not affected.
    assert get(srv, "/defer/timer?delay=0.1").status == 200


def test_responseless_timeout_logs_the_request_once(servers):
    srv = servers.start(APP, "--responseless-timeout", "0.3")
    key = new_key()
    assert get(srv, f"/defer/never?key={key}").status == 503
    line = f'"GET /defer/never?key={key} HTTP/1.1" 503'
    assert srv.wait_for_log(line)
    assert get(srv, "/defer/count?group=flush").status == 200
    time.sleep(1.5)  # the access log is written in batches
    assert srv.log().count(line) == 1, srv.log()[-2000:]


def test_inactivity_timeout_ends_a_started_deferred_response(servers):
    srv = servers.start(APP, "--inactivity-timeout", "1")
    key = new_key()
    with srv.connect(timeout=15) as conn:
        conn.send(build_request("GET", f"/defer/stream?key={key}"))
        started = time.monotonic()
        with pytest.raises(IncompleteResponse) as info:
            conn.read_response()
        elapsed = time.monotonic() - started
        assert info.value.response.body == b"first;"
        assert 0.8 <= elapsed < 8.0
    assert srv.wait_for_state("on_close", key)


@pytest.mark.timeout(60)
def test_a_thousand_pending_deferred_responses_with_four_threads(servers):
    count = 1000
    raise_open_files_limit(count * 2 + 500)
    srv = servers.start(APP, "--threads", "4")
    group = new_key()

    async def scenario() -> List[Tuple[int, bytes]]:
        conns = await open_many(srv.address, [f"/defer/many?group={group}"] * count)
        try:
            parked = await asyncio.to_thread(
                wait_until,
                lambda: get(srv, f"/defer/count?group={group}").body == str(count).encode(),
                30.0,
                0.1,
            )
            assert parked, get(srv, f"/defer/count?group={group}")
            # 1000 responses pending, and the server answers others at once, with a
            # handful of threads.
            started = time.monotonic()
            assert (await asyncio.to_thread(get, srv, "/defer/count?group=other")).body == b"0"
            assert time.monotonic() - started < 2.0
            assert process_threads(srv) < 16
            release = await asyncio.to_thread(get, srv, f"/defer/release?group={group}")
            assert release.body == str(count).encode()
            return await asyncio.wait_for(
                asyncio.gather(*(async_response(reader) for reader, _ in conns)), 45
            )
        finally:
            await close_all(conns)

    results = asyncio.run(scenario())
    assert [status for status, _ in results] == [200] * count
    assert sorted(int(body.split()[1]) for _, body in results) == list(range(count))
    assert srv.wait_for_state("released", f"{group} {count} 0")


# == 2. coroutine operations ===================================================================


def test_sleep_parks_the_generator_and_returns_an_empty_bytes(server):
    report = get_json(server, "/op/sleep?s=0.5")
    assert report["elapsed"] >= 0.5
    assert report["op_value"] == "b''"
    assert report["result"] is None
    assert report["exception"] is None
    assert report["timed_out"] is False


def test_sleeping_generators_do_not_hold_threads(servers):
    """20 generators sleep 1 s each on 2 threads: about 1 s, not the 10 s it would take
    if each held a thread while sleeping."""
    srv = servers.start(APP, "--threads", "2")
    results: List[Optional[Dict[str, Any]]] = [None] * 20

    def one(i: int) -> None:
        results[i] = get_json(srv, "/op/sleep?s=1", timeout=30)

    started = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(40)
    elapsed = time.monotonic() - started
    assert all(r is not None and r["elapsed"] >= 1.0 for r in results), results
    assert elapsed < 5.0, f"20 sleeps of 1 s on 2 threads took {elapsed:.1f} s"


def wait_waiting(server: ServerProcess, name: str, count: int, timeout: float = 10.0) -> None:
    """Until `count` generators entered unyoke.wait(name); then a moment for the
    server to register the last of them (it does right after the yield)."""
    assert wait_until(
        lambda: get_json(server, f"/op/waiting?name={name}")["waiting"] >= count, timeout, 0.05
    ), get_json(server, f"/op/waiting?name={name}")
    time.sleep(0.2)


def test_wait_resumes_on_a_signal_from_another_request(server):
    name = new_key()
    value = {"message": "hello", "list": [1, 2]}
    with server.connect() as conn:
        conn.send(build_request("GET", f"/op/wait?name={name}"))
        wait_waiting(server, name, 1)
        assert conn.nothing_arrives(0.3), conn.buf
        woken = get(server, f"/op/signal?name={name}&json={quote(json.dumps(value))}")
        assert woken.body == b"1"
        _, response = conn.read_final_response()
    report = response.json()
    assert report["result"] == value
    assert report["timed_out"] is False
    assert report["exception"] is None


def test_wait_resumes_on_a_signal_from_a_background_thread(server):
    name = new_key()
    with server.connect() as conn:
        conn.send(build_request("GET", f"/op/wait?name={name}&timeout=20"))
        wait_waiting(server, name, 1)
        assert (
            get(server, f"/op/signal_later?name={name}&value=from-thread&delay=0.3").status == 200
        )
        _, response = conn.read_final_response()
    report = response.json()
    assert report["result"] == "from-thread"
    assert report["timed_out"] is False
    assert report["elapsed"] >= 0.3
    # The timer thread records after signal() returned: possibly after the response came.
    assert wait_until(lambda: any(x.startswith(name) for x in server.state_lines("signalled")))
    line = next(line for line in server.state_lines("signalled") if line.startswith(name))
    assert line.split()[1] == "1"


def test_wait_times_out_with_none(server):
    name = new_key()
    report = get_json(server, f"/op/wait?name={name}&timeout=0.4")
    assert report["result"] is None
    assert report["timed_out"] is True
    assert report["elapsed"] >= 0.4
    # The timed-out waiter is no longer registered: a signal wakes nobody.
    assert get(server, f"/op/signal?name={name}&value=late").body == b"0"


def test_signal_wakes_every_waiter_of_its_name_and_only_them(server):
    name, other = new_key(), new_key()
    conns = [server.connect() for _ in range(4)]
    try:
        for conn in conns[:3]:
            conn.send(build_request("GET", f"/op/wait?name={name}&timeout=20"))
        conns[3].send(build_request("GET", f"/op/wait?name={other}&timeout=20"))
        wait_waiting(server, name, 3)
        wait_waiting(server, other, 1)
        assert get(server, f"/op/signal?name={name}&value=all").body == b"3"
        for conn in conns[:3]:
            assert conn.read_final_response()[1].json()["result"] == "all"
        assert conns[3].nothing_arrives(0.3)
        assert get(server, f"/op/signal?name={other}&value=one").body == b"1"
        assert conns[3].read_final_response()[1].json()["result"] == "one"
    finally:
        for conn in conns:
            conn.close()


def test_generator_parked_mid_response_resumes_on_the_same_response(server):
    name = new_key()
    with server.connect() as conn:
        conn.send(build_request("GET", f"/op/stream_wait?name={name}"))
        head = conn.read_head()
        assert head.status == 200
        assert read_chunk(conn) == b"before;"
        wait_waiting(server, name, 1)
        assert get(server, f"/op/signal?name={name}&value=v").body == b"1"
        assert read_chunk(conn) == b"after:v"
        assert read_chunk(conn) == b""


def test_client_leaving_a_parked_generator_closes_it_and_unregisters_it(server):
    name = new_key()
    conn = server.connect()
    conn.send(build_request("GET", f"/op/wait?name={name}&timeout=30"))
    wait_waiting(server, name, 1)
    conn.close()
    assert server.wait_for_state("op_closed", name), "the parked generator was not closed"
    assert get(server, f"/op/signal?name={name}&value=late").body == b"0"


def test_parked_generator_that_started_its_response_is_ended_by_inactivity_timeout(servers):
    """A park is no progress: a response that has started and then waits longer than
    inactivity_timeout is cut off like any stalled response."""
    srv = servers.start(APP, "--inactivity-timeout", "1")
    name = new_key()
    with srv.connect(timeout=15) as conn:
        conn.send(build_request("GET", f"/op/stream_wait?name={name}"))
        started = time.monotonic()
        with pytest.raises(IncompleteResponse) as info:
            conn.read_response()
        assert info.value.response.body == b"before;"
        assert 0.8 <= time.monotonic() - started < 8.0
    assert srv.wait_for_state("op_closed", name)


def test_responseless_timeout_also_ends_a_long_poll_that_sent_nothing(servers):
    """The head is sent with the first non-empty chunk: a generator waiting longer than
    responseless_timeout before any body is answered 503, and closed."""
    srv = servers.start(APP, "--responseless-timeout", "0.5")
    name = new_key()
    response = get(srv, f"/op/wait?name={name}&timeout=10")
    assert response.status == 503
    assert srv.wait_for_state("op_closed", name)


@pytest.mark.parametrize(
    ("mode", "result"),
    [
        ("ok", {"answer": 42, "computed_in": "future-worker_0"}),
        ("done", {"answer": 42, "computed_in": "future-worker_0"}),
        ("manual", "set by a timer"),
        ("asyncio", "awaited in asyncio-loop"),
    ],
)
def test_future_result(server, mode, result):
    report = get_json(server, f"/op/future?mode={mode}&delay=0.2")
    assert report["exception"] is None
    assert report["timed_out"] is False
    if isinstance(result, dict):
        assert report["result"]["answer"] == 42
        assert report["result"]["computed_in"].startswith("future-worker")
    else:
        assert report["result"] == result


def test_future_exception_is_given_as_a_triple(server):
    report = get_json(server, "/op/future?mode=raise&delay=0.1")
    assert report["result"] is None
    exception = report["exception"]
    assert exception["type"] == "LookupError"
    assert exception["value"].startswith("failed in future-worker")
    assert exception["is_instance"] is True
    assert "_work" in exception["traceback_frames"]


def test_operations_pass_through_real_middleware(server):
    """werkzeug's SharedDataMiddleware, wsgiref's validator, werkzeug's LintMiddleware and
    a hand-written middleware that re-yields every chunk, around a generator that sleeps
    and waits for a future."""
    response = get(server, "/mw/ops")
    assert response.status == 200, response
    slept, future = response.body.decode().rstrip(";").split(";")
    assert slept.startswith("slept ")
    assert float(slept.split()[1]) >= 0.3
    assert future == "future 42"
    # ReYield records when the server closes it, after the response.
    assert server.wait_for_state("reyield", "/mw/ops 4")
    # SharedDataMiddleware is really there: it serves a file itself.
    shared = get(server, "/mw/files/common.py")
    assert shared.status == 200
    assert b"What the test apps share" in shared.body


def test_operations_with_minimum_chunk_size(servers):
    srv = servers.start(APP, "--minimum-chunk-size", "4096")
    report = get_json(srv, "/op/sleep?s=0.5")
    assert report["elapsed"] >= 0.5
    assert report["result"] is None


@pytest.mark.timeout(60)
def test_two_thousand_long_poll_waiters_resume_on_one_signal(servers, record_property):
    count = 2000
    raise_open_files_limit(count * 2 + 500)
    srv = servers.start(APP, "--threads", "4")
    name = new_key()
    idle_rss, idle_threads = srv.rss_kib(), process_threads(srv)

    async def scenario() -> List[Tuple[int, bytes]]:
        conns = await open_many(srv.address, [f"/op/wait?name={name}&timeout=90"] * count)
        try:
            await asyncio.to_thread(wait_waiting, srv, name, count, 40.0)
            parked_rss, parked_threads = srv.rss_kib(), process_threads(srv)
            note = (
                f"{count} parked long-poll requests, --threads 4: server RSS "
                f"{idle_rss / 1024:.1f} MiB idle -> {parked_rss / 1024:.1f} MiB parked "
                f"({(parked_rss - idle_rss) / count:.1f} KiB per request); OS threads "
                f"{idle_threads} idle -> {parked_threads} parked"
            )
            print(note)
            record_property("parked_requests", note)
            assert parked_threads < 16, note
            started = time.monotonic()
            woken = await asyncio.to_thread(get, srv, f"/op/signal?name={name}&value=go")
            assert woken.body == str(count).encode()
            results = await asyncio.wait_for(
                asyncio.gather(*(async_response(reader) for reader, _ in conns)), 45
            )
            record_property("all_resumed_after_s", round(time.monotonic() - started, 3))
            return results
        finally:
            await close_all(conns)

    results = asyncio.run(scenario())
    assert [status for status, _ in results] == [200] * count
    reports = [json.loads(body) for _, body in results]
    assert all(r["result"] == "go" and r["timed_out"] is False for r in reports)


# == 3. post hooks =============================================================================


def hook_records(server: ServerProcess, ident: str) -> List[Dict[str, Any]]:
    records = [json.loads(line) for line in server.state_lines("hooks")]
    return [r for r in records if r["id"] == ident]


def test_posthook_is_called_with_the_environ_args_and_kwargs(server):
    ident = new_key()
    response = get(server, f"/hook/list?id={ident}")
    assert response.body == b"hooked list"
    assert wait_until(lambda: hook_records(server, ident)), "the post hook never ran"
    (hooked,) = hook_records(server, ident)
    assert hooked["args"] == ["list"]
    assert hooked["kw"] == "v"
    assert hooked["path"] == "/hook/list"


def test_posthook_runs_only_after_the_whole_response_is_sent(server):
    """A 32 MiB stream to a client that stops reading after 1 MiB: the hook must not run
    until the client has read (nearly) everything."""
    ident = new_key()
    size = 32 << 20
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.settimeout(10)
    sock.connect(server.address)
    try:
        sock.sendall(build_request("GET", f"/hook/stream?id={ident}&size={size}"))
        data = b""
        while len(data) < (1 << 20):
            piece = sock.recv(65536)
            assert piece
            data += piece
        time.sleep(1.0)
        assert hook_records(server, ident) == [], "the hook ran before the response was sent"
        resumed_at = time.time()
        tail = data[-5:]
        received = len(data)
        while not tail.endswith(b"\r\n0\r\n\r\n"):
            piece = sock.recv(1 << 20)
            assert piece, "the response ended early"
            received += len(piece)
            tail = (tail + piece)[-16:]
        assert received > size
    finally:
        sock.close()
    assert wait_until(lambda: hook_records(server, ident)), "the post hook never ran"
    (hooked,) = hook_records(server, ident)
    assert hooked["time"] >= resumed_at
    assert hooked["args"] == ["stream"]


def test_posthook_runs_after_a_client_disconnect_mid_stream(server):
    ident = new_key()
    with server.connect() as conn:
        conn.send(build_request("GET", f"/hook/stream?id={ident}&size={256 << 20}"))
        assert conn.read_head().status == 200
        conn.sock.recv(65536)
    assert wait_until(lambda: hook_records(server, ident)), "no post hook after a disconnect"
    assert hook_records(server, ident)[0]["path"] == "/hook/stream"


def test_failing_posthook_is_logged_and_harms_nothing(server):
    ident = new_key()
    with server.connect() as conn:
        conn.send(build_request("GET", f"/hook/raise?id={ident}"))
        _, response = conn.read_final_response()
        assert response.status == 200
        assert server.wait_for_log(f"RuntimeError: hook-failure-{ident}"), server.log()[-2000:]
        # The next hook still ran, and the same connection serves the next request.
        assert wait_until(lambda: hook_records(server, ident))
        assert hook_records(server, ident)[0]["args"] == ["after-failure"]
        conn.send(build_request("GET", "/defer/count?group=none"))
        assert conn.read_final_response()[1].body == b"0"
    log = server.log()
    assert "Error in a post hook" in log
    assert "in failing_hook" in log
    assert server.alive()


def test_posthook_of_a_deferred_response_runs_after_finish(server):
    ident = new_key()
    with server.connect() as conn:
        conn.send(build_request("GET", f"/hook/deferred?id={ident}"))
        wait_parked(server, ident)
        time.sleep(0.3)
        assert hook_records(server, ident) == []
        assert get(server, f"/defer/finish?key={ident}").status == 200
        assert conn.read_final_response()[1].body == f"finished {ident}".encode()
    assert wait_until(lambda: hook_records(server, ident))
    assert hook_records(server, ident)[0]["args"] == ["deferred"]


# == 4. 100 Continue with headers ===============================================================


def test_100_continue_carries_the_apps_headers(server):
    body = b"the body"
    head = build_request(
        "PUT",
        "/continue/read",
        [("Expect", "100-continue"), ("Content-Length", str(len(body)))],
    )
    with server.connect() as conn:
        conn.send(head)
        interim = conn.read_response()
        assert interim.status == 100, interim
        assert interim.headers == [
            ("Hundred-Continue-Header-1", "H1"),
            ("Hundred-Continue-Header-k", "Hk"),
        ]
        conn.send(body)
        _, final = conn.read_final_response()
    assert final.status == 200
    assert final.body == body


def test_no_100_continue_when_the_app_answers_without_reading(server):
    head = build_request(
        "PUT", "/continue/noread", [("Expect", "100-continue"), ("Content-Length", "100000")]
    )
    with server.connect() as conn:
        conn.send(head)
        interim, final = conn.read_final_response()
        assert interim == []
        assert final.status == 403
        assert final.body == b"answered without reading"
        assert b"Hundred-Continue" not in final.raw_head
        # The body was never asked for: the server closes rather than wait for it.
        assert conn.wait_closed(5.0)


# == 6. mounts ===================================================================================

MOUNTS = (
    "--mount",
    "/api=tests.apps.extensions:mount_api",
    "--mount",
    "/api/v2=tests.apps.extensions:mount_v2",
)

MOUNT_CASES = [
    ("/", "main", "", "/"),
    ("/apix", "main", "", "/apix"),
    ("/ap", "main", "", "/ap"),
    ("/api", "api", "/api", ""),
    ("/api/", "api", "/api", "/"),
    ("/api/users/7?x=1", "api", "/api", "/users/7"),
    ("/api/v2x", "api", "/api", "/v2x"),
    ("/api/v2", "v2", "/api/v2", ""),
    ("/api/v2/items", "v2", "/api/v2", "/items"),
]


@pytest.fixture(scope="module")
def mounted(module_servers) -> ServerProcess:
    return module_servers.start("tests.apps.extensions:mount_main", *MOUNTS)


@pytest.mark.parametrize(("target", "app", "script_name", "path_info"), MOUNT_CASES)
def test_mounts_longest_prefix_at_a_slash_boundary(mounted, target, app, script_name, path_info):
    who = get_json(mounted, target)
    assert (who["app"], who["SCRIPT_NAME"], who["PATH_INFO"]) == (app, script_name, path_info)


def test_mounts_keep_the_query_string(mounted):
    assert get_json(mounted, "/api/users?a=1&b=2")["QUERY_STRING"] == "a=1&b=2"


@pytest.mark.parametrize("header", ["Script-Name", "SCRIPT_NAME", "Script_Name"])
def test_a_request_header_never_sets_script_name(mounted, header):
    for target, app, script_name, path_info in (
        ("/apix", "main", "", "/apix"),
        ("/api/x", "api", "/api", "/x"),
    ):
        with mounted.connect() as conn:
            conn.send(build_request("GET", target, [(header, "/evil")]))
            who = conn.read_final_response()[1].json()
        assert (who["app"], who["SCRIPT_NAME"], who["PATH_INFO"]) == (app, script_name, path_info)


# -- the Python API: mounts, channel events, stats (in this process) ---------------------------


def in_process_server(app, **settings):
    import unyoke

    return unyoke.Server(app, bind=["127.0.0.1:0"], **settings)


def get_from(port: int, target: str, headers=None) -> HTTPResponse:
    with RawConnection(("127.0.0.1", port)) as conn:
        conn.send(build_request("GET", target, headers))
        return conn.read_final_response()[1]


@pytest.mark.timeout(60)
def test_mounts_keyword_with_a_root_mount():
    from tests.apps.extensions import mount_api, mount_main, mount_site

    with in_process_server(mount_main, mounts={"/": mount_site, "/api": mount_api}) as srv:
        assert get_from(srv.port, "/api/x").json()["app"] == "api"
        root = get_from(srv.port, "/apix").json()
        assert (root["app"], root["SCRIPT_NAME"], root["PATH_INFO"]) == ("site", "", "/apix")
        assert get_from(srv.port, "/").json()["app"] == "site"


def simple_app(environ, start_response):
    body = f"hello {environ['PATH_INFO']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


@pytest.mark.timeout(60)
def test_on_connect_and_on_disconnect_events():
    events: List[Tuple[str, Dict[str, Any]]] = []
    lock = threading.Lock()

    def on_connect(info):
        with lock:
            events.append(("open", dict(info)))

    def on_disconnect(info):
        with lock:
            events.append(("close", dict(info)))

    with in_process_server(simple_app, on_connect=on_connect, on_disconnect=on_disconnect) as srv:
        first = RawConnection(("127.0.0.1", srv.port))
        second = RawConnection(("127.0.0.1", srv.port))
        first_port, second_port = first.local_port, second.local_port
        ports = {first_port, second_port}
        for conn in (first, second):
            conn.send(build_request("GET", "/evented"))
            assert conn.read_final_response()[1].status == 200
        assert wait_until(lambda: len(events) == 2)
        assert all(kind == "open" for kind, _ in events)
        opened = {info["peer"][1]: info for _, info in events}
        assert set(opened) == ports
        for info in opened.values():
            assert info["peer"][0] == "127.0.0.1"
            assert tuple(info["local"]) == ("127.0.0.1", srv.port)
        assert len({info["id"] for info in opened.values()}) == 2
        first.close()
        assert wait_until(lambda: len(events) == 3), events
        kind, closed = events[2]
        assert kind == "close"
        assert closed == opened[first_port]
        # A connection set aside while idle (after a second) is still reported when it
        # closes, with the same description.
        assert wait_until(lambda: srv.stats()["idle_connections"] == 1)
        second.close()
        assert wait_until(lambda: len(events) == 4), events
        assert events[3] == ("close", opened[second_port])


@pytest.mark.timeout(60)
def test_idle_connection_is_set_aside_and_served_again():
    # After a second without a request, a keep-alive connection leaves its task and waits
    # on the engine's shelf (design.md, "Idle connections"); it is still open and served.
    with in_process_server(simple_app) as srv:
        with RawConnection(("127.0.0.1", srv.port)) as conn:
            conn.send(build_request("GET", "/one"))
            assert conn.read_response().status == 200
            assert srv.stats()["idle_connections"] == 0
            assert wait_until(lambda: srv.stats()["idle_connections"] == 1)
            assert srv.stats()["open_connections"] == 1
            for path in ("/two", "/three"):
                conn.send(build_request("GET", path))
                response = conn.read_response()
                assert response.status == 200
                assert srv.stats()["idle_connections"] == 0
        assert wait_until(lambda: srv.stats()["open_connections"] == 0)


@pytest.mark.timeout(60)
def test_stats_count_channels_requests_and_bytes():
    parked: List[Any] = []

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/park":
            responder = environ["unyoke.defer"]()
            parked.append(responder)
            return responder
        return simple_app(environ, start_response)

    with in_process_server(app) as srv:
        before = srv.stats()
        for key in (
            "open_connections",
            "requests_in_flight",
            "requests_total",
            "bytes_in",
            "bytes_out",
        ):
            assert isinstance(before[key], int), (key, before)
        assert before["open_connections"] == 0
        assert get_from(srv.port, "/one").status == 200
        assert get_from(srv.port, "/two").status == 200
        with RawConnection(("127.0.0.1", srv.port)) as conn:
            conn.send(build_request("GET", "/park"))
            assert wait_until(lambda: len(parked) == 1)
            during = srv.stats()
            assert during["open_connections"] == 1
            assert during["requests_in_flight"] == 1
            assert during["requests_total"] >= before["requests_total"] + 3
            assert during["bytes_in"] > before["bytes_in"]
            assert during["bytes_out"] > before["bytes_out"]
            parked[0].start_response("200 OK", [])
            parked[0].finish(b"done")
            assert conn.read_final_response()[1].body == b"done"
        assert wait_until(lambda: srv.stats()["open_connections"] == 0)
        after = srv.stats()
        assert after["requests_in_flight"] == 0
        assert after["bytes_out"] > during["bytes_out"]
