"""The GitHub workflows: zizmor (auditor persona) finds nothing that is not justified in the file,
and the trust boundary of issue 13 holds: only main reaches the self-hosted runners, one job alone
holds `id-token: write`, nothing installs unlocked code there, a rollback is never queued behind
a release, free text never reaches a CLI as a flag, outputs use random heredoc delimiters, and a
PR body edit does not re-run the test suite.

The step scripts that matter are executed for real with bash (fake `gh`/CLI where GitHub or
Airflow would be); GitHub's concurrency rules are modelled from its documentation (a strict
double: GitHub itself is not reachable from here).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.fixtures.services import need_binary

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / ".github" / "workflows"
FILES = sorted(WORKFLOWS.glob("*.yml"))
UNTRUSTED = re.compile(r"\$\{\{\s*(github\.event\.|inputs\.|steps\.[^}]*outputs|needs\.[^}]*outputs|github\.head_ref)")
MAIN_ONLY = "github.ref == 'refs/heads/main'"


def _load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the bare key `on` as True
    return data


def _wf(name: str) -> dict:
    return _load(WORKFLOWS / name)


def _step(job: dict, name_part: str) -> dict:
    matches = [s for s in job["steps"] if name_part in s.get("name", "")]
    assert len(matches) == 1, f"no single step named like {name_part!r}"
    return matches[0]


def test_expected_workflows_exist():
    assert {p.name for p in FILES} == {"ci.yml", "pr-title.yml", "release.yml", "rollback.yml"}


# --- zizmor -------------------------------------------------------------------------------------


def _zizmor() -> str:
    return shutil.which("zizmor") or str(Path(sys.executable).with_name("zizmor"))


def test_zizmor_auditor_persona_has_no_unjustified_finding():
    res = subprocess.run([_zizmor(), "--offline", "--persona", "auditor", "--format", "plain", str(WORKFLOWS)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "No findings to report" in res.stdout + res.stderr, res.stdout
    # Each inline ignore carries its justification in the comment block right above it.
    for path in FILES:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if "zizmor: ignore[" in line:
                audit = re.search(r"zizmor: ignore\[([a-z-]+)\]", line)
                assert audit
                above = "\n".join(lines[max(0, i - 6):i])
                assert f"zizmor {audit.group(1)}, justified:" in above, f"{path.name}:{i + 1} ignore without justification"


def test_zizmor_default_persona_clean():
    res = subprocess.run([_zizmor(), "--offline", "--format", "plain", str(WORKFLOWS)], capture_output=True, text=True)
    assert res.returncode == 0 and "No findings" in res.stdout + res.stderr, res.stdout


# --- hardening invariants ------------------------------------------------------------------------


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_hardening_invariants(path):
    wf = _load(path)
    assert wf.get("permissions") == {}, "top-level permissions must be empty; grant per job"
    assert "pull_request_target" not in (wf["on"] or {}) and "workflow_run" not in (wf["on"] or {})
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


def _self_hosted_jobs():
    for path in FILES:
        for name, job in _load(path)["jobs"].items():
            if isinstance(job["runs-on"], list) and "self-hosted" in job["runs-on"]:
                yield path.name, name, job


def test_only_main_reaches_the_self_hosted_runners():
    jobs = list(_self_hosted_jobs())
    assert {(f, n) for f, n, _ in jobs} == {("release.yml", "canary"), ("release.yml", "attest"),
                                            ("release.yml", "fleet"), ("rollback.yml", "rollback")}
    for fname, name, job in jobs:
        # A job condition, not a comment; and the fork check is gone (it says nothing about the code).
        assert MAIN_ONLY in job.get("if", ""), f"{fname}:{name} runs for any ref"
        assert "fork" not in job.get("if", "")
        # Secrets come from an environment whose branch policy is main (docs/github-setup.md).
        assert job.get("environment") in {"release", "production"}, f"{fname}:{name}"
    assert _wf("rollback.yml")["jobs"]["rollback"]["environment"] == "production"
    for path in FILES:
        text = path.read_text()
        if "secrets." in text:
            for name, job in _load(path)["jobs"].items():
                if "secrets." in yaml.safe_dump(job):
                    assert job.get("environment"), f"{path.name}:{name} reads a secret outside an environment"


def test_pull_request_code_never_runs_on_the_self_hosted_runners():
    for name in ("ci.yml", "pr-title.yml"):
        wf = _wf(name)
        assert set(wf["on"]) == {"pull_request"}
        for job in wf["jobs"].values():
            assert isinstance(job["runs-on"], str) and job["runs-on"].startswith("ubuntu-")
    for name in ("release.yml", "rollback.yml"):
        assert set(_wf(name)["on"]) <= {"push", "workflow_dispatch"}
    assert _wf("release.yml")["on"]["push"] == {"branches": ["main"]}


def test_id_token_only_in_the_attestation_job():
    """`id-token: write` is held by one job, which signs keylessly, needs the canary job and runs
    nothing else: no Airflow trigger, no Airflow secret, no unlocked install."""
    holders = [(p.name, n) for p in FILES for n, j in _load(p)["jobs"].items()
               if (j.get("permissions") or {}).get("id-token") == "write"]
    assert holders == [("release.yml", "attest")]
    attest = _wf("release.yml")["jobs"]["attest"]
    assert attest["needs"] == "canary" and "needs.canary.outputs.code == '0'" in attest["if"]
    assert set(attest["permissions"]) == {"contents", "id-token"} and attest["permissions"]["contents"] == "read"
    runs = " ".join(s.get("run", "") for s in attest["steps"])
    assert "release.cli attest" in runs and "--key" not in runs and "trigger" not in runs
    assert "secrets." not in yaml.safe_dump(attest)
    canary = _wf("release.yml")["jobs"]["canary"]
    assert "id-token" not in canary["permissions"]
    assert not any("attest" in s.get("run", "") for s in canary["steps"])


PIP = re.compile(r"pip\S*\s+install\b[^\n]*")


def test_self_hosted_jobs_install_only_hash_locked_wheels():
    for fname, name, job in _self_hosted_jobs():
        runs = "\n".join(s.get("run", "") for s in job["steps"])
        installs = PIP.findall(runs)
        assert installs, f"{fname}:{name} installs nothing?"
        for cmd in installs:
            assert "--require-hashes" in cmd and "--no-deps" in cmd and "--only-binary=:all:" in cmd, cmd
            assert re.search(r"-r requirements/[a-z]+\.lock\b", cmd), cmd
            assert not re.search(r"install(\s+-\S+)*\s+\.(\s|$)", cmd), f"unlocked project install: {cmd}"
        assert "uv " not in runs and "pip3 " not in runs and "curl" not in runs
    rollback = _wf("rollback.yml")["jobs"]["rollback"]
    assert "-r requirements/trigger.lock" in "\n".join(s.get("run", "") for s in rollback["steps"])


def test_locks_named_by_the_workflows_exist_and_are_hashed():
    names = set(re.findall(r"requirements/([a-z]+\.lock)", "".join(p.read_text() for p in FILES)))
    assert names >= {"trigger.lock", "cli.lock"}
    for name in names:
        lock = REPO / "requirements" / name
        if name == "cli.lock" and not lock.exists():
            pytest.skip("requirements/cli.lock comes from scripts/lock.sh (another change)")
        text = lock.read_text()
        pins = re.findall(r"^([A-Za-z0-9_.-]+)==\S+ \\$", text, re.M)
        assert pins, name
        assert not any(p.lower().startswith("apache-airflow") for p in pins), f"{name} pulls in Airflow"
        blocks = re.split(r"^(?=[A-Za-z0-9_.-]+==)", text, flags=re.M)[1:]
        assert all("--hash=sha256:" in b for b in blocks), f"{name}: a pin without a hash"


# --- free text never becomes a flag -------------------------------------------------------------

CLI_CALL = re.compile(r"release\.cli\s+(?P<args>(?:[^\n]|\\\n)*)")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_free_text_is_never_an_option_position(path):
    """Every `"$VAR"` handed to the CLI is either bound with `--opt=` or follows a `--`."""
    for job in _load(path)["jobs"].values():
        for step in job.get("steps", []):
            for m in CLI_CALL.finditer(step.get("run", "")):
                args = m.group("args").replace("\\\n", " ")
                tokens = args.split()
                seen_dashdash = False
                for tok in tokens:
                    if tok == "--":
                        seen_dashdash = True
                    elif tok.startswith('"$'):
                        assert seen_dashdash, f"{path.name}: {tok} is a positional before `--` in: {args}"
                    elif tok.startswith("--") and "=" not in tok and tok not in {"--search", "--search-title"}:
                        nxt = tokens[tokens.index(tok) + 1] if tokens.index(tok) + 1 < len(tokens) else ""
                        assert not nxt.startswith('"$'), f"{path.name}: {tok} {nxt} (bind free text with '=')"


def _bare_python() -> str:
    bare = "/usr/bin/python3"
    if not Path(bare).exists():
        pytest.skip("no system python3 without the project's dependencies")
    return bare


@pytest.mark.parametrize("title", ["-h", "--help", "--search", "-", "--version"])
def test_pr_title_step_treats_option_lookalikes_as_text(tmp_path, title):
    """pr-title.yml's own command line, run as the runner would (bare python3, standard library only)."""
    run = _step(_wf("pr-title.yml")["jobs"]["continuity-id"], "Check the title")["run"]
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python3").symlink_to(_bare_python())
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "PR_TITLE": title, "PYTHONPATH": str(REPO)}
    res = subprocess.run(["bash", "-c", run], cwd=REPO, capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "no continuity ID found" in res.stderr
    ok = subprocess.run(["bash", "-c", run], cwd=REPO, capture_output=True, text=True, timeout=60,
                        env={**env, "PR_TITLE": "feat: ADR-0007-hailo-docker-2025-08-31 sidecar"})
    assert ok.returncode == 0 and '"adr": 7' in ok.stdout
    # Control: without `--` the same title is a flag and the check "passes" (exit 0, help text).
    hole = subprocess.run(["bash", "-c", run.replace(" -- ", " ")], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=60)
    if title in {"-h", "--help"}:
        assert hole.returncode == 0


def test_pr_title_is_judged_by_the_base_branch_parser():
    checkout = _wf("pr-title.yml")["jobs"]["continuity-id"]["steps"][0]
    assert checkout["with"]["ref"] == "${{ github.event.pull_request.base.sha }}"


# --- GITHUB_OUTPUT heredocs -----------------------------------------------------------------------


def _parse_github_output(text: str) -> dict[str, str]:
    """GitHub's file-command format: `name=value` lines and `name<<DELIM` … `DELIM` blocks."""
    out: dict[str, str] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delim = line.split("<<", 1)
            j = lines.index(delim, i + 1)
            out[name] = "\n".join(lines[i + 1:j])
            i = j + 1
        elif "=" in line:
            name, value = line.split("=", 1)
            out[name] = value
            i += 1
        else:
            i += 1
    return out


def test_no_fixed_heredoc_delimiter_anywhere():
    for path in FILES:
        for job in _load(path)["jobs"].values():
            for step in job.get("steps", []):
                run = step.get("run", "")
                for m in re.finditer(r"<<['\"]?([A-Za-z_%$][^\s'\"\\]*)", run):
                    assert m.group(1) in {"%s"}, f"{path.name}: fixed heredoc delimiter {m.group(0)}"
                if "GITHUB_OUTPUT" in run and "<<" in run:
                    assert "/dev/urandom" in run


def _fake_bin(tmp_path: Path, gh_number: str, gh_title: str) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    gh = bindir / "gh"
    gh.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        f"  *'.[0].number'*) printf '%s\\n' {json.dumps(gh_number)} ;;\n"
        f"  *'.[0].title'*) printf '%s\\n' \"$GH_FAKE_TITLE\" ;;\n"
        "  *) echo \"unexpected gh $*\" >&2; exit 9 ;;\n"
        "esac\n"
    )
    gh.chmod(0o755)
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(sys.executable)
    return bindir


