"""Run the DFC stages in the x86_64 compiler container through the Docker provider's DockerOperator.

The container itself is data from the release library (`release.compile.container_command`):
image, entrypoint, command, bind mounts (the build dir at /work, the licence read-only), user,
environment, no network. This runner only maps that onto a DockerOperator and its outcome onto
the library's CommandResult, so the compile step is the same on the host, under `docker run`,
and in Airflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from release.compile import CommandResult, container_command


class DockerOperatorRunner:
    def __init__(
        self,
        *,
        image: str,
        docker_url: str = "unix://var/run/docker.sock",
        license_path: str | None = None,
        context: Any = None,
        task_id: str = "compile_hef",
    ) -> None:
        self.image, self.docker_url, self.context, self.task_id = image, docker_url, context, task_id
        self.license_path = Path(license_path) if license_path else None
        self._calls = 0

    def operator(self, argv: Sequence[str], cwd: Path) -> Any:
        from airflow.providers.docker.operators.docker import DockerOperator
        from docker.types import Mount

        cmd = container_command(self.image, argv, cwd, license_path=self.license_path)
        self._calls += 1
        return DockerOperator(
            task_id=f"{self.task_id}__dfc_{self._calls}",
            image=cmd.image,
            entrypoint=[cmd.entrypoint],
            command=list(cmd.command),
            mounts=[Mount(target=m.target, source=str(m.source), type="bind", read_only=m.read_only) for m in cmd.mounts],
            working_dir=cmd.working_dir,
            user=cmd.user,
            environment=dict(cmd.environment),
            network_mode=cmd.network_mode,
            docker_url=self.docker_url,
            auto_remove="success",
            mount_tmp_dir=False,
            xcom_all=True,
        )

    def run(self, argv: Sequence[str], cwd: Path, timeout_s: float) -> CommandResult:
        from airflow.providers.docker.exceptions import DockerContainerFailedException

        op = self.operator(argv, cwd)
        try:
            lines = op.execute(self.context or {})
        except DockerContainerFailedException as exc:
            logs = exc.logs if isinstance(exc.logs, list) else [str(exc.logs or exc)]
            return CommandResult(1, "", "\n".join(str(x) for x in logs))
        output = lines if isinstance(lines, list) else ([] if lines is None else [lines])
        return CommandResult(0, "\n".join(str(x) for x in output), "")
