#!/usr/bin/env python3
"""hailo device agent: activates, promotes and rolls back releases on one device (the Pi).

Standard library only: it is copied to the device and run with the system python3. It must not
import anything from the `release` package.

Layout under --root (default /opt/hailo):
  releases/<tag>/          uploaded bundle: manifest.json, manifest.json.sig, model.onnx, model.hef, ...
  current  -> releases/<tag>   what runs now
  previous -> releases/<tag>   last-known-good, the rollback target
  journal.json             write-ahead intent of an unfinished switch (fsync'd)
  agent.json               configuration (public key, restart/pre-pull/preflight commands, health URL)
  agent.lock               one operation at a time (flock)

Every command first runs `recover`: an unfinished switch found in the journal (agent killed,
power lost, SSH dropped) is undone to the last-known-good release, so the device never stays in
a half state and a re-run converges. Output: one JSON object on stdout.

Signatures: the standard library has no ECDSA, so the manifest's ECDSA P-256 signature is checked
with `openssl dgst -sha256 -verify PUB -signature SIG manifest.json` (argv, no shell); openssl
ships with Raspberry Pi OS. The HEF and ONNX sha256 are then checked against the signed manifest.

Commands: stage, verify, activate, rollback [--to TAG|previous], promote, status, recover.

Exit codes: 0 ok · 1 failure · 2 usage / bad tag · 3 integrity (checksum or signature) ·
4 preflight refused · 5 another operation holds the lock · 6 new release unhealthy, rolled back.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
RESERVED = {"current", "previous", "latest"}
REQUIRED_FILES = ("manifest.json", "manifest.json.sig", "model.hef", "model.onnx")
EXIT_FAIL, EXIT_USAGE, EXIT_INTEGRITY, EXIT_PREFLIGHT, EXIT_LOCKED, EXIT_UNHEALTHY = 1, 2, 3, 4, 5, 6


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


class Agent:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.releases = root / "releases"
        cfg_path = root / "agent.json"
        self.cfg: dict[str, Any] = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}

    # -- pointers ---------------------------------------------------------------------------
    def pointer(self, name: str) -> str | None:
        link = self.root / name
        if not link.is_symlink():
            return None
        return Path(os.readlink(link)).name

    def set_pointer(self, name: str, tag: str | None) -> None:
        link = self.root / name
        if tag is None:
            link.unlink(missing_ok=True)
            return
        tmp = self.root / f".{name}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(Path("releases") / tag, tmp)
        os.replace(tmp, link)  # rename(2) over the old link: atomic
        fsync_dir(self.root)

    # -- journal ----------------------------------------------------------------------------
    @property
    def journal_path(self) -> Path:
        return self.root / "journal.json"

    def journal(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.journal_path.read_text())
            return data
        except FileNotFoundError:
            return None
        except ValueError:
            # A torn journal write means the switch never started (the journal is written first).
            return {"op": "unknown"}

    def write_journal(self, entry: dict[str, Any]) -> None:
        write_atomic(self.journal_path, json.dumps(entry).encode())

    def clear_journal(self) -> None:
        self.journal_path.unlink(missing_ok=True)
        fsync_dir(self.root)

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
        for key in ("HAILO_RUNTIME_IMAGE", "HEF_SHA256", "CONFIG_VERSION"):
            if values.get(key.lower()):
                env[key] = values[key.lower()]
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

    # -- health -----------------------------------------------------------------------------
    def wait_healthy(self, manifest: dict[str, Any], timeout: float) -> tuple[bool, str]:
        url = self.cfg.get("health_url", "http://127.0.0.1:9000").rstrip("/")
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                    ready = r.status == 200
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                    health = json.loads(r.read())
                if ready and health.get("hef_sha256") == manifest["hef"]["hef_sha256"] and health.get(
                    "config_version"
                ) == manifest["config_version"]:
                    return True, "healthy"
                last = f"serving hef {health.get('hef_sha256')} config {health.get('config_version')}"
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last = str(exc)
            time.sleep(0.2)
        return False, f"not healthy within {timeout:.0f}s: {last}"

    def restart(self, tag: str) -> None:
        res = self.run_configured("restart_command", self.values(tag, self.manifest(tag)))
        if res is not None and res.returncode != 0:
            raise AgentError(EXIT_FAIL, f"restart command failed ({res.returncode}): {res.stderr.strip()[-300:]}")

    # -- operations -------------------------------------------------------------------------
    def recover(self) -> dict[str, Any]:
        entry = self.journal()
        if entry is None:
            return {"recovered": False}
        if entry.get("op") == "unknown":
            # Torn journal write: the pointers were never touched (the journal comes first).
            self.clear_journal()
            return {"recovered": True, "restored": self.pointer("current"), "restored_healthy": None, "interrupted": "unknown"}
        good = entry.get("restore_current")
        self.set_pointer("current", good)
        self.set_pointer("previous", entry.get("restore_previous"))
        healthy = None
        if good:
            self.restart(good)
            healthy, _ = self.wait_healthy(self.manifest(good), float(self.cfg.get("health_timeout_s", 30)))
        self.clear_journal()
        return {"recovered": True, "restored": good, "restored_healthy": healthy, "interrupted": entry.get("op")}

    def activate(self, tag: str) -> dict[str, Any]:
        t0 = time.monotonic()
        manifest = self.verify(tag)
        self.preflight(tag, manifest)
        if manifest.get("image", {}).get("digest"):
            res = self.run_configured("prepull_command", self.values(tag, manifest))
            if res is not None and res.returncode != 0:
                raise AgentError(EXIT_FAIL, f"pre-pull of {self.values(tag, manifest)['image']} failed: {res.stderr.strip()[-300:]}")
        old_current, old_previous = self.pointer("current"), self.pointer("previous")
        if old_current == tag:
            healthy, detail = self.wait_healthy(manifest, float(self.cfg.get("health_timeout_s", 30)))
            if healthy:
                return {"activated": tag, "healthy": True, "detail": "already current", "seconds": time.monotonic() - t0}
        self.write_journal(
            {"op": "activate", "tag": tag, "restore_current": old_current, "restore_previous": old_previous}
        )
        crash_point("after-journal")
        # The running release is the last-known-good one unless it is the canary being replaced.
        new_previous = old_current if old_current and old_current != tag else old_previous
        self.set_pointer("previous", new_previous)
        self.set_pointer("current", tag)
        crash_point("after-switch")
        try:
            self.restart(tag)
            healthy, detail = self.wait_healthy(manifest, float(self.cfg.get("health_timeout_s", 30)))
        except (AgentError, subprocess.SubprocessError, OSError) as exc:
            healthy, detail = False, str(exc)
        if healthy:
            self.clear_journal()
            return {"activated": tag, "healthy": True, "previous": new_previous, "seconds": time.monotonic() - t0}
        restored = self.recover()
        raise AgentError(EXIT_UNHEALTHY, f"release {tag} did not become healthy ({detail}); restored {restored.get('restored')}")

    def rollback(self, to: str) -> dict[str, Any]:
        t0 = time.monotonic()
        target = self.pointer("previous") if to == "previous" else check_tag(to)
        if target is None:
            raise AgentError(EXIT_FAIL, "no previous (last-known-good) release on this device")
        manifest = self.verify(target)
        old_current, old_previous = self.pointer("current"), self.pointer("previous")
        self.write_journal({"op": "rollback", "tag": target, "restore_current": old_current, "restore_previous": old_previous})
        self.set_pointer("current", target)
        crash_point("after-switch")
        self.restart(target)
        healthy, detail = self.wait_healthy(manifest, float(self.cfg.get("health_timeout_s", 30)))
        if not healthy:
            self.recover()
            raise AgentError(EXIT_UNHEALTHY, f"rollback target {target} did not become healthy ({detail})")
        self.clear_journal()
        return {"rolled_back_to": target, "from": old_current, "healthy": True, "seconds": time.monotonic() - t0}

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

    def promote(self, tag: str) -> dict[str, Any]:
        if self.pointer("current") != check_tag(tag):
            raise AgentError(EXIT_FAIL, f"cannot promote {tag}: current release is {self.pointer('current')}")
        write_atomic(self.releases / tag / ".promoted", str(time.time()).encode())
        return {"promoted": tag}

    def status(self) -> dict[str, Any]:
        current = self.pointer("current")
        healthy = False
        if current:
            healthy, _ = self.wait_healthy(self.manifest(current), 1.0)
        return {"current": current, "previous": self.pointer("previous"), "healthy": healthy, "journal": self.journal()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="device_agent", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("/opt/hailo"))
    parser.add_argument("--lock-timeout", type=float, default=0.0, help="seconds to wait for another operation")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("stage", "verify", "activate", "promote"):
        sub.add_parser(name).add_argument("tag")
    sub.add_parser("rollback").add_argument("--to", default="previous")
    sub.add_parser("status")
    sub.add_parser("recover")
    args = parser.parse_args(argv)
    root: Path = args.root
    root.mkdir(parents=True, exist_ok=True)
    (root / "releases").mkdir(exist_ok=True)
    lock_fh = open(root / "agent.lock", "a+")  # noqa: SIM115 - held for the whole process
    deadline = time.monotonic() + args.lock_timeout
    while True:
        try:
            fcntl.flock(lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                print(json.dumps({"error": "locked", "detail": "another release operation is running on this device"}))
                return EXIT_LOCKED
            time.sleep(0.2)
    agent = Agent(root)
    try:
        recovered = agent.recover()
        if args.cmd == "verify":
            agent.verify(args.tag)
            out: dict[str, Any] = {"verified": args.tag}
        elif args.cmd == "stage":
            out = agent.stage(args.tag)
        elif args.cmd == "activate":
            out = agent.activate(check_tag(args.tag))
        elif args.cmd == "promote":
            out = agent.promote(args.tag)
        elif args.cmd == "rollback":
            out = agent.rollback(args.to)
        elif args.cmd == "recover":
            out = recovered
        else:
            out = agent.status()
        if recovered.get("recovered") and args.cmd != "recover":
            out["recovered_first"] = recovered
        print(json.dumps(out))
        return 0
    except AgentError as exc:
        print(json.dumps({"error": exc.code, "detail": str(exc)}))
        return exc.code
    except (OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
        print(json.dumps({"error": EXIT_FAIL, "detail": f"{type(exc).__name__}: {exc}"}))
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
