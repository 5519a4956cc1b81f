"""Per-device exclusivity across concurrent rollouts: a device never gets two releases at once.

The lock is a chain of create-only records in the store, one chain per device
(``records/device-locks/<device>.<generation>.json``): to take the lock a rollout creates the next
generation with ``acquire``; to give it back, the next one with ``release``. Of two writers racing
for a generation exactly one wins (a local hard link, or GCS ``ifGenerationMatch=0``), so the
lock works between processes and hosts with nothing but the store. An ``acquire`` carries an
expiry, which the living owner keeps pushing forward (``renewed``: a new ``acquire`` generation
every quarter of the hold); an owner that died (SIGKILL, a lost host) stops renewing and stops
blocking the device one hold after its last renewal — by then the device's own lease has restored
its last-known-good. The same owner (a resumed rollout) may take its own lock again. A second
rollout WAITS for the device; it does not fail.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from release.errors import LockHeld
from release.identifiers import DeviceName
from release.store import ArtifactStore

log = logging.getLogger(__name__)
STREAM = "device-locks"
POLL_S = 0.5


@dataclass(frozen=True)
class LockState:
    generation: int
    action: str | None  # "acquire" | "release" | None (never locked)
    owner: str | None
    expires_at: float

    def held_by_other(self, owner: str, now: float) -> bool:
        return self.action == "acquire" and self.owner != owner and now < self.expires_at


def _name(device: str, generation: int) -> str:
    return f"{DeviceName(device).value}.{generation:08d}.json"


def read_lock(store: ArtifactStore, device: str) -> LockState:
    prefix = f"{DeviceName(device).value}."
    names = [n for n in store.list_records(STREAM) if n.startswith(prefix) and n[len(prefix):-5].isdigit()]
    if not names:
        return LockState(0, None, None, 0.0)
    latest = max(names, key=lambda n: int(n[len(prefix):-5]))
    body = json.loads(store.read_record(f"{STREAM}/{latest}"))
    return LockState(int(latest[len(prefix):-5]), body["action"], body["owner"], float(body["expires_at"]))


def _write(store: ArtifactStore, device: str, generation: int, action: str, owner: str, hold_s: float) -> bool:
    now = time.time()
    body = {"action": action, "owner": owner, "expires_at": now + hold_s if action == "acquire" else now,
            "at": dt.datetime.now(dt.UTC).isoformat()}
    return store.create_record(f"{STREAM}/{_name(device, generation)}", json.dumps(body, sort_keys=True).encode())


def try_acquire(store: ArtifactStore, device: str, owner: str, hold_s: float) -> LockState | None:
    """Take the device's lock for ``hold_s`` seconds; None while another owner holds it."""
    while True:
        state = read_lock(store, device)
        if state.held_by_other(owner, time.time()):
            return None
        if _write(store, device, state.generation + 1, "acquire", owner, hold_s):
            return read_lock(store, device)
        # Lost the race for that generation: read again and decide again.


def acquire(store: ArtifactStore, device: str, owner: str, hold_s: float, *, wait_s: float,
            on_wait: object = None) -> float:
    """Take the lock, waiting up to ``wait_s`` for another rollout to finish with the device;
    returns the seconds waited. LockHeld once the wait is over."""
    t0 = time.monotonic()
    announced = False
    while try_acquire(store, device, owner, hold_s) is None:
        if time.monotonic() - t0 > wait_s:
            held = read_lock(store, device)
            raise LockHeld(f"device {device} is held by rollout {held.owner} (waited {wait_s:.0f}s)")
        if callable(on_wait) and not announced:
            on_wait(read_lock(store, device))
            announced = True
        time.sleep(POLL_S)
    return time.monotonic() - t0


def release(store: ArtifactStore, device: str, owner: str) -> None:
    """Give the lock back, if this owner still holds it (a lock that expired and was taken is not ours)."""
    while True:
        state = read_lock(store, device)
        if state.action != "acquire" or state.owner != owner:
            return
        if _write(store, device, state.generation + 1, "release", owner, 0):
            return


def renew(store: ArtifactStore, device: str, owner: str, hold_s: float) -> bool:
    """Push the expiry of a lock this owner holds to ``hold_s`` from now; False if it is not ours
    (any more): released, or expired and taken by another owner."""
    while True:
        state = read_lock(store, device)
        if state.action != "acquire" or state.owner != owner:
            return False
        if _write(store, device, state.generation + 1, "acquire", owner, hold_s):
            return True


@contextlib.contextmanager
def renewed(store: ArtifactStore, device: str, owner: str, hold_s: float, *, every_s: float | None = None
            ) -> Iterator[None]:
    """Keep an acquired lock while the block runs (renewed every ``every_s``, a quarter of the hold
    by default, from a daemon thread), and give it back after. A renewal the store refuses is
    retried at the next tick: the expiry written last still stands until then."""
    stop = threading.Event()

    def keep() -> None:
        while not stop.wait(every_s or hold_s / 4):
            try:
                if not renew(store, device, owner, hold_s):
                    return
            except Exception as exc:  # a store hiccup: the expiry written last stands; try again next tick
                log.warning("lock %s: renewal failed (%s: %s); retrying", device, type(exc).__name__, exc)

    keeper = threading.Thread(target=keep, name=f"lock-{device}", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        stop.set()
        keeper.join()
        release(store, device, owner)
