"""serve(), server() and Server() over a stand-in engine: sockets, signals, start and stop."""

from __future__ import annotations

import errno
import os
import signal
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import pytest
import unyoke
from unyoke import ConfigError, StartupError, UnknownSettingError
from unyoke.listeners import UNIX_SOCKET_MODE
from unyoke.signals import CHECK_SIGNALS_EVERY, ShutdownOnSignal

from .fake_engine import FakeEngine, send_signal_soon, stop_at_once


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hi"]


def connects(address: Any, family: int = socket.AF_INET) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(2)
        try:
            client.connect(address)
        except OSError as error:
            assert error.errno in (errno.ECONNREFUSED, errno.ENOENT), error
            return False
        return True


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


# Server: in the background -------------------------------------------------------------------


def test_server_port_zero(fake_engine: type[FakeEngine]) -> None:
    running = unyoke.Server(app, port=0, threads=2).start()
    try:
        assert running.running
        assert running.port is not None and running.port > 0
        assert running.addresses == [f"127.0.0.1:{running.port}"]
        assert running.url == f"http://127.0.0.1:{running.port}"
        assert connects(("127.0.0.1", running.port))  # listening as soon as start() returns
        (engine,) = fake_engine.instances
        assert engine.app is app
        assert engine.settings["threads"] == 2
        assert running.stats()["requests_total"] == 0
    finally:
        running.stop()
    assert not running.running
    assert engine.graces == [30.0]
    assert not connects(("127.0.0.1", running.port))
    running.stop()  # a second stop does nothing


def test_server_context_manager_and_grace(fake_engine: type[FakeEngine]) -> None:
    with unyoke.Server(app, port=0, graceful_timeout=2.5) as running:
        assert running.running
    assert fake_engine.instances[0].graces == [2.5]
    running2 = unyoke.Server(app, port=0).start()
    running2.stop(grace=0)
    assert fake_engine.instances[1].graces == [0]


def test_server_cannot_start_twice(fake_engine: type[FakeEngine]) -> None:
    with unyoke.Server(app, port=0) as running, pytest.raises(RuntimeError, match="already"):
        running.start()


def test_server_reraises_engine_error(fake_engine: type[FakeEngine]) -> None:
    fake_engine.run_error = RuntimeError("engine broke")
    running = unyoke.Server(app, port=0).start()
    with pytest.raises(RuntimeError, match="engine broke"):
        running.stop()


def test_server_not_started() -> None:
    server = unyoke.Server(app)
    with pytest.raises(RuntimeError, match="not started"):
        server.url  # noqa: B018
    with pytest.raises(RuntimeError, match="not started"):
        server.stats()
    server.stop()


def test_server_checks_settings_at_once() -> None:
    with pytest.raises(UnknownSettingError, match="did you mean 'port'"):
        unyoke.Server(app, prot=0)
    with pytest.raises(ConfigError, match="workers: Server\\(\\) runs in a thread"):
        unyoke.Server(app, workers=4)
    with pytest.raises(TypeError, match="app must be a WSGI application"):
        unyoke.Server("app")  # type: ignore[arg-type]


def test_server_port_in_use(fake_engine: type[FakeEngine]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StartupError, match="address already in use"):
            unyoke.Server(app, port=port).start()
    assert fake_engine.instances == []


def test_engine_refusal_releases_sockets(fake_engine: type[FakeEngine], tmp_path: Path) -> None:
    fake_engine.init_error = ValueError("bad settings")
    path = tmp_path / "s.sock"
    with pytest.raises(ValueError, match="bad settings"):
        unyoke.Server(app, bind=[f"unix:{path}", "127.0.0.1:0"]).start()
    assert not path.exists()


def test_several_binds(fake_engine: type[FakeEngine], tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    binds = ["127.0.0.1:0", f"unix:{path}"]
    if has_ipv6_loopback():
        binds.append("[::1]:0")
    with unyoke.Server(app, bind=binds) as running:
        kinds = [kind for _, kind, _ in fake_engine.instances[0].listeners]
        assert kinds == ["tcp", "unix"] + (["tcp"] if len(binds) == 3 else [])
        assert running.addresses[1] == f"unix:{path}"
        assert running.addresses[0] == f"127.0.0.1:{running.port}"
        assert stat.S_IMODE(os.stat(path).st_mode) == UNIX_SOCKET_MODE
        assert connects(str(path), socket.AF_UNIX)
        if len(binds) == 3:
            v6_port = int(running.addresses[2].rsplit(":", 1)[1])
            assert running.addresses[2] == f"[::1]:{v6_port}"
            assert connects(("::1", v6_port), socket.AF_INET6)
    assert not path.exists()


def test_host_name_binds_every_address_on_one_port(fake_engine: type[FakeEngine]) -> None:
    resolved = {info[4][0] for info in socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)}
    with unyoke.Server(app, host="localhost", port=0) as running:
        ports = {address.rsplit(":", 1)[1] for address in running.addresses}
        assert len(ports) == 1
        assert 1 <= len(running.addresses) <= len(resolved)
        assert fake_engine.instances[0].settings["server_name"] == "localhost"


