"""The release history: every state change of every release, append-only, in the artifact store.

One stream of create-only records (``records/history/<seq>.json``), each carrying the sha256 of
the one before it, so any worker on any host — and on-call without Airflow, from a mirror of the
store — reads the same history, and an edited or deleted record breaks the chain at a named seq.
Appends are optimistic: a record is created only if its sequence number is still free (a local
hard link, or GCS ``ifGenerationMatch=0``); the loser of a race re-reads and tries the next one.

What the history answers (the per-device ledger is a view of it):
- the state of a release (its last record), and its release counter (allocated once, on creation);
- a device's last-known-good: the release last committed on it (promoted, approved, or the target
  of a rollback), which is what every rollback restores;
- idempotency: a record with an idempotency key is written once, however often a callback re-runs.

Fleet rollouts add two kinds of records, both carrying ``detail["rollout_id"]``: the rollout's own
(``device`` None, states ``rollout_*``) and each device's lifecycle of the release within that
rollout. The release's own state (``state_of``) is read from the records without a rollout id, so a
fleet device's gate never changes what the canary recorded.

State changes are made through ``release.states``, never by appending here directly.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from release.checksums import sha256_bytes
from release.errors import IntegrityError, StepFailed
from release.store import MANIFEST_NAME, ArtifactStore

STREAM = "history"
# Every counter is reserved here first with a create-only record (``counters/<n>.json``): one
# reservation wins per number, so two processes or hosts (a group rollback beside a decision beside a
# build) never publish two entries under one counter.
COUNTER_STREAM = "counters"
GENESIS = "0" * 64
APPEND_ATTEMPTS = 50
# Records whose `to_state` makes their tag (or their `detail.restored`) the device's committed release.
COMMITTING_STATES = frozenset({"promoted"})
ROLLOUT_KEY = "rollout_id"


class HistoryRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    seq: int = Field(ge=1)
    at: dt.datetime
    release_tag: str
    device: str | None
    event: str
    from_state: str | None
    to_state: str
    release_counter: int | None = None
    actor: str
    reason: str = ""
    # What the device runs after this record, when it changed: {"restored": tag|None, "hef_sha256": …}.
    detail: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = None
    prev_hash: str
    hash: str = ""

    def body_bytes(self) -> bytes:
        return json.dumps(self.model_dump(mode="json", exclude={"hash"}), sort_keys=True, separators=(",", ":")).encode()


def _name(seq: int) -> str:
    return f"{seq:010d}.json"


class History:
    """A reader and appender of the store's history; records already read are kept (they are immutable)."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        self._records: list[HistoryRecord] = []

    def records(self) -> list[HistoryRecord]:
        """Every record, oldest first, after checking the hash chain."""
        names = self.store.list_records(STREAM)
        for name in names[len(self._records):]:
            raw = self.store.read_record(f"{STREAM}/{name}")
            try:
                record = HistoryRecord.model_validate_json(raw)
            except ValueError as exc:
                raise IntegrityError(f"history record {name} is not a valid record: {exc}") from None
            prev = self._records[-1].hash if self._records else GENESIS
            expected_seq = len(self._records) + 1
            if name != _name(expected_seq) or record.seq != expected_seq:
                raise IntegrityError(f"history: record {name} is out of sequence (expected {_name(expected_seq)})")
            if record.prev_hash != prev or record.hash != sha256_bytes(record.body_bytes()):
                raise IntegrityError(f"history: record {record.seq} was altered or the chain is broken there")
            self._records.append(record)
        return list(self._records)

    def append(self, *, new_counter: bool = False, **fields: Any) -> HistoryRecord:
        """Append one record (seq, time and hashes are filled in). With ``idempotency_key`` set, a
        record already carrying that key is returned instead of writing a second one. With
        ``new_counter`` the record takes a newly reserved release counter (``allocate_counter``), so
        two writers can never take the same counter, whichever of them wins the seq."""
        key = fields.get("idempotency_key")
        for _ in range(APPEND_ATTEMPTS):
            records = self.records()
            if key is not None:
                for existing in records:
                    if existing.idempotency_key == key:
                        return existing
            if new_counter and "release_counter" not in fields:  # reserved once, kept across seq retries
                fields["release_counter"] = self.allocate_counter()
            prev = records[-1] if records else None
            record = HistoryRecord(
                seq=(prev.seq + 1) if prev else 1, at=dt.datetime.now(dt.UTC),
                prev_hash=prev.hash if prev else GENESIS, **fields,
            )
            record = record.model_copy(update={"hash": sha256_bytes(record.body_bytes())})
            if self.store.create_record(f"{STREAM}/{_name(record.seq)}", record.model_dump_json().encode()):
                self._records.append(record)
                return record
        raise StepFailed(f"history: could not append after {APPEND_ATTEMPTS} attempts (too many concurrent writers)")

    # -- views ------------------------------------------------------------------------------
    def for_tag(self, tag: str) -> list[HistoryRecord]:
        return [r for r in self.records() if r.release_tag == tag]

    def release_records(self, tag: str) -> list[HistoryRecord]:
        """The release's own records (build, canary, on-call), without any fleet rollout's."""
        return [r for r in self.for_tag(tag) if ROLLOUT_KEY not in r.detail]

    def rollout_records(self, rollout_id: str) -> list[HistoryRecord]:
        """Every record of one fleet rollout: its own (device None) and its devices' lifecycles."""
        return [r for r in self.records() if r.detail.get(ROLLOUT_KEY) == rollout_id]

    def device_records(self, tag: str, device: str, rollout_id: str) -> list[HistoryRecord]:
        """One device's lifecycle of ``tag`` within one rollout, oldest first."""
        return [r for r in self.rollout_records(rollout_id) if r.device == device and r.release_tag == tag]

    def state_of(self, tag: str) -> str | None:
        own = self.release_records(tag)
        return own[-1].to_state if own else None

    def counter_of(self, tag: str) -> int | None:
        return next((r.release_counter for r in self.for_tag(tag) if r.release_counter is not None), None)

    def _published_counter(self) -> int:
        from release.manifest import ReleaseManifest

        highest = 0
        for tag in self.store.list_published():
            highest = max(highest, ReleaseManifest.from_json(self.store.get_bytes(tag, MANIFEST_NAME)).release_counter)
        return highest

    def next_counter(self) -> int:
        """One more than any counter ever reserved, allocated, used by an entry, or published: never
        reused, even for a crashed candidate."""
        used = (max(r.release_counter or 0, int(r.detail.get("entry_counter") or 0)) for r in self.records())
        reserved = (int(n[:-5]) for n in self.store.list_records(COUNTER_STREAM) if n[:-5].isdigit())
        return max(self._published_counter(), *used, *reserved, 0) + 1

    def allocate_counter(self) -> int:
        """A counter nobody else gets, across threads, processes and hosts: the next free one,
        reserved with a create-only record (the loser of a race takes the next number)."""
        # A body of its own: a store treats a create that finds its own bytes as won (a retried
        # upload whose response was lost), so identical bodies would let two writers both win.
        body = json.dumps({"reservation": uuid.uuid4().hex, "at": dt.datetime.now(dt.UTC).isoformat()}).encode()
        n = self.next_counter()
        while not self.store.create_record(f"{COUNTER_STREAM}/{_name(n)}", body):
            n += 1
        return n

    def for_device(self, device: str) -> list[HistoryRecord]:
        """The per-device ledger: every record about this device, oldest first."""
        return [r for r in self.records() if r.device == device]

    def last_known_good(self, device: str) -> tuple[str, str | None] | None:
        """(tag, hef_sha256) of the release last committed on ``device``, or None before the first."""
        for record in reversed(self.for_device(device)):
            if record.to_state in COMMITTING_STATES:
                return record.release_tag, record.detail.get("hef_sha256")
            if "restored" in record.detail:
                restored = record.detail["restored"]
                return (str(restored), record.detail.get("restored_hef_sha256")) if restored else None
        return None

    def in_flight(self, device: str) -> str | None:
        """The release whose canary is on ``device`` and not yet decided (promoted, rolled back, failed)."""
        record = self.in_flight_record(device)
        return record.release_tag if record is not None else None

    def in_flight_record(self, device: str) -> HistoryRecord | None:
        """The latest record of the undecided release on ``device`` (its rollout id, if any, in detail)."""
        from release.states import ON_DEVICE

        seen: set[tuple[str, str | None]] = set()
        for record in reversed(self.for_device(device)):
            # Newest first: the first record seen of a release (in its scope: the release's own, or
            # one rollout's) is its latest, so it holds its state there.
            scope = (record.release_tag, record.detail.get(ROLLOUT_KEY))
            if scope not in seen and record.to_state in ON_DEVICE:
                return record
            seen.add(scope)
        return None
