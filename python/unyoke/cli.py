"""The ``unyoke`` command: ``unyoke [options] MODULE:APP``.

Exit codes: 0 after a clean shutdown (SIGINT or SIGTERM), 2 for a usage error (a bad flag,
a bad setting), 1 when the server cannot start (the application cannot be loaded, an address
cannot be bound, the engine refuses). Those errors are one line on stderr, no traceback;
an exception raised by the application's own code while it is imported is shown with its
traceback, since that is where the fix is.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Any, Callable, Dict, Optional, Sequence

from . import config, importer, logs, serving, supervisor
from .errors import ConfigError, StartupError
from .listeners import open_listeners

PROG = "unyoke"

EPILOG = """\
examples:
  unyoke examples.hello:app
  unyoke mysite.wsgi:application --bind 0.0.0.0:8000 --bind unix:/run/mysite.sock
  unyoke 'myapp:create_app' --factory --threads 16 --no-access-log

Every setting is described in docs/settings.md; in Python they are the keyword
arguments of unyoke.serve(), unyoke.server() and unyoke.Server().
"""


def _version() -> str:
    from . import __version__

    return f"{PROG} {__version__} (Python {sys.version.split()[0]})"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: the application, ``--version``, and one flag per setting."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} [options] MODULE:APP",
        description="Serve a WSGI application with unyoke's Rust engine.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "app",
        metavar="MODULE:APP",
        help="the WSGI application: an importable module (the current directory comes first "
        f"on sys.path) and the name of the application in it; APP defaults to "
        f"'{importer.DEFAULT_ATTRIBUTE}'",
    )
    parser.add_argument("--version", action="version", version=_version())
    config.add_arguments(parser)
    return parser


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 1


def _flag_message(error: ConfigError) -> str:
    name = error.setting
    flag = config.flag_for(name) if name in config.BY_NAME else name
    return f"{flag}: {error.problem}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    try:
        arguments = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a usage error already printed
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        values = config.validate(config.settings_from_arguments(arguments), python=False)
        config.check_supported(values)
        config.check_app_reference(arguments.app)
    except ConfigError as error:
        return _usage_error(parser, _flag_message(error))
    except ValueError as error:
        return _usage_error(parser, str(error))

    logs.configure(values["log_level"])
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    if supervisor.needs_supervisor(values):
        return _supervise(arguments.app, values)
    try:
        app = importer.import_app(arguments.app, factory=values["factory"])
        values["mounts"] = importer.resolve_mounts(values["mounts"])
    except StartupError as error:
        return _fail(str(error))
    except KeyboardInterrupt:
        return 130
    except Exception:
        traceback.print_exc()
        return _fail(f"loading the application {arguments.app!r} failed (traceback above)")
    # logging.config.dictConfig() disables the loggers it is not told about, unyoke's among
    # them, unless disable_existing_loggers is False: keep ours, or errors would go unseen.
    logs.enable()
    try:
        serving.serve_listeners(app, open_listeners(values), values)
    except StartupError as error:
        return _fail(str(error))
    except KeyboardInterrupt:
        return 130
    except (ValueError, OSError, RuntimeError) as error:
        # The engine refused a setting or a socket; its message says which.
        return _fail(f"cannot start: {error}")
    return 0


def _supervise(reference: str, values: Dict[str, Any]) -> int:
    """Worker processes under a supervisor (supervisor.py); without ``preload`` each worker
    imports the application, so the supervisor never holds the application's code."""

    def import_app() -> Any:
        return importer.import_app(reference, factory=values["factory"])

    load_app: Callable[[], Any] = import_app
    if values["preload"]:
        try:
            app = import_app()
            values["mounts"] = importer.resolve_mounts(values["mounts"])
        except StartupError as error:
            return _fail(str(error))
        except Exception:
            traceback.print_exc()
            return _fail(f"loading the application {reference!r} failed (traceback above)")

        def preloaded() -> Any:
            return app

        load_app = preloaded
    logs.enable()
    try:
        listeners = open_listeners(values)
        return supervisor.Supervisor(load_app, listeners, values, preloaded=values["preload"]).run()
    except StartupError as error:
        return _fail(str(error))
    except KeyboardInterrupt:
        return 130


def _usage_error(parser: argparse.ArgumentParser, message: str) -> int:
    parser.print_usage(sys.stderr)
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2
