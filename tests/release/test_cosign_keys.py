"""cosign's encrypted key format.

tests/data/cosign-test-sigstore-ec.key is `pemsigstorekey` from sigstore/cosign
pkg/cosign/keys_test.go (password "hello"), i.e. produced by cosign itself.
"""

from pathlib import Path

import pytest

from release.cosign_keys import load_cosign_private_key
from release.errors import IntegrityError, InvalidInput

KEY = Path(__file__).resolve().parents[1] / "data" / "cosign-test-sigstore-ec.key"


def test_loads_cosigns_own_test_key_and_signs():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = load_cosign_private_key(KEY, b"hello")
    assert isinstance(key.curve, ec.SECP256R1)
    sig = key.sign(b"payload", ec.ECDSA(hashes.SHA256()))
    key.public_key().verify(sig, b"payload", ec.ECDSA(hashes.SHA256()))


def test_wrong_password_refused():
    with pytest.raises(IntegrityError, match="wrong password"):
        load_cosign_private_key(KEY, b"wrong")


def test_tampered_and_foreign_files_refused(tmp_path):
    lines = KEY.read_text().splitlines()
    body = list(lines[2])
    body[10] = "A" if body[10] != "A" else "B"
    bad = tmp_path / "bad.key"
    bad.write_text("\n".join([lines[0], lines[1], "".join(body), *lines[3:]]) + "\n")
    with pytest.raises((InvalidInput, IntegrityError)):
        load_cosign_private_key(bad, b"hello")
    pem = tmp_path / "plain.key"
    pem.write_text(KEY.read_text().replace("ENCRYPTED SIGSTORE PRIVATE KEY", "PRIVATE KEY"))
    with pytest.raises(InvalidInput, match="not a cosign encrypted key"):
        load_cosign_private_key(pem, b"hello")


def test_cosign_key_as_hailo_signing_key_signs_manifests_the_device_verifies(tmp_path, monkeypatch, manifest_factory):
    """HAILO_SIGNING_KEY=cosign.key + COSIGN_PASSWORD: signing_key finds cosign.pub beside it, the manifest
    signature verifies with the real openssl (as the device agent does) against that PEM public key."""
    import shutil
    import subprocess

    from release.keys import key_id, load_private_key, load_public_key, public_pem
    from release.manifest_signing import sign_bytes
    from release.verify import signing_key

    if shutil.which("openssl") is None:
        pytest.fail("openssl binary is required (the device agent verifies with it)")
    key = tmp_path / "cosign.key"
    key.write_bytes(KEY.read_bytes())
    (tmp_path / "cosign.pub").write_bytes(public_pem(load_cosign_private_key(KEY, b"hello").public_key()))
    monkeypatch.setenv("HAILO_SIGNING_KEY", str(key))
    monkeypatch.delenv("HAILO_SIGNING_PUB", raising=False)
    monkeypatch.setenv("COSIGN_PASSWORD", "hello")
    from release.pipeline_env import PipelineEnv

    priv, pub = signing_key(PipelineEnv.from_env(), production=True)
    assert (priv, pub) == (key, tmp_path / "cosign.pub")
    assert key_id(load_public_key(pub)) == key_id(load_private_key(priv).public_key())
    data = manifest_factory().canonical_json()
    (tmp_path / "manifest.json").write_bytes(data)
    (tmp_path / "manifest.json.sig").write_bytes(sign_bytes(data, load_private_key(priv)))
    res = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(pub), "-signature",
                          str(tmp_path / "manifest.json.sig"), str(tmp_path / "manifest.json")],
                         capture_output=True, text=True)
    assert res.returncode == 0 and "Verified OK" in res.stdout
    # An explicit HAILO_SIGNING_PUB wins; <key>.pub is the default otherwise.
    monkeypatch.setenv("HAILO_SIGNING_PUB", str(tmp_path / "elsewhere.pub"))
    assert signing_key(PipelineEnv.from_env(), production=True)[1] == tmp_path / "elsewhere.pub"
    monkeypatch.delenv("HAILO_SIGNING_PUB")
    (tmp_path / "cosign.pub").unlink()
    assert signing_key(PipelineEnv.from_env(), production=True)[1] == tmp_path / "cosign.key.pub"
