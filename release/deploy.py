"""Canary deploy, promote and rollback on one device, through a Transport and the device agent.

The orchestrator only uploads and asks; the agent on the device verifies signatures and
checksums, switches pointers atomically, restarts the sidecar, checks health, and restores the
last-known-good release by itself when anything goes wrong.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from release.devices import DeviceSpec
from release.errors import IntegrityError, LockHeld, ReleaseError, StepFailed
from release.identifiers import ReleaseTag
from release.transport import Transport

AGENT_SOURCE = Path(__file__).with_name("device_agent.py")
# The agent ships as these standard-library files, side by side in the device's bin/.
AGENT_FILES = (AGENT_SOURCE, Path(__file__).with_name("device_checks.py"), Path(__file__).with_name("device_load.py"))
# The lease check at boot and every 30 s (systemd), for a device rebooted mid-canary.
LEASE_UNITS = tuple(Path(__file__).with_name("data").joinpath("pi").glob("hailo-lease-check.*"))
BUNDLE_FILES = ("manifest.json", "manifest.json.sig", "model.hef", "model.onnx", "hef_sha256sum.txt")
AGENT_EXIT_INTEGRITY, AGENT_EXIT_PREFLIGHT, AGENT_EXIT_LOCKED, AGENT_EXIT_UNHEALTHY, AGENT_EXIT_LEASE = 3, 4, 5, 6, 7
LAST_KNOWN_GOOD = "last-known-good"
MAX_LOAD_RESULT_BYTES = 64 << 20


class Unhealthy(StepFailed):
    """The new release did not become healthy; the agent restored the last-known-good one."""


class LeaseExpired(StepFailed):
    """The canary's lease ran out before the commit: the agent already restored last-known-good."""


class PreflightRefused(StepFailed):
    """The device refused the release before stopping anything (arch or driver mismatch)."""


@dataclass(frozen=True)
class AgentReply:
    ok: bool
    body: dict[str, Any]
    seconds: float


def _agent(transport: Transport, device: DeviceSpec, *args: str, timeout: float = 300.0) -> AgentReply:
    t0 = time.monotonic()
    res = transport.run(device.agent_argv("--lock-timeout", "30", *args), timeout=timeout)
    elapsed = time.monotonic() - t0
    try:
        body: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1]) if res.stdout.strip() else {}
    except ValueError:
        body = {"detail": res.stdout[-500:]}
    if res.returncode == 0:
        return AgentReply(True, body, elapsed)
    detail = str(body.get("detail") or res.stderr.strip()[-500:] or f"exit {res.returncode}")
    errors: dict[int, type[ReleaseError]] = {
        AGENT_EXIT_INTEGRITY: IntegrityError,
        AGENT_EXIT_PREFLIGHT: PreflightRefused,
        AGENT_EXIT_LOCKED: LockHeld,
        AGENT_EXIT_UNHEALTHY: Unhealthy,
        AGENT_EXIT_LEASE: LeaseExpired,
    }
    raise errors.get(res.returncode, StepFailed)(f"device {device.name}: {detail}")


def agent_config(device: DeviceSpec, public_key_path: str) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "public_key": public_key_path,
        "health_url": device.health_url,
        "health_timeout_s": device.health_timeout_s,
    }
    for key in ("restart_command", "stop_command", "prepull_command", "identify_command", "driver_version_command"):
        value = getattr(device, key)
        if value:
            cfg[key] = value
    return cfg


def install_agent(transport: Transport, device: DeviceSpec, public_key: Path) -> None:
    """(Re)install the agent script, its config and the release public key; idempotent."""
    root = device.agent_root
    res = transport.run(["mkdir", "-p", f"{root}/bin", f"{root}/releases"], timeout=30)
    if res.returncode != 0:
        raise StepFailed(f"device {device.name}: cannot create {root}: {res.stderr.strip()}")
    for source in AGENT_FILES:
        transport.upload(source, f"{root}/bin/{source.name}")
    res = transport.run(["mkdir", "-p", f"{root}/systemd"], timeout=30)
    if res.returncode != 0:
        raise StepFailed(f"device {device.name}: cannot create {root}/systemd: {res.stderr.strip()}")
    transport.upload(public_key, f"{root}/release-signing.pub")
    with tempfile.TemporaryDirectory() as tmp:
        for unit in render_lease_units(device, Path(tmp)):
            transport.upload(unit, f"{root}/systemd/{unit.name}")
        cfg = Path(tmp) / "agent.json"
        cfg.write_text(json.dumps(agent_config(device, f"{root}/release-signing.pub"), indent=2))
        transport.upload(cfg, f"{root}/agent.json")


def render_lease_units(device: DeviceSpec, dest: Path) -> list[Path]:
    """The systemd lease-check units with this device's agent root and python filled in."""
    out = []
    for unit in sorted(LEASE_UNITS):
        text = unit.read_text().replace("{root}", device.agent_root).replace("{python}", device.agent_python)
        (dest / unit.name).write_text(text)
        out.append(dest / unit.name)
    return out


