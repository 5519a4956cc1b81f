"""The fleet testbed itself (tests/fixtures/fleet.py): six devices that are really apart — each its
own network namespace, its own sshd and host key (another device's pinned key is refused), reached
only through the lab-network relay (which adds its delay) — and the per-device knobs do what they
say: slow, crash after activation, crash at start, driver mismatch, not enrolled, healthz identity."""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from release import deploy as dep
from release.devices import load_inventory
from release.errors import StepFailed
from release.transport import connect_ssh
from tests.fixtures.fleet import Fleet, netns_pids

pytestmark = [pytest.mark.ssh, pytest.mark.e2e]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 1/100 s


def _infer_ms(fleet: Fleet, name: str) -> float:
    dev = fleet.devices[name]
    body = json.dumps({"x": [[0.0] * 9 for _ in range(100)]}).encode()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(f"http://{dev.address}:{dev.sidecar_port}/infer", data=body,
                                 headers={"Content-Type": "application/json"})
    t0 = time.monotonic()
    with opener.open(req, timeout=10) as r:
        r.read()
    return (time.monotonic() - t0) * 1000


def test_each_device_is_its_own_machine(fleet):
    print(f"fleet of {len(fleet.devices)} on {fleet.where} {fleet.why}; network + sshd up in {fleet.startup_s:.2f} s")
    devs = list(fleet.devices.values())
    assert len(devs) >= 6
    assert len({d.host_key_pub for d in devs}) == len(devs)  # one host key per device
    assert len({d.ssh_relay.port for d in devs}) == len(devs)
    if fleet.where == "netns":
        assert len({d.ns for d in devs}) == len(devs)
        for d in devs:  # sshd runs inside the device's own namespace, nowhere else
            assert d.sshd is not None and d.sshd.pid in netns_pids(d.ns)
            others = [o.sshd.pid for o in devs if o is not d]
            assert not set(others) & set(netns_pids(d.ns))
    a, b = devs[0], devs[1]
    t = fleet.transport(a.name)
    try:
        seen = t.run(["ip", "-4", "-o", "addr"], timeout=30).stdout if fleet.where == "netns" else ""
    finally:
        t.close()
    if fleet.where == "netns":  # a command over SSH runs on the device: it sees its own address only
        assert a.address in seen and b.address not in seen
    # Pinned keys: device B's known_hosts does not vouch for device A (the check is on, not bypassed).
    wrong = b.root / "a-with-b-key"
    wrong.write_text(f"[127.0.0.1]:{a.ssh_relay.port} {b.host_key_pub}\n")
    with pytest.raises(StepFailed, match="does not match"):
        connect_ssh("127.0.0.1", a.ssh_relay.port, fleet.user, fleet.client_key, wrong).close()
    with pytest.raises(StepFailed, match="not found in known_hosts"):  # and B's own file does not name A at all
        connect_ssh("127.0.0.1", a.ssh_relay.port, fleet.user, fleet.client_key, b.known_hosts).close()


def test_the_relay_puts_the_lab_network_between_orchestrator_and_device(fleet):
    """sshd sends its banner as soon as a connection opens: through the relay it arrives no sooner
    than one one-way delay (20 ± 15 ms, so at least 5 ms) — a lower bound a busy machine cannot fake."""
    dev = next(iter(fleet.devices.values()))

    def banner_s(host: str, port: int) -> float:
        t0 = time.monotonic()
        with socket.create_connection((host, port), timeout=10) as s:
            assert s.recv(64).startswith(b"SSH-2.0-")
        return time.monotonic() - t0

    relayed = sorted(banner_s("127.0.0.1", dev.ssh_relay.port) for _ in range(7))
    direct = sorted(banner_s(dev.address, dev.ssh_port) for _ in range(7))
    print(f"sshd banner through the relay: median {relayed[3] * 1000:.1f} ms (min {relayed[0] * 1000:.1f}); "
          f"direct: median {direct[3] * 1000:.1f} ms")
    assert relayed[0] >= 0.005
    assert sum(relayed) / len(relayed) >= 0.010  # mean of 7 draws of U(5, 35) ms: 20 ms, standard error 3.3 ms


def test_inventory_lists_every_device_with_groups_and_labels(fleet, tmp_path):
    fleet.enroll("pi-06", False)
    inv = load_inventory(fleet.write_inventory(tmp_path / "devices.yaml"))
    assert sorted(inv.devices) == fleet.names()
    for name, spec in inv.devices.items():
        assert spec.known_hosts == fleet.devices[name].known_hosts  # pinned, per device
        fields = type(spec).model_fields
        if "enrolled" in fields:
            assert (getattr(spec, "enrolled", None) is not None) is (name != "pi-06")
        if "labels" in fields:
            assert getattr(spec, "labels", None) == fleet.devices[name].labels


