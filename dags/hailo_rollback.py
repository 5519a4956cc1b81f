"""hailo_rollback: roll a device back to a release tag or to its last-known-good ('previous').

The same code path as the on-call CLI (`hailo-release rollback`), which works without Airflow:
the target release's signatures are verified before anything on the device changes.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task
from hailo_airflow.params import ROLLBACK_PARAMS


@dag(
    dag_id="hailo_rollback",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=False,
    params={name: Param(**spec) for name, spec in ROLLBACK_PARAMS.items()},
    default_args={"owner": "on-call", "retries": 0},
    tags=["hailo", "rollback"],
    doc_md=__doc__,
)
def hailo_rollback() -> None:
    # Its own pool and the highest priority: an on-call rollback never queues behind a canary's
    # deploy or gate for a pool slot; the device agent's lock still orders the two on the device.
    @task(queue="edge", pool="hailo_oncall", priority_weight=1000, weight_rule="absolute")
    def rollback_device(**context: object) -> dict[str, object]:
        from hailo_airflow.steps import run_device_rollback

        return run_device_rollback(context)

    rollback_device()


hailo_rollback()
