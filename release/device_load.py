"""The gate's load, generated where EdgeInfer runs: open-loop /infer requests, the parity batch and
the /metrics scrapes, all against the sidecar on the device itself.

Standard library only: shipped beside device_agent.py into the agent's bin/ on the device (the agent's
`load` command); it must not import anything from the `release` package. The orchestrator's own load
generator (release.loadgen) runs the same ``open_loop`` core, so both modes share one schedule,
warm-up, timeout and error semantics; only where the client sits differs.

Open loop, without coordinated omission: send times are fixed in advance on one clock (t0 + i/rate).
A pool of workers, each with its own keep-alive connection, picks the next slot, sleeps until its
intended time, sends, and records latency from the INTENDED time. Bounded by count and time.

Whatever the sidecar sends back is recorded, never raised: a transport error, a malformed answer, an
oversized body or a 200 whose body is not a valid /infer answer is a failed sample with its reason.
The agent returns raw timings (zlib+base64 of a compact JSON array when large), the parity answer
and both /metrics scrapes as bytes; the orchestrator validates and analyses them.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import math
import socket
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

SPIN_S = 0.002
MAX_ANSWER_BYTES = 1 << 20  # a single-window answer is ~2 KB
MAX_BATCH_BYTES = 16 << 20
MAX_METRICS_BYTES = 8 << 20
MAX_REASON_CHARS = 300
COMPRESS_OVER = 4096  # JSON bytes above which timings travel compressed
MAX_PRINTED_BYTES = 512 << 10  # a larger answer is written to a file (see command)
# One row per request: intended_s, sent_s (both from the run's start), latency_ms (from the intended
# send time), HTTP status (0: transport error), index into the error list (-1: no error).
ROW_FIELDS = ("intended_s", "sent_s", "latency_ms", "status", "error")

Row = tuple[float, float, float, int, str]


def clip(text: str, limit: int = MAX_REASON_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(exc: BaseException) -> str:
    return clip(f"{type(exc).__name__}: {str(exc) or repr(exc)}")


def error_body_summary(data: bytes) -> str:
    """The sidecar's JSON error ({"error", "detail"}) if there is one, else the start of the body."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        doc = None
    if isinstance(doc, dict) and ("error" in doc or "detail" in doc):
        return clip(": ".join(str(doc[k]) for k in ("error", "detail") if k in doc))
    text = data[:200].decode("utf-8", "replace")
    return clip(text) if text.strip() else "empty body"


