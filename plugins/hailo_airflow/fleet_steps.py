"""Task bodies of hailo_fleet_rollout: thin wiring over release.rollout (the same functions
`hailo-release rollout …` runs), so a rollout started in Airflow can be resumed by the CLI and back.

Everything is read from the store's history, never from XCom alone: a wave's devices, whether a
wave is done, whether it may start (approval, pause), each device's outcome. That is what makes a
DAG run resumable after a restart (a retried or re-triggered task finds finished devices finished).

Concurrency: a wave's devices are mapped tasks; the plan's parallelism is a counting semaphore of
``parallelism`` slots made of the library's device locks (``release.fleet_lock``, create-only
records in the store, so it holds across workers and hosts) — and each device's own lock, taken in
the library, keeps two rollouts off one device: the second waits for that device, not for a pool.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from hailo_airflow.context import artifact_store
from hailo_airflow.errors import release_errors_as_airflow_failures

log = logging.getLogger(__name__)
SLOT_POLL_S = 0.5
SLOT_MARGIN_S = 120.0  # renewed while the task lives (fleet_lock.renewed); a killed worker's slot frees one lease + this later


def _run_id(context: Mapping[str, Any]) -> str:
    return getattr(context.get("dag_run"), "run_id", None) or "unknown"


def _env_store() -> tuple[Any, Any]:
    from release.pipeline_env import PipelineEnv

    env = PipelineEnv.from_env()
    return env, artifact_store(env)


def start_or_resume(context: Mapping[str, Any], wave_slots: int) -> dict[str, Any]:
    """Validate the params, then record a new rollout (or load the one to resume); its id and waves."""
    from hailo_airflow.fleet_params import parse_fleet_params
    from release.errors import InvalidInput
    from release.rollout import load_rollout, start_rollout

    with release_errors_as_airflow_failures():
        params = parse_fleet_params(dict(context.get("params") or {}))
        env, store = _env_store()
        if params.rollout_id is None:
            if len(params.plan.waves) > wave_slots:
                raise InvalidInput(f"the plan has {len(params.plan.waves)} waves; this DAG runs up to {wave_slots} "
                                   "(`hailo-release rollout start` runs any plan)")
            rollout_id = start_rollout(env, store, params.release_tag, params.plan, params.selector,
                                       actor=f"airflow:{_run_id(context)}", production=params.production)
        else:
            rollout_id = params.rollout_id
        info = load_rollout(store, rollout_id)
        if info.tag != params.release_tag:
            raise InvalidInput(f"rollout {rollout_id} rolls out {info.tag}, not {params.release_tag}")
        if len(info.waves) > wave_slots:
            raise InvalidInput(f"rollout {rollout_id} has {len(info.waves)} waves; this DAG runs up to {wave_slots}")
        log.info("rollout %s: %s; skipped: %s", rollout_id,
                 [f"wave {w.index}: {', '.join(w.devices)}" for w in info.waves], info.skipped or "none")
        return {"rollout_id": rollout_id, "tag": info.tag, "skipped": info.skipped,
                "waves": [{"index": w.index, "devices": list(w.devices)} for w in info.waves]}


def wave_ready(rollout: Mapping[str, Any], slot: int, context: Mapping[str, Any]) -> tuple[bool, list[str]]:
    """A sensor's poke: (may the wave in this slot start, its devices). An absent wave, a finished one
    or a halted rollout starts nothing; a wave that needs approval or follows a pause waits for the
    store's approval record (`hailo-release rollout approve ID --wave N`) or the pause's end."""
    from release.history import History
    from release.rollout import load_rollout
    from release.rollout_run import ready_for_wave, wave_done
    from release.states import RolloutState, rollout_state

    with release_errors_as_airflow_failures():
        _, store = _env_store()
        rid = str(rollout["rollout_id"])
        info = load_rollout(store, rid)
        if slot > len(info.waves):
            return True, []
        wave = info.waves[slot - 1]
        history = History(store)
        state = rollout_state(history, rid)
        if state not in (RolloutState.RUNNING, RolloutState.WAITING) or wave_done(history, rid, wave):
            log.info("wave %d: nothing to start (rollout %s)", wave.index, state.value if state else "unknown")
            return True, []
        ready = ready_for_wave(store, info, wave, actor=f"airflow:{_run_id(context)}", wait_for_pause=False,
                                  say=log.info)
        return ready, list(wave.devices) if ready else []


def _take_wave_slot(store: Any, rollout_id: str, wave: int, parallelism: int, owner: str, hold_s: float) -> str:
    """One of the wave's ``parallelism`` slots (waits for one to be free); its lock name."""
    from release import fleet_lock

    base = "slot-" + hashlib.sha256(f"{rollout_id}:{wave}".encode()).hexdigest()[:12]
    while True:
        for k in range(parallelism):
            if fleet_lock.try_acquire(store, f"{base}-{k}", owner, hold_s) is not None:
                return f"{base}-{k}"
        time.sleep(SLOT_POLL_S)


