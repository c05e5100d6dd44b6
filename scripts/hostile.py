#!/usr/bin/env python3
"""Slow and hostile clients at full scale (tests/e2e/test_hostile.py runs them smaller).

    python scripts/hostile.py                 # every attack, full scale, 30 s each
    python scripts/hostile.py --only slowloris --seconds 60

Attacks: 1,000 slowloris clients (one header byte per second), 200 slow-POST clients
(one body byte per second to an app reading the body), 200 clients that ask for 16 MiB
and never read, and a flood of 4,000 idle connections against --max-size 1000. For each,
a fresh server (`python -m unyoke tests.apps.misbehaving:app --no-access-log`), the
probe's p99 on a quiet server and during the attack, the ratio, RSS and CPU are printed.
Exits 1 if a probe failed or (except for the flood, bounded by header_timeout by design)
the p99 under attack exceeds 3x the quiet one plus 5 ms (jitter floor).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.e2e import test_hostile as h  # noqa: E402
from tests.e2e.serverproc import ServerProcess  # noqa: E402

ATTACKS = {
    "slowloris": (h.slowloris, 1000, []),
    "slow_post": (h.slow_post, 200, []),
    "never_read": (h.never_read, 200, []),
    "flood": (h.flood, 4000, ["--max-size", "1000", "--header-timeout", "2"]),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(ATTACKS), action="append")
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    failed = False
    for name in args.only or list(ATTACKS):
        attack, clients, flags = ATTACKS[name]
        with tempfile.TemporaryDirectory() as tmp:
            server = ServerProcess(h.APP, ["--no-access-log", *flags], workdir=Path(tmp))
            with server:
                result = h.run_attack(server, name, attack, clients, args.seconds, quiet_seconds=5)
        bad = bool(result.probe_failures) or (
            name != "flood" and result.attack_p99 > 3 * result.quiet_p99 + 0.005
        )
        failed |= bad
        print(("FAIL " if bad else "ok   ") + result.report(), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
