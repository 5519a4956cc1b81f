"""DAG file parse time, side by side with an empty DAG file (the floor of parsing any file)."""

from __future__ import annotations

import itertools
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.table import Row

REPO = Path(__file__).resolve().parents[1]
EMPTY_DAG = """
from airflow.sdk import dag
import datetime as dt

@dag(schedule=None, start_date=dt.datetime(2026, 1, 1))
def empty():
    pass

empty()
"""
PARSE = """
import sys, time
sys.path.insert(0, sys.argv[2])
import airflow.sdk  # the Airflow import itself is paid once by the dag-processor, not per file
from airflow.dag_processing.dagbag import DagBag
t = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1], include_examples=False) if False else DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
print(time.perf_counter() - t)
"""


def _parse_seconds(path: Path) -> float:
    runs = []
    for _ in range(5):
        out = subprocess.run([sys.executable, "-c", PARSE, str(path), str(REPO / "plugins")], capture_output=True,
                             text=True, check=True, env={"AIRFLOW__CORE__LOAD_EXAMPLES": "False", "PATH": "/usr/bin:/bin",
                                                         "AIRFLOW_HOME": tempfile.gettempdir() + "/bench-airflow-home"})
        runs.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(runs)


def rows() -> list[Row]:
    return parse_rows() + canary_rows()


def parse_rows() -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty_dag.py"
        empty.write_text(EMPTY_DAG)
        base = _parse_seconds(empty)
    out = [Row("parse: empty DAG file", base * 1000, "ms", "-", None, "median of 5, fresh process")]
    for dag_file in sorted((REPO / "dags").glob("*.py")):
        t = _parse_seconds(dag_file)
        out.append(Row(f"parse: dags/{dag_file.name}", t * 1000, "ms", "< 500", t < 0.5, f"{(t - base) * 1000:+.0f} ms vs empty"))
    return out


# --- the canary end to end: CeleryExecutor stack (scripts/scaleout.sh) vs dag.test() -------------
CANARY_CID = "ADR-0007-hailo-docker-2025-08-31"
DAG_TEST = """
import json, sys, time
from airflow.dag_processing.dagbag import DagBag
dag = DagBag(dag_folder=sys.argv[1]).dags["hailo_canary_release"]
t = time.perf_counter()
run = dag.test(run_conf=json.loads(sys.argv[2]))
print(json.dumps({"seconds": time.perf_counter() - t, "state": str(getattr(run.state, "value", run.state))}))
"""
# Airflow's own defaults for the settings scripts/scaleout.sh tunes: HAILO_BENCH_CELERY_DEFAULTS=1
# puts all of them back, or a comma-separated list of names (e.g. AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL)
# only those.
AIRFLOW_DEFAULTS = {"AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "1", "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "5",
                    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "5"}


def _canary_conf(tag: str) -> dict[str, object]:
    return {"continuity_id": CANARY_CID, "release_tag": tag, "onnx_location": "sample", "config_version": "cfg-bench",
            "device": "local", "gate_overrides": {"duration_s": 5}, "production": False}


def _clean_env(**extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "HAILO_"))}
    env.update(extra)
    return env


def _stop_local_sidecar(pipeline_root: Path) -> None:
    from release.local_sidecar import _stop

    _stop(pipeline_root / "device" / "local" / "sidecar")


def _dag_test_seconds(tmp: Path, tags: list[str]) -> list[float]:
    import json

    from tests.fixtures.testbed import free_port

    home, root = tmp / "dagtest-home", tmp / "dagtest-root"
    env = _clean_env(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False",
                     AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"), AIRFLOW__CORE__PLUGINS_FOLDER=str(REPO / "plugins"),
                     PYTHONPATH=f"{REPO / 'plugins'}:{REPO}", HAILO_PIPELINE_ROOT=str(root),
                     HAILO_LOCAL_SIDECAR_PORT=str(free_port()))
    airflow = Path(sys.executable).with_name("airflow")
    for cmd in (["db", "migrate"], ["pools", "import", str(REPO / "docker" / "airflow" / "pools.json")]):
        subprocess.run([str(airflow), *cmd], env=env, capture_output=True, check=True)
    out = []
    try:
        for tag in tags:
            res = subprocess.run([sys.executable, "-c", DAG_TEST, str(REPO / "dags"), json.dumps(_canary_conf(tag))],
                                 env=env, capture_output=True, text=True, check=True, cwd=tmp)
            result = json.loads(res.stdout.strip().splitlines()[-1])
            if result["state"] != "success":
                raise RuntimeError(f"dag.test run {tag} ended {result['state']}: {res.stderr[-2000:]}")
            out.append(float(result["seconds"]))
    finally:
        _stop_local_sidecar(root)
    return out


