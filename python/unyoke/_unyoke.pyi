"""The Rust engine of unyoke (built by maturin from crates/unyoke-py)."""

from typing import Any, Callable, Dict, List, Tuple

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

    def run(self) -> None:
        """Serve until shutdown completes; re-raises an exception a signal handler raised."""

    def shutdown(self, grace: float = 30.0) -> None:
        """Stop accepting and let requests in flight finish for up to ``grace`` seconds.

        Thread-safe; returns at once. ``run()`` returns when shutdown completes.
        """

    def stats(self) -> Dict[str, int]:
        """open_connections, requests_in_flight, requests_total, bytes_in, bytes_out."""
