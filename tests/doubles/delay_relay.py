"""TEST DOUBLE: the lab network as a userspace TCP relay with delay and jitter — never shipped.

These machines have no `netem`, so latency is added here: every chunk read from one side is
delivered to the other after ``delay_ms ± jitter_ms`` (uniform), each way, in order (a chunk is
never delivered before the one read before it, as on a TCP path; chunks of one back-to-back burst
travel together), and with probability
``stall_p`` a chunk waits another ``stall_ms`` (a Wi-Fi retry burst).

    relay = DelayRelay("127.0.0.1", target_port, delay_ms=20, jitter_ms=15, seed=1)
    ... connect to 127.0.0.1:relay.port ...
    relay.close()

asyncio in its own thread: usable beside synchronous code under test. It listens on loopback only
and forwards to the address it is given (loopback, or inside a namespace the test created).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time

BURST_S = 0.001  # chunks read within this of the previous one belong to the same burst


class DelayRelay:
    def __init__(self, target_host: str, target_port: int, *, delay_ms: float = 20.0, jitter_ms: float = 15.0,
                 stall_p: float = 0.0, stall_ms: float = 0.0, seed: int | None = None, listen_host: str = "127.0.0.1") -> None:
        if not 0 <= jitter_ms <= delay_ms:
            raise ValueError("jitter must be within 0..delay (no negative delays)")
        self.target = (target_host, target_port)
        self.delay_s, self.jitter_s, self.stall_p, self.stall_s = delay_ms / 1000, jitter_ms / 1000, stall_p, stall_ms / 1000
        self._rng = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="delay-relay", daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, listen_host, 0), self._loop).result(10)
        self.host = listen_host
        self.port = int(self._server.sockets[0].getsockname()[1])
        self.connections = 0  # accepted so far: a test asks whether anything reached the device at all
        # asyncio keeps only weak references to tasks: a connection's handler whose client went away
        # while its upstream still waits would be collected mid-await ("Task was destroyed but it is
        # pending", 48 warnings in one CI run). Held here until it ends, or close() cancels it.
        self._handlers: set[asyncio.Task[None]] = set()

    def one_way_s(self) -> float:
        d = self.delay_s + self._rng.uniform(-self.jitter_s, self.jitter_s)
        if self.stall_p and self._rng.random() < self.stall_p:
            d += self.stall_s
        return d

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        with contextlib.suppress(asyncio.CancelledError):  # close(): 3.11's stream callback chokes on a re-raise
            await asyncio.gather(self._pipe(client_r, up_w), self._pipe(up_r, client_w), return_exceptions=True)
        for w in (client_w, up_w):
            w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                at, data = await queue.get()
                wait = at - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        last, last_read = 0.0, 0.0
        try:
            while True:
                data = await reader.read(65536)
                now = time.monotonic()
                # One write burst (headers, then body, sent back to back) travels together, as its
                # packets would; a later chunk draws its own delay. Never before the previous one.
                if now - last_read > BURST_S:
                    last = max(last, now + self.one_way_s())
                last_read = now
                queue.put_nowait((last, data))
                if not data:
                    break
            await sender
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:  # open connections: their pipes end here, not when the loop is collected
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> DelayRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
