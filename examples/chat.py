"""A long-polling chat room on unyoke's coroutine operations.

Run ``python -m unyoke examples.chat:app`` and open http://127.0.0.1:8000/ in two browser
windows, and talk. Each window keeps one request open on ``/poll``; that request's
generator yields ``environ['unyoke.wait']("chat", 25)`` and is parked without holding a
server thread, so thousands of open windows cost memory, not threads. Posting a message
calls ``environ['unyoke.signal']("chat", id)``, which resumes every parked poller at once;
each answers with the messages it has not seen.

From a shell::

    curl 'http://127.0.0.1:8000/poll?since=0'                   # waits up to 25 s
    curl -d 'name=ann&text=hello' http://127.0.0.1:8000/send     # ... and it answers

Routes: ``GET /`` the page (examples/static/chat.html), ``GET /poll?since=ID`` the messages
after ID (waits for one when there is none), ``POST /send`` (form fields ``name`` and
``text``) adds a message, ``GET /stats`` the number of parked pollers.
"""

from __future__ import annotations

import collections
import itertools
import json
import threading
import time
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List
from urllib.parse import parse_qs

#: The name pollers wait on and posters signal.
CHANNEL = "chat"
#: How long a poll waits for a message before answering with none (the page polls again).
POLL_TIMEOUT = 25.0
#: Messages kept for pollers that come back late.
HISTORY = 200
#: Longest name and message accepted, in characters.
MAX_NAME, MAX_TEXT = 40, 500

PAGE = Path(__file__).with_name("static") / "chat.html"

_lock = threading.Lock()
_ids = itertools.count(1)
_messages: Deque[Dict[str, Any]] = collections.deque(maxlen=HISTORY)
_waiting = 0

StartResponse = Callable[..., Any]


def messages_after(since: int) -> List[Dict[str, Any]]:
    with _lock:
        return [m for m in _messages if m["id"] > since]


def last_id() -> int:
    with _lock:
        return _messages[-1]["id"] if _messages else 0


def add_message(name: str, text: str) -> Dict[str, Any]:
    with _lock:
        message = {"id": next(_ids), "name": name, "text": text, "time": time.time()}
        _messages.append(message)
    return message


def poll(environ: Dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
    """The messages after ``since``; when there are none yet, park until a message is
    signalled or POLL_TIMEOUT passes (then answer with an empty list)."""
    global _waiting
    query = parse_qs(environ.get("QUERY_STRING", ""))
    try:
        since = int(query.get("since", ["0"])[0])
    except ValueError:
        since = 0
    start_response("200 OK", [("Content-Type", "application/json"), ("Cache-Control", "no-store")])
    new = messages_after(since)
    if not new:
        with _lock:
            _waiting += 1
        try:
            # Parks this generator (no thread is held) until signal(CHANNEL) or the timeout.
            yield environ["unyoke.wait"](CHANNEL, POLL_TIMEOUT)
        finally:
            with _lock:
                _waiting -= 1
        new = messages_after(since)
    yield json.dumps({"messages": new, "last": max([since, *(m["id"] for m in new)])}).encode()


def send(environ: Dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Add a message (form fields ``name`` and ``text``) and wake every poller."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    form = parse_qs(environ["wsgi.input"].read(min(length, 16384)).decode("utf-8", "replace"))
    name = form.get("name", ["anonymous"])[0].strip()[:MAX_NAME] or "anonymous"
    text = form.get("text", [""])[0].strip()[:MAX_TEXT]
    if not text:
        return respond(start_response, "400 Bad Request", {"error": "text is empty"})
    message = add_message(name, text)
    woken = environ["unyoke.signal"](CHANNEL, message["id"])
    return respond(start_response, "200 OK", {"id": message["id"], "woken": woken})


def respond(start_response: StartResponse, status: str, payload: Any) -> List[bytes]:
    body = json.dumps(payload).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def page(start_response: StartResponse) -> List[bytes]:
    body = PAGE.read_bytes()
    start_response(
        "200 OK",
        [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))],
    )
    return [body]


def app(environ: Dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The chat: routes by method and path."""
    method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
    if path == "/poll" and method == "GET":
        return poll(environ, start_response)
    if path == "/send" and method == "POST":
        return send(environ, start_response)
    if path == "/stats" and method == "GET":
        return respond(start_response, "200 OK", {"waiting": _waiting, "last": last_id()})
    if path in ("/", "/chat.html") and method in ("GET", "HEAD"):
        return page(start_response)
    return respond(start_response, "404 Not Found", {"error": f"no route {method} {path}"})


if __name__ == "__main__":
    import unyoke

    unyoke.serve(app)
