"""What a person reads from the main job (hailo_airflow.demo): one line per task, the log file's
path, Airflow's task logs kept off the terminal unless a task fails, then the summary.

The DAG run is stood in by a child process that does what `dag.test()` does to the terminal (log
lines on stdout and stderr) and to the metadata DB (task rows, here a JSON file the watcher polls);
the step records and the manifest are the ones a real run wrote (tests/data/demo_run/). Nothing
here waits on a clock: the watcher prints every finished task once more after the child exits, and
the progress cadence is checked with an injected clock.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from hailo_airflow import demo

from release.errors import ArtifactNotFound

RECORDED = Path(__file__).resolve().parents[1] / "data" / "demo_run"
TAG = "demo-20261204-174241"  # the recorded run's tag
T0 = dt.datetime(2026, 12, 4, 17, 43, 44, tzinfo=dt.UTC)

# The recorded run's tasks in the order they ended, with their Airflow state: the gate failed (p95
# 129 ms on a loaded machine), the branch took rollback.
TASKS = [
    ("prepare", "success"), ("validate_onnx", "success"), ("compile_hef", "success"),
    ("build_push_image", "success"), ("sign_release", "success"), ("write_manifest", "success"),
    ("canary_deploy", "success"), ("latency_gate", "success"), ("promote", "skipped"), ("hold", "skipped"),
    ("decide", "success"), ("rollback", "success"), ("report", "success"), ("ensure_safe", "success"),
]

# A stand-in for the child running dag.test(): Airflow-style log lines on both streams, task rows
# written as each task starts and ends, and the given exit code.
FAKE_DAG_RUN = r"""
import json, sys
rows_file, tasks, fail_at, t0 = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], float(sys.argv[4])
rows, state = [], "success"
def dump(run_state):
    with open(rows_file + ".tmp", "w") as fh:
        json.dump({"run_state": run_state, "rows": rows}, fh)
    import os; os.replace(rows_file + ".tmp", rows_file)
for i, (task_id, end_state) in enumerate(tasks):
    print(f"2026-12-04T17:44:23Z [info     ] [DAG TEST] starting task_id={task_id} map_index=-1 [airflow.sdk.definitions.dag]")
    print(f"2026-12-04T17:44:23Z [info     ] Task instance state updated [airflow.api_fastapi] ti={task_id}", file=sys.stderr)
    if state == "failed" and task_id == "ensure_safe":  # trigger rule all_done: it runs, and fails the run
        print("AirflowFailException: release ended failed: an upstream task failed", file=sys.stderr)
        end_state = "failed"
    elif state == "failed":
        end_state = "upstream_failed"
    elif task_id == fail_at:
        print("Traceback (most recent call last):")
        print("release.errors.StepFailed: the sidecar did not answer on 127.0.0.1:9000", file=sys.stderr)
        end_state, state = "failed", "failed"
    print(f"2026-12-04T17:44:24Z [info     ] [DAG TEST] end task task_id={task_id} map_index=-1")
    print("2026-12-04T17:44:24Z [warning  ] No tasks to run. unrunnable tasks: {...}")
    rows.append({"task_id": task_id, "state": end_state, "start": t0 + 2 * i, "end": t0 + 2 * i + 1.5})
    dump("running")
dump(state)
sys.exit(1 if state == "failed" else 0)
"""


class RecordedStore:
    """The three store calls the demo makes, answered from a real run's files."""

    def __init__(self, published: bool) -> None:
        self.published = published

    def is_published(self, tag: str) -> bool:
        return self.published

    def get_bytes(self, tag: str, name: str) -> bytes:
        path = RECORDED / name
        if not path.is_file() or (name == "manifest.json" and not self.published):
            raise ArtifactNotFound(name)
        return path.read_bytes()

    def uri(self, tag: str, name: str) -> str:
        return f"file:///srv/hailo/store/releases/{tag}/{name}"


def _rows_from(rows_file: Path) -> Any:
    def poll() -> tuple[str | None, str | None, list[demo.TaskRow]]:
        if not rows_file.exists():
            return None, None, []
        data = json.loads(rows_file.read_text())

        def when(t: float) -> dt.datetime:
            return dt.datetime.fromtimestamp(t, dt.UTC)

        return ("manual__recorded", data["run_state"],
                [demo.TaskRow(r["task_id"], r["state"], when(r["start"]), when(r["end"])) for r in data["rows"]])

    return poll


def _run(tmp_path: Path, fail_at: str = "", published: bool = True) -> tuple[str, Path, int]:
    out = io.StringIO()
    store = RecordedStore(published)
    rows_file = tmp_path / "rows.json"
    child = [sys.executable, "-c", FAKE_DAG_RUN, str(rows_file), json.dumps(TASKS), fail_at, str(T0.timestamp())]
    log_file, _, _ = demo.run_and_watch(TAG, child, tmp_path / "logs", store, _rows_from(rows_file), out, poll_s=0.01)
    code = demo.print_summary(store, TAG, log_file, out)
    return out.getvalue(), log_file, code


