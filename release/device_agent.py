#!/usr/bin/env python3
"""hailo device agent: activates, commits and rolls back releases on one device (the Pi).

Standard library only: it is copied to the device and run with the system python3. It must not
import anything from the `release` package.

Commit or roll back (Mender's model): `activate` starts a canary as *provisional*, under a lease
with a deadline. Only `commit` makes it last-known-good. If the lease runs out before a commit —
orchestrator dead, worker killed, SSH cut, build host rebooted — the agent restores the
last-known-good release by itself: `activate` starts a detached watchdog (its own session, so a
dropped SSH session cannot take it down) that wakes at the deadline and runs `check-lease`; every
other command runs it first too, so a device that rebooted converges at the next contact.

Layout under --root (default /opt/hailo):
  releases/<tag>/          uploaded bundle: manifest.json, manifest.json.sig, model.onnx, model.hef, ...
  current   -> releases/<tag>   what runs now
  committed -> releases/<tag>   last-known-good: the last committed release (never a provisional one)
  previous  -> releases/<tag>   the committed release before `committed` (on-call "previous")
  lease.json               the provisional canary: tag, deadline, what to restore
  journal.json             write-ahead intent of an unfinished switch (fsync'd)
  events.jsonl             what the agent did on its own account (lease expiry, recovery, commits)
  agent.json               configuration (public key, restart/stop/pre-pull/preflight commands, health URL)
  agent.lock               one operation at a time (flock)

Every command first runs `recover` (an unfinished switch in the journal is undone) and then the
lease check. Output: one JSON object on stdout.

Signatures: the standard library has no ECDSA, so the manifest's ECDSA P-256 signature is checked
with `openssl dgst -sha256 -verify PUB -signature SIG manifest.json` (argv, no shell); openssl
ships with Raspberry Pi OS. The HEF and ONNX sha256 are then checked against the signed manifest.

Commands: stage, verify, activate TAG --lease-s N, extend TAG --lease-s N, commit TAG, rollback --to TAG|last-known-good
[--expect-hef SHA256], status, recover, check-lease, watchdog, load (the gate's load on the device: device_load.py).

Exit codes: 0 ok · 1 failure · 2 usage / bad tag · 3 integrity (checksum or signature) ·
4 preflight refused · 5 another operation holds the lock · 6 new release unhealthy, rolled back ·
7 the lease on this canary ran out: it was rolled back.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Shipped as sibling files in the same bin/ directory; -I (isolated mode) drops the script's
# directory from sys.path, so it is put back explicitly. mypy sees the package modules.
if TYPE_CHECKING:
    from . import device_checks, device_load
else:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import device_checks
    import device_load

EXIT_FAIL, EXIT_INTEGRITY, EXIT_LEASE = device_checks.EXIT_FAIL, device_checks.EXIT_INTEGRITY, device_checks.EXIT_LEASE
EXIT_LOCKED, EXIT_PREFLIGHT = device_checks.EXIT_LOCKED, device_checks.EXIT_PREFLIGHT
EXIT_UNHEALTHY, EXIT_USAGE, LKG = device_checks.EXIT_UNHEALTHY, device_checks.EXIT_USAGE, device_checks.LKG
Checks = device_checks.Checks
AgentError, check_tag = device_checks.AgentError, device_checks.check_tag
crash_point, lock = device_checks.crash_point, device_checks.lock

__all__ = ["EXIT_FAIL", "EXIT_INTEGRITY", "EXIT_LEASE", "EXIT_LOCKED", "EXIT_PREFLIGHT", "EXIT_UNHEALTHY", "EXIT_USAGE",
           "AgentError", "check_tag", "main"]

class Agent(Checks):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.releases = root / "releases"
        cfg_path = root / "agent.json"
        self.cfg: dict[str, Any] = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}

    # -- health, start, stop ------------------------------------------------------------------
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

    @property
    def health_timeout(self) -> float:
        return float(self.cfg.get("health_timeout_s", 30))

    def restart(self, tag: str) -> None:
        res = self.run_configured("restart_command", self.values(tag, self.manifest(tag)))
        if res is not None and res.returncode != 0:
            raise AgentError(EXIT_FAIL, f"restart command failed ({res.returncode}): {res.stderr.strip()[-300:]}")

    def stop(self) -> None:
        """Stop the sidecar: what "restore" means on a device that has no committed release yet."""
        res = self.run_configured("stop_command", {"root": str(self.root)}, timeout=120)
        if res is not None and res.returncode != 0:
            raise AgentError(EXIT_FAIL, f"stop command failed ({res.returncode}): {res.stderr.strip()[-300:]}")

    def switch_to(self, tag: str | None) -> tuple[bool | None, str]:
        """Point `current` at ``tag`` (None: nothing runs) and start it; (healthy, detail)."""
        self.set_pointer("current", tag)
        crash_point("after-switch")
        if tag is None:
            self.stop()
            return None, "no committed release: sidecar stopped"
        try:
            self.restart(tag)
            return self.wait_healthy(self.manifest(tag), self.health_timeout)
        except (AgentError, subprocess.SubprocessError, OSError, ValueError, KeyError) as exc:
            return False, str(exc)

    # -- recovery and the lease -------------------------------------------------------------
    def recover(self) -> dict[str, Any]:
        entry = self.journal()
        if entry is None:
            return {"recovered": False}
        if entry.get("op") == "unknown":
            # Torn journal write: the pointers were never touched (the journal comes first).
            self.remove("journal.json")
            return {"recovered": True, "restored": self.pointer("current"), "restored_healthy": None, "interrupted": "unknown"}
        good = entry.get("restore_current")
        self.set_pointer("committed", entry.get("restore_committed", self.pointer("committed")))
        self.set_pointer("previous", entry.get("restore_previous"))
        healthy, _ = self.switch_to(good)
        self.remove("lease.json")
        self.remove("journal.json")
        self.event("recovered", good, f"interrupted {entry.get('op')} of {entry.get('tag')} undone")
        return {"recovered": True, "restored": good, "restored_healthy": healthy, "interrupted": entry.get("op")}

    def check_lease(self) -> dict[str, Any]:
        lease = self.lease()
        if lease is None:
            return {"lease": None}
        tag = lease.get("tag")
        if tag is None or self.pointer("current") != tag:
            self.remove("lease.json")  # a torn or stale lease: the canary it covered no longer runs
            return {"lease": None, "dropped_stale_lease": tag}
        remaining = float(lease["deadline"]) - time.time()
        if remaining > 0:
            return {"lease": lease, "remaining_s": round(remaining, 3)}
        good = self.pointer("committed")
        self.write_json("journal.json", {"op": "lease-expired", "tag": tag, "restore_current": good,
                                         "restore_committed": good, "restore_previous": self.pointer("previous")})
        healthy, detail = self.switch_to(good)
        self.remove("lease.json")
        self.remove("journal.json")
        reason = f"lease on provisional {tag} ran out {-remaining:.1f}s ago without a commit; restored {good or 'nothing'}"
        self.event("lease_expired", tag, reason, restored=good, restored_healthy=healthy)
        return {"lease": None, "expired": tag, "restored": good, "restored_healthy": healthy, "detail": detail}

    def spawn_watchdog(self) -> None:
        # Its own session and no inherited descriptors: neither the SSH session ending (SIGHUP) nor
        # the orchestrator dying reaches it. It exits once the lease is gone.
        subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--root", str(self.root), "watchdog"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True,
        )

    # -- operations -------------------------------------------------------------------------
    def activate(self, tag: str, lease_s: float) -> dict[str, Any]:
        t0 = time.monotonic()
        manifest = self.verify(tag)
        self.preflight(tag, manifest)
        if manifest.get("image", {}).get("digest"):
            res = self.run_configured("prepull_command", self.values(tag, manifest))
            if res is not None and res.returncode != 0:
                raise AgentError(EXIT_FAIL, f"pre-pull of {self.values(tag, manifest)['image']} failed: {res.stderr.strip()[-300:]}")
        current, committed, lease = self.pointer("current"), self.pointer("committed"), self.lease()
        if current == tag and (lease or {}).get("tag") == tag:
            still_up, _ = self.wait_healthy(manifest, self.health_timeout)
            if still_up:  # a retried activate of the same canary: same lease, nothing to switch
                return {"activated": tag, "healthy": True, "detail": "already the provisional canary",
                        "last_known_good": committed, "lease": lease, "seconds": time.monotonic() - t0}
        elif current is not None and current != committed:
            raise AgentError(EXIT_FAIL, f"device runs provisional {current} (lease {lease}); commit or roll it back first")
        if tag == committed:
            raise AgentError(EXIT_USAGE, f"{tag} is already the committed release; use rollback --to {tag} to restart it")
        self.write_json("journal.json", {"op": "activate", "tag": tag, "restore_current": committed,
                                         "restore_committed": committed, "restore_previous": self.pointer("previous")})
        crash_point("after-journal")
        # The lease covers the start-up too: a deadline of health timeout + lease from now, moved to
        # lease from now once the canary is healthy (the gate runs after that).
        self.write_json("lease.json", {"tag": tag, "restore": committed, "lease_s": lease_s,
                                       "deadline": time.time() + self.health_timeout + lease_s})
        self.spawn_watchdog()
        healthy, detail = self.switch_to(tag)
        if healthy:
            deadline = time.time() + lease_s
            self.write_json("lease.json", {"tag": tag, "restore": committed, "lease_s": lease_s, "deadline": deadline})
            self.remove("journal.json")
            self.event("activated", tag, f"provisional, lease {lease_s:.0f}s", last_known_good=committed)
            return {"activated": tag, "healthy": True, "last_known_good": committed, "previous": committed,
                    "lease": {"deadline": deadline, "lease_s": lease_s}, "seconds": time.monotonic() - t0}
        restored = self.recover()
        raise AgentError(EXIT_UNHEALTHY, f"release {tag} did not become healthy ({detail}); restored {restored.get('restored')}")

    def commit(self, tag: str) -> dict[str, Any]:
        check_tag(tag)
        committed = self.pointer("committed")
        if committed == tag and self.pointer("current") == tag:
            return {"committed": tag, "detail": "already committed"}
        lease = self.lease() or {}
        if self.pointer("current") != tag or lease.get("tag") != tag:
            expired = [e for e in self.events() if e.get("event") == "lease_expired" and e.get("tag") == tag]
            if expired:
                raise AgentError(EXIT_LEASE, f"cannot commit {tag}: {expired[-1]['detail']}")
            raise AgentError(EXIT_FAIL, f"cannot commit {tag}: current release is {self.pointer('current')}, not a provisional {tag}")
        self.write_json("journal.json", {"op": "commit", "tag": tag, "restore_current": tag, "restore_committed": tag,
                                         "restore_previous": committed})
        self.set_pointer("previous", committed)
        self.set_pointer("committed", tag)
        self.remove("lease.json")
        self.remove("journal.json")
        self.event("committed", tag, "commit from the orchestrator", previous=committed)
        return {"committed": tag, "previous": committed}

    def extend(self, tag: str, lease_s: float) -> dict[str, Any]:
        """Move the provisional canary's deadline to ``lease_s`` from now (a held release waits for a human)."""
        lease = self.lease() or {}
        if self.pointer("current") != check_tag(tag) or lease.get("tag") != tag:
            raise AgentError(EXIT_LEASE, f"cannot extend the lease of {tag}: it is not the provisional canary here")
        deadline = time.time() + lease_s
        self.write_json("lease.json", {**lease, "deadline": deadline, "lease_s": lease_s})
        self.event("lease_extended", tag, f"lease now {lease_s:.0f}s")
        return {"extended": tag, "lease": {"deadline": deadline, "lease_s": lease_s}}

    def rollback(self, to: str, expect_hef: str | None = None) -> dict[str, Any]:
        t0 = time.monotonic()
        target = self.pointer("committed") if to == LKG else check_tag(to)
        current = self.pointer("current")
        if target is None:
            if current is None:
                raise AgentError(EXIT_FAIL, "no committed (last-known-good) release on this device and nothing runs")
            if self.pointer("committed") is not None:
                raise AgentError(EXIT_FAIL, "cannot roll back to nothing while a committed release exists")
        manifest = self.verify(target) if target is not None else None
        if manifest is not None and expect_hef is not None and manifest["hef"]["hef_sha256"] != expect_hef:
            raise AgentError(EXIT_INTEGRITY, f"rollback target {target} has hef_sha256 {manifest['hef']['hef_sha256']}, "
                                             f"the store says {expect_hef}")
        committed, previous = self.pointer("committed"), self.pointer("previous")
        self.write_json("journal.json", {"op": "rollback", "tag": target, "restore_current": committed,
                                         "restore_committed": committed, "restore_previous": previous})
        healthy, detail = self.switch_to(target)
        if healthy is False:
            self.recover()
            raise AgentError(EXIT_UNHEALTHY, f"rollback target {target} did not become healthy ({detail})")
        # An explicit rollback target is a signed, committed release chosen from the store.
        self.set_pointer("committed", target)
        if previous == target:
            self.set_pointer("previous", None)
        self.remove("lease.json")
        self.remove("journal.json")
        self.event("rolled_back", target, f"from {current}", **{"from": current})
        return {"rolled_back_to": target, "from": current, "healthy": healthy, "seconds": time.monotonic() - t0}

    def status(self) -> dict[str, Any]:
        current = self.pointer("current")
        healthy, hef = False, None
        if current:
            manifest = self.manifest(current)
            hef = manifest["hef"]["hef_sha256"]
            healthy, _ = self.wait_healthy(manifest, 1.0)
        return {"current": current, "committed": self.pointer("committed"), "previous": self.pointer("previous"),
                "current_hef_sha256": hef, "healthy": healthy, "lease": self.lease(), "journal": self.journal(),
                "events": self.events(20)}


