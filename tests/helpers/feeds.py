"""A real HTTP server on loopback for feed tests: routes with status, headers, body, delay, a slow drip, a false
length; records requests."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import format_datetime

from .loopback import LoopbackServer, QuietHandler


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/rss+xml"})
    delay: float = 0.0  # seconds before answering (a slow server)
    etag: str | None = None  # answer 304 to a matching If-None-Match
    drop: bool = False  # close the connection without answering
    drip: float = 0.0  # seconds between the body's bytes, sent one at a time (a slow drip never times out a read)
    length: int | None = (
        None  # the Content-Length to claim, when it should not be the body's; -1: none, read to the end
    )
    body_on_304: bool = False  # a broken server: its 304 carries the body, with its Content-Length


class FeedServer(LoopbackServer):
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.clients: list[tuple[str, int]] = []  # the client's address and port of each request: its connection
        server = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                server.requests.append((self.path, dict(self.headers)))
                server.clients.append(self.client_address[:2])
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
                    self.send_header("Content-Length", str(len(route.body)) if route.body_on_304 else "0")
                    self.end_headers()
                    if route.body_on_304:
                        self.wfile.write(route.body)
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

        super().__init__(Handler, host)

    def url(self, path: str) -> str:
        return self.base + path

    def hits(self, path: str) -> list[dict[str, str]]:
        return [headers for requested, headers in self.requests if requested == path]


def rss(items: list[dict], title: str = "Sample feed", link: str = "https://blog.example.com/") -> bytes:
    """A small RSS 2.0 document; each item dict may have title, link, guid, description, date (RFC 822)."""
    parts = [
        f'<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0"><channel><title>{title}</title>'
        f"<link>{link}</link><description>d</description>"
    ]
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


def linking_feed(links: dict[str, str], posted: datetime, text: str = "What happened to {name} this week.") -> bytes:
    """A feed of one post a link, an hour apart before `posted`: `Post NAME`, guid `new-NAME`, `text` about it."""
    items = [
        {
            "title": f"Post {name}",
            "link": link.replace("&", "&amp;"),
            "guid": f"new-{name}",
            "description": text.format(name=name),
            "date": format_datetime(posted - timedelta(hours=n)),
        }
        for n, (name, link) in enumerate(links.items())
    ]
    return rss(items)
