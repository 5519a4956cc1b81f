"""Canary deploy on the loopback testbed: a real sshd plays the Pi, with the device agent and a real
sidecar process (onnx backend) behind it. Every fault must end on a healthy release."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
import urllib.request

import paramiko
import pytest

from release import deploy as dep
from release.errors import IntegrityError, LockHeld, StepFailed
from release.transport import LocalTransport, connect_ssh
from tests.fixtures.testbed import free_port

pytestmark = pytest.mark.ssh


def _health(device):
    with urllib.request.urlopen(f"{device.gate_url}/healthz", timeout=3) as r:
        return json.loads(r.read())


def _manifest(bundle):
    return json.loads((bundle / "manifest.json").read_text())


LEASE_S = 600.0  # these tests commit or roll back explicitly; the lease itself is tested in test_canary_faults


def _deploy(transport, device, bed, bundle, tag, commit=True):
    """Deploy as a canary and, by default, commit it (a promoted release: the next one's last-known-good)."""
    dep.install_agent(transport, device, bed.public_key)
    dep.upload_bundle(transport, device, bundle, tag)
    reply = dep.activate(transport, device, tag, LEASE_S)
    if commit:
        dep.commit(transport, device, tag)
    return reply


@pytest.fixture
def two_releases(testbed):
    return testbed.build("v1", "cfg-1"), testbed.build("v2", "cfg-2")


def test_deploy_over_ssh_then_rollback(testbed, two_releases, ssh_transport_factory):
    v1, v2 = two_releases
    device = testbed.device("pi-ssh", "ssh", free_port())
    t = ssh_transport_factory()
    try:
        assert _deploy(t, device, testbed, v1, "v1").ok
        assert _health(device)["config_version"] == "cfg-1"
        reply = _deploy(t, device, testbed, v2, "v2", commit=False)
        assert reply.body["last_known_good"] == "v1" and reply.body["lease"]["lease_s"] == LEASE_S
        h = _health(device)
        assert h["config_version"] == "cfg-2" and h["hef_sha256"] == _manifest(v2)["hef"]["hef_sha256"]
        status = dep.status(t, device)
        assert (status["current"], status["committed"], status["lease"]["tag"]) == ("v2", "v1", "v2")
        back = dep.rollback(t, device, "v1", expect_hef=_manifest(v1)["hef"]["hef_sha256"])
        assert back.body["rolled_back_to"] == "v1"
        assert _health(device)["config_version"] == "cfg-1"
        status = dep.status(t, device)
        assert (status["current"], status["committed"], status["lease"]) == ("v1", "v1", None)
    finally:
        t.close()


def test_unknown_host_key_refused(testbed, sshd_server, tmp_path):
    other = tmp_path / "known_hosts"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    pub = (tmp_path / "k.pub").read_text().split()
    other.write_text(f"[127.0.0.1]:{sshd_server.port} {pub[0]} {pub[1]}\n")
    with pytest.raises(StepFailed):
        connect_ssh(sshd_server.host, sshd_server.port, sshd_server.user, sshd_server.key_file, other)
    with pytest.raises(StepFailed, match="never disabled"):
        connect_ssh(sshd_server.host, sshd_server.port, sshd_server.user, sshd_server.key_file, tmp_path / "none")


def test_dropped_connection_mid_upload_resumes(testbed, ssh_transport_factory, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024))
    remote = str(tmp_path / "remote" / "big.bin")
    (tmp_path / "remote").mkdir()
    t = ssh_transport_factory()
    sftp = t.client.open_sftp()
    with open(big, "rb") as fh, sftp.open(remote + ".part", "wb") as out:
        out.write(fh.read(1024 * 1024))
    t.client.get_transport().close()  # the connection drops mid-upload
    with pytest.raises(StepFailed):
        t.run(["true"])
    t2 = ssh_transport_factory()
    try:
        t2.upload(big, remote)
    finally:
        t2.close()
    assert (tmp_path / "remote" / "big.bin").read_bytes() == big.read_bytes()
    assert not (tmp_path / "remote" / "big.bin.part").exists()


