"""The compile cache: one directory per key (ONNX sha256, calibration sha256, model script sha256,
DFC version, hw_arch) holding the HEF, the DFC's logs and ``entry.json``, so an unchanged model is
not recompiled (release.compile). An entry is written to a temporary directory and renamed into
place, and its HEF's sha256 is checked on every hit: a torn or corrupted entry is a miss, never a
bad HEF.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from release.checksums import sha256_bytes, sha256_file


def cache_key(onnx_sha: str, calib_sha: str | None, script_sha: str | None, dfc_version: str, hw_arch: str) -> str:
    return sha256_bytes(json.dumps([onnx_sha, calib_sha, script_sha, dfc_version, hw_arch], separators=(",", ":")).encode())


class CacheEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    hef_sha256: str
    dfc_version: str
    hailort_version: str
    compiled_by_double: bool
    stage_seconds: dict[str, float]
    compiler_image: str | None = None


def find_entry(entry_dir: Path, net_name: str) -> CacheEntry | None:
    meta, hef = entry_dir / "entry.json", entry_dir / f"{net_name}.hef"
    if not meta.is_file() or not hef.is_file():
        return None
    try:
        entry = CacheEntry.model_validate_json(meta.read_bytes())
    except ValueError:
        entry = None
    if entry is None or sha256_file(hef) != entry.hef_sha256:
        # A corrupt entry is dropped and the model recompiled: the cache must never hand out bad bytes.
        shutil.rmtree(entry_dir, ignore_errors=True)
        return None
    return entry


def save_entry(entry_dir: Path, net_name: str, hef: Path, build: Path, entry: CacheEntry) -> None:
    tmp = entry_dir.with_name(entry_dir.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "logs").mkdir(parents=True)
    shutil.copyfile(hef, tmp / f"{net_name}.hef")
    for log in [*build.glob("*.log"), *build.glob("*.json")]:
        shutil.copyfile(log, tmp / "logs" / log.name)
    (tmp / "entry.json").write_text(entry.model_dump_json(), encoding="utf-8")
    shutil.rmtree(entry_dir, ignore_errors=True)
    try:
        os.replace(tmp, entry_dir)
    except OSError:
        # A concurrent build of the same key stored its entry first: same key, same inputs; keep theirs.
        shutil.rmtree(tmp, ignore_errors=True)
