"""The trigger client against a real `airflow standalone` API server running the real DAGs."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from release.errors import ArtifactNotFound, InvalidInput, StepFailed
from release.history import History
from release.trigger import AirflowClient, AuthFailed, DagPaused, Outcome, outcome_of
from tests.fixtures.fleet_local import GATE
from tests.fixtures.testbed import free_port

pytestmark = [pytest.mark.airflow, pytest.mark.e2e]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fleet_root(fleet_airflow):
    return fleet_airflow.fleet


@pytest.fixture
def server(fleet_airflow):
    return fleet_airflow.server


def _cli(server, *args, password=None):
    env = {**os.environ, "AIRFLOW_PASSWORD": password or server.password}
    return subprocess.run([sys.executable, "-m", "release.cli", "trigger", "--airflow-url", server.url, "--user",
                           server.username, "--poll", "1", *args], capture_output=True, text=True, env=env, timeout=600)


def test_trigger_and_follow_to_promoted(server, tmp_path):
    summary = tmp_path / "summary.md"
    conf = {"release_tag": "api-1", "config_version": "cfg-api", "gate_overrides": {"duration_s": 5}}
    res = _cli(server, "--continuity-id", "feat: ADR-0007-hailo-docker-2025-08-31 runtime", "--search-title",
               "--ci-run", "42-1", "--conf", json.dumps(conf), "--summary-file", str(summary))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "promote: success" in res.stdout
    text = summary.read_text()
    assert "**promoted**" in text and "hef_sha256" in text and "ADR-0007-hailo-docker-2025-08-31__ci-42-1" in text
    # The same CI run again: 409 → follows the existing run, never a second one.
    again = _cli(server, "--continuity-id", "ADR-0007-hailo-docker-2025-08-31", "--ci-run", "42-1", "--conf", json.dumps(conf))
    assert again.returncode == 0 and "already exists" in again.stdout
    client = AirflowClient(server.url, server.username, server.password, say=lambda _: None)
    runs = requests.get(f"{server.url}/api/v2/dags/hailo_canary_release/dagRuns",
                        headers={"Authorization": f"Bearer {client.token()}"}, timeout=10).json()["dag_runs"]
    assert [r["dag_run_id"] for r in runs].count("ADR-0007-hailo-docker-2025-08-31__ci-42-1") == 1


def test_rejected_params_missing_dag_bad_password(server):
    res = _cli(server, "--continuity-id", "ADR-0007-hailo-docker-2025-08-31", "--ci-run", "43-1",
               "--conf", json.dumps({"release_tag": "v1;reboot"}))
    assert res.returncode == 2 and "release_tag" in res.stderr
    res = _cli(server, "--dag", "nope", "--continuity-id", "ADR-0007-hailo-docker-2025-08-31", "--ci-run", "44-1")
    assert res.returncode == 4 and "does not exist" in res.stderr
    res = _cli(server, "--continuity-id", "ADR-0007-hailo-docker-2025-08-31", "--ci-run", "45-1", password="wrong")
    assert res.returncode == 7 and "rejected the credentials" in res.stderr
    res = _cli(server, "--continuity-id", "not-an-adr", "--ci-run", "46-1")
    assert res.returncode == 2 and "ADR-" in res.stderr


def test_paused_dag_refused_unless_unpause(server):
    client = AirflowClient(server.url, server.username, server.password, say=lambda _: None)
    r = requests.patch(f"{server.url}/api/v2/dags/hailo_rollback", json={"is_paused": True},
                       headers={"Authorization": f"Bearer {client.token()}"}, timeout=10)
    assert r.status_code == 200
    with pytest.raises(DagPaused):
        client.trigger("hailo_rollback", "manual__paused-1", {"device": "local"})
    client.trigger("hailo_rollback", "manual__paused-2", {"device": "local", "to": "previous"}, unpause=True)
    assert client.dag("hailo_rollback")["is_paused"] is False
    state, tasks = client.follow("hailo_rollback", "manual__paused-2", poll_s=1, timeout_s=300)
    assert state in ("success", "failed") and "rollback_device" in tasks


class _Proxy:
    """A TCP forwarder we can cut and restore: a lost connection between CI and Airflow."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self.up = threading.Event()
        self.up.set()
        self.sock = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            if not self.up.is_set():
                conn.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def test_lost_connection_is_retried_without_duplicate_runs(server):
    proxy = _Proxy(int(server.url.rsplit(":", 1)[1]))
    messages: list[str] = []
    client = AirflowClient(f"http://127.0.0.1:{proxy.port}", server.username, server.password, retries=6,
                           backoff_s=0.5, say=messages.append)
    client.token()
    proxy.up.clear()
    threading.Timer(1.5, proxy.up.set).start()
    client.session.close()
    client.trigger("hailo_rollback", "manual__lost-1", {"device": "local"})
    assert any("connection to Airflow lost" in m for m in messages)
    # The POST is replayed after the cut: 409 → follow the one run that exists.
    client.trigger("hailo_rollback", "manual__lost-1", {"device": "local"})
    dead = AirflowClient("http://127.0.0.1:1", "u", "p", retries=2, backoff_s=0.1, say=lambda _: None)
    with pytest.raises(StepFailed, match="unreachable"):
        dead.token()


