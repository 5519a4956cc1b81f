import shutil
import subprocess

import pytest

from release.checksums import (
    parse_sha256sum,
    sha256_bytes,
    sha256_file,
    verify_file,
    verify_sha256sum,
    write_sha256sum,
)
from release.errors import IntegrityError, InvalidInput


def _sha256sum_binary(path):
    return subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True).stdout.split()[0]


def test_sha256_file_matches_binary(tmp_path):
    f = tmp_path / "blob.bin"
    f.write_bytes(bytes(range(256)) * 40_000 + b"tail")
    assert sha256_file(f) == _sha256sum_binary(f) == sha256_bytes(f.read_bytes())


def test_sumfile_verified_by_real_sha256sum(tmp_path):
    a = tmp_path / "model.hef"
    b = tmp_path / "sub" / "model.onnx"
    b.parent.mkdir()
    a.write_bytes(b"hef-bytes")
    b.write_bytes(b"onnx-bytes")
    out = write_sha256sum([a, b], tmp_path / "hef_sha256sum.txt")
    assert shutil.which("sha256sum")
    res = subprocess.run(["sha256sum", "-c", out.name], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "model.hef: OK" in res.stdout
    assert verify_sha256sum(out) == [a, b]


def test_tampered_artifact_detected_by_both(tmp_path):
    a = tmp_path / "model.hef"
    a.write_bytes(b"hef-bytes")
    out = write_sha256sum([a], tmp_path / "hef_sha256sum.txt")
    a.write_bytes(b"hef-bytez")
    res = subprocess.run(["sha256sum", "-c", out.name], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode != 0
    with pytest.raises(IntegrityError, match="model.hef: sha256 mismatch"):
        verify_sha256sum(out)


def test_missing_file_and_traversal_refused(tmp_path):
    (tmp_path / "s.txt").write_text("0" * 64 + "  ../etc/passwd\n")
    with pytest.raises(IntegrityError, match="outside the directory"):
        parse_sha256sum(tmp_path / "s.txt")
    (tmp_path / "t.txt").write_text("0" * 64 + "  gone.bin\n")
    with pytest.raises(IntegrityError, match="missing"):
        verify_sha256sum(tmp_path / "t.txt")
    (tmp_path / "u.txt").write_text("not a line\n")
    with pytest.raises(IntegrityError, match="not a sha256sum line"):
        verify_sha256sum(tmp_path / "u.txt")


def test_verify_file_rejects_bad_digest_text(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x")
    with pytest.raises(InvalidInput):
        verify_file(f, "XYZ")
    verify_file(f, sha256_bytes(b"x"))
