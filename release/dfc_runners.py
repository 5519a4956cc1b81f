"""Where a DFC command runs: on this host (:class:`HostRunner`) or in the x86_64 compiler container
(:class:`ContainerRunner`, the container as data: :func:`container_command`).

The compile step (release.compile) hands every runner the same relative argv and a per-build
working directory; inside the container that directory is the only writable mount, so the argv
work unchanged in both places. The Airflow task's runner over the Docker provider's hook
(plugins/hailo_airflow/docker_compile.py) builds its container from :func:`container_command` too.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from release.dfc import DFC_DOCS
from release.errors import InvalidInput, StepFailed, ToolNotFound


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


class CommandRunner(Protocol):
    """Runs one DFC argv in ``cwd``. A runner that runs it in a container also has a
    ``resolved_image`` attribute (set by its first run): the image it ran in, pinned by digest
    (:func:`image_reference`); the compile result and the manifest record it."""

    def run(self, argv: Sequence[str], cwd: Path, timeout_s: float) -> CommandResult: ...


def image_reference(image_id: str, repo_digests: Sequence[str] = ()) -> str:
    """What the manifest records for the compiler image: its registry digest (``repo@sha256:…``)
    when the image came from a registry, otherwise the local image ID (``sha256:…``)."""
    return sorted(repo_digests)[0] if repo_digests else image_id


def _run_process(argv: Sequence[str], cwd: Path, timeout_s: float, what: str) -> CommandResult:
    try:
        proc = subprocess.run(  # argv list, never a shell
            list(argv), cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s
        )
    except FileNotFoundError:
        raise ToolNotFound(
            f"`{argv[0]}` not found (PATH={os.environ.get('PATH', '')}); {what}. Docs: {DFC_DOCS}"
        ) from None
    except subprocess.TimeoutExpired:
        raise StepFailed(f"`{' '.join(argv[:3])}` timed out after {timeout_s:.0f}s") from None
    return CommandResult(proc.returncode, proc.stdout, proc.stderr)


class HostRunner:
    """Runs the DFC on this host (``hailo`` on PATH or an explicit path)."""

    def run(self, argv: Sequence[str], cwd: Path, timeout_s: float) -> CommandResult:
        return _run_process(
            argv, cwd, timeout_s, "install the Hailo DFC 3.x or run the compile in the compiler image (docker/hailo_compiler)"
        )


class BindMount(BaseModel):
    model_config = ConfigDict(frozen=True)

    source: Path
    target: str
    read_only: bool


class ContainerCommand(BaseModel):
    """One DFC command inside the x86_64 compiler container, as data: the Airflow task's Docker hook
    (image, entrypoint, command, mounts, working_dir, user, network_mode) and `docker run`
    build the same container. ``entrypoint`` is the tool (``hailo``), so the command works whether or
    not the image declares ``ENTRYPOINT ["hailo"]``."""

    model_config = ConfigDict(frozen=True)

    image: str
    entrypoint: str
    command: tuple[str, ...]
    mounts: tuple[BindMount, ...]
    working_dir: str = "/work"
    user: str | None = None
    network_mode: str = "none"
    platform: str = "linux/amd64"

    def docker_run_argv(self, docker: str = "docker") -> list[str]:
        argv = [docker, "run", "--rm", "--platform", self.platform, "--network", self.network_mode, "-w", self.working_dir]
        if self.user:
            argv += ["--user", self.user]
        for m in self.mounts:
            argv += ["--mount", f"type=bind,source={m.source},target={m.target}" + (",readonly" if m.read_only else "")]
        return [*argv, "--entrypoint", self.entrypoint, self.image, *self.command]


CONTAINER_WORK_DIR = "/work"
CONTAINER_LICENSE_PATH = "/licenses/hailo.lic"


def container_command(
    image: str,
    argv: Sequence[str],
    host_work_dir: Path,
    *,
    license_path: Path | None = None,
) -> ContainerCommand:
    """The container form of a DFC ``argv`` (paths in it relative to ``host_work_dir``, mounted at /work).

    The licence, if any, is mounted read-only and never copied; the container runs as the calling
    uid:gid so the files the DFC writes into the mounted build dir stay owned by the caller.
    """
    if not argv:
        raise InvalidInput("empty DFC command")
    if license_path is not None and not license_path.is_file():
        raise InvalidInput(f"DFC licence file {license_path} does not exist")
    mounts = [BindMount(source=host_work_dir.resolve(), target=CONTAINER_WORK_DIR, read_only=False)]
    if license_path is not None:
        mounts.append(BindMount(source=license_path.resolve(), target=CONTAINER_LICENSE_PATH, read_only=True))
    user = f"{os.getuid()}:{os.getgid()}" if hasattr(os, "getuid") else None
    return ContainerCommand(image=image, entrypoint=argv[0], command=tuple(argv[1:]), mounts=tuple(mounts),
                            working_dir=CONTAINER_WORK_DIR, user=user)


class ContainerRunner:
    """Runs each DFC command in the compiler container with `docker run --rm` (no Airflow needed).

    The image is resolved once, at the first run, to its ID: every stage runs in that exact image
    (a tag moved mid-compile cannot mix two DFCs) and ``resolved_image`` says which one it was."""

    def __init__(
        self,
        image: str,
        *,
        docker: str = "docker",
        license_path: Path | None = None,
    ) -> None:
        self.image, self.docker, self.license_path = image, docker, license_path
        self.image_id: str | None = None
        self.resolved_image: str | None = None

    def resolve(self, cwd: Path) -> str:
        if self.image_id is None:
            res = _run_process([self.docker, "image", "inspect", self.image], cwd, 60, "install Docker to run the compiler image")
            if res.returncode != 0:
                raise ToolNotFound(
                    f"compiler image {self.image} is not on this Docker engine ({res.stderr.strip()[-300:]}); "
                    "build it from docker/hailo_compiler (see its README) or load it"
                )
            info = json.loads(res.stdout)[0]
            self.image_id = str(info["Id"])
            self.resolved_image = image_reference(self.image_id, info.get("RepoDigests") or ())
        return self.image_id

    def command(self, argv: Sequence[str], cwd: Path) -> ContainerCommand:
        return container_command(self.image_id or self.image, argv, cwd, license_path=self.license_path)

    def run(self, argv: Sequence[str], cwd: Path, timeout_s: float) -> CommandResult:
        self.resolve(cwd)
        docker_argv = self.command(argv, cwd).docker_run_argv(self.docker)
        return _run_process(docker_argv, cwd, timeout_s, "install Docker to run the compiler image")
