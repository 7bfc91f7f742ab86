"""Serving's metrics in the Prometheus text format (version 0.0.4), kept in process and rendered by /metrics.

Request counts by route and status, a latency histogram, errors, the model version and its age, swaps, failed
loads and online-store errors. Written by hand (a few counters do not need a client library); counters only go
up, so a scraper's rate() works across swaps.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()
        self.bucket_counts = [0] * len(LATENCY_BUCKETS_S)
        self.latency_sum_s = 0.0
        self.latency_count = 0
        self.errors = 0  # answers with status >= 500
        self.started = time.time()
        self._lock = threading.Lock()

    def observe(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, status)] += 1
            self.latency_sum_s += seconds
            self.latency_count += 1
            for j, bound in enumerate(LATENCY_BUCKETS_S):
                if seconds <= bound:
                    self.bucket_counts[j] += 1
            self.errors += status >= 500

    def render(self, gauges: dict[str, tuple[str, float | None]], version: str | None) -> str:
        """The exposition text: the counters above plus `gauges` (name -> (help, value); None values left out)."""
        with self._lock:
            lines = ["# HELP tidal_serving_requests_total Requests answered, by route and HTTP status.",
                     "# TYPE tidal_serving_requests_total counter"]
            lines += [f'tidal_serving_requests_total{{route="{route}",status="{status}"}} {count}'
                      for (route, status), count in sorted(self.requests.items())]
            lines += ["# HELP tidal_serving_request_seconds Time to answer a request.",
                      "# TYPE tidal_serving_request_seconds histogram"]
            lines += [f'tidal_serving_request_seconds_bucket{{le="{bound}"}} {count}'
                      for bound, count in zip(LATENCY_BUCKETS_S, self.bucket_counts)]
            lines += [f'tidal_serving_request_seconds_bucket{{le="+Inf"}} {self.latency_count}',
                      f"tidal_serving_request_seconds_sum {self.latency_sum_s:.6f}",
                      f"tidal_serving_request_seconds_count {self.latency_count}",
                      "# HELP tidal_serving_errors_total Answers with a 5xx status.",
                      "# TYPE tidal_serving_errors_total counter", f"tidal_serving_errors_total {self.errors}"]
        lines += ["# HELP tidal_model_version_info The model version serving now (value 1).",
                  "# TYPE tidal_model_version_info gauge"]
        if version:
            lines.append(f'tidal_model_version_info{{version="{version}"}} 1')
        for name, (help_, value) in gauges.items():
            if value is None:
                continue
            kind = "counter" if name.endswith("_total") else "gauge"
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value:g}"]
        return "\n".join(lines) + "\n"
