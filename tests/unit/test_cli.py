"""The command line: every flag form, --help, --version, and the errors a user can make."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any, Iterator, List

import pytest
from unyoke import cli, config

from .fake_engine import FakeEngine, send_signal_soon, stop_at_once


def parse(*argv: str) -> dict[str, Any]:
    """The settings the command line gives (only those given), validated."""
    arguments = cli.build_parser().parse_args([*argv, "pkg:app"])
    return config.settings_from_arguments(arguments)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# Parsing --------------------------------------------------------------------------------------


def test_nothing_given_means_nothing_set() -> None:
    assert parse() == {}


def test_every_setting_has_a_flag() -> None:
    parser = cli.build_parser()
    flags = {flag for action in parser._actions for flag in action.option_strings}
    for setting in config.SETTINGS:
        if not setting.cli:
            assert config.flag_for(setting.name) not in flags, setting.name
            continue
        assert config.flag_for(setting.name) in flags, setting.name
        if setting.kind == "bool":
            assert "--no-" + setting.flag[2:] in flags


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--port", "9000"], {"port": 9000}),
        (["--port=0"], {"port": 0}),
        (["--host", "::1"], {"host": "::1"}),
        (["--threads", "8"], {"threads": 8}),
        (["--max-request-body-size", "1_000_000"], {"max_request_body_size": 1000000}),
        (["--header-timeout", "2.5"], {"header_timeout": 2.5}),
        (["--keepalive-timeout", "1"], {"keepalive_timeout": 1.0}),
        (["--max-http-version", "HTTP/1.0"], {"max_http_version": "HTTP/1.0"}),
        (["--log-level", "warning"], {"log_level": "warning"}),
        (["--log-format", "%(status_code)s"], {"log_format": "%(status_code)s"}),
        (["--identity", "me"], {"identity": "me"}),
        (["--server-name", "example.com"], {"server_name": "example.com"}),
        (["--url-scheme", "https"], {"url_scheme": "https"}),
    ],
)
def test_values(argv: List[str], expected: dict[str, Any]) -> None:
    assert parse(*argv) == expected
    config.validate(expected, python=False)


@pytest.mark.parametrize("setting", [s for s in config.SETTINGS if s.kind == "bool"])
def test_booleans_have_both_spellings(setting: config.Setting) -> None:
    name = setting.name
    assert parse(setting.flag) == {name: True}
    assert parse("--no-" + setting.flag[2:]) == {name: False}
    assert parse(setting.flag, "--no-" + setting.flag[2:]) == {name: False}  # the last one wins


def test_bind_every_form_repeated() -> None:
    forms = ["127.0.0.1:8000", "[::1]:8000", "localhost:0", "unix:/tmp/u.sock", "fd://3"]
    argv = [arg for form in forms for arg in ("--bind", form)]
    given = parse(*argv)
    assert given == {"bind": forms}
    assert config.validate(given)["bind"] == forms


def test_environ_repeated() -> None:
    given = parse("--environ", "A=1", "--environ", "b.c=x=y", "--environ", "EMPTY=")
    assert given == {"environ": {"A": "1", "b.c": "x=y", "EMPTY": ""}}


def test_mount_repeated() -> None:
    given = parse("--mount", "/api=pkg.api:app", "--mount", "/=site:application")
    assert given == {"mounts": {"/api": "pkg.api:app", "/": "site:application"}}
    config.validate(given)


def test_networks_comma_separated_and_repeated() -> None:
    given = parse("--origins", "10.0.0.0/8,127.0.0.1", "--origins", "::1")
    assert config.validate(given)["origins"] == ["10.0.0.0/8", "127.0.0.1", "::1"]
    given = parse("--forwarded-allow-ips", "127.0.0.1")
    assert config.validate(given)["forwarded_allow_ips"] == ["127.0.0.1"]


def test_factory_flag() -> None:
    assert parse("--factory") == {"factory": True}


# Usage errors: exit status 2, one line saying which flag ------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "abc"], "argument --port: expected a whole number, got 'abc'"),
        (["--port", "70000"], "--port: must be at most 65535, got 70000"),
        (["--threads", "0"], "--threads: must be at least 1, got 0"),
        (["--max-request-body-size", "1.5"], "expected a whole number of bytes, got '1.5'"),
        (["--header-timeout", "soon"], "expected a number of seconds, got 'soon'"),
        (["--header-timeout", "nan"], "expected a number of seconds, got 'nan'"),
        (["--header-timeout", "inf"], "expected a number of seconds, got 'inf'"),
        (["--header-timeout", "-1"], "--header-timeout: must be at least 0.001 seconds"),
        (["--max-http-version", "HTTP/2"], "--max-http-version: expected one of HTTP/1.1"),
        (["--log-level", "loud"], "--log-level: expected one of debug"),
        (["--log-format", "%(nope)s"], "--log-format: unknown key 'nope'"),
        (["--bind", "localhost"], "--bind: missing port in 'localhost'"),
        (["--bind", "::1:80"], "--bind: write an IPv6 address in brackets: [::1]:80"),
        (["--bind", "unix:"], "--bind: missing path"),
        (["--environ", "NOVALUE"], "--environ: expected KEY=VALUE, got 'NOVALUE'"),
        (["--environ", "=x"], "--environ: expected KEY=VALUE, got '=x'"),
        (["--mount", "api=pkg:app"], "--mount: a mount prefix must be a path starting with '/'"),
        (["--mount", "/api"], "--mount: expected PREFIX=MODULE:APP, got '/api'"),
        (["--workers", "many"], "--workers: expected a whole number of processes"),
        (["--workers", "-1"], "--workers: must be at least 0"),
        (["--metrics", "unix:/x"], "--metrics: expected HOST:PORT"),
        (["--origins", "10.0.0.0/8,nowhere"], "--origins: 'nowhere' is not an IP network"),
        (["--forwarded-allow-ips", "1.2.3.4/40"], "--forwarded-allow-ips: '1.2.3.4/40' is not"),
        (["--ca-certs", "/etc/hostname"], "--ca-certs: needs certfile and keyfile"),
        (["--on-connect", "x:y"], "unrecognized arguments: --on-connect"),
        (["--certfile", "/nonexistent.pem"], "--certfile: needs keyfile too"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--keepalive=yes"], "ignored explicit argument 'yes'"),
    ],
)
def test_usage_errors(capsys: pytest.CaptureFixture[str], argv: List[str], message: str) -> None:
    code, _, err = run(capsys, *argv, "pkg:app")
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert err.startswith("usage: unyoke")


def test_missing_app(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys)
    assert code == 2
    assert "the following arguments are required: MODULE:APP" in err


@pytest.mark.parametrize("reference", ["not a module", "pkg:", "pkg:1app", ":app", "a..b:app"])
def test_bad_app_reference(capsys: pytest.CaptureFixture[str], reference: str) -> None:
    code, _, err = run(capsys, reference)
    assert code == 2
    assert "expected MODULE:APP" in err


def test_help_lists_every_setting_with_unit_and_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    flat = " ".join(out.split())
    for setting in config.SETTINGS:
        if not setting.cli:
            continue
        assert config.flag_for(setting.name) in out, setting.name
        assert " ".join(f"default {setting.default_text()}".split()) in flat, setting.name
        if setting.unit:
            assert f"[{setting.unit};" in flat, setting.name
    assert "--version" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from unyoke import __version__

    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.startswith(f"unyoke {__version__} (Python ")


# Start-up errors: exit status 1, one line saying what to fix --------------------------------


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working directory to write application modules into (cli.main adds it to sys.path)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    modules = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - modules:
        del sys.modules[name]


def write_module(directory: Path, source: str) -> str:
    """Write a module with a unique name; return the name."""
    name = "app_" + uuid.uuid4().hex[:8]
    (directory / f"{name}.py").write_text(textwrap.dedent(source))
    return name


HELLO = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hi"]

def create_app():
    return app

not_callable = "a string"

def no_arguments():
    return app

def returns_string():
    return "x"
"""


