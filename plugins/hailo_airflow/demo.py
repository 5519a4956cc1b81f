"""The main job on embedded defaults: run hailo_canary_release end to end on this machine.

    python -m hailo_airflow.demo [--tag T] [--continuity-id ID] [--config-version V] [--onnx PATH]

Airflow runs for real (SQLite, `dag.test()` in a child process); the device is this machine (`local`
target: device agent + sidecar on the onnx backend). Prints one line per DAG task as it ends (start,
end, elapsed, and whether its step ran for real, against a double, as a placeholder or was skipped),
a progress line at least every 10 s while a task runs long, then the verdict and where the manifest
and the gate report are. Airflow's own task logs go to a file whose path is printed; they are shown
here only when a task fails. Exit codes as `hailo-release run` (0 promoted).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from release.progress import PHASE_FILE_ENV, read_phase

REPO_ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "hailo_canary_release"

# DAG task → the step record it writes (steps/<name>.json while the run goes, the manifest's `steps`
# once published). prepare, decide and report write none: their line shows the Airflow state only.
TASK_STEPS = {
    "validate_onnx": "validate", "compile_hef": "compile", "build_push_image": "image", "sign_release": "sign",
    "write_manifest": "manifest", "canary_deploy": "deploy", "latency_gate": "gate", "promote": "promote",
    "rollback": "rollback", "hold": "hold", "ensure_safe": "fail_safe",
}
FINISHED = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})
NOT_RUN = frozenset({"skipped", "upstream_failed", "removed"})
# The image step runs minutes: making the arm64 base under QEMU took 257 s here (633 s at load 8),
# the image's pip install under QEMU 80 s on a later run. A silent terminal that long reads as a hang,
# so a running task gets a line at least every 10 s. Due at 8 s:
# one poll (sleep 1 s + a metadata-DB query, up to ≈ 1 s under load) may come late; with a 10 s
# threshold the gaps measured 10.4-11 s.
PROGRESS_EVERY_S = 8.0
POLL_S = 1.0


@dataclasses.dataclass(frozen=True)
class TaskRow:
    """One task instance of the run, as the metadata DB has it."""

    task_id: str
    state: str | None
    start: dt.datetime | None
    end: dt.datetime | None


def _hms(when: dt.datetime | None) -> str:
    return when.astimezone(dt.UTC).strftime("%H:%M:%S") if when else "--:--:--"


def _short(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def step_line(row: TaskRow, record: dict[str, Any] | None) -> str:
    """The one line a finished task gets: state, start → end (UTC), elapsed, how its step ran, why."""
    mark = "✓" if row.state == "success" else "-" if row.state in NOT_RUN else "✗"
    if row.start and row.end:
        when = f"{_hms(row.start)} → {_hms(row.end)} {(row.end - row.start).total_seconds():7.1f}s"
    else:
        when = f"{'':8}   {'':8} {'':8}"
    kind = record["status"] if record else ("skipped" if row.state == "skipped" else "-")
    why = record.get("reason", "") if record else ""
    if row.state == "skipped" and not record:
        why = "not run (branch not taken)"
    elif row.state == "upstream_failed":
        why = "not run (an upstream task failed)"
    return f"{mark} {row.task_id:<17} {row.state or '?':<15} {when}  {kind:<11}  {_short(why)}".rstrip()


def progress_line(task_id: str, elapsed_s: float, phase: str | None) -> str:
    return f"… {task_id:<17} {'running':<15} {int(elapsed_s) // 60:d}m{int(elapsed_s) % 60:02d}s  {_short(phase or '', 90)}".rstrip()


class Watcher:
    """Turns successive polls of the run's task instances into the lines a person reads.

    Pure: the rows, the step records, the phase and the clock come from outside, so a test can feed
    recorded polls. Each finished task is printed once, in the order the tasks ended.
    """

    def __init__(self, records: Callable[[str], dict[str, Any] | None], phase: Callable[[float], str | None],
                 out: TextIO) -> None:
        self.records, self.phase, self.out = records, phase, out
        self.printed: set[str] = set()
        self.last_progress: dict[str, float] = {}

    def update(self, rows: Iterable[TaskRow], now: dt.datetime) -> None:
        done = [r for r in rows if r.state in FINISHED and r.task_id not in self.printed]
        far = dt.datetime.max.replace(tzinfo=dt.UTC)
        # Tasks that did not run last in a batch: a branch marks promote/hold skipped a few ms
        # before its own end is recorded, and they would read as if they came before `decide`.
        for row in sorted(done, key=lambda r: (r.state in NOT_RUN, r.end or far, r.start or far)):
            step = TASK_STEPS.get(row.task_id)
            print(step_line(row, self.records(step) if step else None), file=self.out, flush=True)
            self.printed.add(row.task_id)
        for row in rows:
            if row.state != "running" or row.start is None:
                continue
            elapsed = (now - row.start).total_seconds()
            last = self.last_progress.get(row.task_id, 0.0)
            if elapsed - last >= PROGRESS_EVERY_S:
                print(progress_line(row.task_id, elapsed, self.phase(row.start.timestamp())), file=self.out, flush=True)
                self.last_progress[row.task_id] = elapsed


def store_records(store: Any, tag: str) -> Callable[[str], dict[str, Any] | None]:
    """A step's record: from the published manifest when there is one, else from steps/<name>.json."""
    from release.errors import ArtifactNotFound
    from release.store import MANIFEST_NAME

    def lookup(step: str) -> dict[str, Any] | None:
        try:
            if store.is_published(tag):
                for record in json.loads(store.get_bytes(tag, MANIFEST_NAME)).get("steps", []):
                    if record.get("name") == step:
                        return dict(record)
            record = json.loads(store.get_bytes(tag, f"steps/{step}.json")).get("step")
            return dict(record) if isinstance(record, dict) else None
        except (ArtifactNotFound, ValueError, OSError):
            return None

    return lookup


