"""HEF, ONNX and manifest signed together with OpenSSF model-signing (key mode); every tamper detected."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from release.bundle_signing import KeyBundleSigner, verify_bundle
from release.errors import IntegrityError, InvalidInput
from release.keys import generate_dev_keypair
from release.manifest_signing import sign_bytes, verify_bytes


@pytest.fixture
def signed_bundle(tmp_path, sample_onnx_path, manifest_factory):
    priv, pub = generate_dev_keypair(tmp_path / "keys")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    shutil.copyfile(sample_onnx_path, bundle / "model.onnx")
    (bundle / "model.hef").write_bytes(b"\x01HEF" + bytes(range(256)) * 64)
    (bundle / "manifest.json").write_bytes(manifest_factory().canonical_json())
    sig = KeyBundleSigner(priv).sign(bundle, tmp_path / "bundle.sig")
    return bundle, sig, pub, priv


def test_signed_bundle_verifies(signed_bundle):
    bundle, sig, pub, _ = signed_bundle
    verify_bundle(bundle, sig, pub)


@pytest.mark.parametrize("target", ["model.hef", "model.onnx", "manifest.json"])
def test_one_changed_byte_in_any_file_is_detected(signed_bundle, target):
    bundle, sig, pub, _ = signed_bundle
    data = bytearray((bundle / target).read_bytes())
    data[len(data) // 3] ^= 0x40
    (bundle / target).write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="does not match its signature"):
        verify_bundle(bundle, sig, pub)


def test_added_or_removed_file_detected(signed_bundle):
    bundle, sig, pub, _ = signed_bundle
    (bundle / "extra.bin").write_bytes(b"x")
    with pytest.raises(IntegrityError):
        verify_bundle(bundle, sig, pub)
    (bundle / "extra.bin").unlink()
    (bundle / "model.onnx").unlink()
    with pytest.raises(IntegrityError):
        verify_bundle(bundle, sig, pub)


def test_tampered_signature_and_wrong_key(signed_bundle, tmp_path):
    bundle, sig, pub, _ = signed_bundle
    data = bytearray(sig.read_bytes())
    idx = data.find(b'"signature"')
    data[idx + 20] = ord("A") if data[idx + 20] != ord("A") else ord("B")
    bad = tmp_path / "bad.sig"
    bad.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        verify_bundle(bundle, bad, pub)
    _, other_pub = generate_dev_keypair(tmp_path / "other")
    with pytest.raises(IntegrityError):
        verify_bundle(bundle, sig, other_pub)
    with pytest.raises(IntegrityError, match="missing"):
        verify_bundle(bundle, tmp_path / "none.sig", pub)


def test_signature_inside_bundle_refused(signed_bundle):
    bundle, _, _, priv = signed_bundle
    with pytest.raises(InvalidInput, match="outside"):
        KeyBundleSigner(priv).sign(bundle, bundle / "bundle.sig")


def test_manifest_signature_verifies_with_real_openssl(tmp_path, manifest_factory):
    from release.keys import load_private_key, load_public_key

    priv, pub = generate_dev_keypair(tmp_path / "k")
    data = manifest_factory().canonical_json()
    sig = sign_bytes(data, load_private_key(priv))
    (tmp_path / "m.json").write_bytes(data)
    (tmp_path / "m.sig").write_bytes(sig)
    res = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(pub), "-signature", str(tmp_path / "m.sig"),
                          str(tmp_path / "m.json")], capture_output=True, text=True)
    assert res.returncode == 0 and "Verified OK" in res.stdout
    verify_bytes(data, sig, load_public_key(pub))
    with pytest.raises(IntegrityError):
        verify_bytes(data + b" ", sig, load_public_key(pub))
    assert oct((priv).stat().st_mode & 0o777) == "0o600"