def roll_device(rollout: Mapping[str, Any], slot: int, device: str, context: Mapping[str, Any]) -> dict[str, Any]:
    """One mapped device: deploy → gate → commit | restore (release.rollout.run_wave_device), within the
    wave's parallelism; not started at all once the abort criteria have tripped."""
    from hailo_airflow.steps import ssh_client_factory_for
    from release import fleet_lock
    from release.rollout import evaluate_wave, load_rollout, run_wave_device

    with release_errors_as_airflow_failures():
        env, store = _env_store()
        rid = str(rollout["rollout_id"])
        info = load_rollout(store, rid)
        wave = info.waves[slot - 1]
        plan_wave = info.plan.waves[wave.index - 1]
        verdict = evaluate_wave(store, rid, wave.index)
        if verdict.abort:
            return {"device": device, "wave": wave.index, "status": "not_started",
                    "reason": f"abort criteria tripped before it started: {'; '.join(verdict.reasons)}"}
        owner = f"{rid}/{device}"
        hold_s = plan_wave.settings().lease_s() + SLOT_MARGIN_S
        lock = _take_wave_slot(store, rid, wave.index, wave.parallelism, owner, hold_s)
        with fleet_lock.renewed(store, lock, owner, hold_s):
            outcome = run_wave_device(env, store, rid, info.tag, device, wave.index, actor=f"airflow:{_run_id(context)}",
                                      ssh_client_factory=ssh_client_factory_for(env, device))
        log.info("%s: %s (%s)", device, outcome.status, outcome.reason)
        return outcome.as_dict()


def check_wave(rollout: Mapping[str, Any] | None, slot: int, context: Mapping[str, Any]) -> dict[str, Any]:
    """After the wave's devices (trigger rule all_done): the abort criteria over everything finished so
    far; a device without an outcome (its task failed or was killed) counts as a failure, as in the
    CLI. Abort → halt: every touched device back on its own last-known-good, verified per device."""
    from release.history import History
    from release.rollout import evaluate_wave, halt, load_rollout
    from release.rollout_device import outcome_from_history
    from release.rollout_report import build_report, write_report
    from release.rollout_run import wave_done
    from release.states import RolloutEvent, RolloutState, advance_rollout, rollout_state

    if not rollout:  # prepare failed: no rollout, nothing to check (ensure_safe fails the run)
        return {"wave": slot, "present": False}
    with release_errors_as_airflow_failures():
        env, store = _env_store()
        rid = str(rollout["rollout_id"])
        info = load_rollout(store, rid)
        if slot > len(info.waves):
            return {"wave": slot, "present": False}
        wave = info.waves[slot - 1]
        history = History(store)
        state = rollout_state(history, rid)
        if state is not RolloutState.RUNNING or wave_done(history, rid, wave):
            return {"wave": wave.index, "state": state.value if state else None, "checked": False}
        verdict = evaluate_wave(store, rid, wave.index)
        missing = [d for d in wave.devices
                   if (o := outcome_from_history(history, info.tag, d, rid, wave.index)) is None or o.status == "interrupted"]
        reasons = [*verdict.reasons, *([f"no outcome for {', '.join(missing)} (task failed or killed)"] if missing else [])]
        actor = f"airflow:{_run_id(context)}"
        if reasons:
            reason = "; ".join(reasons)
            log.warning("wave %d: halting the rollout: %s", wave.index, reason)
            t0 = time.monotonic()
            restored = halt(env, store, rid, actor=actor, reason=reason, factory_for=_device_factories(env))
            write_report(store, build_report(store, rid))
            return {"wave": wave.index, "halted": True, "reasons": reasons, "halt_s": round(time.monotonic() - t0, 3),
                    "restored": {r.device: r.restored_to for r in restored}}
        advance_rollout(history, rid, info.tag, RolloutEvent.WAVE_DONE, actor=actor, key=f"wave-{wave.index}",
                        reason=f"wave {wave.index}: {verdict.finished} finished, {verdict.failed} failed",
                        detail={"wave": wave.index, "finished": verdict.finished, "failed": verdict.failed})
        write_report(store, build_report(store, rid))
        return {"wave": wave.index, "halted": False, "finished": verdict.finished, "failed": verdict.failed}


