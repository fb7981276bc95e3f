"""A real uvicorn serving an app on a free loopback port, for tests that drive the HTTP stack."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import httpx
import uvicorn


class LiveServer:
    """uvicorn in a background thread on a socket bound to 127.0.0.1:0."""

    def __init__(self, app, *, send_buffer: int | None = None):
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if send_buffer is not None:  # accepted connections inherit it: a client that stops reading stalls us soon
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.sock.close()

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, trust_env=False, **kw)

    def health(self) -> dict:
        with self.client() as c:
            return c.get("/health").json()

    def wait_for(self, predicate, timeout: float = 20.0) -> float:
        """Poll /health until predicate(streams) holds; returns the seconds it took."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if predicate(self.health()["streams"]):
                return time.monotonic() - start
            time.sleep(0.02)
        raise AssertionError(f"server state not reached: {self.health()}")


def logged_requests(caplog, path: str, timeout: float = 10.0) -> list[dict]:
    """The server's JSON log lines for ``path``. A line is written once its request has ended on the
    server's thread, which can be just after the client has read the last byte: wait for one."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [json.loads(r.getMessage()) for r in caplog.records if r.getMessage().startswith("{")]
        found = [r for r in lines if r.get("path") == path]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


@contextlib.contextmanager
def demo_server(**settings):
    """The demo model served live with these ServerSettings; torch runs on one thread meanwhile
    (the model is tiny, and test machines are shared)."""
    import torch

    from tadastream.demo import build_demo_model, demo_voice
    from tadastream.server.app import ServerSettings, create_app

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build_demo_model()
        with LiveServer(
            create_app(model, settings=ServerSettings(**settings), default_voice=demo_voice(model))
        ) as live:
            yield live
    finally:
        torch.set_num_threads(threads)
