"""The latency gate: measure the canary, compare, decide pass / fail / inconclusive.

Checks (each a value with its own outcome and reason):
- absolute limits from client timings: p95 per window, achieved windows/s, error rate;
- enough scored samples, and client p95 agreeing with the sidecar's own /metrics histogram
  (too few samples or contradictory data → inconclusive: a human decides, never a silent pass);
- interval analysis: each interval is judged on p95 too; more failed intervals than the failure
  limit fails the gate;
- baseline: a one-sided Mann-Whitney U test against the last-known-good release's latencies; a
  significant regression beyond the tolerance fails;
- parity: canary outputs on the golden windows vs the ONNX reference (cosine on latent, top-k
  agreement on motif_scores).
"""

from __future__ import annotations

import json
import logging
import math
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from release.gate_settings import GateSettings, Verdict
from release.loadgen import Sample, run_open_loop
from release.manifest import GateRecord

log = logging.getLogger(__name__)

Outcome = Literal["pass", "fail", "inconclusive", "skipped"]
REQUEST_METRIC = "sidecar_request_latency_seconds"


class Check(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    outcome: Outcome
    measured: float | None
    limit: str
    reason: str


class GateReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    settings: GateSettings
    verdict: Verdict
    reasons: tuple[str, ...]
    checks: tuple[Check, ...]
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    server_p95_ms: float | None
    windows_per_s: float
    target_rate: float
    error_rate: float
    samples: int
    latencies_ms: tuple[float, ...]

    def to_record(self, report_uri: str | None = None, histogram_uri: str | None = None) -> GateRecord:
        measured: dict[str, float | None] = {
            "p50_ms": self.p50_ms, "p95_ms": self.p95_ms, "p99_ms": self.p99_ms, "server_p95_ms": self.server_p95_ms,
            "windows_per_s": self.windows_per_s, "error_rate": self.error_rate, "samples": float(self.samples),
        }
        for check in self.checks:
            if check.measured is not None and check.name.startswith(("parity", "baseline")):
                measured[check.name] = check.measured
        return GateRecord(
            thresholds=self.settings.thresholds(), measured=measured, verdict=self.verdict.value,
            reasons=self.reasons, report_uri=report_uri, histogram_uri=histogram_uri,
        )


def percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values), q)) if len(values) else None


# -- server-side histogram --------------------------------------------------------------------
def scrape_histogram(base_url: str, endpoint: str = "/infer", timeout: float = 5.0) -> dict[float, float]:
    """Cumulative bucket counts {le_seconds: count} of the sidecar's request latency histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{base_url.rstrip('/')}/metrics", timeout=timeout) as resp:
        text = resp.read().decode()
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != REQUEST_METRIC:
            continue
        for s in family.samples:
            if s.name == f"{REQUEST_METRIC}_bucket" and s.labels.get("endpoint") == endpoint:
                buckets[float(s.labels["le"])] = float(s.value)
    return buckets


def _scrape_or_none(base_url: str) -> dict[float, float] | None:
    # A canary without a readable /metrics is not a failed canary, but its client timings cannot be
    # cross-checked: analyse() turns the missing histogram into "inconclusive" (a human decides).
    try:
        return scrape_histogram(base_url)
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s/metrics: %s", base_url, exc)
        return None


def histogram_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """Quantile (ms) of the observations between two scrapes, interpolated within buckets."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return prev_bound * 1000
            span = count - prev_count
            frac = (rank - prev_count) / span if span > 0 else 1.0
            return (prev_bound + (bound - prev_bound) * frac) * 1000
        prev_bound, prev_count = bound, count
    return None


# -- checks -----------------------------------------------------------------------------------
def _limit_check(name: str, value: float | None, ok: bool, limit: str) -> Check:
    if value is None:
        return Check(name=name, outcome="inconclusive", measured=None, limit=limit, reason=f"{name}: no data")
    return Check(
        name=name, outcome="pass" if ok else "fail", measured=value, limit=limit,
        reason=f"{name} {value:.3f} {'meets' if ok else 'violates'} {limit}",
    )


