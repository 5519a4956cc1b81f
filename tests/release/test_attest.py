"""`hailo-release attest`: countersign a published release after checking its own signatures.

Keyless signing needs Fulcio/Rekor and an OIDC identity, which these machines do not have; here the
same path runs with a key signer (and the result is verified for real), and keyless is shown to
refuse up front without an identity rather than start a browser login."""

from __future__ import annotations

import json

import pytest

from release.bundle_signing import KeyBundleSigner, KeylessBundleSigner, verify_bundle
from release.canary import publish_final
from release.cli import main
from release.errors import IntegrityError, InvalidInput, StepFailed
from release.history import History
from release.manifest import StepRecord
from release.operations import attest_release
from release.states import ReleaseEvent, advance


def _settle(bed, tag: str, *events: ReleaseEvent) -> None:
    """Drive a built release through ``events`` in the history and publish its final manifest."""
    for event in (ReleaseEvent.DEPLOYED, *events):
        advance(History(bed.store), tag, event, actor="pytest")
    publish_final(bed.request(tag), bed.env, bed.store, [StepRecord(name=events[-1].value, status="real", reason="test")])


@pytest.fixture
def published(testbed):
    testbed.build("v1")
    _settle(testbed, "v1", ReleaseEvent.GATE_PASS, ReleaseEvent.PROMOTE)
    return testbed


def test_attest_signs_exactly_the_verified_bundle(published, tmp_path):
    bed = published
    out = tmp_path / "attestation"
    result = attest_release(bed.env, bed.store, tag="v1", output_dir=out,
                            signer=KeyBundleSigner(bed.env.keys_dir / "release-signing.key"))
    assert result["state"] == "promoted"
    summary = json.loads((out / "v1.attestation.json").read_text())
    assert set(summary["files_sha256"]) == {"manifest.json", "model.hef", "model.onnx"}
    # The countersignature verifies over the files it says it covers, and over nothing else.
    signed_dir = bed.env.work_dir("v1", "attest") / "signed"
    verify_bundle(signed_dir, out / "v1.sigstore.json", bed.public_key)
    (signed_dir / "model.onnx").write_bytes(b"changed")
    with pytest.raises(IntegrityError, match=r"model\.onnx"):
        verify_bundle(signed_dir, out / "v1.sigstore.json", bed.public_key)


def test_only_promoted_releases_are_attested(published, tmp_path):
    bed = published
    bed.build("v2")
    _settle(bed, "v2", ReleaseEvent.GATE_FAIL, ReleaseEvent.ROLLBACK)
    with pytest.raises(InvalidInput, match="only a promoted release"):
        attest_release(bed.env, bed.store, tag="v2", output_dir=tmp_path / "a",
                       signer=KeyBundleSigner(bed.env.keys_dir / "release-signing.key"))
    assert not (tmp_path / "a").exists()


def test_tampered_release_is_never_countersigned(published, tmp_path):
    bed = published
    hef = next(p for p in (bed.store.root / "releases" / "v1").iterdir() if p.suffix == ".hef")
    hef.write_bytes(hef.read_bytes() + b"\0")
    out = tmp_path / "attestation"
    with pytest.raises(IntegrityError, match=r"model\.hef"):
        attest_release(bed.env, bed.store, tag="v1", output_dir=out,
                       signer=KeyBundleSigner(bed.env.keys_dir / "release-signing.key"))
    assert not out.exists()


def test_keyless_without_identity_refuses_before_signing(published, tmp_path, monkeypatch):
    for var in ("ACTIONS_ID_TOKEN_REQUEST_URL", "ACTIONS_ID_TOKEN_REQUEST_TOKEN", "GITHUB_ACTIONS"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(StepFailed, match="id-token: write"):
        attest_release(published.env, published.store, tag="v1", output_dir=tmp_path / "a",
                       signer=KeylessBundleSigner(environ={}))


def test_cli_attest_exit_codes(published, tmp_path, monkeypatch, capsys):
    bed = published
    monkeypatch.setenv("HAILO_PIPELINE_ROOT", str(bed.root))
    for var in ("HAILO_ARTIFACT_ROOT", "HAILO_WORK_ROOT", "HAILO_KEYS_DIR", "HAILO_LEDGER_DIR", "HAILO_DEVICES_FILE",
                "ACTIONS_ID_TOKEN_REQUEST_URL", "ACTIONS_ID_TOKEN_REQUEST_TOKEN", "HAILO_SIGNING_KEY"):
        monkeypatch.delenv(var, raising=False)
    assert main(["attest", "--tag", "v1;id", "--output", str(tmp_path / "o")]) == InvalidInput.exit_code
    assert main(["attest", "--tag", "v1", "--output", str(tmp_path / "o")]) == StepFailed.exit_code
    assert "id-token: write" in capsys.readouterr().err
    key = bed.env.keys_dir / "release-signing.key"
    assert main(["attest", "--tag", "v1", "--output", str(tmp_path / "o"), "--key", str(key)]) == 0
    assert (tmp_path / "o" / "v1.sigstore.json").is_file()
