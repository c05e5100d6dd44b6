"""Prometheus metrics: the workers' ``Engine.stats()`` summed, in the text exposition format.

Workers report their stats to the supervisor; :class:`Totals` keeps the counters of workers
that have exited, so that a counter never goes down when a worker is replaced. Nothing here
runs unless the ``metrics`` setting is given.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Sequence

#: Labels of ``responses_by_class``: index 0 counts requests that got no response.
STATUS_CLASSES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")

#: Counters of ``Engine.stats()`` that only grow during a worker's life.
_SCALAR_COUNTERS = (
    "requests_total",
    "bytes_in",
    "bytes_out",
    "duration_sum_seconds",
    "takeovers_blocked",
    "takeovers_computing",
)
_LIST_COUNTERS = ("responses_by_class", "duration_buckets")
#: Values that say how things are now, summed over the live workers only.
_GAUGES = ("requests_in_flight", "open_connections", "idle_connections", "threads")

Stats = Mapping[str, Any]


def _add_lists(total: List[float], more: Sequence[float]) -> List[float]:
    if len(total) < len(more):
        total = total + [0] * (len(more) - len(total))
    return [a + (more[i] if i < len(more) else 0) for i, a in enumerate(total)]


class Totals:
    """The counters of workers gone, plus the latest report of each live one."""

    def __init__(self) -> None:
        self._gone: Dict[str, Any] = {name: 0 for name in _SCALAR_COUNTERS}
        self._gone.update({name: [] for name in _LIST_COUNTERS})
        self.bounds: List[float] = []

    def worker_gone(self, last: Stats) -> None:
        """Keep the counters of a worker that exited, from its last report."""
        for name in _SCALAR_COUNTERS:
            self._gone[name] += last.get(name, 0)
        for name in _LIST_COUNTERS:
            self._gone[name] = _add_lists(self._gone[name], last.get(name, []))

    def sum(self, live: Iterable[Stats]) -> Dict[str, Any]:
        """Counters since start-up (gone and live workers), gauges of the live workers."""
        result: Dict[str, Any] = {name: self._gone[name] for name in _SCALAR_COUNTERS}
        result.update({name: list(self._gone[name]) for name in _LIST_COUNTERS})
        result.update({name: 0 for name in _GAUGES})
        for stats in live:
            for name in _SCALAR_COUNTERS + _GAUGES:
                result[name] += stats.get(name, 0)
            for name in _LIST_COUNTERS:
                result[name] = _add_lists(result[name], stats.get(name, []))
            if stats.get("duration_bucket_bounds"):
                self.bounds = list(stats["duration_bucket_bounds"])
        return result


def _number(value: float) -> str:
    if isinstance(value, float) and not value.is_integer():
        return repr(value)
    return str(int(value))


def render(total: Mapping[str, Any], bounds: Sequence[float], workers: int, restarts: int) -> str:
    """The Prometheus text format (version 0.0.4) of ``total`` (from :meth:`Totals.sum`)."""
    lines: List[str] = []

    def metric(name: str, kind: str, text: str, samples: Iterable[str]) -> None:
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(samples)

    by_class = list(total.get("responses_by_class", [])) + [0] * len(STATUS_CLASSES)
    metric(
        "unyoke_requests_total",
        "counter",
        "Requests finished, by status class of the response (none: no response was sent).",
        (
            f'unyoke_requests_total{{class="{label}"}} {_number(by_class[i])}'
            for i, label in enumerate(STATUS_CLASSES)
        ),
    )
    metric(
        "unyoke_requests_in_flight",
        "gauge",
        "Requests in progress.",
        [f"unyoke_requests_in_flight {_number(total.get('requests_in_flight', 0))}"],
    )
    metric(
        "unyoke_open_connections",
        "gauge",
        "Client connections open.",
        [f"unyoke_open_connections {_number(total.get('open_connections', 0))}"],
    )
    metric(
        "unyoke_idle_connections",
        "gauge",
        "Open client connections set aside while idle (counted in unyoke_open_connections).",
        [f"unyoke_idle_connections {_number(total.get('idle_connections', 0))}"],
    )
    buckets = list(total.get("duration_buckets", []))
    samples = []
    running = 0.0
    for i, bound in enumerate(bounds):
        running += buckets[i] if i < len(buckets) else 0
        samples.append(
            f'unyoke_request_duration_seconds_bucket{{le="{bound!r}"}} {_number(running)}'
        )
    count = sum(buckets)
    samples.append(f'unyoke_request_duration_seconds_bucket{{le="+Inf"}} {_number(count)}')
    samples.append(
        f"unyoke_request_duration_seconds_sum {_number(total.get('duration_sum_seconds', 0.0))}"
    )
    samples.append(f"unyoke_request_duration_seconds_count {_number(count)}")
    metric(
        "unyoke_request_duration_seconds",
        "histogram",
        "Time from the request head to the end of the response.",
        samples,
    )
    metric(
        "unyoke_bytes_received_total",
        "counter",
        "Bytes read from clients.",
        [f"unyoke_bytes_received_total {_number(total.get('bytes_in', 0))}"],
    )
    metric(
        "unyoke_bytes_sent_total",
        "counter",
        "Bytes written to clients.",
        [f"unyoke_bytes_sent_total {_number(total.get('bytes_out', 0))}"],
    )
    metric(
        "unyoke_loop_takeovers_total",
        "counter",
        "Times a standby thread took the event loop over from an application call, by why: "
        "the call blocked (gave the GIL up), or it kept computing past a watch tick and the "
        "interpreter's switch interval.",
        (
            f'unyoke_loop_takeovers_total{{reason="{reason}"}} '
            f"{_number(total.get('takeovers_' + reason, 0))}"
            for reason in ("blocked", "computing")
        ),
    )
    metric(
        "unyoke_worker_restarts_total",
        "counter",
        "Workers started to replace one that died, hung or was recycled.",
        [f"unyoke_worker_restarts_total {restarts}"],
    )
    metric("unyoke_workers", "gauge", "Worker processes alive.", [f"unyoke_workers {workers}"])
    return "\n".join(lines) + "\n"
