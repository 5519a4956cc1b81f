"""Gate measurement fidelity at 20 windows/s against a real sidecar: achieved rate vs target,
and client p95 vs the sidecar's own /metrics histogram p95."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.table import Row

RATE = 20.0
DURATION_S = 30.0


def rows() -> list[Row]:
    from release.gate import histogram_quantile, percentile, scrape_histogram
    from release.loadgen import run_open_loop
    from release.sample_model import golden_windows, write_sample_model

    with tempfile.TemporaryDirectory() as tmp:
        model = write_sample_model(Path(tmp) / "model.onnx")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "INFER_MODE": "onnx", "ONNX_PATH": str(model), "HAILO_SIDECAR_ALLOW_AMD64": "1",
               "PORT": str(port), "HOST": "127.0.0.1", "HEF_PATH": str(Path(tmp) / "none")}
        proc = subprocess.Popen([sys.executable, "-m", "hailo_sidecar"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(200):
                try:
                    urllib.request.urlopen(f"{url}/readyz", timeout=1)
                    break
                except OSError:
                    time.sleep(0.05)
            windows = golden_windows(8)
            before = scrape_histogram(url)
            samples = run_open_loop(url, windows, rate=RATE, duration_s=DURATION_S, concurrency=2)
            after = scrape_histogram(url)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    ok = [x for x in samples if x.status == 200]
    # Achieved rate from what really happened (first actual send to last completed response),
    # not from the schedule, which would be the target by construction.
    span = max(x.intended_s + x.latency_ms / 1000 for x in ok) - min(x.sent_s for x in ok)
    achieved = len(ok) / span
    # Sent-time drift: how far actual sends lagged the schedule (coordinated omission would show here).
    lag = percentile([(x.sent_s - x.intended_s) * 1000 for x in ok], 99) or 0.0
    client_p95 = percentile([x.latency_ms for x in ok], 95) or 0.0
    server_p95 = histogram_quantile(before, after, 0.95) or 0.0
    rate_err = abs(achieved - RATE) / RATE * 100
    gap = abs(client_p95 - server_p95)
    return [
        Row("gate: achieved rate at 20/s", achieved, "windows/s", "within 1% of 20", rate_err <= 1.0,
            f"{len(ok)} requests over {DURATION_S:.0f}s, error {rate_err:.2f}%"),
        Row("gate: send lag p99 vs schedule", lag, "ms", "-", None, "open loop: latency counted from the intended time"),
        Row("gate: client p95", client_p95, "ms", "-", None),
        Row("gate: server /metrics p95", server_p95, "ms", "-", None, "interpolated in histogram buckets"),
        Row("gate: |client p95 - server p95|", gap, "ms", "<= 1", gap <= 1.0),
    ]
