"""The calibration set for `hailo optimize`: a versioned .npy of preprocessed windows.

Windows are float32 [N, 100, 9] with the same normalisation as at runtime: the sidecar hands the
model the client's already-normalised windows unchanged (no scaling on the device), so the
calibration set is those windows as they are, never re-scaled here. The version is part of the
file name; its sha256 goes into the manifest and into the compile cache key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from release.checksums import sha256_file
from release.errors import InvalidInput

CALIBRATION_VERSION = "v1"
DEFAULT_WINDOWS = 64
CALIBRATION_SEED = 2  # golden_windows seed: distinct from the validation windows (seed 1)
WINDOW_SHAPE = (100, 9)
MAX_WINDOWS = 100_000  # ~360 MB of float32: far beyond what calibration needs


class CalibrationSet(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: Path
    sha256: str
    version: str
    count: int
    source: str  # "golden_windows(seed=2)" or the windows file it came from


def check_windows(data: Any) -> Any:
    """Return ``data`` as float32 [N,100,9] or raise InvalidInput saying what is wrong."""
    import numpy as np

    arr = np.asarray(data)
    if arr.dtype.kind not in "fiu":
        raise InvalidInput(f"calibration windows have dtype {arr.dtype}, expected numbers (float32)")
    if arr.ndim != 3 or tuple(arr.shape[1:]) != WINDOW_SHAPE or len(arr) == 0:
        raise InvalidInput(f"calibration windows have shape {tuple(arr.shape)}, expected [N, 100, 9] with N >= 1")
    if len(arr) > MAX_WINDOWS:
        raise InvalidInput(f"calibration set has {len(arr)} windows; at most {MAX_WINDOWS} are accepted")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise InvalidInput("calibration windows contain NaN/Inf")
    return arr


def load_windows(path: Path, key: str = "windows") -> Any:
    """Windows from a ``.npy`` file or an ``.npz`` (array ``key``); never unpickles."""
    import numpy as np

    if not path.is_file():
        raise InvalidInput(f"windows file {path} does not exist")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InvalidInput(f"{path} is not a readable .npy/.npz of windows: {exc}") from exc
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            if key not in loaded.files:
                raise InvalidInput(f"{path} has no array {key!r} (arrays: {', '.join(loaded.files) or 'none'})")
            return check_windows(loaded[key])
    return check_windows(loaded)


def build_calibration_set(
    out_dir: Path, *, windows: Any = None, windows_file: Path | None = None, count: int = DEFAULT_WINDOWS
) -> CalibrationSet:
    """Write ``calib-<version>.npy`` from ``windows``, a windows file, or the deterministic golden windows."""
    import numpy as np

    if windows is not None and windows_file is not None:
        raise InvalidInput("give calibration windows or a windows file, not both")
    if windows_file is not None:
        data, source = load_windows(windows_file), str(windows_file)
    elif windows is not None:
        data, source = check_windows(windows), "caller-provided windows"
    else:
        from release.sample_model import golden_windows

        if not 1 <= count <= MAX_WINDOWS:
            raise InvalidInput(f"calibration window count {count} must be between 1 and {MAX_WINDOWS}")
        data, source = check_windows(golden_windows(count, seed=CALIBRATION_SEED)), f"golden_windows(seed={CALIBRATION_SEED})"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"calib-{CALIBRATION_VERSION}.npy"
    tmp = path.with_suffix(".npy.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(data), allow_pickle=False)
    tmp.replace(path)
    return CalibrationSet(path=path, sha256=sha256_file(path), version=CALIBRATION_VERSION, count=len(data), source=source)


def write_calibration_set(out_dir: Path, windows: object | None = None, *, count: int = DEFAULT_WINDOWS) -> tuple[Path, str]:
    """Write ``calib-<version>.npy``; return its path and sha256 (see :func:`build_calibration_set`)."""
    cal = build_calibration_set(out_dir, windows=windows, count=count)
    return cal.path, cal.sha256
