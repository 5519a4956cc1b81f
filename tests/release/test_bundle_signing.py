"""HEF, ONNX and manifest signed together with OpenSSF model-signing (key mode); every tamper detected,
and the error names what failed. The manifest's detached signature verifies with the real openssl."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from release.bundle_signing import (
    KeyBundleSigner,
    KeylessBundleSigner,
    check_bundle,
    verify_bundle,
)
from release.checksums import write_sha256sum
from release.errors import IntegrityError, InvalidInput, StepFailed
from release.keys import generate_dev_keypair, load_private_key, load_public_key
from release.manifest import ReleaseManifest
from release.manifest_signing import sign_bytes, verify_bytes

HEF = "tcn_encoder-v1.hef"
COSIGN_KEY = Path(__file__).resolve().parents[1] / "data" / "cosign-test-sigstore-ec.key"  # cosign's own, "hello"


def _make_bundle(root, onnx_path, manifest_bytes):
    bundle = root / "bundle"
    bundle.mkdir()
    shutil.copyfile(onnx_path, bundle / "model.onnx")
    (bundle / HEF).write_bytes(b"\x01HEF" + bytes(range(256)) * 64)
    write_sha256sum([bundle / HEF], bundle / "hef_sha256sum.txt")
    (bundle / "manifest.json").write_bytes(manifest_bytes)
    return bundle


@pytest.fixture
def signed_bundle(tmp_path, sample_onnx_path, manifest_factory):
    priv, pub = generate_dev_keypair(tmp_path / "keys")
    bundle = _make_bundle(tmp_path, sample_onnx_path, manifest_factory().canonical_json())
    sig = KeyBundleSigner(priv).sign(bundle, tmp_path / "bundle.sig")
    return bundle, sig, pub, priv


def _flip(path, at=None):
    data = bytearray(path.read_bytes())
    i = len(data) // 3 if at is None else at
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def test_signed_bundle_verifies_and_is_a_sigstore_bundle(signed_bundle):
    bundle, sig, pub, _ = signed_bundle
    verify_bundle(bundle, sig, pub)
    doc = json.loads(sig.read_text())
    assert doc["mediaType"].startswith("application/vnd.dev.sigstore.bundle")
    statement = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
    signed = {r["name"] for r in statement["predicate"]["resources"]}
    assert signed == {"manifest.json", "model.onnx", HEF, "hef_sha256sum.txt"}


@pytest.mark.parametrize("target", [HEF, "model.onnx", "manifest.json", "hef_sha256sum.txt"])
def test_one_changed_byte_in_any_file_is_detected_and_named(signed_bundle, target):
    bundle, sig, pub, _ = signed_bundle
    _flip(bundle / target)
    with pytest.raises(IntegrityError, match=rf"does not match its signature \(changed: {target}\)"):
        verify_bundle(bundle, sig, pub)


def test_changed_image_digest_in_manifest_is_detected(signed_bundle, tmp_path):
    bundle, sig, pub, priv = signed_bundle
    original = (bundle / "manifest.json").read_bytes()
    manifest_sig = sign_bytes(original, load_private_key(priv))
    manifest = ReleaseManifest.from_json(original)
    evil = manifest.model_copy(update={"image": manifest.image.model_copy(update={"digest": "sha256:" + "e" * 64})})
    tampered = evil.canonical_json()
    assert tampered != original and b"sha256:" + b"e" * 64 in tampered
    (bundle / "manifest.json").write_bytes(tampered)
    with pytest.raises(IntegrityError, match=r"changed: manifest.json"):
        verify_bundle(bundle, sig, pub)
    with pytest.raises(IntegrityError, match="does not verify"):
        verify_bytes(tampered, manifest_sig, load_public_key(pub))


def test_one_changed_byte_of_the_signature_is_detected(signed_bundle, tmp_path):
    bundle, sig, pub, _ = signed_bundle
    doc = json.loads(sig.read_text())
    raw = bytearray(base64.b64decode(doc["dsseEnvelope"]["signatures"][0]["sig"]))
    raw[len(raw) // 2] ^= 0x01
    doc["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()
    bad = tmp_path / "bad.sig"
    bad.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="does not verify|invalid"):
        verify_bundle(bundle, bad, pub)
    # and a flipped byte anywhere in the file (here: inside the signed payload)
    shutil.copyfile(sig, bad)
    text = bad.read_bytes()
    _flip(bad, at=text.index(b'"payload":"') + 40)
    with pytest.raises(IntegrityError):
        verify_bundle(bundle, bad, pub)


@pytest.mark.parametrize("added", ["extra.bin", ".gitignore"])
def test_added_file_is_detected_even_git_paths(signed_bundle, added):
    """model-signing's default hashing would skip .gitignore on verification; ours does not."""
    bundle, sig, pub, _ = signed_bundle
    (bundle / added).write_bytes(b"x")
    with pytest.raises(IntegrityError, match=rf"added: {added}"):
        verify_bundle(bundle, sig, pub)


