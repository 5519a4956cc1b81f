"""hailo_release_decision: a release manager's answer to a held canary (the gate was inconclusive).

`approve` promotes the held release (it becomes last-known-good); `reject` rolls the device back to
last-known-good. Only a release in state `held` can be decided, once; the held manifest's signature
is verified first. Same code path as `hailo-release decide`.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task
from hailo_airflow.params import DECISION_PARAMS


@dag(
    dag_id="hailo_release_decision",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=False,
    params={name: Param(**spec) for name, spec in DECISION_PARAMS.items()},
    default_args={"owner": "release-managers", "retries": 0},
    tags=["hailo", "release"],
    doc_md=__doc__,
)
def hailo_release_decision() -> None:
    @task(queue="edge", pool="hailo_edge_devices")
    def decide_held_release(**context: object) -> dict[str, object]:
        from hailo_airflow.steps import run_held_decision

        return run_held_decision(context)

    decide_held_release()


hailo_release_decision()