def _run_resolve_step(tmp_path: Path, title: str, number: str = "12") -> tuple[subprocess.CompletedProcess[str], dict]:
    step = _step(_wf("release.yml")["jobs"]["canary"], "Resolve the merged PR")
    work = tmp_path / f"w{len(list(tmp_path.iterdir()))}"
    work.mkdir()
    bindir = _fake_bin(work, number, title)
    output = work / "github_output"
    output.touch()
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "PYTHONPATH": str(REPO), "GITHUB_OUTPUT": str(output),
           "GH_TOKEN": "x", "REPO": "acme/hailo-pipeline", "SHA": "0" * 40, "GH_FAKE_TITLE": title}
    res = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=work, capture_output=True, text=True, env=env, timeout=60)
    return res, {"raw": output.read_text(), **_parse_github_output(output.read_text())}


def test_resolve_step_writes_outputs_with_random_delimiters(tmp_path):
    title = "feat: ADR-0007-hailo-docker-2025-08-31 sidecar"
    res1, out1 = _run_resolve_step(tmp_path, title)
    res2, out2 = _run_resolve_step(tmp_path, title)
    assert res1.returncode == 0 and res2.returncode == 0, res1.stderr + res2.stderr
    assert out1["title"] == title and out1["number"] == "12"
    delim1 = re.search(r"title<<(\S+)", out1["raw"]).group(1)
    delim2 = re.search(r"title<<(\S+)", out2["raw"]).group(1)
    assert delim1 != delim2 and re.fullmatch(r"EOF_[0-9a-f]{32}", delim1)


