"""Core library benchmarks: sha256 throughput vs the sha256sum binary, import time of `release`."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.table import Row

GIB = 1 << 30


def _make_file(path: Path, size: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as fh:
        for _ in range(size // len(block)):
            fh.write(block)


_HASH_CHILD = """
import resource, sys, time
from release.checksums import sha256_file
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
digest = sha256_file(sys.argv[1])
dt = time.perf_counter() - t0
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(digest, dt, (after - before) / 1024)
"""


def sha256_rows(size: int = GIB) -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "blob.bin"
        _make_file(path, size)
        # Warm the page cache so both sides read from memory, not disk.
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
        lib_times, bin_times, rss = [], [], []
        for _ in range(3):
            out = subprocess.run(
                [sys.executable, "-c", _HASH_CHILD, str(path)], capture_output=True, text=True, check=True
            ).stdout.split()
            lib_digest, lib_times_s, rss_mib = out[0], float(out[1]), float(out[2])
            lib_times.append(lib_times_s)
            rss.append(rss_mib)
            t0 = time.perf_counter()
            bin_digest = subprocess.run(
                ["sha256sum", str(path)], capture_output=True, text=True, check=True
            ).stdout.split()[0]
            bin_times.append(time.perf_counter() - t0)
            if lib_digest != bin_digest:
                raise AssertionError(f"digest mismatch: library {lib_digest} vs sha256sum {bin_digest}")
    mib = size / (1 << 20)
    lib_tp, bin_tp = mib / min(lib_times), mib / min(bin_times)
    ratio = lib_tp / bin_tp
    growth = max(rss)
    return [
        Row("sha256 library (1 GiB)", lib_tp, "MiB/s", "-", None),
        Row("sha256sum binary (1 GiB)", bin_tp, "MiB/s", "-", None),
        Row("sha256 library / sha256sum", ratio, "x", ">= 0.9", ratio >= 0.9),
        Row("sha256 RSS growth (1 GiB)", growth, "MiB", "<= 16", growth <= 16),
    ]


def _import_ms(stmt: str, runs: int = 7) -> float:
    samples, base = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", stmt], check=True)
        samples.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        base.append(time.perf_counter() - t0)
    return (statistics.median(samples) - statistics.median(base)) * 1000


def import_time_rows() -> list[Row]:
    pkg = _import_ms("import release")
    cli = _import_ms("import release.cli")
    core = _import_ms("import release.manifest, release.store, release.config")
    return [
        Row("import release", pkg, "ms", "< 150", pkg < 150, "over bare interpreter start"),
        Row("import release.cli", cli, "ms", "< 150", cli < 150, "what every hailo-release command pays"),
        Row("import manifest+store+config", core, "ms", "-", None, "pydantic models, loaded only where used"),
    ]


def rows() -> list[Row]:
    return [*sha256_rows(), *import_time_rows()]