def test_corrupt_partial_upload_is_restarted(testbed, ssh_transport_factory, tmp_path):
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(600_000))
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "f.bin.part").write_bytes(b"garbage" * 1000)
    t = ssh_transport_factory()
    try:
        t.upload(src, str(tmp_path / "r" / "f.bin"))
    finally:
        t.close()
    assert (tmp_path / "r" / "f.bin").read_bytes() == src.read_bytes()


def test_agent_killed_mid_switch_converges(testbed, two_releases):
    v1, v2 = two_releases
    device = testbed.device("pi-kill", "local", free_port())
    t = LocalTransport()
    _deploy(t, device, testbed, v1, "v1")
    dep.upload_bundle(t, device, v2, "v2")
    env = {**os.environ, "HAILO_AGENT_CRASH_AT": "after-switch"}
    killed = subprocess.run(device.agent_argv("activate", "v2", "--lease-s", "600"), env=env, capture_output=True, text=True)
    assert killed.returncode == 137
    assert os.readlink(os.path.join(device.agent_root, "current")).endswith("v2")  # half state on disk
    status = dep.status(t, device)  # any agent command recovers first
    assert status["current"] == "v1" and status["healthy"] and status["journal"] is None
    assert status["committed"] == "v1" and status["lease"] is None
    assert _health(device)["config_version"] == "cfg-1"
    assert _deploy(t, device, testbed, v2, "v2").ok  # a re-run converges on the new release
    assert _health(device)["config_version"] == "cfg-2"


def test_crash_looping_sidecar_restores_last_known_good(testbed, two_releases):
    v1, v2 = two_releases
    device = testbed.device("pi-crash", "local", free_port(), module="tests.doubles.faulty_sidecars crash v2",
                            health_timeout_s=15)  # v1 must come up even on a busy CI host
    t = LocalTransport()
    _deploy(t, device, testbed, v1, "v1")
    with pytest.raises(dep.Unhealthy, match="restored v1"):
        _deploy(t, device, testbed, v2, "v2")
    assert _health(device)["config_version"] == "cfg-1"
    assert dep.status(t, device)["current"] == "v1"


@pytest.mark.parametrize("tamper", ["hef", "signature", "manifest"])
def test_tampered_bundle_refused_before_anything_stops(testbed, two_releases, tamper):
    v1, v2 = two_releases
    device = testbed.device("pi-tamper", "local", free_port())
    t = LocalTransport()
    _deploy(t, device, testbed, v1, "v1")
    pid_before = (testbed.root / "device" / "pi-tamper" / "sidecar" / "sidecar.pid").read_text()
    dep.upload_bundle(t, device, v2, "v2")
    target = {"hef": "model.hef", "signature": "manifest.json.sig", "manifest": "manifest.json"}[tamper]
    path = os.path.join(device.release_dir("v2"), target)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(path, "wb").write(bytes(data))
    with pytest.raises(IntegrityError):
        dep.activate(t, device, "v2", LEASE_S)
    assert dep.status(t, device)["current"] == "v1"
    assert (testbed.root / "device" / "pi-tamper" / "sidecar" / "sidecar.pid").read_text() == pid_before


def test_second_release_on_same_device_waits_or_is_refused(testbed, two_releases):
    v1, _ = two_releases
    device = testbed.device("pi-lock", "local", free_port())
    t = LocalTransport()
    _deploy(t, device, testbed, v1, "v1")
    with open(os.path.join(device.agent_root, "agent.lock"), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        res = subprocess.run(device.agent_argv("--lock-timeout", "0.5", "status"), capture_output=True, text=True)
        assert res.returncode == 5 and "another release operation" in res.stdout
        # The orchestrator side maps the agent's "locked" exit to LockHeld after its 30 s wait;
        # shorten the wait through a transport that rewrites only the --lock-timeout value.
        class ShortWait(LocalTransport):
            def run(self, argv, timeout=120.0):
                i = argv.index("--lock-timeout")
                return super().run([*argv[: i + 1], "0.3", *argv[i + 2 :]], timeout)

        t0 = time.monotonic()
        with pytest.raises(LockHeld, match="another release operation"):
            dep.status(ShortWait(), device)
        assert time.monotonic() - t0 < 20


def test_preflight_refuses_wrong_arch(testbed, two_releases):
    v1, _ = two_releases
    doubles = os.path.join(os.path.dirname(__file__), "..", "doubles", "bin", "hailortcli")
    device = testbed.device("pi-arch", "local", free_port(), identify_command=[sys.executable, doubles, "fw-control", "identify"])
    t = LocalTransport()
    os.environ["HAILO_DOUBLE_DEVICE_ARCH"] = "HAILO8L"
    try:
        with pytest.raises(dep.PreflightRefused, match="HEF is for hailo8 but the device is hailo8l"):
            _deploy(t, device, testbed, v1, "v1")
    finally:
        del os.environ["HAILO_DOUBLE_DEVICE_ARCH"]


def test_paramiko_is_strict(sshd_server):
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.SSHException):
        client.connect(sshd_server.host, sshd_server.port, username=sshd_server.user,
                       key_filename=str(sshd_server.key_file), allow_agent=False, look_for_keys=False)


