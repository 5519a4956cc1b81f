"""Benchmark entry point: `python -m bench.run [NAME ...]` runs every bench/bench_*.py (or the
named ones) and prints one table. A module's `rows()` returns a list of bench.table.Row."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import traceback
from pathlib import Path

from bench.table import Row, render


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help="bench module names, e.g. core onnx sidecar (default: all)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    here = Path(__file__).parent
    modules = sorted(p.stem for p in here.glob("bench_*.py"))
    if args.names:
        modules = [m for m in modules if m.removeprefix("bench_") in args.names]
    rows: list[Row] = []
    failed = False
    for mod_name in modules:
        print(f"running {mod_name} ...", file=sys.stderr, flush=True)
        try:
            rows.extend(importlib.import_module(f"bench.{mod_name}").rows())
        except Exception:
            failed = True
            traceback.print_exc()
            rows.append(Row(mod_name, float("nan"), "-", "-", False, "benchmark crashed"))
    print(render(rows))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
