"""Release ledger: append-only hash chain, current/history queries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from release.errors import IntegrityError, InvalidIdentifier
from release.ledger import GENESIS, Ledger


def _fill(ledger: Ledger) -> None:
    ledger.append("pi-1", "deploy", tag="v1", triggered_by="run:a user:alice", release_counter=1)
    ledger.append("pi-1", "promote", tag="v1", triggered_by="run:a", release_counter=1)
    ledger.append("pi-1", "deploy", tag="v2", triggered_by="run:b", release_counter=2)
    ledger.append("pi-1", "failure", tag="v2", triggered_by="run:b", reason="p95 61 ms > 50 ms")
    ledger.append("pi-1", "rollback", tag="v1", triggered_by="oncall:bob", reason="gate failed", release_counter=3)


def test_history_and_current(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    _fill(ledger)
    hist = ledger.history("pi-1")
    assert [e.event for e in hist] == ["deploy", "promote", "deploy", "failure", "rollback"]
    assert hist[0].prev_hash == GENESIS and hist[1].prev_hash == hist[0].hash
    cur = ledger.current("pi-1")
    assert cur is not None and cur.tag == "v1" and cur.release_counter == 3 and cur.reason == "gate failed"
    assert ledger.current("pi-2") is None and ledger.history("pi-2") == []
    # Devices do not share a chain.
    ledger.append("pi-2", "deploy", tag="v9", triggered_by="x")
    assert ledger.verify("pi-1") == 5 and ledger.verify("pi-2") == 1


@pytest.mark.parametrize("edit", ["change-reason", "delete-line", "swap-lines", "rehash-one"])
def test_any_edit_breaks_the_chain(tmp_path: Path, edit: str) -> None:
    ledger = Ledger(tmp_path)
    _fill(ledger)
    path = tmp_path / "pi-1.jsonl"
    lines = path.read_text().splitlines()
    if edit == "change-reason":
        lines[3] = lines[3].replace("p95 61 ms", "p95 40 ms")
    elif edit == "delete-line":
        del lines[2]
    elif edit == "swap-lines":
        lines[1], lines[2] = lines[2], lines[1]
    else:  # an editor who recomputes the edited line's own hash still breaks the next link
        from release.ledger import LedgerEntry

        e = LedgerEntry.model_validate_json(lines[1]).model_copy(update={"tag": "v0"})
        from release.checksums import sha256_bytes

        lines[1] = json.dumps(json.loads(e.model_copy(update={"hash": sha256_bytes(e.body_bytes())}).model_dump_json()))
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(IntegrityError):
        ledger.history("pi-1")


def test_device_name_is_validated_before_it_reaches_a_path(tmp_path: Path) -> None:
    with pytest.raises(InvalidIdentifier):
        Ledger(tmp_path).append("../etc/passwd", "deploy", tag="v1", triggered_by="x")
    assert list(tmp_path.iterdir()) == []
