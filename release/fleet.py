"""The fleet for humans: what every device runs beside what the store's history says
(``fleet_status``), and on-call's one-command rollback of a whole group (``rollback_group``),
verified per device, with the time to healthy per device. Devices are asked in parallel.
"""

from __future__ import annotations

import concurrent.futures as cf
from dataclasses import asdict, dataclass, field
from typing import Any

from release.devices import DeviceSpec, Selector
from release.errors import ReleaseError
from release.history import History
from release.operations import rollback_device, status
from release.pipeline_env import PipelineEnv
from release.rollout_device import SshFactory
from release.store import ArtifactStore
from release.targets import inventory

MAX_PARALLEL = 16


@dataclass
class FleetDeviceStatus:
    device: str
    enrolled: bool
    groups: list[str]
    runs: str | None
    committed: str | None
    last_known_good: str | None
    lease: dict[str, Any] | None
    in_flight: str | None
    last_gate_p95_ms: float | None
    disagreements: list[str] = field(default_factory=list)

    @property
    def agrees(self) -> bool:
        return not self.disagreements

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "agrees": self.agrees}


def _targets(env: PipelineEnv, selector: Selector | None) -> list[DeviceSpec]:
    devices = inventory(env).devices
    return [devices[n] for n in sorted(devices) if selector is None or selector.matches(devices[n])]


def last_gate_p95(history: History, store: ArtifactStore, device: str) -> float | None:
    """The p95 of the last gate measured on ``device``: a fleet rollout's record, or for a canary
    device the gate in the release's published manifest."""
    from release.manifest import ReleaseManifest
    from release.store import MANIFEST_NAME

    for record in reversed(history.for_device(device)):
        if record.detail.get("p95_ms") is not None:
            return float(record.detail["p95_ms"])
        if record.event in ("gate_pass", "gate_fail", "gate_inconclusive") and store.is_published(record.release_tag):
            manifest = ReleaseManifest.from_json(store.get_bytes(record.release_tag, MANIFEST_NAME))
            p95 = manifest.gate.measured.get("p95_ms") if manifest.device == device else None
            if p95 is not None:
                return float(p95)
    return None


def _one(env: PipelineEnv, store: ArtifactStore, spec: DeviceSpec, ssh_client_factory: SshFactory) -> FleetDeviceStatus:
    history = History(store)
    enrolled, p95 = spec.enrolled is not None, last_gate_p95(history, store, spec.name)
    if not enrolled:  # not managed by rollouts: listed, never contacted (it may not even have an agent)
        lkg = history.last_known_good(spec.name)
        return FleetDeviceStatus(spec.name, False, list(spec.groups), None, None, lkg[0] if lkg else None, None,
                                 history.in_flight(spec.name), p95, [])
    try:
        view = status(env, store, spec.name, ssh_client_factory)
    except (ReleaseError, OSError) as exc:
        lkg = history.last_known_good(spec.name)
        return FleetDeviceStatus(spec.name, enrolled, list(spec.groups), None, None, lkg[0] if lkg else None, None,
                                 history.in_flight(spec.name), p95, [f"unreachable: {exc}"])
    return FleetDeviceStatus(spec.name, enrolled, list(spec.groups), view.device_view.get("current"),
                             view.device_view.get("committed"), view.last_known_good,
                             view.device_view.get("lease") or None, view.in_flight, p95, list(view.disagreements))


def fleet_status(env: PipelineEnv, store: ArtifactStore, selector: Selector | None = None,
                 ssh_client_factory: SshFactory = None) -> list[FleetDeviceStatus]:
    targets = _targets(env, selector)
    with cf.ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, max(1, len(targets)))) as pool:
        return list(pool.map(lambda spec: _one(env, store, spec, ssh_client_factory), targets))


@dataclass(frozen=True)
class GroupRollback:
    device: str
    ok: bool
    rolled_back_to: str | None
    time_to_healthy_s: float | None
    verified: bool
    detail: str


def rollback_group(env: PipelineEnv, store: ArtifactStore, selector: Selector, *, to: str = "previous", reason: str,
                   triggered_by: str, ssh_client_factory: SshFactory = None) -> list[GroupRollback]:
    """Roll every enrolled device of the group back (each to its own previous committed release, or
    to ``to``), in parallel; each is verified afterwards against its agent's status."""
    targets = [s for s in _targets(env, selector) if s.enrolled is not None]

    def one(spec: DeviceSpec) -> GroupRollback:
        try:
            result = rollback_device(env, store, device=spec.name, to=to, reason=reason, triggered_by=triggered_by,
                                     ssh_client_factory=ssh_client_factory)
        except ReleaseError as exc:
            return GroupRollback(spec.name, False, None, None, False, str(exc))
        after = status(env, store, spec.name, ssh_client_factory)
        verified = after.device_view.get("current") == result["rolled_back_to"] and after.agrees
        return GroupRollback(spec.name, True, result["rolled_back_to"], result["seconds_to_healthy"], verified,
                             "; ".join(after.disagreements) or f"runs {after.device_view.get('current')}")

    with cf.ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, max(1, len(targets)))) as pool:
        return list(pool.map(one, targets))
