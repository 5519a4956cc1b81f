"""The operators worth being classes: DFC compile (host or compiler container), SSH canary
deploy, latency gate. Hooks are created lazily in execute(), never at DAG-parse time."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from hailo_airflow.links import GateReportLink, ManifestLink

if TYPE_CHECKING:
    from airflow.providers.ssh.hooks.ssh import SSHHook
    from airflow.sdk import Context


COMPILER_IMAGE_VARIABLE = "hailo_compiler_image"


class HailoCompileOperator(BaseOperator):
    """Compile the validated ONNX into a HEF with the Hailo DFC.

    The compiler image is ``compiler_image`` if given, else HAILO_COMPILER_IMAGE
    (``PipelineEnv.compiler_image``), else the Airflow Variable ``hailo_compiler_image``. With one,
    the DFC (``--version`` and the three stages) runs inside that x86_64 container through the
    Docker provider's hook (``DockerHookRunner``, created lazily here) and the manifest records the
    image's digest, with the DFC licence (``license_path``, else HAILO_DFC_LICENSE) mounted read-only;
    without one, ``hailo`` on the host runs, or, in dev mode only, a marked
    placeholder is written.
    """

    template_fields: Sequence[str] = ("request", "compiler_image", "docker_url")

    def __init__(
        self,
        *,
        request: Any,
        compiler_image: str | None = None,
        docker_url: str = "unix://var/run/docker.sock",
        docker_conn_id: str | None = None,
        license_path: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.request = request
        self.compiler_image = compiler_image
        self.docker_url = docker_url
        self.docker_conn_id = docker_conn_id
        self.license_path = license_path

    def resolve_compiler_image(self) -> str | None:
        if self.compiler_image:
            return str(self.compiler_image)
        from release.pipeline_env import PipelineEnv

        from_env = PipelineEnv.from_env().compiler_image
        if from_env:
            return from_env
        from airflow.sdk import Variable

        value = Variable.get(COMPILER_IMAGE_VARIABLE, default=None)
        return str(value) if value else None

    def execute(self, context: Context) -> dict[str, Any]:
        from hailo_airflow.steps import run_step

        runner = None
        image = self.resolve_compiler_image()
        if image:
            from hailo_airflow.docker_compile import DockerHookRunner
            from release.pipeline_env import PipelineEnv

            license_path = self.license_path or (str(lic) if (lic := PipelineEnv.from_env().dfc_license) else None)
            runner = DockerHookRunner(image=image, docker_url=self.docker_url, docker_conn_id=self.docker_conn_id,
                                      license_path=license_path)
            self.log.info("compiling in the compiler image %s through the Docker hook (%s)", image, self.docker_url)
        from release.build_steps import compile_hef

        return run_step(compile_hef, self.request, command_runner=runner)


class CanaryDeployOperator(BaseOperator):
    """Upload the signed bundle to the device and activate it through the device agent.

    Devices whose inventory entry says ``transport: ssh`` are reached through the SSH
    provider's hook (paramiko, strict host-key checking); ``local`` targets this machine.
    """

    template_fields: Sequence[str] = ("request", "ssh_conn_id")
    operator_extra_links = (ManifestLink(),)

    def __init__(self, *, request: Any, ssh_conn_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.request = request
        self.ssh_conn_id = ssh_conn_id

    @cached_property
    def ssh_hook(self) -> SSHHook:
        from airflow.providers.ssh.hooks.ssh import SSHHook

        return SSHHook(ssh_conn_id=self.ssh_conn_id)

    def _candidate_uri(self) -> str:
        from hailo_airflow.context import artifact_store, request_from
        from release.pipeline_env import PipelineEnv
        from release.verify import CANDIDATE

        return artifact_store(PipelineEnv.from_env()).uri(request_from(dict(self.request)).release_tag, CANDIDATE)

    def execute(self, context: Context) -> dict[str, Any]:
        from hailo_airflow.steps import run_step

        kwargs: dict[str, Any] = {}
        if self.ssh_conn_id:  # an explicit connection overrides the inventory's
            kwargs["ssh_client_factory"] = lambda: self.ssh_hook.get_conn()
        from release.canary import deploy

        result = run_step(deploy, self.request, device_step=True, **kwargs)
        context["ti"].xcom_push(key=ManifestLink.key, value=self._candidate_uri())
        return result


class LatencyGateOperator(BaseOperator):
    """Drive the canary with open-loop load and decide pass / fail / inconclusive."""

    template_fields: Sequence[str] = ("request",)
    operator_extra_links = (GateReportLink(),)

    def __init__(self, *, request: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.request = request

    def execute(self, context: Context) -> dict[str, Any]:
        from hailo_airflow.steps import run_step
        from release.canary import gate

        result = run_step(gate, self.request, device_step=True)
        context["ti"].xcom_push(key=GateReportLink.key, value=result["gate"].get("report_uri"))
        return result
