"""DagBag integrity: the DAG files import cleanly, with the params, pools, queues and retries the design asks for."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

pytestmark = pytest.mark.airflow

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert {"hailo_canary_release", "hailo_rollback", "hailo_release_decision"} <= set(dagbag.dag_ids)


def test_canary_dag_shape(dagbag):
    dag = dagbag.dags["hailo_canary_release"]
    assert dag.max_active_runs == 1
    order = ["prepare", "validate_onnx", "compile_hef", "build_push_image", "sign_release", "write_manifest",
             "canary_deploy", "latency_gate", "decide"]
    for upstream, downstream in itertools.pairwise(order):
        assert downstream in dag.get_task(upstream).downstream_task_ids, (upstream, downstream)
    assert set(dag.get_task("decide").downstream_task_ids) == {"promote", "rollback", "hold"}
    assert dag.get_task("report").trigger_rule == "none_failed_min_one_success"
    # The last word whatever failed upstream: a canary left undecided is rolled back there.
    assert dag.get_task("ensure_safe").trigger_rule == "all_done"
    assert "ensure_safe" in dag.get_task("report").downstream_task_ids


def test_queues_pools_and_retries(dagbag):
    dag = dagbag.dags["hailo_canary_release"]
    for tid in ("validate_onnx", "compile_hef", "build_push_image", "sign_release", "write_manifest"):
        assert dag.get_task(tid).queue == "hailo-builder", tid
    for tid in ("canary_deploy", "latency_gate", "promote", "rollback", "hold", "ensure_safe"):
        assert dag.get_task(tid).queue == "edge", tid
    for tid in ("canary_deploy", "latency_gate", "promote", "rollback"):
        assert dag.get_task(tid).pool == "hailo_edge_devices", tid
    # Safe to retry: idempotent pushes/publishes; not safe: validation (bad input), the gate (a measurement).
    assert dag.get_task("validate_onnx").retries == 0
    assert dag.get_task("latency_gate").retries == 0
    assert dag.get_task("build_push_image").retries >= 1
    for task in dag.tasks:
        assert task.on_failure_callback, task.task_id


def test_params_reject_bad_values(dagbag):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    dag = dagbag.dags["hailo_canary_release"]
    params = dag.params
    assert params["continuity_id"] == "ADR-0007-hailo-docker-2025-08-31"
    for key, bad in [
        ("continuity_id", "ADR-7-x-2025-01-01"),
        ("release_tag", "v1;reboot"),
        ("release_tag", "a..b"),
        ("onnx_location", "/tmp/../etc/x.onnx; rm"),
        ("device", "Pi 5"),
    ]:
        trial = ParamsDict(dict(params.items()))
        with pytest.raises(ParamValidationError) as exc:
            trial[key] = bad
            trial.validate()
        assert key in str(exc.value) or "does not match" in str(exc.value)
    trial = ParamsDict(dict(params.items()))
    with pytest.raises(ParamValidationError):
        trial["gate_overrides"] = {"p95_ms": 80}
        trial.validate()


def test_extra_links_registered(dagbag):
    dag = dagbag.dags["hailo_canary_release"]
    names = {link.name for link in dag.get_task("latency_gate").operator_extra_links}
    assert "Gate report" in names


def test_decision_dag_requires_a_held_tag_decision_and_reason(dagbag):
    import copy

    from airflow.sdk.exceptions import ParamValidationError

    dag = dagbag.dags["hailo_release_decision"]
    task = dag.get_task("decide_held_release")
    assert (task.queue, task.pool, task.retries) == ("edge", "hailo_edge_devices", 0)
    # No default decision: a trigger that forgets it is refused rather than approving anything.
    with pytest.raises(ParamValidationError, match="no default"):
        copy.deepcopy(dag.params).validate()
    good = {"device": "local", "release_tag": "held-1", "decision": "approve", "reason": "checked by hand"}
    trial = copy.deepcopy(dag.params)  # Param.resolve stores the value: never touch the DAG's own
    for key, value in good.items():
        trial[key] = value
    trial.validate()
    for key, bad in [("decision", "maybe"), ("release_tag", "x;reboot"), ("reason", "")]:
        trial = copy.deepcopy(dag.params)
        with pytest.raises(ParamValidationError):
            for k, v in {**good, key: bad}.items():
                trial[k] = v
            trial.validate()


def test_oncall_rollback_never_waits_for_a_canary_pool_slot(dagbag):
    import copy
    import json
    from pathlib import Path

    from airflow.sdk.exceptions import ParamValidationError

    task = dagbag.dags["hailo_rollback"].get_task("rollback_device")
    canary_pools = {t.pool for t in dagbag.dags["hailo_canary_release"].tasks}
    assert task.pool not in canary_pools and task.priority_weight >= 1000
    pools = json.loads((Path(__file__).resolve().parents[2] / "docker" / "airflow" / "pools.json").read_text())
    assert pools[task.pool]["slots"] >= 1  # created by `airflow pools import` with the others
    for bad in ("previous\n", "v1;reboot", "a..b"):
        trial = copy.deepcopy(dagbag.dags["hailo_rollback"].params)
        with pytest.raises(ParamValidationError):
            trial["to"] = bad
            trial.validate()
