"""The smallest WSGI application: ``unyoke examples.hello:app``, then ``curl localhost:8000``."""

from __future__ import annotations

from typing import Any, Callable, Iterable

BODY = b"Hello, World!\n"


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Answer every request with a fixed plain-text body."""
    start_response(
        "200 OK",
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(BODY)))],
    )
    return [BODY]


if __name__ == "__main__":
    import unyoke

    unyoke.serve(app)