def baseline_check(latencies: Sequence[float], baseline: Sequence[float] | None, s: GateSettings) -> Check:
    if baseline is None or len(baseline) == 0:
        return Check(name="baseline", outcome="skipped", measured=None, limit="-", reason="no baseline (first release on this device)")
    if len(latencies) < s.min_samples or len(baseline) < s.min_samples:
        return Check(name="baseline", outcome="inconclusive", measured=None, limit=f">= {s.min_samples} samples each",
                     reason="too few samples for the baseline comparison")
    from scipy.stats import mannwhitneyu

    p = float(mannwhitneyu(latencies, baseline, alternative="greater").pvalue)
    ratio = float(np.median(latencies) / max(np.median(baseline), 1e-9))
    shift_ms = float(np.median(latencies) - np.median(baseline))
    # Significant, relatively large AND absolutely large: at ~2 ms medians a 20 % shift is
    # scheduler noise, not a regression anyone on the device would notice.
    regressed = p < s.baseline_alpha and ratio > 1 + s.baseline_tolerance and shift_ms > s.baseline_min_regression_ms
    return Check(
        name="baseline_median_ratio", outcome="fail" if regressed else "pass", measured=ratio,
        limit=f"not (p < {s.baseline_alpha} and ratio > {1 + s.baseline_tolerance:.2f} and shift > {s.baseline_min_regression_ms} ms)",
        reason=f"median latency {ratio:.2f}x the last-known-good, {shift_ms:+.2f} ms (Mann-Whitney p={p:.2g})",
    )


