"""The examples run as a person would run them (issue 3, part 8): the long-polling chat
(examples/chat.py) with real HTTP clients, the server-sent-events clock
(examples/clock_sse.py) with raw sockets and in headless Chromium, and every example of
docs/extensions.md as its `# run:` and `# try:` lines say.

Chromium is Debian's `chromium` package; the Chromium test is skipped when it is not
installed, except under CI (`CI` set), where it must run.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import pytest
import requests

from tests.e2e.rawhttp import HTTPResponse, RawConnection, build_request
from tests.e2e.serverproc import REPO_ROOT, ServerProcess, subprocess_env

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def chat(module_servers) -> ServerProcess:
    return module_servers.start("examples.chat:app", "--threads", "2")


@pytest.fixture(scope="module")
def clock(module_servers) -> ServerProcess:
    return module_servers.start("examples.clock_sse:app", "--threads", "2")


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


# -- the chat ---------------------------------------------------------------------------------


def chat_stats(chat: ServerProcess) -> Dict[str, int]:
    return requests.get(chat.url + "/stats", timeout=10).json()


def test_chat_page_is_served(chat):
    response = requests.get(chat.url + "/", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert "/poll?since=" in response.text
    assert "/send" in response.text


def test_chat_two_long_pollers_get_a_posted_message(chat):
    since = chat_stats(chat)["last"]
    waiting_before = chat_stats(chat)["waiting"]
    results: List[Optional[Any]] = [None, None]

    def poll(i: int) -> None:
        results[i] = requests.get(f"{chat.url}/poll?since={since}", timeout=30).json()

    pollers = [threading.Thread(target=poll, args=(i,)) for i in range(2)]
    for poller in pollers:
        poller.start()
    assert wait_until(lambda: chat_stats(chat)["waiting"] >= waiting_before + 2), chat_stats(chat)
    time.sleep(0.2)
    assert all(result is None for result in results), "a poller answered with nothing posted"
    sent = requests.post(
        f"{chat.url}/send", data={"name": "ann", "text": "hello, both"}, timeout=10
    )
    assert sent.status_code == 200
    assert sent.json()["woken"] == 2
    for poller in pollers:
        poller.join(20)
    for result in results:
        assert result is not None
        assert [(m["name"], m["text"]) for m in result["messages"]] == [("ann", "hello, both")]
        assert result["last"] == sent.json()["id"]


def test_chat_poll_answers_at_once_with_messages_already_there(chat):
    since = chat_stats(chat)["last"]
    httpx = pytest.importorskip("httpx")
    with httpx.Client(base_url=chat.url, timeout=10) as client:
        for text in ("one", "two"):
            assert client.post("/send", data={"name": "bob", "text": text}).status_code == 200
        started = time.monotonic()
        result = client.get("/poll", params={"since": since}).json()
        assert time.monotonic() - started < 2.0
    assert [m["text"] for m in result["messages"]] == ["one", "two"]


def test_chat_rejects_an_empty_message(chat):
    response = requests.post(f"{chat.url}/send", data={"name": "x", "text": "  "}, timeout=10)
    assert response.status_code == 400


# -- the server-sent-events clock -------------------------------------------------------------


def read_events(conn: RawConnection, count: int) -> List[Dict[str, str]]:
    """Read `count` SSE events (blank-line separated blocks with a data field) from the
    chunked body of an event stream whose head has been read."""
    events: List[Dict[str, str]] = []
    text = ""
    while len(events) < count:
        line = conn._read_until(b"\r\n")[:-2]
        size = int(line.split(b";")[0], 16)
        assert size > 0, "the stream ended early"
        text += conn._read_exact(size).decode("utf-8")
        assert conn._read_exact(2) == b"\r\n"
        while "\n\n" in text:
            block, text = text.split("\n\n", 1)
            fields: Dict[str, str] = {}
            for field in block.split("\n"):
                if field and not field.startswith(":"):
                    name, _, value = field.partition(":")
                    fields[name] = value.lstrip(" ")
            if "data" in fields:
                events.append(fields)
    return events


def test_clock_streams_one_event_a_second(clock):
    with clock.connect(timeout=10) as conn:
        conn.send(build_request("GET", "/events"))
        head = conn.read_head()
        assert head.status == 200
        assert head.header("Content-Type").startswith("text/event-stream")
        assert head.header_tokens("Transfer-Encoding") == ["chunked"]
        started = time.monotonic()
        events = read_events(conn, 3)
        elapsed = time.monotonic() - started
    assert [e["id"] for e in events] == ["1", "2", "3"]
    stamps = [datetime.strptime(e["data"], "%Y-%m-%d %H:%M:%S") for e in events]
    assert all(1 <= (b - a).total_seconds() <= 2 for a, b in itertools.pairwise(stamps)), stamps
    assert 1.0 <= elapsed < 6.0


def test_clock_stream_with_a_count_ends(clock):
    with clock.connect(timeout=10) as conn:
        conn.send(build_request("GET", "/events?count=2"))
        _, response = conn.read_final_response()
    assert response.framing == "chunked"
    assert response.body.decode().count("data: ") == 2


def test_clock_stops_writing_to_a_client_that_left(clock):
    """on_close removes the stream: the ticker's list empties after the client closes."""
    assert wait_until(lambda: clock_streams(clock) == 0, 10)
    conn = clock.connect(timeout=10)
    conn.send(build_request("GET", "/events"))
    assert conn.read_head().status == 200
    read_events(conn, 1)
    assert clock_streams(clock) == 1
    conn.close()
    assert wait_until(lambda: clock_streams(clock) == 0, 10), "the closed stream is still fed"


