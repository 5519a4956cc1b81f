"""The release ledger: an append-only, hash-chained log per device.

It answers what runs where and since when, who or what triggered each change, and why each
rollback happened. Every entry carries the sha256 of the previous one, so an edited or deleted
line breaks the chain and `verify()` says where.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from release.checksums import sha256_bytes
from release.errors import IntegrityError
from release.identifiers import DeviceName

Event = Literal["deploy", "promote", "rollback", "hold", "failure"]
GENESIS = "0" * 64


class LedgerEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    seq: int
    at: dt.datetime
    device: str
    event: Event
    tag: str | None
    release_counter: int | None = None
    triggered_by: str
    reason: str = ""
    prev_hash: str
    hash: str = ""

    def body_bytes(self) -> bytes:
        return json.dumps(self.model_dump(mode="json", exclude={"hash"}), sort_keys=True, separators=(",", ":")).encode()


class Ledger:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, device: str) -> Path:
        return self.root / f"{DeviceName(device).value}.jsonl"

    def entries(self, device: str) -> list[LedgerEntry]:
        path = self._path(device)
        if not path.is_file():
            return []
        return [LedgerEntry.model_validate_json(line) for line in path.read_text(encoding="utf-8").splitlines() if line]

    def append(
        self,
        device: str,
        event: Event,
        *,
        tag: str | None,
        triggered_by: str,
        reason: str = "",
        release_counter: int | None = None,
    ) -> LedgerEntry:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self._path(device)
        with open(path, "a+", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # concurrent writers append in turn, never interleaved
            fh.seek(0)
            lines = [line for line in fh.read().splitlines() if line]
            prev = LedgerEntry.model_validate_json(lines[-1]) if lines else None
            entry = LedgerEntry(
                seq=(prev.seq + 1) if prev else 1,
                at=dt.datetime.now(dt.UTC),
                device=device,
                event=event,
                tag=tag,
                release_counter=release_counter,
                triggered_by=triggered_by,
                reason=reason,
                prev_hash=prev.hash if prev else GENESIS,
            )
            entry = entry.model_copy(update={"hash": sha256_bytes(entry.body_bytes())})
            fh.write(entry.model_dump_json() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return entry

    def verify(self, device: str) -> int:
        """Check the hash chain; return the number of entries or raise IntegrityError naming the line."""
        prev = GENESIS
        entries = self.entries(device)
        for i, entry in enumerate(entries, 1):
            if entry.prev_hash != prev or entry.hash != sha256_bytes(entry.body_bytes()) or entry.seq != i:
                raise IntegrityError(f"ledger of {device}: entry {i} was altered or the chain is broken")
            prev = entry.hash
        return len(entries)

    def current(self, device: str) -> LedgerEntry | None:
        """The entry that put the running release in place (last deploy/rollback that succeeded)."""
        for entry in reversed(self.entries(device)):
            if entry.event in ("deploy", "rollback", "promote"):
                return entry
        return None

    def history(self, device: str) -> list[LedgerEntry]:
        """Every entry for the device, oldest first, after checking the hash chain."""
        self.verify(device)
        return self.entries(device)
