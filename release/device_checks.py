"""The device agent's files and checks: pointers, lease, journal and events on disk, tag grammar,
signature and checksum verification, the Hailo preflight, bundle staging, durable writes and the
agent lock.

Standard library only, shipped beside device_agent.py into the agent's bin/ on the device; it must
not import anything from the `release` package.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
RESERVED = {"current", "previous", "latest", "committed", "last-known-good"}
REQUIRED_FILES = ("manifest.json", "manifest.json.sig", "model.hef", "model.onnx")
EXIT_FAIL, EXIT_USAGE, EXIT_INTEGRITY, EXIT_PREFLIGHT, EXIT_LOCKED, EXIT_UNHEALTHY, EXIT_LEASE = 1, 2, 3, 4, 5, 6, 7
LKG = "last-known-good"


class AgentError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_tag(tag: str) -> str:
    if not TAG_RE.fullmatch(tag) or ".." in tag or tag in RESERVED:
        raise AgentError(EXIT_USAGE, f"invalid release tag {tag!r}")
    return tag


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def crash_point(name: str) -> None:
    """Test hook: HAILO_AGENT_CRASH_AT=<name> kills the agent here, like a power cut."""
    if os.environ.get("HAILO_AGENT_CRASH_AT") == name:
        os._exit(137)


def lock(root: Path, timeout: float) -> Any:
    """The agent lock (flock on agent.lock), waited for up to ``timeout`` seconds; None if not had."""
    fh = open(root / "agent.lock", "a+")  # noqa: SIM115 - held for the whole process
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fh
        except BlockingIOError:
            if time.monotonic() >= deadline:
                fh.close()
                return None
            time.sleep(0.2)



class Checks:
    """The agent's files (pointers, lease, journal, events) and what it checks before it touches a
    pointer; mixed into the Agent."""

    root: Path
    releases: Path
    cfg: dict[str, Any]

    # -- pointers, lease, journal, events ---------------------------------------------------
    def pointer(self, name: str) -> str | None:
        link = self.root / name
        return Path(os.readlink(link)).name if link.is_symlink() else None

    def set_pointer(self, name: str, tag: str | None) -> None:
        link = self.root / name
        if tag is None:
            link.unlink(missing_ok=True)
            fsync_dir(self.root)
            return
        tmp = self.root / f".{name}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(Path("releases") / tag, tmp)
        os.replace(tmp, link)  # rename(2) over the old link: atomic
        fsync_dir(self.root)

    def _read_json(self, name: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads((self.root / name).read_text())
            return data
        except FileNotFoundError:
            return None
        except ValueError:
            # A torn write means the operation it announces never started (it is written first).
            return {"op": "unknown"}

    def journal(self) -> dict[str, Any] | None:
        return self._read_json("journal.json")

    def lease(self) -> dict[str, Any] | None:
        return self._read_json("lease.json")

    def write_json(self, name: str, entry: dict[str, Any]) -> None:
        write_atomic(self.root / name, json.dumps(entry).encode())

    def remove(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)
        fsync_dir(self.root)

    def event(self, event: str, tag: str | None, detail: str, **extra: Any) -> None:
        line = json.dumps({"at": time.time(), "event": event, "tag": tag, "detail": detail, **extra})
        with open(self.root / "events.jsonl", "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def events(self, limit: int = 50) -> list[dict[str, Any]]:
        try:
            lines = (self.root / "events.jsonl").read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines[-limit:]:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a torn last line after a power cut
        return out

    # -- commands as configuration ------------------------------------------------------------
    def run_configured(self, key: str, values: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str] | None:
        argv = self.cfg.get(key)
        if not argv:
            return None
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise AgentError(EXIT_USAGE, f"agent.json: {key} must be a list of strings (argv)")
        # Placeholders are replaced inside single argv elements; values are validated tags and
        # paths under the release root, and nothing here goes through a shell.
        expanded = [a.format_map(values) for a in argv]
        # The release identity also goes to the command's environment: docker-compose.pi.yaml
        # reads HAILO_RUNTIME_IMAGE (repo@digest), HEF_SHA256 and CONFIG_VERSION from it.
        env = dict(os.environ)
        env.update({f"HAILO_RELEASE_{k.upper()}": v for k, v in values.items()})
        for name in ("HAILO_RUNTIME_IMAGE", "HEF_SHA256", "CONFIG_VERSION"):
            if values.get(name.lower()):
                env[name] = values[name.lower()]
        return subprocess.run(expanded, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=env)

    # -- verification -----------------------------------------------------------------------
    def manifest(self, tag: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.releases / tag / "manifest.json").read_bytes())
        return data

    def verify(self, tag: str) -> dict[str, Any]:
        rel = self.releases / check_tag(tag)
        if not rel.is_dir():
            raise AgentError(EXIT_INTEGRITY, f"release {tag} is not on the device ({rel})")
        missing = [f for f in REQUIRED_FILES if not (rel / f).is_file()]
        if missing:
            raise AgentError(EXIT_INTEGRITY, f"release {tag}: bundle incomplete, missing {missing}")
        pub = self.cfg.get("public_key")
        if not pub or not Path(pub).is_file():
            raise AgentError(EXIT_INTEGRITY, "agent.json: public_key is not set or missing; refusing unsigned releases")
        res = subprocess.run(
            ["openssl", "dgst", "-sha256", "-verify", pub, "-signature", str(rel / "manifest.json.sig"), str(rel / "manifest.json")],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )
        if res.returncode != 0:
            raise AgentError(EXIT_INTEGRITY, f"release {tag}: manifest signature does not verify ({res.stdout.strip() or res.stderr.strip()})")
        manifest = self.manifest(tag)
        if manifest.get("release_tag") != tag and manifest.get("points_to_release_tag") != tag:
            raise AgentError(EXIT_INTEGRITY, f"release {tag}: manifest is for {manifest.get('release_tag')!r}")
        expected = {"model.hef": manifest["hef"]["hef_sha256"], "model.onnx": manifest["onnx"]["sha256"]}
        for name, digest in expected.items():
            actual = sha256_file(rel / name)
            if actual != digest:
                raise AgentError(EXIT_INTEGRITY, f"release {tag}: {name} sha256 {actual} != signed manifest {digest}")
        return manifest

    def preflight(self, tag: str, manifest: dict[str, Any]) -> None:
        values = self.values(tag, manifest)
        res = self.run_configured("identify_command", values, timeout=30)
        if res is not None:
            match = re.search(r"Device Architecture:\s*(\S+)", res.stdout)
            if res.returncode != 0 or match is None:
                raise AgentError(EXIT_PREFLIGHT, f"cannot identify the Hailo device: {res.stderr.strip()[-200:]}")
            device_arch = match.group(1).lower().replace("_", "")
            hef_arch = manifest["hef"]["hw_arch"]
            if device_arch != hef_arch:
                raise AgentError(EXIT_PREFLIGHT, f"HEF is for {hef_arch} but the device is {device_arch}")
        res = self.run_configured("driver_version_command", values, timeout=30)
        if res is not None:
            driver = res.stdout.strip()
            # The image's HailoRT is what talks to the driver; the HEF's is what it was compiled for.
            want = (manifest.get("image") or {}).get("hailort_version") or manifest["hef"].get("hailort_version")
            if want and driver != want:
                raise AgentError(
                    EXIT_PREFLIGHT,
                    f"HailoRT {want} in the release does not match the host driver {driver!r} (HAILO_INVALID_DRIVER_VERSION)",
                )

    def values(self, tag: str, manifest: dict[str, Any] | None = None) -> dict[str, str]:
        image = ""
        if manifest and manifest.get("image", {}).get("digest"):
            image = f"{manifest['image']['repository']}@{manifest['image']['digest']}"
        values = {"tag": tag, "release_dir": str(self.releases / tag), "root": str(self.root), "image": image,
                  "hailo_runtime_image": image, "hef_sha256": "", "config_version": ""}
        if manifest:
            values["hef_sha256"] = manifest["hef"]["hef_sha256"]
            values["config_version"] = manifest["config_version"]
        return values

    def stage(self, tag: str) -> dict[str, Any]:
        """Check an uploaded bundle against its own sha256sum list and mark it complete.

        This catches a truncated or mixed upload early; the signed manifest is checked again by
        `activate`, which is what the release's integrity rests on.
        """
        rel = self.releases / check_tag(tag)
        missing = [f for f in (*REQUIRED_FILES, "hef_sha256sum.txt") if not (rel / f).is_file()]
        if missing:
            raise AgentError(EXIT_INTEGRITY, f"release {tag}: bundle incomplete, missing {missing}")
        checked = []
        for line in (rel / "hef_sha256sum.txt").read_text().splitlines():
            if not line.strip():
                continue
            match = re.fullmatch(r"([0-9a-f]{64}) [ *]([A-Za-z0-9_.-]+)", line.strip())
            if match is None or match.group(2).startswith("."):
                raise AgentError(EXIT_INTEGRITY, f"release {tag}: malformed line in hef_sha256sum.txt: {line[:80]!r}")
            digest, name = match.groups()
            if not (rel / name).is_file() or sha256_file(rel / name) != digest:
                raise AgentError(EXIT_INTEGRITY, f"release {tag}: {name} does not match hef_sha256sum.txt")
            checked.append(name)
        if not checked:
            raise AgentError(EXIT_INTEGRITY, f"release {tag}: hef_sha256sum.txt lists no files")
        write_atomic(rel / ".staged", json.dumps({"checked": checked}).encode())
        return {"staged": tag, "checked": checked}
