"""Strict request parsing: body bytes → Windows ([n][L][C] JSON numbers within float32 range, kept
flat), or a BadRequest saying what is wrong. Plain Python: the stub path must not pay numpy's import.

Only JSON numbers are accepted. ``np.asarray`` alone is not strict: it turns ``true`` into 1.0
and a string into a string array, and reports 500-deep nesting as "ragged". So a fast path checks
the exact structure and the exact Python types orjson produced (int / float; bool is its own type)
on the flattened values with C-level ``set(map(type, ...))``, and only when that fails does a slower
walk find the first problem and name its row and column. The float32 range check is C-level
``max``/``min`` over the same flat list, which the backends then take as is (numpy builds an array
from a flat list several times faster than from nested lists).
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import orjson

from hailo_sidecar.backends import Windows

_NUMBER_TYPES = frozenset((int, float))
FLOAT32_MAX = 3.4028234663852886e38
_NAMES = {True: ("window", "row", "column"), False: ("row", "column")}


class BadRequest(Exception):
    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


def describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, str):
        return f"a string ({value[:20]!r})"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return "a number"


def _loc(index: tuple[int, ...], names: tuple[str, ...]) -> str:
    return ", ".join(f"{name} {i}" for name, i in zip(names, index, strict=False))


def _where(index: tuple[int, ...], names: tuple[str, ...]) -> str:
    return "'x' " + _loc(index, names)


def _walk(value: Any, index: tuple[int, ...], names: tuple[str, ...]) -> tuple[int, ...]:
    """Shape of a nested list of numbers; raises at the first non-number, over-deep or ragged spot.
    Recursion stops one level below the expected depth, so it is bounded whatever the body."""
    if type(value) in _NUMBER_TYPES:
        return ()
    if type(value) is list:
        if len(index) == len(names):
            raise BadRequest(
                422, "nested_too_deep",
                f"{_where(index, names)} is an array: 'x' is nested too deep (expected {len(names)} levels: "
                f"{' → '.join(names[:-1])} → numbers)",
            )
        shape: tuple[int, ...] | None = None
        for i, item in enumerate(value):
            sub = _walk(item, (*index, i), names)
            if shape is None:
                shape = sub
            elif sub != shape:
                raise BadRequest(
                    422, "ragged", f"'x' is ragged at {_loc((*index, i), names)}: shape {list(sub)} where earlier "
                    f"items have {list(shape)}; every row must have the same length",
                )
        return (len(value), *(shape or ()))
    raise BadRequest(422, "non_numeric", f"{_where(index, names)} is {describe(value)}: only JSON numbers are accepted")


def _shape_ok(window: Any, length: int, channels: int) -> bool:
    return (
        type(window) is list
        and len(window) == length
        and all(type(row) is list and len(row) == channels for row in window)
    )


def _diagnose(x: Any, batch: bool, length: int, channels: int) -> BadRequest:
    names = ("window", "row", "column") if batch else ("row", "column")
    want = f"[n, {length}, {channels}] with n ≥ 1" if batch else f"[{length}, {channels}]"
    if type(x) is not list:
        return BadRequest(422, "wrong_shape", f"'x' is {describe(x)}, expected an array of shape {want}")
    try:
        shape = _walk(x, (), names)
    except BadRequest as exc:
        return exc
    return BadRequest(422, "wrong_shape", f"'x' has shape {list(shape)}, expected {want}")


def parse_windows(body: bytes, length: int, channels: int, max_batch: int, batch: bool) -> Windows:
    """Body → the windows, flattened; raises BadRequest saying what is wrong."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(400, "invalid_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest(422, "invalid_body", f"body must be a JSON object with key 'x', got {describe(doc)}")
    if "x" not in doc:
        raise BadRequest(422, "missing_key", "body has no key 'x'")
    extra = sorted(set(doc) - {"x"})
    if extra:
        raise BadRequest(422, "unknown_keys", f"unknown keys {extra}; only 'x' is accepted")
    x = doc["x"]
    if batch:
        if type(x) is list and len(x) > max_batch:
            raise BadRequest(413, "batch_too_large", f"batch of {len(x)} windows exceeds MAX_BATCH={max_batch}")
        ok = type(x) is list and len(x) > 0 and all(_shape_ok(w, length, channels) for w in x)
        flat = list(chain.from_iterable(chain.from_iterable(x))) if ok else []
    else:
        ok = _shape_ok(x, length, channels)
        flat = list(chain.from_iterable(x)) if ok else []
    if not ok or not set(map(type, flat)) <= _NUMBER_TYPES:
        raise _diagnose(x, batch, length, channels)
    windows = Windows(flat, len(x) if batch else 1, length, channels)
    if max(flat) > FLOAT32_MAX or min(flat) < -FLOAT32_MAX:
        at = next(k for k, value in enumerate(flat) if abs(value) > FLOAT32_MAX)
        index = windows.index(at) if batch else windows.index(at)[1:]
        raise BadRequest(
            422, "non_finite",
            f"{_where(index, _NAMES[batch])} is {flat[at]:.3g}, beyond the float32 range (±3.4e38): "
            "the model takes float32 input",
        )
    return windows
