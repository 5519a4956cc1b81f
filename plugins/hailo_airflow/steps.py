"""Task bodies of the DAGs: build the library objects, call one library function by name, return its
typed result as JSON for XCom.

Each function is what a @task in dags/ calls; it holds no logic of its own beyond wiring. A task that
may find the canary on the device (deploy, gate, promote, rollback, hold) makes the device safe
before it fails: any exception there goes through ``release.canary.fail_safe`` first.
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


def run_step(step: Callable[..., Any], request: Mapping[str, Any], *, device_step: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Run one library step; ``device_step`` ones get the device's SSH wiring and the fail-safe."""
    from release import build_steps
    from release.canary import fail_safe
    from release.pipeline_env import PipelineEnv

    with release_errors_as_airflow_failures():
        req = request_from(dict(request))
        env = PipelineEnv.from_env()
        store = artifact_store(env)
        if step is build_steps.validate and req.onnx_location.startswith("gs://"):
            kwargs["onnx_path"] = download_gcs_model(req.onnx_location, env.work_dir(req.release_tag, "download"))
        if device_step and "ssh_client_factory" not in kwargs:
            kwargs["ssh_client_factory"] = ssh_client_factory_for(env, req.device)
        try:
            result = step(req, env, store, **kwargs)
        except BaseException as exc:
            if device_step:
                fail_safe(req, env, store, step=step.__name__, error=exc,
                          ssh_client_factory=kwargs.get("ssh_client_factory"))
            raise
        return dict(result.model_dump(mode="json"))


def ssh_client_factory_for(env: Any, device: str) -> Any:
    """Devices with an Airflow connection (ssh_conn_id) are reached through the SSH provider's hook,
    created lazily; the hook refuses unknown host keys (pin them with the connection's host_key)."""
    from release.targets import inventory

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


def branch_for_state(request: Mapping[str, Any]) -> str:
    """After the gate, the history decides: gate_passed → promote, held → hold, anything else → rollback
    (a failed gate, or a canary that never became healthy and is already rolled back)."""
    from release.canary import outcome_for
    from release.history import History
    from release.pipeline_env import PipelineEnv
    from release.states import current_state

    with release_errors_as_airflow_failures():
        req = request_from(dict(request))
        store = artifact_store(PipelineEnv.from_env())
        return outcome_for(current_state(History(store), req.release_tag))


def ensure_safe(request: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    """Last task of a canary run, whatever happened upstream (trigger rule all_done): a release that is
    neither settled nor held — a task killed, a worker lost — is rolled back on the device and
    recorded as failed, and the run fails. Argo Rollouts' abort, for Airflow."""
    from airflow.sdk.exceptions import AirflowFailException

    from release.canary import fail_safe, is_settled
    from release.errors import StepFailed
    from release.history import History
    from release.pipeline_env import PipelineEnv
    from release.states import ReleaseState, current_state

    with release_errors_as_airflow_failures():
        req = request_from(dict(request))
        env = PipelineEnv.from_env()
        store = artifact_store(env)
        state = current_state(History(store), req.release_tag)
        if is_settled(state) and state is not ReleaseState.FAILED:
            return {"state": state.value if state else None, "intervened": False}
        run_id = getattr(context.get("dag_run"), "run_id", None) or "unknown"
        final = fail_safe(req, env, store, step="ensure_safe", error=StepFailed(f"an upstream task of {run_id} failed"),
                          ssh_client_factory=ssh_client_factory_for(env, req.device),
                          idempotency_key=f"{run_id}:ensure_safe")
    raise AirflowFailException(f"release {req.release_tag} ended {final.state if final else state}: an upstream task failed")


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
    """Body of hailo_rollback: the same function the on-call CLI calls. The params are validated
    again by the model their JSON schema came from."""
    from release.operations import rollback_device
    from release.request import RollbackRequest

    params, run_id = _params_and_run_id(context)
    with release_errors_as_airflow_failures():
        req = RollbackRequest.parse(params)
    return _on_device(req.model_dump(), rollback_device, to=req.to, reason=req.reason, triggered_by=f"airflow:{run_id}")


def run_held_decision(context: Mapping[str, Any]) -> dict[str, Any]:
    """Body of hailo_release_decision: the same function as `hailo-release decide`."""
    from release.operations import decide_held
    from release.request import HeldDecisionRequest

    params, run_id = _params_and_run_id(context)
    with release_errors_as_airflow_failures():
        req = HeldDecisionRequest.parse(params)
    return _on_device(req.model_dump(), decide_held, tag=req.release_tag, decision=req.decision, reason=req.reason,
                      decided_by=f"airflow:{run_id}")
