"""Trigger a DAG through Airflow's REST API v2 and follow the run to its end.

Auth: `POST /auth/token` (username/password → JWT). Trigger: `POST /api/v2/dags/{id}/dagRuns`
with our own `dag_run_id`, so a retried POST can never start a second run: a 409 for the same
id means the earlier POST landed, and we follow that run. Lost connections are retried with
exponential backoff. Outcomes map to exit codes (see `Outcome`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum
from typing import Any

import requests

from release.errors import ArtifactNotFound, InvalidInput, ReleaseError, StepFailed


class Outcome(IntEnum):
    PROMOTED = 0
    FAILED = 1
    ROLLED_BACK = 10
    HELD = 11
    TIMEOUT = 124


CANARY_DAG = "hailo_canary_release"
# What a successful run of each DAG did: only the canary DAG promotes, rolls back or holds.
RUN_TITLES = {CANARY_DAG: "Canary release", "hailo_rollback": "On-call rollback", "hailo_release_decision": "Held-release decision"}


class AuthFailed(StepFailed):
    exit_code = 7


class DagPaused(StepFailed):
    exit_code = 8


class AirflowClient:
    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        *,
        retries: int = 5,
        backoff_s: float = 1.0,
        timeout_s: float = 15.0,
        say: Callable[[str], None] = print,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise InvalidInput(f"Airflow URL must be http(s)://, got {base_url!r}")
        self.base = base_url.rstrip("/")
        self.username, self.password = username, password
        self.retries, self.backoff_s, self.timeout_s = retries, backoff_s, timeout_s
        self.session = requests.Session()
        self.say = say
        self._token: str | None = None

    # -- transport with retries ----------------------------------------------------------------
    def _request(self, method: str, path: str, *, auth: bool = True, **kwargs: Any) -> requests.Response:
        delay = self.backoff_s
        last: Exception | None = None
        for attempt in range(1, self.retries + 1):
            headers = kwargs.pop("headers", {})
            if auth:
                headers["Authorization"] = f"Bearer {self.token()}"
            try:
                resp = self.session.request(method, f"{self.base}{path}", headers=headers, timeout=self.timeout_s, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = exc
                self.say(f"  connection to Airflow lost ({type(exc).__name__}); retry {attempt}/{self.retries} in {delay:.1f}s")
                time.sleep(delay)
                delay *= 2
                continue
            if resp.status_code == 401 and auth and attempt < self.retries:
                self._token = None  # expired JWT: log in again
                continue
            if resp.status_code >= 500 and attempt < self.retries:
                last = StepFailed(f"{method} {path}: HTTP {resp.status_code}")
                time.sleep(delay)
                delay *= 2
                continue
            return resp
        raise StepFailed(f"Airflow at {self.base} unreachable after {self.retries} attempts: {last}")

    def token(self) -> str:
        if self._token is None:
            resp = self._request("POST", "/auth/token", auth=False,
                                 json={"username": self.username, "password": self.password})
            if resp.status_code in (401, 403):
                raise AuthFailed(f"Airflow rejected the credentials of {self.username!r} (HTTP {resp.status_code})")
            if resp.status_code not in (200, 201):
                raise StepFailed(f"POST /auth/token: HTTP {resp.status_code}: {resp.text[:300]}")
            self._token = str(resp.json()["access_token"])
        return self._token

    @staticmethod
    def _detail(resp: requests.Response) -> str:
        try:
            body = resp.json()
        except ValueError:
            return resp.text[:500]
        detail = body.get("detail", body) if isinstance(body, dict) else body
        return str(detail)[:1000]

    # -- API ----------------------------------------------------------------------------------
    def dag(self, dag_id: str) -> dict[str, Any]:
        resp = self._request("GET", f"/api/v2/dags/{dag_id}")
        if resp.status_code == 404:
            raise ArtifactNotFound(f"DAG {dag_id!r} does not exist in Airflow at {self.base}")
        if resp.status_code in (401, 403):
            raise AuthFailed(f"not allowed to read DAG {dag_id} (HTTP {resp.status_code})")
        resp.raise_for_status()
        data: dict[str, Any] = resp.json()
        return data

    def unpause(self, dag_id: str) -> None:
        resp = self._request("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
        if resp.status_code != 200:
            raise StepFailed(f"cannot unpause {dag_id}: HTTP {resp.status_code}: {self._detail(resp)}")

    def trigger(self, dag_id: str, run_id: str, conf: dict[str, Any], *, unpause: bool = False) -> dict[str, Any]:
        info = self.dag(dag_id)
        if info.get("is_paused"):
            if not unpause:
                raise DagPaused(f"DAG {dag_id} is paused; unpause it in Airflow or pass --unpause")
            self.unpause(dag_id)
        body = {"dag_run_id": run_id, "logical_date": None, "conf": conf}
        resp = self._request("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body)
        if resp.status_code == 409:
            self.say(f"  run {run_id} already exists (an earlier attempt landed): following it")
            return self.run(dag_id, run_id)
        if resp.status_code in (400, 422):
            raise InvalidInput(f"Airflow rejected the run's params: {self._detail(resp)}")
        if resp.status_code in (401, 403):
            raise AuthFailed(f"not allowed to trigger {dag_id} (HTTP {resp.status_code})")
        if resp.status_code not in (200, 201):
            raise StepFailed(f"trigger {dag_id}: HTTP {resp.status_code}: {self._detail(resp)}")
        data: dict[str, Any] = resp.json()
        return data

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        resp = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
        if resp.status_code == 404:
            raise ArtifactNotFound(f"run {run_id} of {dag_id} not found")
        resp.raise_for_status()
        data: dict[str, Any] = resp.json()
        return data

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of the run, mapped ones one per map index (the API pages by 100)."""
        out: list[dict[str, Any]] = []
        while True:
            resp = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
                                 params={"limit": 100, "offset": len(out)})
            resp.raise_for_status()
            page = resp.json().get("task_instances", [])
            out += page
            if len(page) < 100:
                return out

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        """State per task; a mapped task's instances are keyed `task[map_index]`, and the task itself
        (`task`) takes the state of its last instance."""
        states: dict[str, str | None] = {}
        for ti in self.task_instances(dag_id, run_id):
            index = ti.get("map_index", -1)
            if index is not None and index >= 0:
                states[f"{ti['task_id']}[{index}]"] = ti.get("state")
            states[ti["task_id"]] = ti.get("state")
        return states

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", *, map_index: int = -1) -> Any:
        resp = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
                             params={"map_index": map_index})
        if resp.status_code != 200:
            return None
        return resp.json().get("value")

    def follow(self, dag_id: str, run_id: str, *, poll_s: float = 3.0, timeout_s: float = 3600.0,
               stop: Callable[[dict[str, str | None]], bool] | None = None) -> tuple[str, dict[str, str | None]]:
        """Poll until the run ends ("success" / "failed"), the deadline passes ("timeout") or
        `stop(task states)` says to stop following a run that goes on by itself ("waiting")."""
        deadline = time.monotonic() + timeout_s
        seen: dict[str, str | None] = {}
        while True:
            state = str(self.run(dag_id, run_id).get("state"))
            tasks = self.task_states(dag_id, run_id)
            for task_id, task_state in sorted(tasks.items()):
                if task_state != seen.get(task_id) and task_state is not None:
                    self.say(f"  {task_id}: {task_state}")
            seen = tasks
            if state in ("success", "failed"):
                return state, tasks
            if stop is not None and stop(tasks):
                return "waiting", tasks
            if time.monotonic() > deadline:
                return "timeout", tasks
            time.sleep(poll_s)


