"""What the gate asks a canary, read defensively: one HTTP exchange with a hard deadline and a
size cap, and validators that say what is wrong with an answer instead of raising.

A canary under test is untrusted. Whatever it sends back (non-JSON, wrong shapes, NaN, null, an
HTTP error, a reset connection, nothing at all) ends here as a ``ProbeError`` or a problem string
the gate turns into a failed or inconclusive check.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import socket
import threading
import urllib.parse
from typing import Any

import numpy as np

# One reading of a canary's answers on both sides: the device agent ships device_load (stdlib only),
# and the orchestrator side uses the same functions from it (re-exported for gate and gate_device).
from release.device_load import (
    MAX_REASON_CHARS as MAX_REASON_CHARS,
)
from release.device_load import (
    clip as clip,
)
from release.device_load import (
    describe as describe,
)
from release.device_load import (
    error_body_summary as error_body_summary,
)
from release.device_load import (
    infer_body_problem as infer_body_problem,
)

REQUEST_METRIC = "sidecar_request_latency_seconds"
PROBE_TIMEOUT_S = 10.0  # whole /infer/batch exchange; /metrics gets at most METRICS_TIMEOUT_S
METRICS_TIMEOUT_S = 5.0


class ProbeError(Exception):
    """The canary did not give a usable answer; the message says why."""


def http_exchange(
    base_url: str, method: str, path: str, *, body: bytes | None = None, timeout_s: float, max_bytes: int
) -> tuple[int, bytes]:
    """(status, body) of one request, complete within ``timeout_s`` overall (not per socket read:
    a canary that drips one byte a second is cut off too). Raises only ``ProbeError``."""
    u = urllib.parse.urlsplit(base_url)
    if u.scheme != "http" or not u.hostname:
        raise ProbeError(f"canary URL must be http://host:port, got {base_url!r}")
    try:
        conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout_s)
    except (ValueError, OSError) as exc:  # e.g. a non-numeric port
        raise ProbeError(f"canary URL {base_url!r}: {describe(exc)}") from None
    outcome: list[tuple[int, bytes] | Exception] = []

    def exchange() -> None:
        try:
            headers = {"content-type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            outcome.append((resp.status, resp.read(max_bytes + 1)))
        except Exception as exc:  # everything the canary causes is reported, not raised
            outcome.append(exc)

    worker = threading.Thread(target=exchange, name=f"gate-probe {method} {path}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        sock = conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked read; close() alone may not
        conn.close()
        raise ProbeError(f"{method} {path}: no complete answer within {timeout_s:g} s")
    conn.close()
    result = outcome[0]
    if isinstance(result, TimeoutError):  # the socket's own timeout fired just before join() returned: the same event
        raise ProbeError(f"{method} {path}: no complete answer within {timeout_s:g} s")
    if isinstance(result, Exception):
        raise ProbeError(f"{method} {path}: {describe(result)}")
    status, data = result
    if len(data) > max_bytes:
        raise ProbeError(f"{method} {path}: answer larger than {max_bytes} bytes")
    return status, data


def load_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProbeError(f"{what}: answer is not JSON ({describe(exc)})") from None


def _numbers(value: Any, key: str) -> tuple[np.ndarray | None, str]:
    try:
        raw = np.asarray(value)
    except (ValueError, OverflowError):
        return None, f"{key!r} has ragged rows"
    if raw.dtype.kind not in "iuf":
        kind = {"b": "booleans", "U": "text", "O": "null or mixed values"}.get(raw.dtype.kind, raw.dtype.name)
        return None, f"{key!r} is not an array of numbers: found {kind}"
    return raw.astype(np.float64), ""


def outputs_problem(doc: Any, expect: dict[str, tuple[int, ...]]) -> tuple[dict[str, np.ndarray], str]:
    """Arrays for each expected key, or a problem: not an object, a missing key, null or text,
    a wrong shape (vector length or number of rows), NaN/Inf."""
    if not isinstance(doc, dict):
        return {}, f"answer is a JSON {type(doc).__name__}, not an object"
    arrays: dict[str, np.ndarray] = {}
    for key, shape in expect.items():
        if key not in doc:
            return {}, f"answer has no {key!r} (keys: {sorted(map(str, doc))[:8]})"
        arr, problem = _numbers(doc[key], key)
        if arr is None:
            return {}, problem
        if arr.shape != shape:
            return {}, f"{key!r} has shape {list(arr.shape)}, expected {list(shape)}"
        if not np.isfinite(arr).all():
            return {}, f"{key!r} contains NaN/Inf"
        arrays[key] = arr
    return arrays, ""


class InferBodyCheck:
    """Problem with one /infer answer body ('' when it is good): the load generator counts a 200
    with a bad body as an error, like any other wrong answer."""

    def __init__(self, latent_dim: int | None, num_motifs: int | None) -> None:
        self.lengths = {"latent": latent_dim, "motif_scores": num_motifs}

    def __call__(self, data: bytes) -> str:
        return infer_body_problem(data, self.lengths)


def scrape_histogram(base_url: str, endpoint: str = "/infer", timeout: float = 5.0) -> dict[float, float]:
    """Cumulative bucket counts {le_seconds: count} of the sidecar's request latency histogram ({}
    before the first request); ``ProbeError`` saying why when /metrics is missing, unreachable or
    not Prometheus text."""
    status, data = http_exchange(base_url, "GET", "/metrics", timeout_s=timeout, max_bytes=8 << 20)
    return parse_histogram(status, data, endpoint)


def parse_histogram(status: int, data: bytes, endpoint: str = "/infer") -> dict[float, float]:
    """The histogram in one /metrics answer (read here or on the device); ``ProbeError`` saying why not."""
    from prometheus_client.parser import text_string_to_metric_families

    if status != 200:
        raise ProbeError(f"GET /metrics: HTTP {status} ({error_body_summary(data)})")
    buckets: dict[float, float] = {}
    try:
        for family in text_string_to_metric_families(data.decode()):
            if family.name != REQUEST_METRIC:
                continue
            for s in family.samples:
                if s.name == f"{REQUEST_METRIC}_bucket" and s.labels.get("endpoint") == endpoint:
                    buckets[float(s.labels["le"])] = float(s.value)
    except Exception as exc:  # the parser raises whatever garbage makes it raise
        raise ProbeError(f"GET /metrics: not Prometheus text ({describe(exc)})") from None
    if not all(math.isfinite(v) and v >= 0 for v in buckets.values()):
        raise ProbeError(f"GET /metrics: {REQUEST_METRIC} has negative or non-finite bucket counts")
    return buckets


def canary_outputs(base_url: str, windows: np.ndarray, timeout: float = PROBE_TIMEOUT_S) -> object:
    """The canary's /infer/batch answer on ``windows``, as parsed JSON (validated by parity_checks);
    ``ProbeError`` when there is no 200 JSON answer."""
    body = json.dumps({"x": np.asarray(windows).tolist()}).encode()
    status, data = http_exchange(base_url, "POST", "/infer/batch", body=body, timeout_s=timeout, max_bytes=16 << 20)
    return batch_outputs(status, data)


def batch_outputs(status: int, data: bytes) -> object:
    """The parsed JSON of one /infer/batch answer (read here or on the device); ``ProbeError`` if not a 200 JSON."""
    if status != 200:
        raise ProbeError(f"POST /infer/batch: HTTP {status} ({error_body_summary(data)})")
    return load_json(data, "POST /infer/batch")
