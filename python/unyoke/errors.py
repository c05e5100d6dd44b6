"""The two kinds of error a user of unyoke can cause, each with a message that says what to fix."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting has a value unyoke cannot use.

    ``setting`` is the setting's name (``"port"``), ``problem`` what is wrong with it;
    ``str(error)`` is ``"port: must be at most 65535, got 70000"``.
    """

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"{setting}: {problem}")


class UnknownSettingError(ConfigError, TypeError):
    """A keyword that is not a setting: a ``TypeError`` too, as Python raises for bad keywords."""


class StartupError(RuntimeError):
    """The server cannot start: an address cannot be bound, the application cannot be loaded."""
