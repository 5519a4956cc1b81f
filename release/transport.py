"""How the orchestrator reaches a device: run an argv, upload a file (verified), close.

`LocalTransport` targets this machine (the embedded-default demo); `ParamikoTransport` takes an
already-connected paramiko SSHClient — from the Airflow SSH provider's hook in the DAG, or from
`connect_ssh` (strict host-key checking against a known_hosts file; never auto-add) in the CLI.
Remote commands are built with shlex.join over validated argv: no user text is ever spliced
into a shell string unquoted.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from release.checksums import sha256_file
from release.errors import IntegrityError, StepFailed

if TYPE_CHECKING:
    import paramiko


@dataclass(frozen=True)
class RemoteResult:
    returncode: int
    stdout: str
    stderr: str


class Transport(Protocol):
    def run(self, argv: list[str], timeout: float = 120.0) -> RemoteResult: ...
    def upload(self, local: Path, remote: str) -> None: ...
    def download(self, remote: str, local: Path) -> None: ...
    def close(self) -> None: ...


class LocalTransport:
    def run(self, argv: list[str], timeout: float = 120.0) -> RemoteResult:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise StepFailed(f"`{argv[0]}` timed out after {timeout:.0f}s on the local device") from None
        return RemoteResult(proc.returncode, proc.stdout, proc.stderr)

    def upload(self, local: Path, remote: str) -> None:
        dest = Path(remote)
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        shutil.copyfile(local, part)
        expected = sha256_file(local)
        if sha256_file(part) != expected:
            part.unlink(missing_ok=True)
            raise IntegrityError(f"upload of {local} to {dest}: checksum mismatch after copy")
        os.replace(part, dest)

    def download(self, remote: str, local: Path) -> None:
        self.upload(Path(remote), str(local))

    def close(self) -> None:
        return None


def connect_ssh(host: str, port: int, user: str, key_file: Path, known_hosts: Path, timeout: float = 10.0) -> paramiko.SSHClient:
    """A paramiko client that refuses unknown or changed host keys."""
    import paramiko

    if not known_hosts.is_file():
        raise StepFailed(f"known_hosts file {known_hosts} is missing; host-key checking is never disabled")
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            hostname=host, port=port, username=user, key_filename=str(key_file), timeout=timeout,
            allow_agent=False, look_for_keys=False, banner_timeout=timeout, auth_timeout=timeout,
        )
    except paramiko.SSHException as exc:
        raise StepFailed(f"ssh {user}@{host}:{port}: {exc}") from None
    except OSError as exc:
        raise StepFailed(f"ssh {user}@{host}:{port}: cannot connect: {exc}") from None
    return client


class ParamikoTransport:
    CHUNK = 256 * 1024

    def __init__(self, client: paramiko.SSHClient, retries: int = 3) -> None:
        self.client = client
        self.retries = retries

    def run(self, argv: list[str], timeout: float = 120.0) -> RemoteResult:
        import paramiko

        command = shlex.join(argv)
        try:
            _, stdout, stderr = self.client.exec_command(command, timeout=timeout)
            code = stdout.channel.recv_exit_status()
            return RemoteResult(code, stdout.read().decode(errors="replace"), stderr.read().decode(errors="replace"))
        except (paramiko.SSHException, OSError, TimeoutError) as exc:
            raise StepFailed(f"remote command `{argv[0]} ...` failed over ssh: {exc}") from None

    def _remote_sha256(self, path: str) -> str | None:
        res = self.run(["sha256sum", "--", path], timeout=120)
        return res.stdout.split()[0] if res.returncode == 0 and res.stdout else None

    def upload(self, local: Path, remote: str) -> None:
        """Upload to REMOTE.part (resuming a partial one), verify sha256 on the device, rename."""
        import paramiko

        expected = sha256_file(local)
        size = local.stat().st_size
        part = remote + ".part"
        last: Exception | None = None
        for attempt in range(1, self.retries + 1):
            try:
                sftp = self.client.open_sftp()
                try:
                    try:
                        offset = sftp.stat(part).st_size or 0
                    except FileNotFoundError:
                        offset = 0
                    if offset > size or (offset and not self._prefix_matches(local, part, offset)):
                        sftp.remove(part)  # not a prefix of this file: start over instead of resuming
                        offset = 0
                    with open(local, "rb") as fh, sftp.open(part, "ab" if offset else "wb") as out:
                        fh.seek(offset)
                        out.set_pipelined(True)
                        while chunk := fh.read(self.CHUNK):
                            out.write(chunk)
                    actual = self._remote_sha256(part)
                    if actual != expected:
                        sftp.remove(part)  # a bad prefix cannot be resumed: start over next attempt
                        raise IntegrityError(f"upload of {local.name}: device has sha256 {actual}, expected {expected}")
                    sftp.posix_rename(part, remote)
                    return
                finally:
                    sftp.close()
            except (paramiko.SSHException, OSError, IntegrityError) as exc:
                last = exc
                time.sleep(min(0.5 * attempt, 2.0))
        raise StepFailed(f"upload of {local} to {remote} failed after {self.retries} attempts: {last}")

    def _prefix_matches(self, local: Path, part: str, length: int) -> bool:
        with open(local, "rb") as fh:
            want = hashlib.sha256(fh.read(length)).hexdigest()
        # Constant script; the length and path arrive as positional parameters, never spliced in.
        res = self.run(["sh", "-c", 'head -c "$1" -- "$2" | sha256sum', "sh", str(length), part], timeout=120)
        return res.returncode == 0 and res.stdout.split()[:1] == [want]

    def download(self, remote: str, local: Path) -> None:
        """Fetch REMOTE to LOCAL.part, check it against the device's sha256, rename."""
        import paramiko

        expected = self._remote_sha256(remote)
        if expected is None:
            raise StepFailed(f"download of {remote}: cannot read it on the device")
        part = local.with_name(local.name + ".part")
        try:
            sftp = self.client.open_sftp()
            try:
                sftp.get(remote, str(part))
            finally:
                sftp.close()
        except (paramiko.SSHException, OSError) as exc:
            part.unlink(missing_ok=True)
            raise StepFailed(f"download of {remote} failed: {exc}") from None
        if sha256_file(part) != expected:
            part.unlink(missing_ok=True)
            raise IntegrityError(f"download of {remote}: local copy does not match the device's sha256 {expected}")
        os.replace(part, local)

    def close(self) -> None:
        self.client.close()