def clock_streams(clock: ServerProcess) -> int:
    return requests.get(clock.url + "/stats", timeout=10).json()["open_streams"]


def chromium_binary() -> Optional[str]:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.timeout(120)
def test_clock_page_receives_events_in_headless_chromium(clock):
    browser = chromium_binary()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="uy-chromium-") as profile:
        result = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-dev-shm-usage",
                f"--user-data-dir={profile}",
                # Virtual time stands still while the event stream is open: the page
                # finishes after 3 real events, well within the budget.
                "--virtual-time-budget=20000",
                "--dump-dom",
                f"{clock.url}/?count=3",
            ],
            capture_output=True,
            timeout=90,
            check=False,
        )
    dom = result.stdout.decode("utf-8", "replace")
    assert "<title>done</title>" in dom, (result.returncode, dom[-2000:], result.stderr[-2000:])
    events = [item.split(">", 1)[1].split("<", 1)[0] for item in dom.split('<li class="event"')[1:]]
    assert len(events) == 3, dom[-2000:]
    stamps = [datetime.strptime(e, "%Y-%m-%d %H:%M:%S") for e in events]
    assert all(1 <= (b - a).total_seconds() <= 2 for a, b in itertools.pairwise(stamps)), stamps
    assert '<p id="status">done; 3 events</p>' in dom
    assert clock.wait_for_log('"GET /events?count=3 HTTP/1.1" 200')


def test_examples_answer_json_404(chat):
    response = requests.get(chat.url + "/nowhere", timeout=10)
    assert response.status_code == 404
    assert json.loads(response.text)["error"].startswith("no route")


# -- the examples of docs/extensions.md ---------------------------------------------------------

DOCS = REPO_ROOT / "docs" / "extensions.md"


class DocExample(NamedTuple):
    name: str  # the file name, "deferred.py"
    code: str
    run: List[str]  # the command after "python", e.g. ["-m", "unyoke", "deferred:app"]
    tries: List[str]  # curl command lines
    expects: List[str]  # substrings of the responses (or of a script's output)
    logs: List[str]  # substrings of the server's log


def doc_examples() -> List[DocExample]:
    """Every ```python block of docs/extensions.md that starts with `# example: NAME.py`."""
    text = DOCS.read_text(encoding="utf-8")
    examples = []
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        first = block.split("\n", 1)[0]
        if not first.startswith("# example: "):
            continue
        name = first[len("# example: ") :].strip()

        def lines(tag: str, block: str = block) -> List[str]:
            return [m.strip() for m in re.findall(rf"^# {tag}: (.*)$", block, flags=re.M)]

        run = lines("run")
        command = shlex.split(run[0])[1:] if run else ["-m", "unyoke", f"{name[:-3]}:app"]
        examples.append(
            DocExample(name, block, command, lines("try"), lines("expect"), lines("log"))
        )
    return examples


def curl(address: Tuple[str, int], command: str) -> HTTPResponse:
    """Do what a `curl [-s] [-N] [-H 'h: v'] [-d data] URL` line asks, on `address`."""
    args = shlex.split(command)[1:]
    headers: List[Tuple[str, str]] = []
    body = b""
    url = ""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "-H":
            name, _, value = args[i + 1].partition(":")
            headers.append((name.strip(), value.strip()))
            i += 1
        elif arg == "-d":
            body = args[i + 1].encode()
            headers.append(("Content-Type", "application/x-www-form-urlencoded"))
            i += 1
        elif not arg.startswith("-"):
            url = arg
        i += 1
    target = re.sub(r"^https?://[^/]+", "", url) or "/"
    method = "POST" if body else "GET"
    with RawConnection(address, timeout=20) as conn:
        conn.send(build_request(method, target, headers, body))
        return conn.read_final_response(method)[1]


@pytest.mark.parametrize("example", doc_examples(), ids=lambda e: e.name)
def test_docs_extensions_examples_run(servers, tmp_path, example):
    (tmp_path / example.name).write_text(example.code, encoding="utf-8")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO_ROOT)])}
    if example.run[:2] != ["-m", "unyoke"]:
        # A script that runs its own server.
        result = subprocess.run(
            [sys.executable, *example.run],
            cwd=tmp_path,
            env=subprocess_env(env),
            capture_output=True,
            timeout=60,
            check=False,
        )
        output = result.stdout.decode() + result.stderr.decode()
        assert result.returncode == 0, output
        for expected in example.expects:
            assert expected in output, (expected, output)
        return
    srv = servers.start(example.run[2], *example.run[3:], env=env)
    responses: Dict[int, HTTPResponse] = {}
    errors: List[BaseException] = []

    def one(i: int, command: str) -> None:
        try:
            responses[i] = curl(srv.address, command)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = []
    for i, command in enumerate(example.tries):
        thread = threading.Thread(target=one, args=(i, command))
        thread.start()
        threads.append(thread)
        time.sleep(0.5)  # in the order the doc gives them (a waiter before its signal)
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert len(responses) == len(example.tries)
    for i, response in responses.items():
        assert 200 <= response.status < 300, (example.tries[i], response)
    bodies = "".join(r.body.decode("utf-8", "replace") for r in responses.values())
    for expected in example.expects:
        assert expected in bodies, (expected, bodies)
    for expected in example.logs:
        assert srv.wait_for_log(expected), (expected, srv.log()[-2000:])


def test_docs_have_examples():
    names = {e.name for e in doc_examples()}
    assert {"deferred.py", "operations.py", "posthooks.py", "mounted.py", "events.py"} <= names
