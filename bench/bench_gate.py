"""Gate measurement fidelity at 20 windows/s against a real sidecar: achieved rate vs target,
and client p95 vs the sidecar's own /metrics histogram p95. Then the two gate modes side by side in
one run against the same sidecar: device-side (the agent's `load`, on the device) and
orchestrator-side through a lab link (tests/doubles/delay_relay.py, 20 ms ± 15 ms each way), each
with the server's own p95 for the same load, and whether their verdicts agree."""

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
MODES_DURATION_S = 15.0
REPEATS = int(os.environ.get("GATE_BENCH_REPEATS", "10"))


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
            modes = _modes(url, windows, Path(tmp))
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
        *modes,
    ]


def _modes(url: str, windows, tmp: Path) -> list[Row]:
    from release import deploy as dep
    from release.devices import DeviceSpec
    from release.gate import run_gate
    from release.gate_device import run_device_gate
    from release.gate_settings import settings_with_overrides
    from release.transport import LocalTransport
    from tests.doubles.delay_relay import DelayRelay

    # The agent installed on "the device" (this machine), its health_url the sidecar: no release switch needed.
    spec = DeviceSpec(name="bench", transport="local", agent_root=str(tmp / "agent"), agent_python=sys.executable,
                      gate_url=url, health_url=url)
    (tmp / "pub").write_text("unused: the bench does not verify releases\n")
    dep.install_agent(LocalTransport(), spec, tmp / "pub")
    settings = settings_with_overrides({"duration_s": MODES_DURATION_S, "rate_windows_per_s": RATE})
    device = run_device_gate(dep.device_loader(spec, LocalTransport), settings, windows=windows, reference=None,
                             baseline_latencies=None)
    port = int(url.rsplit(":", 1)[1])
    with DelayRelay("127.0.0.1", port, delay_ms=20, jitter_ms=15, seed=15) as lab:
        across = run_gate(f"http://127.0.0.1:{lab.port}", settings, windows=windows, reference=None, baseline_latencies=None)
    rows = []
    for label, r in (("device-side", device), ("orchestrator-side over 20±15 ms link", across)):
        p95, server = r.p95_ms or float("nan"), r.server_p95_ms or float("nan")
        rows += [
            Row(f"gate {label}: client p95", p95, "ms", "-", None, f"verdict {r.verdict.value}, {r.samples} samples, "
                f"{r.windows_per_s:.2f} windows/s"),
            Row(f"gate {label}: server p95", server, "ms", "-", None, "the sidecar's /metrics over the same load"),
            Row(f"gate {label}: |client - server| p95", abs(p95 - server), "ms",
                "<= 1" if r is device else "-", abs(p95 - server) <= 1.0 if r is device else None),
        ]
    fast = run_device_gate(dep.device_loader(spec, LocalTransport), settings_with_overrides(
        {"duration_s": MODES_DURATION_S, "rate_windows_per_s": 100.0}), windows=windows, reference=None, baseline_latencies=None)
    p95, server = fast.p95_ms or float("nan"), fast.server_p95_ms or float("nan")
    rate_err = abs(fast.windows_per_s - 100.0)
    rows += [
        Row("gate device-side at 100/s: achieved rate", fast.windows_per_s, "windows/s", "within 1% of 100", rate_err <= 1.0,
            f"verdict {fast.verdict.value}, {fast.samples} samples"),
        Row("gate device-side at 100/s: |client - server| p95", abs(p95 - server), "ms", "<= 1", abs(p95 - server) <= 1.0,
            f"client {p95:.2f} ms, server {server:.2f} ms"),
    ]
    agree = device.verdict == across.verdict
    rows.append(Row("gate modes: verdicts agree (healthy sidecar)", float(agree), "bool", "-", None,
                    f"device {device.verdict.value}, orchestrator {across.verdict.value}"))
    return rows + _repeated(spec, url, windows)


def _repeated(spec, url: str, windows) -> list[Row]:
    """REPEATS short gate pairs on the healthy sidecar: how often each mode passes it (a pass is right)."""
    from release import deploy as dep
    from release.gate import run_gate
    from release.gate_device import run_device_gate
    from release.gate_settings import Verdict, settings_with_overrides
    from release.transport import LocalTransport
    from tests.doubles.delay_relay import DelayRelay

    settings = settings_with_overrides({"duration_s": 5})
    port = int(url.rsplit(":", 1)[1])
    passed = {"device": 0, "orchestrator": 0}
    with DelayRelay("127.0.0.1", port, delay_ms=20, jitter_ms=15, seed=20) as lab:
        for _ in range(REPEATS):
            d = run_device_gate(dep.device_loader(spec, LocalTransport), settings, windows=windows, reference=None,
                                baseline_latencies=None)
            o = run_gate(f"http://127.0.0.1:{lab.port}", settings, windows=windows, reference=None, baseline_latencies=None)
            passed["device"] += d.verdict is Verdict.PASS
            passed["orchestrator"] += o.verdict is Verdict.PASS
    return [Row(f"gate {mode}-side: healthy passes over 20±15 ms link", float(n), f"of {REPEATS}", f"{REPEATS} of {REPEATS}",
                n == REPEATS if mode == "device" else None, "false hold/fail rate "
                f"{(REPEATS - n) / REPEATS:.0%}" + ("" if mode == "device" else " (the network counts against the budget)"))
            for mode, n in passed.items()]
