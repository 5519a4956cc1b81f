"""`hailo-release check-github`: what the GitHub REST API can report about the settings the release
trust boundary relies on (docs/github-setup.md), and what is missing. Read-only: only GET requests.

Each check names what breaks without it; the same names head the sections of the setup document.
A setting the token may not read is UNKNOWN, never assumed ok.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from release.errors import InvalidInput
from release.github_api import ORG_RE, ApiError, GitHubApi, path_segment
from release.github_runners import RUNNER_WORKFLOWS

RELEASE_ENV = "release"
PRODUCTION_ENV = "production"
SECRET = "AIRFLOW_PASSWORD"  # noqa: S105 (the secret's name, not its value)
REQUIRED_CHECKS = ("PR title carries a continuity ID", "lint, types, tests")
_REPO_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}", re.ASCII)

OK, MISSING, UNKNOWN = "ok", "MISSING", "UNKNOWN"


@dataclass(frozen=True)
class Finding:
    check: str
    status: str  # ok | MISSING | UNKNOWN
    detail: str
    breaks: str  # what goes wrong without the setting

    @property
    def passed(self) -> bool:
        return self.status == OK


class Checker:
    def __init__(self, api: GitHubApi, repo: str, org: str | None = None) -> None:
        if not _REPO_RE.fullmatch(repo):
            raise InvalidInput(f"--repo must be OWNER/NAME, got {repo!r}")
        if org is not None and not ORG_RE.fullmatch(org):
            raise InvalidInput(f"--org must be an organisation login, got {org!r}")
        self.api = api
        self.repo = repo
        self.owner, self.name = repo.split("/")
        self.org = org
        self.findings: list[Finding] = []

    # -- helpers ---------------------------------------------------------------------------------

    def _add(self, check: str, ok: bool, detail: str, breaks: str) -> None:
        self.findings.append(Finding(check, OK if ok else MISSING, detail, breaks))

    def _guard(self, check: str, breaks: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except ApiError as exc:
            hint = " (the token needs admin read access: repo administration / admin:org)" if exc.status in {401, 403, 404} else ""
            self.findings.append(Finding(check, UNKNOWN, f"{exc}{hint}", breaks))

    @property
    def _r(self) -> str:
        return f"/repos/{path_segment(self.owner)}/{path_segment(self.name)}"

    # -- checks ----------------------------------------------------------------------------------

    def run(self) -> list[Finding]:
        repo: dict[str, Any] = {}

        def load_repo() -> None:
            repo.update(self.api.get(self._r))

        self._guard("repository", "nothing else can be checked", load_repo)
        if not repo:
            return self.findings
        if self.org is None and (repo.get("owner") or {}).get("type") == "Organization":
            self.org = str(repo["owner"]["login"])
        self._add("default branch is main", repo.get("default_branch") == "main",
                  f"default branch {repo.get('default_branch')!r}",
                  "the job conditions and branch policies name refs/heads/main")
        envs: dict[str, dict[str, Any]] = {}
        self._guard("environments", "secrets would not be bound to main", lambda: envs.update(
            {e["name"]: e for e in self.api.get_all(f"{self._r}/environments", "environments")}))
        for env_name in (RELEASE_ENV, PRODUCTION_ENV):
            self._check_environment(env_name, envs)
        self._guard(f"{SECRET} only in environments", "any branch's workflow could read the Airflow password",
                    self._check_secret_scope)
        self._guard("fork pull request approval", "a fork PR's workflow runs without a maintainer's approval",
                    self._check_fork_approval)
        self._guard("workflow token read-only by default", "a workflow without `permissions:` gets a write token",
                    self._check_workflow_token)
        self._guard("branch protection of main", "unreviewed code reaches main and so the runners",
                    self._check_branch_protection)
        self._guard("no repository-level hailo runners", "any workflow on any branch can target the runner",
                    self._check_repo_runners)
        self._check_runner_groups()
        return self.findings

    def _check_environment(self, env_name: str, envs: dict[str, dict[str, Any]]) -> None:
        breaks = "a job from another branch would get the environment's secrets"
        env = envs.get(env_name)
        if not envs and any(f.check == "environments" and f.status == UNKNOWN for f in self.findings):
            return
        self._add(f"environment {env_name}", env is not None, "exists" if env else "not defined", breaks)
        if env is None:
            return
        policy = env.get("deployment_branch_policy") or {}
        custom_only = policy.get("custom_branch_policies") is True and policy.get("protected_branches") is False
        names: list[str] = []

        def load_policies() -> None:
            pols = self.api.get_all(f"{self._r}/environments/{path_segment(env_name)}/deployment-branch-policies",
                                    "branch_policies")
            names.extend(f"{p.get('type', 'branch')}:{p.get('name')}" for p in pols)
            self._add(f"environment {env_name} branch policy main", custom_only and names == ["branch:main"],
                      f"deployment_branch_policy={policy or None}, policies={names}", breaks)

        if custom_only:
            self._guard(f"environment {env_name} branch policy main", breaks, load_policies)
        else:
            self._add(f"environment {env_name} branch policy main", False,
                      f"deployment_branch_policy={policy or None}: needs custom branch policies, exactly `main`", breaks)
        self._guard(f"environment {env_name} holds {SECRET}", "the workflow would find no password (or one elsewhere)",
                    lambda: self._add(
                        f"environment {env_name} holds {SECRET}",
                        SECRET in {s.get("name") for s in self.api.get_all(
                            f"{self._r}/environments/{path_segment(env_name)}/secrets", "secrets")},
                        f"{SECRET} among the environment's secrets", "the job finds no Airflow password"))
        if env_name == PRODUCTION_ENV:
            rules = env.get("protection_rules") or []
            reviewers = [r for r in rules if r.get("type") == "required_reviewers"]
            count = sum(len(r.get("reviewers") or []) for r in reviewers)
            self._add(f"environment {env_name} required reviewers", count >= 1,
                      f"{count} reviewer(s)", "a rollback (or a release) runs without a second person")
            self._add(f"environment {env_name} prevents self-review",
                      any(r.get("prevent_self_review") is True for r in reviewers),
                      "prevent_self_review set" if reviewers else "no reviewer rule",
                      "the person who dispatches a run can approve it alone")
            if "can_admins_bypass" in env:
                self._add(f"environment {env_name} admins cannot bypass", env.get("can_admins_bypass") is False,
                          f"can_admins_bypass={env.get('can_admins_bypass')}", "an admin skips the reviewers")

    def _check_secret_scope(self) -> None:
        repo_secrets = {s.get("name") for s in self.api.get_all(f"{self._r}/actions/secrets", "secrets")}
        org_secrets = {s.get("name") for s in self.api.get_all(f"{self._r}/actions/organization-secrets", "secrets")}
        where = [w for w, names in (("repository", repo_secrets), ("organisation", org_secrets)) if SECRET in names]
        self._add(f"{SECRET} only in environments", not where,
                  f"also a {' and '.join(where)} secret" if where else "not a repository or organisation secret",
                  "a workflow on any branch could read the Airflow password")

    def _check_fork_approval(self) -> None:
        body = self.api.get(f"{self._r}/actions/permissions/fork-pr-contributor-approval")
        policy = body.get("approval_policy") if isinstance(body, dict) else None
        self._add("fork pull request approval", policy == "all_external_contributors", f"approval_policy={policy!r}",
                  "a fork PR's workflow runs without a maintainer's approval")

    def _check_workflow_token(self) -> None:
        body = self.api.get(f"{self._r}/actions/permissions/workflow")
        ok = body.get("default_workflow_permissions") == "read" and body.get("can_approve_pull_request_reviews") is False
        self._add("workflow token read-only by default", ok,
                  f"default_workflow_permissions={body.get('default_workflow_permissions')!r}, "
                  f"can_approve_pull_request_reviews={body.get('can_approve_pull_request_reviews')!r}",
                  "a workflow without `permissions:` gets a write token, or approves its own PR")

    def _check_branch_protection(self) -> None:
        check = "branch protection of main"
        breaks = "unreviewed code reaches main and so the runners"
        try:
            prot = self.api.get(f"{self._r}/branches/main/protection")
        except ApiError as exc:
            if exc.status != 404:
                raise
            prot = None
        if prot is not None:
            reviews = prot.get("required_pull_request_reviews") or {}
            status = prot.get("required_status_checks") or {}
            contexts = set(status.get("contexts") or []) | {c.get("context") for c in status.get("checks") or []}
            problems = []
            if int(reviews.get("required_approving_review_count") or 0) < 1:
                problems.append("no required approving review")
            if not (prot.get("enforce_admins") or {}).get("enabled"):
                problems.append("admins are not included")
            if (prot.get("allow_force_pushes") or {}).get("enabled"):
                problems.append("force pushes allowed")
            if (prot.get("allow_deletions") or {}).get("enabled"):
                problems.append("deletion allowed")
            missing = [c for c in REQUIRED_CHECKS if c not in contexts]
            if missing:
                problems.append(f"required checks missing: {missing}")
            self._add(check, not problems, "; ".join(problems) or "classic protection complete", breaks)
            return
        rules = self.api.get(f"{self._r}/rules/branches/main")
        by_type: dict[str, list[dict[str, Any]]] = {}
        for rule in rules if isinstance(rules, list) else []:
            by_type.setdefault(str(rule.get("type")), []).append(rule)
        problems = []
        approvals = max((int((r.get("parameters") or {}).get("required_approving_review_count") or 0)
                         for r in by_type.get("pull_request", [])), default=0)
        if approvals < 1:
            problems.append("no pull-request rule with an approving review")
        contexts = {c.get("context") for r in by_type.get("required_status_checks", [])
                    for c in (r.get("parameters") or {}).get("required_status_checks") or []}
        missing = [c for c in REQUIRED_CHECKS if c not in contexts]
        if missing:
            problems.append(f"required checks missing: {missing}")
        for rtype, what in (("non_fast_forward", "force pushes not blocked"), ("deletion", "deletion not blocked")):
            if rtype not in by_type:
                problems.append(what)
        if not by_type:
            problems = ["main is not protected (no classic protection, no ruleset)"]
        self._add(check, not problems, "; ".join(problems) or "ruleset complete", breaks)

    def _check_repo_runners(self) -> None:
        runners = self.api.get_all(f"{self._r}/actions/runners", "runners")
        ours = sorted({r.get("name", "?") for r in runners for lab in r.get("labels") or []
                       if lab.get("name") in RUNNER_WORKFLOWS})
        self._add("no repository-level hailo runners", not ours,
                  f"registered at repository level: {ours}" if ours else "none",
                  "a repository-level runner cannot be limited to workflows: any branch can target it")

    def _check_runner_groups(self) -> None:
        for label, workflow in RUNNER_WORKFLOWS.items():
            check = f"runner group for {label}"
            breaks = f"any workflow (any branch) could run on the {label} runner"
            if self.org is None:
                self._add(check, False, "the repository is not owned by an organisation: runner groups need one", breaks)
                continue
            self._guard(check, breaks, functools.partial(self._check_runner_group, label, workflow, check, breaks))

    def _check_runner_group(self, label: str, workflow: str, check: str, breaks: str) -> None:
        assert self.org is not None
        groups = self.api.get_all(f"/orgs/{path_segment(self.org)}/actions/runner-groups", "runner_groups")
        want = f"{self.repo}/.github/workflows/{workflow}@refs/heads/main"
        holding: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        for group in groups:
            runners = self.api.get_all(
                f"/orgs/{path_segment(self.org)}/actions/runner-groups/{int(group['id'])}/runners", "runners")
            mine = [r for r in runners if label in {lab.get("name") for lab in r.get("labels") or []}]
            if mine:
                holding.append((group, mine))
        if not holding:
            self._add(check, False, f"no organisation runner carries the label {label}", breaks)
            return
        problems = []
        for group, runners in holding:
            name = group.get("name")
            if group.get("default"):
                problems.append(f"group {name!r} is the default group")
            if not group.get("restricted_to_workflows") or list(group.get("selected_workflows") or []) != [want]:
                problems.append(f"group {name!r} runs {group.get('selected_workflows') or 'any workflow'}, not only {want}")
            if group.get("allows_public_repositories"):
                problems.append(f"group {name!r} allows public repositories")
            if group.get("visibility") == "all":
                problems.append(f"group {name!r} is visible to all repositories")
            not_ephemeral = [r.get("name") for r in runners if r.get("ephemeral") is False]
            if not_ephemeral:
                problems.append(f"not ephemeral: {not_ephemeral}")
        self._add(check, not problems, "; ".join(problems) or f"limited to {want}", breaks)


def report_lines(findings: list[Finding]) -> Iterator[str]:
    for f in findings:
        if f.passed:
            yield f"ok       {f.check}"
        else:
            yield f"{f.status:<8} {f.check} — {f.detail} (without it: {f.breaks})"
    bad = [f for f in findings if not f.passed]
    yield f"{len(bad)} of {len(findings)} check(s) not verified" if bad else f"all {len(findings)} checks passed"