def test_resolve_step_title_cannot_forge_outputs(tmp_path):
    # A title that tries to close a fixed delimiter and set another output stays one value.
    forged = "ADR-0007-hailo-docker-2025-08-31\nEOF_TITLE\nnumber=666\nEOF\ncode=0"
    res, out = _run_resolve_step(tmp_path, forged)
    assert res.returncode == 0, res.stderr
    assert out["title"] == forged and out["number"] == "12" and "code" not in out


def test_resolve_step_refuses_option_lookalike_title(tmp_path):
    res, out = _run_resolve_step(tmp_path, "-h")
    assert res.returncode == 2 and "no continuity ID found" in res.stderr
    assert "title" not in out


# --- rollback: its own concurrency group, runner and actor --------------------------------------

EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def _eval(expr: str, ctx: dict[str, object]) -> object:
    """The part of GitHub's expression language the concurrency groups use: dotted context
    lookups, string literals and `||` (first truthy operand)."""
    for operand in (o.strip() for o in expr.split("||")):
        if operand.startswith("'") and operand.endswith("'"):
            value: object = operand[1:-1]
        else:
            value = ctx
            for part in operand.split("."):
                value = value.get(part) if isinstance(value, dict) else None
        if value:
            return value
    return ""


def _group(workflow: str, ctx: dict[str, object]) -> tuple[str, bool]:
    conc = _wf(workflow)["concurrency"]
    assert set(EXPR.sub("", conc["group"])) <= set("abcdefghijklmnopqrstuvwxyz-"), "unexpected group syntax"
    return EXPR.sub(lambda m: str(_eval(m.group(1), ctx)), conc["group"]), bool(conc["cancel-in-progress"])


