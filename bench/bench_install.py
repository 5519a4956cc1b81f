"""Install time and on-disk size: the bare CLI (`pip install hailo-pipeline`, requirements/cli.lock)
beside the on-call set (+ gcs, gcs.lock) and the Airflow set (airflow.lock), side by side in one run.

Each set goes into a fresh venv the way setup.sh and the docs do it: `python -m venv`, then
`pip install --require-hashes --no-deps -r <lock>`, then the project's wheel with --no-deps. Two
timings per set, because the network is not ours to measure alone:
- from the index: what a person waits for (download + unpack + byte-compile);
- from local wheels: the same install with every wheel already downloaded (--no-index), the part
  the machine does.
Size is the venv on disk afterwards (du, bytes). HAILO_BENCH_INSTALL_SETS=cli,airflow picks sets;
HAILO_BENCH_INSTALL_FROM_INDEX=0 skips the index timing (no network)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.table import Row

REPO = Path(__file__).resolve().parents[1]
SETS = {"cli": "bare CLI", "gcs": "on-call CLI + gcs", "airflow": "Airflow + providers"}


def _run(argv: list[str], timeout: float = 1800) -> None:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])}…: {res.stderr[-2000:]}")


def _project_wheel(dest: Path) -> Path:
    src = dest / "src"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src)
    shutil.copytree(REPO / "release", src / "release", ignore=shutil.ignore_patterns("__pycache__"))
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(dest), str(src)])
    return next(dest.glob("hailo_pipeline-*.whl"))


def _du(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _install(venv: Path, lock: Path, wheel: Path, wheels: Path | None) -> float:
    """Seconds for venv + locked install + project; from ``wheels`` only when given."""
    t0 = time.perf_counter()
    _run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps"]
    source = ["--no-index", "--find-links", str(wheels)] if wheels else []
    _run([*pip, *source, "--require-hashes", "-r", str(lock)])
    _run([*pip, "--no-index", str(wheel)])
    return time.perf_counter() - t0


def _measure(name: str, work: Path, wheel: Path, from_index: bool) -> dict[str, float]:
    lock = REPO / "requirements" / f"{name}.lock"
    wheels = work / f"wheels-{name}"
    t0 = time.perf_counter()
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes", "--only-binary=:all:",
          "-r", str(lock), "-d", str(wheels)])
    download_s = time.perf_counter() - t0
    out = {"packages": float(len(list(wheels.glob("*.whl")))), "download_s": download_s,
           "wheels_mb": _du(wheels) / 1e6}
    out["local_s"] = _install(work / f"venv-{name}-local", lock, wheel, wheels)
    out["size_mb"] = _du(work / f"venv-{name}-local") / 1e6
    shutil.rmtree(work / f"venv-{name}-local")
    if from_index:
        out["index_s"] = _install(work / f"venv-{name}-index", lock, wheel, None)
        shutil.rmtree(work / f"venv-{name}-index")
    shutil.rmtree(wheels)
    return out


def rows() -> list[Row]:
    names = [n for n in os.environ.get("HAILO_BENCH_INSTALL_SETS", "cli,gcs,airflow").split(",") if n in SETS]
    from_index = os.environ.get("HAILO_BENCH_INSTALL_FROM_INDEX", "1") != "0"
    results: dict[str, dict[str, float]] = {}
    loads = [os.getloadavg()[0]]  # other jobs on the machine slow every set alike; the ratios hold
    with tempfile.TemporaryDirectory(prefix="bench-install-") as tmp:
        wheel = _project_wheel(Path(tmp) / "dist")
        for name in names:  # one after another: two installs at once would share the disk and the link
            results[name] = _measure(name, Path(tmp), wheel, from_index)
            loads.append(os.getloadavg()[0])
    note = f"fresh venv, byte-compiled; 1-min load {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores"
    out: list[Row] = []
    for name, r in results.items():
        label = f"install {name}.lock ({SETS[name]}, {int(r['packages'])} wheels, {r['wheels_mb']:.0f} MB)"
        if "index_s" in r:
            out.append(Row(f"{label}: from the index", r["index_s"], "s", "-", None, note))
        out.append(Row(f"{label}: from local wheels", r["local_s"], "s", "-", None, note))
        out.append(Row(f"install {name}.lock: venv on disk", r["size_mb"], "MB", "-", None, "du of the venv"))
    if "cli" in results:
        base = results["cli"]
        for name in (n for n in results if n != "cli"):
            r = results[name]
            for key, what in (("index_s", "time from the index"), ("local_s", "time from local wheels"),
                              ("size_mb", "size on disk")):
                if key in r and key in base:
                    out.append(Row(f"{name} / cli: {what}", r[key] / base[key], "x", "-", None, "same run, same machine"))
    return out
