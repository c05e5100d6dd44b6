"""Unit tests run from a fresh clone too: without an install, import unyoke from python/."""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from typing import Iterator

import pytest

if importlib.util.find_spec("unyoke") is None:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "python"))

from .fake_engine import FakeEngine


@pytest.fixture
def fake_engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeEngine]]:
    """Replace the Rust engine by FakeEngine for the test."""
    from unyoke import serving

    monkeypatch.setattr(FakeEngine, "instances", [])
    monkeypatch.setattr(FakeEngine, "on_run", None)
    monkeypatch.setattr(FakeEngine, "init_error", None)
    monkeypatch.setattr(FakeEngine, "run_error", None)
    monkeypatch.setattr(FakeEngine, "stop_after", 1)
    monkeypatch.setattr(serving, "engine_class", lambda: FakeEngine)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield FakeEngine
    for sig, handler in handlers.items():
        assert signal.getsignal(sig) == handler, "signal handlers were not restored"
    assert signal.set_wakeup_fd(-1) == -1, "the signal wake-up fd was not restored"
