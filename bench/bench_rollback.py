"""Time to roll back (command → healthy previous release) on the loopback testbed: a real sshd
plays the Pi, with the device agent and a real sidecar process behind it."""

from __future__ import annotations

import getpass
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.table import Row

REPO = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sshd(d: Path) -> tuple[subprocess.Popen[bytes], int, Path, Path]:
    host_key, client_key = d / "host_key", d / "client_key"
    for key in (host_key, client_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = _port()
    (d / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {host_key}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PidFile {d / 'sshd.pid'}\nPasswordAuthentication no\nUsePAM no\nStrictModes no\n"
        "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\nLogLevel ERROR\n")
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    pub = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
    return proc, port, client_key, d / "known_hosts"


def rows() -> list[Row]:
    sys.path.insert(0, str(REPO))
    from release import deploy as dep
    from release.transport import ParamikoTransport, connect_ssh
    from tests.fixtures.testbed import Testbed

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "ssh").mkdir()
        sshd, ssh_port, key, known = _sshd(root / "ssh")
        bed = Testbed(root / "bed")
        try:
            v1, v2 = bed.build("v1", "cfg-1"), bed.build("v2", "cfg-2")
            device = bed.device("pi-bench", "ssh", _port())
            t = ParamikoTransport(connect_ssh("127.0.0.1", ssh_port, getpass.getuser(), key, known))
            dep.deploy_canary(t, device, v1, "v1", bed.public_key, 600)
            dep.commit(t, device, "v1")
            canary = dep.deploy_canary(t, device, v2, "v2", bed.public_key, 600)
            dep.commit(t, device, "v2")
            times = []
            for i in range(5):
                target = "v1" if i % 2 == 0 else "v2"
                t0 = time.perf_counter()
                dep.rollback(t, device, target)
                times.append(time.perf_counter() - t0)
            t.close()
        finally:
            bed.stop_sidecars()
            sshd.terminate()
    med, worst = statistics.median(times), max(times)
    return [Row("rollback to healthy previous (ssh, loopback)", med, "s", "< 5", worst < 5,
                f"median of 5, worst {worst:.2f}s: verify, switch, restart, /readyz + identity"),
            Row("canary deploy to healthy (ssh, loopback)", canary.total_s, "s", "", None,
                f"agent install + upload {canary.upload_s:.2f}s (incl. stage), activate {canary.activate_s:.2f}s")]
