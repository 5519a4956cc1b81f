"""The whole fleet rollout without Airflow (``hailo-release rollout start|resume``): wave after wave,
each wave's devices in parallel (the plan's parallelism), the abort criteria evaluated as each
device finishes, a halt when they trip.

Every decision is read from the store's history, so ``run_rollout`` on a rollout that was paused,
waits for an approval, or whose orchestrator was killed continues where the history says: finished
devices are never redone, and devices left mid-lifecycle are reconciled first. What the process
holds in memory is only the thread pool of the wave in progress.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import time
from typing import Any

from release.history import History
from release.pipeline_env import PipelineEnv
from release.rollout import (
    RolloutInfo,
    RolloutReport,
    Say,
    Wave,
    WaveVerdict,
    approved,
    evaluate_wave,
    halt,
    load_rollout,
    run_wave_device,
)
from release.rollout_device import SshFactory
from release.rollout_report import build_report, write_report
from release.states import ROLLOUT_TERMINAL, RolloutEvent, RolloutState, advance_rollout, rollout_state
from release.store import ArtifactStore

EXIT_CODES = {RolloutState.COMPLETED.value: 0, RolloutState.HALTED.value: 10, RolloutState.WAITING.value: 12}


def wave_done(history: History, rollout_id: str, wave: Wave) -> bool:
    key = f"{rollout_id}:wave-{wave.index}"
    return any(r.idempotency_key == key for r in history.rollout_records(rollout_id))


def _run_wave(env: PipelineEnv, store: ArtifactStore, info: RolloutInfo, wave: Wave, *, actor: str, say: Say,
              ssh_client_factory: SshFactory) -> WaveVerdict:
    """The wave's devices, ``parallelism`` at a time; on the first tripped criterion no further device
    starts (the ones under way finish their own lifecycle, commit or restore)."""
    errors: list[str] = []
    verdict = evaluate_wave(store, info.rollout_id, wave.index)
    if verdict.abort:  # a resumed run whose criteria had tripped before the kill
        return verdict
    tripped: WaveVerdict | None = None
    with cf.ThreadPoolExecutor(max_workers=wave.parallelism, thread_name_prefix=f"wave{wave.index}") as pool:
        futures = {pool.submit(run_wave_device, env, store, info.rollout_id, info.tag, name, wave.index, actor=actor,
                               ssh_client_factory=ssh_client_factory): name for name in wave.devices}
        for future in cf.as_completed(futures):
            name = futures[future]
            try:
                outcome = future.result()
                say(f"  {name}: {outcome.status} ({outcome.reason[:160]})")
            except cf.CancelledError:
                continue
            except Exception as exc:  # an unreachable device, a store error: counted as a failure
                errors.append(f"{name}: {type(exc).__name__}: {exc}")
                say(f"  {name}: error {type(exc).__name__}: {exc}")
            if tripped is not None:
                continue  # an abort is final: later successes never lower a failure rate back under the limit
            verdict = evaluate_wave(store, info.rollout_id, wave.index)
            if errors:
                verdict = WaveVerdict(True, (*verdict.reasons, *errors), verdict.finished, verdict.failed + len(errors))
            if verdict.abort:
                tripped = verdict
                for pending in futures:
                    pending.cancel()  # not started yet: never touched
                if rollout_state(History(store), info.rollout_id) is RolloutState.RUNNING:
                    # Recorded now, not after the wave drains: devices still in their gate see it
                    # and restore instead of committing.
                    advance_rollout(History(store), info.rollout_id, info.tag, RolloutEvent.ABORT, actor=actor,
                                    reason="; ".join(verdict.reasons))
    return tripped or verdict


def ready_for_wave(store: ArtifactStore, info: RolloutInfo, wave: Wave, *, actor: str, wait_for_pause: bool,
                      say: Say) -> bool:
    """True when the wave may start now: approval given, pause over (waiting recorded otherwise)."""
    history = History(store)
    rid, tag = info.rollout_id, info.tag
    if wave.approval and not approved(store, rid, wave.index):
        if rollout_state(history, rid) is RolloutState.RUNNING:
            advance_rollout(history, rid, tag, RolloutEvent.WAIT, actor=actor, key=f"wait-approval-{wave.index}",
                            reason=f"wave {wave.index} waits for `hailo-release rollout approve {rid} --wave {wave.index}`",
                            detail={"wave": wave.index, "approval": True})
        say(f"wave {wave.index}: waiting for approval")
        return False
    pause = info.plan.pause_between_waves_s
    if wave.index != info.waves[0].index and pause > 0:
        record = advance_rollout(history, rid, tag, RolloutEvent.WAIT, actor=actor, key=f"pause-{wave.index}",
                                 reason=f"pause of {pause:g}s before wave {wave.index}",
                                 detail={"wave": wave.index, "until": time.time() + pause}) \
            if rollout_state(history, rid) is RolloutState.RUNNING else None
        until = float(record.detail["until"]) if record else _pause_until(history, rid, wave.index)
        if time.time() < until and not wait_for_pause:
            say(f"wave {wave.index}: paused until {dt.datetime.fromtimestamp(until, dt.UTC).isoformat()}")
            return False
        time.sleep(max(0.0, until - time.time()))
    if rollout_state(history, rid) is RolloutState.WAITING:
        advance_rollout(history, rid, tag, RolloutEvent.CONTINUE, actor=actor, key=f"continue-{wave.index}",
                        reason=f"wave {wave.index} starts", detail={"wave": wave.index})
    return True


def _pause_until(history: History, rollout_id: str, wave_index: int) -> float:
    key = f"{rollout_id}:pause-{wave_index}"
    record = next((r for r in history.rollout_records(rollout_id) if r.idempotency_key == key), None)
    return float(record.detail["until"]) if record else 0.0



def run_rollout(env: PipelineEnv, store: ArtifactStore, rollout_id: str, *, actor: str, say: Say = print,
                ssh_client_factory: SshFactory = None, wait_for_pause: bool = True) -> RolloutReport:
    """Run (or resume) the rollout to its end, a wait (approval, pause), or a halt; write the report."""
    info = load_rollout(store, rollout_id)
    history = History(store)
    state = rollout_state(history, rollout_id)
    if state is RolloutState.HALTING:
        say("the rollout was halting when it stopped: finishing the halt")
        halt(env, store, rollout_id, actor=actor, reason="resumed halt", ssh_client_factory=ssh_client_factory)
    if state is not None and (state in ROLLOUT_TERMINAL or state is RolloutState.HALTING):
        return _finish(store, rollout_id)
    for wave in info.waves:
        if wave_done(history, rollout_id, wave):
            continue
        if not ready_for_wave(store, info, wave, actor=actor, wait_for_pause=wait_for_pause, say=say):
            return _finish(store, rollout_id)
        say(f"wave {wave.index}: {len(wave.devices)} device(s), {wave.parallelism} at a time")
        verdict = _run_wave(env, store, info, wave, actor=actor, say=say, ssh_client_factory=ssh_client_factory)
        if not verdict.abort and rollout_state(history, rollout_id) is RolloutState.HALTING:
            verdict = WaveVerdict(True, ("the rollout was aborted during the wave",), verdict.finished, verdict.failed)
        if verdict.abort:
            reason = "; ".join(verdict.reasons)
            say(f"wave {wave.index}: abort criteria tripped ({reason}); halting")
            t0 = time.monotonic()
            restored = halt(env, store, rollout_id, actor=actor, reason=reason, ssh_client_factory=ssh_client_factory)
            say(f"halted: {len(restored)} touched device(s) on their own last-known-good in {time.monotonic() - t0:.1f}s")
            return _finish(store, rollout_id)
        advance_rollout(history, rollout_id, info.tag, RolloutEvent.WAVE_DONE, actor=actor, key=f"wave-{wave.index}",
                        reason=f"wave {wave.index}: {verdict.finished} finished, {verdict.failed} failed",
                        detail={"wave": wave.index, "finished": verdict.finished, "failed": verdict.failed})
        write_report(store, build_report(store, rollout_id))
    advance_rollout(history, rollout_id, info.tag, RolloutEvent.COMPLETE, actor=actor,
                    reason=f"all {len(info.waves)} waves done")
    return _finish(store, rollout_id)


def _finish(store: ArtifactStore, rollout_id: str) -> RolloutReport:
    return write_report(store, build_report(store, rollout_id))


def exit_code(report: RolloutReport) -> int:
    return EXIT_CODES.get(report.state, 1)


def summary(report: RolloutReport) -> dict[str, Any]:
    return report.as_dict()
