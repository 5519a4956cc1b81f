"""Airflow wiring: devices reached through the SSH provider's SSHHook (strict host keys, pinned via the
connection's host_key) against the real sshd; release errors mapped onto Airflow failures intact."""

from __future__ import annotations

import json
import subprocess

import pytest

from release.errors import ArtifactExists, IntegrityError, InvalidInput, StepFailed

pytestmark = [pytest.mark.airflow, pytest.mark.ssh]


def _conn(monkeypatch, sshd_server, host_key: str) -> str:
    conn = {"conn_type": "ssh", "host": sshd_server.host, "port": sshd_server.port, "login": sshd_server.user,
            "extra": {"key_file": str(sshd_server.key_file), "host_key": host_key, "look_for_keys": False}}
    monkeypatch.setenv("AIRFLOW_CONN_TESTPI_SSH", json.dumps(conn))
    return "testpi_ssh"


def _host_key(sshd_server) -> str:
    return " ".join(sshd_server.known_hosts.read_text().split()[1:3])


def test_sshhook_transport_runs_and_uploads(monkeypatch, sshd_server, tmp_path):
    from airflow.providers.ssh.hooks.ssh import SSHHook

    from release.transport import ParamikoTransport

    conn_id = _conn(monkeypatch, sshd_server, _host_key(sshd_server))
    t = ParamikoTransport(SSHHook(ssh_conn_id=conn_id).get_conn())
    try:
        res = t.run(["echo", "a b;c"])  # quoted by shlex.join: one argument, no command injection
        assert res.returncode == 0 and res.stdout.strip() == "a b;c"
        src = tmp_path / "f.bin"
        src.write_bytes(b"x" * 100_000)
        t.upload(src, str(tmp_path / "copy.bin"))
        assert (tmp_path / "copy.bin").read_bytes() == src.read_bytes()
    finally:
        t.close()


def test_sshhook_refuses_wrong_host_key(monkeypatch, sshd_server, tmp_path):
    from airflow.providers.ssh.hooks.ssh import SSHHook

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    wrong = " ".join((tmp_path / "k.pub").read_text().split()[:2])
    conn_id = _conn(monkeypatch, sshd_server, wrong)
    with pytest.raises(Exception, match="(?i)host key|not found|BadHostKey"):
        SSHHook(ssh_conn_id=conn_id, conn_timeout=5).get_conn()


def test_inventory_ssh_conn_id_uses_the_hook(monkeypatch, sshd_server, tmp_path):
    import yaml
    from hailo_airflow.steps import ssh_client_factory_for

    from release.pipeline_env import PipelineEnv

    conn_id = _conn(monkeypatch, sshd_server, _host_key(sshd_server))
    devices = {"devices": {"pi-hook": {"transport": "ssh", "ssh_conn_id": conn_id, "agent_root": "/opt/hailo",
                                       "gate_url": "http://127.0.0.1:9000"}}}
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(devices))
    monkeypatch.setenv("HAILO_DEVICES_FILE", str(tmp_path / "d.yaml"))
    monkeypatch.setenv("HAILO_PIPELINE_ROOT", str(tmp_path / "root"))
    factory = ssh_client_factory_for(PipelineEnv.from_env(), "pi-hook")
    client = factory()
    try:
        _, out, _ = client.exec_command("echo hook-ok")
        assert out.read().decode().strip() == "hook-ok"
    finally:
        client.close()
    assert ssh_client_factory_for(PipelineEnv.from_env(), "local") is None
    # The fleet DAG's halt gets the same per-device factories: the hook for a device behind a
    # connection, None (its own host/key/known_hosts) for the others.
    from hailo_airflow.fleet_steps import _device_factories

    factories = _device_factories(PipelineEnv.from_env())
    assert factories("local") is None
    client = factories("pi-hook")()
    try:
        _, out, _ = client.exec_command("echo halt-ok")
        assert out.read().decode().strip() == "halt-ok"
    finally:
        client.close()


@pytest.mark.parametrize(
    ("error", "fatal"),
    [(InvalidInput("bad tag"), True), (IntegrityError("sha mismatch"), True), (ArtifactExists("published"), True),
     (StepFailed("registry down"), False)],
)
def test_release_errors_map_to_airflow_failures(error, fatal):
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
    from hailo_airflow.errors import release_errors_as_airflow_failures

    with pytest.raises(AirflowException) as exc, release_errors_as_airflow_failures():
        raise error
    assert isinstance(exc.value, AirflowFailException) is fatal
    assert str(error) in str(exc.value) and type(error).__name__ in str(exc.value)
