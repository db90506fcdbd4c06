"""`digest serve`'s application under a real uvicorn on a free loopback port, in a thread of the test; and a
newsletter folder served by it (`Site`)."""

from __future__ import annotations

import email
import re
import socket
import threading
import time
from datetime import UTC, datetime
from email import policy
from pathlib import Path

import httpx
import uvicorn

from digest import load_config, store
from digest.send.unsubscribe import make_token
from digest.web.app import create_app

from .project import make_project


class WebServer:
    """Its port is taken first (the newsletter's site_url names it), the application given to `start`."""

    def __init__(self):
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self, app) -> WebServer:
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", backlog=512)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._listener]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:  # polled: uvicorn says when it listens
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)
        self._listener.close()


SECRET = "a-long-random-secret-for-the-tests-0123456789"


class Site:
    """A newsletter folder with serve: and publish:, its application under uvicorn, and an httpx client."""

    def __init__(
        self,
        directory: Path,
        smtp_port: int,
        subscribers: list[dict] | str,
        serve: dict | None = None,
        clock=lambda: datetime.now(UTC),
    ):
        self.web = WebServer()
        self.url = self.web.url
        self.path = make_project(
            directory,
            smtp_port,
            subscribers,
            site_url=self.url,
            unsubscribe_url=None,
            sections={"serve": serve or {}, "publish": {}},
        )
        self.config = load_config(self.path)
        self.db_path = directory / "digest.db"
        self.web.start(create_app(self.config, self.db_path, clock=clock))
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def db(self):
        return store.open_db(self.db_path)

    def status(self, address: str) -> str | None:
        row = self.db().execute("SELECT status FROM subscribers WHERE email = ?", [address]).fetchone()
        return row[0] if row else None

    def subscribe(self, address: str, name: str = "", *, client: str | None = None, **fields) -> httpx.Response:
        """POST /subscribe from this site's form; `client`: the address the proxy names (X-Forwarded-For)."""
        headers = {"Origin": self.url.rstrip("/")} | ({"X-Forwarded-For": client} if client else {})
        return self.client.post("/subscribe", data={"email": address, "name": name, **fields}, headers=headers)

    def unsubscribe_token(self, address: str) -> str:
        return make_token(SECRET, self.config.newsletter.list_identifier, address)

    def stop(self) -> None:
        self.client.close()
        self.web.stop()


def confirmation_link(message: bytes) -> str:
    parsed = email.message_from_bytes(message, policy=policy.default)
    return re.search(r"http://\S+/confirm\?token=\S+", parsed.get_content()).group()