def test_module_not_found(capsys: pytest.CaptureFixture[str], app_dir: Path) -> None:
    code, _, err = run(capsys, "no_such_module_xyz:app")
    assert code == 1
    assert "cannot import 'no_such_module_xyz': no module named 'no_such_module_xyz'" in err
    assert str(app_dir) in err
    assert "Traceback" not in err


def test_package_not_found(capsys: pytest.CaptureFixture[str], app_dir: Path) -> None:
    code, _, err = run(capsys, "no_such_pkg_xyz.wsgi:application")
    assert code == 1
    assert "no module named 'no_such_pkg_xyz'" in err


def test_attribute_not_found(capsys: pytest.CaptureFixture[str], app_dir: Path) -> None:
    module = write_module(app_dir, HELLO)
    code, _, err = run(capsys, f"{module}:ap")
    assert code == 1
    assert f"'{module}' has no attribute 'ap'; did you mean 'app'?" in err
    assert "Traceback" not in err


def test_default_attribute_is_application(
    capsys: pytest.CaptureFixture[str], app_dir: Path
) -> None:
    module = write_module(app_dir, HELLO)
    code, _, err = run(capsys, module)
    assert code == 1
    assert f"'{module}' has no attribute 'application'" in err


def test_not_callable(capsys: pytest.CaptureFixture[str], app_dir: Path) -> None:
    module = write_module(app_dir, HELLO)
    code, _, err = run(capsys, f"{module}:not_callable")
    assert code == 1
    assert f"'{module}:not_callable' is a str ('a string'), not a WSGI application" in err