def watchdog(root: Path) -> int:
    """Sleep until the lease's deadline (re-read: a healthy canary moves it), then check it under the lock."""
    while True:
        agent = Agent(root)
        lease = agent.lease()
        if lease is None or "deadline" not in lease:
            return 0
        remaining = float(lease["deadline"]) - time.time()
        if remaining > 0:
            time.sleep(min(remaining + 0.2, 5.0))
            continue
        held = lock(root, 60.0)
        if held is None:
            continue  # a long operation holds the lock; it runs the lease check itself
        try:
            agent = Agent(root)
            agent.recover()
            agent.check_lease()
        finally:
            held.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="device_agent", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("/opt/hailo"))
    parser.add_argument("--lock-timeout", type=float, default=0.0, help="seconds to wait for another operation")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("stage", "verify", "commit"):
        sub.add_parser(name).add_argument("tag")
    for name, text in (("activate", "start TAG as a provisional canary under a lease"), ("extend", "extend its lease")):
        act = sub.add_parser(name, help=text)
        act.add_argument("tag")
        act.add_argument("--lease-s", type=float, required=True, help="seconds to commit in (once healthy)")
    rb = sub.add_parser("rollback")
    rb.add_argument("--to", default=LKG, help=f"release tag, or {LKG!r} (the committed release)")
    rb.add_argument("--expect-hef", help="refuse unless the target's signed hef_sha256 is this")
    for name in ("status", "recover", "check-lease", "watchdog"):
        sub.add_parser(name)
    device_load.add_parser(sub)
    args = parser.parse_args(argv)
    root: Path = args.root
    root.mkdir(parents=True, exist_ok=True)
    (root / "releases").mkdir(exist_ok=True)
    if args.cmd == "watchdog":
        return watchdog(root)
    if args.cmd == "load":  # read-only against the sidecar: no lock, a rollback or the watchdog never waits for it
        agent = Agent(root)
        return device_load.command(agent.cfg, args, agent.pointer("current"))
    held = lock(root, args.lock_timeout)
    if held is None:
        print(json.dumps({"error": "locked", "detail": "another release operation is running on this device"}))
        return EXIT_LOCKED
    agent = Agent(root)
    try:
        recovered = agent.recover()
        lease = agent.check_lease()
        if args.cmd == "verify":
            agent.verify(args.tag)
            out: dict[str, Any] = {"verified": args.tag}
        elif args.cmd == "stage":
            out = agent.stage(args.tag)
        elif args.cmd in ("activate", "extend"):
            if not 1 <= args.lease_s <= 7 * 86400:
                raise AgentError(EXIT_USAGE, f"--lease-s {args.lease_s} is outside 1..{7 * 86400}")
            run = agent.activate if args.cmd == "activate" else agent.extend
            out = run(check_tag(args.tag), args.lease_s)
        elif args.cmd == "commit":
            out = agent.commit(args.tag)
        elif args.cmd == "rollback":
            out = agent.rollback(args.to, args.expect_hef)
        elif args.cmd == "recover":
            out = recovered
        elif args.cmd == "check-lease":
            out = lease
        else:
            out = agent.status()
        if recovered.get("recovered") and args.cmd != "recover":
            out["recovered_first"] = recovered
        if lease.get("expired") and args.cmd != "check-lease":
            out["lease_expired_first"] = lease
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
