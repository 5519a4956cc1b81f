"""The device inventory: how to reach each device, where its agent lives, where its sidecar answers."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from release.errors import ConfigError, InvalidIdentifier
from release.identifiers import DeviceName
from release.validated import DeviceStr


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


class Inventory(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    devices: dict[str, DeviceSpec]

    def get(self, name: str) -> DeviceSpec:
        DeviceName(name)
        if name not in self.devices:
            raise InvalidIdentifier(f"device {name!r} is not in the inventory; known: {', '.join(sorted(self.devices))}")
        return self.devices[name]


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
