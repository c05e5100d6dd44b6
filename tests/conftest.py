"""Shared pytest fixtures: real unyoke server processes for the end-to-end tests.

`module_servers` starts servers that a whole test module shares (one process per
configuration keeps the suite fast on two cores); `servers` starts servers that
live for one test. Both stop their processes with SIGTERM (SIGKILL after 10 s) by
PID, and fail the test (at teardown) when the server died on its own or its log
shows a Rust panic: no peer input may crash the worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest

from tests.e2e.serverproc import ServerProcess, panic_lines


class Launcher:
    def __init__(self, base: Path):
        self.base = base
        self.started: List[ServerProcess] = []

    def start(
        self,
        app: str,
        *args: str,
        binds: Optional[Sequence[str]] = None,
        env: Optional[Dict[str, str]] = None,
    ) -> ServerProcess:
        workdir = self.base / f"server{len(self.started)}"
        server = ServerProcess(app, args, workdir=workdir, binds=binds, env=env)
        self.started.append(server)
        return server.start()

    def stop_all(self) -> List[str]:
        problems = []
        for server in self.started:
            died_on_its_own = server.process is not None and server.process.poll() is not None
            stopped_by_test = server.returncode is not None
            server.stop()
            log = server.log()
            if died_on_its_own and not stopped_by_test:
                problems.append(
                    f"server {server.command} died during the tests with exit code "
                    f"{server.returncode}; log tail:\n{log[-3000:]}"
                )
            panics = panic_lines(log)
            if panics:
                problems.append(f"server {server.command} panicked: {panics[:5]}")
        return problems


@pytest.fixture(scope="module")
def module_servers(tmp_path_factory: pytest.TempPathFactory):
    launcher = Launcher(tmp_path_factory.mktemp("module-servers"))
    yield launcher
    problems = launcher.stop_all()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def servers(tmp_path_factory: pytest.TempPathFactory):
    launcher = Launcher(tmp_path_factory.mktemp("servers"))
    yield launcher
    problems = launcher.stop_all()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)
