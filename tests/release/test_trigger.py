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
from release.trigger import AirflowClient, AuthFailed, DagPaused, Outcome, outcome_of
from tests.fixtures.testbed import free_port

pytestmark = [pytest.mark.airflow, pytest.mark.e2e]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(airflow_server_factory, tmp_path_factory):
    root = tmp_path_factory.mktemp("trigger-pipeline")
    srv = airflow_server_factory(REPO / "dags", {
        "HAILO_PIPELINE_ROOT": str(root), "HAILO_LOCAL_SIDECAR_PORT": str(free_port()),
        "PYTHONPATH": f"{REPO / 'plugins'}{os.pathsep}{REPO}",
    })
    srv.wait_for_dag("hailo_canary_release")
    srv.wait_for_dag("hailo_rollback")
    srv.wait_for_dag("hailo_fleet_rollout")
    yield srv
    from release.local_sidecar import _stop

    _stop(root / "device" / "local" / "sidecar")


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


def test_fleet_rollout_followed_through_the_api(server, tmp_path):
    """The REST path of `--dag hailo_fleet_rollout` on a real run: a target with no enrolled device is
    refused by `prepare` (nothing recorded), the run fails, and the trigger says so (exit 1) with a
    summary; a re-run of the CI job (attempt 2) looks for attempt 1's rollout to resume and, finding
    none started, starts its own run. (A halted or completed rollout's summary is rendered from real
    reports in test_trigger_fleet.py: a whole rollout through this server would take minutes.)"""
    summary = tmp_path / "summary.md"
    conf = {"release_tag": "api-fleet-1", "group": "nobody", "production": False,
            "plan": {"waves": [{"size": 1, "gate": {"duration_s": 5}}, {"size": "100%", "gate": {"duration_s": 5}}]}}
    args = ("--dag", "hailo_fleet_rollout", "--continuity-id", "ADR-0007-hailo-docker-2025-08-31", "--conf",
            json.dumps(conf), "--summary-file", str(summary))
    res = _cli(server, *args, "--ci-run", "50-1")
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    assert "prepare: failed" in res.stdout
    text = summary.read_text()
    assert "## Fleet rollout `ADR-0007-hailo-docker-2025-08-31__ci-50-1`: **failed**" in text
    client = AirflowClient(server.url, server.username, server.password, say=lambda _: None)
    states = client.task_states("hailo_fleet_rollout", "ADR-0007-hailo-docker-2025-08-31__ci-50-1")
    assert states["prepare"] == "failed" and states["ensure_safe"] == "failed"
    again = _cli(server, *args, "--ci-run", "50-2", "--no-follow")
    assert again.returncode == 0 and "resuming" not in again.stdout, again.stdout + again.stderr
    assert client.run("hailo_fleet_rollout", "ADR-0007-hailo-docker-2025-08-31__ci-50-2")
    # A bad inline plan is refused by the API's params schema before a run exists (exit 2).
    bad = _cli(server, "--dag", "hailo_fleet_rollout", "--continuity-id", "ADR-0007-hailo-docker-2025-08-31",
               "--ci-run", "51-1", "--conf", json.dumps({**conf, "plan": {"waves": "all"}}))
    assert bad.returncode == 2, bad.stdout + bad.stderr


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
