"""The Rust engine of unyoke (built by maturin from crates/unyoke-py)."""

from typing import Any, Callable, Dict, List, Optional, Tuple

class Engine:
    """A WSGI server engine: tokio listeners and connections, the application run from Python."""

    def __init__(
        self,
        app: Callable[..., Any],
        listeners: List[Tuple[int, str, str]],
        settings: Dict[str, Any],
    ) -> None:
        """Prepare to serve ``app`` on ``listeners``.

        ``listeners``: ``(fd, kind, display)`` of bound, listening sockets, ``kind`` being
        ``"tcp"`` or ``"unix"``; the engine ``dup()``s each fd. ``settings``: every setting of
        the table in unyoke.config, defaults filled in. Raises ValueError or OSError.
        """

    def run(self, check_signals_every: float) -> None:
        """Serve until shutdown completes; re-raises an exception a signal handler raised.

        Pending signal handlers run every ``check_signals_every`` seconds, and at once
        after :meth:`signal_arrived`.
        """

    def signal_arrived(self) -> None:
        """Have ``run()`` run pending signal handlers now. Thread-safe."""

    def shutdown(self, grace: float = 30.0) -> None:
        """Stop accepting and let requests in flight finish for up to ``grace`` seconds.

        Thread-safe; returns at once. ``run()`` returns when shutdown completes.
        """

    def stats(self) -> Dict[str, Any]:
        """Counters: open_connections, requests_in_flight, requests_total, bytes_in,
        bytes_out, threads, responses_by_class (6 ints: none sent, 1xx .. 5xx),
        duration_buckets, duration_bucket_bounds, duration_sum_seconds."""

    def running_calls(self) -> List[Tuple[float, str]]:
        """Application calls in progress as (seconds, request), longest first."""

class ClientDisconnected(OSError):
    """The client went away (or sent a malformed body) while the app read or wrote."""

class Input:
    """``environ['wsgi.input']``: the request body, streamed as it arrives."""

    def read(self, size: Optional[int] = None) -> bytes: ...
    def readline(self, size: Optional[int] = None) -> bytes: ...
    def readlines(self, hint: Optional[int] = None) -> List[bytes]: ...
    def __iter__(self) -> Input: ...
    def __next__(self) -> bytes: ...
    def readable(self) -> bool: ...
    def set_hundred_continue_response_headers(self, headers: List[Tuple[str, str]]) -> None:
        """Headers for the ``100 Continue`` line, sent on the first read of the body."""

class FileWrapper:
    """``wsgi.file_wrapper``: a file response, sent with sendfile(2) when possible."""

    def __init__(self, filelike: Any, block_size: int = 8192) -> None: ...
    def __iter__(self) -> FileWrapper: ...
    def __next__(self) -> bytes: ...
    def close(self) -> None: ...

class Responder:
    """A deferred response (``environ['unyoke.defer']()``), completed from any thread."""

    closed: bool
    def start_response(
        self, status: str, headers: List[Tuple[str, str]], exc_info: Any = None
    ) -> None: ...
    def write(self, data: bytes) -> None: ...
    def flush(self, callback: Optional[Callable[[], Any]] = None) -> None: ...
    def finish(self, data: Optional[bytes] = None) -> None: ...
    def on_close(self, func: Callable[[], Any]) -> None: ...

def defer() -> Responder:
    """Start a deferred response for the running request (``environ['unyoke.defer']``)."""

def sleep(seconds: float) -> bytes:
    """Park the running generator for ``seconds``; yield the returned ``b''``."""

def wait(name: str, timeout: Optional[float] = None) -> bytes:
    """Park the running generator until ``signal(name, value)`` or ``timeout``."""

def future(f: Any) -> bytes:
    """Park the running generator until the future ``f`` is done."""

def signal(name: str, value: Any = None) -> int:
    """Wake every request waiting on ``name`` (from any thread); returns how many."""
