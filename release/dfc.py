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
from dataclasses import dataclass
from pathlib import Path

from release.errors import InvalidInput, StepFailed

HW_ARCHS = ("hailo8", "hailo8l", "hailo8r")
_NET_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_NODE_NAME = re.compile(r"^[A-Za-z0-9_./:-]{1,128}$")
_VERSION_LINE = {
    "hailort": re.compile(r"HailoRT v(\d+\.\d+\.\d+)"),
    "dfc": re.compile(r"Hailo Dataflow Compiler v(\d+\.\d+\.\d+)"),
}


def check_net_name(name: str) -> str:
    if not _NET_NAME.fullmatch(name):
        raise InvalidInput(f"net name {name!r} must be a letter then [A-Za-z0-9_], at most 64 characters")
    return name


def check_hw_arch(arch: str) -> str:
    if arch not in HW_ARCHS:
        raise InvalidInput(f"hw_arch {arch!r} is not a Hailo-8 family target; expected one of {', '.join(HW_ARCHS)}")
    return arch


def _node(name: str) -> str:
    if not _NODE_NAME.fullmatch(name):
        raise InvalidInput(f"ONNX node name {name!r} contains characters the DFC command line cannot take safely")
    return name


DOUBLE_MARKER = "test double of the Hailo DFC CLI"


@dataclass(frozen=True)
class DfcVersions:
    dfc: str
    hailort: str
    is_double: bool = False


def parse_version_output(text: str) -> DfcVersions:
    found = {k: rx.search(text) for k, rx in _VERSION_LINE.items()}
    missing = [k for k, m in found.items() if m is None]
    if missing:
        raise StepFailed(f"`hailo --version` output lacks {', '.join(missing)} version: {text.strip()[:300]!r}")
    versions = DfcVersions(
        dfc=found["dfc"].group(1),  # type: ignore[union-attr]
        hailort=found["hailort"].group(1),  # type: ignore[union-attr]
        is_double=DOUBLE_MARKER in text,
    )
    dfc_major, rt_major = int(versions.dfc.split(".")[0]), int(versions.hailort.split(".")[0])
    if dfc_major != 3 or rt_major != 4:
        raise StepFailed(
            f"DFC {versions.dfc} / HailoRT {versions.hailort} is the wrong toolchain for Hailo-8: "
            "Hailo-8/8L/8R need DFC 3.x with HailoRT 4.x (the 5.x line serves only Hailo-10/15, "
            "and HailoRT 4.x refuses a 5.x HEF). Install DFC 3.x in the compiler image."
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
