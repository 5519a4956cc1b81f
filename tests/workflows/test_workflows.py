"""The GitHub workflows: zizmor finds nothing at medium severity or above, and the hardening
invariants hold (least privilege, SHA pins, runner labels, no pull_request_target, no untrusted
expressions inside run: scripts)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

WORKFLOWS = Path(__file__).resolve().parents[2] / ".github" / "workflows"
FILES = sorted(WORKFLOWS.glob("*.yml"))
UNTRUSTED = re.compile(r"\$\{\{\s*(github\.event\.|inputs\.|steps\.[^}]*outputs|github\.head_ref)")


def _load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the bare key `on` as True
    return data


def test_expected_workflows_exist():
    assert {p.name for p in FILES} == {"ci.yml", "release.yml", "rollback.yml"}


def test_zizmor_clean_at_medium_and_above():
    zizmor = shutil.which("zizmor") or str(Path(sys.executable).with_name("zizmor"))
    res = subprocess.run([zizmor, "--offline", "--min-severity", "medium", "--format", "plain", str(WORKFLOWS)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "No findings" in res.stdout + res.stderr


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_hardening_invariants(path):
    wf = _load(path)
    assert wf.get("permissions") == {}, "top-level permissions must be empty; grant per job"
    assert "pull_request_target" not in (wf["on"] or {})
    for name, job in wf["jobs"].items():
        assert "permissions" in job, f"{name}: job without explicit permissions"
        for step in job.get("steps", []):
            uses = step.get("uses")
            if uses:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", uses), f"{uses} is not pinned to a full SHA"
                if "actions/checkout" in uses:
                    assert step.get("with", {}).get("persist-credentials") is False
            run = step.get("run", "")
            assert not UNTRUSTED.search(run), f"{name}: untrusted expression inside run: {run[:80]}"


def test_runner_placement():
    ci, release, rollback = (_load(WORKFLOWS / n) for n in ("ci.yml", "release.yml", "rollback.yml"))
    for job in ci["jobs"].values():
        assert job["runs-on"].startswith("ubuntu-"), "PR code never runs on the self-hosted runner"
    assert release["jobs"]["canary"]["runs-on"] == ["self-hosted", "hailo-builder"]
    assert "id-token" in release["jobs"]["canary"]["permissions"]
    assert release["jobs"]["canary"]["if"] == "github.event.repository.fork == false"
    assert rollback["jobs"]["rollback"]["environment"] == "production"
    assert release["concurrency"]["group"].startswith("release-") and rollback["concurrency"]["group"].startswith("release-")
    assert "hailo-release rollback" in (WORKFLOWS / "rollback.yml").read_text()


def test_pr_title_check_runs_without_dependencies(tmp_path):
    # ci.yml runs the check with the runner's bare python3 and PYTHONPATH=.: no third-party package.
    repo = WORKFLOWS.parents[1]
    bare = "/usr/bin/python3"
    if not Path(bare).exists():
        pytest.skip("no system python3 without the project's dependencies")
    env = {"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"}
    ok = subprocess.run([bare, "-m", "release.cli", "check-continuity-id", "--search",
                         "feat: ADR-0007-hailo-docker-2025-08-31 sidecar"], cwd=repo, capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and '"adr": 7' in ok.stdout
    bad = subprocess.run([bare, "-m", "release.cli", "check-continuity-id", "--search", "fix typo"],
                         cwd=repo, capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "ADR-0007-hailo-docker-2025-08-31" in bad.stderr


def test_id_token_only_where_the_job_signs():
    """`id-token: write` is granted only to jobs that use it: a keyless `hailo-release attest` step."""
    for path in FILES:
        for name, job in _load(path)["jobs"].items():
            runs = " ".join(step.get("run", "") for step in job.get("steps", []))
            grants = (job.get("permissions") or {}).get("id-token") == "write"
            signs = "hailo-release attest" in runs and "--key" not in runs
            assert grants == signs, f"{path.name}:{name}: id-token {grants}, keyless signing step {signs}"