def airflow_rows(release_tag: str) -> tuple[str | None, str | None, list[TaskRow]]:
    """(run_id, run state, task rows) of the run of DAG_ID whose conf carries ``release_tag``."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select
    from sqlalchemy.exc import OperationalError

    try:
        with create_session() as session:
            runs = session.scalars(select(DagRun).where(DagRun.dag_id == DAG_ID).order_by(DagRun.id.desc()).limit(10))
            run = next((r for r in runs if (r.conf or {}).get("release_tag") == release_tag), None)
            if run is None:
                return None, None, []
            tis = session.scalars(select(TaskInstance).where(TaskInstance.dag_id == DAG_ID,
                                                             TaskInstance.run_id == run.run_id))
            rows = [TaskRow(ti.task_id, str(ti.state.value if hasattr(ti.state, "value") else ti.state)
                            if ti.state else None, ti.start_date, ti.end_date) for ti in tis]
            return run.run_id, str(run.state.value if hasattr(run.state, "value") else run.state), rows
    except OperationalError:
        return None, None, []  # SQLite busy while the run writes: the next poll reads it


def task_log_section(log_text: str, task_id: str) -> list[str]:
    """The lines of the combined dag.test() log that belong to ``task_id``'s last attempt: from its
    "[DAG TEST] starting" line to its "[DAG TEST] end task" line (the whole log if it has neither)."""
    lines = log_text.splitlines()
    mine = [i for i, line in enumerate(lines) if f"[DAG TEST] starting task_id={task_id} " in line + " "]
    if not mine:
        return lines
    begin = mine[-1]
    end = next((i for i in range(begin + 1, len(lines))
                if f"[DAG TEST] end task task_id={task_id} " in lines[i] + " "
                or "[DAG TEST] starting task_id=" in lines[i]), len(lines) - 1)
    return lines[begin: end + 1]


def show_failure(log_file: Path, failed: list[str], out: TextIO, tail: int = 30) -> None:
    """The tail of the first failed task's log: later failures (ensure_safe failing the run because
    an upstream task failed) follow from it and are only named."""
    text = log_file.read_text(errors="replace") if log_file.exists() else ""
    first = failed[0] if failed else None
    section = task_log_section(text, first) if first else text.splitlines()
    shown = list(collections.deque(section, maxlen=tail))
    print(f"\n--- last {len(shown)} lines of {first or 'the run'}'s log ({log_file}) ---", file=out)
    for line in shown:
        print(f"  {line}", file=out)
    if len(failed) > 1:
        print(f"--- also failed: {', '.join(failed[1:])} (their logs are in the same file)", file=out)


def watch(child: subprocess.Popen[bytes], rows: Callable[[], tuple[str | None, str | None, list[TaskRow]]],
          watcher: Watcher, clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
          poll_s: float = POLL_S) -> tuple[str | None, str | None, list[TaskRow]]:
    """Poll until the child running the DAG exits, then once more so every task gets its line."""
    while child.poll() is None:
        watcher.update(rows()[2], clock())
        time.sleep(poll_s)
    final = rows()
    watcher.update(final[2], clock())
    return final


def ensure_local_registry(root: Path, port: int = 5000) -> str | None:
    """Start Debian's docker-registry on 127.0.0.1 when a Docker engine answers; None otherwise."""
    import shutil
    import socket
    import time

    docker = "/usr/bin/docker"
    if not Path(docker).exists() or subprocess.run([docker, "info"], capture_output=True).returncode != 0:
        return None
    addr = f"127.0.0.1:{port}"
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            return addr  # already serving
    binary = shutil.which("docker-registry")
    if binary is None:
        return None
    (root / "registry").mkdir(parents=True, exist_ok=True)
    config = root / "registry" / "config.yml"
    config.write_text(f"version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {root / 'registry' / 'data'}}}}}\n"
                      f"http: {{addr: {addr}}}\n")
    subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)
    for _ in range(50):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return addr
        time.sleep(0.1)
    return None


