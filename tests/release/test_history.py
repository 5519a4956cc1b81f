"""The release history in the store: hash-chained, create-only, shared by every reader, counters never
reused, idempotent keys, last-known-good per device — and any edit is caught."""

from __future__ import annotations

import json
import threading

import pytest

from release.errors import IntegrityError, InvalidIdentifier
from release.history import History
from release.states import ReleaseEvent, advance, create
from release.store import LocalArtifactStore


def _promoted(history: History, tag: str, device: str, hef: str) -> None:
    create(history, tag, device=device, actor="t")
    for event in (ReleaseEvent.VALIDATED, ReleaseEvent.COMPILED, ReleaseEvent.IMAGE_PUBLISHED, ReleaseEvent.SIGNED,
                  ReleaseEvent.MANIFEST_WRITTEN, ReleaseEvent.DEPLOYED, ReleaseEvent.GATE_PASS):
        advance(history, tag, event, actor="t")
    advance(history, tag, ReleaseEvent.PROMOTE, actor="t", detail={"hef_sha256": hef})


def test_counters_are_allocated_once_and_never_reused(tmp_path):
    history = History(LocalArtifactStore(tmp_path))
    assert create(history, "v1", device="pi", actor="t").release_counter == 1
    crashed = create(history, "v2", device="pi", actor="t")  # never published: its run died
    assert crashed.release_counter == 2
    assert create(history, "v2", device="pi", actor="t").release_counter == 2  # a re-run keeps its counter
    assert history.next_counter() == 3


def test_concurrent_writers_each_get_their_own_record(tmp_path):
    """Eight threads with their own readers (as eight workers): no record lost, no seq twice."""
    def work(i: int) -> None:
        create(History(LocalArtifactStore(tmp_path)), f"v{i}", device=f"pi-{i}", actor="t")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = History(LocalArtifactStore(tmp_path)).records()
    assert [r.seq for r in records] == list(range(1, 9))
    assert sorted(r.release_counter for r in records) == list(range(1, 9))


def test_idempotency_key_writes_one_record(tmp_path):
    history = History(LocalArtifactStore(tmp_path))
    create(history, "v1", device="pi", actor="t")
    first = advance(history, "v1", ReleaseEvent.STEP_FAILED, actor="cb", idempotency_key="run1:validate:failed")
    again = advance(History(LocalArtifactStore(tmp_path)), "v1", ReleaseEvent.STEP_FAILED, actor="cb",
                    idempotency_key="run1:validate:failed")
    assert again == first
    assert len(History(LocalArtifactStore(tmp_path)).for_tag("v1")) == 2


def test_last_known_good_follows_commits_and_rollbacks(tmp_path):
    history = History(LocalArtifactStore(tmp_path))
    assert history.last_known_good("pi") is None
    _promoted(history, "v1", "pi", "1" * 64)
    _promoted(history, "v2", "pi", "2" * 64)
    _promoted(history, "w1", "other", "9" * 64)
    assert history.last_known_good("pi") == ("v2", "2" * 64)
    create(history, "v3", device="pi", actor="t")
    for event in (ReleaseEvent.VALIDATED, ReleaseEvent.COMPILED, ReleaseEvent.IMAGE_PUBLISHED, ReleaseEvent.SIGNED,
                  ReleaseEvent.MANIFEST_WRITTEN, ReleaseEvent.DEPLOYED):
        advance(history, "v3", event, actor="t")
    assert history.in_flight("pi") == "v3" and history.last_known_good("pi") == ("v2", "2" * 64)
    advance(history, "v3", ReleaseEvent.LEASE_EXPIRED, actor="t", detail={"restored": "v2", "restored_hef_sha256": "2" * 64})
    assert history.in_flight("pi") is None
    advance(history, "v2", ReleaseEvent.ROLLBACK, actor="oncall", detail={"restored": "v1", "restored_hef_sha256": "1" * 64})
    assert history.last_known_good("pi") == ("v1", "1" * 64)
    assert history.last_known_good("other") == ("w1", "9" * 64)


@pytest.mark.parametrize("tamper", ["edit", "delete", "reorder"])
def test_any_edit_breaks_the_chain_at_a_named_record(tmp_path, tamper):
    store = LocalArtifactStore(tmp_path)
    history = History(store)
    _promoted(history, "v1", "pi", "1" * 64)
    folder = tmp_path / "records" / "history"
    files = sorted(folder.iterdir())
    if tamper == "edit":
        data = json.loads(files[3].read_text())
        data["reason"] = "nothing to see"
        files[3].write_text(json.dumps(data))
    elif tamper == "delete":
        files[3].unlink()
    else:
        a, b = files[3].read_bytes(), files[4].read_bytes()
        files[3].write_bytes(b)
        files[4].write_bytes(a)
    with pytest.raises(IntegrityError, match="history"):
        History(LocalArtifactStore(tmp_path)).records()


def test_record_keys_are_checked(tmp_path):
    store = LocalArtifactStore(tmp_path)
    for key in ("../x", "history/../../etc", "History/x", "history/", "a/b/c"):
        with pytest.raises(InvalidIdentifier):
            store.create_record(key, b"{}")
    assert store.create_record("history/x.json", b"{}") is True
    assert store.create_record("history/x.json", b"{}") is False


ALLOCATOR = """
import sys
from pathlib import Path
from release.history import History
from release.states import create
from release.store import LocalArtifactStore
me = sys.argv[2]
history = History(LocalArtifactStore(Path(sys.argv[1])))
got = []
for i in range(6):  # entries (rollback, decision) and new releases, interleaved
    got.append(history.allocate_counter() if i % 2 else create(history, f"v-{me}-{i}", device="pi", actor=me).release_counter)
print(" ".join(map(str, got)))
"""


def test_counters_are_unique_across_processes(tmp_path):
    """Four processes allocating entry counters and creating releases at once on one store: every
    counter is handed out once (a group rollback's devices, a decision and a build may run side by side)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    procs = [subprocess.Popen([sys.executable, "-c", ALLOCATOR, str(tmp_path), f"w{k}"], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(repo)}) for k in range(4)]
    got = [int(n) for p in procs for n in p.communicate(timeout=120)[0].split()]
    assert all(p.returncode == 0 for p in procs)
    assert len(got) == 24 and len(set(got)) == 24, sorted(got)
    assert History(LocalArtifactStore(tmp_path)).next_counter() == max(got) + 1
