"""The sample model: a small but real TCN encoder, generated with fixed seeds (no torch).

Input ``window`` float32 [1, 100, 9] (one window, batch 1, static). A channel-first transpose,
an input 1x1 projection, four residual blocks of dilated causal 1-D convolutions (kernel 3,
dilations 1, 2, 4, 8 → receptive field 31 steps), global average pooling, and two heads:
``latent`` [1, 64] and ``motif_scores`` [1, NUM_MOTIFS] (sigmoid). The same arguments give the
same bytes, so its sha256 is stable across runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import onnx

INPUT_NAME = "window"
OUTPUT_NAMES = ("latent", "motif_scores")
WINDOW_LENGTH = 100
WINDOW_CHANNELS = 9
LATENT_DIM = 64
HIDDEN_CHANNELS = 32
DILATIONS = (1, 2, 4, 8)
KERNEL = 3


def build_sample_model(num_motifs: int = 12, seed: int = 0, opset: int = 13) -> onnx.ModelProto:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    initializers: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def weight(name: str, shape: tuple[int, ...], fan_in: int, gain: float = 1.0) -> str:
        # Variance-preserving scaling (gain < 1 on residual branches) keeps activations O(1)
        # through the stack, so the sigmoid head does not saturate and top-k parity means something.
        data = (rng.standard_normal(shape) * gain / np.sqrt(fan_in)).astype(np.float32)
        initializers.append(numpy_helper.from_array(data, name))
        return name

    def bias(name: str, size: int) -> str:
        initializers.append(numpy_helper.from_array(np.zeros(size, dtype=np.float32), name))
        return name

    nodes.append(helper.make_node("Transpose", [INPUT_NAME], ["x_ncl"], perm=[0, 2, 1], name="to_channels_first"))
    nodes.append(
        helper.make_node(
            "Conv",
            ["x_ncl", weight("proj.w", (HIDDEN_CHANNELS, WINDOW_CHANNELS, 1), WINDOW_CHANNELS), bias("proj.b", HIDDEN_CHANNELS)],
            ["h0"],
            kernel_shape=[1],
            name="input_projection",
        )
    )
    current = "h0"
    for i, dilation in enumerate(DILATIONS):
        # Causal padding: all (kernel-1)*dilation steps on the left, none on the right.
        pad = (KERNEL - 1) * dilation
        nodes.append(
            helper.make_node(
                "Conv",
                [current, weight(f"block{i}.w", (HIDDEN_CHANNELS, HIDDEN_CHANNELS, KERNEL), HIDDEN_CHANNELS * KERNEL, 0.5),
                 bias(f"block{i}.b", HIDDEN_CHANNELS)],
                [f"block{i}.conv"],
                kernel_shape=[KERNEL],
                dilations=[dilation],
                pads=[pad, 0],
                name=f"block{i}_dilated_conv",
            )
        )
        nodes.append(helper.make_node("Relu", [f"block{i}.conv"], [f"block{i}.act"], name=f"block{i}_relu"))
        nodes.append(helper.make_node("Add", [current, f"block{i}.act"], [f"h{i + 1}"], name=f"block{i}_residual"))
        current = f"h{i + 1}"
    nodes.append(helper.make_node("GlobalAveragePool", [current], ["pooled3d"], name="global_pool"))
    nodes.append(helper.make_node("Flatten", ["pooled3d"], ["pooled"], axis=1, name="flatten"))
    nodes.append(
        helper.make_node(
            "Gemm",
            ["pooled", weight("latent.w", (LATENT_DIM, HIDDEN_CHANNELS), HIDDEN_CHANNELS), bias("latent.b", LATENT_DIM)],
            [OUTPUT_NAMES[0]],
            transB=1,
            name="latent_head",
        )
    )
    nodes.append(
        helper.make_node(
            "Gemm",
            ["pooled", weight("motif.w", (num_motifs, HIDDEN_CHANNELS), HIDDEN_CHANNELS), bias("motif.b", num_motifs)],
            ["motif_logits"],
            transB=1,
            name="motif_head",
        )
    )
    nodes.append(helper.make_node("Sigmoid", ["motif_logits"], [OUTPUT_NAMES[1]], name="motif_sigmoid"))

    graph = helper.make_graph(
        nodes,
        "tcn_encoder",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, WINDOW_LENGTH, WINDOW_CHANNELS])],
        [
            helper.make_tensor_value_info(OUTPUT_NAMES[0], TensorProto.FLOAT, [1, LATENT_DIM]),
            helper.make_tensor_value_info(OUTPUT_NAMES[1], TensorProto.FLOAT, [1, num_motifs]),
        ],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="hailo-pipeline.sample_model",
        producer_version="1",
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def write_sample_model(path: Path, num_motifs: int = 12, seed: int = 0) -> Path:
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(build_sample_model(num_motifs=num_motifs, seed=seed), str(path))
    return path


def golden_windows(n: int = 8, seed: int = 1) -> np.ndarray:
    """Deterministic float32 windows [n, 100, 9]: smooth multi-channel signals plus noise,
    roughly what normalised IMU windows look like (zero mean, unit scale)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, WINDOW_LENGTH, dtype=np.float64)[None, :, None]
    freqs = rng.uniform(0.5, 8.0, size=(n, 1, WINDOW_CHANNELS))
    phases = rng.uniform(0.0, 2 * np.pi, size=(n, 1, WINDOW_CHANNELS))
    signal = np.sin(2 * np.pi * freqs * t + phases) + 0.1 * rng.standard_normal((n, WINDOW_LENGTH, WINDOW_CHANNELS))
    return signal.astype(np.float32)
