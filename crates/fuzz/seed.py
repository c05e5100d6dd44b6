#!/usr/bin/env python3
"""Seed the fuzz corpora from gunicorn's public request vectors (and a few PROXY headers).

The vectors are fetched the way tests/e2e/test_gunicorn_vectors.py fetches them (pip
download of the gunicorn sdist into the git-ignored .cache/ of the repository) and never
committed; the corpora under crates/fuzz/corpus/ are git-ignored too.

Each seed gets the prefix its target expects: a limits byte and three piece-size bytes
(request, chunked, connection), then the bytes. For `chunked` the body after the head of
every chunked vector is used; for `connection` the raw vector is wrapped in a "raw bytes"
operation so the script layer passes it through.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
REPO_ROOT = FUZZ_DIR.parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.e2e.test_gunicorn_vectors import fetch_vectors, load_http  # noqa: E402

PREFIXES = (b"\x00\x00\x06\x1f", b"\x01\x00\x00\x00", b"\x00\x03\x00\x40")


def write(target: str, data: bytes) -> None:
    directory = FUZZ_DIR / "corpus" / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"seed-{hashlib.sha1(data).hexdigest()}").write_bytes(data)


def connection_script(raw: bytes) -> bytes:
    """Op 6 (raw bytes, at most 31 per op) repeated, then a well-formed GET (op 0)."""
    out = bytearray()
    for at in range(0, len(raw), 31):
        piece = raw[at : at + 31]
        out += bytes([6, len(piece)]) + piece
    return bytes(out) + b"\x00\x03abc"


def main() -> int:
    vectors = fetch_vectors()
    count = 0
    for path in sorted(vectors.glob("*/*.http")):
        data = load_http(path)
        for prefix in PREFIXES:
            write("request", prefix + data)
        write("connection", b"\x00\x05\x11\x02" + connection_script(data))
        head_end = data.find(b"\r\n\r\n")
        if head_end != -1 and b"chunked" in data[:head_end].lower():
            write("chunked", b"\x00\x00\x04\x10" + data[head_end + 4 :])
        count += 1
    # Well-formed pipelines for `connection`: every operation once, then mixed.
    for script in (
        b"\x00\x04abcd\x02\x05hello\x03\x83\x03abcd\x45xyz\x01\x00",
        b"\x05\x00\x00\x14\x02\x00\x04\x00\x13\x03\x02/a/b",
    ):
        write("connection", b"\x00\x00\x02\x07" + script)
    write("chunked", b"\x00\x00\x00\x00" + b"5;a=b\r\nhello\r\n0\r\nX-T: 1\r\n\r\n")
    # PROXY v1 and v2 headers.
    write("proxy", b"PROXY TCP4 192.0.2.1 198.51.100.2 51234 443\r\nGET / HTTP/1.1\r\n")
    write("proxy", b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n")
    write("proxy", b"PROXY UNKNOWN\r\n")
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    v4 = bytes([192, 0, 2, 1, 198, 51, 100, 2]) + struct.pack("!HH", 51234, 443)
    write("proxy", sig + b"\x21\x11" + struct.pack("!H", len(v4)) + v4)
    v6 = bytes(range(32)) + struct.pack("!HH", 1, 2)
    write("proxy", sig + b"\x21\x21" + struct.pack("!H", len(v6) + 3) + v6 + b"\x04\x00\x00")
    write("proxy", sig + b"\x20\x00\x00\x00")
    print(f"seeded from {count} gunicorn vectors into {FUZZ_DIR / 'corpus'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
