"""hailo_fleet_rollout on the scale-out stack (PostgreSQL, Redis, CeleryExecutor), triggered as the
release workflow's fleet job does: `hailo-release trigger --dag hailo_fleet_rollout` as the release
user (FAB role ReleaseTrigger). Its tasks run on the `edge` worker; the mapped device tasks of one
wave run side by side on that worker's slots; the history in the shared store agrees with what each
device serves (/healthz)."""

from __future__ import annotations

import itertools
import json
import urllib.request
from pathlib import Path

import pytest

from tests.fixtures._rollout_checks import NEVER_ABORT
from tests.fixtures.scaleout import FLEET_DEVICES
from tests.scaleout.test_scaleout import CID, _assert_ran_on_its_queue, _conf, _tis, _trigger, _ts

pytestmark = [pytest.mark.scaleout, pytest.mark.airflow, pytest.mark.e2e]
FLEET_DAG = "hailo_fleet_rollout"
GATE = {"duration_s": 5, "lease_margin_s": 30}


def _healthz(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=3) as r:
            return json.loads(r.read())
    except OSError:
        return None


def test_fleet_rollout_by_the_release_user_runs_its_devices_side_by_side_on_the_edge_worker(scaleout_stack):
    from release.devices import load_inventory
    from release.history import History
    from release.manifest import ReleaseManifest
    from release.store import MANIFEST_NAME, LocalArtifactStore

    stack = scaleout_stack
    tag = None
    for attempt in range(3):  # a promoted canary on `local` first; a loaded host may roll one back
        res = _trigger(stack, "--continuity-id", CID, "--ci-run", f"sf-{attempt}", "--conf", _conf(f"sf-{attempt}"))
        assert res.returncode in (0, 10, 11), res.stdout[-3000:] + res.stderr[-3000:]
        if res.returncode == 0:
            tag = f"sf-{attempt}"
            break
    assert tag is not None, "no canary was promoted in 3 tries"

    conf = {"release_tag": tag, "group": "fleet", "production": False,
            "plan": {"waves": [{"size": "100%", "gate": GATE, "parallelism": 2}], "abort": NEVER_ABORT}}
    res = _trigger(stack, "--dag", FLEET_DAG, "--continuity-id", CID, "--ci-run", "sf-roll", "--conf", json.dumps(conf))
    diag = res.stdout[-3000:] + res.stderr[-3000:] + stack.log("worker-edge")
    assert res.returncode == 0, diag  # completed (a device the load failed is restored: still completed)
    run_id = f"{CID}__ci-sf-roll"
    ran = _assert_ran_on_its_queue(stack, FLEET_DAG, run_id)
    assert {"prepare", "wave_1.ready", "wave_1.roll_device", "wave_1.check", "report", "ensure_safe"} <= set(ran["edge"])
    devices = sorted((t for t in _tis(stack, FLEET_DAG, run_id) if t["task_id"] == "wave_1.roll_device"),
                     key=lambda t: _ts(t["start_date"]))
    assert len(devices) == len(FLEET_DEVICES), devices
    # Two at a time (the plan's parallelism, the edge worker's two slots): from the API's own timestamps.
    assert any(_ts(b["start_date"]) < _ts(a["end_date"]) for a, b in itertools.pairwise(devices)), \
        [(t["map_index"], t["start_date"], t["end_date"]) for t in devices]

    store = LocalArtifactStore(Path(stack.info["artifact_root"]))
    history = History(store)
    inventory = load_inventory(Path(stack.script_env["HAILO_DEVICES_FILE"]))
    for name in FLEET_DEVICES:
        lkg = history.last_known_good(name)
        assert history.in_flight(name) is None, name
        health = _healthz(inventory.get(name).health_url)
        if lkg is None:  # its gate failed under load and it had nothing before: nothing runs
            assert health is None, (name, health)
            continue
        manifest = ReleaseManifest.from_json(store.get_bytes(lkg[0], MANIFEST_NAME))
        assert health is not None and health["hef_sha256"] == manifest.hef.hef_sha256, (name, lkg, health)
    assert any((history.last_known_good(n) or ("",))[0] == tag for n in FLEET_DEVICES), "no device committed it"