def _device_factories(env: Any) -> Any:
    """Each device's own SSH client factory for a halt: its Airflow connection's hook if it has one
    (ssh_conn_id), else None (the device connects by itself: host, key, pinned known_hosts)."""
    from hailo_airflow.steps import ssh_client_factory_for

    return lambda device: ssh_client_factory_for(env, device)


def _started(rollout: Mapping[str, Any] | None, consequence: str) -> str:
    """The rollout id prepare handed on; a task after a failed prepare fails with what that means."""
    if not rollout:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"the rollout was never started (prepare failed): {consequence}")
    return str(rollout["rollout_id"])


def _loaded(rollout_id: str) -> tuple[Any, Any, Any, Any]:
    """(env, store, the rollout's info, the store's history) for a task body."""
    from release.history import History
    from release.rollout import load_rollout

    env, store = _env_store()
    return env, store, load_rollout(store, rollout_id), History(store)


def finish(rollout: Mapping[str, Any] | None, context: Mapping[str, Any]) -> dict[str, Any]:
    """Record the rollout complete when every wave is done; write the report (JSON + latency PNG)."""
    from release.rollout_report import build_report, write_report
    from release.rollout_run import wave_done
    from release.states import RolloutEvent, RolloutState, advance_rollout, rollout_state

    rid = _started(rollout, "no report")
    with release_errors_as_airflow_failures():
        _, store, info, history = _loaded(rid)
        if rollout_state(history, rid) is RolloutState.RUNNING and all(wave_done(history, rid, w) for w in info.waves):
            advance_rollout(history, rid, info.tag, RolloutEvent.COMPLETE, actor=f"airflow:{_run_id(context)}",
                            reason=f"all {len(info.waves)} waves done")
        report = write_report(store, build_report(store, rid))
        return {"rollout_id": rid, "state": report.state, "report_uri": report.report_uri, "plot_uri": report.plot_uri,
                "waves": report.waves, "abort_reasons": report.abort_reasons,
                "devices": [d.as_dict() for d in report.devices]}  # the history's: also for a resumed run's skipped tasks


def ensure_safe(rollout: Mapping[str, Any] | None, context: Mapping[str, Any]) -> dict[str, Any]:
    """Last task, whatever happened upstream (all_done): a halt that did not finish is finished; a device
    left mid-lifecycle by a killed task is reconciled (an unjudged release restored). A rollout that is
    still running stays resumable — trigger the DAG with rollout_id, or `hailo-release rollout resume`."""
    from airflow.sdk.exceptions import AirflowFailException

    from release.history import History
    from release.rollout import halt
    from release.rollout_device import reconcile_device
    from release.states import ON_DEVICE, ReleaseState, RolloutState, rollout_state
    from release.targets import inventory

    rid = _started(rollout, "no device was touched")
    with release_errors_as_airflow_failures():
        env, store, info, history = _loaded(rid)
        actor = f"airflow:{_run_id(context)}"
        state = rollout_state(history, rid)
        if state is RolloutState.HALTING:
            halt(env, store, rid, actor=actor, reason="ensure_safe: finishing an interrupted halt",
                 factory_for=_device_factories(env))
            raise AirflowFailException(f"rollout {rid}: an interrupted halt was finished by ensure_safe")
        reconciled = []
        for name in (d for w in info.waves for d in w.devices):
            own = history.device_records(info.tag, name, rid)
            if own and ReleaseState(own[-1].to_state) in ON_DEVICE:
                reconcile_device(env, store, info.tag, inventory(env).get(name), rid, actor=actor,
                                 ssh_client_factory=_device_factories(env)(name))
                reconciled.append(name)
        state = rollout_state(History(store), rid)
        if reconciled:
            raise AirflowFailException(f"rollout {rid}: {', '.join(reconciled)} left mid-lifecycle, reconciled; the rollout "
                                       f"is {state.value if state else '?'} — resume it with rollout_id={rid}")
        return {"rollout_id": rid, "state": state.value if state else None, "intervened": False}
