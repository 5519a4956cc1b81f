import numpy as np
import pytest
from hailo_sidecar.app import inspect_hef_path
from hailo_sidecar.backends import BackendError, Selection, device_architecture, select_backend
from hailo_sidecar.config import ConfigError, SidecarConfig

from release.sample_model import golden_windows, write_sample_model


def _select(cfg: SidecarConfig) -> Selection:
    return select_backend(cfg, inspect_hef_path(cfg))


def test_auto_falls_back_to_onnx_with_reason(make_config):
    sel = _select(make_config(INFER_MODE="auto"))
    assert sel.backend.name == "onnx"
    assert "hailo_platform not installed" in sel.reason and "no " in sel.reason


def test_auto_refuses_without_any_model(make_config, model_dir):
    (model_dir / "model.onnx").unlink()
    with pytest.raises(BackendError, match="no backend can serve"):
        _select(make_config(INFER_MODE="auto"))


def test_real_backend_refused_on_amd64_without_flag(make_config):
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("guardrail concerns amd64 hosts")
    with pytest.raises(BackendError, match="linux/arm64"):
        _select(make_config(HAILO_SIDECAR_ALLOW_AMD64="0"))
    assert _select(make_config(INFER_MODE="stub", HAILO_SIDECAR_ALLOW_AMD64="0")).backend.name == "stub"


def test_onnx_backend_checks_motifs_and_checksum(make_config, tmp_path, model_dir):
    with pytest.raises(BackendError, match="NUM_MOTIFS"):
        _select(make_config(NUM_MOTIFS="16"))
    with pytest.raises(BackendError, match="ONNX_SHA256"):
        _select(make_config(ONNX_SHA256="f" * 64))
    with pytest.raises(BackendError, match="not found"):
        _select(make_config(ONNX_PATH=str(tmp_path / "missing.onnx")))


def test_config_errors_name_the_variable():
    with pytest.raises(ConfigError, match="INFER_MODE"):
        SidecarConfig.from_env({"INFER_MODE": "gpu"})
    with pytest.raises(ConfigError, match="NUM_MOTIFS"):
        SidecarConfig.from_env({"NUM_MOTIFS": "x"})
    with pytest.raises(ConfigError, match="HEF_SHA256"):
        SidecarConfig.from_env({"HEF_SHA256": "abc"})


def test_hailo_backend_against_double(hailo_double, make_config, sample_onnx_path, monkeypatch):
    monkeypatch.setenv("HAILO_DOUBLE_ONNX", str(sample_onnx_path))
    cfg = make_config(INFER_MODE="auto", HAILO_DEVICE=str(hailo_double))
    sel = _select(cfg)
    assert sel.backend.name == "hailo" and "present" in sel.reason
    w = golden_windows(2)
    latent, motifs = sel.backend.infer(w)
    import onnxruntime as ort

    ref = ort.InferenceSession(str(sample_onnx_path), providers=["CPUExecutionProvider"]).run(["latent"], {"window": w[:1]})[0]
    assert latent.shape == (2, 64) and motifs.shape == (2, 12)
    assert np.allclose(latent[0], ref[0], atol=1e-5)
    # One process owns /dev/hailo0: a second backend in the same process gets error 74 with a hint.
    with pytest.raises(BackendError, match="another process owns"):
        _select(cfg)


def test_hailo_backend_arch_mismatch(hailo_double, make_config, monkeypatch):
    monkeypatch.setenv("HAILO_DOUBLE_DEVICE_ARCH", "HAILO8L")
    assert device_architecture() == "hailo8l"
    with pytest.raises(BackendError, match="compiled for hailo8 but the device is hailo8l"):
        _select(make_config(INFER_MODE="hailo", HAILO_DEVICE=str(hailo_double)))


def test_hailo_backend_driver_mismatch(hailo_double, make_config, monkeypatch):
    monkeypatch.setenv("HAILO_DOUBLE_DRIVER_MISMATCH", "1")
    with pytest.raises(BackendError, match="must exactly match the host's hailo_pci driver"):
        _select(make_config(INFER_MODE="hailo", HAILO_DEVICE=str(hailo_double)))


def test_hailo_backend_missing_device_and_lib(make_config, model_dir):
    with pytest.raises(BackendError, match="--device"):
        _select(make_config(INFER_MODE="hailo"))
    (model_dir / "hailo0").write_bytes(b"")
    with pytest.raises(BackendError, match="hailo_platform"):
        _select(make_config(INFER_MODE="hailo", HAILO_DEVICE=str(model_dir / "hailo0")))


def test_hailo_double_rejects_non_hef(hailo_double, make_config, model_dir):
    (model_dir / "model.hef").write_bytes(b"PLACEHOLDER")
    with pytest.raises(BackendError, match="is not a HEF: first bytes"):
        _select(make_config(INFER_MODE="hailo", HAILO_DEVICE=str(hailo_double)))


def test_hailortcli_missing_device(hailo_double, monkeypatch):
    monkeypatch.setenv("HAILO_DOUBLE_NO_DEVICE", "1")
    with pytest.raises(BackendError, match="identify failed"):
        device_architecture()


def test_sample_write_for_other_motifs(tmp_path, make_config, model_dir):
    write_sample_model(model_dir / "model.onnx", num_motifs=5)
    assert _select(make_config(NUM_MOTIFS="5")).backend.infer(golden_windows(1))[1].shape == (1, 5)
