"""The device-side gate: the device agent generates the load on the device (release.device_load);
the orchestrator only starts it, reads back what it measured, and feeds the same pure ``analyse()``.

The agent's answer is untrusted data like any canary answer: timings that are not the expected
compact array, a parity or /metrics field that is missing, not base64, not zlib, or garbage inside
all end as a failed or inconclusive check with the reason. ``run_device_gate`` never raises.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from release.device_load import ROW_FIELDS
from release.faults import fault_point
from release.gate import (
    OUTPUT_KEYS,
    Check,
    GateReport,
    analyse,
    parity_checks,
    parity_failure,
    server_quantile,
    time_bound_s,
)
from release.gate_probe import (
    METRICS_TIMEOUT_S,
    PROBE_TIMEOUT_S,
    ProbeError,
    batch_outputs,
    clip,
    describe,
    parse_histogram,
)
from release.gate_settings import GateSettings
from release.loadgen import Sample

log = logging.getLogger(__name__)

MAX_INFLATED_BYTES = 64 << 20
# Starts the agent's `load` on the device with these parameters and the windows; returns its JSON reply.
DeviceLoad = Callable[[np.ndarray, dict[str, Any]], dict[str, Any]]


class AgentDataError(ValueError):
    """The agent's reply is not what device_load produces; the message says what is wrong."""


def load_parameters(settings: GateSettings, lengths: Sequence[int | None], probe_timeout_s: float) -> dict[str, Any]:
    load = settings.load
    return {
        "rate": load.rate_windows_per_s, "duration_s": load.duration_s, "concurrency": load.concurrency,
        "timeout_s": load.request_timeout_s, "error_limit": settings.consecutive_error_limit,
        "latent_dim": lengths[0], "num_motifs": lengths[1], "probe_timeout_s": probe_timeout_s,
        "metrics_timeout_s": METRICS_TIMEOUT_S, "time_bound_s": time_bound_s(settings, probe_timeout_s),
    }


def unpack_bytes(value: object, what: str, limit: int = MAX_INFLATED_BYTES) -> bytes:
    if not isinstance(value, str):
        raise AgentDataError(f"{what}: expected zlib+base64 text, got {type(value).__name__}")
    try:
        inflater = zlib.decompressobj()
        data = inflater.decompress(base64.b64decode(value.encode("ascii"), validate=True), limit + 1)
    except (binascii.Error, zlib.error, UnicodeEncodeError, ValueError) as exc:
        raise AgentDataError(f"{what}: not zlib+base64 ({describe(exc)})") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise AgentDataError(f"{what}: more than {limit} bytes once inflated")
    return data


def decode_samples(packed: object) -> list[Sample]:
    """Samples from the agent's compact timing array; AgentDataError on anything else."""
    if not isinstance(packed, dict) or packed.get("encoding") not in ("json", "zlib+base64"):
        raise AgentDataError("timings: expected {'encoding': 'json' | 'zlib+base64', 'data': ...}")
    doc = packed.get("data")
    if packed["encoding"] == "zlib+base64":
        try:
            doc = json.loads(unpack_bytes(doc, "timings"))
        except (ValueError, RecursionError) as exc:
            raise AgentDataError(f"timings: not JSON once inflated ({describe(exc)})") from None
    if not isinstance(doc, dict) or doc.get("fields") != list(ROW_FIELDS):
        raise AgentDataError(f"timings: expected fields {list(ROW_FIELDS)}")
    rows, errors = doc.get("rows"), doc.get("errors")
    if not isinstance(rows, list) or not isinstance(errors, list) or not all(isinstance(e, str) for e in errors):
        raise AgentDataError("timings: 'rows' and 'errors' must be lists (errors of text)")
    out = []
    for n, row in enumerate(rows):
        if not (isinstance(row, list) and len(row) == 5 and all(_number(v) for v in row[:3])
                and type(row[3]) is int and type(row[4]) is int and 0 <= row[3] <= 999 and -1 <= row[4] < len(errors)
                and row[2] >= 0):
            raise AgentDataError(f"timings: row {n} is not [intended_s, sent_s, latency_ms >= 0, status, error index]: "
                                 f"{clip(repr(row), 120)}")
        out.append(Sample(float(row[0]), float(row[1]), float(row[2]), row[3], clip(errors[row[4]]) if row[4] >= 0 else ""))
    return out


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _answer(part: object, what: str) -> tuple[int, bytes]:
    """(status, body) of one exchange the agent made; ProbeError with its reason when there is none."""
    if not isinstance(part, dict):
        raise ProbeError(f"{what}: the device agent returned no result")
    if "error" in part:
        raise ProbeError(clip(str(part["error"])))
    status = part.get("status")
    if type(status) is not int:
        raise ProbeError(f"{what}: the device agent returned no HTTP status")
    try:
        return status, unpack_bytes(part.get("body"), what)
    except AgentDataError as exc:
        raise ProbeError(f"{what}: {exc}") from None


