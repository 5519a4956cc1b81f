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

import http.client
import json
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from release.errors import InvalidInput
from release.gate_probe import InferBodyCheck, clip, describe, error_body_summary

SPIN_S = 0.002
MAX_ANSWER_BYTES = 1 << 20  # a single-window answer is ~2 KB


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


def _connection(base_url: str, timeout: float) -> http.client.HTTPConnection:
    u = urllib.parse.urlsplit(base_url)
    if u.scheme != "http" or not u.hostname:
        raise InvalidInput(f"load target must be an http:// URL, got {base_url!r}")
    return http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)


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
    """Send ``rate * duration_s`` single-window /infer requests on a fixed schedule.

    ``check_body`` says what is wrong with a 200 answer's body ('' if nothing); by default the
    sidecar contract's shape without lengths (an object with non-empty lists of finite numbers)."""
    if not (rate > 0 and duration_s > 0 and concurrency >= 1 and len(windows)):
        raise InvalidInput(f"load profile needs rate > 0, duration > 0, concurrency >= 1 and windows; got "
                           f"rate={rate} duration_s={duration_s} concurrency={concurrency} windows={len(windows)}")
    _connection(base_url, timeout_s).close()  # refuse a bad target here, not silently inside the workers
    count = max(1, round(rate * duration_s))
    bodies = [json.dumps({"x": w.tolist()}).encode() for w in windows]
    check = check_body or InferBodyCheck(None, None)
    samples: list[Sample | None] = [None] * count
    next_slot = 0
    consecutive_errors = 0
    abort = threading.Event()
    lock = threading.Lock()
    t0 = time.perf_counter() + 0.05

    def worker() -> None:
        nonlocal next_slot, consecutive_errors
        conn = _connection(base_url, timeout_s)
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
                        conn = _connection(base_url, timeout_s)
                except Exception as exc:  # anything the target causes is a failed sample
                    error = describe(exc)
                    conn.close()
                    conn = _connection(base_url, timeout_s)
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
                sample = Sample(intended - t0, sent - t0, (done - intended) * 1000, status, error)
                samples[i] = sample
                with lock:
                    consecutive_errors = 0 if sample.ok else consecutive_errors + 1
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
    out = list(samples[:claimed])
    for i, sample in enumerate(out):
        if sample is None:
            intended = i / rate
            out[i] = Sample(intended, intended, max(0.0, now - t0 - intended) * 1000, 0,
                            "no complete answer by the end of the run")
    return [s for s in out if s is not None]
