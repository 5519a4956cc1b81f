import json

import pytest

from release.errors import InvalidIdentifier, ManifestError
from release.manifest import SCHEMA_VERSION, GateRecord, ReleaseManifest, json_schema, write_json_schema
from release.states import ReleaseState
from tests.fixtures.manifests import make_manifest


def test_round_trip_is_byte_identical():
    m = make_manifest()
    data = m.canonical_json()
    again = ReleaseManifest.from_json(data)
    assert again == m
    assert again.canonical_json() == data


def test_canonical_bytes_ignore_key_order_and_whitespace():
    m = make_manifest()
    shuffled = json.dumps(dict(reversed(list(json.loads(m.canonical_json()).items()))), indent=4)
    assert ReleaseManifest.from_json(shuffled).canonical_json() == m.canonical_json()
    data = m.canonical_json()
    assert b"\n" not in data and b'": ' not in data and b", " not in data
    keys = list(json.loads(data))
    assert keys == sorted(keys)


def test_canonical_bytes_change_with_content():
    assert make_manifest().canonical_json() != make_manifest(config_version="cfg-2").canonical_json()


def test_unknown_schema_version_rejected():
    raw = json.loads(make_manifest().canonical_json())
    raw["schema_version"] = 99
    with pytest.raises(ManifestError, match="unknown manifest schema_version 99"):
        ReleaseManifest.from_dict(raw)
    del raw["schema_version"]
    with pytest.raises(ManifestError, match="no schema_version"):
        ReleaseManifest.from_dict(raw)


def test_missing_and_unknown_fields_named():
    raw = json.loads(make_manifest().canonical_json())
    del raw["hef"]["hef_sha256"]
    raw["surprise"] = 1
    with pytest.raises(ManifestError) as exc:
        ReleaseManifest.from_dict(raw)
    assert "hef.hef_sha256" in str(exc.value)
    assert "surprise" in str(exc.value)


def test_not_json():
    with pytest.raises(ManifestError, match="not valid JSON"):
        ReleaseManifest.from_json(b"\xff{")
    with pytest.raises(ManifestError, match="JSON object"):
        ReleaseManifest.from_json(b"[]")


def test_bad_identifiers_and_digests_rejected():
    with pytest.raises((ManifestError, InvalidIdentifier, ValueError)):
        make_manifest(release_tag="v1;reboot")
    raw = json.loads(make_manifest().canonical_json())
    raw["image"]["digest"] = "sha256:XYZ"
    with pytest.raises(ManifestError, match="image.digest"):
        ReleaseManifest.from_dict(raw)
    raw = json.loads(make_manifest().canonical_json())
    raw["hef"]["real_compile"] = True
    with pytest.raises(ManifestError, match="both a real compile and a placeholder"):
        ReleaseManifest.from_dict(raw)


def test_with_updates_validates_and_keeps_original():
    m = make_manifest()
    g = GateRecord(thresholds={"p95_ms": 50.0}, measured={"p95_ms": 12.5}, verdict="pass")
    m2 = m.with_updates(gate=g, state=ReleaseState.PROMOTED)
    assert m2.gate.verdict == "pass" and m2.state is ReleaseState.PROMOTED
    assert m.gate.verdict == "pending"
    with pytest.raises(ManifestError):
        m.with_updates(release_counter=0)


def test_json_schema_file_is_current(tmp_path):
    out = write_json_schema(tmp_path / "schema.json")
    committed = json.loads(open("release/data/manifest.schema.json").read())
    assert json.loads(out.read_text()) == committed, "run: hailo-release manifest-schema"
    assert json_schema()["properties"]["schema_version"]["const"] == SCHEMA_VERSION
    for field in ("hef", "image", "gate", "continuity_id", "config_version", "release_counter", "steps"):
        assert field in committed["required"] or field in committed["properties"]
