"""Gate fidelity on a lab network: the device sits behind a delay-and-jitter relay (20 ms ± 15 ms each
way, tests/doubles/delay_relay.py; these machines have no netem). The device-side gate (the agent's
`load`) measures what EdgeInfer sees — its p95 tracks the sidecar's own /metrics p95 — while the
orchestrator-side gate, run side by side on the same canary, pays the network round trip.

The device is its own network namespace joined by veth when namespaces can be created (the agent and
the sidecar run inside it); otherwise loopback, with the reason printed (the relay is the network
either way). Only loopback and addresses inside the
namespace this test creates are used. In CI (tests/fixtures/services.py rules) a namespace that
cannot be created fails the test instead of falling back.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from release import deploy as dep
from release.gate import run_gate
from release.gate_device import run_device_gate
from release.gate_settings import Verdict, settings_with_overrides
from release.transport import LocalTransport, RemoteResult
from tests.doubles.delay_relay import DelayRelay
from tests.fixtures.services import services_required
from tests.fixtures.testbed import free_port

pytestmark = pytest.mark.e2e
SETTINGS = settings_with_overrides({"duration_s": 5})


DEVICE_CPU, ORCHESTRATOR_CPU = 0, 1


class DeviceTransport(LocalTransport):
    """The device on this machine: commands run inside its namespace (ip netns exec) if it has one, and
    on the device's own CPU (taskset; the sidecar the agent starts inherits it). Files are local."""

    def __init__(self, ns: str | None) -> None:
        # A device is its own machine: on this shared host its CPU is given to it first (nice -10 as root),
        # so other work on the host cannot stand in for an orchestrator that is busy.
        self.prefix = ((["ip", "netns", "exec", ns] if ns else []) + (["taskset", "-c", str(DEVICE_CPU)] if PINNED else [])
                       + (["nice", "-n", "-10"] if os.geteuid() == 0 else []))

    def run(self, argv: list[str], timeout: float = 120.0) -> RemoteResult:
        return super().run([*self.prefix, *argv], timeout)


PINNED = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def lab_device(testbed) -> Iterator[tuple[object, object, str, str]]:
    """(spec, transport factory, address the orchestrator reaches the sidecar at, where) for one device."""
    port = free_port()
    ns = f"hp-{uuid.uuid4().hex[:8]}"
    host_if, dev_if = f"vh{ns[3:]}", f"vd{ns[3:]}"
    where, why = "netns", ""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        where, why = "loopback", "network namespaces need root and iproute2"
    else:
        try:
            _ip("netns", "add", ns)
            _ip("link", "add", host_if, "type", "veth", "peer", "name", dev_if, "netns", ns)
            _ip("addr", "add", "10.213.7.1/30", "dev", host_if)
            _ip("link", "set", host_if, "up")
            for args in (("addr", "add", "10.213.7.2/30", "dev", dev_if), ("link", "set", dev_if, "up"),
                         ("link", "set", "lo", "up")):
                _ip("netns", "exec", ns, "ip", *args)
        except (subprocess.CalledProcessError, OSError) as exc:
            where, why = "loopback", f"cannot create a network namespace here: {getattr(exc, 'stderr', b'') or exc}"
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
    if where == "netns":
        spec = testbed.device("pi-lab", "local", port)
        # Inside the namespace the sidecar listens on all of its addresses: lo (the agent) and the veth.
        spec = spec.model_copy(update={"restart_command": [*(spec.restart_command or []), "--env", "HOST=0.0.0.0"]})
        make = lambda: DeviceTransport(ns)  # noqa: E731
        address = "10.213.7.2"
    else:
        if services_required():  # CI runs as root with iproute2: a namespace that cannot be made is a broken CI
            pytest.fail(f"lab network namespace unavailable in CI: {why}", pytrace=False)
        print(f"lab network on loopback (the relay still adds the delay): {why}")
        spec = testbed.device("pi-lab", "local", port)
        make = lambda: DeviceTransport(None)  # noqa: E731
        address = "127.0.0.1"
    try:
        yield spec, make, address, where
    finally:
        testbed.stop_sidecars()
        if where == "netns":
            subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=10)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def test_device_side_p95_tracks_the_server_while_orchestrator_side_pays_the_network(testbed, lab_device):
    spec, make, address, where = lab_device
    bundle = testbed.build("v1", "cfg-1")
    t = make()
    dep.deploy_canary(t, spec, bundle, "v1", testbed.public_key, 600.0)
    ref = np.load(io.BytesIO(testbed.store.get_bytes("v1", "reference_outputs.npz")))
    windows, reference = ref["windows"], {"latent": ref["latent"], "motif_scores": ref["motif_scores"]}
    port = int(spec.health_url.rsplit(":", 1)[1])
    with DelayRelay(address, port, delay_ms=20, jitter_ms=15, seed=15) as lab:
        device = run_device_gate(dep.device_loader(spec, make), SETTINGS, windows=windows, reference=reference,
                                 baseline_latencies=None)
        across = run_gate(f"http://127.0.0.1:{lab.port}", SETTINGS, windows=windows, reference=reference,
                          baseline_latencies=None)
    print(f"[{where}] device-side p95 {device.p95_ms:.1f} ms (server {device.server_p95_ms:.1f}) -> {device.verdict.value}; "
          f"orchestrator-side p95 {across.p95_ms:.1f} ms (server {across.server_p95_ms:.1f}) -> {across.verdict.value}")
    assert device.mode == "device" and across.mode == "orchestrator"
    assert device.verdict is Verdict.PASS, device.reasons
    agreement = {c.name: c for c in device.checks}["server_agreement"]
    assert agreement.outcome == "pass", agreement.reason  # client p95 within tolerance of the server's
    assert device.p95_ms is not None and across.p95_ms is not None and across.server_p95_ms is not None
    # Two one-way delays of U(5, 35) ms: at least 10 ms per request, a p95 near 60 ms. The device-side
    # p95 does not see it; the orchestrator-side p95 does, and the healthy release is not passed there.
    assert across.p95_ms > device.p95_ms + 25
    assert across.p95_ms > across.server_p95_ms + 25
    assert across.verdict is not Verdict.PASS


