"""The settings table and the validation of Python keyword arguments."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest
from unyoke import ConfigError, UnknownSettingError, config

EXPECTED_DEFAULTS = {
    "host": "127.0.0.1",
    "port": 8000,
    "bind": [],
    "backlog": 2048,
    "workers": 1,
    "threads": 64,
    "busy_poll": 50,
    "url_scheme": "http",
    "identity": "unyoke",
    "server_name": None,
    "max_request_header_size": 262144,
    "max_request_body_size": 1073741824,
    "url_length_limit": 8192,
    "inbuf_overflow": 524288,
    "body_preread": 65536,
    "header_timeout": 10.0,
    "inactivity_timeout": 60.0,
    "keepalive_timeout": 75.0,
    "responseless_timeout": 0.0,
    "maximum_simultaneous_requests": 0,
    "max_size": 10000,
    "keepalive": True,
    "max_http_version": "HTTP/1.1",
    "expose_tracebacks": False,
    "capitalize_response_headers": False,
    "minimum_chunk_size": 0,
    "access_log": True,
    "log_format": '%(client_ip)s - - [%(date_time)s] "%(request_line)s" %(status_code)s '
    "%(body_length)s %(wall_seconds).6f",
    "log_x_forwarded_for": True,
    "log_level": "info",
    "environ": {},
    "mounts": {},
    "graceful_timeout": 30.0,
    "certfile": None,
    "keyfile": None,
    "ca_certs": None,
    "origins": [],
    "forwarded_allow_ips": [],
    "on_connect": None,
    "on_disconnect": None,
    "factory": False,
    "max_requests": 0,
    "max_requests_jitter": 0,
    "worker_timeout": 0.0,
    "preload": False,
    "reload": False,
    "metrics": None,
    "proxy_protocol": False,
}


def test_defaults_are_the_documented_ones() -> None:
    assert config.defaults() == EXPECTED_DEFAULTS
    assert config.validate({}) == EXPECTED_DEFAULTS


def test_table_is_well_formed() -> None:
    names = [setting.name for setting in config.SETTINGS]
    assert len(names) == len(set(names))
    for setting in config.SETTINGS:
        assert setting.kind in config.KINDS, setting.name
        assert setting.help.endswith("."), setting.name
        assert setting.name.isidentifier() and setting.name == setting.name.lower()
        if setting.default is not None:
            # Every default passes its own validation.
            assert (
                config.coerce(setting, config.defaults()[setting.name])
                == (config.defaults()[setting.name])
            )
        if setting.kind == "float":
            assert setting.unit == "seconds", setting.name
        if setting.name.endswith("_size") and setting.kind == "int":
            assert setting.unit in ("bytes", "connections"), setting.name


def test_defaults_are_fresh_copies() -> None:
    first = config.defaults()
    first["bind"].append("unix:/x")
    first["environ"]["a"] = "b"
    assert config.defaults()["bind"] == []
    assert config.defaults()["environ"] == {}


def test_limits_document_their_status_code() -> None:
    helps = {setting.name: setting.help for setting in config.SETTINGS}
    assert "431" in helps["max_request_header_size"]
    assert "413" in helps["max_request_body_size"]
    assert "414" in helps["url_length_limit"]
    assert "408" in helps["header_timeout"]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"port": 0}, {"port": 0}),
        ({"threads": 1}, {"threads": 1}),
        ({"header_timeout": 1}, {"header_timeout": 1.0}),
        ({"keepalive": False}, {"keepalive": False}),
        ({"max_http_version": "http/1.0"}, {"max_http_version": "HTTP/1.0"}),
        ({"log_level": "DEBUG"}, {"log_level": "debug"}),
        ({"url_scheme": "HTTPS"}, {"url_scheme": "https"}),
        ({"bind": "unix:/tmp/s"}, {"bind": ["unix:/tmp/s"]}),
        ({"bind": ("[::1]:0", "127.0.0.1:0")}, {"bind": ["[::1]:0", "127.0.0.1:0"]}),
        ({"environ": {"a.b": 1}}, {"environ": {"a.b": 1}}),
        ({"server_name": "example.com"}, {"server_name": "example.com"}),
        ({"log_format": "%(status_code)s %(wall_seconds).3f"}, {}),
        ({"responseless_timeout": 0}, {"responseless_timeout": 0.0}),
        ({"origins": "10.0.0.0/8, 127.0.0.1"}, {"origins": ["10.0.0.0/8", "127.0.0.1"]}),
        ({"origins": ["::1/128", "192.168.0.7"]}, {"origins": ["::1/128", "192.168.0.7"]}),
        ({"forwarded_allow_ips": "127.0.0.1"}, {"forwarded_allow_ips": ["127.0.0.1"]}),
        ({"forwarded_allow_ips": ""}, {"forwarded_allow_ips": []}),
        ({"mounts": {"/": "site:app", "/api": len}}, {"mounts": {"/": "site:app", "/api": len}}),
        ({"on_connect": print}, {"on_connect": print}),
    ],
)
def test_valid_values(given: dict[str, Any], expected: dict[str, Any]) -> None:
    values = config.validate(given)
    for name, value in {**given, **expected}.items():
        if name in expected:
            assert values[name] == value
            assert type(values[name]) is type(value)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"port": 70000}, "port: must be at most 65535, got 70000"),
        ({"port": -1}, "port: must be at least 0, got -1"),
        ({"port": "8000"}, "port: expected a whole number, got '8000' (str)"),
        ({"port": 80.0}, "port: expected a whole number"),
        ({"port": True}, "port: expected a whole number"),
        ({"threads": 0}, "threads: must be at least 1, got 0"),
        ({"backlog": 0}, "backlog: must be at least 1, got 0"),
        ({"max_request_body_size": -1}, "max_request_body_size: must be at least 0 bytes"),
        ({"max_request_body_size": 2**70}, "must be at most"),
        ({"header_timeout": 0}, "header_timeout: must be at least 0.001 seconds"),
        ({"header_timeout": math.nan}, "expected a number of seconds, got nan"),
        ({"header_timeout": math.inf}, "must be at most 1e+09 seconds"),
        ({"graceful_timeout": -1.0}, "graceful_timeout: must be at least 0 seconds"),
        ({"keepalive": 1}, "keepalive: expected True or False, got 1"),
        ({"keepalive": "no"}, "expected True or False"),
        ({"max_http_version": "HTTP/2"}, "expected one of HTTP/1.1, HTTP/1.0, got 'HTTP/2'"),
        ({"log_level": "loud"}, "log_level: expected one of debug, info"),
        ({"host": None}, "host: must not be None"),
        ({"host": 127}, "host: expected a string"),
        ({"identity": "a\r\nX-Evil: 1"}, "identity: must be printable ASCII"),
        ({"identity": ""}, "identity: must be printable ASCII"),
        ({"log_format": "%(nope)s"}, "log_format: unknown key 'nope'"),
        ({"log_format": "%(status_code)d %"}, "log_format: "),
        ({"bind": "localhost"}, "bind: missing port"),
        ({"bind": ["127.0.0.1:80", 80]}, "bind: expected a list of strings"),
        ({"environ": [("a", "b")]}, "environ: expected a mapping"),
        ({"environ": {1: "b"}}, "environ: keys must be non-empty strings"),
        ({"mounts": {"api": "pkg:app"}}, "mounts: a mount prefix must be a path starting with"),
        ({"mounts": {"/api/": "pkg:app"}}, "must not end with '/'"),
        ({"mounts": {"/api": "not an app"}}, "expected MODULE:APP"),
        ({"mounts": {"/api": 42}}, "must map to an application"),
        ({"certfile": ""}, "certfile: expected a file path, got an empty string"),
        ({"origins": "10.0.0.0/33"}, "origins: '10.0.0.0/33' is not an IP network"),
        ({"origins": "localhost"}, "origins: 'localhost' is not an IP network"),
        ({"forwarded_allow_ips": [1]}, "forwarded_allow_ips: expected networks as a list"),
        ({"on_disconnect": "print"}, "on_disconnect: expected a callable, got 'print'"),
    ],
)
def test_invalid_values(given: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.validate(given)
    assert message in str(caught.value)
    assert caught.value.setting == next(iter(given))


def test_unknown_setting_suggests_a_name() -> None:
    with pytest.raises(UnknownSettingError, match="did you mean 'threads'") as caught:
        config.validate({"thread": 4})
    assert isinstance(caught.value, TypeError)
    assert isinstance(caught.value, ValueError)


def test_eventlet_names_point_to_ours() -> None:
    with pytest.raises(UnknownSettingError, match="eventlet's 'log_output' is called 'access_log'"):
        config.validate({"log_output": False})


def test_factory_is_command_line_only() -> None:
    with pytest.raises(UnknownSettingError):
        config.validate({"factory": True})
    assert config.validate({"factory": True}, python=False)["factory"] is True


def test_certfile_and_keyfile_go_together(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    key = tmp_path / "key.pem"
    cert.write_text("x")
    key.write_text("x")
    with pytest.raises(ConfigError, match="certfile: needs keyfile too"):
        config.validate({"certfile": cert})
    with pytest.raises(ConfigError, match="keyfile: needs certfile too"):
        config.validate({"keyfile": str(key)})
    with pytest.raises(ConfigError, match="keyfile: no such file"):
        config.validate({"certfile": cert, "keyfile": tmp_path / "missing.pem"})
    values = config.validate({"certfile": cert, "keyfile": key})
    assert values["certfile"] == os.fspath(cert)
    config.check_supported(values)
    with pytest.raises(ConfigError, match="ca_certs: needs certfile and keyfile"):
        config.validate({"ca_certs": cert})
    with pytest.raises(ConfigError, match="ca_certs: no such file"):
        config.validate({"certfile": cert, "keyfile": key, "ca_certs": tmp_path / "no.pem"})
    assert config.validate({"certfile": cert, "keyfile": key, "ca_certs": cert})["ca_certs"]


def test_workers_auto() -> None:
    assert config.validate({"workers": "auto"})["workers"] == 0
    assert config.validate({"workers": 4})["workers"] == 4
    config.check_supported(config.validate({"workers": 4, "max_requests": 10}))


def test_defaults_are_supported() -> None:
    config.check_supported(config.validate({}))
    config.check_supported(config.validate({"workers": 1}))


def test_human_size() -> None:
    assert config.human_size(1 << 30) == "1 GiB"
    assert config.human_size(512 * 1024) == "512 KiB"
    assert config.human_size(1000) == "1000 B"
