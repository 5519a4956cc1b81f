"""`hailo-release trigger`: start a DAG run through Airflow's REST API and follow it to the end.

The password comes from the environment (AIRFLOW_PASSWORD), never from argv. Exit codes:
0 promoted · 1 run failed · 2 bad params · 7 auth failed · 8 DAG paused · 10 rolled back ·
11 held for a human (inconclusive gate) · 124 timed out while following.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

DEFAULT_DAG = "hailo_canary_release"


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
