"""An in-process gsv server on a background thread for tests."""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace

from server.app import build_state, serve
from server.config import ServerConfig


class RunningServer:
    def __init__(self, config: ServerConfig):
        self.config = config
        self.state = build_state(config)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        asyncio.set_event_loop(self.loop)

        async def main():
            self._stop = asyncio.Event()
            ready = asyncio.Event()
            task = asyncio.ensure_future(serve(self.config, ready=ready, state=self.state, stop=self._stop))
            await ready.wait()
            self.ready.set()
            await task

        try:
            self.loop.run_until_complete(main())
        except BaseException as e:  # noqa: BLE001
            self.error = e
            self.ready.set()

    def start(self) -> "RunningServer":
        self.thread.start()
        self.ready.wait(120)
        if self.error:
            raise self.error
        return self

    @property
    def target(self) -> str:
        return f"localhost:{self.state.port}"

    def stop(self, timeout: float = 60) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(timeout)


def start_server(bundle, voices, **kw) -> RunningServer:
    cfg = ServerConfig(bundle=bundle, voices=voices, port=0, host="localhost", **kw)
    return RunningServer(cfg).start()


def metric(server, name, labels=None) -> float:
    """A sample of the running server's Prometheus registry (0 when it was never set)."""
    v = server.state.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if v is None else v


def wait_idle(server, timeout=30.0) -> None:
    """Wait (bounded) until no request is live in the engine or admitted."""
    deadline = time.time() + timeout
    while time.time() < deadline and (server.state.engine.live or server.state.in_flight):
        time.sleep(0.05)
    assert server.state.engine.live == 0 and server.state.in_flight == 0
