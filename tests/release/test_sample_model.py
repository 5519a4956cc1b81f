import hashlib

import numpy as np
import onnxruntime as ort

from release.sample_model import INPUT_NAME, OUTPUT_NAMES, build_sample_model, golden_windows, write_sample_model


def test_deterministic_bytes(tmp_path):
    a = write_sample_model(tmp_path / "a.onnx").read_bytes()
    b = write_sample_model(tmp_path / "b.onnx").read_bytes()
    assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest()
    c = write_sample_model(tmp_path / "c.onnx", seed=1).read_bytes()
    assert a != c


def test_runs_with_contract_shapes():
    sess = ort.InferenceSession(build_sample_model().SerializeToString(), providers=["CPUExecutionProvider"])
    w = golden_windows(3)
    assert w.shape == (3, 100, 9) and w.dtype == np.float32
    latent, motifs = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: w[:1]})
    assert latent.shape == (1, 64) and motifs.shape == (1, 12)
    assert np.all((motifs > 0) & (motifs < 1))
    # Not saturated: the heads carry information (parity checks depend on it).
    assert motifs.std() > 0.05 and np.abs(latent).max() < 50


def test_outputs_depend_on_input_and_are_causal():
    sess = ort.InferenceSession(build_sample_model().SerializeToString(), providers=["CPUExecutionProvider"])
    w = golden_windows(2)
    a = sess.run(["latent"], {INPUT_NAME: w[:1]})[0]
    b = sess.run(["latent"], {INPUT_NAME: w[1:2]})[0]
    assert not np.allclose(a, b)


def test_num_motifs_configurable():
    m = build_sample_model(num_motifs=5)
    assert m.graph.output[1].type.tensor_type.shape.dim[1].dim_value == 5
    assert np.array_equal(golden_windows(2, seed=3), golden_windows(2, seed=3))
