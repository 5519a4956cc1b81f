"""The real process: `python -m hailo_sidecar` under uvicorn, driven over TCP."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(model_dir):
    port = _free_port()
    env = {"PATH": os.environ["PATH"], "MODEL_DIR": str(model_dir), "INFER_MODE": "stub", "HOST": "127.0.0.1",
           "PORT": str(port), "CONFIG_VERSION": "cfg-srv"}
    proc = subprocess.Popen([sys.executable, "-m", "hailo_sidecar"], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sidecar did not start: {proc.stderr.read() if proc.stderr else ''}") from None
            time.sleep(0.02)
    yield port, proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, resp.read()


def test_client_disconnect_mid_body_is_logged_as_such(server):
    port, proc = server
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
                  b'{"x": [[0.1, 0.2')
        time.sleep(0.2)
    deadline = time.monotonic() + 20
    while b'kind="client_disconnected"' not in _get(port, "/metrics")[1]:
        assert time.monotonic() < deadline, "the disconnect was never counted"
        time.sleep(0.05)
    assert _get(port, "/healthz")[0] == 200  # still serving
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    assert "Exception in ASGI application" not in stderr and "Traceback" not in stderr, stderr
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]  # every line is JSON
    gone = [line for line in lines if line.get("event") == "client_disconnected"]
    assert gone and gone[0]["endpoint"] == "/infer" and gone[0]["body_bytes"] > 0
    assert any(line.get("event") == "ready" for line in lines)


def test_served_identity_over_tcp(server):
    port, _ = server
    status, body = _get(port, "/healthz")
    health = json.loads(body)
    assert status == 200 and health["backend"] == "stub" and health["config_version"] == "cfg-srv"
    assert health["hef_kind"] == "hef" and health["hef_hw_arch"] == "hailo8" and len(health["hef_sha256"]) == 64
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    window = [[0.5] * 9] * 100
    conn.request("POST", "/infer", body=json.dumps({"x": window}), headers={"content-type": "application/json"})
    resp = conn.getresponse()
    out = json.loads(resp.read())
    assert resp.status == 200 and len(out["latent"]) == 64 and len(out["motif_scores"]) == 12


def test_smoke_fails_on_null_or_non_finite_outputs(server):
    """The smoke script treats an answer carrying null (orjson's NaN) as a failure, and passes the real sidecar."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tests.fixtures import sidecar_smoke as smoke

    port, _ = server
    assert smoke.check(f"http://127.0.0.1:{port}", None, "cfg-srv", 12, 10) == []

    class NullOutputs(BaseHTTPRequestHandler):
        def _reply(self, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._reply({"status": "ok", "ready": True})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            self._reply({"latent": [None] * 64, "motif_scores": [0.5] * 11 + [None]})

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), NullOutputs)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        problems = smoke.check(f"http://127.0.0.1:{httpd.server_address[1]}", None, None, 12, 10)
    finally:
        httpd.shutdown()
    assert any("latent has 64 non-finite" in p for p in problems), problems
    assert any("motif_scores has 1 non-finite" in p and "index 11" in p for p in problems), problems


def test_accepted_connections_get_tcp_nodelay():
    """The pre-bound listening socket must say IPPROTO_TCP, or asyncio leaves Nagle on for accepted
    connections and every keep-alive answer waits for the client's delayed ACK (the runtime image
    runs the asyncio loop)."""
    import asyncio

    from hailo_sidecar.__main__ import _bind

    sock = _bind("127.0.0.1", 0)
    port = sock.getsockname()[1]

    async def accepted_nodelay() -> int:
        loop = asyncio.get_running_loop()
        seen: asyncio.Future[int] = loop.create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                server_side = transport.get_extra_info("socket")
                seen.set_result(server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        server = await loop.create_server(Probe, sock=sock)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(seen, 30)
        finally:
            writer.close()
            server.close()

    assert asyncio.run(accepted_nodelay()) != 0