def test_removed_file_is_detected(signed_bundle):
    bundle, sig, pub, _ = signed_bundle
    (bundle / "model.onnx").unlink()
    with pytest.raises(IntegrityError, match="removed: model.onnx"):
        verify_bundle(bundle, sig, pub)


def test_wrong_key_and_missing_signature(signed_bundle, tmp_path):
    bundle, sig, _, _ = signed_bundle
    _, other_pub = generate_dev_keypair(tmp_path / "other")
    with pytest.raises(IntegrityError, match="different key"):
        verify_bundle(bundle, sig, other_pub)
    with pytest.raises(IntegrityError, match="missing"):
        verify_bundle(bundle, tmp_path / "none.sig", other_pub)


def test_bad_bundles_are_refused_before_signing(signed_bundle, tmp_path):
    bundle, _, _, priv = signed_bundle
    signer = KeyBundleSigner(priv)
    with pytest.raises(InvalidInput, match="outside"):
        signer.sign(bundle, bundle / "bundle.sig")
    (bundle / "second.hef").write_bytes(b"x")
    with pytest.raises(InvalidInput, match="exactly one"):
        signer.sign(bundle, tmp_path / "x.sig")
    (bundle / "second.hef").unlink()
    (bundle / "sub").mkdir()
    with pytest.raises(InvalidInput, match="regular files only"):
        signer.sign(bundle, tmp_path / "x.sig")
    (bundle / "sub").rmdir()
    assert check_bundle(bundle) == sorted(p.name for p in bundle.iterdir())
    _flip(bundle / HEF)  # the checksum file no longer matches the HEF it names
    with pytest.raises(IntegrityError, match="hef_sha256sum.txt"):
        signer.sign(bundle, tmp_path / "x.sig")
    assert not (tmp_path / "x.sig").exists()


def test_unusable_key_is_refused_without_leaking_it(signed_bundle, tmp_path):
    bundle, _, _, _ = signed_bundle
    garbage = tmp_path / "garbage.key"
    garbage.write_bytes(b"-----BEGIN PRIVATE KEY-----\nSECRETSTUFF\n-----END PRIVATE KEY-----\n")
    with pytest.raises(InvalidInput) as err:
        KeyBundleSigner(garbage).sign(bundle, tmp_path / "x.sig")
    assert "SECRETSTUFF" not in str(err.value)


