"""requirements/trigger.lock is all the canary and rollback jobs install: the code paths they run
(`check-continuity-id`, `trigger`) import nothing beyond it, and its pins agree with cli.lock.

Install time into a fresh venv is measured by hand and recorded in docs/github-setup.md (it
depends on the network, so it is not a test)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TRIGGER_LOCK = REPO / "requirements" / "trigger.lock"
CLI_LOCK = REPO / "requirements" / "cli.lock"


def _pins(path: Path) -> dict[str, str]:
    return {m[0].lower().replace("_", "-"): m[1] for m in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", path.read_text(), re.M)}


def test_trigger_lock_is_small_hashed_and_airflow_free():
    pins = _pins(TRIGGER_LOCK)
    assert set(pins) == {"requests", "certifi", "charset-normalizer", "idna", "urllib3"}
    assert TRIGGER_LOCK.read_text().count("--hash=sha256:") >= len(pins)


def test_trigger_lock_agrees_with_cli_lock():
    if not CLI_LOCK.exists():
        pytest.skip("requirements/cli.lock comes from scripts/lock.sh (another change)")
    cli = _pins(CLI_LOCK)
    for name, version in _pins(TRIGGER_LOCK).items():
        assert cli.get(name) == version, f"{name}: trigger.lock {version}, cli.lock {cli.get(name)}"


PROBE = r"""
import importlib.metadata as md, json, sys
before = set(sys.modules)
from release import cli
parser = cli.build_parser()
import release.trigger, release.cli_trigger, release.identifiers
args = parser.parse_args(["check-continuity-id", "--search", "--", "ADR-0007-a-2025-08-31"])
cli._cmd_check_continuity_id(args)
top = {m.split(".")[0] for m in set(sys.modules) - before}
third = sorted(t for t in top if t not in sys.stdlib_module_names and not t.startswith("_") and not t.endswith("__mypyc") and t != "release")
dists = sorted({d for t in third for d in md.packages_distributions().get(t, [t])})
print(json.dumps(dists))
"""


def test_the_workflow_commands_import_nothing_outside_the_lock():
    res = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    dists = {d.lower().replace("_", "-") for d in json.loads(res.stdout.strip().splitlines()[-1])}
    # chardet is an optional fallback that requests uses only when it happens to be installed.
    extra = dists - set(_pins(TRIGGER_LOCK)) - {"chardet", "cython-runtime"}
    assert not extra, f"the trigger path imports {sorted(extra)}, which requirements/trigger.lock lacks"
