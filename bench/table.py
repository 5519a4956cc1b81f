"""One row of the benchmark table."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    name: str
    value: float
    unit: str
    target: str
    ok: bool | None
    note: str = ""


def render(rows: list[Row]) -> str:
    headers = ("benchmark", "value", "unit", "target", "ok", "note")
    cells = [
        (r.name, f"{r.value:.3f}" if abs(r.value) < 1e6 else f"{r.value:.3e}", r.unit, r.target,
         {True: "yes", False: "NO", None: "-"}[r.ok], r.note)
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    return "\n".join(out)
