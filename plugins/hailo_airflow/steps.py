"""Task bodies of the DAGs: build the library objects, run one pipeline step, return a summary.

Each function is what a @task in dags/ calls; it holds no logic of its own beyond wiring.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hailo_airflow.context import artifact_store, request_from
from hailo_airflow.errors import release_errors_as_airflow_failures


def prepare_request(context: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the run's params into a ReleaseRequest (a second check after the JSON schema)."""
    params = dict(context.get("params") or {})
    dag_run = context.get("dag_run")
    run_id = getattr(dag_run, "run_id", None) or "unknown"
    params["triggered_by"] = f"airflow:{run_id}"
    with release_errors_as_airflow_failures():
        return request_from(params).model_dump(mode="json")


def run_step(name: str, request: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
    from release.pipeline import run_step as run_pipeline_step
    from release.pipeline_env import PipelineEnv

    with release_errors_as_airflow_failures():
        req = request_from(dict(request))
        env = PipelineEnv.from_env()
        if name == "validate" and req.onnx_location.startswith("gs://"):
            kwargs["onnx_path"] = download_gcs_model(req.onnx_location, env.work_dir(req.release_tag, "download"))
        if name in DEVICE_STEPS and "ssh_client_factory" not in kwargs:
            kwargs["ssh_client_factory"] = ssh_client_factory_for(env, req.device)
        return run_pipeline_step(name, req, env, artifact_store(env), **kwargs)


DEVICE_STEPS = frozenset({"deploy", "promote", "rollback"})


def ssh_client_factory_for(env: Any, device: str) -> Any:
    """Devices with an Airflow connection (ssh_conn_id) are reached through the SSH provider's hook,
    created lazily; the hook refuses unknown host keys (pin them with the connection's host_key)."""
    from release.pipeline_steps import inventory

    spec = inventory(env).get(device)
    if spec.transport != "ssh" or not spec.ssh_conn_id:
        return None

    def connect() -> Any:
        from airflow.providers.ssh.hooks.ssh import SSHHook

        return SSHHook(ssh_conn_id=spec.ssh_conn_id).get_conn()

    return connect


def download_gcs_model(uri: str, dest_dir: Any) -> Any:
    """Fetch a gs://bucket/path.onnx model through the Google provider's GCSHook."""
    from pathlib import Path

    from airflow.providers.google.cloud.hooks.gcs import GCSHook

    bucket, _, obj = uri.removeprefix("gs://").partition("/")
    dest = Path(dest_dir) / "model.onnx"
    GCSHook().download(bucket_name=bucket, object_name=obj, filename=str(dest))
    return dest


def branch_for_verdict(gate: Mapping[str, Any]) -> str:
    """pass → promote, fail → rollback, inconclusive → hold (a human decides; never a silent pass)."""
    verdict = gate.get("verdict")
    return {"pass": "promote", "fail": "rollback"}.get(str(verdict), "hold")


def _params_and_run_id(context: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    return dict(context.get("params") or {}), getattr(context.get("dag_run"), "run_id", None) or "unknown"


def _on_device(params: Mapping[str, Any], call: Callable[..., dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
    """Run a device-level library call (rollback, held decision) with the Airflow-side wiring:
    env, artifact store, and the SSH client from the device's connection."""
    from release.pipeline_env import PipelineEnv

    with release_errors_as_airflow_failures():
        env = PipelineEnv.from_env()
        device = str(params.get("device", "local"))
        return call(env, artifact_store(env), ssh_client_factory=ssh_client_factory_for(env, device), device=device,
                    **kwargs)


def run_device_rollback(context: Mapping[str, Any]) -> dict[str, Any]:
    """Body of hailo_rollback: the same function the on-call CLI calls."""
    from release.pipeline import rollback_device

    params, run_id = _params_and_run_id(context)
    return _on_device(params, rollback_device, to=str(params.get("to", "previous")),
                      reason=str(params.get("reason", "on-call rollback")), triggered_by=f"airflow:{run_id}")


def run_held_decision(context: Mapping[str, Any]) -> dict[str, Any]:
    """Body of hailo_release_decision: the same function as `hailo-release decide`."""
    from release.pipeline import decide_held

    params, run_id = _params_and_run_id(context)
    return _on_device(params, decide_held, tag=str(params["release_tag"]), decision=params["decision"],
                      reason=str(params["reason"]), decided_by=f"airflow:{run_id}")