def _finite_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def infer_body_problem(data: bytes, lengths: dict[str, int | None]) -> str:
    """What is wrong with one /infer answer body ('' when it is good)."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return "answer is not JSON"
    if not isinstance(doc, dict):
        return f"answer is a JSON {type(doc).__name__}, not an object"
    for key, length in lengths.items():
        values = doc.get(key)
        if not isinstance(values, list) or not values:
            return f"{key!r} missing or not a non-empty list"
        if length is not None and len(values) != length:
            return f"{key!r} has {len(values)} values, expected {length}"
        if not all(_finite_number(v) for v in values):
            return f"{key!r} has a value that is not a finite number"
    return ""


def connection(base_url: str, timeout: float) -> http.client.HTTPConnection:
    u = urllib.parse.urlsplit(base_url)
    if u.scheme != "http" or not u.hostname:
        raise ValueError(f"load target must be an http:// URL, got {base_url!r}")
    return http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)


def open_loop(
    base_url: str,
    bodies: Sequence[bytes],
    *,
    rate: float,
    duration_s: float,
    concurrency: int,
    timeout_s: float,
    consecutive_error_limit: int,
    check: Callable[[bytes], str],
) -> list[Row]:
    """Send ``rate * duration_s`` single-window /infer requests on a fixed schedule; one Row each.
    ValueError for a bad profile or target (before anything is sent)."""
    if not (rate > 0 and duration_s > 0 and concurrency >= 1 and len(bodies)):
        raise ValueError(f"load profile needs rate > 0, duration > 0, concurrency >= 1 and windows; got "
                         f"rate={rate} duration_s={duration_s} concurrency={concurrency} windows={len(bodies)}")
    connection(base_url, timeout_s).close()  # refuse a bad target here, not silently inside the workers
    count = max(1, round(rate * duration_s))
    rows: list[Row | None] = [None] * count
    next_slot = 0
    consecutive_errors = 0
    abort = threading.Event()
    lock = threading.Lock()
    t0 = time.perf_counter() + 0.05

    def worker() -> None:
        nonlocal next_slot, consecutive_errors
        conn = connection(base_url, timeout_s)
        try:
            while not abort.is_set():
                with lock:
                    i = next_slot
                    next_slot += 1
                if i >= count:
                    return
                intended = t0 + i / rate
                delay = intended - time.perf_counter()
                if delay > SPIN_S:
                    time.sleep(delay - SPIN_S)
                # Spin the last stretch: sleep() wakes up late by up to a scheduler tick, which
                # would show up as latency the sidecar never caused.
                while time.perf_counter() < intended:
                    pass
                sent = time.perf_counter()
                status, error, answer = 0, "", b""
                try:
                    conn.request("POST", "/infer", body=bodies[i % len(bodies)], headers={"content-type": "application/json"})
                    resp = conn.getresponse()
                    answer = resp.read(MAX_ANSWER_BYTES + 1)
                    status = resp.status
                    if len(answer) > MAX_ANSWER_BYTES:
                        error = f"answer larger than {MAX_ANSWER_BYTES} bytes"
                        conn.close()  # the rest of the answer is still on the wire
                        conn = connection(base_url, timeout_s)
                except Exception as exc:  # anything the target causes is a failed sample
                    error = describe(exc)
                    conn.close()
                    conn = connection(base_url, timeout_s)
                done = time.perf_counter()
                # After the clock stops: reading the answer is not the server's latency.
                if status == 200 and not error:
                    try:
                        error = check(answer)
                    except Exception as exc:  # a validator fault must not lose the sample
                        error = describe(exc)
                    error = clip(f"bad answer: {error}") if error else ""
                elif status and not error:
                    error = clip(f"HTTP {status} ({error_body_summary(answer)})")
                row = (intended - t0, sent - t0, (done - intended) * 1000, status, error)
                rows[i] = row
                with lock:
                    consecutive_errors = 0 if status == 200 and not error else consecutive_errors + 1
                    if consecutive_errors >= consecutive_error_limit:
                        abort.set()
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    # One deadline for the whole run, not one per thread: the last request is due at the end of
    # the schedule and gets one timeout (twice, for slack). A target that drips an answer a byte
    # at a time never trips the per-read timeout; its workers are abandoned here (daemon threads
    # that stop after their current request) and their requests recorded as failed.
    deadline = t0 + duration_s + 2 * timeout_s + 1
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.perf_counter()))
    abort.set()
    now = time.perf_counter()
    with lock:
        claimed = min(next_slot, count)
    out: list[Row] = []
    for i, r in enumerate(rows[:claimed]):
        if r is None:
            intended_s = i / rate
            r = (intended_s, intended_s, max(0.0, now - t0 - intended_s) * 1000, 0, "no complete answer by the end of the run")
        out.append(r)
    return out


def exchange(base_url: str, method: str, path: str, *, body: bytes | None, timeout_s: float, max_bytes: int) -> dict[str, Any]:
    """One request with a hard overall deadline: {"status", "body" (zlib+base64)} or {"error"}."""
    try:
        conn = connection(base_url, timeout_s)
    except (ValueError, OSError) as exc:
        return {"error": f"canary URL {base_url!r}: {describe(exc)}"}
    outcome: list[tuple[int, bytes] | Exception] = []

    def run() -> None:
        try:
            conn.request(method, path, body=body, headers={"content-type": "application/json"} if body is not None else {})
            resp = conn.getresponse()
            outcome.append((resp.status, resp.read(max_bytes + 1)))
        except Exception as exc:  # everything the sidecar causes is reported, not raised
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        if conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        return {"error": f"{method} {path}: no complete answer within {timeout_s:g} s"}
    conn.close()
    result = outcome[0]
    if isinstance(result, TimeoutError):  # the socket's own timeout fired just before join() returned: the same event
        return {"error": f"{method} {path}: no complete answer within {timeout_s:g} s"}
    if isinstance(result, Exception):
        return {"error": f"{method} {path}: {describe(result)}"}
    status, data = result
    if len(data) > max_bytes:
        return {"error": f"{method} {path}: answer larger than {max_bytes} bytes"}
    return {"status": status, "body": pack_bytes(data)}


def pack_bytes(data: bytes) -> str:
    return base64.b64encode(zlib.compress(data, 6)).decode("ascii")


def pack_rows(rows: Sequence[Row]) -> dict[str, Any]:
    """Timings as a compact array (errors deduplicated into a list), compressed when large."""
    errors: list[str] = []
    index: dict[str, int] = {}
    compact = []
    for intended, sent, latency, status, error in rows:
        e = -1
        if error:
            e = index.setdefault(error, len(errors))
            if e == len(errors):
                errors.append(error)
        compact.append([round(intended, 6), round(sent, 6), round(latency, 3), status, e])
    doc = {"fields": list(ROW_FIELDS), "rows": compact, "errors": errors}
    raw = json.dumps(doc, separators=(",", ":")).encode()
    if len(raw) <= COMPRESS_OVER:
        return {"encoding": "json", "data": doc}
    return {"encoding": "zlib+base64", "data": pack_bytes(raw)}


def read_windows(path: Path) -> list[bytes]:
    """The /infer bodies for the windows the orchestrator uploaded ({"windows": [...]}), one each."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    windows = doc.get("windows") if isinstance(doc, dict) else None
    if not isinstance(windows, list) or not windows:
        raise ValueError(f"{path}: expected {{'windows': [window, ...]}} with at least one window")
    return [json.dumps({"x": w}).encode() for w in windows]


