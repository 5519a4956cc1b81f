"""The fleet rollout's job summary and outcome: from the real report of the local fleet's first rollout
(tests/fixtures/fleet_local.py), the outcome rules, the approval wait, and the repository's plan
against the fleet DAG's params.

A halting rollout followed through the real Airflow API server (summary from the run's XComs, the
resume of a re-run) is in tests/release/test_trigger.py; the whole DAG on the netns testbed in
tests/dags/test_fleet_dag_e2e.py.
"""

from __future__ import annotations

import json

import pytest

from release.devices import Selector
from release.trigger_fleet import FleetOutcome, approval_wait, fleet_outcome, fleet_summary_markdown

pytestmark = pytest.mark.e2e


def _rows(text: str) -> dict[str, list[str]]:
    """The per-wave table: wave number → its cells."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0].isdigit():
            rows[cells[0]] = cells
    return rows


def test_completed_rollout_summary_has_a_row_per_wave_with_p95(local_fleet):
    report = local_fleet.base_report.as_dict()  # the fixture's 3-wave rollout of `base` to the group
    outcome = fleet_outcome("success", report)
    text = fleet_summary_markdown("r-base", outcome, report)
    rows = _rows(text)
    assert set(rows) == {"1", "2", "3"}, text
    for cells in rows.values():
        assert cells[5].endswith(" ms"), text  # worst p95 of the wave's gated devices
    assert outcome is FleetOutcome.COMPLETED or any("rolled_back" in line for line in text.splitlines()), text
    assert "halt reason" not in text


def test_outcomes_without_a_report_and_the_approval_wait():
    assert fleet_outcome("failed", None) is FleetOutcome.FAILED  # prepare refused: no rollout, no report
    assert fleet_outcome("timeout", None) is FleetOutcome.TIMEOUT
    assert fleet_outcome("success", {"state": "rollout_completed"}) is FleetOutcome.COMPLETED
    assert fleet_outcome("failed", {"state": "rollout_completed"}) is FleetOutcome.FAILED  # ensure_safe failed
    plan = {"waves": [{"size": 1}, {"size": "50%", "approval": False}, {"size": "100%", "approval": True}]}
    prepared = {"rollout_id": "r", "waves": [{"index": 1, "devices": ["a"]}, {"index": 3, "devices": ["b", "c"]}]}
    # Slot 2 runs plan wave 3 (wave 2 added no device): its sensor waits for a person.
    assert approval_wait({"wave_2.ready": "up_for_reschedule"}, plan, prepared) == 3
    assert approval_wait({"wave_1.ready": "up_for_reschedule"}, plan, prepared) is None  # a pause, not a person
    assert approval_wait({"wave_2.ready": "running"}, plan, prepared) is None
    text = fleet_summary_markdown("run-1", fleet_outcome("waiting", None), {"rollout_id": "r", "waves": []}, 3)
    assert "**waiting for approval**" in text and "hailo-release rollout approve r --wave 3" in text


@pytest.mark.airflow
def test_the_repository_plan_is_accepted_by_the_fleet_dags_params():
    """What the plan job outputs, plus the tag the fleet job adds, passes the DAG's params schema (the
    REST API's check) and the worker's second check (parse_fleet_params): the same objects the CLI builds."""
    pytest.importorskip("airflow.sdk")
    from airflow.sdk import Param
    from hailo_airflow.fleet_params import FLEET_PARAMS, parse_fleet_params

    from release.trigger_fleet import RELEASE_PLAN_FILE, load_release_plan
    from tests.fixtures.fleet_local import REPO

    fleet, conf = load_release_plan(REPO / RELEASE_PLAN_FILE)
    assert fleet is True
    conf = {**json.loads(json.dumps(conf)), "release_tag": "main-41", "production": True}
    for name, spec in FLEET_PARAMS.items():
        Param(**spec).resolve(conf.get(name, spec.get("default")))
    params = parse_fleet_params(conf)
    assert params.selector == Selector.parse(conf["group"], conf["selector"]) and params.plan.waves[-1].size == "100%"
