"""The one settings object: every ``HAILO_*`` variable the library reads, read here and nowhere else.

Values come from the environment; defaults are the embedded defaults of the demo, so a fresh
clone runs with no configuration. An empty variable counts as unset. Invalid values raise
:class:`~release.errors.ConfigError` naming the variable and what is allowed. Where a run keeps
its things (paths resolved, tools found) is derived from this in release.pipeline_env.

Not here, on purpose: ``COSIGN_PASSWORD`` (cosign's own variable, read once by release.keys when a
key needs it, never stored), the fault-injection switches of release.faults and the device agent
(``HAILO_FAULT_*``, ``HAILO_AGENT_CRASH_AT``: test-only, read at the fault point), the progress
file a parent process hands its child (release.progress), the GitHub/Airflow CLI defaults
(``GITHUB_*``, ``AIRFLOW_*``), and the sidecar, which imports nothing from release/ and has its
own settings (sidecar/hailo_sidecar/config.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from release.errors import ConfigError
from release.identifiers import HwArch
from release.validated import ChannelStr


def _var(name: str, default: Any = None, **constraints: Any) -> Any:
    return Field(default, validation_alias=name, **constraints)


class Settings(BaseSettings):
    """Process-wide settings. Each field reads the variable named in its ``validation_alias``;
    the field name works too (``load_settings(work_root=...)``)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True, env_ignore_empty=True)

    # Where things live (relative paths are taken from the working directory).
    pipeline_root: Path = _var("HAILO_PIPELINE_ROOT", Path("artifacts"))
    artifact_root: Path | None = _var("HAILO_ARTIFACT_ROOT")  # default <pipeline_root>/store
    artifact_store: str | None = _var("HAILO_ARTIFACT_STORE")  # gs://BUCKET: the store is in GCS
    work_root: Path | None = _var("HAILO_WORK_ROOT")  # default <pipeline_root>/work
    keys_dir: Path | None = _var("HAILO_KEYS_DIR")  # default <pipeline_root>/keys (the dev key)
    devices_file: Path | None = _var("HAILO_DEVICES_FILE")
    local_sidecar_port: int = _var("HAILO_LOCAL_SIDECAR_PORT", 9000, ge=1, le=65535)
    # The name a worker gives Airflow for its task instances (plugins/hailo_airflow/hosts.py): two
    # workers on one host tell themselves apart with it; unset, the FQDN.
    worker_hostname: str | None = _var("HAILO_WORKER_HOSTNAME", pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$")
    # Signing and verifying.
    signing_key: Path | None = _var("HAILO_SIGNING_KEY")
    signing_pub: Path | None = _var("HAILO_SIGNING_PUB")
    image_identity_policy: str | None = _var("HAILO_IMAGE_IDENTITY_POLICY")  # checked by oci_signing.identity_policy
    # Building.
    registry: str | None = _var("HAILO_REGISTRY")
    image_repository: str = _var("HAILO_IMAGE_REPOSITORY", "hailo-runtime")
    compiler_image: str | None = _var("HAILO_COMPILER_IMAGE")
    dfc_license: Path | None = _var("HAILO_DFC_LICENSE")  # mounted read-only into the compiler container
    dfc_bin: str | None = _var("HAILO_DFC_BIN")
    docker_bin: str | None = _var("HAILO_DOCKER_BIN")
    hailort_wheel: Path | None = _var("HAILO_HAILORT_WHEEL")
    hw_arch: HwArch = _var("HAILO_HW_ARCH", "hailo8")
    channel: ChannelStr = _var("HAILO_CHANNEL", "stable")
    # The model's contract, checked when an ONNX model is validated.
    num_motifs: int = _var("NUM_MOTIFS", 12, ge=1, le=1024)
    window_length: int = _var("HAILO_WINDOW_LENGTH", 100, ge=1)
    window_channels: int = _var("HAILO_WINDOW_CHANNELS", 9, ge=1)
    opset_min: int = _var("HAILO_OPSET_MIN", 8, ge=1)
    opset_max: int = _var("HAILO_OPSET_MAX", 17, ge=1)

    @property
    def window_shape(self) -> tuple[int, int]:
        return (self.window_length, self.window_channels)

    @property
    def opset_range(self) -> tuple[int, int]:
        return (self.opset_min, self.opset_max)


ENV_NAMES: dict[str, str] = {name: str(field.validation_alias) for name, field in Settings.model_fields.items()}


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment (plus explicit overrides); raise ConfigError on bad values."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            env = ENV_NAMES.get(field, field)
            problems.append(f"{env}={err.get('input')!r}: {err['msg']}")
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None
    if settings.opset_min > settings.opset_max:
        raise ConfigError(
            f"HAILO_OPSET_MIN={settings.opset_min} is greater than HAILO_OPSET_MAX={settings.opset_max}"
        )
    return settings
