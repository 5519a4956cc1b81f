"""The device-side gate: the device agent generates the load on the device (`load`), the orchestrator
analyses what comes back. Live over the real sshd + agent + real sidecar processes, and against an
agent reply that is garbage (the gate fails or is inconclusive with the reason, it never raises)."""

from __future__ import annotations

import base64
import io
import json
import zlib

import numpy as np
import pytest

from release import deploy as dep
from release.device_load import COMPRESS_OVER, pack_bytes, pack_rows
from release.gate import run_gate
from release.gate_device import AgentDataError, decode_samples, run_device_gate
from release.gate_settings import GateSettings, LoadProfile, Verdict, settings_with_overrides
from release.loadgen import Sample
from release.sample_model import golden_windows
from tests.fixtures.testbed import free_port

SETTINGS = settings_with_overrides({"duration_s": 5})
LEASE_S = 600.0


def _check(report, name):
    checks = {c.name: c for c in report.checks}
    assert name in checks, [c.name for c in report.checks]
    return checks[name]


# -- live: real sshd, agent and sidecar ---------------------------------------------------------
@pytest.fixture
def ssh_device(testbed, sshd_server, ssh_transport_factory):
    # v1 is served by the real sidecar; v2 by the `slow` double (every inference twice as long, >= 5 ms).
    spec = testbed.device("pi-devgate", "ssh", free_port(), module="tests.doubles.faulty_sidecars slow v2")
    spec = spec.model_copy(update={"host": sshd_server.host, "port": sshd_server.port, "user": sshd_server.user,
                                   "key_file": sshd_server.key_file, "known_hosts": sshd_server.known_hosts})
    return testbed, spec


def _activate(bed, spec, factory, tag, cfg):
    bundle = bed.build(tag, cfg)
    t = factory()
    try:
        dep.deploy_canary(t, spec, bundle, tag, bed.public_key, LEASE_S)
    finally:
        t.close()
    ref = np.load(io.BytesIO(bed.store.get_bytes(tag, "reference_outputs.npz")))
    return ref["windows"], {"latent": ref["latent"], "motif_scores": ref["motif_scores"]}


@pytest.mark.ssh
@pytest.mark.e2e
def test_device_side_load_passes_a_good_release_and_fails_a_slow_one(ssh_device, ssh_transport_factory):
    bed, spec = ssh_device
    assert spec.gate_mode == "device"  # the default for ssh and local devices
    start = dep.device_loader(spec, ssh_transport_factory)
    windows, ref = _activate(bed, spec, ssh_transport_factory, "v1", "cfg-1")
    good = run_device_gate(start, SETTINGS, windows=windows, reference=ref, baseline_latencies=None)
    assert good.verdict is Verdict.PASS, good.reasons
    assert good.mode == "device" and "EdgeInfer" in good.measured_from
    assert abs(good.windows_per_s - 25) < 0.5 and good.samples >= 100
    assert _check(good, "server_agreement").outcome == "pass"
    assert {c.outcome for c in good.checks if c.name.startswith("parity")} == {"pass"}
    json.loads(good.model_dump_json())
    t = ssh_transport_factory()
    try:
        dep.commit(t, spec, "v1")
    finally:
        t.close()

    windows, ref = _activate(bed, spec, ssh_transport_factory, "v2", "cfg-2")
    slow = run_device_gate(start, SETTINGS, windows=windows, reference=ref, baseline_latencies=good.latencies_ms)
    assert slow.verdict is Verdict.FAIL, slow.reasons
    assert any("last-known-good" in r for r in slow.reasons), slow.reasons
    assert slow.mode == "device"
    # The explicit orchestrator-side mode on the same canary is labelled as including the network.
    across = run_gate(spec.gate_url, SETTINGS, windows=windows, reference=ref, baseline_latencies=good.latencies_ms)
    assert across.mode == "orchestrator" and "network" in across.measured_from


# -- garbage from the agent ---------------------------------------------------------------------
FAULT = GateSettings(load=LoadProfile(duration_s=2, request_timeout_s=0.5))
WINDOWS = golden_windows(2)
REF = {"latent": np.ones((2, 64)), "motif_scores": np.ones((2, 12))}


def _reply(**over):
    rows = [(i / 25, i / 25, 2.0, 200, "") for i in range(50)]
    metrics = pack_bytes(b"# no histogram\n")
    doc = {"samples": pack_rows(rows), "parity": {"status": 200, "body": pack_bytes(b'{"latent": [[1]]}')},
           "metrics_before": {"status": 200, "body": metrics}, "metrics_after": {"status": 200, "body": metrics}}
    doc.update(over)
    return doc


def _gate(reply):
    def start(windows, params):
        assert params["rate"] == FAULT.load.rate_windows_per_s and params["latent_dim"] == 64
        if isinstance(reply, Exception):
            raise reply
        return reply

    report = run_device_gate(start, FAULT, windows=WINDOWS, reference=REF, baseline_latencies=None)
    json.loads(report.model_dump_json())
    assert report.mode == "device"
    return report


