"""TEST DOUBLE of HailoRT 4.x's `hailo_platform` Python API — never shipped.

Implements the InferModel path the sidecar uses, strictly: VDevice.create_params(),
VDevice(params) as the single owner of the device (a second VDevice while one is open raises
HAILO_OUT_OF_PHYSICAL_DEVICES(74), like the real driver without hailort_service),
create_infer_model(hef_path) (the file must exist and be a HEF: our double HEFs start with
b"HEF\\x00" or the real magic), set_batch_size, configure(), create_bindings(),
bindings.input().set_buffer / bindings.output(name).set_buffer with exact shapes and dtype,
run(bindings_list, timeout_ms). Outputs are computed by onnxruntime from the ONNX named in
HAILO_DOUBLE_ONNX (so parity can be checked), else zeros. HAILO_DOUBLE_DRIVER_MISMATCH=1
makes VDevice raise HAILO_INVALID_DRIVER_VERSION(76).

HAILO_DOUBLE_INFER_MS (default 0: as fast as onnxruntime) is the device's time per inference, in
milliseconds: run() returns no sooner than that many ms per binding after it was called, waiting
asleep as the real run() waits for the chip (the CPU is free meanwhile; onnxruntime's own time counts
inside it). A number >= 0; anything else is refused at configure(), as a bad setting must not pass
for a fast device. The gate-fidelity tests set a device that runs near the 50 ms limit with it, and
one 30 % slower.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

_open_devices: list[VDevice] = []


class HailoRTException(Exception):
    pass


class _Params:
    scheduling_algorithm: str = "ROUND_ROBIN"


class _Stream:
    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        self.name = name
        self.shape = shape


class _Binding:
    def __init__(self, stream: _Stream) -> None:
        self._stream = stream
        self.buffer: np.ndarray | None = None

    def set_buffer(self, buffer: np.ndarray) -> None:
        if not isinstance(buffer, np.ndarray):
            raise HailoRTException("set_buffer expects a numpy array")
        if tuple(buffer.shape[-len(self._stream.shape):]) != self._stream.shape or buffer.dtype != np.float32:
            raise HailoRTException(
                f"HAILO_INVALID_ARGUMENT(2): buffer shape {buffer.shape} dtype {buffer.dtype} for {self._stream.name} "
                f"does not match {self._stream.shape} float32"
            )
        self.buffer = buffer

    def get_buffer(self) -> np.ndarray:
        if self.buffer is None:
            raise HailoRTException("buffer not set")
        return self.buffer


class _Bindings:
    def __init__(self, model: InferModel) -> None:
        self._model = model
        self._input = _Binding(model.input())
        self._outputs = {name: _Binding(s) for name, s in model._outputs.items()}

    def input(self, name: str | None = None) -> _Binding:
        return self._input

    def output(self, name: str | None = None) -> _Binding:
        if name is None:
            if len(self._outputs) != 1:
                raise HailoRTException("model has several outputs: name one")
            return next(iter(self._outputs.values()))
        if name not in self._outputs:
            raise HailoRTException(f"HAILO_NOT_FOUND(61): no output named {name}")
        return self._outputs[name]


class ConfiguredInferModel:
    def __init__(self, model: InferModel) -> None:
        self._model = model
        self._session = None
        self._infer_s = _infer_seconds()
        onnx_path = os.environ.get("HAILO_DOUBLE_ONNX")
        if onnx_path:
            import onnxruntime as ort

            # One thread, no spin-waiting: the chip computes, not the host CPU. onnxruntime's default pool
            # (one spinning thread per core) took the device's only core from the sidecar when pinned: server
            # p95 15 ms for a ~1 ms model on a busy 2-core host, 1 ms with this.
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._session = ort.InferenceSession(onnx_path, sess_options=opts, providers=["CPUExecutionProvider"])

    def create_bindings(self) -> _Bindings:
        return _Bindings(self._model)

    def run(self, bindings_list: list[_Bindings], timeout: int) -> None:
        if not isinstance(timeout, int) or timeout <= 0:
            raise HailoRTException("HAILO_INVALID_ARGUMENT(2): timeout must be a positive int (ms)")
        busy_s = self._infer_s * len(bindings_list)
        if busy_s * 1000 > timeout:  # the chip would not finish in time: the real run() times out
            time.sleep(timeout / 1000)
            raise HailoRTException(f"HAILO_TIMEOUT(4): inference did not finish within {timeout} ms")
        done_at = time.perf_counter() + busy_s
        for b in bindings_list:
            x = b.input().get_buffer()
            outs: dict[str, np.ndarray]
            if self._session is not None:
                res = self._session.run(list(self._model._outputs), {self._session.get_inputs()[0].name: x})
                outs = dict(zip(self._model._outputs, res, strict=True))
            else:
                outs = {n: np.zeros(s.shape, np.float32) for n, s in self._model._outputs.items()}
            for name, value in outs.items():
                b.output(name).get_buffer()[...] = value.reshape(b.output(name).get_buffer().shape)
        wait = done_at - time.perf_counter()
        if wait > 0:
            time.sleep(wait)

    def __enter__(self) -> ConfiguredInferModel:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def _infer_seconds() -> float:
    raw = os.environ.get("HAILO_DOUBLE_INFER_MS", "0")
    try:
        ms = float(raw)
    except ValueError:
        ms = math.nan
    if not (math.isfinite(ms) and ms >= 0):
        raise HailoRTException(f"HAILO_DOUBLE_INFER_MS={raw!r}: expected a number of milliseconds >= 0")
    return ms / 1000


class InferModel:
    def __init__(self, hef_path: str) -> None:
        data = Path(hef_path).read_bytes()[:4]
        if data[:3] != b"HEF" and data != b"\x01HEF":
            raise HailoRTException(f"HAILO_INVALID_HEF(26): {hef_path} is not a HEF file")
        num_motifs = int(os.environ.get("HAILO_DOUBLE_NUM_MOTIFS", "12"))
        self._input = _Stream("window", (1, 100, 9))
        self._outputs = {"latent": _Stream("latent", (1, 64)), "motif_scores": _Stream("motif_scores", (1, num_motifs))}
        self._batch = 1

    def set_batch_size(self, n: int) -> None:
        if n < 1:
            raise HailoRTException("HAILO_INVALID_ARGUMENT(2): batch size")
        self._batch = n

    def input(self, name: str | None = None) -> _Stream:
        return self._input

    def output(self, name: str | None = None) -> _Stream:
        if name is None:
            raise HailoRTException("model has several outputs: name one")
        return self._outputs[name]

    def configure(self) -> ConfiguredInferModel:
        return ConfiguredInferModel(self)


class VDevice:
    @staticmethod
    def create_params() -> _Params:
        return _Params()

    def __init__(self, params: _Params | None = None) -> None:
        if os.environ.get("HAILO_DOUBLE_DRIVER_MISMATCH") == "1":
            raise HailoRTException("HAILO_INVALID_DRIVER_VERSION(76): driver version mismatch")
        if _open_devices:
            raise HailoRTException("HAILO_OUT_OF_PHYSICAL_DEVICES(74): the device is in use by another VDevice")
        _open_devices.append(self)

    def create_infer_model(self, hef_path: str) -> InferModel:
        return InferModel(hef_path)

    def release(self) -> None:
        if self in _open_devices:
            _open_devices.remove(self)

    def __enter__(self) -> VDevice:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
