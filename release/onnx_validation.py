"""Validate an ONNX model for Hailo-8 before anything is compiled.

Checks, in order: the file is an ONNX protobuf; ``onnx.checker`` (full check); shape inference;
static shapes (the input is exactly [batch, 100, 9] with a fixed batch); outputs ``latent`` [.., 64]
and ``motif_scores`` [.., NUM_MOTIFS], float32; opset within range (warning outside 11); every
op on the Hailo-8 allow-list (``release/data/hailo8_onnx_ops.yaml``); initializers finite and
external data inside the model's directory; then an onnxruntime smoke run on deterministic
windows whose outputs must be finite, kept as the reference for the canary's parity check.

Static problems are collected and reported together; each names the node, input, output or
initializer at fault and what was expected.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from release.checksums import sha256_file
from release.errors import InvalidModel

if TYPE_CHECKING:
    import numpy as np
    import onnx

OPS_FILE = Path(__file__).parent / "data" / "hailo8_onnx_ops.yaml"
RECOMMENDED_OPSET = 11
EXPECTED_OUTPUTS = ("latent", "motif_scores")
LATENT_DIM = 64


class TensorInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    shape: tuple[int, ...]
    dtype: str


class ReferenceOutputs(BaseModel):
    model_config = ConfigDict(frozen=True)

    windows: int
    path: str | None
    latent_mean_abs: float
    motif_scores_mean: float


class OnnxReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str
    sha256: str
    size: int
    opset: int
    ir_version: int
    producer: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    ops: tuple[str, ...]
    warnings: tuple[str, ...]
    reference: ReferenceOutputs | None

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


class ModelFindings(InvalidModel):
    """InvalidModel carrying every problem found, one message each."""

    def __init__(self, path: Path, findings: list[str]) -> None:
        self.findings = tuple(findings)
        lines = "\n".join(f"  - {f}" for f in findings)
        super().__init__(f"{path}: {len(findings)} problem(s):\n{lines}")


@cache
def hailo8_allowed_ops() -> dict[str, str]:
    """The op allow-list: op type → why it is allowed."""
    import yaml

    data = yaml.safe_load(OPS_FILE.read_text(encoding="utf-8"))
    return {str(k): str(v) for k, v in data["ops"].items()}


def _dims(value_info: Any) -> list[int | str | None]:
    dims: list[int | str | None] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dims


def _dtype_name(value_info: Any) -> str:
    import onnx

    return str(onnx.helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type).name)


def _load(path: Path) -> onnx.ModelProto:
    import onnx
    from google.protobuf.message import DecodeError

    if not path.is_file():
        raise InvalidModel(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InvalidModel(f"{path}: file is empty, expected an ONNX model")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise InvalidModel(f"{path}: not a readable ONNX model (truncated or not ONNX): {exc}") from None
    if not model.graph.node or not model.opset_import:
        raise InvalidModel(f"{path}: not an ONNX model (no graph nodes or no opset import); truncated or another format?")
    return model


def _check_external_data(path: Path, model: onnx.ModelProto, findings: list[str]) -> None:
    from onnx.external_data_helper import uses_external_data

    base = path.parent.resolve()
    for init in model.graph.initializer:
        if not uses_external_data(init):
            continue
        location = next((e.value for e in init.external_data if e.key == "location"), "")
        target = (base / location).resolve()
        if os.path.isabs(location) or base not in target.parents:
            findings.append(
                f"initializer {init.name!r}: external data location {location!r} points outside the model directory {base}"
            )
        elif not target.is_file():
            findings.append(f"initializer {init.name!r}: external data file {location!r} is missing")


def _check_initializers(model: onnx.ModelProto, findings: list[str]) -> None:
    import numpy as np
    from onnx import numpy_helper

    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            findings.append(f"initializer {init.name!r}: {bad} non-finite value(s) (NaN/Inf) in weights of shape {arr.shape}")


def validate_onnx(
    path: Path | str,
    *,
    num_motifs: int = 12,
    opset_range: tuple[int, int] = (8, 17),
    window: tuple[int, int] = (100, 9),
    smoke_windows: np.ndarray | None = None,
    output_dir: Path | None = None,
) -> OnnxReport:
    """Validate the model; return the report or raise :class:`InvalidModel` naming every problem."""
    import onnx

    path = Path(path)
    model = _load(path)
    findings: list[str] = []

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # checker raises ValidationError or InferenceError (full_check)
        findings.append(f"onnx.checker: {str(exc).strip().splitlines()[0]}")
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:  # onnx raises several unrelated types for inference failures
        findings.append(f"shape inference failed: {str(exc).strip().splitlines()[0]}")
        inferred = model

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    warnings: list[str] = []
    lo, hi = opset_range
    if not lo <= opset <= hi:
        findings.append(f"opset {opset} is outside the supported range {lo}-{hi}")
    elif opset != RECOMMENDED_OPSET:
        warnings.append(f"opset {opset}: Hailo officially supports opsets 8 and {RECOMMENDED_OPSET}; a real DFC parse is the final check")

    init_names = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in init_names]
    if len(graph_inputs) != 1:
        findings.append(f"expected exactly one input, found {len(graph_inputs)}: {[i.name for i in graph_inputs]}")
    for inp in graph_inputs:
        dims = _dims(inp)
        if any(not isinstance(d, int) or d <= 0 for d in dims):
            dyn = [f"dim {i} = {d!r}" for i, d in enumerate(dims) if not isinstance(d, int) or d <= 0]
            findings.append(f"input {inp.name!r}: dynamic or unknown dims ({', '.join(dyn)}); static shapes are required")
        elif len(dims) != 3 or tuple(dims[1:]) != window:
            findings.append(f"input {inp.name!r}: shape {dims}, expected [batch, {window[0]}, {window[1]}]")
        if _dtype_name(inp) != "float32":
            findings.append(f"input {inp.name!r}: dtype {_dtype_name(inp)}, expected float32")

    expected = {"latent": LATENT_DIM, "motif_scores": num_motifs}
    outputs = {o.name: o for o in model.graph.output}
    for name, size in expected.items():
        out = outputs.get(name)
        if out is None:
            findings.append(f"output {name!r} is missing (outputs are {sorted(outputs)})")
            continue
        dims = _dims(out)
        if any(not isinstance(d, int) or d <= 0 for d in dims):
            findings.append(f"output {name!r}: dynamic or unknown dims {dims}; static shapes are required")
        elif not dims or dims[-1] != size:
            findings.append(f"output {name!r}: shape {dims}, expected last dim {size}")
        if _dtype_name(out) != "float32":
            findings.append(f"output {name!r}: dtype {_dtype_name(out)}, expected float32")

    allowed = hailo8_allowed_ops()
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            findings.append(f"node {node.name or '?'!r}: op {node.domain}::{node.op_type} from a custom domain is not supported on Hailo-8")
        elif node.op_type not in allowed:
            findings.append(
                f"node {node.name or '?'!r}: op {node.op_type} is not on the Hailo-8 allow-list ({OPS_FILE.name})"
            )

    _check_external_data(path, model, findings)
    if not findings:
        _check_initializers(model, findings)
    if findings:
        raise ModelFindings(path, findings)

    reference = _smoke_run(path, window, smoke_windows, expected, output_dir)
    return OnnxReport(
        path=str(path),
        sha256=sha256_file(path),
        size=path.stat().st_size,
        opset=opset,
        ir_version=model.ir_version,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        inputs=tuple(TensorInfo(name=i.name, shape=tuple(int(d) for d in _dims(i)), dtype=_dtype_name(i)) for i in graph_inputs),  # type: ignore[arg-type]
        outputs=tuple(
            TensorInfo(name=o.name, shape=tuple(int(d) for d in _dims(o)), dtype=_dtype_name(o))  # type: ignore[arg-type]
            for o in inferred.graph.output
        ),
        ops=tuple(sorted({n.op_type for n in model.graph.node})),
        warnings=tuple(warnings),
        reference=reference,
    )


def _smoke_run(
    path: Path,
    window: tuple[int, int],
    smoke_windows: np.ndarray | None,
    expected: dict[str, int],
    output_dir: Path | None,
) -> ReferenceOutputs:
    import numpy as np
    import onnxruntime as ort

    from release.sample_model import golden_windows

    windows = golden_windows() if smoke_windows is None else np.asarray(smoke_windows, dtype=np.float32)
    if windows.ndim != 3 or windows.shape[1:] != window:
        raise InvalidModel(f"smoke windows have shape {windows.shape}, expected [n, {window[0]}, {window[1]}]")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types per failure
        raise InvalidModel(f"{path}: onnxruntime cannot load the model: {exc}") from None
    inp = session.get_inputs()[0]
    batch = int(inp.shape[0])
    outs: dict[str, list[np.ndarray]] = {name: [] for name in expected}
    for start in range(0, len(windows) - len(windows) % batch, batch):
        result = session.run(list(expected), {inp.name: windows[start : start + batch]})
        for name, value in zip(expected, result, strict=True):
            if not np.isfinite(value).all():
                raise InvalidModel(f"output {name!r}: smoke run on window {start} produced NaN/Inf")
            outs[name].append(value.reshape(batch, -1))
    stacked = {name: np.concatenate(v) for name, v in outs.items()}
    ref_path = None
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        ref_path = output_dir / "reference_outputs.npz"
        np.savez(ref_path, windows=windows[: len(stacked["latent"])], latent=stacked["latent"], motif_scores=stacked["motif_scores"])
    return ReferenceOutputs(
        windows=len(stacked["latent"]),
        path=str(ref_path) if ref_path else None,
        latent_mean_abs=float(np.abs(stacked["latent"]).mean()),
        motif_scores_mean=float(stacked["motif_scores"].mean()),
    )


def write_report(report: OnnxReport, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.to_json() + "\n", encoding="utf-8")
    return path