def test_factory_without_flag(capsys: pytest.CaptureFixture[str], app_dir: Path) -> None:
    module = write_module(app_dir, HELLO)
    code, _, err = run(capsys, f"{module}:no_arguments")
    assert code == 1
    assert "cannot be called as app(environ, start_response)" in err
    assert "add --factory" in err


def test_factory_returning_junk(capsys: pytest.CaptureFixture[str], app_dir: Path) -> None:
    module = write_module(app_dir, HELLO)
    code, _, err = run(capsys, f"{module}:returns_string", "--factory")
    assert code == 1
    assert "returned a str ('x'), not a WSGI application" in err


def test_import_error_inside_the_app_shows_its_traceback(
    capsys: pytest.CaptureFixture[str], app_dir: Path
) -> None:
    module = write_module(app_dir, "import no_such_dependency_xyz\napp = None\n")
    code, _, err = run(capsys, f"{module}:app")
    assert code == 1
    assert "Traceback" in err
    assert "No module named 'no_such_dependency_xyz'" in err
    assert f"loading the application '{module}:app' failed (traceback above)" in err


def test_exception_in_app_module(capsys: pytest.CaptureFixture[str], app_dir: Path) -> None:
    module = write_module(app_dir, "raise RuntimeError('boom at import')\n")
    code, _, err = run(capsys, f"{module}:app")
    assert code == 1
    assert "RuntimeError: boom at import" in err


def test_port_in_use(
    capsys: pytest.CaptureFixture[str], app_dir: Path, fake_engine: type[FakeEngine]
) -> None:
    module = write_module(app_dir, HELLO)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run(capsys, f"{module}:app", "--port", str(port))
    assert code == 1
    assert f"unyoke: error: cannot listen on 127.0.0.1:{port}: address already in use" in err
    assert "Traceback" not in err
    assert fake_engine.instances == []


def test_unix_socket_in_missing_directory(
    capsys: pytest.CaptureFixture[str], app_dir: Path, fake_engine: type[FakeEngine]
) -> None:
    module = write_module(app_dir, HELLO)
    path = app_dir / "missing" / "app.sock"
    code, _, err = run(capsys, f"{module}:app", "--bind", f"unix:{path}")
    assert code == 1
    assert f"cannot listen on unix:{path}: no such directory: '{path.parent}'" in err


def test_unresolvable_host(
    capsys: pytest.CaptureFixture[str], app_dir: Path, fake_engine: type[FakeEngine]
) -> None:
    module = write_module(app_dir, HELLO)
    code, _, err = run(capsys, f"{module}:app", "--host", "no-such-host.invalid")
    assert code == 1
    assert "cannot resolve host 'no-such-host.invalid'" in err


def test_engine_missing(
    capsys: pytest.CaptureFixture[str], app_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "unyoke._unyoke", None)  # makes the import fail
    module = write_module(app_dir, HELLO)
    code, _, err = run(capsys, f"{module}:app", "--bind", f"unix:{app_dir}/s.sock")
    assert code == 1
    assert "the unyoke engine (the Rust extension unyoke._unyoke) is not built" in err
    assert "make install" in err
    assert not (app_dir / "s.sock").exists()


@pytest.mark.parametrize("kind", [ValueError, OSError, RuntimeError])
def test_engine_refuses(
    capsys: pytest.CaptureFixture[str],
    app_dir: Path,
    fake_engine: type[FakeEngine],
    kind: type[Exception],
) -> None:
    fake_engine.init_error = kind("threads: too many for this machine")
    module = write_module(app_dir, HELLO)
    code, _, err = run(capsys, f"{module}:app", "--bind", f"unix:{app_dir}/s.sock")
    assert code == 1
    assert "unyoke: error: cannot start: threads: too many for this machine" in err
    assert "Traceback" not in err
    assert not (app_dir / "s.sock").exists()