@dataclass
class Concurrency:
    """GitHub Actions concurrency, as documented: per group at most one run in progress and one
    pending; a new run replaces (cancels) the pending one; cancel-in-progress cancels the running
    one instead of waiting for it."""

    running: dict[str, str] = field(default_factory=dict)
    pending: dict[str, str] = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)

    def submit(self, run: str, group: str, cancel_in_progress: bool) -> str:
        if group in self.pending:
            self.cancelled.append(self.pending.pop(group))
        if group in self.running and cancel_in_progress:
            self.cancelled.append(self.running.pop(group))
        if group not in self.running:
            self.running[group] = run
            return "started"
        self.pending[group] = run
        return "pending"


@pytest.mark.parametrize("device", ["pi-lab-01", "pi-lab-02"])
def test_rollback_dispatched_during_a_release_starts_at_once(device):
    github = {"ref": "refs/heads/main", "event": {"pull_request": {"number": 7}}}
    release_ctx = {"github": github, "inputs": {"device": device}}
    rollback_ctx = {"github": github, "inputs": {"device": device, "tag": "previous"}}
    model = Concurrency()
    assert model.submit("release#1", *_group("release.yml", release_ctx)) == "started"
    assert model.submit("release#2", *_group("release.yml", release_ctx)) == "pending"
    # The rollback is not queued behind the running canary …
    assert model.submit("rollback#1", *_group("rollback.yml", rollback_ctx)) == "started"
    # … and a newer release cannot cancel it (only release#2, its own pending sibling, goes).
    model.submit("release#3", *_group("release.yml", release_ctx))
    assert "rollback#1" not in model.cancelled and model.cancelled == ["release#2"]
    # A push to main has no inputs: the release group falls back to pi-lab-01; still disjoint.
    push_group, _ = _group("release.yml", {"github": github, "inputs": {}})
    assert push_group == "release-pi-lab-01" != _group("rollback.yml", rollback_ctx)[0]
    # Releases never cancel each other's running canary; rollbacks never cancel a running rollback.
    assert _group("release.yml", release_ctx)[1] is False and _group("rollback.yml", rollback_ctx)[1] is False


