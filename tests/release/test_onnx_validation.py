import json

import numpy as np
import pytest

from release.errors import InvalidModel
from release.onnx_validation import hailo8_allowed_ops, validate_onnx, write_report


def test_sample_model_passes_with_full_report(sample_onnx_path, tmp_path):
    report = validate_onnx(sample_onnx_path, output_dir=tmp_path)
    assert report.inputs[0].shape == (1, 100, 9)
    assert {o.name: o.shape for o in report.outputs} == {"latent": (1, 64), "motif_scores": (1, 12)}
    assert report.opset == 13 and len(report.sha256) == 64
    assert "Conv" in report.ops and "Einsum" not in report.ops
    assert any("opset 13" in w for w in report.warnings)
    ref = np.load(report.reference.path)
    assert ref["latent"].shape == (8, 64) and ref["motif_scores"].shape == (8, 12)
    assert np.isfinite(ref["latent"]).all()
    out = write_report(report, tmp_path / "report.json")
    assert json.loads(out.read_text())["sha256"] == report.sha256


@pytest.mark.parametrize(
    ("variant", "fragments"),
    [
        ("dynamic_input", ["input 'window'", "dynamic", "'batch'"]),
        ("wrong_motif_count", ["output 'motif_scores'", "expected last dim 12"]),
        ("wrong_latent_size", ["output 'latent'", "expected last dim 64"]),
        ("wrong_window", ["input 'window'", "expected [batch, 100, 9]"]),
        ("unsupported_op", ["node 'motif_sigmoid'", "Einsum", "allow-list"]),
        ("unsupported_erf", ["node 'motif_sigmoid'", "op Erf"]),
        ("truncated", ["not a readable ONNX model"]),
        ("not_onnx", ["not"]),
        ("empty", ["empty"]),
        ("nan_weights", ["initializer 'block2.w'", "NaN"]),
        ("opset_too_new", ["opset 18", "outside the supported range 8-17"]),
        ("wrong_dtype", ["input 'window'", "float16", "expected float32"]),
        ("external_traversal", ["initializer 'latent.w'", "outside the model directory"]),
    ],
)
def test_broken_models_rejected_with_named_problem(broken_models, variant, fragments):
    with pytest.raises(InvalidModel) as exc:
        validate_onnx(broken_models[variant])
    message = str(exc.value)
    for fragment in fragments:
        assert fragment in message, f"{variant}: {fragment!r} not in {message!r}"


def test_several_problems_reported_together(broken_models):
    with pytest.raises(InvalidModel) as exc:
        validate_onnx(broken_models["unsupported_op"], num_motifs=5)
    assert len(exc.value.findings) >= 2


def test_configurable_motifs_and_opset(sample_onnx_path):
    with pytest.raises(InvalidModel, match="expected last dim 16"):
        validate_onnx(sample_onnx_path, num_motifs=16)
    with pytest.raises(InvalidModel, match="outside the supported range 8-12"):
        validate_onnx(sample_onnx_path, opset_range=(8, 12))


def test_smoke_windows_shape_checked(sample_onnx_path):
    with pytest.raises(InvalidModel, match="smoke windows"):
        validate_onnx(sample_onnx_path, smoke_windows=np.zeros((2, 50, 9), dtype=np.float32))


def test_allow_list_entries_have_reasons():
    ops = hailo8_allowed_ops()
    assert "Conv" in ops and "Einsum" not in ops
    assert all(len(reason) > 10 for reason in ops.values())


def test_missing_file():
    with pytest.raises(InvalidModel, match="no such file"):
        validate_onnx("/nonexistent/model.onnx")
