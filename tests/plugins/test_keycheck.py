"""hailo_airflow.keycheck: one signing key per stack, recorded in the shared store; a host with
another key (or none) is refused before it runs a task, naming both key IDs."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hailo_airflow.keycheck import KeyMismatch, check

from release.keys import generate_dev_keypair, key_id, load_public_key


def _pair(tmp_path, name):
    priv, pub = generate_dev_keypair(tmp_path / name)
    return str(priv), str(pub), key_id(load_public_key(pub))


def test_first_host_records_later_hosts_must_match(tmp_path):
    store = tmp_path / "store"
    priv, pub, kid = _pair(tmp_path, "a")
    assert check(store, priv, pub) == kid
    assert (store / "keys" / "release-signing.keyid").read_text().strip() == kid
    assert check(store, priv, pub) == kid  # same key again: fine
    other_priv, other_pub, other_kid = _pair(tmp_path, "b")
    with pytest.raises(KeyMismatch) as err:
        check(store, other_priv, other_pub)
    assert kid in str(err.value) and other_kid in str(err.value)
    assert (store / "keys" / "release-signing.keyid").read_text().strip() == kid


def test_no_key_or_halves_of_two_pairs_refused(tmp_path):
    priv, _, _ = _pair(tmp_path, "a")
    _, other_pub, other_kid = _pair(tmp_path, "b")
    with pytest.raises(KeyMismatch, match="never generates"):
        check(tmp_path / "store", None, None)
    with pytest.raises(KeyMismatch, match="not the private half") as err:
        check(tmp_path / "store", priv, other_pub)
    assert other_kid in str(err.value)
    assert not (tmp_path / "store" / "keys").exists()


def test_module_entry_point_exit_codes(tmp_path):
    priv, pub, kid = _pair(tmp_path, "a")
    _, other_pub, _ = _pair(tmp_path, "b")
    env = {"HAILO_ARTIFACT_ROOT": str(tmp_path / "store"), "HAILO_SIGNING_KEY": priv, "HAILO_SIGNING_PUB": pub,
           "PYTHONPATH": ":".join(sys.path)}
    ok = subprocess.run([sys.executable, "-m", "hailo_airflow.keycheck"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0 and kid in ok.stdout, ok.stderr
    bad = subprocess.run([sys.executable, "-m", "hailo_airflow.keycheck"], env={**env, "HAILO_SIGNING_PUB": other_pub},
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "not the private half" in bad.stderr
