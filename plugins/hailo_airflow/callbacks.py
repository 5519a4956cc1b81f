"""DAG callbacks: a task that failed for good makes the device safe and leaves one history record."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)


def record_failure_in_history(context: Mapping[str, Any]) -> None:
    from hailo_airflow.context import artifact_store
    from hailo_airflow.steps import ssh_client_factory_for
    from release.operations import record_failure
    from release.pipeline_env import PipelineEnv

    ti = context.get("ti") or context.get("task_instance")
    task_id = getattr(ti, "task_id", "unknown")
    exc = context.get("exception")
    reason = f"{type(exc).__name__}: {exc}" if exc else "task failed"
    params = dict(context.get("params") or {})
    run_id = getattr(context.get("dag_run"), "run_id", None) or "unknown"
    try:
        env = PipelineEnv.from_env()
        record_failure(env, artifact_store(env), params, task_id=task_id, run_id=run_id, reason=reason,
                       ssh_client_factory=ssh_client_factory_for(env, str(params.get("device") or "local")))
    except Exception:  # a callback must never mask the task's own failure
        log.exception("could not record the failure of %s", task_id)
