"""The per-device lock of fleet rollouts (release/fleet_lock.py) in a real store directory: a living
owner keeps it past its hold by renewing it, another owner waits, the same owner may take it again,
and an owner process that is SIGKILLed stops blocking the device one hold after its last renewal
(not after a fixed worst case)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from release import fleet_lock
from release.errors import LockHeld
from release.store import LocalArtifactStore

REPO = Path(__file__).resolve().parents[2]


def test_a_living_owner_keeps_the_lock_past_its_hold_and_gives_it_back(tmp_path):
    store = LocalArtifactStore(tmp_path / "store")
    fleet_lock.acquire(store, "pi-01", "rollout-a", 3.0, wait_s=0)
    with fleet_lock.renewed(store, "pi-01", "rollout-a", 3.0, every_s=0.3):
        deadline = time.monotonic() + 7.0  # over twice the hold: only renewals keep it
        while time.monotonic() < deadline:
            assert fleet_lock.try_acquire(store, "pi-01", "rollout-b", 3.0) is None
            time.sleep(0.5)
        assert fleet_lock.try_acquire(store, "pi-01", "rollout-a", 3.0) is not None  # its own: taken again
    assert fleet_lock.read_lock(store, "pi-01").action == "release"
    fleet_lock.acquire(store, "pi-01", "rollout-c", 60.0, wait_s=0)
    with pytest.raises(LockHeld, match="held by rollout rollout-c"):
        fleet_lock.acquire(store, "pi-01", "rollout-b", 60.0, wait_s=0.5)
    assert not fleet_lock.renew(store, "pi-01", "rollout-b", 60.0)  # not its lock: nothing written
    fleet_lock.release(store, "pi-01", "rollout-b")  # a no-op too
    assert fleet_lock.read_lock(store, "pi-01").owner == "rollout-c"


OWNER = """
import sys, time
from pathlib import Path
from release import fleet_lock
from release.store import LocalArtifactStore
store = LocalArtifactStore(Path(sys.argv[1]))
fleet_lock.acquire(store, "pi-01", "rollout-killed", float(sys.argv[2]), wait_s=0)
with fleet_lock.renewed(store, "pi-01", "rollout-killed", float(sys.argv[2]), every_s=0.3):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_sigkilled_owner_stops_blocking_one_hold_after_its_last_renewal(tmp_path):
    store = LocalArtifactStore(tmp_path / "store")
    hold_s = 4.0
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path / "store"), str(hold_s)], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "held"
        time.sleep(2 * hold_s)  # renewed the whole time: still held, by the owner
        state = fleet_lock.read_lock(store, "pi-01")
        assert state.owner == "rollout-killed" and state.generation > 3, state
        assert fleet_lock.try_acquire(store, "pi-01", "rollout-next", hold_s) is None
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
    finally:
        if owner.poll() is None:
            owner.kill()
    last = fleet_lock.read_lock(store, "pi-01")  # the expiry the dead owner wrote last
    waited = fleet_lock.acquire(store, "pi-01", "rollout-next", hold_s, wait_s=60)
    got_at = time.time()
    assert fleet_lock.read_lock(store, "pi-01").owner == "rollout-next"
    assert got_at >= last.expires_at  # never before the dead owner's last expiry
    assert waited <= hold_s + 2 * fleet_lock.POLL_S + 5  # and not a fixed worst case after it
    print(f"SIGKILLed owner: the next rollout had the device {waited:.1f} s after the kill (hold {hold_s:.0f} s)")
