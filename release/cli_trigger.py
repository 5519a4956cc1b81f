"""`hailo-release trigger`: start a DAG run through Airflow's REST API and follow it to the end.

The password comes from the environment (AIRFLOW_PASSWORD), never from argv. Exit codes:
0 promoted · 1 run failed · 2 bad params · 7 auth failed · 8 DAG paused · 10 rolled back ·
11 held for a human (inconclusive gate) · 124 timed out while following.
With --dag hailo_fleet_rollout: 0 completed · 1 failed · 10 halted (touched devices restored) ·
12 waiting for a person's approval (the run goes on in Airflow) · 124 timed out while following.

`hailo-release release-plan FILE` validates the repository's release plan and prints, one per line,
`fleet=true|false` and `conf=<JSON>` (the fleet DAG's params without release_tag).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

DEFAULT_DAG = "hailo_canary_release"
FLEET_DAG = "hailo_fleet_rollout"
# The longest a follow waits to see the approval sensor poke again before it reports "waiting" (the
# fleet DAG's sensor pokes every 10 s).
WAIT_CONFIRM_S = 60.0


def register(sub: Any) -> None:
    p = sub.add_parser("trigger", help="trigger a DAG run via Airflow's REST API v2 and follow it",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--airflow-url", default=os.environ.get("AIRFLOW_URL", "http://localhost:8080"))
    p.add_argument("--user", default=os.environ.get("AIRFLOW_USER", "admin"))
    p.add_argument("--dag", default=DEFAULT_DAG)
    p.add_argument("--continuity-id", required=True, help="or a PR title containing it, with --search-title")
    p.add_argument("--search-title", action="store_true", help="find the continuity ID inside --continuity-id text")
    p.add_argument("--ci-run", required=True, help="CI run id and attempt, e.g. 1234-1: makes the run id unique")
    p.add_argument("--conf", default="{}", help="JSON object of DAG params (release_tag, config_version, device, ...)")
    p.add_argument("--no-follow", action="store_true")
    p.add_argument("--unpause", action="store_true", help="unpause a paused DAG instead of refusing")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--poll", type=float, default=3.0)
    p.add_argument("--summary-file", type=Path, default=os.environ.get("GITHUB_STEP_SUMMARY") or None)
    p.set_defaults(handler=handle)

    p = sub.add_parser("release-plan", help="validate the release plan (canary only, or canary then fleet)")
    p.add_argument("plan_file", type=Path, help="e.g. release-plan.yaml")
    p.set_defaults(handler=handle_release_plan)


def handle_release_plan(args: argparse.Namespace) -> int:
    from release.trigger_fleet import load_release_plan

    fleet, conf = load_release_plan(args.plan_file)
    print(f"fleet={'true' if fleet else 'false'}")
    print(f"conf={json.dumps(conf, separators=(',', ':'), sort_keys=True)}")
    return 0


def handle(args: argparse.Namespace) -> int:
    from release.errors import InvalidInput
    from release.identifiers import ContinuityId
    from release.trigger import AirflowClient, Outcome, outcome_of, summary_markdown

    password = os.environ.get("AIRFLOW_PASSWORD")
    if not password:
        raise InvalidInput("set AIRFLOW_PASSWORD in the environment (never on the command line)")
    cid = ContinuityId.find_in(args.continuity_id) if args.search_title else ContinuityId.parse(args.continuity_id)
    try:
        conf = json.loads(args.conf)
    except ValueError as exc:
        raise InvalidInput(f"--conf is not JSON: {exc}") from None
    if not isinstance(conf, dict):
        raise InvalidInput("--conf must be a JSON object")
    if args.dag == DEFAULT_DAG:
        conf.setdefault("continuity_id", cid.value)
    run_id = cid.run_id(f"ci-{args.ci_run}")
    client = AirflowClient(args.airflow_url, args.user, password)
    if args.dag == FLEET_DAG:
        return _fleet(args, client, cid, run_id, conf)
    client.trigger(args.dag, run_id, conf, unpause=args.unpause)
    print(f"triggered {args.dag} run {run_id}")
    if args.no_follow:
        return 0
    state, tasks = client.follow(args.dag, run_id, poll_s=args.poll, timeout_s=args.timeout)
    outcome = outcome_of(state, tasks, args.dag)
    report = client.xcom(args.dag, run_id, "report") if args.dag == DEFAULT_DAG and state == "success" else None
    text = summary_markdown(run_id, outcome, report if isinstance(report, dict) else None, args.dag)
    print(text)
    if args.summary_file:
        with open(args.summary_file, "a", encoding="utf-8") as fh:
            fh.write(text)
    return int(Outcome(outcome))


def _earlier_attempts(cid: Any, ci_run: str) -> list[str]:
    """Run ids of this CI run's earlier attempts, newest first (`--ci-run RUN-ATTEMPT`)."""
    run, _, attempt = ci_run.rpartition("-")
    if not run or not attempt.isdigit():
        return []
    return [cid.run_id(f"ci-{run}-{k}") for k in range(int(attempt) - 1, 0, -1)]


