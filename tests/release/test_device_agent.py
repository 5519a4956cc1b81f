"""Device agent, run locally (no sshd): tag grammar parity, lock refusal, journal recovery."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from release import device_agent
from release.errors import InvalidIdentifier
from release.identifiers import ReleaseTag

AGENT = Path(device_agent.__file__)

TAG_CORPUS = [
    "v1.4.0", "2026.11.22-rc1", "a", "A_b-c.d", "x" * 128, "x" * 129, "", ".hidden", "-v1", "_v1",
    "v1..2", "v1/2", "../etc", "v1;rm -rf /", "v1 2", "v1$(id)", "v1`id`", "current", "previous",
    "latest", "v1\n", "v1\x00", "vé", "v1|x", "v1&", "Current", "1", "v1.", "v1-",
]


@pytest.mark.parametrize("tag", TAG_CORPUS)
def test_agent_tag_grammar_agrees_with_release_tag(tag: str) -> None:
    try:
        ReleaseTag(tag)
        library_ok = True
    except InvalidIdentifier:
        library_ok = False
    try:
        device_agent.check_tag(tag)
        agent_ok = True
    except device_agent.AgentError:
        agent_ok = False
    assert agent_ok == library_ok, tag


def test_agent_imports_only_the_standard_library() -> None:
    source = AGENT.read_text()
    assert "from release" not in source and "import release" not in source
    # Runs with a bare interpreter that cannot see the venv's site-packages.
    res = subprocess.run([sys.executable, "-S", "-I", str(AGENT), "--help"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert "rollback" in res.stdout


def _run(root: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, object]]:
    res = subprocess.run(
        [sys.executable, str(AGENT), "--root", str(root), *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})},
    )
    return res.returncode, json.loads(res.stdout.strip().splitlines()[-1])


def test_second_operation_is_refused_with_the_lock_exit_code(tmp_path: Path) -> None:
    (tmp_path / "releases").mkdir()
    with open(tmp_path / "agent.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        code, body = _run(tmp_path, "--lock-timeout", "0.5", "status")
    assert code == device_agent.EXIT_LOCKED == 5
    assert body["error"] == "locked"
    code, body = _run(tmp_path, "status")  # lock released: the same request now runs
    assert code == 0 and body["current"] is None


def test_bad_tag_is_a_usage_error_and_touches_nothing(tmp_path: Path) -> None:
    code, body = _run(tmp_path, "activate", "v1;reboot", "--lease-s", "60")
    assert code == device_agent.EXIT_USAGE
    assert "invalid release tag" in str(body["detail"])
    assert not (tmp_path / "current").exists() and not (tmp_path / "journal.json").exists()


def _release(root: Path, tag: str) -> None:
    rel = root / "releases" / tag
    rel.mkdir(parents=True)
    (rel / "manifest.json").write_text(json.dumps({"release_tag": tag, "config_version": "c1", "hef": {"hef_sha256": "0" * 64}}))


def test_interrupted_switch_is_undone_by_the_next_command(tmp_path: Path) -> None:
    """Agent killed after writing the pointers: the journal restores the last-known-good pair."""
    for tag in ("v1", "v2"):
        _release(tmp_path, tag)
    # Nothing listens on port 9: health fails fast, the pointers must be restored anyway.
    (tmp_path / "agent.json").write_text(json.dumps({"health_url": "http://127.0.0.1:9", "health_timeout_s": 0.3}))
    os.symlink("releases/v2", tmp_path / "current")
    os.symlink("releases/v1", tmp_path / "previous")
    (tmp_path / "journal.json").write_text(
        json.dumps({"op": "activate", "tag": "v2", "restore_current": "v1", "restore_previous": None})
    )
    code, body = _run(tmp_path, "status")
    assert code == 0
    assert body["current"] == "v1" and body["previous"] is None
    assert body["recovered_first"]["interrupted"] == "activate"  # type: ignore[index]
    assert not (tmp_path / "journal.json").exists()
    code, body = _run(tmp_path, "recover")  # a second run finds nothing to do: converged
    assert code == 0 and body == {"recovered": False}


def test_torn_journal_counts_as_never_started(tmp_path: Path) -> None:
    _release(tmp_path, "v1")
    (tmp_path / "agent.json").write_text(json.dumps({"health_url": "http://127.0.0.1:9", "health_timeout_s": 0.3}))
    os.symlink("releases/v1", tmp_path / "current")
    (tmp_path / "journal.json").write_text('{"op": "activ')
    code, body = _run(tmp_path, "recover")
    assert code == 0 and body["recovered"] is True
    # The journal is written before any pointer moves, so a torn one leaves the pointers alone.
    assert body["interrupted"] == "unknown" and body["restored"] == "v1"
    assert os.readlink(tmp_path / "current") == "releases/v1"
    assert not (tmp_path / "journal.json").exists()


def _bundle(root: Path, tag: str) -> Path:
    import hashlib

    rel = root / "releases" / tag
    rel.mkdir(parents=True)
    for name in ("manifest.json", "manifest.json.sig", "model.onnx"):
        (rel / name).write_bytes(b"x")
    (rel / "model.hef").write_bytes(os.urandom(4096))
    digest = hashlib.sha256((rel / "model.hef").read_bytes()).hexdigest()
    (rel / "hef_sha256sum.txt").write_text(f"{digest}  model.hef\n")
    return rel


def test_stage_checks_the_bundle_checksums(tmp_path: Path) -> None:
    rel = _bundle(tmp_path, "v1")
    code, body = _run(tmp_path, "stage", "v1")
    assert code == 0 and body == {"staged": "v1", "checked": ["model.hef"]}
    assert (rel / ".staged").is_file()

    rel2 = _bundle(tmp_path, "v2")
    data = bytearray((rel2 / "model.hef").read_bytes())
    data[100] ^= 1  # one byte changed in transit
    (rel2 / "model.hef").write_bytes(bytes(data))
    code, body = _run(tmp_path, "stage", "v2")
    assert code == device_agent.EXIT_INTEGRITY and "model.hef" in str(body["detail"])
    assert not (rel2 / ".staged").exists()


@pytest.mark.parametrize("line", ["deadbeef  model.hef", f"{'0' * 64}  ../../etc/passwd", ""])
def test_stage_refuses_a_bad_checksum_list(tmp_path: Path, line: str) -> None:
    rel = _bundle(tmp_path, "v1")
    (rel / "hef_sha256sum.txt").write_text(line + "\n")
    code, _ = _run(tmp_path, "stage", "v1")
    assert code == device_agent.EXIT_INTEGRITY
    assert not (rel / ".staged").exists()


def test_stage_refuses_an_incomplete_upload(tmp_path: Path) -> None:
    rel = _bundle(tmp_path, "v1")
    (rel / "model.hef").unlink()
    code, body = _run(tmp_path, "stage", "v1")
    assert code == device_agent.EXIT_INTEGRITY and "missing" in str(body["detail"])


def test_shipped_lease_timer_restores_a_canary_that_outlived_its_lease(tmp_path: Path) -> None:
    """A device rebooted mid-canary: no watchdog survives, the lease file does. The systemd unit the
    project ships runs the agent's check-lease, which restores (here: stops, no release was ever
    committed) and records why."""
    import shlex
    import time

    from release.deploy import AGENT_FILES, render_lease_units
    from release.devices import DeviceSpec

    marker = tmp_path / "stopped"
    spec = DeviceSpec(name="pi-boot", transport="local", agent_root=str(tmp_path), agent_python=sys.executable,
                      gate_url="http://127.0.0.1:9", stop_command=[sys.executable, "-c", f"open({str(marker)!r}, 'w')"])
    units = {p.name: p.read_text() for p in render_lease_units(spec, tmp_path)}
    assert "OnBootSec=" in units["hailo-lease-check.timer"]
    exec_start = next(line for line in units["hailo-lease-check.service"].splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    (tmp_path / "bin").mkdir()
    for source in AGENT_FILES:  # what deploy ships
        (tmp_path / "bin" / source.name).write_text(source.read_text())
    _release(tmp_path, "v1")
    (tmp_path / "agent.json").write_text(json.dumps({"stop_command": spec.stop_command}))
    os.symlink("releases/v1", tmp_path / "current")
    (tmp_path / "lease.json").write_text(json.dumps({"tag": "v1", "restore": None, "lease_s": 5,
                                                     "deadline": time.time() - 1}))
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["expired"] == "v1"
    assert marker.exists() and not (tmp_path / "current").exists() and not (tmp_path / "lease.json").exists()
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "lease_expired" and "without a commit" in events[-1]["detail"]