def _deploy(fleet: Fleet, name: str, bundle: Path, tag: str, commit: bool) -> str:
    """Deploy a release to one device over SSH through the relay; '' or the error's class and message."""
    t = fleet.transport(name)
    spec = fleet.spec(name)
    try:
        dep.deploy_canary(t, spec, bundle, tag, fleet.testbed.public_key, 120.0)
        if commit:
            dep.commit(t, spec, tag)
        return ""
    except Exception as exc:  # the test compares outcomes per device
        return f"{type(exc).__name__}: {exc}"
    finally:
        t.close()


def test_knobs_slow_crash_driver_mismatch_and_healthz_identity(fleet):
    t0 = time.monotonic()
    v1, v2 = fleet.build("fleet-v1", "cfg-fleet-v1"), fleet.build("fleet-v2", "cfg-fleet-v2")
    build_s = time.monotonic() - t0
    names = ["pi-02", "pi-03", "pi-04", "pi-05"]  # the four whose knobs are turned; pi-01/06 stay untouched
    t0 = time.monotonic()
    with ThreadPoolExecutor(len(names)) as pool:
        outcomes = dict(zip(names, pool.map(lambda n: _deploy(fleet, n, v1, "fleet-v1", commit=True), names), strict=True))
    deploy_s = time.monotonic() - t0
    assert outcomes == dict.fromkeys(names, "")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    pids = {n: fleet.sidecar_pid(n) for n in names}
    rss = [_rss_mb(p) for p in pids.values() if p]
    cpu = [_cpu_s(p) for p in pids.values() if p]
    print(f"2 bundles built in {build_s:.1f} s; v1 deployed to {len(names)} devices in parallel in {deploy_s:.1f} s; "
          f"sidecar RSS {min(rss):.0f}-{max(rss):.0f} MB (sum {sum(rss):.0f} MB), start-up CPU {sum(cpu):.1f} s total")
    v1_hef = json.loads((v1 / "manifest.json").read_text())["hef"]["hef_sha256"]
    for n in names:
        health = fleet.healthz(n)
        assert health is not None and health["config_version"] == "cfg-fleet-v1" and health["hef_sha256"] == v1_hef
        assert health["backend"] == "hailo", health["backend_reason"]  # the strict HailoRT double
        if fleet.where == "netns":  # the sidecar the agent started runs in the device's namespace
            assert pids[n] in netns_pids(fleet.devices[n].ns)

    fleet.slow("pi-02", ms=150, tags="fleet-v2")
    fleet.crash("pi-03", tags="fleet-v2", after_infers=2)
    fleet.driver_mismatch("pi-04")
    fleet.crash("pi-05", tags="fleet-v2", at_start=True)
    with ThreadPoolExecutor(4) as pool:
        targets = ["pi-02", "pi-03", "pi-04", "pi-05"]
        outcomes = dict(zip(targets, pool.map(lambda n: _deploy(fleet, n, v2, "fleet-v2", commit=False), targets),
                            strict=True))
    assert outcomes["pi-02"] == "" and outcomes["pi-03"] == ""
    assert outcomes["pi-04"].startswith("PreflightRefused") and "4.20.0" in outcomes["pi-04"]
    assert outcomes["pi-05"].startswith("Unhealthy"), outcomes["pi-05"]
    for n in ("pi-01", "pi-06"):  # never deployed to: nothing runs there
        assert fleet.healthz(n) is None
    for n in ("pi-04", "pi-05"):  # refused before activation / restored by the agent: still on v1
        assert fleet.healthz(n)["config_version"] == "cfg-fleet-v1"
    for n in ("pi-02", "pi-03"):
        assert fleet.healthz(n)["config_version"] == "cfg-fleet-v2"
    # slow: every inference of v2 takes 150 ms longer on pi-02 only (a lower bound: load cannot fake it).
    assert min(_infer_ms(fleet, "pi-02") for _ in range(2)) >= 150
    # crash: pi-03 passed activation, serves health, and dies under inference load.
    for _ in range(2):
        _infer_ms(fleet, "pi-03")
    with pytest.raises(OSError):
        _infer_ms(fleet, "pi-03")
    deadline = time.monotonic() + 10
    while fleet.healthz("pi-03") is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fleet.healthz("pi-03") is None
    # Rolled back to its last-known-good, the crashing device serves v1 unmodified again.
    t = fleet.transport("pi-03")
    try:
        dep.rollback(t, fleet.spec("pi-03"), "fleet-v1")
    finally:
        t.close()
    assert fleet.healthz("pi-03")["config_version"] == "cfg-fleet-v1"
    _infer_ms(fleet, "pi-03")


def test_reset_leaves_nothing_running_but_sshd(fleet):
    fleet.reset()
    for dev in fleet.devices.values():
        assert fleet.healthz(dev.name, timeout=1) is None and not dev.agent_root.exists()
        if fleet.where == "netns":
            assert netns_pids(dev.ns) == [dev.sshd.pid]