def _wave_row(text: str, wave: int) -> list[str]:
    line = next(x for x in text.splitlines() if x.startswith(f"| {wave} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_fleet_rollout_followed_through_the_api(server, fleet_root, tmp_path):
    """`--dag hailo_fleet_rollout` on real runs: a halting rollout's outcome (exit 10) and per-wave
    summary from the run's XComs (report, each mapped roll_device, check): the failed device, the halt
    reason, wave 2 not reached. Attempt 2 of the same CI run resumes that rollout (rollout_id) and
    redoes nothing. A target without enrolled devices fails in prepare (exit 1); a bad plan is refused
    by the API (exit 2)."""
    tag = fleet_root.canary("bad-api")  # pi-3 (first of rack r2) crash-loops on bad-* releases
    conf = {"release_tag": tag, "selector": "rack=r2", "production": False,
            "plan": {"waves": [{"size": 1, "gate": GATE}, {"size": "100%", "gate": GATE, "parallelism": 3}],
                     "abort": {"max_failure_rate": 0.2, "min_finished": 3, "any_failure_in_first": 1}}}
    cid = "ADR-0007-hailo-docker-2025-08-31"
    args = ("--dag", "hailo_fleet_rollout", "--continuity-id", cid, "--conf", json.dumps(conf))
    summary = tmp_path / "summary.md"
    res = _cli(server, *args, "--ci-run", "50-1", "--summary-file", str(summary))
    assert res.returncode == 10, res.stdout[-3000:] + res.stderr[-3000:]
    text = summary.read_text()
    assert f"## Fleet rollout `{cid}__ci-50-1`: **halted**" in text, text
    assert _wave_row(text, 1)[1:4] == ["pi-3", "0", "pi-3"] and _wave_row(text, 1)[6] == "**halted**", text
    assert _wave_row(text, 2)[6] == "not reached", text
    assert "`pi-3` (wave 1): rolled_back:" in text and "halt reason: a failure among the first 1" in text, text
    history = History(fleet_root.store)
    for name in ("pi-4", "pi-5", "pi-6"):
        assert not [r for r in history.for_device(name) if r.release_tag == tag]
    before = len(history.records())
    rerun_summary = tmp_path / "rerun-summary.md"
    again = _cli(server, *args, "--ci-run", "50-2", "--summary-file", str(rerun_summary))  # a re-run of the CI job
    assert again.returncode == 10 and "resuming rollout" in again.stdout, again.stdout[-3000:] + again.stderr[-3000:]
    text = rerun_summary.read_text()  # its device tasks had nothing to do: the names come from the history
    assert "`pi-3` (wave 1): rolled_back:" in text and _wave_row(text, 1)[1:4] == ["pi-3", "0", "pi-3"], text
    assert len(History(fleet_root.store).records()) == before  # nothing redone, nothing recorded
    nobody = _cli(server, "--dag", "hailo_fleet_rollout", "--continuity-id", cid, "--ci-run", "51-1",
                  "--conf", json.dumps({**conf, "selector": None, "group": "nobody"}))
    assert nobody.returncode == 1 and "prepare: failed" in nobody.stdout and "**failed**" in nobody.stdout
    bad = _cli(server, "--dag", "hailo_fleet_rollout", "--continuity-id", cid, "--ci-run", "52-1",
               "--conf", json.dumps({**conf, "plan": {"waves": "all"}}))
    assert bad.returncode == 2, bad.stdout + bad.stderr


def test_a_rerun_after_the_approval_follows_the_waiting_run_to_its_end(server, fleet_root, tmp_path):
    """Attempt 1 leaves the rollout waiting for wave 2's approval (exit 12, job green). A release
    manager approves; attempt 2 of the CI job follows the same, still running DAG run to its end and
    reports the final result (exit 0): no second run, no second rollout."""
    from release.rollout import approve
    from release.trigger import AirflowClient

    tag = fleet_root.canary("appr-api")
    plan = {"waves": [{"size": 1, "gate": GATE}, {"size": "100%", "gate": GATE, "approval": True}],
            "abort": {"max_failure_rate": 1.0, "min_finished": 1, "any_failure_in_first": 0}}
    conf = {"release_tag": tag, "selector": "rack=r1", "production": False, "plan": plan}
    cid = "ADR-0007-hailo-docker-2025-08-31"
    args = ("--dag", "hailo_fleet_rollout", "--continuity-id", cid, "--conf", json.dumps(conf))
    first = _cli(server, *args, "--ci-run", "80-1", "--summary-file", str(tmp_path / "first.md"))
    assert first.returncode == 12, first.stdout[-3000:] + first.stderr[-3000:]
    text = (tmp_path / "first.md").read_text()
    assert "**waiting for approval**" in text and "--wave 2" in text, text
    rid = next(r.detail["rollout_id"] for r in History(fleet_root.store).for_tag(tag) if r.device is None
               and "rollout_id" in r.detail)
    approve(fleet_root.store, rid, 2, actor="pytest:release-manager")
    again = _cli(server, *args, "--ci-run", "80-2", "--summary-file", str(tmp_path / "again.md"))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"following run {cid}__ci-80-1 of rollout {rid}" in again.stdout, again.stdout[-3000:]
    text = (tmp_path / "again.md").read_text()
    assert f"## Fleet rollout `{cid}__ci-80-1`: **completed**" in text, text
    assert _wave_row(text, 2)[1] == "pi-2" and _wave_row(text, 2)[6] in ("passed", "failures within the abort criteria")
    client = AirflowClient(server.url, server.username, server.password, say=lambda _m: None)
    with pytest.raises(ArtifactNotFound):
        client.run("hailo_fleet_rollout", f"{cid}__ci-80-2")  # followed, not triggered again
    rollouts = {r.detail["rollout_id"] for r in History(fleet_root.store).for_tag(tag) if "rollout_id" in r.detail}
    assert rollouts == {rid}


def test_outcome_mapping():
    assert outcome_of("success", {"promote": "success", "rollback": "skipped"}) is Outcome.PROMOTED
    assert outcome_of("success", {"promote": "skipped", "rollback": "success"}) is Outcome.ROLLED_BACK
    assert outcome_of("success", {"hold": "success"}) is Outcome.HELD
    assert outcome_of("failed", {}) is Outcome.FAILED
    assert outcome_of("timeout", {}) is Outcome.TIMEOUT
    # A rollback or decision run is reported as what it is, never as a promotion.
    from release.trigger import describe, summary_markdown

    assert outcome_of("success", {"rollback_device": "success"}, "hailo_rollback") is Outcome.PROMOTED  # exit 0
    text = summary_markdown("r1", outcome_of("success", {}, "hailo_rollback"), None, "hailo_rollback")
    assert "On-call rollback" in text and "**done**" in text and "promoted" not in text
    assert describe("hailo_release_decision", Outcome.FAILED) == "failed"
    assert "Canary release" in summary_markdown("r2", Outcome.PROMOTED, None)
    with pytest.raises(InvalidInput):
        AirflowClient("ftp://x", "u", "p")
    assert ArtifactNotFound and AuthFailed
    time.sleep(0)
