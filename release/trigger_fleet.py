"""Following a `hailo_fleet_rollout` run from CI: the release plan in the repository, the run's outcome
(completed / halted / waiting for approval / failed) and a job summary with one row per wave.

The release plan (``release-plan.yaml`` at the repository's root) is a rollout plan
(release.rollout_plan.RolloutPlan: its ``fleet: false`` means "canary only") plus a ``target:`` (an
inventory group or a label selector). ``load_release_plan`` validates it before anything is triggered.

Only the standard library at import time: the release workflow's trigger job installs
requirements/trigger.lock (requests alone); the plan check, which needs pydantic, runs in its own job.
"""

from __future__ import annotations

import re
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from release.errors import ConfigError, InvalidInput

if TYPE_CHECKING:
    from release.trigger import AirflowClient

FLEET_DAG = "hailo_fleet_rollout"
RELEASE_PLAN_FILE = "release-plan.yaml"
_READY = re.compile(r"^wave_(\d+)\.ready$")
PASSED = ("promoted", "already")
FAILED = ("rolled_back", "failed", "interrupted")


class FleetOutcome(IntEnum):
    """Exit codes, the same as `hailo-release rollout`'s: 0 completed, 10 halted, 12 waiting."""

    COMPLETED = 0
    FAILED = 1
    HALTED = 10
    WAITING_FOR_APPROVAL = 12
    TIMEOUT = 124


def load_release_plan(path: Path) -> tuple[bool, dict[str, Any]]:
    """(fleet after the canary?, the hailo_fleet_rollout conf without release_tag). ConfigError names
    the problem: unreadable file, bad YAML, a bad wave, a bad or missing target."""

    from release.devices import Selector
    from release.rollout_plan import parse_plan, read_plan_mapping

    raw = read_plan_mapping(path, "release plan", "expected a mapping with 'waves' and 'target'")
    target = raw.pop("target", None)
    plan = parse_plan(raw, f"release plan {path}")
    if not plan.fleet:
        return False, {}
    if not isinstance(target, dict) or set(target) - {"group", "selector"} or not target:
        raise ConfigError(f"release plan {path}: target must be {{group: NAME}} or {{selector: 'key=value'}}, got {target!r}")
    group, selector = target.get("group"), target.get("selector")
    try:
        Selector.parse(group, selector)
    except InvalidInput as exc:
        raise ConfigError(f"release plan {path}: target: {exc}") from None
    return True, {"plan": plan.to_json_dict(), "group": group, "selector": selector}


def approval_wait(tasks: dict[str, str | None], plan: dict[str, Any] | None, prepared: dict[str, Any] | None) -> int | None:
    """The wave (plan index) whose `ready` sensor is waiting for a person's approval, or None. A sensor
    rescheduled for a pause between waves is not a wait for a person: following goes on."""
    if not plan or not prepared:
        return None
    waves = prepared.get("waves") or []
    for task_id, state in tasks.items():
        m = _READY.match(task_id)
        if m is None or state != "up_for_reschedule" or int(m.group(1)) > len(waves):
            continue
        index = int(waves[int(m.group(1)) - 1]["index"])
        if plan["waves"][index - 1].get("approval"):
            return index
    return None


def fleet_outcome(state: str, report: dict[str, Any] | None) -> FleetOutcome:
    """The rollout's own state (the `report` task's XCom, read from the store's history) decides; a halt
    is a safe, expected end of a successful run. A run without a report failed (e.g. prepare refused)."""
    if state == "waiting":
        return FleetOutcome.WAITING_FOR_APPROVAL
    if state == "timeout":
        return FleetOutcome.TIMEOUT
    rollout_state = (report or {}).get("state")
    if rollout_state == "rollout_halted":
        return FleetOutcome.HALTED
    if state == "success" and rollout_state == "rollout_completed":
        return FleetOutcome.COMPLETED
    return FleetOutcome.FAILED


def collect_report(client: AirflowClient, run_id: str) -> dict[str, Any]:
    """The rollout as the run's XComs say, in RolloutReport.as_dict()'s shape: `report` (state, waves,
    abort reasons, report link), each mapped `roll_device` (per-device outcome, p95), each `check`
    (devices the halt restored) and `prepare` (skipped devices, rollout id)."""
    prepared = client.xcom(FLEET_DAG, run_id, "prepare")
    report = client.xcom(FLEET_DAG, run_id, "report")
    out: dict[str, Any] = dict(report) if isinstance(report, dict) else {}
    if isinstance(prepared, dict):
        out.setdefault("rollout_id", prepared.get("rollout_id"))
        out.setdefault("tag", prepared.get("tag"))
        out.setdefault("skipped", prepared.get("skipped") or {})
        if "waves" not in out:
            out["waves"] = [{"wave": w["index"], "devices": w["devices"], "outcomes": {}} for w in prepared.get("waves") or []]
    devices, restored = [], []
    for ti in client.task_instances(FLEET_DAG, run_id):
        task_id, index = str(ti["task_id"]), int(ti.get("map_index", -1))
        if task_id.endswith(".roll_device") and index >= 0 and ti.get("state") in ("success", "failed"):
            value = client.xcom(FLEET_DAG, run_id, task_id, map_index=index)
            if isinstance(value, dict) and value.get("device"):
                devices.append(value)
        elif task_id.endswith(".check") and ti.get("state") == "success":
            value = client.xcom(FLEET_DAG, run_id, task_id)
            if isinstance(value, dict) and value.get("halted"):
                restored += [{"device": d, "restored_to": to} for d, to in (value.get("restored") or {}).items()]
                out.setdefault("abort_reasons", value.get("reasons") or [])
    # The report's per-device outcomes come from the store's history, so they cover devices whose tasks
    # this run skipped (a resumed run); a device task's own XCom fills in what an older report lacks.
    by_device = {d["device"]: d for d in out.get("devices") or [] if isinstance(d, dict) and d.get("device")}
    for d in devices:
        by_device.setdefault(d["device"], d)
    out["devices"] = sorted(by_device.values(), key=lambda d: (d.get("wave", 0), d["device"]))
    out.setdefault("restored", restored)
    return out


