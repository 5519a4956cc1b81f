"""A fleet rollout plan as data (Argo Rollouts steps, AWS IoT Jobs abort criteria, Mender phases),
loaded from YAML and validated like the gate settings: frozen, bounded, clear errors.

    waves:                      # cumulative targets: a device count or a percentage of the selection
      - {size: 1}               # the first wave is the canary of the fleet
      - {size: "10%", gate: {duration_s: 10}, parallelism: 2}
      - {size: "100%", gate: {duration_s: 5}, parallelism: 6, approval: true}
    abort: {max_failure_rate: 0.2, min_finished: 3, any_failure_in_first: 1}
    pause_between_waves_s: 0
    on_preflight_failure: skip  # skip (with the device's reason) | halt

Each wave's gate overrides go through ``gate_settings.settings_with_overrides`` (only tightening the
product limits) and the release request's bounds; a later wave's gate may not run longer than an
earlier one's (later waves are the bigger, already-proven part of the fleet).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from release.errors import ConfigError, InvalidInput
from release.gate_settings import GateSettings, settings_with_overrides

if TYPE_CHECKING:
    from release.devices import Selector

MAX_WAVES = 20
MAX_PARALLELISM = 64
_PERCENT = re.compile(r"^(\d{1,3}(\.\d{1,2})?)%$")


class PlanWave(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int | str = Field(description="cumulative target: a device count (>= 1) or a percentage such as '10%'")
    gate: dict[str, float] = Field(default_factory=dict, description="gate overrides for this wave's devices")
    parallelism: int = Field(1, ge=1, le=MAX_PARALLELISM, description="devices of this wave updated at once")
    approval: bool = Field(False, description="wait for `hailo-release rollout approve` before this wave")

    @field_validator("size")
    @classmethod
    def _size(cls, v: int | str) -> int | str:
        if isinstance(v, bool):
            raise ValueError("must be a device count or a percentage such as '10%'")
        if isinstance(v, int):
            if v < 1:
                raise ValueError(f"device count {v} must be at least 1")
            return v
        match = _PERCENT.fullmatch(v.strip())
        if match is None or not 0 < float(match.group(1)) <= 100:
            raise ValueError(f"{v!r} is neither a device count nor a percentage in (0%, 100%]")
        return v.strip()

    @field_validator("gate")
    @classmethod
    def _gate(cls, v: dict[str, float]) -> dict[str, float]:
        try:
            settings_with_overrides(v)
        except ConfigError as exc:  # not a ValueError: re-raised as one so pydantic names the wave
            raise ValueError(str(exc)) from None
        return v

    def settings(self) -> GateSettings:
        return settings_with_overrides(self.gate)

    def cumulative(self, total: int) -> int:
        """How many of ``total`` devices are covered once this wave is done."""
        if isinstance(self.size, int):
            return min(self.size, total)
        return min(total, math.ceil(total * float(self.size.rstrip("%")) / 100))


class AbortCriteria(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_failure_rate: float = Field(0.2, ge=0, le=1, description="halt when failed/finished exceeds this ...")
    min_finished: int = Field(3, ge=1, le=10000, description="... once at least this many devices finished")
    any_failure_in_first: int = Field(1, ge=0, le=10000, description="halt on any failure among the first N finished")


class RolloutPlan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    waves: tuple[PlanWave, ...] = Field(min_length=1, max_length=MAX_WAVES)
    abort: AbortCriteria = AbortCriteria()
    pause_between_waves_s: float = Field(0.0, ge=0, le=7 * 86400)
    on_preflight_failure: Literal["skip", "halt"] = "skip"
    fleet: bool = Field(True, description="false: the release workflow runs the canary only")

    @model_validator(mode="after")
    def _waves(self) -> RolloutPlan:
        last = self.waves[-1].size
        if last != "100%":
            raise ValueError(f"the last wave must be '100%' (it is {last!r}): otherwise part of the selection is never updated")
        previous_pct, previous_count = 0.0, 0
        durations = [wave.settings().load.duration_s for wave in self.waves]
        for i, wave in enumerate(self.waves):
            if isinstance(wave.size, str):
                pct = float(wave.size.rstrip("%"))
                if pct <= previous_pct:
                    raise ValueError(f"wave {i + 1} ({wave.size}) must cover more than wave {i} ({previous_pct:g}%)")
                previous_pct = pct
            else:
                if wave.size <= previous_count or previous_pct > 0:
                    raise ValueError(f"wave {i + 1} (count {wave.size}) must come before percentages and grow")
                previous_count = wave.size
            if i and durations[i] > durations[i - 1]:
                raise ValueError(f"wave {i + 1}'s gate runs {durations[i]:g}s, longer than wave {i}'s {durations[i - 1]:g}s: "
                                 "later waves get shorter gates")
        return self

    def to_json_dict(self) -> dict[str, object]:
        return self.model_dump(mode="json")


def _where(loc: tuple[int | str, ...]) -> str:
    """A pydantic location as a person counts: waves.0.size → wave 1 size."""
    if len(loc) >= 2 and loc[0] == "waves" and isinstance(loc[1], int):
        return " ".join([f"wave {loc[1] + 1}", *(str(p) for p in loc[2:])])
    return ".".join(str(p) for p in loc) or "plan"


def parse_plan(raw: object, source: str = "rollout plan") -> RolloutPlan:
    try:
        return RolloutPlan.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{_where(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{source}: {problems}") from None


def load_plan(path: Path) -> RolloutPlan:
    """The plan in a YAML file; a ``target`` (group/selector, as in the repository's release plan) is
    checked and left out: see ``load_target``."""
    raw = read_plan_mapping(path)
    load_target(path, raw)
    return parse_plan({k: v for k, v in raw.items() if k != "target"}, f"rollout plan {path}")


def load_target(path: Path, raw: dict[str, object] | None = None) -> Selector | None:
    """The file's ``target: {group: G} | {selector: "k=v,..."}``, if it names one."""
    from release.devices import Selector

    target = (raw if raw is not None else read_plan_mapping(path)).get("target")
    if target is None:
        return None
    if not isinstance(target, dict) or not set(target) <= {"group", "selector"}:
        raise ConfigError(f"rollout plan {path}: target must be a mapping with group and/or selector")
    try:
        return Selector.parse(target.get("group"), target.get("selector"))
    except InvalidInput as exc:
        raise ConfigError(f"rollout plan {path}: target: {exc}") from None


def read_plan_mapping(path: Path, what: str = "rollout plan", expected: str | None = None) -> dict[str, object]:
    """The YAML mapping in ``path``; ConfigError naming ``what`` when it is unreadable or not a mapping
    (``expected`` replaces the default description of what the mapping should hold)."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        expected = expected or f"expected a mapping with 'waves', got {type(raw).__name__}"
        raise ConfigError(f"{what} {path}: {expected}")
    return raw
