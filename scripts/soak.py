#!/usr/bin/env python3
"""Soak: N mixed requests against one unyoke server, its RSS sampled every few seconds.

    python scripts/soak.py --requests 1000000 --clients 8 --sample-every 5

The mix (per 20 requests): 10 hello, 2 big (256 KiB), 2 stream (16 chunks), 2 echo
(10 KiB POST), 1 app error (500), 1 str body (500), 1 client disconnect in the middle of
a 4 MiB response, 1 exception mid-stream (connection cut). Clients keep connections
alive and reconnect when the server closes one. Prints one line per sample
(elapsed s, requests done, RSS MiB) and a summary; exits 1 if RSS after warm-up grew by
more than --max-growth-mib. The server is `python -m unyoke tests.apps.misbehaving:app`,
started from the repository root (tests/e2e/serverproc.py).
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import List, Optional, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.e2e.rawhttp import ConnectionClosed, IncompleteResponse, RawConnection, build_request  # noqa: E402
from tests.e2e.serverproc import ServerProcess  # noqa: E402

ECHO_BODY = b"e" * 10240
# The mix's kinds by name, each the first index `one` serves it at (for --kinds).
KINDS = {
    "hello": 0,
    "big": 10,
    "stream": 12,
    "echo": 14,
    "error": 16,
    "str": 17,
    "reset": 18,
    "raise": 19,
}


def one(conn: RawConnection, kind: int) -> RawConnection:
    """Runs request `kind` (0..19) on `conn`; returns the connection to use next."""
    if kind < 10:
        conn.send(build_request("GET", "/hello"))
        assert conn.read_final_response()[1].body == b"hello"
    elif kind < 12:
        conn.send(build_request("GET", "/big?size=262144"))
        assert len(conn.read_final_response()[1].body) == 262144
    elif kind < 14:
        conn.send(build_request("GET", "/stream?chunks=16"))
        assert len(conn.read_final_response()[1].body) == 16384
    elif kind < 16:
        conn.send(build_request("POST", "/echo", body=ECHO_BODY))
        assert conn.read_final_response()[1].body == ECHO_BODY
    elif kind == 16:
        conn.send(build_request("GET", "/error"))
        assert conn.read_final_response()[1].status == 500
    elif kind == 17:
        conn.send(build_request("GET", "/str_body"))
        assert conn.read_final_response()[1].status == 500
    elif kind == 18:
        conn.send(build_request("GET", "/big?size=4194304"))
        conn.sock.recv(1024)
        conn.sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
        )
        conn.close()  # reset in the middle of the response
        return RawConnection(conn_address(conn))
    else:
        conn.send(build_request("GET", "/raise_mid"))
        try:
            conn.read_final_response()
        except (IncompleteResponse, ConnectionClosed):
            pass
        conn.close()
        return RawConnection(conn_address(conn))
    return conn


_addresses = {}


def conn_address(conn: RawConnection):
    return _addresses[id(conn)]


def new_conn(address) -> RawConnection:
    conn = RawConnection(address)
    _addresses[id(conn)] = address
    return conn


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def soak(
    server: ServerProcess,
    requests: int,
    clients: int,
    sample_every: float,
    quiet: bool = False,
    kinds: Optional[List[int]] = None,
) -> Tuple[List[Tuple[float, int, float]], List[str]]:
    """Runs the soak; returns the samples (elapsed, done, RSS MiB) and the errors seen.
    `kinds` restricts the mix (indices for `one`), e.g. to amplify one suspect."""
    mix = kinds or list(range(20))
    done = [0]
    errors: List[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        conn = new_conn(server.address)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            try:
                nxt = one(conn, mix[i % len(mix)])
                if nxt is not conn:
                    _addresses.pop(id(conn), None)
                    _addresses[id(nxt)] = server.address
                conn = nxt
            except Exception as exc:
                if len(errors) < 20:
                    errors.append(f"request {i} kind {mix[i % len(mix)]}: {exc!r}")
                conn.close()
                conn = new_conn(server.address)
            with lock:
                done[0] += 1
        conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    start = time.monotonic()
    samples = [(0.0, 0, rss_mib(server.pid))]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(sample_every)
        samples.append((time.monotonic() - start, done[0], rss_mib(server.pid)))
        if not quiet:
            print(
                f"{samples[-1][0]:8.1f}s {samples[-1][1]:>9} requests  "
                f"RSS {samples[-1][2]:7.1f} MiB",
                flush=True,
            )
    for t in threads:
        t.join()
    return samples, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--sample-every", type=float, default=5.0)
    parser.add_argument("--warmup-fraction", type=float, default=0.1)
    parser.add_argument("--max-growth-mib", type=float, default=32.0)
    parser.add_argument(
        "--kinds",
        help="only these kinds of request, comma-separated: " + ",".join(KINDS),
    )
    parser.add_argument("server_args", nargs="*", help="extra unyoke flags (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(
            "tests.apps.misbehaving:app", ["--no-access-log", *args.server_args], workdir=Path(tmp)
        )
        with server:
            kinds = [KINDS[k] for k in args.kinds.split(",")] if args.kinds else None
            samples, errors = soak(
                server, args.requests, args.clients, args.sample_every, kinds=kinds
            )
            log_tail = server.log()[-500:]
    warm = [s for s in samples if s[1] >= args.requests * args.warmup_fraction]
    after = [s[2] for s in warm] or [samples[-1][2]]
    growth = max(after) - after[0]
    elapsed = samples[-1][0]
    print(
        f"\n{args.requests} requests in {elapsed:.0f}s ({args.requests / elapsed:.0f}/s), "
        f"RSS start {samples[0][2]:.1f} MiB, after warm-up {after[0]:.1f} MiB, "
        f"max {max(after):.1f} MiB, end {after[-1]:.1f} MiB (growth after warm-up "
        f"{growth:.1f} MiB); client errors: {len(errors)}"
    )
    for e in errors[:5]:
        print("  ", e)
    if "panicked" in log_tail:
        print("server panicked:", log_tail)
        return 1
    return 0 if growth <= args.max_growth_mib else 1


if __name__ == "__main__":
    sys.exit(main())
