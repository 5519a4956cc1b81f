"""The device inventory: how to reach each device, where its agent lives, where its sidecar answers,
and (for fleet rollouts) its labels, groups and enrollment.

A rollout selects devices by group or label selector (``Inventory.select``); a device that is not
enrolled is never selected, and the selection says which were skipped and why. With
``production`` set, an ssh device without pinned host keys (a known_hosts file, or the pinned key
of its Airflow connection in ``host_key``) is refused before anything is sent to it.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from release.errors import ConfigError, InvalidIdentifier, InvalidInput, RefusedForProduction
from release.identifiers import DeviceName
from release.validated import DeviceStr

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$")


def _check_label(kind: str, value: str) -> str:
    if not _LABEL.fullmatch(value):
        raise ValueError(f"{kind} {value!r} must be 1-63 of [a-z0-9_.-], starting and ending with a letter or digit")
    return value


class Enrollment(BaseModel):
    """Who registered the device for OTA updates, and when: a device without one never gets a rollout."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    by: str = Field(min_length=1, max_length=200)
    at: dt.datetime


class DeviceSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: DeviceStr
    transport: Literal["local", "ssh"]
    agent_root: str = Field(description="the device agent's --root on the device")
    agent_python: str = "/usr/bin/python3"
    gate_url: str = Field(description="where the orchestrator reaches the sidecar for the gate (orchestrator mode)")
    gate_mode: Literal["device", "orchestrator"] = Field(
        "device", description="device: the agent generates the gate's load on the device (what EdgeInfer sees); "
        "orchestrator: load sent from the orchestrator to gate_url (timings include the network)",
    )
    health_url: str = Field("http://127.0.0.1:9000", description="where the agent reaches the sidecar, on the device")
    host: str | None = None
    port: int = Field(22, ge=1, le=65535)
    user: str | None = None
    key_file: Path | None = None
    known_hosts: Path | None = None
    ssh_conn_id: str | None = Field(None, description="Airflow connection to use instead of host/user/key")
    restart_command: list[str] | None = None
    stop_command: list[str] | None = Field(
        None, description="stops the sidecar: the restore of a device whose first canary is rolled back"
    )
    prepull_command: list[str] | None = None
    identify_command: list[str] | None = None
    driver_version_command: list[str] | None = None
    health_timeout_s: float = Field(30.0, gt=0, le=600)
    host_key: str | None = Field(
        None, description="the host key pinned in the Airflow connection (ssh_conn_id), as 'type base64'",
    )
    labels: dict[str, str] = Field(default_factory=dict, description="selector labels, e.g. site: lab-a")
    groups: list[str] = Field(default_factory=list, description="fleet groups a rollout can target")
    enrolled: Enrollment | None = Field(None, description="registered and entitled for OTA; None = never touched")

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            _check_label("label key", key)
            _check_label("label value", value)
        return v

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        for group in v:
            _check_label("group", group)
        return v

    @field_validator("agent_root")
    @classmethod
    def _root(cls, v: str) -> str:
        if not v.startswith("/") or ".." in v.split("/") or any(c in v for c in " \n\t;&|$`'\"\\"):
            raise ValueError("agent_root must be an absolute path without '..', spaces or shell metacharacters")
        return v

    def agent_argv(self, *args: str) -> list[str]:
        return [self.agent_python, f"{self.agent_root}/bin/device_agent.py", "--root", self.agent_root, *args]

    def release_dir(self, tag: str) -> str:
        return f"{self.agent_root}/releases/{tag}"

    def host_keys_pinned(self) -> bool:
        """True for a local device, or an ssh one whose host key is pinned (known_hosts with an entry
        for its host, or the Airflow connection's pinned key)."""
        if self.transport == "local":
            return True
        if self.ssh_conn_id and self.host_key:
            return True
        if self.known_hosts is None or not self.host:
            return False
        try:
            lines = self.known_hosts.read_text(encoding="utf-8").splitlines()
        except OSError:
            return False
        names = {self.host, f"[{self.host}]:{self.port}"}
        return any(names & set(line.split()[0].split(",")) for line in lines if line.strip() and not line.startswith("#"))

    def check_production(self) -> None:
        if not self.host_keys_pinned():
            raise RefusedForProduction(
                f"device {self.name}: production needs pinned host keys (known_hosts with an entry for "
                f"{self.host}:{self.port}, or ssh_conn_id with host_key); none found"
            )


@dataclass(frozen=True)
class Selector:
    """A group name and/or label equalities (``site=lab-a``); a device must match all of them."""

    group: str | None = None
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, group: str | None = None, selector: str | None = None) -> Selector:
        labels: dict[str, str] = {}
        for item in (selector or "").split(","):
            if not item.strip():
                continue
            key, sep, value = item.strip().partition("=")
            if not sep:
                raise InvalidInput(f"label selector {item!r}: expected key=value[,key=value]")
            try:
                labels[_check_label("label key", key)] = _check_label("label value", value)
            except ValueError as exc:
                raise InvalidInput(f"label selector: {exc}") from None
        if group is not None:
            try:
                _check_label("group", group)
            except ValueError as exc:
                raise InvalidInput(str(exc)) from None
        if group is None and not labels:
            raise InvalidInput("a rollout needs a target: a group or a label selector")
        return cls(group, labels)

    def matches(self, spec: DeviceSpec) -> bool:
        if self.group is not None and self.group not in spec.groups:
            return False
        return all(spec.labels.get(k) == v for k, v in self.labels.items())

    def describe(self) -> str:
        parts = [f"group={self.group}"] if self.group else []
        return ",".join(parts + [f"{k}={v}" for k, v in sorted(self.labels.items())])


@dataclass(frozen=True)
class Selection:
    devices: list[DeviceSpec]
    skipped: dict[str, str]  # device name -> why it is not part of the rollout


class Inventory(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    devices: dict[str, DeviceSpec]

    def get(self, name: str) -> DeviceSpec:
        DeviceName(name)
        if name not in self.devices:
            raise InvalidIdentifier(f"device {name!r} is not in the inventory; known: {', '.join(sorted(self.devices))}")
        return self.devices[name]

    def select(self, selector: Selector, *, production: bool = False) -> Selection:
        """The enrolled devices matching ``selector`` (sorted by name), and the matching ones left out, with why.

        In production an enrolled device without pinned host keys refuses the whole selection
        (RefusedForProduction): a rollout never starts by quietly dropping part of its fleet."""
        chosen: list[DeviceSpec] = []
        skipped: dict[str, str] = {}
        for name in sorted(self.devices):
            spec = self.devices[name]
            if not selector.matches(spec):
                continue
            if spec.enrolled is None:
                skipped[name] = "not enrolled (no enrollment record): never touched by a rollout"
            else:
                chosen.append(spec)
        if production:
            for spec in chosen:
                spec.check_production()
        return Selection(chosen, skipped)


def load_inventory(path: Path) -> Inventory:
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read device inventory {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"device inventory {path} is not valid YAML: {exc}") from None
    try:
        devices = {name: DeviceSpec(name=name, **spec) for name, spec in (raw or {}).get("devices", {}).items()}
        return Inventory(devices=devices)
    except (ValidationError, TypeError) as exc:
        raise ConfigError(f"device inventory {path}: {exc}") from None
