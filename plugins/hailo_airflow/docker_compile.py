"""Run the DFC stages in the x86_64 compiler container through the Docker provider's hook.

The container itself is data from the release library (`release.dfc_runners.container_command`):
image, entrypoint, command, bind mounts (the build dir at /work, the licence read-only), user and
no network. This runner maps that onto the docker SDK client the provider's
``DockerHook`` hands out (created lazily, at the first stage) and the container's exit code and
logs onto the library's CommandResult, so the compile step is the same on the host, under
`docker run`, and in Airflow. No operator is executed inside another operator.

The image is resolved once, at the first stage, to its image ID; every stage runs in that exact
image, and ``resolved_image`` (its registry digest, or the ID of a locally built image) is what
the manifest records as the image the compile ran in.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from release.dfc_runners import CommandResult, container_command, image_reference
from release.errors import StepFailed, ToolNotFound

if TYPE_CHECKING:
    from docker.api.client import APIClient

DEFAULT_DOCKER_URL = "unix://var/run/docker.sock"


class DockerHookRunner:
    """A ``release.dfc_runners.CommandRunner`` over ``DockerHook(...).api_client``."""

    def __init__(
        self,
        *,
        image: str,
        docker_url: str = DEFAULT_DOCKER_URL,
        docker_conn_id: str | None = None,
        license_path: str | None = None,
    ) -> None:
        self.image, self.docker_url, self.docker_conn_id = image, docker_url, docker_conn_id
        self.license_path = Path(license_path) if license_path else None
        self._client: APIClient | None = None
        self.image_id: str | None = None
        self.resolved_image: str | None = None

    @property
    def client(self) -> APIClient:
        if self._client is None:
            from airflow.providers.docker.hooks.docker import DockerHook

            # docker_conn_id (optional) only logs in to a registry; the engine is docker_url.
            self._client = DockerHook(docker_conn_id=self.docker_conn_id, base_url=self.docker_url).api_client
        return self._client

    def resolve(self) -> str:
        if self.image_id is None:
            from docker.errors import ImageNotFound

            try:
                info = self.client.inspect_image(self.image)
            except ImageNotFound:
                raise ToolNotFound(
                    f"compiler image {self.image} is not on the Docker engine at {self.docker_url}; build it from "
                    "docker/hailo_compiler (see its README) or load it on this worker"
                ) from None
            self.image_id = str(info["Id"])
            self.resolved_image = image_reference(self.image_id, info.get("RepoDigests") or ())
        return self.image_id

    def run(self, argv: Sequence[str], cwd: Path, timeout_s: float) -> CommandResult:
        from docker.types import Mount
        from requests.exceptions import ConnectionError as RequestsConnectionError
        from requests.exceptions import ReadTimeout

        client = self.client
        cmd = container_command(self.resolve(), argv, cwd, license_path=self.license_path)
        host_config = client.create_host_config(
            mounts=[Mount(target=m.target, source=str(m.source), type="bind", read_only=m.read_only) for m in cmd.mounts],
            network_mode=cmd.network_mode,
        )
        container = client.create_container(
            image=cmd.image, entrypoint=[cmd.entrypoint], command=list(cmd.command), working_dir=cmd.working_dir,
            user=cmd.user or "", host_config=host_config, stdin_open=False,
            tty=False, platform=cmd.platform,
        )
        cid = container["Id"]
        try:
            client.start(cid)
            try:
                status = client.wait(cid, timeout=timeout_s)
            except (ReadTimeout, RequestsConnectionError):  # the read timed out: the stage still runs
                client.kill(cid)
                raise StepFailed(f"`{' '.join(argv[:3])}` timed out after {timeout_s:.0f}s in {self.image}") from None
            stdout = client.logs(cid, stdout=True, stderr=False).decode("utf-8", errors="replace")
            stderr = client.logs(cid, stdout=False, stderr=True).decode("utf-8", errors="replace")
            return CommandResult(int(status.get("StatusCode", 1)), stdout, stderr)
        finally:
            client.remove_container(cid, force=True)