def _fleet(args: argparse.Namespace, client: Any, cid: Any, run_id: str, conf: dict[str, Any]) -> int:
    """The fleet rollout: a re-run of the CI job resumes the rollout an earlier attempt started."""
    from release.trigger_fleet import (
        FleetOutcome,
        approval_wait,
        collect_report,
        fleet_outcome,
        fleet_summary_markdown,
        previous_rollout,
    )

    earlier = None if conf.get("rollout_id") else previous_rollout(client, _earlier_attempts(cid, args.ci_run))
    if earlier is not None and earlier[2]:
        run_id = earlier[0]
        print(f"following run {run_id} of rollout {earlier[1]} (started by an earlier attempt of this CI run, still going)")
    else:
        if earlier is not None:
            print(f"resuming rollout {earlier[1]} (started by an earlier attempt of this CI run)")
            conf["rollout_id"] = earlier[1]
        client.trigger(FLEET_DAG, run_id, conf, unpause=args.unpause)
        print(f"triggered {FLEET_DAG} run {run_id}")
    if args.no_follow:
        return 0
    plan = conf.get("plan") if isinstance(conf.get("plan"), dict) else None
    waiting: list[int] = []
    first_pokes: dict[str, str] = {}  # the waiting sensors' end dates when this follow first saw them wait
    first_seen_at: list[float] = []

    def stop(tasks: dict[str, str | None]) -> bool:
        if not any(t.endswith(".ready") and s == "up_for_reschedule" for t, s in tasks.items()):
            return False
        wave = approval_wait(tasks, plan, client.xcom(FLEET_DAG, run_id, "prepare")) if plan else None
        if wave is None:
            return False
        # Waiting counts once the sensor has poked again since this follow first saw it wait: an
        # approval given just before (a re-run of the job after `rollout approve`) is seen by that
        # poke. Its end_date is the server's, so no clock is compared across hosts.
        pokes = {str(t["task_id"]): str(t.get("end_date")) for t in client.task_instances(FLEET_DAG, run_id)
                 if str(t["task_id"]).endswith(".ready") and t.get("state") == "up_for_reschedule"}
        if not first_seen_at:
            first_pokes.update(pokes)
            first_seen_at.append(time.monotonic())
            return False
        poked_again = any(first_pokes.get(task_id) not in (None, end) for task_id, end in pokes.items())
        # Bounded either way: an API without end dates stops after a few pokes' worth of waiting.
        if not poked_again and time.monotonic() - first_seen_at[0] < WAIT_CONFIRM_S:
            return False
        waiting.append(wave)
        return True

    state, _ = client.follow(FLEET_DAG, run_id, poll_s=args.poll, timeout_s=args.timeout, stop=stop)
    report = collect_report(client, run_id)
    outcome = fleet_outcome(state, report if report.get("state") else None)
    text = fleet_summary_markdown(run_id, outcome, report, waiting[-1] if waiting else None)
    print(text)
    if args.summary_file:
        with open(args.summary_file, "a", encoding="utf-8") as fh:
            fh.write(text)
    return int(FleetOutcome(outcome))
