"""Open-loop load through the real /infer, at a fixed rate, without coordinated omission.

Send times are fixed in advance on one clock (t0 + i/rate). A pool of workers, each with its
own keep-alive connection, picks the next slot, sleeps until its intended time, sends, and
records latency from the INTENDED time — so a slow server inflates the measured latency instead
of quietly lowering the request rate. Bounded by count and time; stops by itself.

Whatever the target sends back is recorded, never raised: a transport error, a reset, a
malformed HTTP answer, an oversized body, or a 200 whose body is not a valid /infer answer
(non-JSON, wrong length, NaN/null) is a failed sample with its reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from release.device_load import MAX_ANSWER_BYTES, SPIN_S, open_loop
from release.errors import InvalidInput
from release.gate_probe import InferBodyCheck

__all__ = ["MAX_ANSWER_BYTES", "SPIN_S", "Sample", "run_open_loop"]


@dataclass(frozen=True)
class Sample:
    intended_s: float  # relative to the run's start
    sent_s: float
    latency_ms: float  # from the intended send time to the complete response
    status: int  # HTTP status, 0 for a transport error
    error: str = ""  # why the sample failed: transport error, or a bad body on a 200

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error


def run_open_loop(
    base_url: str,
    windows: np.ndarray,
    *,
    rate: float,
    duration_s: float,
    concurrency: int = 8,
    timeout_s: float = 2.0,
    consecutive_error_limit: int = 1_000_000,
    check_body: Callable[[bytes], str] | None = None,
) -> list[Sample]:
    """Send ``rate * duration_s`` single-window /infer requests on a fixed schedule, from here.

    ``check_body`` says what is wrong with a 200 answer's body ('' if nothing); by default the
    sidecar contract's shape without lengths (an object with non-empty lists of finite numbers).
    The same core (release.device_load.open_loop) runs on the device in the device-side gate."""
    bodies = [json.dumps({"x": w.tolist()}).encode() for w in windows]
    try:
        rows = open_loop(base_url, bodies, rate=rate, duration_s=duration_s, concurrency=concurrency, timeout_s=timeout_s,
                         consecutive_error_limit=consecutive_error_limit, check=check_body or InferBodyCheck(None, None))
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    return [Sample(*row) for row in rows]