def _burners(n: int) -> list[subprocess.Popen[bytes]]:
    """CPU hogs on the orchestrator's CPU, started and stopped by the test."""
    return [subprocess.Popen(["taskset", "-c", str(ORCHESTRATOR_CPU), sys.executable, "-c", "while True: pass"])
            for _ in range(n)]


@pytest.mark.skipif(not PINNED, reason="needs 2 CPUs and taskset to give the device and the orchestrator their own")
def test_device_side_verdict_holds_with_the_orchestrator_saturated(testbed, lab_device):
    """The false hold of issue 15: an orchestrator starved of CPU. The device (agent + sidecar) has CPU 0,
    the orchestrator (this process and 3 busy loops) CPU 1. The device-side gate gives the same verdict
    as on a quiet orchestrator; the orchestrator-side gate's p95 is printed, not asserted (it depends on
    how the scheduler shares CPU 1)."""
    spec, make, address, where = lab_device
    bundle = testbed.build("v1", "cfg-1")
    dep.deploy_canary(make(), spec, bundle, "v1", testbed.public_key, 600.0)
    ref = np.load(io.BytesIO(testbed.store.get_bytes("v1", "reference_outputs.npz")))
    windows, reference = ref["windows"], {"latent": ref["latent"], "motif_scores": ref["motif_scores"]}
    start = dep.device_loader(spec, make)
    quiet = run_device_gate(start, SETTINGS, windows=windows, reference=reference, baseline_latencies=None)
    affinity = os.sched_getaffinity(0)
    burners = _burners(3)
    try:
        os.sched_setaffinity(0, {ORCHESTRATOR_CPU})
        busy = run_device_gate(start, SETTINGS, windows=windows, reference=reference, baseline_latencies=quiet.latencies_ms)
        port = int(spec.health_url.rsplit(":", 1)[1])
        across = run_gate(f"http://{address}:{port}", SETTINGS, windows=windows, reference=reference, baseline_latencies=None)
    finally:
        os.sched_setaffinity(0, affinity)
        for b in burners:
            b.kill()
            b.wait(10)
    print(f"[{where}] quiet orchestrator: device-side p95 {quiet.p95_ms:.1f} ms -> {quiet.verdict.value}; saturated: "
          f"device-side p95 {busy.p95_ms:.1f} ms (server {busy.server_p95_ms:.1f}) -> {busy.verdict.value}, "
          f"orchestrator-side p95 {across.p95_ms:.1f} ms (server {across.server_p95_ms:.1f}) -> {across.verdict.value}")
    assert quiet.verdict is Verdict.PASS, quiet.reasons
    assert busy.verdict is Verdict.PASS, busy.reasons  # the same verdict, baseline comparison included
    assert busy.mode == "device" and across.mode == "orchestrator"


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
