"""Fleet rollout on the 6-device lab testbed (tests/fixtures/fleet.py: each device its own network
namespace, sshd, agent and sidecar, reached through the 20 ± 15 ms lab relay):

- parallel speed-up: the sum of the per-device lifecycle times (deploy → gate → commit, each
  measured from its intent record to its outcome record in the history) over the rollout's wall
  time, for one wave of 5 devices updated 5 at a time; and the same wave 1 at a time, side by side;
- abort → healthy: from the abort decision (the history's ``rollout_abort`` record) to every device
  the rollout touched verified healthy on its own last-known-good (the ``rollout_halted`` record,
  written only after each device's agent confirmed identity and hef sha256). Target: < 10 s for a
  6-device wave.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from bench.table import Row

REPO = Path(__file__).resolve().parents[1]
GATE = {"duration_s": 5, "lease_margin_s": 30}
HALT_TARGET_S = 10.0


def _canary(env, store, tag: str) -> None:
    from release.pipeline import run_all
    from release.request import ReleaseRequest

    req = ReleaseRequest(continuity_id="ADR-0007-hailo-docker-2025-08-31", release_tag=tag, config_version=f"cfg-{tag}",
                         device="pi-01", gate_overrides=GATE, triggered_by="bench")
    outcome = run_all(req, env, store, say=lambda _m: None)
    if outcome.state.value != "promoted":
        raise RuntimeError(f"canary {tag} ended {outcome.state.value}")


def _rollout(env, store, tag: str, selector, waves: list[dict]) -> tuple[str, object, float]:
    from release.rollout import start_rollout
    from release.rollout_plan import parse_plan
    from release.rollout_run import run_rollout

    # Halt once a failure is 10 % or more of at least 2 finished devices (1 of 5 is 20 %).
    plan = parse_plan({"waves": waves, "abort": {"max_failure_rate": 0.1, "min_finished": 2, "any_failure_in_first": 1}})
    t0 = time.monotonic()
    rid = start_rollout(env, store, tag, plan, selector, actor="bench")
    report = run_rollout(env, store, rid, actor="bench", say=lambda _m: None)
    return rid, report, time.monotonic() - t0


def rows() -> list[Row]:
    sys.path.insert(0, str(REPO))
    from release.devices import Selector
    from release.history import History
    from release.pipeline_env import PipelineEnv
    from release.store import LocalArtifactStore
    from tests.fixtures.fleet import Fleet, namespace_support, sweep_stale_namespaces

    why = namespace_support()
    if not why:
        sweep_stale_namespaces()
    out: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "fleet").mkdir()
        fleet = Fleet(Path(tmp) / "fleet", namespaces=not why, why=why)
        where = "netns" if not why else f"loopback ({why})"
        try:
            fleet.start()
            root = Path(tmp) / "artifacts"
            env = PipelineEnv(root=root, store_root=root / "store", work_root=root / "work", keys_dir=root / "keys",
                              devices_file=fleet.write_inventory(Path(tmp) / "devices.yaml"), registry=None,
                              hailo_bin=None, docker_bin=None)
            store = LocalArtifactStore(env.store_root)
            for tag in ("v1", "v2", "v3"):
                _canary(env, store, tag)
            _, seq, seq_wall = _rollout(env, store, "v1", Selector.parse("fleet"),
                                              [{"size": "100%", "gate": GATE, "parallelism": 1}])
            _, par, par_wall = _rollout(env, store, "v2", Selector.parse("fleet"),
                                              [{"size": "100%", "gate": GATE, "parallelism": 5}])
            for report in (seq, par):
                if report.state != "rollout_completed":
                    raise RuntimeError(f"rollout {report.rollout_id} ended {report.state}: {report.as_dict()}")
            seq_sum, par_sum = sum(d.seconds for d in seq.devices), sum(d.seconds for d in par.devices)
            load = os.getloadavg()[0]
            out.append(Row("fleet: 5-device wave, 1 at a time (wall)", seq_wall, "s", "-", None,
                           f"sum of lifecycles {seq_sum:.1f} s; {where}; load {load:.1f}"))
            out.append(Row("fleet: 5-device wave, 5 at a time (wall)", par_wall, "s", "< 1-at-a-time", par_wall < seq_wall,
                           f"sum of its lifecycles {par_sum:.1f} s (each slower under contention)"))
            out.append(Row("fleet: parallel speed-up (1-at-a-time wall / 5-at-a-time wall)", seq_wall / par_wall, "x",
                           "> 1", seq_wall / par_wall > 1, f"sum of per-device lifecycles / wall = {par_sum / par_wall:.2f}x"))

            # v3 to all 6 in one wave; pi-06's sidecar dies under load with v3: the rollout halts
            # and every device it committed goes back to v2 (pi-01 ran v3 as the canary: untouched).
            fleet.crash("pi-06", tags="v3", after_infers=3)
            rid, halted, _ = _rollout(env, store, "v3", Selector.parse("lab"),
                                      [{"size": "100%", "gate": GATE, "parallelism": 6}])
            own = [r for r in History(store).rollout_records(rid) if r.device is None]
            abort = next((r for r in own if r.event == "rollout_abort"), None)
            if abort is None:
                raise RuntimeError(f"the v3 rollout did not halt: {halted.as_dict()}")
            done = next(r for r in own if r.event == "rollout_halted")
            restored = done.detail["time_to_healthy_s"]
            halt_s = (done.at - abort.at).total_seconds()
            per_device = ", ".join(f"{d} {s:.1f}s" for d, s in sorted(restored.items()))
            out.append(Row("fleet: abort decision → touched devices healthy on last-known-good", halt_s, "s",
                           f"< {HALT_TARGET_S:.0f}", halt_s < HALT_TARGET_S,
                           f"{halted.state}; {sum(1 for s in restored.values() if s > 0)} restored in parallel "
                           f"(6-device wave): {per_device}"))
        finally:
            fleet.close()
    return out


if __name__ == "__main__":
    from bench.table import render

    print(render(rows()))
