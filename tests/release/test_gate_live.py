"""The gate against real sidecar processes: a good one passes, a 2x slower one fails on the
baseline comparison, a drifting one fails parity."""

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

from release.gate import run_gate, write_histogram_png
from release.gate_settings import Verdict, settings_with_overrides
from release.sample_model import golden_windows
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
