"""hailo_canary_release: ONNX → HEF → signed arm64 image + manifest → canary on a Pi → gate → promote or roll back.

Thin wiring over the `release` library. Build tasks run on the `hailo-builder` queue, deploy
tasks on the `edge` queue (ignored by LocalExecutor, used by Celery). One release at a time:
max_active_runs=1 and the `hailo_edge_devices` pool for the tasks that touch a device (the
device agent's own lock guards each device against anything else).

Fail-safe: the canary runs on the device as provisional, under a lease; only `promote` commits it.
A task that fails after activation rolls the device back before failing; `ensure_safe` (trigger rule
all_done) catches what no task could (a killed worker), and the device's own lease catches the rest.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task
from hailo_airflow.callbacks import record_failure_in_history
from hailo_airflow.operators import CanaryDeployOperator, HailoCompileOperator, LatencyGateOperator
from hailo_airflow.params import CANARY_PARAMS

BUILD_QUEUE = "hailo-builder"
EDGE_QUEUE = "edge"
DEVICE_POOL = "hailo_edge_devices"

default_args = {
    "owner": "release-managers",
    "retries": 0,
    "retry_delay": dt.timedelta(seconds=30),
    "on_failure_callback": record_failure_in_history,
}


@dag(
    dag_id="hailo_canary_release",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=False,
    params={name: Param(**spec) for name, spec in CANARY_PARAMS.items()},
    default_args=default_args,
    tags=["hailo", "release", "canary"],
    doc_md=__doc__,
)
def hailo_canary_release() -> None:
    @task(queue=BUILD_QUEUE)
    def prepare(**context: object) -> dict[str, object]:
        from hailo_airflow.steps import prepare_request

        return prepare_request(context)

    @task(queue=BUILD_QUEUE)
    def validate_onnx(request: dict[str, object]) -> dict[str, object]:
        from hailo_airflow.steps import run_step

        from release.build_steps import validate

        return run_step(validate, request)

    @task(queue=BUILD_QUEUE, retries=2)
    def build_push_image(request: dict[str, object], compiled: dict[str, object]) -> dict[str, object]:
        from hailo_airflow.steps import run_step

        from release.build_steps import build_image

        return run_step(build_image, request)

    @task(queue=BUILD_QUEUE, retries=1)
    def sign_release(request: dict[str, object], image: dict[str, object]) -> dict[str, object]:
        from hailo_airflow.steps import run_step

        from release.build_steps import sign

        return run_step(sign, request)

    @task(queue=BUILD_QUEUE)
    def write_manifest(request: dict[str, object], signed: dict[str, object]) -> dict[str, object]:
        from hailo_airflow.steps import run_step

        from release.build_steps import write_manifest as write

        return run_step(write, request)

    @task.branch(queue=EDGE_QUEUE)
    def decide(request: dict[str, object], gate: dict[str, object]) -> str:
        from hailo_airflow.steps import branch_for_state

        return branch_for_state(request)

    @task(queue=EDGE_QUEUE, pool=DEVICE_POOL, retries=2)
    def promote(request: dict[str, object]) -> dict[str, object]:
        from hailo_airflow.steps import run_step

        from release.canary import promote as commit_canary

        return run_step(commit_canary, request, device_step=True)

    @task(queue=EDGE_QUEUE, pool=DEVICE_POOL, retries=2)
    def rollback(request: dict[str, object]) -> dict[str, object]:
        from hailo_airflow.steps import run_step

        from release.canary import rollback as restore

        return run_step(restore, request, device_step=True)

    @task(queue=EDGE_QUEUE, pool=DEVICE_POOL)
    def hold(request: dict[str, object]) -> dict[str, object]:
        from hailo_airflow.steps import run_step

        from release.canary import hold as hold_for_human

        return run_step(hold_for_human, request, device_step=True)

    @task(queue=BUILD_QUEUE, trigger_rule="none_failed_min_one_success", retries=2)
    def report(request: dict[str, object]) -> dict[str, object]:
        from hailo_airflow.context import artifact_store, request_from

        from release.pipeline import report as summary
        from release.pipeline_env import PipelineEnv

        return summary(request_from(dict(request)), artifact_store(PipelineEnv.from_env()))

    @task(queue=EDGE_QUEUE, trigger_rule="all_done", retries=2)
    def ensure_safe(request: dict[str, object], **context: object) -> dict[str, object]:
        from hailo_airflow.steps import ensure_safe as settle

        return settle(request, context)

    request = prepare()
    validated = validate_onnx(request)
    compiled = HailoCompileOperator(task_id="compile_hef", request=request, queue=BUILD_QUEUE, retries=1)
    validated >> compiled
    image = build_push_image(request, compiled.output)
    signed = sign_release(request, image)
    manifest = write_manifest(request, signed)
    deployed = CanaryDeployOperator(
        task_id="canary_deploy", request=request, queue=EDGE_QUEUE, pool=DEVICE_POOL, retries=1
    )
    manifest >> deployed
    gated = LatencyGateOperator(task_id="latency_gate", request=request, queue=EDGE_QUEUE, pool=DEVICE_POOL)
    deployed >> gated
    branch = decide(request, gated.output)
    outcomes = [promote(request), rollback(request), hold(request)]
    branch >> outcomes
    reported = report(request)
    outcomes >> reported
    reported >> ensure_safe(request)


hailo_canary_release()