def test_manifest_signature_verifies_with_real_openssl(tmp_path, manifest_factory):
    if shutil.which("openssl") is None:
        pytest.fail("openssl binary is required (the device agent verifies with it)")
    priv, pub = generate_dev_keypair(tmp_path / "k")
    data = manifest_factory().canonical_json()
    sig = sign_bytes(data, load_private_key(priv))
    assert sig[0] == 0x30  # DER SEQUENCE, what `openssl dgst -signature` reads
    (tmp_path / "manifest.json").write_bytes(data)
    (tmp_path / "manifest.json.sig").write_bytes(sig)
    argv = ["openssl", "dgst", "-sha256", "-verify", str(pub), "-signature", str(tmp_path / "manifest.json.sig"),
            str(tmp_path / "manifest.json")]
    res = subprocess.run(argv, capture_output=True, text=True)
    assert res.returncode == 0 and "Verified OK" in res.stdout
    verify_bytes(data, sig, load_public_key(pub))
    # one changed byte of the manifest: openssl and our verifier both refuse
    (tmp_path / "manifest.json").write_bytes(data.replace(b'"stable"', b'"stabla"', 1))
    res = subprocess.run(argv, capture_output=True, text=True)
    assert res.returncode == 1 and "Verification failure" in res.stdout
    with pytest.raises(IntegrityError):
        verify_bytes((tmp_path / "manifest.json").read_bytes(), sig, load_public_key(pub))


# -- keyless: only the plumbing runs here (sigstore needs Fulcio, Rekor and TUF over the network) --

GH_ENV = {"GITHUB_ACTIONS": "true", "ACTIONS_ID_TOKEN_REQUEST_URL": "https://example.invalid/token",
          "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "t"}


def test_keyless_refuses_without_an_oidc_identity_before_any_network(signed_bundle, tmp_path):
    bundle, _, _, _ = signed_bundle
    signer = KeylessBundleSigner(environ={})
    with pytest.raises(StepFailed, match="id-token: write"):
        signer.sign(bundle, tmp_path / "keyless.sig")
    assert not (tmp_path / "keyless.sig").exists()


def test_keyless_signer_options():
    ambient = KeylessBundleSigner(environ=GH_ENV).signer_options()
    assert ambient["use_ambient_credentials"] is True and ambient["identity_token"] is None
    assert ambient["force_oob"] is True  # never a browser login on a runner
    explicit = KeylessBundleSigner("eyJ.token", use_staging=True, environ={}).signer_options()
    assert explicit["identity_token"] == "eyJ.token" and explicit["use_ambient_credentials"] is False
    assert explicit["use_staging"] is True


def test_cosign_key_signs_the_bundle_with_cosign_password(signed_bundle, tmp_path, monkeypatch):
    """HAILO_SIGNING_KEY=cosign.key: model-signing gets the decrypted key through a pipe, never a file."""
    from release.cosign_keys import load_cosign_private_key
    from release.keys import public_pem

    bundle, _, _, _ = signed_bundle
    key = tmp_path / "cosign.key"
    key.write_bytes(COSIGN_KEY.read_bytes())
    pub = tmp_path / "cosign.pub"
    pub.write_bytes(public_pem(load_cosign_private_key(key, b"hello").public_key()))
    monkeypatch.delenv("COSIGN_PASSWORD", raising=False)
    with pytest.raises(InvalidInput, match="COSIGN_PASSWORD"):
        KeyBundleSigner(key).sign(bundle, tmp_path / "c.sig")
    monkeypatch.setenv("COSIGN_PASSWORD", "wrong")
    with pytest.raises(IntegrityError, match="wrong password"):
        KeyBundleSigner(key).sign(bundle, tmp_path / "c.sig")
    monkeypatch.setenv("COSIGN_PASSWORD", "hello")
    before = sorted(p.name for p in tmp_path.iterdir())
    sig = KeyBundleSigner(key).sign(bundle, tmp_path / "c.sig")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "c.sig"])  # no key file left behind
    verify_bundle(bundle, sig, pub)
    _, other_pub = generate_dev_keypair(tmp_path / "other")
    with pytest.raises(IntegrityError):
        verify_bundle(bundle, sig, other_pub)
    monkeypatch.delenv("COSIGN_PASSWORD")
    assert KeyBundleSigner(key, password="hello").sign(bundle, tmp_path / "d.sig").is_file()
