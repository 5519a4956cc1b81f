"""The gate against real sidecar processes: a good one passes, a 2x slower one fails on the
baseline comparison, a drifting one fails parity. And against canaries that send garbage back
(the real sidecar wrapped by a faulty double, a raw garbage server, nothing listening): the gate
returns a report with a failed or inconclusive check saying why, it never raises."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from release.gate import GateReport, run_gate, time_bound_s, write_histogram_png
from release.gate_settings import GateSettings, LoadProfile, Verdict, settings_with_overrides
from release.sample_model import golden_windows
from tests.doubles.garbage_http import MODES, garbage_server
from tests.fixtures.testbed import free_port

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def sidecar(tmp_path, sample_onnx_path):
    procs = []

    def start(module: str = "hailo_sidecar") -> str:
        port = free_port()
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "ONNX_PATH": str(sample_onnx_path),
               "HEF_PATH": str(tmp_path / "none.hef"), "INFER_MODE": "onnx", "HAILO_SIDECAR_ALLOW_AMD64": "1",
               "PORT": str(port), "HOST": "127.0.0.1", "CONFIG_VERSION": "cfg-gate"}
        proc = subprocess.Popen([sys.executable, "-m", *module.split()], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/readyz", timeout=1)
                return url
            except OSError:
                time.sleep(0.1)
        pytest.fail(f"sidecar {module} did not start")

    yield start
    for p in procs:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


@pytest.fixture(scope="module")
def reference(sample_onnx_path):
    w = golden_windows(8)
    sess = ort.InferenceSession(str(sample_onnx_path), providers=["CPUExecutionProvider"])
    outs = [sess.run(["latent", "motif_scores"], {"window": w[i : i + 1]}) for i in range(8)]
    return w, {"latent": np.concatenate([o[0] for o in outs]), "motif_scores": np.concatenate([o[1] for o in outs])}


SETTINGS = settings_with_overrides({"duration_s": 5})


def test_good_sidecar_passes_then_slow_one_fails_baseline(sidecar, reference, tmp_path):
    windows, ref = reference
    good = run_gate(sidecar(), SETTINGS, windows=windows, reference=ref, baseline_latencies=None)
    assert good.verdict is Verdict.PASS, good.reasons
    assert abs(good.windows_per_s - 25) < 0.5
    png = write_histogram_png(good, tmp_path / "h.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    slow = run_gate(sidecar("tests.doubles.faulty_sidecars slow"), SETTINGS, windows=windows, reference=ref,
                    baseline_latencies=good.latencies_ms)
    assert slow.verdict is Verdict.FAIL, slow.reasons
    assert any("last-known-good" in r for r in slow.reasons)
    json.loads(slow.model_dump_json())


def test_drifting_sidecar_fails_parity(sidecar, reference):
    windows, ref = reference
    r = run_gate(sidecar("tests.doubles.faulty_sidecars drift"), SETTINGS, windows=windows, reference=ref,
                 baseline_latencies=None)
    assert r.verdict is Verdict.FAIL
    assert any("parity" in x for x in r.reasons)


# Short load, short timeouts: these canaries fail fast (consecutive-error abort) or not at all.
FAULT = GateSettings(load=LoadProfile(duration_s=2, request_timeout_s=0.5))


def _gate(url: str, reference) -> GateReport:
    windows, ref = reference
    report = run_gate(url, FAULT, windows=windows, reference=ref, baseline_latencies=None, probe_timeout_s=2.0)
    json.loads(report.model_dump_json())  # a report the pipeline can store
    return report


def _check(report: GateReport, name: str):
    checks = {c.name: c for c in report.checks}
    assert name in checks, [c.name for c in report.checks]
    return checks[name]


@pytest.mark.parametrize(
    ("mode", "parity_reason", "load_reason"),
    [
        ("shortlatent", "'latent' has shape [8, 32], expected [8, 64]", "'latent' has 32 values, expected 64"),
        ("wrongrows", "'latent' has shape [7, 64], expected [8, 64]", None),
        ("nan", "HTTP 422 (output_non_finite", "HTTP 422 (output_non_finite"),
        ("http500", "HTTP 500 (inference_failed", "HTTP 500 (inference_failed"),
        ("nonjson", "POST /infer/batch: answer is not JSON", "answer is not JSON"),
        ("hang", "POST /infer/batch: no complete answer within 2 s", "timed out"),
    ],
)
def test_garbage_from_a_sidecar_fails_the_gate_with_the_reason(sidecar, reference, mode, parity_reason, load_reason):
    report = _gate(sidecar(f"tests.doubles.faulty_sidecars {mode}"), reference)
    assert report.verdict is Verdict.FAIL, report.reasons
    parity = _check(report, "parity_outputs")
    assert parity.outcome == "fail" and parity_reason in parity.reason, parity.reason
    assert parity.reason in report.reasons
    if load_reason is not None:  # /infer under load answers the same garbage: every request is an error
        errors = _check(report, "error_rate")
        assert errors.outcome == "fail" and load_reason in errors.reason, errors.reason


@pytest.mark.parametrize(("mode", "why"), [("garbagemetrics", "GET /metrics: not Prometheus text"),
                                           ("nometrics", "GET /metrics: HTTP 404")])
def test_unreadable_metrics_leave_the_cross_check_inconclusive(sidecar, reference, mode, why):
    report = _gate(sidecar(f"tests.doubles.faulty_sidecars {mode}"), reference)
    assert report.verdict is not Verdict.PASS
    agreement = _check(report, "server_agreement")
    assert agreement.outcome == "inconclusive" and why in agreement.reason, agreement.reason
    assert report.server_p95_ms is None
    # the canary itself answered correctly: parity passed
    assert {c.outcome for c in report.checks if c.name.startswith("parity")} == {"pass"}


@pytest.mark.parametrize("mode", MODES)
def test_raw_garbage_fails_the_gate_instead_of_raising(reference, mode):
    t0 = time.monotonic()
    with garbage_server(mode) as url:
        report = _gate(url, reference)
    # Hard deadlines, not per-read timeouts: a silent or dripping canary cannot hold the gate (and so
    # the lease) open. The slack is for a busy host; without the deadlines these take minutes.
    assert time.monotonic() - t0 < time_bound_s(FAULT, 2.0) + 30
    assert report.verdict is Verdict.FAIL, report.reasons
    parity = _check(report, "parity_outputs")
    assert parity.outcome == "fail" and "parity: " in parity.reason
    assert _check(report, "error_rate").outcome == "fail"
    assert _check(report, "server_agreement").outcome == "inconclusive"
    if mode == "json422":
        assert "HTTP 422 (non_finite_output: outside the model's numeric range)" in parity.reason
    if mode in ("silent", "drip"):
        assert "no complete answer within 2 s" in parity.reason


def test_unreachable_canary_fails(reference):
    report = _gate(f"http://127.0.0.1:{free_port()}", reference)
    assert report.verdict is Verdict.FAIL
    assert "ConnectionRefusedError" in _check(report, "parity_outputs").reason
    errors = _check(report, "error_rate")
    assert errors.outcome == "fail" and "ConnectionRefusedError" in errors.reason
    assert "GET /metrics" in _check(report, "server_agreement").reason


def test_a_target_the_load_generator_refuses_still_yields_a_report(reference):
    report = _gate("ftp://127.0.0.1:21", reference)
    assert report.verdict is Verdict.FAIL
    assert _check(report, "load").outcome == "fail"
    assert "must be http://" in _check(report, "parity_outputs").reason


def test_a_fault_inside_the_gate_still_yields_a_failed_report(reference, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("bug in the metrics code")

    monkeypatch.setattr("release.gate._scrape", broken)
    with garbage_server("nonjson") as url:
        report = _gate(url, reference)
    assert report.verdict is Verdict.FAIL
    assert "RuntimeError: bug in the metrics code" in _check(report, "gate").reason
