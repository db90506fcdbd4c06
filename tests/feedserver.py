"""A real HTTP server on loopback for feed tests: routes with status, headers, body, delay, a slow drip, a false
length; records requests."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/rss+xml"})
    delay: float = 0.0  # seconds before answering (a slow server)
    etag: str | None = None  # answer 304 to a matching If-None-Match
    drop: bool = False  # close the connection without answering
    drip: float = 0.0  # seconds between the body's bytes, sent one at a time (a slow drip never times out a read)
    length: int | None = None  # the Content-Length to claim, when it should not be the body's; -1: none, read to the end


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default backlog of 5 drops connections when 80 feeds are fetched at once

    def handle_error(self, request, client_address) -> None:
        """A client that hung up (a timeout test, a retry) is expected here, not news for the test's stderr."""


class FeedServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server.requests.append((self.path, dict(self.headers)))
                route = server.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                if route.delay:
                    time.sleep(route.delay)
                if route.drop:
                    self.close_connection = True
                    self.connection.close()
                    return
                if route.etag and self.headers.get("If-None-Match") == route.etag:
                    self.send_response(304)
                    self.send_header("ETag", route.etag)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(route.status)
                for name, value in route.headers.items():
                    self.send_header(name, value)
                if route.etag:
                    self.send_header("ETag", route.etag)
                if route.length == -1:
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(len(route.body) if route.length is None else route.length))
                self.end_headers()
                if not route.drip:
                    self.wfile.write(route.body)
                    return
                try:
                    for byte in route.body:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        if server.stopping.wait(route.drip):
                            return
                except OSError:  # the client gave up, as it should
                    self.close_connection = True

            def log_message(self, format: str, *args) -> None:  # noqa: A002
                pass

        self.stopping = threading.Event()
        self.httpd = _Server((host, 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def base(self) -> str:
        return f"http://{self.httpd.server_address[0]}:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def hits(self, path: str) -> list[dict[str, str]]:
        return [headers for requested, headers in self.requests if requested == path]

    def start(self) -> "FeedServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def rss(items: list[dict], title: str = "Sample feed", link: str = "https://blog.example.com/") -> bytes:
    """A small RSS 2.0 document; each item dict may have title, link, guid, description, date (RFC 822)."""
    parts = [f'<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0"><channel><title>{title}</title>'
             f"<link>{link}</link><description>d</description>"]
    for item in items:
        parts.append("<item>")
        for key, tag in (("title", "title"), ("link", "link"), ("guid", "guid"), ("date", "pubDate")):
            if item.get(key):
                parts.append(f"<{tag}>{item[key]}</{tag}>")
        if item.get("description"):
            parts.append(f"<description><![CDATA[{item['description']}]]></description>")
        parts.append("</item>")
    parts.append("</channel></rss>")
    return "".join(parts).encode("utf-8")
