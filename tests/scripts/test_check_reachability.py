"""The reachability check (scripts/check_reachability.py): the product has nothing reached only from
tests, and the check itself finds what it should on a small made-up project."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "check_reachability.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_product_has_nothing_reached_only_from_tests():
    result = _run()
    assert result.returncode == 0, result.stdout + result.stderr


def _project(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root


BASE = {
    "pyproject.toml": '[project.scripts]\nhailo-release = "release.cli:main"\n',
    "release/__init__.py": "",
    "release/cli.py": "from release.used import helper\n\ndef main():\n    helper()\n",
    "release/used.py": "def helper():\n    return 1\n\ndef only_tests_call_me():\n    return 2\n",
    "release/orphan.py": "def nobody():\n    return 3\n",
    "tests/test_used.py": "from release.used import only_tests_call_me\nfrom release.orphan import nobody\n",
    "plugins/hailo_airflow/__init__.py": "",
    "sidecar/hailo_sidecar/__init__.py": "",
    "sidecar/hailo_sidecar/__main__.py": "print('serving')\n",
    "docker/x/Dockerfile": 'ENTRYPOINT ["python", "-m", "hailo_sidecar"]\n',
    "dags/d.py": "import hailo_airflow\n",
}


def test_finds_a_function_and_a_module_only_tests_reach(tmp_path):
    root = _project(tmp_path, BASE)
    result = _run("--root", str(root))
    assert result.returncode == 1
    assert "release.used:only_tests_call_me" in result.stdout
    assert "release.orphan: module not reached" in result.stdout
    assert "helper" not in result.stdout


def test_an_allow_list_entry_needs_a_reason_and_silences_one_finding(tmp_path):
    root = _project(tmp_path, BASE)
    allow = root / "allow.txt"
    allow.write_text("release.orphan\n")
    assert "has no reason" in _run("--root", str(root), "--allow", str(allow)).stderr
    allow.write_text("release.orphan  # kept for a reason\nrelease.used:only_tests_call_me  # so is this\n")
    assert _run("--root", str(root), "--allow", str(allow)).returncode == 0


def test_a_file_shipped_by_name_is_reached(tmp_path):
    root = _project(tmp_path, {
        **BASE,
        "release/cli.py": "from release.used import helper, only_tests_call_me\n\ndef main():\n"
                          "    helper(); only_tests_call_me()\n    return 'orphan.py'\n",  # shipped by file name
        "release/orphan.py": "def nobody():\n    return 3\n\n\nnobody()\n",  # a script: it calls itself
    })
    result = _run("--root", str(root))
    assert result.returncode == 0, result.stdout