def outcome_of(state: str, tasks: dict[str, str | None], dag_id: str = CANARY_DAG) -> Outcome:
    """Canary runs: success + `rollback` ran → ROLLED_BACK; success + `hold` ran → HELD; success →
    PROMOTED. Other DAGs: success → 0 (reported as "done" by describe())."""
    if state == "timeout":
        return Outcome.TIMEOUT
    if state != "success":
        return Outcome.FAILED
    if dag_id != CANARY_DAG:
        return Outcome.PROMOTED
    if tasks.get("rollback") == "success":
        return Outcome.ROLLED_BACK
    if tasks.get("hold") == "success":
        return Outcome.HELD
    return Outcome.PROMOTED




def describe(dag_id: str, outcome: Outcome) -> str:
    """Words for a run's outcome: a rollback or decision run that succeeded is "done", never "promoted"."""
    if dag_id != CANARY_DAG and outcome is Outcome.PROMOTED:
        return "done"
    return outcome.name.lower().replace("_", " ")


def summary_markdown(run_id: str, outcome: Outcome, report: dict[str, Any] | None, dag_id: str = CANARY_DAG) -> str:
    title = RUN_TITLES.get(dag_id, f"DAG {dag_id}")
    lines = [f"## {title} `{run_id}`: **{describe(dag_id, outcome)}**", ""]
    if report:
        p95 = report.get("p95_ms")
        lines += [
            "| field | value |", "| --- | --- |",
            f"| verdict | {report.get('verdict')} |",
            f"| p95 per window | {p95:.2f} ms |" if isinstance(p95, int | float) else "| p95 per window | - |",
            f"| hef_sha256 | `{report.get('hef_sha256')}` |",
            f"| image digest | `{report.get('image_digest')}` |",
            f"| manifest | {report.get('manifest_uri')} |",
            f"| reasons | {'; '.join(report.get('reasons') or [])} |",
        ]
    return "\n".join(lines) + "\n"


__all__ = ["AirflowClient", "AuthFailed", "DagPaused", "Outcome", "ReleaseError", "describe", "outcome_of",
           "summary_markdown"]