def upload_bundle(transport: Transport, device: DeviceSpec, bundle_dir: Path, tag: str) -> None:
    tag = ReleaseTag(tag).value
    remote = device.release_dir(tag)
    res = transport.run(["mkdir", "-p", remote], timeout=30)
    if res.returncode != 0:
        raise StepFailed(f"device {device.name}: cannot create {remote}: {res.stderr.strip()}")
    for name in BUNDLE_FILES:
        local = bundle_dir / name
        if not local.is_file():
            raise StepFailed(f"bundle {bundle_dir} lacks {name}")
        transport.upload(local, f"{remote}/{name}")


def stage(transport: Transport, device: DeviceSpec, tag: str) -> AgentReply:
    """Have the agent check the uploaded bundle against hef_sha256sum.txt and mark it complete."""
    return _agent(transport, device, "stage", ReleaseTag(tag).value)


def activate(transport: Transport, device: DeviceSpec, tag: str, lease_s: float) -> AgentReply:
    """Start ``tag`` as a provisional canary: unless committed within ``lease_s`` of becoming healthy,
    the device restores its last-known-good release by itself."""
    return _agent(transport, device, "activate", ReleaseTag(tag).value, "--lease-s", f"{lease_s:.3f}")


def extend_lease(transport: Transport, device: DeviceSpec, tag: str, lease_s: float) -> AgentReply:
    return _agent(transport, device, "extend", ReleaseTag(tag).value, "--lease-s", f"{lease_s:.3f}")


def commit(transport: Transport, device: DeviceSpec, tag: str) -> AgentReply:
    """Make the provisional canary the device's last-known-good (LeaseExpired if it is too late)."""
    return _agent(transport, device, "commit", ReleaseTag(tag).value)


def rollback(transport: Transport, device: DeviceSpec, to: str | None, expect_hef: str | None = None) -> AgentReply:
    """Restore release ``to`` (an explicit tag from the store, its hef_sha256 checked on the device), or
    with ``to=None`` the device's own committed release."""
    argv = ["rollback", "--to", LAST_KNOWN_GOOD if to is None else ReleaseTag(to).value]
    if expect_hef is not None:
        argv += ["--expect-hef", expect_hef]
    return _agent(transport, device, *argv)


def status(transport: Transport, device: DeviceSpec) -> dict[str, Any]:
    return _agent(transport, device, "status").body


def load(transport: Transport, device: DeviceSpec, windows: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Have the agent run the gate's load against the sidecar on the device (release.device_load):
    upload the windows, start `load`, return its reply (raw timings, parity answer, /metrics scrapes)."""
    remote = f"{device.agent_root}/gate/windows.json"
    res = transport.run(["mkdir", "-p", f"{device.agent_root}/gate"], timeout=30)
    if res.returncode != 0:
        raise StepFailed(f"device {device.name}: cannot create {device.agent_root}/gate: {res.stderr.strip()}")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "windows.json"
        local.write_text(json.dumps({"windows": windows.tolist()}))
        transport.upload(local, remote)
    argv = ["load", "--windows", remote]
    for key in ("rate", "duration_s", "concurrency", "timeout_s", "error_limit", "latent_dim", "num_motifs",
                "probe_timeout_s", "metrics_timeout_s"):
        if params.get(key) is not None:
            argv += [f"--{key.replace('_', '-')}", str(params[key])]
    body = _agent(transport, device, *argv, timeout=float(params["time_bound_s"]) + 60).body
    if "result_file" not in body:
        return body
    with tempfile.TemporaryDirectory() as tmp:  # a large answer: the agent left it in a file
        local = Path(tmp) / "load-result.json"
        transport.download(f"{device.agent_root}/gate/load-result.json", local)
        if local.stat().st_size > MAX_LOAD_RESULT_BYTES:
            raise StepFailed(f"device {device.name}: load result of {local.stat().st_size} bytes is too large")
        result: dict[str, Any] = json.loads(local.read_text(encoding="utf-8"))
        return result


def device_loader(device: DeviceSpec, open_transport: Callable[[], Transport]) -> Callable[[Any, dict[str, Any]], dict[str, Any]]:
    """The device-side gate's ``start_load``: a transport per run, closed after it."""

    def start(windows: Any, params: dict[str, Any]) -> dict[str, Any]:
        transport = open_transport()
        try:
            return load(transport, device, windows, params)
        finally:
            transport.close()

    return start


@dataclass(frozen=True)
class DeployResult:
    """What a canary deploy did and how long each part took; `status` is the agent's final view."""

    tag: str
    upload_s: float
    activate_s: float
    total_s: float
    status: dict[str, Any]



def deploy_canary(
    transport: Transport, device: DeviceSpec, bundle_dir: Path, tag: str, public_key: Path, lease_s: float
) -> DeployResult:
    """Install the agent, upload the bundle (verified, resumable), stage it, activate it under a lease;
    raise if it stayed unhealthy.

    On Unhealthy / IntegrityError / PreflightRefused the device is already back on (or never left)
    its last-known-good release: the agent restores it before answering.
    """
    tag = ReleaseTag(tag).value
    t0 = time.monotonic()
    install_agent(transport, device, public_key)
    upload_bundle(transport, device, bundle_dir, tag)
    stage(transport, device, tag)
    t_up = time.monotonic()
    activate(transport, device, tag, lease_s)
    t_act = time.monotonic()
    return DeployResult(tag, t_up - t0, t_act - t_up, time.monotonic() - t0, status(transport, device))
