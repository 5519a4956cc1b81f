"""Signing keys: dev pair generated 0600/0700 once, P-256 only, errors never carry key material."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from release.errors import InvalidInput
from release.keys import generate_dev_keypair, key_id, load_private_key, load_public_key, public_pem


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_dev_keypair_is_private_stable_and_matching(tmp_path):
    keys = tmp_path / "keys"
    priv, pub = generate_dev_keypair(keys)
    assert _mode(priv) == 0o600 and _mode(keys) == 0o700
    private = load_private_key(priv)
    assert public_pem(private.public_key()) == pub.read_bytes()
    assert generate_dev_keypair(keys) == (priv, pub)
    assert load_private_key(priv).private_numbers() == private.private_numbers()  # not regenerated
    assert not [p for p in keys.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_existing_key_is_kept_and_tightened(tmp_path):
    keys = tmp_path / "keys"
    priv, pub = generate_dev_keypair(keys)
    before = priv.read_bytes()
    os.chmod(priv, 0o644)
    os.chmod(keys, 0o755)
    pub.unlink()
    assert generate_dev_keypair(keys) == (priv, pub)
    assert priv.read_bytes() == before and _mode(priv) == 0o600 and _mode(keys) == 0o700
    assert pub.read_bytes() == public_pem(load_private_key(priv).public_key())


def test_key_id_names_the_public_key(tmp_path):
    _, pub_a = generate_dev_keypair(tmp_path / "a")
    _, pub_b = generate_dev_keypair(tmp_path / "b")
    a = key_id(load_public_key(pub_a))
    assert len(a) == 64 and a == key_id(load_public_key(pub_a)) and a != key_id(load_public_key(pub_b))


def test_wrong_key_types_are_refused(tmp_path):
    p384 = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "p384.key").write_bytes(p384.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    (tmp_path / "p384.pub").write_bytes(public_pem(p384.public_key()))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "rsa.key").write_bytes(rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    with pytest.raises(InvalidInput, match="P-256"):
        load_private_key(tmp_path / "p384.key")
    with pytest.raises(InvalidInput, match="P-256"):
        load_public_key(tmp_path / "p384.pub")
    with pytest.raises(InvalidInput, match="P-256"):
        load_private_key(tmp_path / "rsa.key")
    with pytest.raises(InvalidInput):
        load_public_key(tmp_path / "missing.pub")


def test_errors_never_carry_key_material(tmp_path):
    secret = tmp_path / "broken.key"
    secret.write_bytes(b"-----BEGIN EC PRIVATE KEY-----\nTOPSECRETMATERIAL\n-----END EC PRIVATE KEY-----\n")
    with pytest.raises(InvalidInput) as err:
        load_private_key(secret)
    assert "TOPSECRET" not in str(err.value) and err.value.__suppress_context__
    priv, _ = generate_dev_keypair(tmp_path / "k")
    pem_body = priv.read_text().splitlines()[1]
    with pytest.raises(InvalidInput) as err:
        load_public_key(priv)  # a private key where a public one was expected
    assert pem_body not in str(err.value)


def test_encrypted_key_needs_its_password(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "enc.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"pw")))
    assert load_private_key(path, password=b"pw").private_numbers() == key.private_numbers()
    with pytest.raises(InvalidInput):
        load_private_key(path)
    with pytest.raises(InvalidInput):
        load_private_key(path, password=b"wrong")


COSIGN_KEY = Path(__file__).resolve().parents[1] / "data" / "cosign-test-sigstore-ec.key"  # cosign's own, "hello"


def test_cosign_encrypted_key_loads_with_cosign_password(tmp_path, monkeypatch):
    from release.errors import IntegrityError

    monkeypatch.delenv("COSIGN_PASSWORD", raising=False)
    with pytest.raises(InvalidInput, match="set COSIGN_PASSWORD"):
        load_private_key(COSIGN_KEY)
    monkeypatch.setenv("COSIGN_PASSWORD", "wrong")
    with pytest.raises(IntegrityError, match="wrong password"):
        load_private_key(COSIGN_KEY)
    monkeypatch.setenv("COSIGN_PASSWORD", "hello")
    key = load_private_key(COSIGN_KEY)
    assert key.curve.name == "secp256r1"
    assert load_private_key(COSIGN_KEY, password=b"hello").private_numbers() == key.private_numbers()
    # A PEM key ignores COSIGN_PASSWORD.
    priv, _ = generate_dev_keypair(tmp_path / "k")
    assert load_private_key(priv).curve.name == "secp256r1"
