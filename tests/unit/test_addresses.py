"""Parsing of bind addresses: every form, and an error that says what is wrong."""

from __future__ import annotations

import pytest
from unyoke.addresses import BindAddress, format_host_port, parse_bind


@pytest.mark.parametrize(
    ("spec", "expected", "shown"),
    [
        ("127.0.0.1:8000", BindAddress("tcp", host="127.0.0.1", port=8000), "127.0.0.1:8000"),
        ("0.0.0.0:0", BindAddress("tcp", host="0.0.0.0", port=0), "0.0.0.0:0"),
        ("localhost:65535", BindAddress("tcp", host="localhost", port=65535), "localhost:65535"),
        ("[::1]:8000", BindAddress("tcp", host="::1", port=8000), "[::1]:8000"),
        ("[::]:80", BindAddress("tcp", host="::", port=80), "[::]:80"),
        ("[fe80::1%lo]:80", BindAddress("tcp", host="fe80::1%lo", port=80), "[fe80::1%lo]:80"),
        ("unix:/tmp/app.sock", BindAddress("unix", path="/tmp/app.sock"), "unix:/tmp/app.sock"),
        ("unix:relative.sock", BindAddress("unix", path="relative.sock"), "unix:relative.sock"),
        ("unix:@abstract", BindAddress("unix", path="@abstract"), "unix:@abstract"),
        ("fd://3", BindAddress("fd", fd=3), "fd://3"),
        ("fd://0", BindAddress("fd", fd=0), "fd://0"),
    ],
)
def test_forms(spec: str, expected: BindAddress, shown: str) -> None:
    parsed = parse_bind(spec)
    assert parsed == expected
    assert str(parsed) == shown


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "expected HOST:PORT"),
        (" 127.0.0.1:80", "expected HOST:PORT"),
        ("localhost", "missing port in 'localhost': write localhost:8000"),
        (":8000", "missing host"),
        ("::1:8000", "write an IPv6 address in brackets: [::1]:8000"),
        ("[::1]", "missing port after [::1]"),
        ("[::1:8000", "missing ']'"),
        ("[nothost]:80", "'nothost' in '[nothost]:80' is not an IPv6 address"),
        ("127.0.0.1:http", "port must be a number from 0 to 65535, got 'http'"),
        ("127.0.0.1:65536", "port must be a number from 0 to 65535, got 65536"),
        ("127.0.0.1:-1", "got '-1'"),
        ("127.0.0.1:", "got ''"),
        ("unix:", "missing path"),
        ("unix:/tmp/a\0b", "NUL"),
        ("unix:/" + "x" * 200, "the limit is 107"),
        ("fd://", "fd://N needs a file descriptor number"),
        ("fd://three", "fd://N needs a file descriptor number"),
        ("http://127.0.0.1:80", "unknown address scheme"),
    ],
)
def test_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=None) as caught:
        parse_bind(spec)
    assert message in str(caught.value)


def test_not_a_string() -> None:
    with pytest.raises(ValueError, match="expected a string"):
        parse_bind(8000)  # type: ignore[arg-type]


def test_format_host_port() -> None:
    assert format_host_port("10.0.0.1", 1) == "10.0.0.1:1"
    assert format_host_port("::", 0) == "[::]:0"
