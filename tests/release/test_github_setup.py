"""`hailo-release check-github` against GitHub REST responses served from a loopback HTTP server
(tests/data/github: the documented response shapes; GitHub is not reachable from here)."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from release.errors import InvalidInput
from release.github_api import GitHubApi
from release.github_settings_check import Checker, report_lines

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA = REPO_ROOT / "tests" / "data" / "github" / "configured"
R = "/repos/acme/hailo-pipeline"
TOKEN = "ghp_test_token_not_real"


def _recorded() -> dict[str, Any]:
    return {"/" + str(p.relative_to(DATA))[: -len(".json")]: json.loads(p.read_text()) for p in DATA.rglob("*.json")}


class FakeGitHub:
    """Serves {path: body} (or {path: (status, body)}); records every request."""

    def __init__(self, responses: dict[str, Any], post_responses: dict[str, Any] | None = None) -> None:
        self.responses = responses
        self.post_responses = post_responses or {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.posted: list[tuple[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.requests.append(("GET", self.path, {k.lower(): v for k, v in self.headers.items()}))
                path = self.path.split("?", 1)[0]
                entry = fake.responses.get(path)
                status, body = entry if isinstance(entry, tuple) else (200 if entry is not None else 404, entry)
                if body is None:
                    body = {"message": "Not Found", "documentation_url": "https://docs.github.com/rest", "status": "404"}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                fake.requests.append(("POST", self.path, {k.lower(): v for k, v in self.headers.items()}))
                length = int(self.headers.get("Content-Length") or 0)
                fake.posted.append((self.path, json.loads(self.rfile.read(length) or b"null")))
                body = fake.post_responses.get(self.path)
                data = json.dumps(body).encode()
                self.send_response(201 if body is not None else 405)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_PUT = do_PATCH = do_DELETE = do_POST

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeGitHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def responses() -> dict[str, Any]:
    return _recorded()


def _check(responses: dict[str, Any], token: str | None = TOKEN) -> tuple[dict[str, Any], FakeGitHub]:
    with FakeGitHub(responses) as gh:
        findings = Checker(GitHubApi(gh.url, token), "acme/hailo-pipeline").run()
    return {f.check: f for f in findings}, gh


def _failed(findings: dict[str, Any]) -> dict[str, str]:
    return {name: f.status for name, f in findings.items() if not f.passed}


def test_configured_repository_passes_every_check(responses):
    findings, gh = _check(responses)
    assert _failed(findings) == {}
    assert len(findings) >= 17
    assert {m for m, _, _ in gh.requests} == {"GET"}, "the checker only reads"
    assert all(h.get("authorization") == f"Bearer {TOKEN}" and h.get("x-github-api-version") == "2022-11-28"
               for _, _, h in gh.requests)
    # Every recorded path was asked for: the data and the checker describe the same API surface.
    asked = {p.split("?", 1)[0] for _, p, _ in gh.requests}
    assert asked == set(responses)


def test_the_state_issue_13_describes_is_reported(responses):
    """Repository-level, persistent runner; environments without a branch policy; the password as
    a repository secret; first-time-contributor approval only; main unprotected."""
    for name in ("release", "production"):
        env = next(e for e in responses[f"{R}/environments"]["environments"] if e["name"] == name)
        env["deployment_branch_policy"] = None
        env["protection_rules"] = []
    responses[f"{R}/actions/secrets"]["secrets"].append({"name": "AIRFLOW_PASSWORD"})
    responses[f"{R}/actions/permissions/fork-pr-contributor-approval"] = {"approval_policy": "first_time_contributors"}
    responses[f"{R}/actions/permissions/workflow"] = {"default_workflow_permissions": "write",
                                                      "can_approve_pull_request_reviews": True}
    del responses[f"{R}/branches/main/protection"]
    responses[f"{R}/rules/branches/main"] = []
    responses[f"{R}/actions/runners"] = {"total_count": 1, "runners": [
        {"id": 5, "name": "builder01-hailo-builder", "os": "Linux", "status": "online", "busy": False, "ephemeral": False,
         "labels": [{"name": "self-hosted"}, {"name": "hailo-builder"}]}]}
    for gid in (2, 3):
        responses[f"/orgs/acme/actions/runner-groups/{gid}/runners"] = {"total_count": 0, "runners": []}
    findings, _ = _check(responses)
    assert _failed(findings) == {
        "environment release branch policy main": "MISSING",
        "environment production branch policy main": "MISSING",
        "environment production required reviewers": "MISSING",
        "environment production prevents self-review": "MISSING",
        "AIRFLOW_PASSWORD only in environments": "MISSING",
        "fork pull request approval": "MISSING",
        "workflow token read-only by default": "MISSING",
        "branch protection of main": "MISSING",
        "no repository-level hailo runners": "MISSING",
        "runner group for hailo-builder": "MISSING",
        "runner group for hailo-rollback": "MISSING",
    }
    assert "main is not protected" in findings["branch protection of main"].detail
    assert "builder01-hailo-builder" in findings["no repository-level hailo runners"].detail


@pytest.mark.parametrize(
    ("mutate", "check", "fragment"),
    [
        (lambda r: r[f"{R}/environments/release/deployment-branch-policies"]["branch_policies"].append(
            {"id": 9, "name": "feature/*", "type": "branch"}), "environment release branch policy main", "feature/*"),
        (lambda r: r[f"{R}/environments/production/deployment-branch-policies"].update(
            branch_policies=[{"id": 9, "name": "main", "type": "tag"}]), "environment production branch policy main", "tag:main"),
        (lambda r: r[f"{R}/environments"]["environments"][0]["deployment_branch_policy"].update(protected_branches=True,
            custom_branch_policies=False), "environment release branch policy main", "protected_branches"),
        (lambda r: r[f"{R}/environments"].update(environments=r[f"{R}/environments"]["environments"][1:], total_count=1),
         "environment release", "not defined"),
        (lambda r: r[f"{R}/environments/production/secrets"].update(secrets=[]),
         "environment production holds AIRFLOW_PASSWORD", "AIRFLOW_PASSWORD"),
        (lambda r: r[f"{R}/actions/organization-secrets"]["secrets"].append({"name": "AIRFLOW_PASSWORD"}),
         "AIRFLOW_PASSWORD only in environments", "organisation"),
        (lambda r: r[f"{R}/environments"]["environments"][1].update(can_admins_bypass=True),
         "environment production admins cannot bypass", "can_admins_bypass=True"),
        (lambda r: r["/orgs/acme/actions/runner-groups"]["runner_groups"][1].update(
            selected_workflows=["acme/hailo-pipeline/.github/workflows/release.yml@refs/heads/*"]),
         "runner group for hailo-builder", "refs/heads/*"),
        (lambda r: r["/orgs/acme/actions/runner-groups"]["runner_groups"][2].update(restricted_to_workflows=False),
         "runner group for hailo-rollback", "not only"),
        (lambda r: r["/orgs/acme/actions/runner-groups"]["runner_groups"][1].update(allows_public_repositories=True),
         "runner group for hailo-builder", "public repositories"),
        (lambda r: r["/orgs/acme/actions/runner-groups/2/runners"]["runners"][0].update(ephemeral=False),
         "runner group for hailo-builder", "not ephemeral"),
        (lambda r: r[f"{R}/branches/main/protection"]["required_status_checks"].update(contexts=["lint, types, tests"], checks=[]),
         "branch protection of main", "PR title carries a continuity ID"),
        (lambda r: r[f"{R}/branches/main/protection"]["enforce_admins"].update(enabled=False),
         "branch protection of main", "admins"),
        (lambda r: r[R].update(default_branch="master"), "default branch is main", "master"),
    ],
)
def test_each_weakened_setting_is_named(responses, mutate, check, fragment):
    mutate(responses)
    findings, _ = _check(responses)
    assert list(_failed(findings)) == [check], _failed(findings)
    assert fragment in findings[check].detail


def test_ruleset_instead_of_classic_protection(responses):
    del responses[f"{R}/branches/main/protection"]
    rules = [
        {"type": "deletion", "ruleset_source_type": "Repository", "ruleset_source": "acme/hailo-pipeline", "ruleset_id": 42},
        {"type": "non_fast_forward", "ruleset_source_type": "Repository", "ruleset_source": "acme/hailo-pipeline", "ruleset_id": 42},
        {"type": "pull_request", "parameters": {"required_approving_review_count": 1, "dismiss_stale_reviews_on_push": True,
                                                "require_code_owner_review": True, "require_last_push_approval": True,
                                                "required_review_thread_resolution": True}, "ruleset_id": 42},
        {"type": "required_status_checks", "parameters": {"strict_required_status_checks_policy": True,
            "required_status_checks": [{"context": "PR title carries a continuity ID"}, {"context": "lint, types, tests"}]},
         "ruleset_id": 42},
    ]
    responses[f"{R}/rules/branches/main"] = rules
    findings, _ = _check(responses)
    assert _failed(findings) == {}
    responses[f"{R}/rules/branches/main"] = rules[1:]
    findings, _ = _check(responses)
    assert _failed(findings) == {"branch protection of main": "MISSING"}
    assert "deletion not blocked" in findings["branch protection of main"].detail


def test_unreadable_settings_are_unknown_not_ok(responses):
    forbidden = {"message": "Must have admin rights to Repository.", "status": "403"}
    responses[f"{R}/actions/permissions/fork-pr-contributor-approval"] = (403, forbidden)
    responses["/orgs/acme/actions/runner-groups"] = (403, {"message": "Resource not accessible by integration"})
    findings, _ = _check(responses)
    assert _failed(findings) == {"fork pull request approval": "UNKNOWN", "runner group for hailo-builder": "UNKNOWN",
                                 "runner group for hailo-rollback": "UNKNOWN"}
    assert "HTTP 403" in findings["fork pull request approval"].detail
    assert "admin" in findings["fork pull request approval"].detail


def test_personal_repository_has_no_runner_groups(responses):
    responses[R]["owner"]["type"] = "User"
    findings, _ = _check(responses)
    assert _failed(findings) == {"runner group for hailo-builder": "MISSING", "runner group for hailo-rollback": "MISSING"}
    assert "organisation" in findings["runner group for hailo-builder"].detail


def test_pagination_follows_link_headers(responses):
    page2 = {"total_count": 2, "runners": [{"id": 6, "name": "sneaky-repo-runner", "labels": [{"name": "hailo-rollback"}]}]}

    with FakeGitHub(responses) as gh:
        original = responses[f"{R}/actions/runners"]
        # First page links to a second page served under another path.
        responses[f"{R}/actions/runners/page2"] = page2
        api = GitHubApi(gh.url, TOKEN)
        real_open = api._open

        def paged_open(url: str) -> tuple[Any, str | None]:
            body, _ = real_open(url)
            if url.split("?", 1)[0].endswith("/actions/runners"):
                return original, f'<{gh.url}{R}/actions/runners/page2?page=2>; rel="next", <{gh.url}{R}/actions/runners/page2?page=2>; rel="last"'
            return body, None

        api._open = paged_open  # type: ignore[method-assign]
        findings = {f.check: f for f in Checker(api, "acme/hailo-pipeline").run()}
    assert _failed(findings) == {"no repository-level hailo runners": "MISSING"}
    assert "sneaky-repo-runner" in findings["no repository-level hailo runners"].detail


def test_link_to_another_host_is_not_followed(responses):
    with FakeGitHub(responses) as gh:
        api = GitHubApi(gh.url, TOKEN)
        real_open = api._open
        seen: list[str] = []

        def evil_open(url: str) -> tuple[Any, str | None]:
            seen.append(url)
            body, _ = real_open(url)
            return body, '<https://evil.example/steal?page=2>; rel="next"'

        api._open = evil_open  # type: ignore[method-assign]
        api.get_all(f"{R}/actions/runners", "runners")
    assert all(u.startswith(gh.url) for u in seen) and len(seen) == 1


@pytest.mark.parametrize(("repo", "url"), [("acme", "https://api.github.com"), ("acme/x;rm", "https://api.github.com"),
                                           ("../etc/passwd", "https://api.github.com"),
                                           ("acme/x", "http://api.github.com"), ("acme/x", "file:///etc/passwd")])
def test_bad_arguments_are_refused(repo, url):
    with pytest.raises(InvalidInput):
        Checker(GitHubApi(url, TOKEN), repo).run()


def test_report_lines_say_what_breaks(responses):
    responses[f"{R}/actions/permissions/fork-pr-contributor-approval"] = {"approval_policy": "first_time_contributors"}
    findings, _ = _check(responses)
    lines = list(report_lines(list(findings.values())))
    bad = [line for line in lines if line.startswith("MISSING")]
    assert bad == ["MISSING  fork pull request approval — approval_policy='first_time_contributors' "
                   "(without it: a fork PR's workflow runs without a maintainer's approval)"]
    assert lines[-1].startswith("1 of ")


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return _cli_cmd(["check-github", *args], env)


def test_cli_exit_codes_and_token_from_env(responses):
    with FakeGitHub(responses) as gh:
        ok = _cli(["--repo", "acme/hailo-pipeline", "--api-url", gh.url], {"GITHUB_TOKEN": TOKEN})
        responses[f"{R}/actions/permissions/workflow"] = {"default_workflow_permissions": "write",
                                                          "can_approve_pull_request_reviews": False}
        bad = _cli(["--repo", "acme/hailo-pipeline", "--api-url", gh.url, "--json"], {"GH_TOKEN": TOKEN})
        anon = _cli(["--api-url", gh.url], {"GITHUB_REPOSITORY": "acme/hailo-pipeline"})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert re.search(r"all \d+ checks passed", ok.stdout)
    assert bad.returncode == 1
    parsed = json.loads(bad.stdout)
    assert [f["check"] for f in parsed if f["status"] != "ok"] == ["workflow token read-only by default"]
    assert TOKEN not in ok.stdout + ok.stderr + bad.stdout + bad.stderr
    assert all(h.get("authorization") == f"Bearer {TOKEN}" for _, _, h in gh.requests[: len(gh.requests) // 2])
    assert anon.returncode == 1 and "no GITHUB_TOKEN" in anon.stderr
    missing_repo = _cli([], {})
    assert missing_repo.returncode == 2 and "--repo" in missing_repo.stderr


def test_recorded_data_is_not_mutated_between_tests():
    a, b = _recorded(), copy.deepcopy(_recorded())
    assert a == b and f"{R}/environments" in a


def test_setup_document_names_every_check(responses):
    doc = (REPO_ROOT / "docs" / "github-setup.md").read_text()
    findings, _ = _check(responses)
    for name in findings:
        assert f"`{name}`" in doc, f"docs/github-setup.md does not explain the check {name!r}"


# --- runner-jitconfig ---------------------------------------------------------------------------

JIT = "eyJhIjoiYiJ9" * 8
JIT_PATH = "/orgs/acme/actions/runners/generate-jitconfig"
JIT_RESPONSE = {
    "runner": {"id": 23, "name": "builder01-hailo-builder", "os": "unknown", "status": "offline", "busy": False,
               "labels": [{"id": 1, "name": "self-hosted", "type": "read-only"}, {"id": 7, "name": "hailo-builder", "type": "custom"}]},
    "encoded_jit_config": JIT,
}


def _jit_cli(gh: FakeGitHub, *extra: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {"GITHUB_TOKEN": token} if token else {}
    return _cli_cmd(["runner-jitconfig", "--org", "acme", "--group", "hailo-builder", "--label", "hailo-builder",
                     "--name", "builder01-hailo-builder", "--api-url", gh.url, *extra], env)


def _cli_cmd(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in {"GITHUB_TOKEN", "GH_TOKEN", "GITHUB_REPOSITORY"}}
    return subprocess.run([sys.executable, "-m", "release.cli", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, env={**base, **env}, timeout=120)


def test_runner_jitconfig_mints_in_the_named_group_and_prints_only_the_config(responses):
    with FakeGitHub(responses, {JIT_PATH: JIT_RESPONSE}) as gh:
        res = _jit_cli(gh)
    assert res.returncode == 0, res.stderr
    assert res.stdout == JIT + "\n" and JIT not in res.stderr
    assert gh.posted == [(JIT_PATH, {"name": "builder01-hailo-builder", "runner_group_id": 2,
                                     "labels": ["self-hosted", "hailo-builder"], "work_folder": "_work"})]
    post_headers = next(h for m, _, h in gh.requests if m == "POST")
    assert post_headers["authorization"] == f"Bearer {TOKEN}" and post_headers["content-type"] == "application/json"


def test_runner_jitconfig_output_feeds_register_runner(responses, tmp_path):
    with FakeGitHub(responses, {JIT_PATH: JIT_RESPONSE}) as gh:
        res = _jit_cli(gh)
    reg = subprocess.run(["bash", str(REPO_ROOT / "runner" / "register_runner.sh"), "--jit", "--name", "hailo-builder",
                          "--user", "nobody", "--dry-run"], input=res.stdout, capture_output=True, text=True, timeout=60)
    assert reg.returncode == 0, reg.stderr
    assert "ACTIONS_RUNNER_INPUT_JITCONFIG=***" in reg.stdout and JIT not in reg.stdout + reg.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--group", "nope"], "no runner group named 'nope'"),
        (["--group", "Default"], "default group"),
        (["--name", "../x"], "--name"),
        (["--org", "acme;rm"], "--org"),
    ],
)
def test_runner_jitconfig_refusals(responses, args, fragment):
    with FakeGitHub(responses, {JIT_PATH: JIT_RESPONSE}) as gh:
        res = _cli_cmd(["runner-jitconfig", "--org", "acme", "--group", "hailo-builder", "--label", "hailo-builder",
                        "--name", "builder01-hailo-builder", "--api-url", gh.url, *args], {"GITHUB_TOKEN": TOKEN})
    assert res.returncode == 2 and fragment in res.stderr, res.stderr
    assert gh.posted == [] and res.stdout == ""


def test_runner_jitconfig_needs_a_token_and_a_good_answer(responses):
    with FakeGitHub(responses, {JIT_PATH: {"runner": {}, "encoded_jit_config": "x; rm -rf /"}}) as gh:
        no_token = _jit_cli(gh, token=None)
        bad_answer = _jit_cli(gh)
    assert no_token.returncode == 2 and "GITHUB_TOKEN" in no_token.stderr
    assert bad_answer.returncode == 1 and "no encoded_jit_config" in bad_answer.stderr and bad_answer.stdout == ""
