"""Where a release run keeps its things: artifact store, work dirs, keys, registry, devices, tools.

Built once per task from the one settings object (``PipelineEnv.from_env()`` = ``from_settings(
load_settings())``): paths resolved, unset ones placed under the pipeline root, tools looked up on
PATH. It reads no environment variable itself. Every field has an embedded default so the demo
runs on a fresh machine with no configuration at all; tests build one directly.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from release.config import Settings, load_settings
from release.identifiers import HwArch, ReleaseTag

_DOCKER_DEFAULT = Path("/usr/bin/docker")


class PipelineEnv(BaseModel):
    model_config = ConfigDict(frozen=True)

    root: Path = Field(description="base of the embedded defaults (artifacts/)")
    store_root: Path
    work_root: Path
    keys_dir: Path
    devices_file: Path | None
    artifact_store: str | None = Field(None, description="HAILO_ARTIFACT_STORE: gs://BUCKET, None = store_root")
    registry: str | None = Field(description="host:port of the OCI registry to push to, None = no registry")
    image_repository: str = "hailo-runtime"
    compiler_image: str | None = Field(None, description="HAILO_COMPILER_IMAGE: run the DFC in this image")
    dfc_license: Path | None = Field(
        None, description="HAILO_DFC_LICENSE: a DFC licence file, mounted read-only at /licenses/hailo.lic in the compiler image"
    )
    hailo_bin: str | None = Field(description="path of the `hailo` DFC CLI when installed")
    docker_bin: str | None = None
    hailort_wheel: Path | None = Field(None, description="HailoRT's Pi wheel to install in the runtime image")
    hw_arch: HwArch = "hailo8"
    signing_key: Path | None = Field(None, description="HAILO_SIGNING_KEY; None: the dev key in keys_dir")
    signing_pub: Path | None = Field(None, description="HAILO_SIGNING_PUB; None: found beside the signing key")
    local_sidecar_port: int = Field(9000, description="port of the `local` device's sidecar")

    @classmethod
    def from_settings(cls, s: Settings) -> PipelineEnv:
        root = s.pipeline_root.resolve()
        return cls(
            root=root,
            store_root=(s.artifact_root or root / "store").resolve(),
            work_root=(s.work_root or root / "work").resolve(),
            keys_dir=(s.keys_dir or root / "keys").resolve(),
            devices_file=s.devices_file.resolve() if s.devices_file else None,
            artifact_store=s.artifact_store,
            registry=s.registry,
            image_repository=s.image_repository,
            compiler_image=s.compiler_image,
            dfc_license=s.dfc_license.resolve() if s.dfc_license else None,
            hailo_bin=s.dfc_bin or shutil.which("hailo"),
            docker_bin=s.docker_bin or (str(_DOCKER_DEFAULT) if _DOCKER_DEFAULT.exists() else None),
            hailort_wheel=s.hailort_wheel.resolve() if s.hailort_wheel else None,
            hw_arch=s.hw_arch,
            signing_key=s.signing_key,
            signing_pub=s.signing_pub,
            local_sidecar_port=s.local_sidecar_port,
        )

    @classmethod
    def from_env(cls) -> PipelineEnv:
        return cls.from_settings(load_settings())

    def work_dir(self, tag: str, step: str) -> Path:
        path = self.work_root / ReleaseTag(tag).value / step
        path.mkdir(parents=True, exist_ok=True)
        return path
