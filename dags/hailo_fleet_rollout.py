"""hailo_fleet_rollout: a promoted release to the fleet, in waves, each gated, halted and rolled back as a whole.

Thin wiring over `release.rollout` — the same functions as `hailo-release rollout …`, so a rollout
started here can be resumed by the CLI and back; every decision is read from the store's history.

    prepare ─► wave_1 [ ready ─► roll_device x N (mapped) ─► check ] ─► wave_2 [...] ─► … ─► report ─► ensure_safe

- `prepare` validates the params (release tag, plan inline or file, group or label selector) with the
  library's models and records the rollout (or loads it: `rollout_id` resumes one).
- Each wave slot: `ready` waits (reschedule mode: no worker slot held) for the wave's approval record
  (`hailo-release rollout approve ID --wave N`) and the pause between waves, then returns the wave's
  devices; `roll_device` is mapped over them (dynamic task mapping): deploy → gate → commit | restore,
  the plan's parallelism as store-backed slots, each device under its own lock (two rollouts on
  overlapping groups wait per device — no pool serialises the fleet); `check` evaluates the abort
  criteria and, when they trip, halts: every device this rollout touched back on its own
  last-known-good, devices not yet reached untouched, later waves start nothing.
- `report` records the rollout complete and writes the report (its link is on the task page);
  `ensure_safe` (all_done) finishes an interrupted halt and reconciles a device a killed task left
  mid-lifecycle. A device task is retried once: the library resumes it from the history (finished
  devices are never redone).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import Param, PokeReturnValue, dag, task, task_group
from hailo_airflow.fleet_operators import RolloutReportOperator
from hailo_airflow.fleet_params import FLEET_PARAMS

EDGE_QUEUE = "edge"
WAVE_SLOTS = 4  # the issue's [1, 10%, 50%, 100%]; a longer plan is refused by prepare (the CLI runs any)
MAX_DEVICES_AT_ONCE = 16  # per wave, in Airflow; the plan's own parallelism (<= this) is enforced per slot
APPROVAL_POKE_S = 10  # one read of the rollout's history records per poke
APPROVAL_TIMEOUT_S = 7 * 86400.0

default_args = {"owner": "release-managers", "retries": 0, "retry_delay": dt.timedelta(seconds=10)}


@dag(
    dag_id="hailo_fleet_rollout",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=4,  # rollouts of different groups run side by side; devices are locked one by one
    is_paused_upon_creation=False,
    params={name: Param(**spec) for name, spec in FLEET_PARAMS.items()},
    default_args=default_args,
    tags=["hailo", "release", "fleet"],
    doc_md=__doc__,
)
def hailo_fleet_rollout() -> None:
    @task(queue=EDGE_QUEUE)
    def prepare(**context: object) -> dict[str, object]:
        from hailo_airflow.fleet_steps import start_or_resume

        return start_or_resume(context, WAVE_SLOTS)

    @task.sensor(queue=EDGE_QUEUE, mode="reschedule", poke_interval=APPROVAL_POKE_S, timeout=APPROVAL_TIMEOUT_S)
    def ready(rollout: dict[str, object], slot: int, **context: object) -> PokeReturnValue:
        from hailo_airflow.fleet_steps import wave_ready

        done, devices = wave_ready(rollout, slot, context)
        return PokeReturnValue(is_done=done, xcom_value=devices)

    @task(queue=EDGE_QUEUE, retries=1, max_active_tis_per_dagrun=MAX_DEVICES_AT_ONCE,
          map_index_template="{{ task.op_kwargs['device'] }}")
    def roll_device(rollout: dict[str, object], slot: int, device: str, **context: object) -> dict[str, object]:
        from hailo_airflow.fleet_steps import roll_device as run

        return run(rollout, slot, device, context)

    @task(queue=EDGE_QUEUE, trigger_rule="all_done", retries=1)
    def check(rollout: dict[str, object], slot: int, **context: object) -> dict[str, object]:
        from hailo_airflow.fleet_steps import check_wave

        return check_wave(rollout, slot, context)

    @task(queue=EDGE_QUEUE, trigger_rule="all_done", retries=2)
    def ensure_safe(rollout: dict[str, object] | None, **context: object) -> dict[str, object]:
        from hailo_airflow.fleet_steps import ensure_safe as settle

        return settle(rollout, context)

    rollout = prepare()
    previous: Any = rollout
    for slot in range(1, WAVE_SLOTS + 1):

        @task_group(group_id=f"wave_{slot}")
        def wave(slot: int = slot) -> None:
            devices = ready(rollout, slot)
            rolled = roll_device.partial(rollout=rollout, slot=slot).expand(device=devices)
            rolled >> check(rollout, slot)

        this = wave()
        previous >> this
        previous = this
    reported = RolloutReportOperator(task_id="report", rollout=rollout, queue=EDGE_QUEUE, trigger_rule="all_done",
                                     retries=1)
    previous >> reported
    reported >> ensure_safe(rollout)


hailo_fleet_rollout()
