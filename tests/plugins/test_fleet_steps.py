"""The fleet DAG's wave slots: the plan's parallelism as a counting semaphore made of the library's
store-backed device locks — never more than `parallelism` devices of a wave at once, across threads
(workers), and a slot is free again once given back."""

from __future__ import annotations

import threading
import time

import pytest

pytestmark = pytest.mark.airflow  # imports the Airflow plugin package


def test_never_more_than_parallelism_devices_of_a_wave_at_once(tmp_path):
    from hailo_airflow.fleet_steps import _take_wave_slot

    from release import fleet_lock
    from release.store import LocalArtifactStore

    store = LocalArtifactStore(tmp_path / "store")
    holding: set[str] = set()
    most = 0
    guard = threading.Lock()

    def device(name: str) -> None:
        nonlocal most
        owner = f"r1/{name}"
        slot = _take_wave_slot(store, "r1", 2, 2, owner, hold_s=60)
        with guard:
            holding.add(name)
            most = max(most, len(holding))
        time.sleep(0.3)
        with guard:
            holding.discard(name)
        fleet_lock.release(store, slot, owner)

    threads = [threading.Thread(target=device, args=(f"pi-{i:02d}",)) for i in range(5)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert most == 2  # two slots: two at a time, and both used
    assert time.monotonic() - t0 >= 0.9  # 5 devices of 0.3 s, 2 at a time: 3 rounds at least
