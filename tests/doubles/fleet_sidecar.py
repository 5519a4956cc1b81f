"""TEST DOUBLE: the sidecar of one fleet-testbed device, with the device's fault knobs — never shipped.

    python -m tests.doubles.fleet_sidecar KNOBS_JSON

Runs the real sidecar (`python -m hailo_sidecar`'s main: same checks, same bound socket, same
server) and reads the device's knobs file (written by tests/fixtures/fleet.py) once at start:

  {"slow_ms": 150, "slow_tags": "v2*"}         each inference takes at least slow_ms (releases matching the
                                                 glob): the strict HailoRT double's own setting (HAILO_DOUBLE_INFER_MS)
                                                 when the sidecar runs on it (a compiled HEF); whatever is left of
                                                 slow_ms after the backend answered is slept here (a placeholder
                                                 HEF is served by onnxruntime: no HailoRT path to slow down)
  {"crash_after_infers": 3, "crash_tags": "*"}  the process exits (code 3) on inference number N+1:
                                                 it starts, answers /readyz and passes activation, then dies
                                                 under the gate's load; counted in requests, not seconds, so
                                                 a busy machine does not move the moment it dies
  {"crash_at_start": true, "crash_tags": "*"}   exits at start-up (a crash loop: activation fails)

Tags are matched against HAILO_RELEASE_TAG (set by the agent's restart command), so the same device
serves its last-known-good release unmodified after a rollback. A missing knobs file means healthy.
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

EXIT_CRASH = 3


def _knobs(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return value if isinstance(value, dict) else {}


def _matches(knobs: dict[str, Any], key: str) -> bool:
    return fnmatch.fnmatchcase(os.environ.get("HAILO_RELEASE_TAG", ""), str(knobs.get(key, "*")))


def _patch_backend(knobs: dict[str, Any]) -> None:
    """Wrap the loaded backend's infer (after the golden-window warm-up, which stays healthy)."""
    import hailo_sidecar.app as app_module

    real_load = app_module.load
    slow_s = float(knobs.get("slow_ms", 0)) / 1000 if _matches(knobs, "slow_tags") else 0.0
    crash_after = knobs.get("crash_after_infers") if _matches(knobs, "crash_tags") else None
    calls = 0
    lock = threading.Lock()

    def load(state: Any) -> None:
        real_load(state)
        inner = state.backend.infer

        def infer(windows: Any) -> Any:
            nonlocal calls
            with lock:
                calls += 1
                if crash_after is not None and calls > int(crash_after):
                    print(f"fleet sidecar double: dying on inference {calls}", file=sys.stderr, flush=True)
                    os._exit(EXIT_CRASH)
            t0 = time.perf_counter()
            out = inner(windows)
            left = slow_s - (time.perf_counter() - t0)  # ~0 when the HailoRT double already took slow_ms
            if left > 0:
                time.sleep(left)
            return out

        state.backend.infer = infer

    app_module.load = load


def main(argv: list[str]) -> int:
    knobs = _knobs(Path(argv[0])) if argv else {}
    if knobs.get("crash_at_start") and _matches(knobs, "crash_tags"):
        print("fleet sidecar double: crashing at start-up", file=sys.stderr, flush=True)
        return EXIT_CRASH
    if knobs.get("slow_ms") and _matches(knobs, "slow_tags"):
        os.environ["HAILO_DOUBLE_INFER_MS"] = str(float(knobs["slow_ms"]))
    if knobs.get("slow_ms") or knobs.get("crash_after_infers") is not None:
        _patch_backend(knobs)
    from hailo_sidecar.__main__ import main as serve

    return int(serve())


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
