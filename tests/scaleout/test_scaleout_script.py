"""scripts/scaleout.sh without the stack: stop signals only sessions it started (pid and start
time both match), status reports what is not running, bad settings are refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "scaleout.sh"


def _start_time(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(") ", 1)[1].split()[19]


def _script(state: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "HAILO_"))}
    env.update(HAILO_SCALEOUT_DIR=str(state), HAILO_VENV=str(Path(sys.executable).parent.parent), **extra)
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120)


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "300"], start_new_session=True)


def test_stop_signals_only_the_sessions_it_started(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    ours, stranger = _sleeper(), _sleeper()
    try:
        (run / "redis.pid").write_text(f"{ours.pid} {_start_time(ours.pid)}\n")
        # A recycled pid: the number matches a live process, its start time does not.
        (run / "scheduler.pid").write_text(f"{stranger.pid} 1\n")
        status = _script(tmp_path, "status")
        assert status.returncode == 3
        assert "redis                  running" in status.stdout and "scheduler              stopped" in status.stdout
        # Reap ours as soon as it dies (a zombie would still count as running to the script).
        reaper = threading.Thread(target=ours.wait, daemon=True)
        reaper.start()
        res = _script(tmp_path, "stop")
        assert res.returncode == 0, res.stderr
        reaper.join(timeout=30)
        assert ours.returncode == -signal.SIGTERM
        assert stranger.poll() is None, "stop signalled a process it did not start"
        assert not (run / "redis.pid").exists() and not (run / "scheduler.pid").exists()
    finally:
        for p in (ours, stranger):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_bad_settings_refused(tmp_path):
    res = _script(tmp_path, "start", HAILO_SCALEOUT_API_PORT="80; reboot")
    assert res.returncode == 1 and "is not a port number" in res.stderr
    res = _script(tmp_path, "start", HAILO_SCALEOUT_AUTH="ldap")
    assert res.returncode == 1 and "fab or simple" in res.stderr
    assert _script(tmp_path, "bogus").returncode == 2
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_a_zombie_is_not_running(tmp_path):
    """A component killed while nobody reaps it (PID 1 of many containers does not) keeps its pid
    and start time as a zombie: status must call it stopped, so that start restarts it."""
    run = tmp_path / "run"
    run.mkdir()
    dead = _sleeper()
    try:
        (run / "worker-edge.pid").write_text(f"{dead.pid} {_start_time(dead.pid)}\n")
        assert "worker-edge            running" in _script(tmp_path, "status").stdout
        os.kill(dead.pid, signal.SIGKILL)
        while Path(f"/proc/{dead.pid}/stat").read_text().rsplit(") ", 1)[1].split()[0] != "Z":
            pass  # not reaped: this process is its parent and does not wait() yet
        status = _script(tmp_path, "status")
        assert status.returncode == 3 and "worker-edge            stopped" in status.stdout, status.stdout
    finally:
        dead.kill()
        dead.wait()
