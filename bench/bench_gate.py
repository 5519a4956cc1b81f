"""Gate fidelity on the lab-network testbed (tests/doubles/lab_network.py: the device is its own network
namespace joined by veth, on CPU 0 at real-time priority; the orchestrator reaches it through a 20 ms
± 15 ms-each-way relay, tests/doubles/delay_relay.py).

- Device-side gate (the agent's `load` on the device) at 20 and 100 windows/s: achieved rate within 1 %
  of the target, and client p95 within 1 ms of the sidecar's own /metrics histogram p95.
- The same at 100 windows/s with the load client given the host's second core (the sidecar keeps CPU
  0), and with the client at normal priority on the device's core: how much of the client-server gap
  is this 2-core host's (one core for the whole device, shared with the host's other work) rather
  than the product's.
- The two gate modes side by side in one run (GATE_BENCH_REPEATS pairs, default 10) on the same
  healthy canary: how often each passes it, and how often their verdicts agree.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.table import Row

RATES = (20.0, 100.0)
DURATION_S = float(os.environ.get("GATE_BENCH_DURATION_S", "15"))
REPEATS = int(os.environ.get("GATE_BENCH_REPEATS", "10"))


def rows() -> list[Row]:
    from release import deploy as dep
    from release.devices import DeviceSpec
    from release.sample_model import golden_windows, write_sample_model
    from tests.doubles.lab_network import DeviceTransport, LabDevice
    from tests.fixtures.testbed import free_port

    with tempfile.TemporaryDirectory() as tmp_name, LabDevice() as lab:
        tmp = Path(tmp_name)
        model = write_sample_model(tmp / "model.onnx")
        port = free_port()
        env = {**os.environ, "INFER_MODE": "onnx", "ONNX_PATH": str(model), "HAILO_SIDECAR_ALLOW_AMD64": "1",
               "PORT": str(port), "HOST": "0.0.0.0" if lab.where == "netns" else "127.0.0.1",  # in the namespace: lo and the veth
               "HEF_PATH": str(tmp / "none")}
        proc = subprocess.Popen([*lab.prefix, sys.executable, "-m", "hailo_sidecar"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            device_url = f"http://127.0.0.1:{port}"  # the sidecar as the agent sees it, inside the namespace
            _wait_ready(lab.prefix, device_url)
            # The agent installed on the lab device, its health_url the sidecar: no release switch needed.
            spec = DeviceSpec(name="bench", transport="local", agent_root=str(tmp / "agent"), agent_python=sys.executable,
                              gate_url=f"http://{lab.address}:{port}", health_url=device_url)
            (tmp / "pub").write_text("unused: the bench does not verify releases\n")
            dep.install_agent(lab.transport(), spec, tmp / "pub")
            windows = golden_windows(8)
            out = [Row("gate lab network", float(lab.where == "netns"), "netns", "-", None,
                       lab.where + (f" ({lab.why})" if lab.why else ", device on CPU 0 at real-time priority"))]
            for rate in RATES:
                out += _fidelity(dep.device_loader(spec, lab.transport), windows, rate, "")
            # Where the client-server gap at 100/s comes from: the client given a second core, then the
            # client at normal priority on the device's core (the old bench's set-up: 3.84 ms client vs
            # 1.48 ms server on a busy host). Measured at host loads of 8-15: on the device's core at real-time
            # priority 0.66-0.77 ms apart, on a second core 0.48-0.81 ms (the gap is not the shared core's),
            # at normal priority client p95 8.9-15.2 ms with a send lag of up to 8 ms at p95 and the server's
            # own p95 up to 9.3 ms: the host's other work, not the product's client.
            two_cores = DeviceTransport(lab.prefix_on((1,), lab.realtime))
            out += _fidelity(dep.device_loader(spec, lambda: two_cores), windows, 100.0, " (client on a 2nd core)")
            normal = DeviceTransport(lab.prefix_on(lab.cpus, False))
            out += _fidelity(dep.device_loader(spec, lambda: normal), windows, 100.0, " (client at normal priority)")
            out += _side_by_side(dep.device_loader(spec, lab.transport), lab.address, port, windows)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    return out


def _wait_ready(prefix: list[str], url: str) -> None:
    probe = f"import urllib.request; urllib.request.urlopen({url + '/readyz'!r}, timeout=1)"
    for _ in range(200):
        if subprocess.run([*prefix, sys.executable, "-c", probe], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"the bench sidecar at {url} did not become ready")


def _fidelity(start, windows, rate: float, where: str) -> list[Row]:
    from release.gate_device import run_device_gate
    from release.gate_settings import settings_with_overrides

    report = run_device_gate(start, settings_with_overrides({"duration_s": DURATION_S, "rate_windows_per_s": rate}),
                             windows=windows, reference=None, baseline_latencies=None)
    p95, server = report.p95_ms or float("nan"), report.server_p95_ms or float("nan")
    rate_err = abs(report.windows_per_s - rate) / rate * 100
    gap = abs(p95 - server)
    label = f"gate device-side at {rate:g}/s{where}"
    return [
        Row(f"{label}: achieved rate", report.windows_per_s, "windows/s", f"within 1% of {rate:g}", rate_err <= 1.0,
            f"verdict {report.verdict.value}, {report.samples} samples over {DURATION_S:g} s, error {rate_err:.2f}%"),
        Row(f"{label}: client p95", p95, "ms", "-", None, f"p50 {report.p50_ms or float('nan'):.2f} ms"),
        Row(f"{label}: server /metrics p95", server, "ms", "-", None, "interpolated in histogram buckets"),
        Row(f"{label}: |client - server| p95", gap, "ms", "<= 1", gap <= 1.0),
    ]


def _side_by_side(start, address: str, port: int, windows) -> list[Row]:
    """REPEATS gate pairs on the healthy canary, device-side then orchestrator-side over the link."""
    from release.gate import run_gate
    from release.gate_device import run_device_gate
    from release.gate_settings import Verdict, settings_with_overrides
    from tests.doubles.delay_relay import DelayRelay

    settings = settings_with_overrides({"duration_s": 5})
    passed = {"device": 0, "orchestrator": 0}
    agreed = 0
    with DelayRelay(address, port, delay_ms=20, jitter_ms=15, seed=20) as lab:
        for _ in range(REPEATS):
            d = run_device_gate(start, settings, windows=windows, reference=None, baseline_latencies=None)
            o = run_gate(f"http://127.0.0.1:{lab.port}", settings, windows=windows, reference=None, baseline_latencies=None)
            passed["device"] += d.verdict is Verdict.PASS
            passed["orchestrator"] += o.verdict is Verdict.PASS
            agreed += d.verdict == o.verdict
    out = [Row(f"gate {mode}-side: healthy passes over 20±15 ms link", float(n), f"of {REPEATS}", f"{REPEATS} of {REPEATS}",
               n == REPEATS if mode == "device" else None, f"false hold/fail rate {(REPEATS - n) / REPEATS:.0%}"
               + ("" if mode == "device" else " (the network counts against the budget)"))
           for mode, n in passed.items()]
    out.append(Row("gate modes: verdicts agree (healthy canary)", float(agreed), f"of {REPEATS}", "-", None,
                   f"agreement rate {agreed / REPEATS:.0%}, side by side in one run"))
    return out
