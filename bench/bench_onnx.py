"""ONNX validation time of the sample model (checker, shape inference, op list, smoke run)."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from bench.table import Row


def rows() -> list[Row]:
    from release.onnx_validation import validate_onnx
    from release.sample_model import write_sample_model

    with tempfile.TemporaryDirectory() as tmp:
        model = write_sample_model(Path(tmp) / "model.onnx")
        validate_onnx(model)  # warm imports and onnxruntime
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            validate_onnx(model, output_dir=Path(tmp))
            times.append(time.perf_counter() - t0)
    return [Row("ONNX validation (sample model)", statistics.median(times) * 1000, "ms", "-", None, "median of 7, warm")]