def _histogram(part: object) -> tuple[dict[float, float] | None, str]:
    try:
        status, data = _answer(part, "GET /metrics")
        return parse_histogram(status, data), ""
    except ProbeError as exc:
        return None, str(exc)


def _parity(part: object, reference: dict[str, np.ndarray], s: GateSettings) -> list[Check]:
    try:
        return parity_checks(batch_outputs(*_answer(part, "POST /infer/batch")), reference, s)
    except ProbeError as exc:
        return [parity_failure(str(exc))]


def run_device_gate(
    start_load: DeviceLoad,
    settings: GateSettings,
    *,
    windows: np.ndarray,
    reference: dict[str, np.ndarray] | None,
    baseline_latencies: Sequence[float] | None,
    probe_timeout_s: float = PROBE_TIMEOUT_S,
) -> GateReport:
    """Measure the canary with load generated on the device and analyse it. Never raises."""
    try:
        report = _run(start_load, settings, windows, reference, baseline_latencies, probe_timeout_s)
    except Exception as exc:  # last resort: a gate fault must still yield a verdict
        log.exception("device-side gate failed unexpectedly")
        check = Check(name="gate", outcome="fail", measured=None, limit="-",
                      reason=f"the gate could not measure the canary: {describe(exc)}")
        report = analyse([], settings, server_p95_ms=None, extra_checks=[check])
    return report.measured_in("device")


def _run(start_load: DeviceLoad, settings: GateSettings, windows: np.ndarray, reference: dict[str, np.ndarray] | None,
         baseline_latencies: Sequence[float] | None, probe_timeout_s: float) -> GateReport:
    fault_point("gate_parity")
    lengths = [int(np.shape(reference[k])[-1]) for k in OUTPUT_KEYS] if reference is not None else [None, None]
    fault_point("gate_load")
    try:
        reply = start_load(np.asarray(windows), load_parameters(settings, lengths, probe_timeout_s))
        if not isinstance(reply, dict):
            raise AgentDataError(f"the agent answered a JSON {type(reply).__name__}, not an object")
    except Exception as exc:  # the device, the transport or the agent: the load was not measured
        log.warning("device-side load failed: %s", describe(exc))
        why = clip(f"the device agent could not run the load: {describe(exc)}")
        parity = [parity_failure(f"could not be measured: {why}")] if reference is not None else None
        return analyse([], settings, server_p95_ms=None, baseline_latencies=baseline_latencies, parity=parity,
                       extra_checks=[Check(name="load", outcome="fail", measured=None, limit="-", reason=why)],
                       metrics_problem="not read: the device-side load did not run")
    fault_point("gate_metrics")
    parity = _parity(reply.get("parity"), reference, settings) if reference is not None else None
    extra: list[Check] = []
    samples: list[Sample] = []
    if "load_error" in reply:
        extra.append(Check(name="load", outcome="fail", measured=None, limit="-",
                           reason=clip(f"no load could be sent to the canary: {reply['load_error']}")))
    else:
        try:
            samples = decode_samples(reply.get("samples"))
        except AgentDataError as exc:
            extra.append(Check(name="load", outcome="fail", measured=None, limit="-",
                               reason=clip(f"the device agent's timings are unusable: {exc}")))
    before, problem = _histogram(reply.get("metrics_before"))
    after, after_problem = _histogram(reply.get("metrics_after"))
    server_p95, problem = server_quantile(before, after, problem or after_problem)
    return analyse(samples, settings, server_p95_ms=server_p95, baseline_latencies=baseline_latencies,
                   parity=parity, extra_checks=extra, metrics_problem=problem)
