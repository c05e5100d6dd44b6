"""Runnable example applications: ``unyoke examples.hello:app`` from the repository root."""