def _iso(ts: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def _celery_seconds(tmp: Path, tags: list[str], defaults: dict[str, str]) -> tuple[list[float], list[float]]:
    """→ (queued→end of each run, the largest gap between one task's end and the next one's start)."""
    import json

    import requests

    from release.trigger import AirflowClient
    from tests.fixtures.testbed import free_port

    state = tmp / "scaleout"
    env = _clean_env(HAILO_VENV=str(Path(sys.executable).parent.parent), HAILO_SCALEOUT_DIR=str(state),
                     **{f"HAILO_SCALEOUT_{k}": str(free_port()) for k in
                        ("API_PORT", "PG_PORT", "REDIS_PORT", "BUILDER_LOG_PORT", "EDGE_LOG_PORT")},
                     HAILO_LOCAL_SIDECAR_PORT=str(free_port()))
    env.update(defaults)
    script = str(REPO / "scripts" / "scaleout.sh")
    try:
        res = subprocess.run(["bash", script, "start"], env=env, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"scaleout.sh start failed: {res.stderr[-3000:]}")
        info = json.loads((state / "stack.json").read_text())
        client = AirflowClient(info["url"], info["username"], Path(info["password_file"]).read_text().strip(),
                               say=lambda _: None)
        durations, gaps = [], []
        for tag in tags:
            run_id = f"bench__{tag}"
            client.trigger("hailo_canary_release", run_id, _canary_conf(tag))
            state_, _ = client.follow("hailo_canary_release", run_id, poll_s=0.5, timeout_s=900)
            if state_ != "success":
                raise RuntimeError(f"Celery run {tag} ended {state_}")
            headers = {"Authorization": f"Bearer {client.token()}"}
            base = f"{info['url']}/api/v2/dags/hailo_canary_release/dagRuns/{run_id}"
            run = requests.get(base, headers=headers, timeout=30).json()
            durations.append(_iso(run["end_date"]) - _iso(run["queued_at"]))
            tis = sorted((t for t in requests.get(f"{base}/taskInstances", headers=headers, timeout=30).json()["task_instances"]
                          if t["start_date"] and t["end_date"] and t["state"] == "success"), key=lambda t: t["start_date"])
            gaps.append(max((_iso(b["start_date"]) - _iso(a["end_date"]) for a, b in itertools.pairwise(tis)),
                            default=0.0))
        return durations, gaps
    finally:
        subprocess.run(["bash", script, "purge"], env=env, capture_output=True)


def canary_rows(runs: int = 2) -> list[Row]:
    """The same release (sample model, 5 s gate, `local` device) end to end, side by side."""
    import os

    wanted = os.environ.get("HAILO_BENCH_CELERY_DEFAULTS", "")
    defaults = dict(AIRFLOW_DEFAULTS) if wanted == "1" else {k: AIRFLOW_DEFAULTS[k] for k in wanted.split(",") if k}
    with tempfile.TemporaryDirectory(prefix="bench-canary-") as tmp_s:
        tmp = Path(tmp_s)
        in_process = _dag_test_seconds(tmp, [f"bench-dt-{i}" for i in range(runs)])
        celery, gaps = _celery_seconds(tmp, [f"bench-cel-{i}" for i in range(runs)], defaults)
    base, dist = statistics.median(in_process), statistics.median(celery)
    which = "scaleout.sh settings" + (f", Airflow defaults for {', '.join(sorted(defaults))}" if defaults else "")
    return [
        Row("canary end to end: dag.test()", base, "s", "-", None, f"median of {runs}, in-process, SQLite"),
        Row("canary end to end: Celery stack", dist, "s", "-", None,
            f"median of {runs}, queued→end, 2 workers, PostgreSQL + Redis; {which}"),
        Row("canary: Celery / dag.test()", dist / base, "x", "<= 1.5", dist / base <= 1.5,
            f"largest task-to-task gap {max(gaps):.1f} s"),
    ]