def test_abstract_unix_socket(fake_engine: type[FakeEngine]) -> None:
    if not hasattr(socket, "AF_UNIX") or not os.uname().sysname == "Linux":
        pytest.skip("abstract unix sockets are Linux only")
    name = f"@unyoke-test-{os.getpid()}"
    with unyoke.Server(app, bind=f"unix:{name}") as running:
        assert running.addresses == [f"unix:{name}"]
        assert running.port is None
        assert running.url == f"unix:{name}"
        assert connects("\0" + name[1:], socket.AF_UNIX)


def test_stale_unix_socket_is_replaced(fake_engine: type[FakeEngine], tmp_path: Path) -> None:
    path = str(tmp_path / "stale.sock")
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(path)
    leftover.close()  # the file stays, nobody listens
    with unyoke.Server(app, bind=f"unix:{path}"):
        assert connects(path, socket.AF_UNIX)


def test_live_unix_socket_is_not_stolen(fake_engine: type[FakeEngine], tmp_path: Path) -> None:
    path = str(tmp_path / "live.sock")
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(path)
        live.listen()
        with pytest.raises(StartupError, match="another server is listening on it"):
            unyoke.Server(app, bind=f"unix:{path}").start()
        assert os.path.exists(path)


def test_regular_file_is_not_replaced(fake_engine: type[FakeEngine], tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("precious")
    with pytest.raises(StartupError, match="the path exists and is not a socket"):
        unyoke.Server(app, bind=f"unix:{path}").start()
    assert path.read_text() == "precious"


def test_inherited_fd(fake_engine: type[FakeEngine]) -> None:
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    port = listening.getsockname()[1]
    fd = listening.detach()
    with unyoke.Server(app, bind=f"fd://{fd}") as running:
        assert running.addresses == [f"127.0.0.1:{port}"]
        assert running.port == port
    with pytest.raises(OSError):
        os.fstat(fd)  # unyoke owned it and closed it


def test_inherited_fd_errors(fake_engine: type[FakeEngine], tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="fd://9999: "):
        unyoke.Server(app, bind="fd://9999").start()
    with socket.socket() as not_listening:
        fd = not_listening.fileno()
        with pytest.raises(StartupError, match=f"fd://{fd}: the socket is not listening"):
            unyoke.Server(app, bind=f"fd://{fd}").start()
        os.fstat(fd)  # still open: not ours to close after refusing it


# serve(): in the foreground, until a signal --------------------------------------------------


def test_serve_until_sigint(fake_engine: type[FakeEngine]) -> None:
    fake_engine.on_run = send_signal_soon(signal.SIGINT)
    unyoke.serve(app, port=0, graceful_timeout=3)
    (engine,) = fake_engine.instances
    assert engine.graces == [3.0]
    assert engine.settings["host"] == "127.0.0.1"


def test_signal_acts_without_waiting_for_python_handlers(
    fake_engine: type[FakeEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The wake-up fd watcher calls shutdown() from its own thread as the signal arrives,
    # without waiting for the main thread to run the handler. Here it is the only path.
    monkeypatch.setattr(ShutdownOnSignal, "_on_signal", lambda self, signum, frame: None)
    fake_engine.on_run = send_signal_soon(signal.SIGTERM)
    unyoke.serve(app, port=0)
    assert fake_engine.instances[0].shutdown_threads == ["unyoke signals"]


def test_signal_acts_through_the_handler_alone(
    fake_engine: type[FakeEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Should the watcher thread never get the GIL, the Python handler still does the job.
    monkeypatch.setattr(ShutdownOnSignal, "_saw_by_watcher", lambda self, signum: None)
    fake_engine.on_run = send_signal_soon(signal.SIGINT)
    unyoke.serve(app, port=0)
    assert fake_engine.instances[0].shutdown_threads == ["MainThread"]


def test_any_signal_has_the_engine_run_handlers_now(
    fake_engine: type[FakeEngine],
) -> None:
    # The engine checks for pending handlers only every CHECK_SIGNALS_EVERY; for every
    # signal that arrives, the watcher has it check at once (signal_arrived()), so that
    # the application's own handlers, here SIGUSR1's, are not late.
    handled: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: handled.append(signum))

    def hook(engine: FakeEngine) -> None:
        def send() -> None:
            os.kill(os.getpid(), signal.SIGUSR1)
            deadline = time.monotonic() + 10
            while engine.signals_arrived == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            engine.shutdown(1.0)

        threading.Timer(0.05, send).start()

    fake_engine.on_run = hook
    try:
        unyoke.serve(app, port=0)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    (engine,) = fake_engine.instances
    assert engine.signals_arrived >= 1
    assert engine.check_signals_every == CHECK_SIGNALS_EVERY
    assert handled == [signal.SIGUSR1]  # the fake engine lets the main thread run it


def test_each_signal_acts_once(fake_engine: type[FakeEngine]) -> None:
    fake_engine.on_run = send_signal_soon(signal.SIGTERM)
    unyoke.serve(app, port=0)
    time.sleep(0.1)  # both paths have seen the signal by now
    assert fake_engine.instances[0].graces == [30.0]


def test_signal_before_the_engine_exists() -> None:
    calls: list[float] = []
    signals = ShutdownOnSignal(grace=4.0)
    with signals:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert calls == []
        signals.attach(calls.append)
        assert calls == [4.0]
    assert signals.received == 1


def test_second_signal_stops_at_once(fake_engine: type[FakeEngine]) -> None:
    fake_engine.stop_after = 2
    fake_engine.on_run = send_signal_soon(signal.SIGTERM, times=2)
    unyoke.serve(app, "127.0.0.1", 0)
    assert fake_engine.instances[0].graces == [30.0, 0.0]


def test_serve_host_and_port_arguments(fake_engine: type[FakeEngine]) -> None:
    fake_engine.on_run = stop_at_once
    unyoke.serve(app, host="127.0.0.1", port=0, server_name="example.com")
    settings = fake_engine.instances[0].settings
    assert settings["server_name"] == "example.com"
    assert settings["port"] == 0


def test_serve_bad_settings() -> None:
    with pytest.raises(ConfigError, match="port: must be at most 65535"):
        unyoke.serve(app, port=99999)
    with pytest.raises(UnknownSettingError, match="eventlet's 'debug' is called"):
        unyoke.serve(app, debug=True)


# server(): eventlet's form, on a socket the caller made --------------------------------------


def test_server_on_a_socket(fake_engine: type[FakeEngine]) -> None:
    fake_engine.on_run = send_signal_soon(signal.SIGTERM)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    unyoke.server(sock, app, keepalive=False)
    (engine,) = fake_engine.instances
    assert engine.listeners[0][1:] == ("tcp", f"127.0.0.1:{port}")
    assert engine.settings["keepalive"] is False
    assert sock.fileno() == -1  # closed when the server exits, as eventlet does


def test_server_on_a_unix_socket(fake_engine: type[FakeEngine], tmp_path: Path) -> None:
    fake_engine.on_run = stop_at_once
    path = str(tmp_path / "u.sock")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(path)
        sock.listen()
        unyoke.server(sock, app)
    assert fake_engine.instances[0].listeners[0][1:] == ("unix", f"unix:{path}")
    assert fake_engine.instances[0].settings["server_name"] == "localhost"


def test_server_refuses_what_does_not_apply(fake_engine: type[FakeEngine]) -> None:
    with socket.socket() as sock:
        with pytest.raises(ConfigError, match=r"port: does not apply to server\(\)"):
            unyoke.server(sock, app, port=80)
        with pytest.raises(StartupError, match=r"not listening: call sock\.listen"):
            unyoke.server(sock, app)
    with pytest.raises(StartupError, match="the socket is closed"):
        unyoke.server(sock, app)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        with pytest.raises(StartupError, match="not a TCP or unix stream socket"):
            unyoke.server(udp, app)


# Start-up errors name the address and the fix -------------------------------------------------


def test_address_not_on_this_machine(fake_engine: type[FakeEngine]) -> None:
    with pytest.raises(StartupError) as caught:
        unyoke.Server(app, bind="192.0.2.1:8000").start()  # TEST-NET-1: never local
    assert str(caught.value) == (
        "cannot listen on 192.0.2.1:8000: address not available: no network interface of "
        "this machine has it"
    )


@pytest.mark.parametrize(
    ("code", "port", "reason"),
    [
        (errno.EACCES, 80, "permission denied (ports below 1024 need root or CAP_NET_BIND"),
        (errno.EACCES, 8080, "permission denied"),
        (errno.EADDRINUSE, 8080, "address already in use"),
        (errno.EMFILE, 8080, "Too many open files"),
    ],
)
def test_bind_error_messages(code: int, port: int, reason: str) -> None:
    from unyoke.listeners import _describe

    message = _describe(OSError(code, os.strerror(code)), f"0.0.0.0:{port}", port)
    assert message.startswith(f"cannot listen on 0.0.0.0:{port}: {reason}")


def test_mounts_keyword_takes_apps_and_references(fake_engine: type[FakeEngine]) -> None:
    with unyoke.Server(app, port=0, mounts={"/a": app, "/b": "examples.hello:app"}) as running:
        mounts = fake_engine.instances[0].settings["mounts"]
        assert mounts["/a"] is app
        assert mounts["/b"].__module__ == "examples.hello"
        assert running.settings["mounts"]["/b"] is mounts["/b"]


def test_mount_reference_not_found() -> None:
    with pytest.raises(StartupError, match="no module named 'no_such_module_xyz'"):
        unyoke.Server(app, port=0, mounts={"/a": "no_such_module_xyz:app"}).start()
