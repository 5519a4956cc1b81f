"""The calibration set for `hailo optimize`: a versioned .npy of preprocessed windows.

Windows are float32 [N, 100, 9] with the same normalisation as at runtime (the sidecar feeds
the model raw normalised windows; no extra scaling happens on the device). The version is part
of the file name, and its sha256 goes into the manifest.
"""

from __future__ import annotations

from pathlib import Path

from release.checksums import sha256_file
from release.errors import InvalidInput

CALIBRATION_VERSION = "v1"
DEFAULT_WINDOWS = 64


def write_calibration_set(out_dir: Path, windows: object | None = None, *, count: int = DEFAULT_WINDOWS) -> tuple[Path, str]:
    """Write ``calib-<version>.npy``; return its path and sha256."""
    import numpy as np

    from release.sample_model import golden_windows

    data = golden_windows(count, seed=2) if windows is None else np.asarray(windows, dtype=np.float32)
    if data.ndim != 3 or data.shape[1:] != (100, 9) or len(data) == 0:
        raise InvalidInput(f"calibration windows have shape {data.shape}, expected [N, 100, 9] with N ≥ 1")
    if not np.isfinite(data).all():
        raise InvalidInput("calibration windows contain NaN/Inf")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"calib-{CALIBRATION_VERSION}.npy"
    np.save(path, data, allow_pickle=False)
    return path, sha256_file(path)
