import pytest

from release.config import load_settings
from release.errors import ConfigError


def test_defaults(monkeypatch):
    for var in ("CONFIG_VERSION", "NUM_MOTIFS", "INFER_MODE", "HEF_PATH"):
        monkeypatch.delenv(var, raising=False)
    s = load_settings()
    assert s.num_motifs == 12 and s.window_shape == (100, 9) and s.opset_range == (8, 17)


def test_env_is_read(monkeypatch):
    monkeypatch.setenv("NUM_MOTIFS", "16")
    monkeypatch.setenv("INFER_MODE", "onnx")
    monkeypatch.setenv("CONFIG_VERSION", "cfg-7")
    s = load_settings()
    assert (s.num_motifs, s.infer_mode, s.config_version) == (16, "onnx", "cfg-7")


@pytest.mark.parametrize(
    ("var", "value", "fragment"),
    [
        ("NUM_MOTIFS", "twelve", "NUM_MOTIFS='twelve'"),
        ("NUM_MOTIFS", "0", "NUM_MOTIFS"),
        ("INFER_MODE", "gpu", "INFER_MODE='gpu'"),
        ("CONFIG_VERSION", "v1;rm", "CONFIG_VERSION"),
        ("HAILO_HW_ARCH", "hailo10h", "HAILO_HW_ARCH"),
    ],
)
def test_invalid_values_name_the_variable(monkeypatch, var, value, fragment):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert fragment in str(exc.value)


def test_opset_range_must_be_ordered(monkeypatch):
    monkeypatch.setenv("HAILO_OPSET_MIN", "13")
    monkeypatch.setenv("HAILO_OPSET_MAX", "11")
    with pytest.raises(ConfigError, match="greater than"):
        load_settings()
