"""A server-sent-events clock on unyoke's deferred responses.

Run ``python -m unyoke examples.clock_sse:app`` and open http://127.0.0.1:8000/: the page
(examples/static/clock.html) listens with ``EventSource`` and shows the server's time,
once a second. Or, from a shell::

    curl -N http://127.0.0.1:8000/events            # one event a second, until Ctrl-C
    curl -N 'http://127.0.0.1:8000/events?count=3'  # three events, then the stream ends

``/events`` returns a responder (``environ['unyoke.defer']()``) at once, so no server
thread is held by an open stream. One ticker thread, shared by every client, writes
``data: <time>`` to each open responder and flushes it every second. When a client goes
away, its responder's ``on_close`` callback removes it from the ticker's list, and the
ticker stops once nobody listens.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional
from urllib.parse import parse_qs

PAGE = Path(__file__).with_name("static") / "clock.html"

StartResponse = Callable[..., Any]


class Stream:
    """One client's event stream: its responder and how many events it still wants."""

    def __init__(self, responder: Any, count: Optional[int]):
        self.responder = responder
        self.remaining = count
        self.sent = 0

    def send_tick(self, now: float) -> bool:
        """Write and flush one event; False when the stream is over (count reached, or
        the client left)."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        self.sent += 1
        try:
            self.responder.write(f"id: {self.sent}\ndata: {stamp}\n\n".encode())
            self.responder.flush()
            if self.remaining is not None:
                self.remaining -= 1
                if self.remaining <= 0:
                    self.responder.finish()
                    return False
        except OSError:  # unyoke._unyoke.ClientDisconnected: the client left meanwhile
            return False
        return True


class Ticker:
    """A thread that sends a tick to every stream at each whole second, while any is open."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: List[Stream] = []
        self._thread: Optional[threading.Thread] = None

    def add(self, stream: Stream) -> None:
        with self._lock:
            self._streams.append(stream)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sse-ticker", daemon=True)
                self._thread.start()

    def remove(self, stream: Stream) -> None:
        with self._lock:
            if stream in self._streams:
                self._streams.remove(stream)

    def open_streams(self) -> int:
        with self._lock:
            return len(self._streams)

    def _run(self) -> None:
        while True:
            time.sleep(1.0 - time.time() % 1.0)
            with self._lock:
                streams = list(self._streams)
                if not streams:
                    self._thread = None
                    return
            now = time.time()
            for stream in streams:
                if not stream.send_tick(now):
                    self.remove(stream)


ticker = Ticker()


def events(environ: Dict[str, Any], start_response: StartResponse) -> Any:
    """The event stream: a deferred response the ticker thread writes to."""
    query = parse_qs(environ.get("QUERY_STRING", ""))
    try:
        count: Optional[int] = int(query["count"][0]) if "count" in query else None
    except ValueError:
        count = None
    responder = environ["unyoke.defer"]()
    responder.start_response(
        "200 OK",
        [
            ("Content-Type", "text/event-stream; charset=utf-8"),
            ("Cache-Control", "no-store"),
        ],
    )
    # Sent now, so the browser knows at once that the stream is open.
    responder.write(b"retry: 2000\n: the clock ticks every second\n\n")
    responder.flush()
    stream = Stream(responder, count)
    responder.on_close(lambda: ticker.remove(stream))
    ticker.add(stream)
    return responder


def respond(start_response: StartResponse, status: str, ctype: str, body: bytes) -> List[bytes]:
    start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]


def app(environ: Dict[str, Any], start_response: StartResponse) -> Any:
    """The clock: the page at /, the event stream at /events, the number of open
    streams at /stats."""
    path = environ.get("PATH_INFO", "")
    if path == "/events":
        return events(environ, start_response)
    if path in ("/", "/clock.html"):
        return respond(start_response, "200 OK", "text/html; charset=utf-8", PAGE.read_bytes())
    if path == "/stats":
        body = f'{{"open_streams": {ticker.open_streams()}}}'.encode()
        return respond(start_response, "200 OK", "application/json", body)
    return respond(start_response, "404 Not Found", "text/plain", b"not found\n")


if __name__ == "__main__":
    import unyoke

    unyoke.serve(app)
