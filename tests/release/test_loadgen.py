"""The open-loop load generator against a real HTTP server on loopback: fixed schedule, latency
from the intended time (a stalled server inflates latency instead of lowering the rate),
bounded by count, stops by itself after consecutive errors, and records garbage answers (bad
bodies, resets, non-HTTP bytes) as failed samples instead of raising."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from release.errors import InvalidInput
from release.gate_probe import InferBodyCheck
from release.loadgen import run_open_loop
from tests.doubles.garbage_http import MODES, garbage_server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the sidecar
    delay_s = 0.0
    status = 200
    answer = b'{"latent": [0.1, 0.2, 0.3, 0.4], "motif_scores": [0.5, 0.25]}'

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        assert json.loads(body)["x"]
        time.sleep(type(self).delay_s)
        out = type(self).answer
        self.send_response(type(self).status)
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("H", (_Handler,), {})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", handler
    srv.shutdown()
    srv.server_close()


WINDOWS = np.zeros((2, 100, 9), dtype=np.float32)


def test_fixed_schedule_and_count(server):
    url, _ = server
    samples = run_open_loop(url, WINDOWS, rate=50, duration_s=1.0, concurrency=4)
    assert len(samples) == 50
    assert all(s.status == 200 and s.ok for s in samples), {s.error for s in samples}
    intended = sorted(s.intended_s for s in samples)
    assert np.allclose(np.diff(intended), 1 / 50)
    # sends follow the schedule closely on an idle server
    assert max(s.sent_s - s.intended_s for s in samples) < 0.05


def test_latency_counts_from_intended_time_when_server_stalls(server):
    url, handler = server
    handler.delay_s = 0.1  # 1 worker, 20/s requested, 10/s served: a closed loop would hide the queue
    samples = run_open_loop(url, WINDOWS, rate=20, duration_s=1.0, concurrency=1)
    assert len(samples) == 20
    lat = sorted(s.latency_ms for s in samples)
    # the last requests waited behind the earlier ones: latency grows far above the 100 ms service time
    assert lat[-1] > 800
    assert max(s.sent_s - s.intended_s for s in samples) > 0.5


def test_stops_after_consecutive_errors(server):
    url, handler = server
    handler.status = 503
    start = time.perf_counter()
    samples = run_open_loop(url, WINDOWS, rate=20, duration_s=5.0, concurrency=1, consecutive_error_limit=3)
    assert len(samples) == 3
    assert all(s.status == 503 and s.error.startswith("HTTP 503") for s in samples)
    assert time.perf_counter() - start < 2


def test_transport_errors_are_recorded_not_raised():
    samples = run_open_loop("http://127.0.0.1:9", WINDOWS, rate=20, duration_s=0.2, concurrency=2, timeout_s=0.5)
    assert len(samples) == 4
    assert all(s.status == 0 and s.error for s in samples)


def test_refuses_non_http_target():
    with pytest.raises(InvalidInput, match="http://"):
        run_open_loop("file:///etc/passwd", WINDOWS, rate=1, duration_s=1.0, concurrency=1)
    with pytest.raises(InvalidInput, match="rate"):
        run_open_loop("http://127.0.0.1:9", WINDOWS, rate=0, duration_s=1.0, concurrency=1)


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (b"<html>busy</html>", "not JSON"),
        (b"[1, 2]", "not an object"),
        (b'{"latent": [], "motif_scores": [0.5]}', "'latent' missing"),
        (b'{"latent": [0.1, null], "motif_scores": [0.5]}', "not a finite number"),
        (b'{"latent": [0.1, NaN], "motif_scores": [0.5]}', "not a finite number"),
        (b'{"latent": [0.1, "x"], "motif_scores": [0.5]}', "not a finite number"),
        (b'{"latent": [0.1, 0.2], "motif_scores": {"a": 1}}', "'motif_scores' missing"),
    ],
)
def test_a_200_with_a_bad_body_is_a_failed_sample(server, answer, why):
    url, handler = server
    handler.answer = answer
    samples = run_open_loop(url, WINDOWS, rate=20, duration_s=0.5, concurrency=2, consecutive_error_limit=3)
    assert samples and all(s.status == 200 and not s.ok for s in samples)
    assert all(why in s.error for s in samples), {s.error for s in samples}


def test_answers_of_the_wrong_length_are_failed_samples(server):
    url, _ = server  # the handler answers 4 latent values and 2 motif scores
    samples = run_open_loop(url, WINDOWS, rate=20, duration_s=0.3, concurrency=1, check_body=InferBodyCheck(64, 12))
    assert samples and all("'latent' has 4 values, expected 64" in s.error for s in samples)
    good = run_open_loop(url, WINDOWS, rate=20, duration_s=0.3, concurrency=1, check_body=InferBodyCheck(4, 2))
    assert good and all(s.ok for s in good)


@pytest.mark.parametrize("mode", MODES)
def test_raw_garbage_is_recorded_not_raised(mode):
    with garbage_server(mode) as url:
        samples = run_open_loop(url, WINDOWS, rate=20, duration_s=0.5, concurrency=2, timeout_s=0.5,
                                consecutive_error_limit=4)
    assert samples
    assert all(not s.ok and s.error for s in samples), samples
    if mode == "json422":  # the error body is kept as the reason
        assert all(s.status == 422 and "non_finite_output" in s.error for s in samples), samples
    if mode == "drip":  # never a read timeout: the requests in flight are cut off at the run's end
        assert all(s.error == "no complete answer by the end of the run" for s in samples), samples
