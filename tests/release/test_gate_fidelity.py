"""Gate fidelity on a lab network, 20 trials each: the device sits behind a delay-and-jitter relay (20 ms
± 15 ms each way, tests/doubles/delay_relay.py; these machines have no netem). The device-side gate (the
agent's `load`) measures what EdgeInfer sees; the orchestrator-side gate, run side by side on the same
canary, pays the network round trip. The second half of each series runs with the orchestrator's CPU
saturated by busy loops the test starts and stops: the device-side verdicts must not change.

The device runs the sidecar's hailo backend on the strict HailoRT double (tests/doubles/hailo_platform)
with HAILO_DOUBLE_INFER_MS, the chip's time per window, set near the limit so that a +30 % regression
crosses it (the sample model's ~1.5 ms on onnxruntime would hide +30 % under the noise floor):

- healthy: 38 ms per window. The sidecar serialises inference (one VDevice, one lock) and the load is
  open-loop at 20 windows/s (one every 50 ms: utilisation 0.8, no queue), so p95 = 38 ms + the HTTP
  path. Measured in 4 runs at host loads of 8-15 on 2 cores (two beside 2 extra busy loops): device-side
  p95 39.3-40.9 ms (server 39.9 ms), >= 9.1 ms under the limit; orchestrator-side p95 over the link
  105-256 ms.
- regressed: 49.4 ms (+30 %), ~51 ms with the HTTP path: over the 50 ms between arrivals (utilisation
  1.02-1.05) the queue grows by 1-2 ms a window. Measured: device-side p95 58.3-81.4 ms (>= 8.3 ms over),
  achieved 19.75-19.89 windows/s; the baseline comparison (median 1.3x the last-known-good) fails it too.
  Any +30 % regression that crosses the p95 limit at 20 windows/s is this close to saturation:
  p95 >= 50 ms needs >= ~48 ms per window, 0.96 of the 50 ms between windows. Below 38 ms a +30 % device
  stays under the limit on a quiet host and only the baseline comparison could catch it.
The load runs at 20 windows/s, EdgeInfer's rate and the product's floor, not the gate's default 25: at
25/s a serial device has 40 ms per window and the throughput check would bind before the p95 limit.

Statistics: each trial is 3.5 s of load with the gate's 1 s warm-up, 50 scored samples (the gate's
min_samples), so each p95 lies between the 47th and 48th of 50 ordered samples; trial-to-trial the p95
moved by ~1 ms, against margins of >= 9.1 ms (healthy) and >= 8.3 ms (regressed). The 20 trials run on one
long-lived canary per release (one deploy each): the whole test took 247-316 s at host loads of 8-15.

The device is its own network namespace joined by veth when namespaces can be created (the agent and
the sidecar run inside it, on CPU 0 at real-time priority: tests/doubles/lab_network.py); otherwise
loopback, with the reason printed (the relay is the network either way). Only loopback and addresses
inside the namespace this test creates are used. In CI (tests/fixtures/services.py rules) a namespace
that cannot be made fails the test instead of falling back.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from release import deploy as dep
from release.gate import run_gate
from release.gate_device import run_device_gate
from release.gate_settings import GateSettings, LoadProfile, Verdict
from tests.doubles.delay_relay import DelayRelay
from tests.doubles.lab_network import ORCHESTRATOR_CPU, PINNED, LabDevice
from tests.fixtures.doubles import DOUBLES_BIN
from tests.fixtures.services import services_required
from tests.fixtures.testbed import REPO, free_port
from tests.fixtures.testbed import Testbed as PipelineTestbed  # not collected as a test class

pytestmark = pytest.mark.e2e


@pytest.fixture
def hailo_testbed(tmp_path, doubles_on_path) -> Iterator[PipelineTestbed]:
    """Releases compiled by the DFC double: HEFs the hailo backend (on the HailoRT double) accepts."""
    bed = PipelineTestbed(tmp_path, hailo_bin=str(doubles_on_path / "hailo"))
    yield bed
    bed.stop_sidecars()


@pytest.fixture
def lab_device(hailo_testbed) -> Iterator[tuple[object, object, str, str]]:
    """(spec, transport factory, address the orchestrator reaches the sidecar at, where) for one device."""
    port = free_port()
    with LabDevice() as lab:
        spec = hailo_testbed.device("pi-lab", "local", port)
        if lab.where == "netns":
            # Inside the namespace the sidecar listens on all of its addresses: lo (the agent) and the veth.
            spec = spec.model_copy(update={"restart_command": [*(spec.restart_command or []), "--env", "HOST=0.0.0.0"]})
        elif services_required():  # CI runs as root with iproute2: a namespace that cannot be made is a broken CI
            pytest.fail(f"lab network namespace unavailable in CI: {lab.why}", pytrace=False)
        else:
            print(f"lab network on loopback (the relay still adds the delay): {lab.why}")
        try:
            yield spec, lab.transport, lab.address, lab.where
        finally:
            hailo_testbed.stop_sidecars()


HEALTHY_MS = 38.0
REGRESSED_MS = HEALTHY_MS * 1.3
TRIALS = 20
TRIAL = GateSettings(load=LoadProfile(rate_windows_per_s=20.0, duration_s=3.5, warmup_s=1.0))


def _on_device_time(spec, infer_ms: float):
    """The device spec whose sidecar runs the hailo backend on the HailoRT double, the chip taking
    ``infer_ms`` per window (a later --env wins: the agent's restart command applies them in order)."""
    env = {"INFER_MODE": "hailo", "HAILO_DEVICE": str(Path(spec.agent_root) / "hailo0"),
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests" / "doubles")]),
           "PATH": os.pathsep.join([str(DOUBLES_BIN), str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "HAILO_DOUBLE_ONNX": "{release_dir}/model.onnx", "HAILO_DOUBLE_INFER_MS": f"{infer_ms:g}"}
    Path(spec.agent_root).mkdir(parents=True, exist_ok=True)
    (Path(spec.agent_root) / "hailo0").write_bytes(b"")  # the device node the sidecar checks for
    extra = [a for k, v in env.items() for a in ("--env", f"{k}={v}")]
    return spec.model_copy(update={"restart_command": [*spec.restart_command, *extra]})


@contextlib.contextmanager
def _orchestrator_saturated(on: bool) -> Iterator[None]:
    """3 busy loops and this process (the orchestrator) on the orchestrator's CPU; the device's agent and
    sidecar keep CPU 0 (DeviceTransport pins them there)."""
    if not on:
        yield
        return
    affinity = os.sched_getaffinity(0)
    burners = [subprocess.Popen(["taskset", "-c", str(ORCHESTRATOR_CPU), sys.executable, "-c", "while True: pass"])
               for _ in range(3)]
    try:
        os.sched_setaffinity(0, {ORCHESTRATOR_CPU})
        yield
    finally:
        os.sched_setaffinity(0, affinity)
        for b in burners:
            b.kill()
            b.wait(10)


def _activate(bed, make, spec, tag: str):
    dep.deploy_canary(make(), spec, bed.build(tag, f"cfg-{tag}"), tag, bed.public_key, 600.0)
    ref = np.load(io.BytesIO(bed.store.get_bytes(tag, "reference_outputs.npz")))
    return ref["windows"], {"latent": ref["latent"], "motif_scores": ref["motif_scores"]}


def _series(start, windows, reference, baseline, across_url: str | None):
    """TRIALS gate runs on the live canary, the second half with the orchestrator saturated: one row each
    (saturated, device-side report, orchestrator-side report or None)."""
    rows = []
    for n in range(TRIALS):
        saturated = PINNED and n >= TRIALS // 2
        # Parity (the canary's outputs against the reference) in the first trial only: it does not change
        # between trials of one canary, and it costs ~0.4 s a trial (8 windows at the device's time).
        ref = reference if n == 0 else None
        with _orchestrator_saturated(saturated):
            device = run_device_gate(start, TRIAL, windows=windows, reference=ref, baseline_latencies=baseline)
            across = None if across_url is None else run_gate(across_url, TRIAL, windows=windows, reference=ref,
                                                              baseline_latencies=baseline)
        rows.append((saturated, device, across))
        baseline = baseline if baseline is not None else device.latencies_ms
    return rows


def _say(where: str, label: str, rows) -> None:
    for saturated, d, o in rows:
        print(f"[{where}] {label}{' (orchestrator saturated)' if saturated else ''}: device-side p95 {d.p95_ms:.1f} ms "
              f"(server {d.server_p95_ms or float('nan'):.1f}, {d.windows_per_s:.2f}/s) -> {d.verdict.value}"
              + ("" if o is None else f"; orchestrator-side p95 {o.p95_ms:.1f} ms -> {o.verdict.value}"))


def test_near_limit_release_passes_20_of_20_device_side_and_a_30_percent_regression_fails_20_of_20(
        hailo_testbed, lab_device):
    spec, make, address, where = lab_device
    healthy_spec = _on_device_time(spec, HEALTHY_MS)
    windows, reference = _activate(hailo_testbed, make, healthy_spec, "v1")
    start = dep.device_loader(healthy_spec, make)
    port = int(spec.health_url.rsplit(":", 1)[1])
    with DelayRelay(address, port, delay_ms=20, jitter_ms=15, seed=15) as lab:
        healthy = _series(start, windows, reference, None, f"http://127.0.0.1:{lab.port}")
    _say(where, f"healthy {HEALTHY_MS:g} ms/window", healthy)
    dep.commit(make(), healthy_spec, "v1")

    regressed_spec = _on_device_time(spec, REGRESSED_MS)
    windows, reference = _activate(hailo_testbed, make, regressed_spec, "v2")
    baseline = healthy[0][1].latencies_ms  # the last-known-good's latencies, as the canary DAG passes them
    regressed = _series(dep.device_loader(regressed_spec, make), windows, reference, baseline, None)
    _say(where, f"regressed {REGRESSED_MS:g} ms/window (+30 %)", regressed)

    device_ok = [d for _, d, _ in healthy]
    worst = max(d.p95_ms or math.inf for d in device_ok)
    across_passed = sum(o is not None and o.verdict is Verdict.PASS for _, _, o in healthy)
    best_regressed = min(d.p95_ms or math.inf for _, d, _ in regressed)
    print(f"[{where}] device-side: healthy passed {sum(d.verdict is Verdict.PASS for d in device_ok)}/{TRIALS} "
          f"(worst p95 {worst:.1f} ms: {50 - worst:.1f} ms under the limit), regressed failed "
          f"{sum(d.verdict is Verdict.FAIL for _, d, _ in regressed)}/{TRIALS} (best p95 {best_regressed:.1f} ms); "
          f"orchestrator-side over the link: healthy passed {across_passed}/{TRIALS}, false fail/hold rate "
          f"{(TRIALS - across_passed) / TRIALS:.0%}")
    # The hailo backend on the double computes the release's ONNX: its outputs match the reference.
    assert {c.outcome for c in healthy[0][1].checks if c.name.startswith("parity")} == {"pass"}
    for saturated, d, o in healthy:
        assert d.mode == "device" and d.verdict is Verdict.PASS, (saturated, d.reasons)
        assert {c.name: c for c in d.checks}["server_agreement"].outcome == "pass", d.reasons
        assert d.p95_ms is not None and d.p95_ms > HEALTHY_MS  # the chip's time is really in the measurement
        # Every request across the link pays two one-way delays of at least 5 ms: with 40 ms on the chip the
        # orchestrator-side p95 cannot meet 50 ms. Its false fail/hold rate (printed) is 100 % by construction.
        assert o is not None and o.mode == "orchestrator" and o.verdict is not Verdict.PASS
        assert o.p95_ms is not None and o.p95_ms > d.p95_ms + 10
    for saturated, d, _ in regressed:
        assert d.verdict is Verdict.FAIL, (saturated, d.reasons)
        failed = {c.name for c in d.checks if c.outcome == "fail"}
        assert {"p95_ms", "baseline_median_ratio"} <= failed, (saturated, d.reasons)


def test_the_relay_delays_each_way(tmp_path: Path):
    import socket
    import time

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        with DelayRelay("127.0.0.1", srv.getsockname()[1], delay_ms=20, jitter_ms=0) as lab:
            c = socket.create_connection(("127.0.0.1", lab.port))
            s, _ = srv.accept()
            t0 = time.monotonic()
            c.sendall(b"ping")
            assert s.recv(4) == b"ping"
            s.sendall(b"pong")
            assert c.recv(4) == b"pong"
            rtt = time.monotonic() - t0
            c.close()
            s.close()
    assert 0.039 < rtt < 0.5
