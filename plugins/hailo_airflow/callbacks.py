"""DAG callbacks: a failed task leaves its reason in the device's release ledger."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)


def record_failure_in_ledger(context: Mapping[str, Any]) -> None:
    from release.pipeline import record_failure
    from release.pipeline_env import PipelineEnv

    ti = context.get("ti") or context.get("task_instance")
    task_id = getattr(ti, "task_id", "unknown")
    exc = context.get("exception")
    reason = f"{type(exc).__name__}: {exc}" if exc else "task failed"
    params = dict(context.get("params") or {})
    dag_run = context.get("dag_run")
    run_id = getattr(dag_run, "run_id", None) or "unknown"
    try:
        record_failure(PipelineEnv.from_env(), params, task_id=task_id, run_id=run_id, reason=reason)
    except Exception:  # a callback must never mask the task's own failure
        log.exception("could not record the failure of %s in the ledger", task_id)