def demo_exit_code(state: str) -> int:
    from release.canary import EXIT_CODES
    from release.states import ReleaseState

    return EXIT_CODES[ReleaseState(state)]


def _task_lines(text: str) -> dict[str, list[str]]:
    lines: dict[str, list[str]] = {}
    for line in text.splitlines():
        match = re.match(r"^[✓✗-] (\S+) ", line)
        if match:
            lines.setdefault(match.group(1), []).append(line)
    return lines


def test_success_prints_one_line_per_task_the_log_path_and_the_summary_but_no_task_logs(tmp_path: Path) -> None:
    text, log_file, code = _run(tmp_path)

    lines = _task_lines(text)
    # Every task; those that ran in the order they ended (a skipped one goes last in its poll's batch,
    # and which poll sees it depends on timing).
    assert sorted(lines) == sorted(task for task, _ in TASKS)
    ran = [task for task, state in TASKS if state != "skipped"]
    assert [task for task in lines if task in ran] == ran
    assert all(len(v) == 1 for v in lines.values()), lines  # and once
    assert f"Airflow task logs: {log_file}" in text
    # How each step ran, from the recorded step records (steps/*.json, the manifest once published).
    assert re.search(r"validate_onnx +success +17:43:46 → 17:43:47 +1\.5s +real ", lines["validate_onnx"][0])
    assert " placeholder " in lines["compile_hef"][0]
    assert " skipped " in lines["promote"][0] and "branch not taken" in lines["promote"][0]
    assert re.search(r"rollback +success .* real +restored nothing", lines["rollback"][0])
    assert re.search(r"prepare +success .* [\d.]+s +-$", lines["prepare"][0])  # no step record: Airflow's state
    # Airflow's log lines are in the file, not on the terminal.
    logged = log_file.read_text()
    assert "[DAG TEST] starting task_id=latency_gate" in logged and "Task instance state updated" in logged
    assert "[DAG TEST]" not in text and "Task instance state updated" not in text and "[info" not in text
    # The summary as before.
    for head in ("release   ", "verdict   fail", "latency   p95 ", "manifest  ", "gate      ", "histogram ",
                 "steps:", "lease     "):
        assert head in text, head
    assert "→ rolled_back" in text and code == demo_exit_code("rolled_back")


def test_a_failed_task_shows_the_tail_of_its_own_log(tmp_path: Path) -> None:
    text, log_file, code = _run(tmp_path, fail_at="canary_deploy", published=False)

    lines = _task_lines(text)
    assert lines["canary_deploy"][0].startswith("✗ canary_deploy     failed")
    assert lines["latency_gate"][0].startswith("- latency_gate      upstream_failed")
    assert f"lines of canary_deploy's log ({log_file})" in text
    assert "StepFailed: the sidecar did not answer on 127.0.0.1:9000" in text
    # Only the first failed task's section, up to its end: not the scheduler loop after it, not the
    # failures that follow from it (named only).
    assert "task_id=latency_gate" not in text and "No tasks to run" not in text
    assert "release ended failed" not in text and "also failed: ensure_safe" in text
    assert f"release {TAG} was not published" in text and code == 1


def test_a_long_task_gets_a_progress_line_with_its_phase_at_least_every_10_s() -> None:
    out = io.StringIO()
    watcher = demo.Watcher(lambda step: None, lambda since: "base image arm64: debootstrap: Configuring libc6", out)
    running = [demo.TaskRow("build_push_image", "running", T0, None)]
    # Polls as the real loop makes them: about 1 s apart, some late (a slow metadata-DB query).
    polls = [0.0, 1.0, 2.1, 4.0, 7.9, 9.2, 10.1, 12.0, 16.5, 18.4, 19.6, 26.0, 28.1, 31.0, 34.9, 37.2]
    for t in polls:
        watcher.update(running, T0 + dt.timedelta(seconds=t))
    progress = out.getvalue().splitlines()
    seconds = [int(m.group(1)) * 60 + int(m.group(2)) for m in (re.search(r"(\d+)m(\d\d)s", p) for p in progress) if m]
    assert len(seconds) == len(progress) >= 3
    assert all(b - a <= 10 for a, b in zip([0, *seconds], seconds, strict=False)), seconds
    assert all("debootstrap: Configuring libc6" in p and p.startswith("… build_push_image") for p in progress)


@pytest.mark.parametrize(("log", "task", "want", "unwanted"), [
    ("a\n[DAG TEST] starting task_id=x \nx1\n[DAG TEST] starting task_id=xy \nxy1\n", "x", "x1", "xy1"),
    ("[DAG TEST] starting task_id=x m\nx1\n[DAG TEST] end task task_id=x m\nloop\n", "x", "x1", "loop"),
    ("no markers\nat all\n", "x", "at all", None),
])
def test_task_log_section(log: str, task: str, want: str, unwanted: str | None) -> None:
    section = demo.task_log_section(log, task)
    assert want in section and (unwanted is None or unwanted not in section)