def test_rollback_has_its_own_runner():
    # A canary holds the hailo-builder runner for up to 120 min: the rollback must not need it.
    canary = _wf("release.yml")["jobs"]["canary"]["runs-on"]
    rollback = _wf("rollback.yml")["jobs"]["rollback"]["runs-on"]
    assert set(canary) - {"self-hosted"} == {"hailo-builder"}
    assert set(rollback) - {"self-hosted"} == {"hailo-rollback"}
    assert _wf("rollback.yml")["jobs"]["rollback"]["timeout-minutes"] <= 30


def test_ci_concurrency_is_not_shared_with_the_title_check():
    ctx = {"github": {"event": {"pull_request": {"number": 7}}}}
    assert _group("ci.yml", ctx)[0] != _group("pr-title.yml", ctx)[0]


def test_pr_body_edit_does_not_rerun_tests():
    ci, title = _wf("ci.yml"), _wf("pr-title.yml")
    assert "edited" not in ci["on"]["pull_request"]["types"]
    assert set(ci["on"]["pull_request"]["types"]) == {"opened", "synchronize", "reopened"}
    # The title check does follow edits (a title change must be re-checked).
    assert "edited" in title["on"]["pull_request"]["types"]
    assert not any("scripts/test.sh" in s.get("run", "") for j in title["jobs"].values() for s in j["steps"])