def test_logging_config_of_the_app_does_not_silence_unyoke(
    capsys: pytest.CaptureFixture[str],
    app_dir: Path,
    fake_engine: type[FakeEngine],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="unyoke")
    fake_engine.on_run = stop_at_once
    module = write_module(
        app_dir,
        # What logging.config.dictConfig() does to loggers it is not told about:
        HELLO + "\nimport logging\nlogging.getLogger('unyoke').disabled = True\n",
    )
    code, _, err = run(capsys, f"{module}:app", "--port", "0")
    assert code == 0, err
    assert not logging.getLogger("unyoke").disabled
    assert "unyoke listening on" in caplog.text


# Serving ----------------------------------------------------------------------------------------


def test_serves_until_shut_down(
    capsys: pytest.CaptureFixture[str],
    app_dir: Path,
    fake_engine: type[FakeEngine],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="unyoke")
    fake_engine.on_run = stop_at_once
    module = write_module(app_dir, HELLO)
    code, _, err = run(capsys, f"{module}:create_app", "--factory", "--port", "0", "--threads", "3")
    assert code == 0, err
    (engine,) = fake_engine.instances
    assert engine.ran
    assert engine.app.__name__ == "app"  # the factory was called
    assert set(engine.settings) == {s.name for s in config.SETTINGS}
    assert engine.settings["threads"] == 3
    assert engine.settings["server_name"] == "127.0.0.1"
    ((_, kind, display),) = engine.listeners
    assert kind == "tcp" and display.startswith("127.0.0.1:") and display != "127.0.0.1:0"
    assert f"unyoke listening on http://{display} (threads=3)" in caplog.text


def test_sigterm_shuts_down_gracefully(
    capsys: pytest.CaptureFixture[str], app_dir: Path, fake_engine: type[FakeEngine]
) -> None:
    fake_engine.on_run = send_signal_soon(signal.SIGTERM)
    module = write_module(app_dir, HELLO)
    code, _, err = run(capsys, f"{module}:app", "--port", "0", "--graceful-timeout", "7")
    assert code == 0, err
    assert fake_engine.instances[0].graces == [7.0]


def test_environ_reaches_the_engine(
    capsys: pytest.CaptureFixture[str], app_dir: Path, fake_engine: type[FakeEngine]
) -> None:
    fake_engine.on_run = stop_at_once
    module = write_module(app_dir, HELLO)
    sock = app_dir / "e.sock"
    code, _, err = run(
        capsys, f"{module}:app", "--bind", f"unix:{sock}", "--environ", "X=1", "--no-keepalive"
    )
    assert code == 0, err
    settings = fake_engine.instances[0].settings
    assert settings["environ"] == {"X": "1"}
    assert settings["keepalive"] is False
    assert settings["server_name"] == "localhost"
    assert not os.path.exists(sock)  # removed at exit


def test_mounts_are_imported(
    capsys: pytest.CaptureFixture[str], app_dir: Path, fake_engine: type[FakeEngine]
) -> None:
    fake_engine.on_run = stop_at_once
    module = write_module(app_dir, HELLO)
    code, _, err = run(
        capsys, f"{module}:create_app", "--factory", "--port", "0", "--mount", f"/api={module}:app"
    )
    assert code == 0, err
    mounts = fake_engine.instances[0].settings["mounts"]
    assert list(mounts) == ["/api"] and mounts["/api"].__name__ == "app"


def test_mount_not_found(
    capsys: pytest.CaptureFixture[str], app_dir: Path, fake_engine: type[FakeEngine]
) -> None:
    module = write_module(app_dir, HELLO)
    code, _, err = run(capsys, f"{module}:app", "--mount", f"/api={module}:nothing")
    assert code == 1
    assert f"'{module}' has no attribute 'nothing'" in err
    assert fake_engine.instances == []


def test_tls_listeners_are_announced_as_https(
    app_dir: Path,
    capsys: pytest.CaptureFixture[str],
    fake_engine: type[FakeEngine],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="unyoke")
    fake_engine.on_run = stop_at_once
    (app_dir / "cert.pem").write_text("not checked here: the engine reads it")
    module = write_module(app_dir, HELLO)
    code, _, err = run(
        capsys,
        f"{module}:app",
        "--bind",
        "127.0.0.1:0",
        "--bind",
        f"unix:{app_dir}/t.sock",
        "--certfile",
        "cert.pem",
        "--keyfile",
        "cert.pem",
    )
    assert code == 0, err
    assert "unyoke listening on https://127.0.0.1:" in caplog.text
    assert f", unix:{app_dir}/t.sock (threads=64)" in caplog.text
