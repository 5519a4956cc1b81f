"""The JSON schemas the project publishes, generated from the pydantic models, never typed by hand.

    python -m release.schemas write   # regenerate release/data/*.schema.json
    python -m release.schemas check   # exit 1 if a committed file differs from what the models give

Files (release/data/): the release manifest, and the three requests a DAG run or the CLI is given
(canary release, on-call rollback, held-release decision). The DAGs' params are the properties of
the request schemas (param_specs), so the REST API refuses exactly what the worker would refuse
by grammar and bound. Every pattern has ``\\A…\\z`` semantics (identifiers.json_schema_pattern).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from release.identifiers import anchor_schema_patterns

DATA_DIR = Path(__file__).resolve().parent / "data"


def schema_models() -> dict[str, type[BaseModel]]:
    """File name → model, for every committed schema."""
    from release.manifest import ReleaseManifest
    from release.request import HeldDecisionRequest, ReleaseRequest, RollbackRequest

    return {
        "manifest.schema.json": ReleaseManifest,
        "release-request.schema.json": ReleaseRequest,
        "rollback-request.schema.json": RollbackRequest,
        "decision-request.schema.json": HeldDecisionRequest,
    }


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema: dict[str, Any] = anchor_schema_patterns(model.model_json_schema())
    return schema


def render(model: type[BaseModel]) -> str:
    """The exact text committed for ``model`` (sorted keys, 2-space indent, final newline)."""
    return json.dumps(json_schema(model), indent=2, sort_keys=True) + "\n"


def param_specs(model: type[BaseModel]) -> dict[str, dict[str, Any]]:
    """One Airflow ``Param(**spec)`` per field of a request model: its JSON schema property, with
    the model's default when it has one (a field without one stays a required param)."""
    schema = json_schema(model)
    specs = copy.deepcopy(schema["properties"])
    for name, spec in specs.items():
        if "$ref" in json.dumps(spec):
            raise TypeError(f"{model.__name__}.{name}: a param's schema must be inline (no $ref)")
    return dict(specs)


def drifted(data_dir: Path = DATA_DIR, models: Mapping[str, type[BaseModel]] | None = None) -> list[str]:
    """Names of the committed files that are missing or differ, byte for byte, from the models."""
    out = []
    for name, model in (models or schema_models()).items():
        path = data_dir / name
        if not path.is_file() or path.read_bytes() != render(model).encode("utf-8"):
            out.append(name)
    return out


def write(data_dir: Path = DATA_DIR, models: Mapping[str, type[BaseModel]] | None = None) -> list[Path]:
    paths = []
    for name, model in (models or schema_models()).items():
        path = data_dir / name
        path.write_text(render(model), encoding="utf-8")
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m release.schemas", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("write", "check"))
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    args = parser.parse_args(argv)
    if args.command == "write":
        for path in write(args.data_dir):
            print(path)
        return 0
    stale = drifted(args.data_dir)
    for name in stale:
        print(f"{args.data_dir / name}: differs from the models; run `python -m release.schemas write`", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