def test_rollback_step_records_the_triggering_actor(tmp_path):
    need_binary("jq")
    step = _step(_wf("rollback.yml")["jobs"]["rollback"], "Trigger hailo_rollback")
    assert step["env"]["TRIGGERING_ACTOR"] == "${{ github.triggering_actor }}"
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    record = tmp_path / "argv.json"
    fake = venv / "python"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    fake.chmod(0o755)
    summary = tmp_path / "summary.md"
    env = {"PATH": "/usr/bin:/bin", "GITHUB_STEP_SUMMARY": str(summary), "DEVICE": "pi-lab-01", "TARGET": "previous",
           "CONTINUITY_ID": "-h", "TRIGGERING_ACTOR": "oncall-bob", "ACTOR": "alice", "RUN_ID": "99",
           "RUN_ATTEMPT": "2", "AIRFLOW_PASSWORD": "x"}
    res = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=tmp_path, capture_output=True, text=True, env=env,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    argv = json.loads(record.read_text())
    assert argv[:3] == ["-m", "release.cli", "trigger"]
    assert "--continuity-id=-h" in argv and "--dag=hailo_rollback" in argv and "--ci-run=99-2" in argv
    conf = json.loads(next(a for a in argv if a.startswith("--conf="))[len("--conf="):])
    assert conf["device"] == "pi-lab-01" and conf["to"] == "previous"
    assert "triggered by oncall-bob" in conf["reason"] and "dispatched by alice" in conf["reason"]
    assert len(conf["reason"]) <= 500  # the hailo_rollback DAG's maxLength
    assert "oncall-bob" in summary.read_text()


# --- the fleet after the canary, as release-plan.yaml says ----------------------------------------


def _if(expr: str, ctx: dict[str, object]) -> bool:
    """The part of GitHub's expression language the job conditions use: `lhs == 'literal'` joined by `&&`."""
    for clause in expr.split("&&"):
        lhs, _, rhs = (part.strip() for part in clause.partition("=="))
        assert rhs.startswith("'") and rhs.endswith("'"), f"unexpected condition syntax: {clause}"
        if str(_eval(lhs, ctx)) != rhs[1:-1]:
            return False
    return True


def test_fleet_job_follows_a_promoted_canary_only_when_the_plan_says_fleet():
    jobs = _wf("release.yml")["jobs"]
    fleet, canary, plan = jobs["fleet"], jobs["canary"], jobs["plan"]
    assert fleet["needs"] == ["plan", "canary"] and canary["needs"] == "plan"
    assert fleet["runs-on"] == canary["runs-on"] and fleet["environment"] == canary["environment"] == "release"
    assert set(fleet["permissions"]) == {"contents", "statuses", "pull-requests"}
    assert fleet["permissions"]["contents"] == "read"
    # The plan job reads only the checkout: GitHub-hosted, no secret, no environment, read-only.
    assert plan["runs-on"].startswith("ubuntu-") and "secrets." not in yaml.safe_dump(plan)
    assert "environment" not in plan and plan["permissions"] == {"contents": "read"}
    main = {"ref": "refs/heads/main"}
    ctx = {"github": main, "needs": {"canary": {"outputs": {"code": "0"}}, "plan": {"outputs": {"fleet": "true"}}}}
    assert _if(fleet["if"], ctx)
    canary_only = {**ctx, "needs": {**ctx["needs"], "plan": {"outputs": {"fleet": "false"}}}}
    assert not _if(fleet["if"], canary_only)
    for code in ("10", "11", "1", ""):  # rolled back, held, failed, never ran: no fleet
        assert not _if(fleet["if"], {**ctx, "needs": {**ctx["needs"], "canary": {"outputs": {"code": code}}}})
    assert not _if(fleet["if"], {**ctx, "github": {"ref": "refs/heads/feature"}})
    # The trigger step gets the PR title, the promoted tag and the plan from earlier jobs, as env only.
    step = _step(fleet, "Trigger hailo_fleet_rollout")
    assert step["env"]["TAG"] == "${{ needs.canary.outputs.tag }}"
    assert step["env"]["PLAN_CONF"] == "${{ needs.plan.outputs.conf }}"
    assert canary["outputs"]["title"] == "${{ steps.pr.outputs.title }}"


def _venv_python(work: Path) -> None:
    venv = work / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(sys.executable)