@pytest.mark.parametrize(("reply", "check", "why"), [
    (RuntimeError("ssh cut"), "load", "the device agent could not run the load: RuntimeError: ssh cut"),
    (["not", "a", "dict"], "load", "answered a JSON list"),
    (_reply(samples=None), "load", "timings: expected {'encoding'"),
    (_reply(samples={"encoding": "zlib+base64", "data": "!!!"}), "load", "timings: not zlib+base64"),
    (_reply(samples={"encoding": "zlib+base64", "data": base64.b64encode(zlib.compress(b"[1")).decode()}), "load",
     "timings: not JSON once inflated"),
    (_reply(samples={"encoding": "json", "data": {"fields": ["intended_s", "sent_s", "latency_ms", "status", "error"],
                                                  "rows": [[0, 0, float("nan"), 200, -1]], "errors": []}}),
     "load", "row 0 is not"),
    (_reply(samples={"encoding": "json", "data": {"fields": ["intended_s", "sent_s", "latency_ms", "status", "error"],
                                                  "rows": [[0, 0, 1.0, 200, 3]], "errors": []}}), "load", "row 0 is not"),
    (_reply(load_error="load target must be an http:// URL"), "load", "no load could be sent to the canary"),
    (_reply(parity={"error": "POST /infer/batch: no complete answer within 2 s"}), "parity_outputs", "no complete answer"),
    (_reply(parity={"status": 200, "body": 7}), "parity_outputs", "expected zlib+base64 text"),
    (_reply(parity={"status": 500, "body": pack_bytes(b'{"error": "inference_failed"}')}), "parity_outputs",
     "HTTP 500 (inference_failed"),
    (_reply(parity={"status": 200, "body": pack_bytes(b"<html>")}), "parity_outputs", "answer is not JSON"),
    (_reply(parity={"status": 200, "body": pack_bytes(b'{"latent": [[1]]}')}), "parity_outputs",
     "'latent' has shape [1, 1], expected [2, 64]"),
])
def test_garbage_from_the_agent_fails_the_gate_with_the_reason(reply, check, why):
    report = _gate(reply)
    assert report.verdict is Verdict.FAIL, report.reasons
    c = _check(report, check)
    assert c.outcome == "fail" and why in c.reason, c.reason


@pytest.mark.parametrize(("part", "why"), [
    ({"status": 200, "body": pack_bytes(b"\xff\xfe garbage {")}, "GET /metrics: not Prometheus text"),
    ({"status": 404, "body": pack_bytes(b"")}, "GET /metrics: HTTP 404"),
    ({"error": "GET /metrics: ConnectionRefusedError"}, "ConnectionRefusedError"),
    (None, "the device agent returned no result"),
])
def test_unusable_metrics_from_the_agent_leave_the_cross_check_inconclusive(part, why):
    report = _gate(_reply(metrics_after=part))
    agreement = _check(report, "server_agreement")
    assert agreement.outcome == "inconclusive" and why in agreement.reason, agreement.reason
    assert report.verdict is not Verdict.PASS


def test_timings_round_trip_plain_and_compressed():
    few = [(0.0, 0.001, 1.5, 200, ""), (0.04, 0.04, 2000.0, 0, "TimeoutError: timed out")]
    assert pack_rows(few)["encoding"] == "json"
    assert decode_samples(pack_rows(few)) == [Sample(0.0, 0.001, 1.5, 200), Sample(0.04, 0.04, 2000.0, 0, "TimeoutError: timed out")]
    many = [(i / 100, i / 100 + 1e-4, 3.25, 200 if i % 7 else 500, "" if i % 7 else "HTTP 500 (x)") for i in range(6000)]
    packed = pack_rows(many)
    assert packed["encoding"] == "zlib+base64" and len(json.dumps(packed)) > COMPRESS_OVER
    decoded = decode_samples(packed)
    assert len(decoded) == 6000 and decoded[7] == Sample(0.07, 0.0701, 3.25, 500, "HTTP 500 (x)")
    assert sum(not s.ok for s in decoded) == len(range(0, 6000, 7))


def test_a_zip_bomb_from_the_agent_is_refused():
    bomb = base64.b64encode(zlib.compress(b"[" + b" " * (80 << 20) + b"]", 9)).decode()
    with pytest.raises(AgentDataError, match="once inflated"):
        decode_samples({"encoding": "zlib+base64", "data": bomb})


def test_a_large_answer_travels_as_a_file(tmp_path, monkeypatch, capsys):
    """Over SSH a writer stalls once the reader's window is full: a large `load` answer is left in a file
    beside the windows and downloaded, not printed."""
    import argparse

    from release import device_load
    from release.devices import DeviceSpec
    from release.transport import LocalTransport, RemoteResult

    monkeypatch.setattr(device_load, "MAX_PRINTED_BYTES", 100)
    gate_dir = tmp_path / "gate"
    gate_dir.mkdir()
    (gate_dir / "windows.json").write_text(json.dumps({"windows": WINDOWS.tolist()}))
    args = argparse.Namespace(windows=gate_dir / "windows.json", rate=20.0, duration_s=0.5, concurrency=2, timeout_s=0.5,
                              error_limit=3, latent_dim=64, num_motifs=12, probe_timeout_s=1.0, metrics_timeout_s=1.0)
    assert device_load.command({"health_url": f"http://127.0.0.1:{free_port()}"}, args, "v1") == 0
    printed = capsys.readouterr().out.strip()
    assert json.loads(printed)["result_file"] == str(gate_dir / "load-result.json")

    class Device(LocalTransport):
        def run(self, argv, timeout=120.0):
            return RemoteResult(0, printed + "\n", "") if "load" in argv else super().run(argv, timeout)

    spec = DeviceSpec(name="pi-file", transport="local", agent_root=str(tmp_path), gate_url="http://127.0.0.1:9")
    body = dep.load(Device(), spec, WINDOWS, {"rate": 20.0, "duration_s": 0.5, "time_bound_s": 5})
    assert body["current"] == "v1" and "ConnectionRefusedError" in body["parity"]["error"]
    report = run_device_gate(lambda w, p: body, FAULT, windows=WINDOWS, reference=REF, baseline_latencies=None)
    assert report.verdict is Verdict.FAIL and "ConnectionRefusedError" in _check(report, "error_rate").reason