def run_dag_here(conf: dict[str, Any]) -> int:
    """The child: dag.test() in this process, whose stdout/stderr the parent sent to the log file."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    if bag.import_errors:
        print(f"DAG import errors: {bag.import_errors}", file=sys.stderr)
        return 2
    run = bag.dags[DAG_ID].test(run_conf=conf)
    return 0 if str(getattr(run.state, "value", run.state)) == "success" else 1


@contextlib.contextmanager
def _killed_on_exit(child: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield child
    finally:
        if child.poll() is None:  # Ctrl-C or a crash of the watcher: do not leave the run behind
            child.terminate()
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", default=f"demo-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}")
    parser.add_argument("--continuity-id", default="ADR-0007-hailo-docker-2025-08-31")
    parser.add_argument("--config-version", default="cfg-2026.11.0")
    parser.add_argument("--onnx", default="sample", help="'sample' or an absolute path to a .onnx")
    parser.add_argument("--device", default="local")
    parser.add_argument("--run-dag-child", metavar="CONF_JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_dag_child is not None:
        return run_dag_here(json.loads(args.run_dag_child))

    t_start = time.monotonic()
    os.environ.setdefault("HAILO_PIPELINE_ROOT", str(REPO_ROOT / "artifacts"))
    root = Path(os.environ["HAILO_PIPELINE_ROOT"])
    if "HAILO_REGISTRY" not in os.environ:
        registry = ensure_local_registry(root)
        if registry:
            os.environ["HAILO_REGISTRY"] = registry
            print(f"→ OCI registry at {registry} (docker-registry)", flush=True)
        else:
            print("→ no Docker engine/registry here: the image step will be recorded as skipped", flush=True)
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    airflow = Path(sys.executable).with_name("airflow")
    print("→ airflow db migrate", flush=True)
    migrate = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True)
    if migrate.returncode != 0:
        print(migrate.stdout[-2000:], migrate.stderr[-2000:], file=sys.stderr)
        return 1

    pools = subprocess.run([str(airflow), "pools", "import", str(REPO_ROOT / "docker" / "airflow" / "pools.json")],
                           capture_output=True, text=True)
    if pools.returncode != 0:
        print(pools.stderr[-2000:], file=sys.stderr)
        return 1

    conf = {
        "continuity_id": args.continuity_id, "release_tag": args.tag, "onnx_location": args.onnx,
        "config_version": args.config_version, "device": args.device, "gate_overrides": {}, "production": False,
    }
    from release.pipeline_env import PipelineEnv
    from release.store import LocalArtifactStore

    store = LocalArtifactStore(PipelineEnv.from_env().store_root)
    print(f"→ {DAG_ID} {json.dumps(conf)}", flush=True)
    child = [sys.executable, "-m", "hailo_airflow.demo", "--run-dag-child", json.dumps(conf)]
    log_file, run_id, run_state = run_and_watch(args.tag, child, root / "logs", store, lambda: airflow_rows(args.tag),
                                                sys.stdout)
    print(f"\nDAG run {run_id}: {run_state} in {time.monotonic() - t_start:.0f}s")
    return print_summary(store, args.tag, log_file, sys.stdout)


def run_and_watch(tag: str, child_argv: list[str], logs: Path, store: Any,
                  rows: Callable[[], tuple[str | None, str | None, list[TaskRow]]], out: TextIO,
                  poll_s: float = POLL_S) -> tuple[Path, str | None, str | None]:
    """Run the DAG in ``child_argv`` with its output in a log file, printing a line per task as it ends.

    Returns (log file, run id, run state). The tail of a failed task's log is printed after the lines.
    """
    logs.mkdir(parents=True, exist_ok=True)
    log_file, phase_file = logs / f"{tag}.log", logs / f"{tag}.phase"
    print(f"→ Airflow task logs: {log_file} (shown here only if a task fails)", file=out, flush=True)
    print(f"  {'task':<17} {'state':<15} {'start':>8} → {'end (UTC)':<9} {'took':>7}  {'step ran':<11}  why",
          file=out, flush=True)
    child_env = {**os.environ, PHASE_FILE_ENV: str(phase_file), "PYTHONUNBUFFERED": "1"}
    with open(log_file, "wb") as log_fh, _killed_on_exit(subprocess.Popen(
        child_argv, stdin=subprocess.DEVNULL, stdout=log_fh, stderr=subprocess.STDOUT, env=child_env,
    )) as child:
        watcher = Watcher(store_records(store, tag), lambda since: read_phase(str(phase_file), since), out)
        run_id, run_state, final = watch(child, rows, watcher, poll_s=poll_s)
    failed = sorted((r for r in final if r.state == "failed"), key=lambda r: r.end or r.start or dt.datetime.now(dt.UTC))
    if failed or run_state != "success":
        show_failure(log_file, [r.task_id for r in failed], out)
    return log_file, run_id, run_state


def print_summary(store: Any, tag: str, log_file: Path, out: TextIO) -> int:
    """The summary after the run (verdict, p95, throughput, where things are, steps, lease); the exit code."""
    from release.store import MANIFEST_NAME

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    if not store.is_published(tag):
        say(f"release {tag} was not published; see the task log above, {log_file} and "
            f"`hailo-release history --tag {tag}`")
        return 1
    manifest = json.loads(store.get_bytes(tag, MANIFEST_NAME))
    gate = manifest["gate"]
    say(f"release   {tag} (#{manifest['release_counter']}) → {manifest['state']}")
    say(f"verdict   {gate['verdict']}: {'; '.join(gate['reasons'])}")
    measured = gate.get("measured", {})
    if measured.get("p95_ms") is not None:
        say(f"latency   p95 {measured['p95_ms']:.2f} ms, {measured['windows_per_s']:.1f} windows/s "
            f"(limits: p95 < {gate['thresholds']['p95_ms']} ms, >= {gate['thresholds']['min_windows_per_s']} windows/s)")
    say(f"manifest  {store.uri(tag, MANIFEST_NAME)}")
    say(f"gate      {gate.get('report_uri')}")
    say(f"histogram {gate.get('histogram_uri')}")
    say("steps:")
    for step in manifest["steps"]:
        say(f"  {step['name']:<9} {step['status']:<12} {step['reason']}")
    if manifest.get("lease_s"):
        say(f"lease     {manifest['lease_s']:.0f}s to commit the canary, else the device restored last-known-good")
    from release.canary import EXIT_CODES
    from release.states import ReleaseState

    return EXIT_CODES.get(ReleaseState(manifest["state"]), 1)  # the same codes as `hailo-release run`


if __name__ == "__main__":
    raise SystemExit(main())
