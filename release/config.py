"""One typed settings object, read from the environment.

Values come from environment variables (``CONFIG_VERSION``, ``NUM_MOTIFS``, ``HEF_PATH``,
``INFER_MODE``, ``HAILO_*``); defaults are the embedded defaults of the demo. Invalid values
raise :class:`~release.errors.ConfigError` naming the variable and what is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from release.errors import ConfigError

InferMode = Literal["stub", "onnx", "hailo", "auto"]
HwArch = Literal["hailo8", "hailo8l", "hailo8r"]
_CONFIG_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Settings(BaseSettings):
    """Process-wide settings. Field names map to the environment variable in ``validation_alias``."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    config_version: str = Field(
        "cfg-2026.11.0", validation_alias=AliasChoices("CONFIG_VERSION", "config_version")
    )
    num_motifs: int = Field(12, ge=1, le=1024, validation_alias=AliasChoices("NUM_MOTIFS", "num_motifs"))
    hef_path: Path = Field(
        Path("/models/model.hef"), validation_alias=AliasChoices("HEF_PATH", "hef_path")
    )
    infer_mode: InferMode = Field("auto", validation_alias=AliasChoices("INFER_MODE", "infer_mode"))
    hw_arch: HwArch = Field("hailo8", validation_alias=AliasChoices("HAILO_HW_ARCH", "hw_arch"))
    artifact_root: Path = Field(
        Path("artifacts/store"), validation_alias=AliasChoices("HAILO_ARTIFACT_ROOT", "artifact_root")
    )
    work_root: Path = Field(Path("artifacts/work"), validation_alias=AliasChoices("HAILO_WORK_ROOT", "work_root"))
    channel: str = Field("stable", pattern=r"^[a-z][a-z0-9-]{0,31}$", validation_alias=AliasChoices("HAILO_CHANNEL", "channel"))
    window_length: int = Field(100, ge=1, validation_alias=AliasChoices("HAILO_WINDOW_LENGTH", "window_length"))
    window_channels: int = Field(9, ge=1, validation_alias=AliasChoices("HAILO_WINDOW_CHANNELS", "window_channels"))
    opset_min: int = Field(8, ge=1, validation_alias=AliasChoices("HAILO_OPSET_MIN", "opset_min"))
    opset_max: int = Field(17, ge=1, validation_alias=AliasChoices("HAILO_OPSET_MAX", "opset_max"))
    production: bool = Field(False, validation_alias=AliasChoices("HAILO_PRODUCTION", "production"))

    @field_validator("config_version")
    @classmethod
    def _config_version_grammar(cls, v: str) -> str:
        if not _CONFIG_VERSION_RE.fullmatch(v):
            raise ValueError("must be 1-64 characters of [A-Za-z0-9_.-] starting with a letter or digit")
        return v

    @property
    def window_shape(self) -> tuple[int, int]:
        return (self.window_length, self.window_channels)

    @property
    def opset_range(self) -> tuple[int, int]:
        return (self.opset_min, self.opset_max)


_ENV_NAMES = {
    name: (field.validation_alias.choices[0] if isinstance(field.validation_alias, AliasChoices) else name)
    for name, field in Settings.model_fields.items()
}


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment (plus explicit overrides); raise ConfigError on bad values."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            env = _ENV_NAMES.get(field, field)
            problems.append(f"{env}={err.get('input')!r}: {err['msg']}")
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None
    if settings.opset_min > settings.opset_max:
        raise ConfigError(
            f"HAILO_OPSET_MIN={settings.opset_min} is greater than HAILO_OPSET_MAX={settings.opset_max}"
        )
    return settings
