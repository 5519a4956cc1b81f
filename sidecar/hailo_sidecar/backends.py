"""Inference backends and the router that picks one.

- ``stub``: deterministic outputs of the right shapes (contract tests, GPU-server profile).
- ``onnx``: onnxruntime on the CPU, running the released ONNX for real.
- ``hailo``: HailoRT 4.x ``hailo_platform`` (VDevice → create_infer_model → configure →
  bindings → run) on ``/dev/hailo0``.

``auto`` picks hailo when a valid HEF, the library and the device are present, else onnx, else
refuses: production never silently serves stub outputs. Each backend's library is imported only
when that backend is chosen (hailo_sidecar.runtimes: numpy, onnxruntime, hailo_platform); the stub
and the request path need no numpy, which was ~110 of ~320 ms of stub-mode imports here.
Before a backend serves, ``warm_up`` runs the golden windows through it and refuses non-finite
outputs (a model with NaN weights would otherwise answer every request with null).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import re
from collections.abc import Sequence
from itertools import chain
from operator import mul
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from hailo_sidecar.config import SidecarConfig
from hailo_sidecar.hef import HefInfo

if TYPE_CHECKING:
    from hailo_sidecar.runtimes import HailoBackend, OnnxBackend


class Windows:
    """Validated windows, flattened row-major: window k, row i, channel c is
    ``flat[(k * length + i) * channels + c]`` (JSON numbers as orjson parsed them: int | float)."""

    __slots__ = ("channels", "flat", "length", "n")

    def __init__(self, flat: list[float], n: int, length: int, channels: int) -> None:
        self.flat, self.n, self.length, self.channels = flat, n, length, channels

    def __len__(self) -> int:
        return self.n

    def index(self, at: int) -> tuple[int, int, int]:
        """(window, row, column) of flat[at]."""
        k, rest = divmod(at, self.length * self.channels)
        i, c = divmod(rest, self.channels)
        return k, i, c

    def column(self, k: int, c: int) -> list[float]:
        """Channel c of window k over time (a strided slice: no copy of the rest)."""
        start = k * self.length * self.channels + c
        return self.flat[start : start + self.length * self.channels : self.channels]

    @classmethod
    def of(cls, nested: Sequence[Sequence[Sequence[float]]]) -> Windows:
        """From [n][L][C] nested sequences (numpy arrays included)."""
        n, length, channels = len(nested), len(nested[0]), len(nested[0][0])
        return cls([float(v) for window in nested for row in window for v in row], n, length, channels)


class BackendError(RuntimeError):
    """The backend cannot serve; the message says what to fix."""


class Backend(Protocol):
    name: str

    def infer(self, windows: Windows) -> tuple[Any, Any]:
        """windows [n][100][9] → (latent [n, 64], motif_scores [n, NUM_MOTIFS]): numpy arrays
        for the real backends, lists of floats for the stub."""
        ...


class Selection(NamedTuple):
    backend: Backend
    reason: str


class HefState(NamedTuple):
    """What HEF_PATH holds: a validated HEF, nothing, or a file that is not a HEF (and why)."""

    path: Path
    info: HefInfo | None = None
    problem: str | None = None  # set when a file is there but is not a valid HEF


def _plain_windows(n: int, length: int, channels: int) -> list[list[list[float]]]:
    """Deterministic smooth windows without numpy (the stub's warm-up input)."""
    return [
        [[math.sin(2 * math.pi * (0.5 + (k * channels + c) % 7) * i / length + c) for c in range(channels)]
         for i in range(length)]
        for k in range(n)
    ]


def _dims(a: Any) -> tuple[int, int]:
    if hasattr(a, "shape"):
        shape = tuple(a.shape)
        return (shape[0], shape[1]) if len(shape) == 2 else (-1, -1)
    return (len(a), len(a[0]) if len(a) and all(len(r) == len(a[0]) for r in a) else -1)


def nonfinite_rows(latent: Any, motifs: Any) -> list[int]:
    """Indices of the windows whose outputs hold NaN/Inf (numpy arrays or lists of floats)."""
    if hasattr(latent, "dtype"):
        import numpy as np

        finite = np.isfinite(latent).all(axis=1) & np.isfinite(motifs).all(axis=1)
        return [int(i) for i in np.flatnonzero(~finite)]
    return [i for i, (lat, mot) in enumerate(zip(latent, motifs, strict=True))
            if not all(map(math.isfinite, chain(lat, mot)))]


def warm_up(backend: Backend, cfg: SidecarConfig) -> None:
    """Run the golden windows plus an all-zero window; refuse wrong shapes and non-finite outputs."""
    length, channels = cfg.window_length, cfg.window_channels
    if backend.name == "stub":
        nested = _plain_windows(2, length, channels)  # no model to verify: shapes and finiteness only
    else:
        from hailo_sidecar.runtimes import golden_windows

        nested = golden_windows(8, length=length, channels=channels).tolist()
    nested.append([[0.0] * channels for _ in range(length)])
    windows = Windows.of(nested)
    latent, motifs = backend.infer(windows)
    n = len(windows)
    if _dims(latent) != (n, cfg.latent_dim) or _dims(motifs) != (n, cfg.num_motifs):
        raise BackendError(
            f"warm-up produced shapes {list(_dims(latent))}, {list(_dims(motifs))}; expected "
            f"[{n}, {cfg.latent_dim}], [{n}, {cfg.num_motifs}] (NUM_MOTIFS?)"
        )
    bad = nonfinite_rows(latent, motifs)
    if bad:
        raise BackendError(
            f"warm-up on the golden windows produced non-finite outputs (NaN/Inf) for {len(bad)} of {n} windows: "
            f"the {backend.name} model's weights or numerics are broken; refusing to serve it"
        )


class StubBackend:
    """Deterministic function of the input, in plain Python so stub mode never imports numpy
    (measured ~0.3 ms per window): each latent/motif value is a fixed smooth projection of one
    channel over time; motif scores go through a sigmoid."""

    name = "stub"

    def __init__(self, cfg: SidecarConfig) -> None:
        length, self._channels = cfg.window_length, cfg.window_channels
        scale = 1.0 / math.sqrt(length)
        self._w_latent = [[math.sin(0.61 * k + 0.37 * i + 0.5) * scale for i in range(length)]
                          for k in range(cfg.latent_dim)]
        self._w_motif = [[math.cos(0.43 * j + 0.29 * i) * scale for i in range(length)] for j in range(cfg.num_motifs)]

    @staticmethod
    def _sigmoid(z: float) -> float:
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)

    def infer(self, windows: Windows) -> tuple[list[list[float]], list[list[float]]]:
        latents, motifs = [], []
        c = self._channels
        for k in range(windows.n):
            cols = [windows.column(k, ch) for ch in range(c)]
            latents.append([float(sum(map(mul, cols[i % c], w))) for i, w in enumerate(self._w_latent)])
            motifs.append([self._sigmoid(float(sum(map(mul, cols[j % c], w)))) for j, w in enumerate(self._w_motif)])
        return latents, motifs