def parity_checks(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray], s: GateSettings) -> list[Check]:
    lat, ref = np.asarray(outputs["latent"], dtype=np.float64), np.asarray(reference["latent"], dtype=np.float64)
    cos = np.sum(lat * ref, axis=1) / (np.linalg.norm(lat, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12)
    k = s.parity_top_k
    mot, mref = np.asarray(outputs["motif_scores"]), np.asarray(reference["motif_scores"])
    agree = [len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / k for a, b in zip(mot, mref, strict=True)]
    return [
        _limit_check("parity_min_cosine", float(cos.min()), float(cos.min()) >= s.parity_min_cosine, f">= {s.parity_min_cosine}"),
        _limit_check("parity_topk_agreement", float(np.mean(agree)), float(np.mean(agree)) >= s.parity_min_topk_agreement,
                     f">= {s.parity_min_topk_agreement} (top-{k})"),
    ]


def interval_check(samples: Sequence[Sample], s: GateSettings) -> Check:
    failed = 0
    intervals = 0
    edges = np.arange(s.load.warmup_s, s.load.duration_s + 1e-9, s.interval_s)
    for lo in edges:
        lat = [x.latency_ms for x in samples if lo <= x.intended_s < lo + s.interval_s and x.status == 200]
        if len(lat) < 5:
            continue
        intervals += 1
        if (percentile(lat, 95) or 0.0) >= s.p95_ms:
            failed += 1
    ok = failed <= s.failure_limit
    return Check(name="intervals_failed", outcome="pass" if ok else "fail", measured=float(failed),
                 limit=f"<= {s.failure_limit} of {intervals}", reason=f"{failed} of {intervals} intervals over p95 {s.p95_ms} ms")


def analyse(
    samples: Sequence[Sample],
    s: GateSettings,
    *,
    server_p95_ms: float | None,
    baseline_latencies: Sequence[float] | None = None,
    parity: list[Check] | None = None,
) -> GateReport:
    scored = [x for x in samples if x.intended_s >= s.load.warmup_s]
    ok = [x for x in scored if x.status == 200]
    latencies = [x.latency_ms for x in ok]
    errors = len(scored) - len(ok)
    error_rate = errors / len(scored) if scored else 1.0
    span = (max(x.intended_s for x in scored) - min(x.intended_s for x in scored)) if len(scored) > 1 else 0.0
    # Achieved throughput: successful windows over the scheduled span they were meant to fill.
    windows_per_s = (len(ok) - 1) / span if span > 0 and len(ok) > 1 else 0.0
    if ok:
        last_done = max(x.intended_s + x.latency_ms / 1000 for x in ok)
        first = min(x.intended_s for x in ok)
        windows_per_s = min(windows_per_s, len(ok) / max(last_done - first, 1e-9))
    p50, p95, p99 = percentile(latencies, 50), percentile(latencies, 95), percentile(latencies, 99)

    checks = [
        _limit_check("p95_ms", p95, p95 is not None and p95 < s.p95_ms, f"< {s.p95_ms}"),
        _limit_check("windows_per_s", windows_per_s, windows_per_s >= s.min_windows_per_s, f">= {s.min_windows_per_s}"),
        _limit_check("error_rate", error_rate, error_rate <= s.max_error_rate, f"<= {s.max_error_rate}"),
        interval_check(samples, s),
        baseline_check(latencies, baseline_latencies, s),
        *(parity or []),
    ]
    if len(latencies) < s.min_samples:
        checks.append(Check(name="samples", outcome="inconclusive", measured=float(len(latencies)),
                            limit=f">= {s.min_samples}", reason=f"only {len(latencies)} scored samples"))
    if server_p95_ms is None or p95 is None:
        checks.append(Check(name="server_agreement", outcome="inconclusive", measured=None, limit="-",
                            reason="no server-side histogram to cross-check the client timings"))
    else:
        gap = abs(server_p95_ms - p95)
        # The client includes network and queueing time the server cannot see, so only a server
        # p95 far above the client's, or a client far above the server plus tolerance, is contradictory.
        tolerance = s.server_client_tolerance_ms + 0.2 * p95
        outcome: Outcome = "pass" if gap <= tolerance else "inconclusive"
        checks.append(Check(name="server_agreement", outcome=outcome, measured=gap, limit=f"<= {tolerance:.1f} ms",
                            reason=f"client p95 {p95:.1f} ms vs server p95 {server_p95_ms:.1f} ms"))
    failed = [c.reason for c in checks if c.outcome == "fail"]
    unsure = [c.reason for c in checks if c.outcome == "inconclusive"]
    verdict = Verdict.FAIL if failed else Verdict.INCONCLUSIVE if unsure else Verdict.PASS
    return GateReport(
        settings=s, verdict=verdict, reasons=tuple(failed or unsure or ["all checks passed"]), checks=tuple(checks),
        p50_ms=p50, p95_ms=p95, p99_ms=p99, server_p95_ms=server_p95_ms, windows_per_s=windows_per_s,
        target_rate=s.load.rate_windows_per_s, error_rate=error_rate, samples=len(latencies),
        latencies_ms=tuple(round(v, 3) for v in latencies),
    )


def canary_outputs(base_url: str, windows: np.ndarray, timeout: float = 10.0) -> dict[str, np.ndarray]:
    req = urllib.request.Request(
        f"{base_url.rstrip('/')}/infer/batch", data=json.dumps({"x": windows.tolist()}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        body = json.loads(resp.read())
    return {"latent": np.asarray(body["latent"]), "motif_scores": np.asarray(body["motif_scores"])}


def run_gate(
    base_url: str,
    settings: GateSettings,
    *,
    windows: np.ndarray,
    reference: dict[str, np.ndarray] | None,
    baseline_latencies: Sequence[float] | None,
) -> GateReport:
    """Measure the canary at ``base_url`` for real and analyse the result."""
    parity = parity_checks(canary_outputs(base_url, windows), reference, settings) if reference is not None else None
    before = _scrape_or_none(base_url)
    samples = run_open_loop(
        base_url, windows, rate=settings.load.rate_windows_per_s, duration_s=settings.load.duration_s,
        concurrency=settings.load.concurrency, timeout_s=settings.load.request_timeout_s,
        consecutive_error_limit=settings.consecutive_error_limit,
    )
    after = _scrape_or_none(base_url)
    server_p95 = histogram_quantile(before, after, 0.95) if before is not None and after is not None else None
    return analyse(samples, settings, server_p95_ms=server_p95, baseline_latencies=baseline_latencies, parity=parity)


def write_histogram_png(report: GateReport, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if report.latencies_ms:
        ax.hist(report.latencies_ms, bins=50, color="#4C72B0")
    if report.p95_ms is not None:
        ax.axvline(report.p95_ms, color="black", linestyle="--", label=f"p95 {report.p95_ms:.1f} ms")
    ax.axvline(report.settings.p95_ms, color="red", label=f"limit {report.settings.p95_ms:.0f} ms")
    ax.set_xlabel("latency per window (ms, from intended send time)")
    ax.set_ylabel("requests")
    ax.set_title(f"canary gate: {report.verdict.value} — {report.windows_per_s:.1f} windows/s, {report.samples} samples")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
