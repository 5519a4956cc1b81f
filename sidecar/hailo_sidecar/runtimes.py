"""The real backends: onnxruntime on the CPU and HailoRT 4.x on /dev/hailo0 (numpy-based).

Imported only when one of them is chosen: onnxruntime and numpy are most of the onnx cold start
(numpy ~45 % of the whole stub-mode import time before the stub went pure Python).
"""

from __future__ import annotations

import importlib
import threading
from pathlib import Path
from typing import Any

import numpy as np

from hailo_sidecar.backends import BackendError, HefState, Identify, Windows, device_architecture
from hailo_sidecar.config import SidecarConfig


def as_array(windows: Windows | np.ndarray) -> np.ndarray:
    """float32 [n, L, C]; from the flat list in one pass (~4x faster than from nested lists)."""
    if isinstance(windows, Windows):
        return np.array(windows.flat, dtype=np.float32).reshape(windows.n, windows.length, windows.channels)
    return np.asarray(windows, dtype=np.float32)


GOLDEN_FILE = Path(__file__).resolve().parent / "golden.npy"


def golden_windows(n: int = 8, seed: int = 1, length: int = 100, channels: int = 9, prebuilt: bool = True) -> np.ndarray:
    """Deterministic float32 windows [n, L, C]: smooth multi-channel signals plus noise, the same
    as release.sample_model.golden_windows (a test keeps them equal; the sidecar imports nothing
    from release/). The default 8 are prebuilt in golden.npy (hailo_sidecar.openapi_gen writes it):
    loading them skips numpy.random's import, ~8 ms of the hailo cold start here."""
    if prebuilt and (n, seed, length, channels) == (8, 1, 100, 9) and GOLDEN_FILE.is_file():
        return np.asarray(np.load(GOLDEN_FILE, allow_pickle=False), dtype=np.float32)
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, length, dtype=np.float64)[None, :, None]
    freqs = rng.uniform(0.5, 8.0, size=(n, 1, channels))
    phases = rng.uniform(0.0, 2 * np.pi, size=(n, 1, channels))
    signal = np.sin(2 * np.pi * freqs * t + phases) + 0.1 * rng.standard_normal((n, length, channels))
    return signal.astype(np.float32)


def _sha256_file(path: Path) -> str:
    import hashlib

    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


class OnnxBackend:
    name = "onnx"

    def __init__(self, cfg: SidecarConfig) -> None:
        path = cfg.onnx_path
        if not path.is_file():
            raise BackendError(f"ONNX model not found at ONNX_PATH={path}; mount the release's model.onnx there")
        if cfg.expected_onnx_sha256 and _sha256_file(path) != cfg.expected_onnx_sha256:
            raise BackendError(f"{path}: sha256 does not match ONNX_SHA256={cfg.expected_onnx_sha256}")
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own pybind classes (InvalidProtobuf, Fail, ...)
            text = " ".join(str(exc).split())[:400]
            raise BackendError(f"onnxruntime cannot load ONNX_PATH={path} ({type(exc).__name__}): {text}") from None
        inp = self._session.get_inputs()[0]
        self._input_name = inp.name
        shape = list(inp.shape)
        if len(shape) != 3 or shape[1:] != [cfg.window_length, cfg.window_channels] or not isinstance(shape[0], int):
            raise BackendError(
                f"{path}: input {inp.name!r} has shape {shape}, expected [batch, {cfg.window_length}, {cfg.window_channels}]"
            )
        if inp.type != "tensor(float)":
            raise BackendError(f"{path}: input {inp.name!r} is {inp.type}, expected tensor(float) (float32)")
        self._batch = shape[0]
        outputs = {o.name: o for o in self._session.get_outputs()}
        for name, size in (("latent", cfg.latent_dim), ("motif_scores", cfg.num_motifs)):
            out = outputs.get(name)
            if out is None or not out.shape or out.shape[-1] != size:
                shape_text = None if out is None else out.shape
                raise BackendError(f"{path}: output {name!r} is {shape_text}, expected last dim {size} (NUM_MOTIFS?)")
            if out.type != "tensor(float)":
                raise BackendError(f"{path}: output {name!r} is {out.type}, expected tensor(float) (float32)")
        # onnxruntime sessions are thread-safe for run(), but one CPU thread each is all we
        # give it; a lock keeps latency predictable under concurrent requests.
        self._lock = threading.Lock()

    def infer(self, batch: Windows | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        windows = as_array(batch)
        latents, motifs = [], []
        n = windows.shape[0]
        with self._lock:
            for start in range(0, n, self._batch):
                chunk = windows[start : start + self._batch]
                pad = self._batch - chunk.shape[0]
                if pad:
                    chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), dtype=np.float32)])
                lat, mot = self._session.run(["latent", "motif_scores"], {self._input_name: chunk})
                latents.append(lat.reshape(self._batch, -1)[: self._batch - pad])
                motifs.append(mot.reshape(self._batch, -1)[: self._batch - pad])
        return np.concatenate(latents), np.concatenate(motifs)