_ARCH_LINE = re.compile(r"Device Architecture:\s*(\S+)")


def _which(name: str) -> str | None:
    """shutil.which for a plain command name, without importing shutil (bz2, lzma, fnmatch: ~3 ms)."""
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(folder or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


class Identify:
    """`hailortcli fw-control identify` (read "Device Architecture:", not the board name), started
    as soon as the hailo backend is chosen so the CLI runs on another core while numpy and
    hailo_platform import, instead of adding its whole run time to the cold start."""

    def __init__(self, hailortcli: str = "hailortcli") -> None:
        import subprocess

        exe = _which(hailortcli)
        if exe is None:
            raise BackendError("hailortcli not found: install HailoRT 4.x matching the host's hailo_pci driver")
        self._proc = subprocess.Popen(
            [exe, "fw-control", "identify"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )

    def discard(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.communicate()

    def result(self, timeout: float = 10) -> str:
        import subprocess

        try:
            out, err = self._proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.communicate()
            raise BackendError(f"hailortcli fw-control identify did not answer within {timeout:.0f} s") from None
        match = _ARCH_LINE.search(out)
        if self._proc.returncode != 0 or match is None:
            raise BackendError(
                f"hailortcli fw-control identify failed (exit {self._proc.returncode}): {err.strip()[-300:]}"
            )
        return match.group(1).strip().lower().replace("_", "")


def device_architecture(hailortcli: str = "hailortcli") -> str:
    """The device architecture from `hailortcli fw-control identify`."""
    return Identify(hailortcli).result()


def _onnx(cfg: SidecarConfig) -> OnnxBackend:
    from hailo_sidecar.runtimes import OnnxBackend

    return OnnxBackend(cfg)


_prestarted: list[Identify] = []


def prestart_identify(cfg: SidecarConfig) -> None:
    """Start `hailortcli fw-control identify` at process start when the hailo backend may be chosen,
    so it runs on another core while the app imports, the HEF is checked and numpy loads (the
    identify wait was ~45 ms of the hailo cold start here when started only at backend load)."""
    if (cfg.infer_mode in ("hailo", "auto") and cfg.hailo_device.exists() and cfg.hef_path.is_file()
            and importlib.util.find_spec("hailo_platform") is not None):
        with contextlib.suppress(BackendError):  # reported when the backend is loaded
            _prestarted.append(Identify())


def _hailo(cfg: SidecarConfig, hef: HefState) -> HailoBackend:
    usable = hef.info is not None and hef.info.kind != "placeholder" and cfg.hailo_device.exists()
    identify = _prestarted.pop() if _prestarted else None
    if identify is None and usable and importlib.util.find_spec("hailo_platform") is not None:
        identify = Identify()
    from hailo_sidecar.runtimes import HailoBackend

    return HailoBackend(cfg, hef, identify)


def _hef_usable(hef: HefState) -> str | None:
    """Why HEF_PATH cannot feed the Hailo backend, or None when it can."""
    if hef.info is None:
        return hef.problem or f"no HEF at {hef.path}"
    if hef.info.kind == "placeholder":
        return f"HEF at {hef.path} is a placeholder (no DFC compile ran)"
    return None


def select_backend(cfg: SidecarConfig, hef: HefState) -> Selection:
    """Choose the backend for ``cfg.infer_mode``; raise BackendError with the reason otherwise."""
    machine = os.uname().machine.lower()
    if cfg.infer_mode not in ("stub",) and machine in ("x86_64", "amd64") and not cfg.allow_amd64:
        raise BackendError(
            f"refusing to serve a real backend on {machine}: the runtime image is for linux/arm64 (Pi 5). "
            "Set INFER_MODE=stub, or HAILO_SIDECAR_ALLOW_AMD64=1 for tests and the local demo."
        )
    if cfg.infer_mode != "auto" and hef.problem is not None:
        # A file that is not a HEF is never reported as one: in an explicit mode, refuse to start.
        raise BackendError(f"INFER_MODE={cfg.infer_mode}: HEF_PATH is not a valid HEF: {hef.problem}")
    if cfg.infer_mode == "stub":
        return Selection(StubBackend(cfg), "INFER_MODE=stub")
    if cfg.infer_mode == "onnx":
        return Selection(_onnx(cfg), "INFER_MODE=onnx")
    if cfg.infer_mode == "hailo":
        return Selection(_hailo(cfg, hef), "INFER_MODE=hailo")
    has_lib = importlib.util.find_spec("hailo_platform") is not None
    hef_problem = _hef_usable(hef)
    if hef_problem is None and has_lib and cfg.hailo_device.exists():
        return Selection(_hailo(cfg, hef), "auto: a valid HEF, hailo_platform and the device are present")
    missing = [
        what
        for what, ok in (
            (hef_problem, hef_problem is None),
            ("hailo_platform not installed", has_lib),
            (f"no {cfg.hailo_device}", cfg.hailo_device.exists()),
        )
        if not ok
    ]
    reason = "hailo unavailable (" + "; ".join(str(m) for m in missing) + ")"
    while _prestarted:  # the identify started at process start is not needed: reap it
        _prestarted.pop().discard()
    if cfg.onnx_path.is_file():
        return Selection(_onnx(cfg), "auto: " + reason + "; serving the ONNX on the CPU")
    raise BackendError("auto: no backend can serve: " + reason + f", and no ONNX at {cfg.onnx_path}")
