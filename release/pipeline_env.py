"""Where a release run keeps its things: artifact store, work dirs, keys, registry, devices.

Built once per task from the environment (``PipelineEnv.from_env()``); every field has an
embedded default so the demo runs on a fresh machine with no configuration at all.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from release.identifiers import ReleaseTag


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).resolve() if value else default.resolve()


class PipelineEnv(BaseModel):
    model_config = ConfigDict(frozen=True)

    root: Path = Field(description="base of the embedded defaults (artifacts/)")
    store_root: Path
    work_root: Path
    keys_dir: Path
    devices_file: Path | None
    registry: str | None = Field(description="host:port of the OCI registry to push to, None = no registry")
    image_repository: str = "hailo-runtime"
    compiler_image: str | None = Field(None, description="HAILO_COMPILER_IMAGE: run the DFC in this image")
    hailo_bin: str | None = Field(description="path of the `hailo` DFC CLI when installed")
    docker_bin: str | None = None
    hailort_wheel: Path | None = Field(None, description="HailoRT's Pi wheel to install in the runtime image")
    hw_arch: str = "hailo8"

    @classmethod
    def from_env(cls) -> PipelineEnv:
        root = _env_path("HAILO_PIPELINE_ROOT", Path.cwd() / "artifacts")
        devices = os.environ.get("HAILO_DEVICES_FILE")
        docker = os.environ.get("HAILO_DOCKER_BIN") or ("/usr/bin/docker" if Path("/usr/bin/docker").exists() else None)
        return cls(
            root=root,
            store_root=_env_path("HAILO_ARTIFACT_ROOT", root / "store"),
            work_root=_env_path("HAILO_WORK_ROOT", root / "work"),
            keys_dir=_env_path("HAILO_KEYS_DIR", root / "keys"),
            devices_file=Path(devices).resolve() if devices else None,
            registry=os.environ.get("HAILO_REGISTRY") or None,
            image_repository=os.environ.get("HAILO_IMAGE_REPOSITORY", "hailo-runtime"),
            compiler_image=os.environ.get("HAILO_COMPILER_IMAGE") or None,
            hailo_bin=os.environ.get("HAILO_DFC_BIN") or shutil.which("hailo"),
            docker_bin=docker,
            hailort_wheel=Path(wheel).resolve() if (wheel := os.environ.get("HAILO_HAILORT_WHEEL")) else None,
            hw_arch=os.environ.get("HAILO_HW_ARCH", "hailo8"),
        )

    def work_dir(self, tag: str, step: str) -> Path:
        path = self.work_root / ReleaseTag(tag).value / step
        path.mkdir(parents=True, exist_ok=True)
        return path
