"""Streaming sha256 of artifacts and the ``sha256sum -c`` file format.

hashlib has no file-digest helper before 3.11's ``hashlib.file_digest``; we use that (it
reads in fixed-size chunks into a reused buffer, so memory stays constant for any file size).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Sequence
from pathlib import Path

from release.errors import IntegrityError, InvalidInput

_SUM_LINE = re.compile(r"^(?P<hex>[0-9a-f]{64}) (?P<mode>[ *])(?P<name>.+)$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file, read in chunks (constant memory)."""
    with open(path, "rb", buffering=0) as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_hex_digest(value: str) -> str:
    """Validate a 64-hex sha256 digest (lowercase) and return it."""
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise InvalidInput(f"not a sha256 hex digest: {value!r}")
    return value


def verify_file(path: Path | str, expected_hex: str) -> None:
    """Raise :class:`IntegrityError` unless the file's sha256 equals ``expected_hex``."""
    expected = check_hex_digest(expected_hex)
    p = Path(path)
    if not p.is_file():
        raise IntegrityError(f"{p}: file is missing, expected sha256 {expected}")
    actual = sha256_file(p)
    if not hmac.compare_digest(actual, expected):
        raise IntegrityError(f"{p}: sha256 mismatch (expected {expected}, got {actual})")


def write_sha256sum(files: Sequence[Path], out: Path, base: Path | None = None) -> Path:
    """Write ``<hex>  <name>`` lines (``sha256sum`` text mode) for ``files`` into ``out``.

    Names are relative to ``base`` (default: the directory of ``out``), so ``sha256sum -c``
    run from that directory verifies them.
    """
    root = (base or out.parent).resolve()
    lines = []
    for f in files:
        rel = Path(f).resolve().relative_to(root)
        name = rel.as_posix()
        if "\n" in name or "\\" in name:
            raise InvalidInput(f"file name {name!r} cannot be written to a sha256sum file")
        lines.append(f"{sha256_file(f)}  {name}\n")
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, out)
    return out


def parse_sha256sum(sumfile: Path) -> list[tuple[str, str]]:
    """Parse a sha256sum file into ``(hex, name)`` pairs, rejecting anything else."""
    entries = []
    for lineno, line in enumerate(sumfile.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        m = _SUM_LINE.fullmatch(line)
        if m is None:
            raise IntegrityError(f"{sumfile}:{lineno}: not a sha256sum line: {line[:80]!r}")
        name = m["name"]
        if name.startswith("/") or ".." in Path(name).parts:
            raise IntegrityError(f"{sumfile}:{lineno}: refusing path outside the directory: {name!r}")
        entries.append((m["hex"], name))
    if not entries:
        raise IntegrityError(f"{sumfile}: no checksums in file")
    return entries


def verify_sha256sum(sumfile: Path) -> list[Path]:
    """Verify every entry of a sha256sum file relative to its directory; return the verified paths."""
    if not sumfile.is_file():
        raise IntegrityError(f"{sumfile}: checksum file is missing")
    verified = []
    for hex_digest, name in parse_sha256sum(sumfile):
        path = sumfile.parent / name
        verify_file(path, hex_digest)
        verified.append(path)
    return verified