def _p95(values: list[float]) -> str:
    return f"{max(values):.1f} ms" if values else "-"


def _wave_rows(report: dict[str, Any], halted: bool) -> list[str]:
    """One row per wave. Counts come from the wave's outcomes in the store's history (the report's
    `outcomes`), so a resumed run, whose device tasks had nothing to do, reports them too; failed device
    names and p95 come from the per-device outcomes where the run has them."""
    rows = []
    by_wave: dict[int, list[dict[str, Any]]] = {}
    for d in report.get("devices") or []:
        by_wave.setdefault(int(d.get("wave", 0)), []).append(d)
    for wave in report.get("waves") or []:
        index, names = int(wave["wave"]), list(wave.get("devices") or [])
        outcomes = by_wave.get(index, [])
        counts: dict[str, int] = dict(wave.get("outcomes") or {})
        if not counts:
            for d in outcomes:
                counts[str(d.get("status"))] = counts.get(str(d.get("status")), 0) + 1
        passed = sum(counts.get(k, 0) for k in PASSED)
        failed_names = [d["device"] for d in outcomes if d.get("status") in FAILED]
        failed = max(len(failed_names), sum(counts.get(k, 0) for k in FAILED))
        p95 = [float(d["p95_ms"]) for d in outcomes if isinstance(d.get("p95_ms"), int | float)]
        if sum(v for k, v in counts.items() if k != "untouched") == 0 and not wave.get("done"):
            verdict = "not reached" if halted else "not started"
        elif failed and halted:
            verdict = "**halted**"
        elif halted and counts.get("halted"):
            verdict = "restored by the halt"
        elif failed:
            verdict = "failures within the abort criteria"
        else:
            verdict = "passed"
        rows.append(f"| {index} | {', '.join(names)} | {passed} | {', '.join(failed_names) or failed} | "
                    f"{counts.get('skipped', 0)} | {_p95(p95)} | {verdict} |")
    return rows


def fleet_summary_markdown(run_id: str, outcome: FleetOutcome, report: dict[str, Any] | None,
                           waiting_wave: int | None = None) -> str:
    words = {FleetOutcome.WAITING_FOR_APPROVAL: "waiting for approval"}.get(outcome, outcome.name.lower())
    lines = [f"## Fleet rollout `{run_id}`: **{words}**", ""]
    report = report or {}
    rid = report.get("rollout_id")
    if rid:
        lines += [f"Rollout `{rid}` of `{report.get('tag', '?')}`; report: {report.get('report_uri') or '-'}", ""]
    if outcome is FleetOutcome.WAITING_FOR_APPROVAL and waiting_wave is not None:
        lines += [f"Wave {waiting_wave} waits for a person: `hailo-release rollout approve {rid} --wave {waiting_wave}` "
                  "(the Airflow run goes on by itself once approved).", ""]
    if report.get("waves"):
        lines += ["| wave | devices | passed | failed | skipped | worst p95 | verdict |",
                  "| --- | --- | --- | --- | --- | --- | --- |",
                  *_wave_rows(report, outcome is FleetOutcome.HALTED), ""]
    for d in report.get("devices") or []:
        if d.get("status") in FAILED or d.get("status") == "skipped":
            lines.append(f"- `{d['device']}` (wave {d.get('wave')}): {d.get('status')}: {d.get('reason') or '-'}")
    for name, why in sorted((report.get("skipped") or {}).items()):
        lines.append(f"- `{name}` not targeted: {why}")
    if outcome is FleetOutcome.HALTED or report.get("abort_reasons"):
        lines.append(f"- halt reason: {'; '.join(report.get('abort_reasons') or []) or 'unknown'}")
    for r in report.get("restored") or []:
        healthy = r.get("time_to_healthy_s")
        to = f"`{r['restored_to']}`" if r.get("restored_to") else "nothing (it had no last-known-good)"
        lines.append(f"- `{r['device']}` restored to {to} by the halt"
                     + (f" (healthy after {float(healthy):.1f} s)" if isinstance(healthy, int | float) else ""))
    return "\n".join(lines).rstrip() + "\n"


def previous_rollout(client: AirflowClient, run_ids: list[str]) -> tuple[str, str, bool] | None:
    """(run id, rollout id, still running?) of the rollout an earlier attempt of this CI run started
    (its `prepare` XCom), newest first. A re-run of the job follows that run while it goes on (e.g. it
    waited for an approval that has since been given), or resumes its rollout in a new run (the
    DAG's rollout_id param) once it ended — never a second rollout."""
    from release.errors import ArtifactNotFound

    for run_id in run_ids:
        try:
            run = client.run(FLEET_DAG, run_id)
        except ArtifactNotFound:
            continue
        prepared = client.xcom(FLEET_DAG, run_id, "prepare")
        if isinstance(prepared, dict) and prepared.get("rollout_id"):
            return run_id, str(prepared["rollout_id"]), str(run.get("state")) in ("queued", "running")
    return None
