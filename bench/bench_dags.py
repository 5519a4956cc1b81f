"""DAG file parse time, side by side with an empty DAG file (the floor of parsing any file)."""

from __future__ import annotations

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
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty_dag.py"
        empty.write_text(EMPTY_DAG)
        base = _parse_seconds(empty)
    out = [Row("parse: empty DAG file", base * 1000, "ms", "-", None, "median of 5, fresh process")]
    for dag_file in sorted((REPO / "dags").glob("*.py")):
        t = _parse_seconds(dag_file)
        out.append(Row(f"parse: dags/{dag_file.name}", t * 1000, "ms", "< 500", t < 0.5, f"{(t - base) * 1000:+.0f} ms vs empty"))
    return out