def _run_plan_step(tmp_path: Path, plan_text: str) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    step = _step(_wf("release.yml")["jobs"]["plan"], "Validate release-plan.yaml")
    work = tmp_path / f"w{len(list(tmp_path.iterdir()))}"
    work.mkdir()
    _venv_python(work)
    (work / "release-plan.yaml").write_text(plan_text)
    output = work / "github_output"
    output.touch()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "GITHUB_OUTPUT": str(output)}
    res = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=work, capture_output=True, text=True, env=env, timeout=60)
    return res, _parse_github_output(output.read_text())


def test_plan_step_reads_the_repository_plan_and_refuses_a_bad_one(tmp_path):
    res, out = _run_plan_step(tmp_path, (REPO / "release-plan.yaml").read_text())
    assert res.returncode == 0, res.stderr
    conf = json.loads(out["conf"])
    assert out["fleet"] == "true" and conf["group"] and conf["plan"]["waves"][-1]["size"] == "100%"
    canary_only = yaml.safe_load((REPO / "release-plan.yaml").read_text()) | {"fleet": False}
    res, out = _run_plan_step(tmp_path, yaml.safe_dump(canary_only))
    assert res.returncode == 0 and out["fleet"] == "false", res.stderr
    # A bad wave or target fails the job before anything is triggered, saying what is wrong.
    bad_wave = canary_only | {"fleet": True, "waves": [{"size": 0}, {"size": "100%"}]}
    res, out = _run_plan_step(tmp_path, yaml.safe_dump(bad_wave))
    assert res.returncode == 2 and "wave 1 size" in res.stderr and "fleet" not in out
    res, out = _run_plan_step(tmp_path, yaml.safe_dump(canary_only | {"fleet": True, "target": {"group": "Fleet A"}}))
    assert res.returncode == 2 and "target" in res.stderr and "fleet" not in out
    res, out = _run_plan_step(tmp_path, yaml.safe_dump(canary_only | {"fleet": True, "target": None}))
    assert res.returncode == 2 and "target must be" in res.stderr


@pytest.mark.parametrize(("code", "step_exit"), [(0, 0), (12, 0), (10, 10), (1, 1)])
def test_fleet_trigger_step_passes_the_plan_and_a_deterministic_run(tmp_path, code, step_exit):
    need_binary("jq")
    step = _step(_wf("release.yml")["jobs"]["fleet"], "Trigger hailo_fleet_rollout")
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    record = tmp_path / "argv.json"
    fake = venv / "python"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n"
                    f"open('summary.md', 'w').write('| wave |')\nsys.exit({code})\n")
    fake.chmod(0o755)
    summary, output = tmp_path / "step_summary.md", tmp_path / "github_output"
    output.touch()
    plan_conf = json.dumps({"plan": {"waves": [{"size": "100%"}]}, "group": "fleet", "selector": None})
    env = {"PATH": "/usr/bin:/bin", "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_OUTPUT": str(output),
           "PR_TITLE": "-h ADR-0007-hailo-docker-2025-08-31", "PLAN_CONF": plan_conf, "TAG": "main-41",
           "RUN_ID": "99", "RUN_ATTEMPT": "2", "AIRFLOW_PASSWORD": "x"}
    res = subprocess.run(["bash", "-c", step["run"]], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == step_exit, res.stderr
    argv = json.loads(record.read_text())
    assert argv[:3] == ["-m", "release.cli", "trigger"] and "--dag=hailo_fleet_rollout" in argv
    assert "--continuity-id=-h ADR-0007-hailo-docker-2025-08-31" in argv and "--ci-run=99-2" in argv
    conf = json.loads(next(a for a in argv if a.startswith("--conf="))[len("--conf="):])
    assert conf == {"plan": {"waves": [{"size": "100%"}]}, "group": "fleet", "selector": None,
                    "release_tag": "main-41", "production": True}
    assert _parse_github_output(output.read_text())["code"] == str(code)
    assert "| wave |" in summary.read_text()