class HailoBackend:
    """HailoRT 4.x InferModel API. One process owns /dev/hailo0, so this holds one VDevice."""

    name = "hailo"

    def __init__(self, cfg: SidecarConfig, hef: HefState, identify: Identify | None = None) -> None:
        if hef.info is None:
            raise BackendError(hef.problem or f"HEF not found at HEF_PATH={cfg.hef_path}")
        if hef.info.kind == "placeholder":
            raise BackendError(f"HEF_PATH={cfg.hef_path} is a placeholder (no DFC compile ran): nothing to run on Hailo")
        if not cfg.hailo_device.exists():
            raise BackendError(f"{cfg.hailo_device} is missing: run the container with --device {cfg.hailo_device}")
        try:
            hp: Any = importlib.import_module("hailo_platform")
        except ImportError as exc:
            raise BackendError(f"hailo_platform (HailoRT 4.x Python API) is not installed: {exc}") from None
        arch = identify.result() if identify is not None else device_architecture()
        want = hef.info.hw_arch
        if arch != want:
            raise BackendError(f"HEF compiled for {want} but the device is {arch}: recompile with --hw-arch {arch}")
        try:
            params = hp.VDevice.create_params()
            self._vdevice = hp.VDevice(params)
            self._model = self._vdevice.create_infer_model(str(cfg.hef_path))
            self._model.set_batch_size(1)
            self._configured = self._model.configure()
        except Exception as exc:  # HailoRTException carries the status code in its text
            text = str(exc)
            hint = ""
            if "HAILO_INVALID_DRIVER_VERSION" in text or "(76)" in text:
                hint = " — the HailoRT library in the image must exactly match the host's hailo_pci driver version"
            elif "HAILO_OUT_OF_PHYSICAL_DEVICES" in text or "(74)" in text:
                hint = " — another process owns /dev/hailo0; stop the old sidecar first (or use hailort_service)"
            raise BackendError(f"HailoRT failed to open the device/HEF: {text}{hint}") from None
        self._input_name = self._model.input().name
        self._lock = threading.Lock()

    def infer(self, batch: Windows | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        windows = as_array(batch)
        latents, motifs = [], []
        with self._lock:
            for window in windows:
                bindings = self._configured.create_bindings()
                bindings.input().set_buffer(np.ascontiguousarray(window[None, ...], dtype=np.float32))
                out = {}
                for name in ("latent", "motif_scores"):
                    buf = np.empty(self._model.output(name).shape, dtype=np.float32)
                    bindings.output(name).set_buffer(buf)
                    out[name] = buf
                self._configured.run([bindings], 1000)
                latents.append(out["latent"].reshape(-1))
                motifs.append(out["motif_scores"].reshape(-1))
        return np.stack(latents), np.stack(motifs)
