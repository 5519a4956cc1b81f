"""Sidecar configuration from the environment (HEF_PATH, ONNX_PATH, NUM_MOTIFS, INFER_MODE, ...)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

VALID_MODES = ("stub", "onnx", "hailo", "auto")


class ConfigError(ValueError):
    """A setting has an invalid value; the message names the variable."""


def _int(env: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value} is outside [{lo}, {hi}]")
    return value


class SidecarConfig(NamedTuple):
    """Immutable settings. A NamedTuple, not a dataclass: nothing else on the cold path imports
    dataclasses, whose import plus per-class code generation cost ~4 ms of the start here."""

    infer_mode: str = "auto"
    hef_path: Path = Path("/models/model.hef")
    onnx_path: Path = Path("/models/model.onnx")
    num_motifs: int = 12
    config_version: str = "unset"
    window_length: int = 100
    window_channels: int = 9
    latent_dim: int = 64
    max_body_bytes: int = 4 * 1024 * 1024
    max_batch: int = 64
    expected_hef_sha256: str | None = None
    expected_onnx_sha256: str | None = None
    allow_amd64: bool = False
    hailo_device: Path = Path("/dev/hailo0")
    port: int = 9000

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> SidecarConfig:
        env = dict(os.environ if environ is None else environ)
        mode = env.get("INFER_MODE", "auto").strip().lower()
        if mode not in VALID_MODES:
            raise ConfigError(f"INFER_MODE={mode!r} is not one of {', '.join(VALID_MODES)}")
        models = Path(env.get("MODEL_DIR", "/models"))
        for name in ("HEF_SHA256", "ONNX_SHA256"):
            value = env.get(name)
            if value and (len(value) != 64 or any(c not in "0123456789abcdef" for c in value)):
                raise ConfigError(f"{name} must be a 64-character lowercase hex sha256")
        return cls(
            infer_mode=mode,
            hef_path=Path(env.get("HEF_PATH", str(models / "model.hef"))),
            onnx_path=Path(env.get("ONNX_PATH", str(models / "model.onnx"))),
            num_motifs=_int(env, "NUM_MOTIFS", 12, 1, 1024),
            config_version=env.get("CONFIG_VERSION", "unset"),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", 4 * 1024 * 1024, 1024, 256 * 1024 * 1024),
            max_batch=_int(env, "MAX_BATCH", 64, 1, 4096),
            expected_hef_sha256=env.get("HEF_SHA256") or None,
            expected_onnx_sha256=env.get("ONNX_SHA256") or None,
            allow_amd64=env.get("HAILO_SIDECAR_ALLOW_AMD64", "") == "1",
            hailo_device=Path(env.get("HAILO_DEVICE", "/dev/hailo0")),
            port=_int(env, "PORT", 9000, 1, 65535),
        )
