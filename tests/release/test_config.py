import ast
from pathlib import Path

import pytest

from release.config import ENV_NAMES, Settings, load_settings
from release.errors import ConfigError
from release.pipeline_env import PipelineEnv

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def clean_env(monkeypatch):
    for var in ENV_NAMES.values():
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_defaults(clean_env):
    s = load_settings()
    assert s.num_motifs == 12 and s.window_shape == (100, 9) and s.opset_range == (8, 17)
    assert (s.channel, s.hw_arch, s.local_sidecar_port, s.signing_key) == ("stable", "hailo8", 9000, None)


def test_env_is_read(clean_env):
    clean_env.setenv("NUM_MOTIFS", "16")
    clean_env.setenv("HAILO_CHANNEL", "beta")
    clean_env.setenv("HAILO_LOCAL_SIDECAR_PORT", "9123")
    s = load_settings()
    assert (s.num_motifs, s.channel, s.local_sidecar_port) == (16, "beta", 9123)


def test_empty_variable_counts_as_unset(clean_env):
    clean_env.setenv("HAILO_REGISTRY", "")
    clean_env.setenv("HAILO_IMAGE_REPOSITORY", "")
    s = load_settings()
    assert (s.registry, s.image_repository) == (None, "hailo-runtime")


@pytest.mark.parametrize(
    ("var", "value", "fragment"),
    [
        ("NUM_MOTIFS", "twelve", "NUM_MOTIFS='twelve'"),
        ("NUM_MOTIFS", "0", "NUM_MOTIFS"),
        ("HAILO_CHANNEL", "Stable;rm", "HAILO_CHANNEL"),
        ("HAILO_CHANNEL", "stable\n", "HAILO_CHANNEL"),
        ("HAILO_HW_ARCH", "hailo10h", "HAILO_HW_ARCH"),
        ("HAILO_LOCAL_SIDECAR_PORT", "70000", "HAILO_LOCAL_SIDECAR_PORT"),
    ],
)
def test_invalid_values_name_the_variable(clean_env, var, value, fragment):
    clean_env.setenv(var, value)
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert fragment in str(exc.value)


def test_opset_range_must_be_ordered(clean_env):
    clean_env.setenv("HAILO_OPSET_MIN", "13")
    clean_env.setenv("HAILO_OPSET_MAX", "11")
    with pytest.raises(ConfigError, match="greater than"):
        load_settings()


def test_pipeline_env_is_built_from_the_settings(clean_env, tmp_path):
    clean_env.setenv("HAILO_PIPELINE_ROOT", str(tmp_path))
    clean_env.setenv("HAILO_WORK_ROOT", str(tmp_path / "elsewhere"))
    clean_env.setenv("HAILO_SIGNING_KEY", str(tmp_path / "k.pem"))
    clean_env.setenv("HAILO_REGISTRY", "127.0.0.1:5000")
    env = PipelineEnv.from_env()
    assert env.root == tmp_path.resolve() and env.store_root == tmp_path.resolve() / "store"
    assert env.work_root == (tmp_path / "elsewhere").resolve() and env.keys_dir == tmp_path.resolve() / "keys"
    assert (env.signing_key, env.registry, env.local_sidecar_port) == (tmp_path / "k.pem", "127.0.0.1:5000", 9000)
    # Every PipelineEnv field that comes from a variable has a settings field of the same name.
    derived = {"root", "store_root", "hailo_bin"}
    assert set(PipelineEnv.model_fields) - derived <= set(Settings.model_fields)


def _hailo_env_reads(path: Path) -> list[str]:
    """``os.environ.get("HAILO_…")`` / ``os.environ["HAILO_…"]`` / ``os.getenv("HAILO_…")`` in a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call | ast.Subscript):
            args = node.args if isinstance(node, ast.Call) else [node.slice]
            text = ast.unparse(node.func if isinstance(node, ast.Call) else node.value)
            if "environ" in text or "getenv" in text:
                for arg in args[:1]:
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("HAILO_"):
                        found.append(f"{path.name}:{node.lineno} {arg.value}")
    return found


# Read elsewhere on purpose (see release/config.py's docstring): test-only fault switches read at
# the fault point, and the device agent's checks (standard library only, run on the device).
_ALLOWED = {
    "release/faults.py": {"HAILO_FAULT_AT", "HAILO_FAULT_MARKER", "HAILO_FAULT_PAUSE_S"},
    "release/device_checks.py": {"HAILO_AGENT_CRASH_AT"},
}


def test_settings_is_the_only_reader_of_hailo_variables_in_release():
    stray = []
    for path in sorted((REPO / "release").rglob("*.py")):
        rel = str(path.relative_to(REPO))
        stray += [f"{rel}: {r}" for r in _hailo_env_reads(path) if r.rsplit(" ", 1)[1] not in _ALLOWED.get(rel, set())]
    assert stray == []


def test_the_env_read_finder_finds_reads(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('import os\nA = os.environ.get("HAILO_X")\nB = os.environ["HAILO_Y"]\nC = os.getenv("HAILO_Z")\n')
    assert sorted(r.rsplit(" ", 1)[1] for r in _hailo_env_reads(probe)) == ["HAILO_X", "HAILO_Y", "HAILO_Z"]
