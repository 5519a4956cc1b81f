"""TEST DOUBLE: a raw TCP server on loopback that answers every request (any path) with one kind
of garbage no real HTTP library would produce — never shipped.

Modes:
  reset      read the request, then reset the connection (RST, no answer)
  nothttp    answer bytes that are not an HTTP status line
  truncated  200 with content-length 1000, then close after a few bytes
  badchunk   200 chunked, with a chunk size that is not hex
  nonjson    a well-formed 200 whose body is an HTML page
  json422    422 with the sidecar's JSON error body (a canary refusing its own non-finite output)
  nulls      a well-formed 200 JSON answer whose numbers are null (NaN as some encoders write it)
  silent     read the request and never answer (until the server stops)
  drip       200 with content-length 1000, then one byte every 0.1 s: never a read timeout, never done
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

MODES = ("reset", "nothttp", "truncated", "badchunk", "nonjson", "json422", "nulls", "silent", "drip")


def _response(status: str, body: bytes, ctype: bytes = b"application/json") -> bytes:
    head = f"HTTP/1.1 {status}\r\ncontent-length: {len(body)}\r\nconnection: close\r\ncontent-type: ".encode()
    return head + ctype + b"\r\n\r\n" + body


def _read_request(rfile) -> bool:
    length = 0
    line = rfile.readline(65537)
    if not line:
        return False
    while True:
        header = rfile.readline(65537)
        if header in (b"\r\n", b"\n", b""):
            break
        name, _, value = header.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip() or 0)
    if length:
        rfile.read(length)
    return True


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        if not _read_request(self.rfile):
            return
        mode, sock = self.server.mode, self.connection
        if mode == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif mode == "nothttp":
            sock.sendall(b"\x00\x01garbage that is not HTTP\r\n\r\n")
        elif mode == "truncated":
            sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\ncontent-type: application/json\r\n\r\n{\"latent\": [0.1,")
        elif mode == "badchunk":
            sock.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: application/json\r\n\r\nzz\r\n{}\r\n")
        elif mode == "nonjson":
            sock.sendall(_response("200 OK", b"<html><body>Service Unavailable</body></html>", b"text/html"))
        elif mode == "json422":
            sock.sendall(_response("422 Unprocessable Entity",
                                   b'{"error": "non_finite_output", "detail": "outside the model\'s numeric range"}'))
        elif mode == "nulls":
            sock.sendall(_response("200 OK", b'{"latent": [null, null], "motif_scores": [null]}'))
        elif mode == "silent":
            self.server.stopping.wait()
        elif mode == "drip":
            sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\ncontent-type: application/json\r\n\r\n")
            while not self.server.stopping.wait(0.1):
                try:
                    sock.sendall(b" ")
                except OSError:
                    return


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown garbage mode {mode!r}; one of {MODES}")
        self.mode = mode
        self.stopping = threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)


@contextmanager
def garbage_server(mode: str) -> Iterator[str]:
    """http://127.0.0.1:PORT of a server answering every request with ``mode`` garbage."""
    srv = _Server(mode)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.stopping.set()
        srv.shutdown()
        srv.server_close()
