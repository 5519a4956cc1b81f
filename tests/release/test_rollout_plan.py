"""The rollout plan as data: bad plans are refused with a message naming the wave and the problem;
wave assignment is deterministic and covers every enrolled device exactly once; selection skips
non-enrolled devices with a reason; production refuses unpinned host keys."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from release.devices import DeviceSpec, Enrollment, Inventory, Selector, load_inventory
from release.errors import ConfigError, InvalidInput, RefusedForProduction
from release.rollout import plan_waves
from release.rollout_plan import load_plan, parse_plan

REPO = Path(__file__).resolve().parents[2]
ENROLLED = Enrollment(by="ops@example.org", at=dt.datetime(2026, 11, 20, tzinfo=dt.UTC))


def _device(name: str, groups=("lab",), enrolled=True, **kw) -> DeviceSpec:
    return DeviceSpec(name=name, transport=kw.pop("transport", "local"), agent_root=f"/opt/{name}",
                      gate_url="http://127.0.0.1:9000", groups=list(groups), enrolled=ENROLLED if enrolled else None, **kw)


def _inventory(n: int, **extra: DeviceSpec) -> Inventory:
    devices = {f"pi-{i:02d}": _device(f"pi-{i:02d}") for i in range(1, n + 1)}
    return Inventory(devices={**devices, **extra})


@pytest.mark.parametrize(("raw", "message"), [
    ({"waves": [{"size": 1}, {"size": "50%"}]}, "last wave must be '100%'"),
    ({"waves": [{"size": 0}, {"size": "100%"}]}, "wave 1 size"),
    ({"waves": [{"size": "abc"}, {"size": "100%"}]}, "neither a device count nor a percentage"),
    ({"waves": [{"size": "150%"}]}, "neither a device count nor a percentage"),
    ({"waves": [{"size": "50%"}, {"size": "10%"}, {"size": "100%"}]}, "must cover more than"),
    ({"waves": [{"size": "10%"}, {"size": 5}, {"size": "100%"}]}, "must come before percentages"),
    ({"waves": [{"size": 1, "gate": {"p95_ms": 80}}, {"size": "100%"}]}, "wave 1 gate"),
    ({"waves": [{"size": 1, "gate": {"bogus": 1}}, {"size": "100%"}]}, "unknown gate override 'bogus'"),
    ({"waves": [{"size": 1, "gate": {"duration_s": 5}}, {"size": "100%", "gate": {"duration_s": 10}}]},
     "later waves get shorter gates"),
    ({"waves": [{"size": 1, "gate": {"rate_windows_per_s": 10}}, {"size": "100%"}]}, "the gate could never pass"),
    ({"waves": [{"size": "100%", "parallelism": 0}]}, "wave 1 parallelism"),
    ({"waves": [{"size": "100%"}], "abort": {"max_failure_rate": 2}}, "abort.max_failure_rate"),
    ({"waves": [{"size": "100%"}], "on_preflight_failure": "ignore"}, "on_preflight_failure"),
    ({"waves": [{"size": "100%"}], "surprise": 1}, "surprise"),
    ({"waves": []}, "waves"),
])
def test_bad_plans_are_refused_with_a_clear_message(raw, message):
    with pytest.raises(ConfigError) as info:
        parse_plan(raw)
    assert message in str(info.value), str(info.value)


def test_plan_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "plan.yaml"
    bad.write_text("waves: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_plan(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_plan(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_plan(tmp_path / "missing.yaml")


def test_the_repositorys_release_plan_loads_with_its_target(tmp_path):
    from release.rollout_plan import load_target

    plan = load_plan(REPO / "release-plan.yaml")
    assert plan.waves[-1].size == "100%"
    assert load_target(REPO / "release-plan.yaml") is not None
    assert load_target(REPO / "docs" / "rollout.example.yaml") is None
    bad = tmp_path / "plan.yaml"
    bad.write_text("target: {group: 'No Such'}\nwaves: [{size: '100%'}]\n")
    with pytest.raises(ConfigError, match="target"):
        load_plan(bad)


def test_the_example_plan_in_the_repo_is_valid():
    plan = load_plan(REPO / "docs" / "rollout.example.yaml")
    assert plan.waves[0].size == 1 and plan.waves[-1].size == "100%"
    durations = [w.settings().load.duration_s for w in plan.waves]
    assert durations == sorted(durations, reverse=True)


@pytest.mark.parametrize(("n", "sizes", "expected"), [
    (6, [1, "10%", "50%", "100%"], [1, 2, 3]),  # 10% of 6 rounds up to 1: no new device, the wave is empty
    (10, [1, "10%", "50%", "100%"], [1, 4, 5]),
    (1, [1, "10%", "100%"], [1]),
    (100, [1, "10%", "50%", "100%"], [1, 9, 40, 50]),
    (3, [5, "100%"], [3]),  # a count above the fleet covers it
    (7, ["33.33%", "100%"], [3, 4]),
])
def test_wave_math(n, sizes, expected):
    plan = parse_plan({"waves": [{"size": s} for s in sizes]})
    waves, _ = plan_waves(_inventory(n), plan, Selector.parse("lab"))
    assert [len(w.devices) for w in waves] == expected
    names = [d for w in waves for d in w.devices]
    assert names == sorted(_inventory(n).devices)  # every device once, in a deterministic order
    assert waves == plan_waves(_inventory(n), plan, Selector.parse("lab"))[0]


def test_wave_keeps_the_plans_index_and_settings():
    plan = parse_plan({"waves": [{"size": 1, "parallelism": 1}, {"size": "10%", "parallelism": 3},
                                 {"size": "100%", "parallelism": 4, "approval": True}]})
    waves, _ = plan_waves(_inventory(6), plan, Selector.parse("lab"))
    assert [(w.index, w.parallelism, w.approval) for w in waves] == [(1, 1, False), (3, 4, True)]


def test_selection_skips_devices_that_are_not_enrolled_and_says_why():
    inv = _inventory(2, **{"pi-new": _device("pi-new", enrolled=False), "pi-other": _device("pi-other", groups=("b",))})
    plan = parse_plan({"waves": [{"size": "100%"}]})
    waves, skipped = plan_waves(inv, plan, Selector.parse("lab"))
    assert [d for w in waves for d in w.devices] == ["pi-01", "pi-02"]
    assert skipped == {"pi-new": "not enrolled (no enrollment record): never touched by a rollout"}
    with pytest.raises(InvalidInput, match="no enrolled device matches group=nobody"):
        plan_waves(inv, plan, Selector.parse("nobody"))


def test_label_selector():
    inv = Inventory(devices={"a": _device("a", labels={"site": "x", "cam": "imx708"}), "b": _device("b", labels={"site": "y"})})
    assert [d.name for d in inv.select(Selector.parse(selector="site=x,cam=imx708")).devices] == ["a"]
    for bad in ("site", "Site=x", "site=x;rm"):
        with pytest.raises(InvalidInput):
            Selector.parse(selector=bad)
    with pytest.raises(InvalidInput, match="needs a target"):
        Selector.parse()


def test_production_refuses_a_device_without_pinned_host_keys(tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text("[pi.lab]:22 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG\n")
    ssh = {"transport": "ssh", "host": "pi.lab", "user": "hailo", "key_file": tmp_path / "k"}
    pinned = _device("pinned", known_hosts=known, **ssh)
    via_airflow = _device("via-airflow", ssh_conn_id="pi_lab", host_key="ssh-ed25519 AAAA", **ssh)
    unpinned = _device("unpinned", known_hosts=tmp_path / "empty", **ssh)
    wrong_host = _device("wrong-host", known_hosts=known, **{**ssh, "host": "other.lab"})
    inv = Inventory(devices={d.name: d for d in (pinned, via_airflow)})
    assert len(inv.select(Selector.parse("lab"), production=True).devices) == 2
    for bad in (unpinned, wrong_host):
        inv = Inventory(devices={"pinned": pinned, bad.name: bad})
        assert len(inv.select(Selector.parse("lab")).devices) == 2  # fine outside production
        with pytest.raises(RefusedForProduction, match=bad.name):
            inv.select(Selector.parse("lab"), production=True)


def test_the_example_inventory_is_valid_and_has_a_fleet():
    inv = load_inventory(REPO / "docs" / "devices.example.yaml")
    selection = inv.select(Selector.parse("lab"))
    assert [d.name for d in selection.devices] == ["pi-lab-01"]
    assert "pi-lab-02" in selection.skipped
    assert inv.get("pi-lab-02").host_keys_pinned()  # pinned through its Airflow connection's key


def test_bad_labels_and_groups_are_refused(tmp_path):
    inv = tmp_path / "devices.yaml"
    inv.write_text("devices:\n  a: {transport: local, agent_root: /opt/a, gate_url: 'http://x', groups: ['Bad Group']}\n")
    with pytest.raises(ConfigError, match="group 'Bad Group'"):
        load_inventory(inv)
