"""Every refusal to start is one documented JSON line on stderr and exit 2, whatever raised it;
the HEF is validated in every mode; auto mode states why it fell back."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from hailo_sidecar.app import create_app
from hailo_sidecar.hef import encode_hef
from onnx import TensorProto, helper, numpy_helper

from release.sample_model import write_sample_model


def _start(model_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {
        "PATH": os.environ["PATH"], "MODEL_DIR": str(model_dir), "HAILO_SIDECAR_ALLOW_AMD64": "1",
        "HAILO_DEVICE": str(model_dir / "no-hailo0"), "HOST": "127.0.0.1", "PORT": "1", **env,
    }
    return subprocess.run([sys.executable, "-m", "hailo_sidecar"], env=full, capture_output=True, text=True, timeout=60)


def _refusal(res: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = [json.loads(line) for line in res.stderr.splitlines() if line.startswith("{")]
    refusals = [line for line in lines if line.get("event") == "refusing_to_start"]
    assert len(refusals) == 1, res.stderr[-2000:]
    assert not any(line.startswith("Traceback") for line in res.stderr.splitlines()), "a raw traceback leaked"
    assert refusals[0]["level"] == "error" and refusals[0]["reason"]
    return refusals[0]


def _nan_weights(src: Path, dst: Path) -> Path:
    model = onnx.load(str(src))
    init = next(i for i in model.graph.initializer if i.data_type == TensorProto.FLOAT and np.prod(i.dims) > 1)
    arr = numpy_helper.to_array(init).copy()
    arr.flat[0] = np.nan
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(dst))
    return dst


def _float16_input(src: Path, dst: Path) -> Path:
    """The sample model behind a float16 input (Cast to float32 inside)."""
    model = onnx.load(str(src))
    graph = model.graph
    old = graph.input[0]
    for node in graph.node:
        node.input[:] = ["window_f32" if name == old.name else name for name in node.input]
    graph.node.insert(0, helper.make_node("Cast", [old.name], ["window_f32"], to=TensorProto.FLOAT))
    dims = [d.dim_value for d in old.type.tensor_type.shape.dim]
    new = helper.make_tensor_value_info(old.name, TensorProto.FLOAT16, dims)
    graph.input.remove(old)
    graph.input.insert(0, new)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return dst


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        ("nan", "non-finite outputs"),
        ("float16", "tensor(float16), expected tensor(float)"),
        ("truncated", "onnxruntime cannot load"),
        ("not_onnx", "onnxruntime cannot load"),
    ],
)
def test_bad_onnx_is_refused_with_the_documented_line(model_dir, make, reason):
    onnx_path = model_dir / "model.onnx"
    if make == "nan":
        _nan_weights(onnx_path, onnx_path)
    elif make == "float16":
        _float16_input(onnx_path, onnx_path)
    elif make == "truncated":
        onnx_path.write_bytes(onnx_path.read_bytes()[: onnx_path.stat().st_size // 2])
    else:
        onnx_path.write_bytes(b"this is not an ONNX model\n")
    line = _refusal(_start(model_dir, INFER_MODE="onnx"))
    assert reason in str(line["reason"]), line


@pytest.mark.parametrize("mode", ["stub", "onnx", "hailo"])
@pytest.mark.parametrize(("content", "why"), [(b"", "is empty"), (b"GIF89a not a hef", "is not a HEF"),
                                               (encode_hef()[:-3], "truncated")])
def test_invalid_hef_refused_in_explicit_modes(model_dir, mode, content, why):
    (model_dir / "model.hef").write_bytes(content)
    line = _refusal(_start(model_dir, INFER_MODE=mode))
    assert f"INFER_MODE={mode}: HEF_PATH is not a valid HEF" in str(line["reason"]) and why in str(line["reason"])


def test_auto_with_invalid_hef_and_no_onnx_is_refused(model_dir):
    (model_dir / "model.hef").write_bytes(b"")
    (model_dir / "model.onnx").unlink()
    line = _refusal(_start(model_dir, INFER_MODE="auto"))
    assert "is empty" in str(line["reason"]) and "no ONNX" in str(line["reason"])


def test_auto_with_invalid_hef_falls_back_and_says_why(model_dir, make_config):
    (model_dir / "model.hef").write_bytes(b"")
    with TestClient(create_app(make_config(INFER_MODE="auto"))) as c:
        h = c.get("/healthz").json()
        assert h["backend"] == "onnx" and h["hef_sha256"] is None and h["hef_kind"] is None
        assert "is empty" in h["hef_problem"] and "is empty" in h["backend_reason"]
        text = c.get("/metrics").text
        assert 'hef_sha256="none"' in text
        info = next(line for line in text.splitlines() if line.startswith("sidecar_backend_info{"))
        assert 'hef_status="invalid: HEF_PATH=' in info and "is empty" in info and 'mode="auto"' in info


def test_placeholder_hef_is_reported_as_a_placeholder(model_dir, make_config):
    (model_dir / "model.hef").write_bytes(b'HAILO-PIPELINE-PLACEHOLDER-HEF\n{"hw_arch": "hailo8", "net": "m"}\n')
    with TestClient(create_app(make_config(INFER_MODE="onnx"))) as c:
        h = c.get("/healthz").json()
        assert h["hef_kind"] == "placeholder" and len(h["hef_sha256"]) == 64 and h["hef_hw_arch"] == "hailo8"
    with TestClient(create_app(make_config(INFER_MODE="auto"))) as c:
        assert "placeholder" in c.get("/healthz").json()["backend_reason"]


def test_hef_arch_is_checked_against_the_device(hailo_double, model_dir):
    (model_dir / "model.hef").write_bytes(encode_hef("hailo8l"))
    line = _refusal(_start(model_dir, INFER_MODE="hailo", HAILO_DEVICE=str(hailo_double),
                           PYTHONPATH=str(Path(__file__).resolve().parents[1] / "doubles"),
                           PATH=os.environ["PATH"]))
    assert "HEF compiled for hailo8l but the device is hailo8" in str(line["reason"])


def test_bind_failure_is_a_refusal_too(model_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        line = _refusal(_start(model_dir, INFER_MODE="stub", PORT=str(port)))
    assert f"cannot bind 127.0.0.1:{port}" in str(line["reason"]) and line["error_type"] == "OSError"


def test_config_error_is_a_refusal(model_dir):
    line = _refusal(_start(model_dir, INFER_MODE="gpu"))
    assert "INFER_MODE" in str(line["reason"]) and "traceback" not in line


def test_mismatched_onnx_sample_for_num_motifs(model_dir):
    write_sample_model(model_dir / "model.onnx", num_motifs=5)
    line = _refusal(_start(model_dir, INFER_MODE="onnx"))
    assert "NUM_MOTIFS" in str(line["reason"])
