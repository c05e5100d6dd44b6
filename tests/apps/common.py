"""What the test apps share: a state directory the test can read, small response helpers.

The server process is started with UNYOKE_TEST_STATE_DIR set; an app appends lines
to `<state dir>/<kind>.log` (one line per event, written in one append) so the test
process can see what happened inside the server: which requests reached the app,
which iterables were closed, what an exception looked like.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple
from urllib.parse import parse_qs

StartResponse = Callable[..., Any]
Environ = Dict[str, Any]

_lock = threading.Lock()


def state_dir() -> Optional[str]:
    return os.environ.get("UNYOKE_TEST_STATE_DIR")


def record(kind: str, line: str) -> None:
    """Append one line to `<state dir>/<kind>.log` (no-op without a state dir)."""
    directory = state_dir()
    if not directory:
        return
    data = (line.replace("\n", "\\n") + "\n").encode("utf-8")
    with _lock:
        fd = os.open(os.path.join(directory, f"{kind}.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def record_call(environ: Environ) -> None:
    target = environ.get("RAW_URI") or environ.get("PATH_INFO", "")
    record("calls", f"{environ.get('REQUEST_METHOD')} {target}")


def query(environ: Environ) -> Dict[str, str]:
    """The query string as a dict (last value wins)."""
    parsed = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    return {key: values[-1] for key, values in parsed.items()}


def jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (tuple, list)):
        return [jsonable(v) for v in value]
    return repr(value)


def environ_summary(environ: Environ) -> Dict[str, Any]:
    """Every environ key with a JSON-safe value, plus the types of the wsgi.* values."""
    summary = {key: jsonable(value) for key, value in environ.items()}
    summary["__types__"] = {key: type(value).__name__ for key, value in environ.items()}
    summary["__wsgi_version_repr__"] = repr(environ.get("wsgi.version"))
    return summary


def json_response(
    start_response: StartResponse,
    payload: Any,
    status: str = "200 OK",
    headers: Iterable[Tuple[str, str]] = (),
) -> List[bytes]:
    body = json.dumps(payload, sort_keys=True).encode("utf-8")
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            *headers,
        ],
    )
    return [body]


def text_response(
    start_response: StartResponse, text: bytes, status: str = "200 OK"
) -> List[bytes]:
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(text)))])
    return [text]


def pattern_bytes(size: int, seed: int = 0) -> bytes:
    """`size` deterministic pseudo-random bytes (the tests compute the same)."""
    import random

    return random.Random(f"{seed}-{size}").randbytes(size)
