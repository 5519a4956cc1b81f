"""The Hailo Dataflow Compiler (DFC 3.x) command line, as argv lists.

Grammar (shared/domain-facts.md, Hailo DFC user guide):
  hailo parser onnx MODEL.onnx --net-name NAME --hw-arch ARCH --har-path NAME.har
        [--start-node-names IN] [--end-node-names OUT ...] [--tensor-shapes IN=[1,...]]
        [--parsing-report-path R.json] -y
  hailo optimize NAME.har --hw-arch ARCH --calib-set-path calib.npy [--model-script M.alls]
        --output-har-path NAME_optimized.har
  hailo compiler NAME_optimized.har --hw-arch ARCH [--model-script M.alls] --output-dir OUT
        --output-har-path OUT/NAME_compiled.har                    → OUT/NAME.hef
  hailo --version   → "HailoRT vX" and "Hailo Dataflow Compiler vY"
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from release.errors import InvalidInput, StepFailed
from release.identifiers import HW_ARCHES

_NET_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
# No leading "-": a node name must never be read as a flag by the CLI.
_NODE_NAME = re.compile(r"^[A-Za-z0-9_./:][A-Za-z0-9_./:-]{0,127}$")
_VERSION_LINE = {
    "hailort": re.compile(r"HailoRT v(\d+\.\d+\.\d+)"),
    "dfc": re.compile(r"Hailo Dataflow Compiler v(\d+\.\d+\.\d+)"),
}


def check_net_name(name: str) -> str:
    if not _NET_NAME.fullmatch(name):
        raise InvalidInput(f"net name {name!r} must be a letter then [A-Za-z0-9_], at most 64 characters")
    return name


def check_hw_arch(arch: str) -> str:
    if arch not in HW_ARCHES:
        raise InvalidInput(f"hw_arch {arch!r} is not a Hailo-8 family target; expected one of {', '.join(HW_ARCHES)}")
    return arch


def _node(name: str) -> str:
    if not _NODE_NAME.fullmatch(name):
        raise InvalidInput(f"ONNX node name {name!r} contains characters the DFC command line cannot take safely")
    return name


DOUBLE_MARKER = "test double of the Hailo DFC CLI"
DFC_DOCS = (
    "https://hailo.ai/developer-zone/documentation/ (Dataflow Compiler user guide, 'hailo' CLI; "
    "DFC 3.x for Hailo-8/8L/8R) and docker/hailo_compiler/README.md"
)


class DfcVersions(BaseModel):
    """What `hailo --version` reported: both go into the release manifest."""

    model_config = ConfigDict(frozen=True)

    dfc: str
    hailort: str
    is_double: bool = False

    @property
    def dfc_major(self) -> int:
        return int(self.dfc.split(".")[0])

    @property
    def hailort_major(self) -> int:
        return int(self.hailort.split(".")[0])


def parse_version_output(text: str) -> DfcVersions:
    """Parse `hailo --version` ("HailoRT vX.Y.Z" and "Hailo Dataflow Compiler vX.Y.Z")."""
    dfc, hailort = _VERSION_LINE["dfc"].search(text), _VERSION_LINE["hailort"].search(text)
    missing = [name for name, m in (("dfc", dfc), ("hailort", hailort)) if m is None]
    if dfc is None or hailort is None:
        raise StepFailed(
            f"`hailo --version` output lacks the {' and '.join(missing)} version: {text.strip()[:300]!r}; "
            "the compiler image needs both the DFC and the HailoRT wheel (docker/hailo_compiler/README.md)"
        )
    return DfcVersions(dfc=dfc.group(1), hailort=hailort.group(1), is_double=DOUBLE_MARKER in text)


def check_toolchain(versions: DfcVersions, hw_arch: str) -> DfcVersions:
    """Hailo-8/8L/8R need DFC 3.x + HailoRT 4.x; refuse anything else before compiling."""
    check_hw_arch(hw_arch)
    if versions.dfc_major != 3 or versions.hailort_major != 4:
        raise StepFailed(
            f"DFC {versions.dfc} / HailoRT {versions.hailort} is the wrong toolchain for {hw_arch}: "
            "Hailo-8/8L/8R need DFC 3.x with HailoRT 4.x (the 5.x line serves only Hailo-10/15, and "
            "HailoRT 4.x on the device refuses a 5.x HEF). Build the compiler image with a 3.x DFC wheel, "
            "e.g. DFC_VERSION=3.33.0 HAILORT_VERSION=4.23.0 (docker/hailo_compiler/README.md)."
        )
    return versions


def version_argv(hailo: str) -> list[str]:
    return [hailo, "--version"]


def parser_argv(
    hailo: str,
    onnx: Path,
    net: str,
    hw_arch: str,
    har: Path,
    *,
    start_node: str,
    end_nodes: tuple[str, ...],
    input_shape: tuple[int, ...],
    report: Path,
) -> list[str]:
    shape = ",".join(str(int(d)) for d in input_shape)
    return [
        hailo, "parser", "onnx", str(onnx),
        "--net-name", check_net_name(net),
        "--hw-arch", check_hw_arch(hw_arch),
        "--har-path", str(har),
        "--start-node-names", _node(start_node),
        "--end-node-names", *(_node(n) for n in end_nodes),
        "--tensor-shapes", f"{_node(start_node)}=[{shape}]",
        "--parsing-report-path", str(report),
        "-y",  # never interactive: without it the parser may stop on a y/n question
    ]


def optimize_argv(hailo: str, har: Path, hw_arch: str, calib: Path, out_har: Path, model_script: Path | None) -> list[str]:
    argv = [hailo, "optimize", str(har), "--hw-arch", check_hw_arch(hw_arch), "--calib-set-path", str(calib)]
    if model_script is not None:
        argv += ["--model-script", str(model_script)]
    return [*argv, "--output-har-path", str(out_har)]


def compiler_argv(
    hailo: str, optimized_har: Path, hw_arch: str, out_dir: Path, compiled_har: Path, model_script: Path | None
) -> list[str]:
    argv = [hailo, "compiler", str(optimized_har), "--hw-arch", check_hw_arch(hw_arch)]
    if model_script is not None:
        argv += ["--model-script", str(model_script)]
    return [*argv, "--output-dir", str(out_dir), "--output-har-path", str(compiled_har)]
