"""TEST DOUBLE: a lab device on this machine — its own network namespace joined by veth, its own CPU — never
shipped. Used by the gate-fidelity tests and bench/bench_gate.py.

    with LabDevice() as lab:          # lab.where: "netns" or "loopback" (lab.why says why)
        argv = lab.prefix + [...]     # runs inside the namespace, on the device's CPU, before other work
        ... the orchestrator reaches the device at lab.address ...

Only addresses inside the namespace created here (a free 10.x.y.0/24) or loopback are used. Where a
namespace cannot be made (not root, no iproute2) the device is on loopback and ``why`` says so; the
caller decides whether that is a skip, a failure (CI) or a note.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess

from release.transport import LocalTransport, RemoteResult
from tests.fixtures._lab_network import NS_PREFIX, delete_namespace, free_subnet, sweep_stale_namespaces

DEVICE_CPU, ORCHESTRATOR_CPU = 0, 1
PINNED = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
# A device is its own machine: on this shared host its CPU is given to it first, so other work on the host
# cannot stand in for an orchestrator that is busy. As root: round-robin real-time priority (the kernel
# still keeps 5 % of each second for the rest). nice -10 was not enough at a host load of 10 on 2 cores:
# time.sleep(38 ms) overshot by 2.8 ms at p95 under nice -10, by 0.08 ms under chrt -r 10.
REALTIME = os.geteuid() == 0 and shutil.which("chrt") is not None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class LabDevice:
    def __init__(self, *, cpus: tuple[int, ...] = (DEVICE_CPU,), realtime: bool = True) -> None:
        tag = secrets.token_hex(4)
        # Named as the fleet testbed names its namespaces (creator pid inside): a later run sweeps ours too
        # when this one was killed before it could remove it.
        self.ns = f"{NS_PREFIX}{os.getpid()}-{tag}"
        self._host_if, self._dev_if = f"vh{tag}", f"vd{tag}"
        self.host_address = self.address = ""
        self.cpus = cpus
        self.realtime = realtime and REALTIME
        self.where, self.why = "netns", ""

    def __enter__(self) -> LabDevice:
        if os.geteuid() != 0 or shutil.which("ip") is None:
            self.where, self.why = "loopback", "network namespaces need root and iproute2"
        else:
            try:
                sweep_stale_namespaces()
                # A 10.x.y.0/24 no address or route here is in: a test, a bench and the fleet testbed at once
                # never share addresses.
                net = free_subnet()
                self.host_address, self.address = str(net.network_address + 1), str(net.network_address + 2)
                _ip("netns", "add", self.ns)
                _ip("link", "add", self._host_if, "type", "veth", "peer", "name", self._dev_if, "netns", self.ns)
                _ip("addr", "add", f"{self.host_address}/24", "dev", self._host_if)
                _ip("link", "set", self._host_if, "up")
                for args in (("addr", "add", f"{self.address}/24", "dev", self._dev_if), ("link", "set", self._dev_if, "up"),
                             ("link", "set", "lo", "up")):
                    _ip("netns", "exec", self.ns, "ip", *args)
            except (subprocess.CalledProcessError, OSError, RuntimeError) as exc:  # RuntimeError: no free subnet
                self.where = "loopback"
                self.why = f"cannot create a network namespace here: {getattr(exc, 'stderr', b'') or exc}"
                self._delete()
        if self.where == "loopback":
            self.address = "127.0.0.1"
        return self

    @property
    def prefix(self) -> list[str]:
        """argv prefix: inside the namespace (if any), on the device's CPUs, at real-time priority (as root)."""
        return self.prefix_on(self.cpus, self.realtime)

    def prefix_on(self, cpus: tuple[int, ...], realtime: bool) -> list[str]:
        """The same on other CPUs or priority (the bench gives the device a second core to measure the host's part)."""
        return ((["ip", "netns", "exec", self.ns] if self.where == "netns" else [])
                + (["taskset", "-c", ",".join(map(str, cpus))] if PINNED else [])
                + (["chrt", "-r", "10"] if realtime and REALTIME else []))

    def transport(self) -> DeviceTransport:
        return DeviceTransport(self.prefix)

    def _delete(self) -> None:
        delete_namespace(self.ns)  # what is still running in it, then the namespace (its veth pair goes with it)
        subprocess.run(["ip", "link", "del", self._host_if], capture_output=True, timeout=10)

    def __exit__(self, *exc: object) -> None:
        if self.where == "netns":
            self._delete()


class DeviceTransport(LocalTransport):
    """The device on this machine: commands run with the lab device's prefix (the sidecar the agent starts
    inherits namespace, CPU and priority). Files are local."""

    def __init__(self, prefix: list[str]) -> None:
        self.prefix = prefix

    def run(self, argv: list[str], timeout: float = 120.0) -> RemoteResult:
        return super().run([*self.prefix, *argv], timeout)
