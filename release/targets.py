"""The devices a release can reach: the inventory (with this machine as `local`) and a transport to each."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

from release.devices import DeviceSpec, Inventory, load_inventory
from release.errors import InvalidInput
from release.pipeline_env import PipelineEnv


def local_device(env: PipelineEnv) -> DeviceSpec:
    """This machine as the `local` device: agent under artifacts/device/local, sidecar as a process."""
    port = env.local_sidecar_port
    root = env.root / "device" / "local"
    url = f"http://127.0.0.1:{port}"
    sidecar = [sys.executable, "-m", "release.local_sidecar"]
    return DeviceSpec(
        name="local", transport="local", agent_root=str(root), agent_python=sys.executable, gate_url=url, health_url=url,
        restart_command=[*sidecar, "restart", "--release-dir", "{release_dir}", "--state-dir", str(root / "sidecar"),
                         "--port", str(port)],
        stop_command=[*sidecar, "stop", "--state-dir", str(root / "sidecar")],
        health_timeout_s=60,
    )


def inventory(env: PipelineEnv) -> Inventory:
    if env.devices_file is not None:
        inv = load_inventory(env.devices_file)
        if "local" not in inv.devices:
            inv = Inventory(devices={**inv.devices, "local": local_device(env)})
        return inv
    return Inventory(devices={"local": local_device(env)})


def open_transport(device: DeviceSpec, ssh_client_factory: Callable[[], Any] | None = None) -> Any:
    from release.transport import LocalTransport, ParamikoTransport, connect_ssh

    if device.transport == "local":
        return LocalTransport()
    if ssh_client_factory is not None:
        return ParamikoTransport(ssh_client_factory())
    if not (device.host and device.user and device.key_file and device.known_hosts):
        raise InvalidInput(f"device {device.name}: ssh transport needs host, user, key_file and known_hosts")
    return ParamikoTransport(connect_ssh(device.host, device.port, device.user, device.key_file, device.known_hosts))


@contextlib.contextmanager
def connected(device: DeviceSpec, ssh_client_factory: Callable[[], Any] | None = None) -> Iterator[Any]:
    """A transport to ``device`` for the length of a ``with`` block, closed whatever happens."""
    transport = open_transport(device, ssh_client_factory)
    try:
        yield transport
    finally:
        transport.close()
