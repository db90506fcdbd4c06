"""The one HTTP server the test helpers are built on: http.server on 127.0.0.1 (or another loopback address),
a free port, a thread per request, quiet when a client hangs up."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default backlog of 5 drops connections when 80 feeds are fetched at once

    def handle_error(self, request, client_address) -> None:
        """A client that hung up (a timeout test, a retry) is expected here, not news for the test's stderr."""


class LoopbackServer:
    """Serves `handler` on `host` at a free port from `start()` until `stop()`."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], host: str = "127.0.0.1") -> None:
        self.stopping = threading.Event()  # set by stop(): a handler that waits on it gives up
        self.httpd = _Server((host, 0), handler)
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
