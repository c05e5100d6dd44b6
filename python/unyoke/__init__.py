"""unyoke: an event-driven WSGI server whose engine is written in Rust.

``serve(app, host=..., port=..., **settings)`` blocks until SIGINT or SIGTERM;
``server(sock, app, **settings)`` serves on a socket you bound (as eventlet.wsgi does);
``Server(app, **settings)`` runs in a background thread until ``.stop()``.
The settings are listed in docs/settings.md (and by ``unyoke --help``).
"""

from __future__ import annotations

from importlib import metadata as _metadata
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, StartupError, UnknownSettingError

if TYPE_CHECKING:
    from .serving import Server, WSGIApp, serve, server

try:
    __version__: str = _metadata.version("unyoke")
except _metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "ConfigError",
    "Server",
    "StartupError",
    "UnknownSettingError",
    "WSGIApp",
    "__version__",
    "serve",
    "server",
    "signal",
]

_SERVING = ("Server", "WSGIApp", "serve", "server")
# Coroutine-operation helpers usable outside a request (e.g. `unyoke.signal` from a
# background thread), from the extension module.
_EXTENSION = ("signal",)


def __getattr__(name: str) -> Any:
    # The API is imported on first use, so that `python -m unyoke.config` (and anything else
    # that needs only the settings) does not load unyoke.config twice.
    if name in _SERVING:
        from . import serving

        return getattr(serving, name)
    if name in _EXTENSION:
        from . import _unyoke

        return getattr(_unyoke, name)
    raise AttributeError(f"module 'unyoke' has no attribute {name!r}")
