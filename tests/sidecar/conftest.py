from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hailo_sidecar.config import SidecarConfig
from hailo_sidecar.hef import encode_hef

DOUBLES = Path(__file__).resolve().parents[1] / "doubles"


@pytest.fixture
def model_dir(tmp_path, sample_onnx_path) -> Path:
    d = tmp_path / "models"
    d.mkdir()
    (d / "model.onnx").write_bytes(sample_onnx_path.read_bytes())
    (d / "model.hef").write_bytes(encode_hef("hailo8", payload=b"double-hef-for-tests"))
    return d


@pytest.fixture
def make_config(model_dir):
    def make(**env: str) -> SidecarConfig:
        base = {
            "MODEL_DIR": str(model_dir),
            "INFER_MODE": "onnx",
            "CONFIG_VERSION": "cfg-test",
            "HAILO_SIDECAR_ALLOW_AMD64": "1",
            "HAILO_DEVICE": str(model_dir / "no-hailo0"),
        }
        base.update(env)
        return SidecarConfig.from_env(base)

    return make


@pytest.fixture
def hailo_double(monkeypatch, model_dir):
    """Put the hailo_platform and hailortcli doubles on the paths, and a fake /dev/hailo0 node."""
    monkeypatch.syspath_prepend(str(DOUBLES))
    monkeypatch.setenv("PATH", f"{DOUBLES / 'bin'}{os.pathsep}{os.environ['PATH']}")
    device = model_dir / "hailo0"
    device.write_bytes(b"")
    import hailo_platform

    hailo_platform._open_devices.clear()
    yield device
    hailo_platform._open_devices.clear()
    # The double must not outlive the test: later tests check the "library missing" path.
    sys.modules.pop("hailo_platform", None)