def run_load(
    base_url: str,
    windows_file: Path,
    *,
    rate: float,
    duration_s: float,
    concurrency: int,
    timeout_s: float,
    consecutive_error_limit: int,
    lengths: dict[str, int | None],
    probe_timeout_s: float,
    metrics_timeout_s: float,
) -> dict[str, Any]:
    """Parity batch, /metrics, the open-loop load, /metrics again: everything the gate measures."""
    bodies = read_windows(windows_file)
    batch = json.dumps({"x": [json.loads(b)["x"] for b in bodies]}).encode()
    out: dict[str, Any] = {"target": base_url, "clock": "perf_counter on the device"}
    out["parity"] = exchange(base_url, "POST", "/infer/batch", body=batch, timeout_s=probe_timeout_s, max_bytes=MAX_BATCH_BYTES)
    metrics_timeout = min(probe_timeout_s, metrics_timeout_s)
    out["metrics_before"] = exchange(base_url, "GET", "/metrics", body=None, timeout_s=metrics_timeout, max_bytes=MAX_METRICS_BYTES)
    t0 = time.monotonic()
    try:
        rows = open_loop(base_url, bodies, rate=rate, duration_s=duration_s, concurrency=concurrency, timeout_s=timeout_s,
                         consecutive_error_limit=consecutive_error_limit,
                         check=lambda data: infer_body_problem(data, lengths))
        out["samples"] = pack_rows(rows)
        out["count"] = len(rows)
        ok = [r for r in rows if r[3] == 200 and not r[4]]
        span = max((r[0] + r[2] / 1000 for r in ok), default=0.0) - min((r[1] for r in ok), default=0.0)
        out["achieved_rate"] = len(ok) / span if span > 0 else 0.0
    except ValueError as exc:
        out["load_error"] = str(exc)
    out["load_seconds"] = round(time.monotonic() - t0, 3)
    out["metrics_after"] = exchange(base_url, "GET", "/metrics", body=None, timeout_s=metrics_timeout, max_bytes=MAX_METRICS_BYTES)
    return out


def add_parser(sub: Any) -> None:
    """The agent's `load` subcommand (argparse subparsers of device_agent)."""
    p = sub.add_parser("load", help="run the gate's load against the sidecar on this device (read-only, no lock)")
    p.add_argument("--windows", type=Path, required=True, help='JSON file {"windows": [...]} uploaded by the orchestrator')
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--duration-s", type=float, required=True)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--timeout-s", type=float, default=2.0)
    p.add_argument("--error-limit", type=int, default=1_000_000)
    p.add_argument("--latent-dim", type=int)
    p.add_argument("--num-motifs", type=int)
    p.add_argument("--probe-timeout-s", type=float, default=10.0)
    p.add_argument("--metrics-timeout-s", type=float, default=5.0)


def command(cfg: dict[str, Any], args: Any, current: str | None) -> int:
    """Run `load` and print its one JSON line; exit 0, or 2 for an unusable request (bad windows or profile)."""
    limits = ((args.rate, 0, 10_000), (args.duration_s, 0, 3600), (args.timeout_s, 0, 600), (args.probe_timeout_s, 0, 600),
              (args.metrics_timeout_s, 0, 600))
    if not all(math.isfinite(v) and lo < v <= hi for v, lo, hi in limits) or not 1 <= args.concurrency <= 256:
        print(json.dumps({"error": 2, "detail": "load profile out of range"}))
        return 2
    try:
        out = run_load(str(cfg.get("health_url", "http://127.0.0.1:9000")).rstrip("/"), args.windows, rate=args.rate,
                       duration_s=args.duration_s, concurrency=args.concurrency, timeout_s=args.timeout_s,
                       consecutive_error_limit=max(1, args.error_limit),
                       lengths={"latent": args.latent_dim, "motif_scores": args.num_motifs},
                       probe_timeout_s=args.probe_timeout_s, metrics_timeout_s=args.metrics_timeout_s)
    except (OSError, ValueError, RecursionError) as exc:
        print(json.dumps({"error": 2, "detail": f"cannot run the load: {describe(exc)}"}))
        return 2
    out["current"] = current
    line = json.dumps(out, separators=(",", ":"))
    if len(line) > MAX_PRINTED_BYTES:
        # An SSH channel stalls a writer whose reader has not drained its window (paramiko: 2 MB):
        # a large answer goes into a file beside the windows, for the orchestrator to download.
        result = args.windows.with_name("load-result.json")
        result.write_text(line, encoding="utf-8")
        line = json.dumps({"result_file": str(result), "bytes": len(line)})
    print(line)
    return 0
