"""The rollout report for humans: per wave and per device what happened (from the history), and a
per-device latency plot (PNG) of each device's gate.

Both are written to the store under the rollout's id (``<store>/releases/<rollout_id>/``): the
release's own directory is immutable once its manifest is published, so the report sits beside it
rather than in it, and is rewritten after every wave.
"""

from __future__ import annotations

import io
import json
from typing import Any

from release.history import History
from release.rollout import RestoreResult, RolloutReport, load_rollout
from release.rollout_device import DeviceOutcome, load_gate, outcome_from_history
from release.states import RolloutEvent, rollout_state
from release.store import ArtifactStore

REPORT_NAME = "rollout_report.json"
PLOT_NAME = "rollout_latency.png"
STATUS_COLOURS = {"promoted": "#55A868", "rolled_back": "#C44E52", "failed": "#C44E52", "halted": "#DD8452",
                  "skipped": "#8C8C8C", "already": "#4C72B0", "interrupted": "#937860"}


def build_report(store: ArtifactStore, rollout_id: str) -> RolloutReport:
    info = load_rollout(store, rollout_id)
    history = History(store)
    records = history.rollout_records(rollout_id)
    own = [r for r in records if r.device is None]
    state = rollout_state(history, rollout_id)
    devices: list[DeviceOutcome] = []
    waves = []
    for wave in info.waves:
        outcomes = [outcome_from_history(history, info.tag, name, rollout_id, wave.index) for name in wave.devices]
        done = next((r for r in own if r.event == RolloutEvent.WAVE_DONE.value and r.detail.get("wave") == wave.index), None)
        if done is not None:  # a device of a finished wave with no lifecycle in it ran the release already
            outcomes = [o if o is not None else _already(history, info.tag, name, wave.index)
                        for o, name in zip(outcomes, wave.devices, strict=True)]
        devices += [o for o in outcomes if o is not None]
        counts: dict[str, int] = {}
        for o in outcomes:
            key = o.status if o is not None else "untouched"
            counts[key] = counts.get(key, 0) + 1
        waves.append({"wave": wave.index, "devices": list(wave.devices), "parallelism": wave.parallelism,
                      "approval": wave.approval, "done": done is not None, "outcomes": counts,
                      "gate": info.plan.waves[wave.index - 1].gate})
    halted = next((r for r in own if r.event == RolloutEvent.HALTED.value), None)
    restored = []
    if halted is not None:
        for device, to in halted.detail.get("restored", {}).items():
            restored.append(RestoreResult(device, to, None, float(halted.detail["time_to_healthy_s"][device]), True,
                                          "restored by the halt"))
    abort = [r.reason for r in own if r.event == RolloutEvent.ABORT.value]
    return RolloutReport(rollout_id, info.tag, state.value if state else "unknown", waves, devices, info.skipped,
                         restored, abort)


def _already(history: History, tag: str, device: str, wave: int) -> DeviceOutcome | None:
    """The device's 'already' outcome: nothing recorded by this rollout (run_device records nothing
    for a device that has the release committed), and the release is its last-known-good."""
    lkg = history.last_known_good(device)
    if lkg is None or lkg[0] != tag:
        return None
    return DeviceOutcome.already(device, wave, tag)


def _plot_png(store: ArtifactStore, report: RolloutReport) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # the OO API: no pyplot global state (waves run in threads)

    gated: list[tuple[DeviceOutcome, dict[str, Any]]] = []
    for outcome in report.devices:
        gate = load_gate(store, report.rollout_id, outcome.device, outcome.attempt)
        if gate and gate.get("latencies_ms"):
            gated.append((outcome, gate))
    fig = Figure(figsize=(max(6.0, 1.0 + 0.8 * len(gated)), 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if gated:
        box = ax.boxplot([g["latencies_ms"] for _, g in gated], showfliers=False, patch_artist=True)
        for patch, (outcome, _) in zip(box["boxes"], gated, strict=True):
            patch.set_facecolor(STATUS_COLOURS.get(outcome.status, "#4C72B0"))
        for i, (_, g) in enumerate(gated, start=1):
            if g.get("p95_ms") is not None:
                ax.plot([i - 0.3, i + 0.3], [g["p95_ms"]] * 2, color="black", linestyle="--", linewidth=1)
        ax.set_xticks(range(1, len(gated) + 1), [f"{o.device}\nw{o.wave} {o.status}" for o, _ in gated], fontsize=7)
    else:
        ax.text(0.5, 0.5, "no device reached its gate", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("latency per window (ms); dashed: p95")
    ax.set_title(f"rollout {report.tag}: {report.state} — per-device gate latency", fontsize=9)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def write_report(store: ArtifactStore, report: RolloutReport) -> RolloutReport:
    """Store the report JSON and the latency plot under the rollout's id; returns it with their URIs."""
    store.put_bytes(report.rollout_id, PLOT_NAME, _plot_png(store, report))
    report.plot_uri = store.uri(report.rollout_id, PLOT_NAME)
    report.report_uri = store.uri(report.rollout_id, REPORT_NAME)
    body: dict[str, Any] = report.as_dict()
    store.put_bytes(report.rollout_id, REPORT_NAME, json.dumps(body, indent=2, default=str).encode())
    return report
