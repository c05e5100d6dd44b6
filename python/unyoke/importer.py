"""Find the application a ``MODULE:APP`` reference names."""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
from typing import Any, Callable, Dict, Mapping

from .errors import StartupError

#: The attribute looked up when a reference names only a module (Django's name for it).
DEFAULT_ATTRIBUTE = "application"


def import_app(reference: str, factory: bool = False) -> Callable[..., Any]:
    """Import ``module:attribute`` (``attribute`` may be dotted) and return the application.

    With ``factory``, the attribute is called with no arguments and its result is the
    application. A missing module or attribute, or an object that is not a WSGI callable,
    raises :class:`StartupError` saying which; an exception raised by the application's own
    code (while importing the module or in the factory) propagates with its traceback.
    """
    module_name, _, attribute = reference.partition(":")
    attribute = attribute or DEFAULT_ATTRIBUTE
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise StartupError(
                f"cannot import {module_name!r}: no module named {missing!r} "
                f"(looked in the current directory {os.getcwd()!r} and sys.path)"
            ) from None
        raise
    target: Any = module
    for depth, part in enumerate(attribute.split(".")):
        try:
            target = getattr(target, part)
        except AttributeError:
            owner = ".".join([module_name, *attribute.split(".")[:depth]])
            raise StartupError(
                f"{owner!r} has no attribute {part!r}{_suggest(target, part)}"
                f" (in {getattr(module, '__file__', None) or module_name})"
            ) from None
    if factory:
        if not callable(target):
            raise StartupError(f"{reference!r} is not callable, so it cannot be a factory")
        target = target()
        if not callable(target):
            raise StartupError(
                f"the factory {reference!r} returned {_short(target)}, not a WSGI application"
            )
        _check_signature(target, f"the application returned by {reference!r}")
    else:
        if not callable(target):
            raise StartupError(
                f"{reference!r} is {_short(target)}, not a WSGI application "
                "(a callable taking environ and start_response)"
            )
        _check_signature(target, repr(reference), factory_hint=True)
    return target  # type: ignore[no-any-return]


def _short(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"a {type(value).__name__} ({text})"


def _suggest(owner: Any, name: str) -> str:
    public = [n for n in dir(owner) if not n.startswith("_")]
    callables = [n for n in public if callable(getattr(owner, n, None))]
    close = difflib.get_close_matches(name, callables or public, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_signature(app: Any, what: str, factory_hint: bool = False) -> None:
    """Refuse a callable that cannot take ``(environ, start_response)``, when Python can tell."""
    try:
        signature = inspect.signature(app)
    except (TypeError, ValueError):
        return  # builtins and some C callables have no signature to check
    try:
        signature.bind({}, None)
    except TypeError:
        hint = ""
        if factory_hint:
            hint = "; if it builds and returns the application, add --factory"
        raise StartupError(
            f"{what} cannot be called as app(environ, start_response): its signature is "
            f"{signature}{hint}"
        ) from None


def resolve_mounts(mounts: Mapping[str, Any]) -> Dict[str, Callable[..., Any]]:
    """The ``mounts`` setting with every ``'module:app'`` string imported (see import_app)."""
    return {
        prefix: import_app(app) if isinstance(app, str) else app for prefix, app in mounts.items()
    }
