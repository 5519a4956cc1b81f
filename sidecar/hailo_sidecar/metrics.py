"""Request/inference metrics: counted in plain Python on the hot path, exposed by prometheus_client.

``import prometheus_client`` runs its package ``__init__``, which pulls in the exposition module
(http.server, email, ssl, ...): 30-35 ms of the cold start measured here with ``-X importtime``,
for a page nobody reads before the first /infer. So the counters live in this module and
prometheus_client is imported on the first GET /metrics only, where a collector turns them into
the same metric families the sidecar exposed before (names, labels and buckets unchanged).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

# Fine steps around the 50 ms gate so p95 can be read off the histogram within ~2.5 ms, and
# sub-millisecond steps at the bottom so a fast backend's p95 is resolved too.
LATENCY_BUCKETS_S = tuple(
    b / 1000
    for b in (0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4, 5, 6, 7, 8, 9, 10, 12.5, 15, 17.5, 20,
              22.5, 25, 27.5, 30, 32.5, 35, 37.5, 40, 42.5, 45, 47.5, 50, 52.5, 55, 57.5, 60, 65, 70, 80, 90, 100,
              150, 250, 500, 1000, 2500)
)


class Histogram:
    """Cumulative-bucket histogram with Prometheus semantics (le = upper bound, inclusive)."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # last slot: +Inf
        self.sum = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect_left(self.buckets, value)] += times
        self.sum += value * times

    def cumulative(self) -> list[tuple[float, int]]:
        total, out = 0, []
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out


class Metrics:
    def __init__(self) -> None:
        self.request_latency: dict[str, Histogram] = {}
        self.inference_latency = Histogram()
        self.requests: dict[tuple[str, str], int] = {}
        self.errors: dict[str, int] = {}
        self.windows = 0
        self.nonfinite_outputs = 0
        self.model_info: dict[str, str] = {}
        self.backend_info: dict[str, str] = {}

    def request(self, endpoint: str, status: int) -> None:
        key = (endpoint, str(status))
        self.requests[key] = self.requests.get(key, 0) + 1

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def observe_request(self, endpoint: str, seconds: float) -> None:
        hist = self.request_latency.get(endpoint)
        if hist is None:
            hist = self.request_latency[endpoint] = Histogram()
        hist.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition, and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self))
        return generate_latest(registry), CONTENT_TYPE_LATEST


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, InfoMetricFamily
        from prometheus_client.utils import floatToGoString

        def buckets(h: Histogram) -> list[tuple[str, float]]:
            return [(str(floatToGoString(bound)), float(count)) for bound, count in h.cumulative()]  # type: ignore[no-untyped-call]

        m = self.m
        req = HistogramMetricFamily(
            "sidecar_request_latency_seconds", "End-to-end /infer request latency (parse + infer + encode)",
            labels=["endpoint"],
        )
        for endpoint, h in sorted(m.request_latency.items()):
            req.add_metric([endpoint], buckets(h), h.sum)
        yield req
        inf = HistogramMetricFamily("sidecar_inference_latency_seconds", "Backend inference latency per window")
        inf.add_metric([], buckets(m.inference_latency), m.inference_latency.sum)
        yield inf
        requests = CounterMetricFamily("sidecar_requests", "Requests by endpoint and status", labels=["endpoint", "status"])
        for (endpoint, status), n in sorted(m.requests.items()):
            requests.add_metric([endpoint, status], n)
        yield requests
        errors = CounterMetricFamily("sidecar_errors", "Errors by kind", labels=["kind"])
        for kind, n in sorted(m.errors.items()):
            errors.add_metric([kind], n)
        yield errors
        yield CounterMetricFamily("sidecar_windows", "Windows inferred", value=m.windows)
        yield CounterMetricFamily(
            "sidecar_nonfinite_outputs", "Requests refused because the model produced NaN/Inf (input outside its range)",
            value=m.nonfinite_outputs,
        )
        if m.model_info:
            yield InfoMetricFamily("sidecar_model", "Identity of the served release", value=m.model_info)
        if m.backend_info:
            yield InfoMetricFamily("sidecar_backend", "Backend chosen and why (auto-mode fallback reason)", value=m.backend_info)
