"""Named fault points on the canary's path, for fault drills (game days) and the fault-matrix tests.

``HAILO_FAULT_AT=<point>:<action>`` makes the orchestrator, on reaching ``<point>``:
- ``raise``: raise an unexpected ``RuntimeError`` (not a ReleaseError), as a bug would, once;
- ``pause``: write ``HAILO_FAULT_MARKER`` (a file path) and wait up to ``HAILO_FAULT_PAUSE_S``
  seconds (default 60), so the drill can do the real thing from outside at a known moment: SIGKILL
  the process, cut its connection to the device, stop the machine.

Unset (the default), a fault point costs one dictionary lookup. This is the orchestrator's twin of
the device agent's ``HAILO_AGENT_CRASH_AT``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

POINTS = frozenset({"deploy", "deploy_health", "gate_parity", "gate_load", "gate_metrics", "promote", "publish"})


class InjectedFault(RuntimeError):
    """The fault a drill asked for; deliberately not a ReleaseError."""


_fired: set[str] = set()


def fault_point(name: str) -> None:
    spec = os.environ.get("HAILO_FAULT_AT")
    if not spec:
        return
    point, _, action = spec.partition(":")
    if point != name:
        return
    if name in _fired:
        return  # once per process: the fail-safe that follows runs the same code path unharmed
    _fired.add(name)
    if action == "raise":
        raise InjectedFault(f"injected fault at {name}")
    if action == "pause":
        marker = os.environ.get("HAILO_FAULT_MARKER")
        if marker:
            Path(marker).write_text(f"{name} {os.getpid()}\n")
        time.sleep(float(os.environ.get("HAILO_FAULT_PAUSE_S", "60")))


def reset() -> None:
    """Arm every fault point again (a drill that runs several releases in one process)."""
    _fired.clear()