def test_preflight_refuses_hailort_driver_mismatch(tmp_path, doubles_on_path):
    from tests.fixtures.testbed import Testbed

    bed = Testbed(tmp_path, hailo_bin=str(doubles_on_path / "hailo"))
    try:
        bundle = bed.build("v1", "cfg-1")
        assert _manifest(bundle)["hef"]["hailort_version"] == "4.23.0"
        t = LocalTransport()
        old = bed.device("pi-drv", "local", free_port(), driver_version_command=["sh", "-c", "echo 4.20.0"])
        with pytest.raises(dep.PreflightRefused, match="does not match the host driver '4.20.0'"):
            _deploy(t, old, bed, bundle, "v1")
        assert dep.status(t, old)["current"] is None  # nothing was switched or started
        same = bed.device("pi-drv", "local", free_port(), driver_version_command=["sh", "-c", "echo 4.23.0"])
        assert _deploy(t, same, bed, bundle, "v1").ok
    finally:
        bed.stop_sidecars()


def test_deploy_canary_and_timed_rollback_over_ssh(testbed, two_releases, ssh_transport_factory):
    v1, v2 = two_releases
    device = testbed.device("pi-canary", "ssh", free_port())
    t = ssh_transport_factory()
    try:
        first = dep.deploy_canary(t, device, v1, "v1", testbed.public_key, LEASE_S)
        assert first.status["current"] == "v1" and first.status["healthy"] is True
        dep.commit(t, device, "v1")
        second = dep.deploy_canary(t, device, v2, "v2", testbed.public_key, LEASE_S)
        assert second.status == {**second.status, "current": "v2", "committed": "v1", "healthy": True}
        assert second.total_s >= second.upload_s + second.activate_s > 0
        back = dep.rollback(t, device, None)  # the device's own committed release
        assert (back.body["rolled_back_to"], back.body.get("from")) == ("v1", "v2")
        view = dep.status(t, device)
        assert view["current"] == "v1" and view["healthy"] is True
        assert _health(device)["hef_sha256"] == _manifest(v1)["hef"]["hef_sha256"]
    finally:
        t.close()


def test_resume_only_from_a_matching_prefix(testbed, ssh_transport_factory, tmp_path):
    """A .part of the right length but other bytes is not resumed; the result is exact first time."""
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(500_000))
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "f.bin.part").write_bytes(os.urandom(200_000))
    t = ssh_transport_factory()
    t.retries = 1  # no second chance: the prefix check alone must get it right
    try:
        t.upload(src, str(tmp_path / "r" / "f.bin"))
    finally:
        t.close()
    assert (tmp_path / "r" / "f.bin").read_bytes() == src.read_bytes()


def test_download_is_verified(testbed, ssh_transport_factory, tmp_path):
    src = tmp_path / "device.json"
    src.write_bytes(os.urandom(70_000))
    t = ssh_transport_factory()
    try:
        t.download(str(src), tmp_path / "copy.json")
        with pytest.raises(StepFailed):
            t.download(str(tmp_path / "missing"), tmp_path / "x")
    finally:
        t.close()
    assert (tmp_path / "copy.json").read_bytes() == src.read_bytes()
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.part").exists()
