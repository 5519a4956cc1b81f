"""The CLI end to end: exit codes, the on-call rollback without Airflow on the loopback testbed."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest

from release.cli import main
from tests.fixtures.testbed import free_port


def test_help_and_exit_codes(capsys, tmp_path, sample_onnx_path):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "rollback" in capsys.readouterr().out
    assert main(["check-continuity-id", "ADR-0007-x-2025-02-30"]) == 2
    assert main(["validate", str(sample_onnx_path)]) == 0
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"nope")
    assert main(["validate", str(bad)]) == 2
    f = tmp_path / "a.bin"
    f.write_bytes(b"a")
    assert main(["checksum", str(f), "-o", str(tmp_path / "sums.txt")]) == 0
    f.write_bytes(b"b")
    assert main(["verify-checksums", str(tmp_path / "sums.txt")]) == 3
    assert "sha256 mismatch" in capsys.readouterr().err
    # A held release is answered explicitly: a decision, a tag and a reason, or argparse refuses (2).
    for argv in (["decide", "maybe", "--device", "local", "--tag", "v1", "--reason", "x"],
                 ["decide", "approve", "--device", "local", "--tag", "v1"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2


@pytest.mark.e2e
def test_run_then_oncall_rollback_without_airflow(tmp_path, monkeypatch):
    port = free_port()
    monkeypatch.setenv("HAILO_PIPELINE_ROOT", str(tmp_path))
    monkeypatch.setenv("HAILO_LOCAL_SIDECAR_PORT", str(port))
    for var in ("HAILO_DEVICES_FILE", "HAILO_REGISTRY", "HAILO_ARTIFACT_ROOT", "HAILO_LEDGER_DIR"):
        monkeypatch.delenv(var, raising=False)
    cli = [sys.executable, "-m", "release.cli"]
    base = ["--continuity-id", "ADR-0007-hailo-docker-2025-08-31", "--device", "local"]
    env = {**__import__("os").environ}
    try:
        for tag, cfg in (("r1", "cfg-1"), ("r2", "cfg-2")):
            res = subprocess.run([*cli, "run", "--tag", tag, "--config-version", cfg, *base], capture_output=True,
                                 text=True, env=env, timeout=300)
            assert res.returncode == 0, res.stderr[-2000:]
        res = subprocess.run([*cli, "rollback", "--device", "local", "--to", "r1", "--reason", "pager: p95 alarms"],
                             capture_output=True, text=True, env=env, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        out = json.loads(res.stdout)
        assert out["rolled_back_to"] == "r1" and out["seconds_to_healthy"] < 30
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as r:
            assert json.loads(r.read())["config_version"] == "cfg-1"
        rb = json.loads((tmp_path / "store" / "releases" / "r1-rb3" / "manifest.json").read_text())
        assert rb["kind"] == "rollback" and rb["points_to_release_tag"] == "r1" and rb["release_counter"] == 3
        status = subprocess.run([*cli, "status", "--device", "local"], capture_output=True, text=True, env=env,
                                timeout=60)
        assert status.returncode == 0, status.stdout
        view = json.loads(status.stdout)
        assert view["device_runs"]["current"] == view["device_runs"]["committed"] == "r1"
        assert view["store_last_known_good"] == "r1" and view["agrees"] is True
        # The device moved behind the store's back (someone ran the agent by hand): status says so.
        agent = [sys.executable, str(tmp_path / "device" / "local" / "bin" / "device_agent.py"),
                 "--root", str(tmp_path / "device" / "local")]
        subprocess.run([*agent, "rollback", "--to", "r2"], check=True, capture_output=True, timeout=120)
        status = subprocess.run([*cli, "status", "--device", "local"], capture_output=True, text=True, env=env,
                                timeout=60)
        assert status.returncode == 3 and "last-known-good is r1" in status.stdout
        history = subprocess.run([*cli, "history", "--device", "local"], capture_output=True, text=True, env=env,
                                 timeout=60)
        records = [json.loads(line) for line in history.stdout.splitlines()]
        assert [r["to_state"] for r in records if r["release_tag"] == "r2"][-1] == "rolled_back"
        assert records[-1]["detail"]["restored"] == "r1"
        bad = subprocess.run([*cli, "rollback", "--device", "local", "--to", "r1;reboot"], capture_output=True,
                             text=True, env=env, timeout=60)
        assert bad.returncode == 2
        sig = tmp_path / "store" / "releases" / "r2" / "manifest.json.sig"
        sig.write_bytes(sig.read_bytes()[:-2] + b"\x00\x00")
        tampered = subprocess.run([*cli, "rollback", "--device", "local", "--to", "r2"], capture_output=True,
                                  text=True, env=env, timeout=60)
        assert tampered.returncode == 3 and "signature" in tampered.stderr
    finally:
        from release.local_sidecar import _stop

        _stop(tmp_path / "device" / "local" / "sidecar")


def test_run_exit_codes_match_trigger():
    from release.pipeline import RunOutcome
    from release.states import ReleaseState
    from release.trigger import Outcome

    codes = {state: RunOutcome(state, {}).exit_code for state in ReleaseState}
    assert codes[ReleaseState.PROMOTED] == Outcome.PROMOTED == 0
    assert codes[ReleaseState.ROLLED_BACK] == Outcome.ROLLED_BACK == 10
    assert codes[ReleaseState.HELD] == Outcome.HELD == 11
    assert codes[ReleaseState.FAILED] == Outcome.FAILED == 1
