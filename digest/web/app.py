"""`digest serve`: the newsletter's web endpoints, an ASGI application (Starlette) served by uvicorn.

    GET  /  /issues/<issue>/  /feed.xml  /feed.json   the archive as `digest publish` writes it, kept current
    POST /subscribe            a pending subscriber and a confirmation mail; always the same answer
    GET  /confirm?token=       a page with one button (mail scanners open every link of a mail)
    POST /confirm?token=       that button: the subscriber becomes active
    GET  /unsubscribe?token=   a page with one button (a GET never unsubscribes: mail scanners follow links)
    POST /unsubscribe?token=   RFC 8058 one-click, and that button
    GET  /healthz

It shares the SQLite file with a running `digest send` (WAL, a busy timeout): each worker thread has its own
connection, and each write is one short transaction. No page needs JavaScript, every value is escaped by
the templates, and no page sends a Referer to another site (the URLs hold tokens).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import queue
import socket
import threading
import time
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime
from email import policy
from email.utils import parseaddr
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, urlsplit

import sqlite_utils
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from digest import store
from digest.credentials import redact
from digest.errors import SetupError
from digest.send.smtp_transport import Connection, smtp_password
from digest.send.unsubscribe import missing_secret, signed_address, unsubscribe_secret
from digest.settings.config import Config
from digest.settings.subscribers import address_key, is_valid_email
from digest.web import signup
from digest.web.publish import publish, site_context

log = logging.getLogger("digest.serve")
MAX_FORM_BYTES = 16 * 1024  # a signup form is a few hundred bytes; a one-click POST a few dozen
HONEYPOT = "website"  # the signup form's field that people never see and bots fill in
Clock = Callable[[], datetime]
T = TypeVar("T")


def _now() -> datetime:
    return datetime.now(UTC)


class _Databases:
    """One connection per thread (Starlette runs plain functions in a pool of threads); SQLite's busy timeout
    (store.open_db) makes a writer wait its turn behind a send's transaction instead of failing."""

    def __init__(self, path: Path):
        self.path = path
        self._local = threading.local()
        self._writing = threading.Lock()

    def get(self) -> sqlite_utils.Database:
        """This thread's connection."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = store.open_db(self.path)
            db.execute("PRAGMA synchronous=FULL")  # an unsubscribe answered 200 survives a power cut too
        return db

    async def run(self, function: Callable[..., T], *args, **kwargs) -> T:
        """`function(db, *args, **kwargs)` in a worker thread, with that thread's connection."""
        return await run_in_threadpool(lambda: function(self.get(), *args, **kwargs))

    async def write(self, function: Callable[..., T], *args, **kwargs) -> T:
        """The same for a function that writes: this process's writers take turns on a lock, woken as soon as
        the one before commits, instead of in SQLite's busy handler, which sleeps up to 100 ms at a time
        (benchmarks/unsubscribe.py during a send: the slowest 1 % took 550-710 ms without the lock, 220-300 ms
        with it, at the same rate)."""

        def locked() -> T:
            with self._writing:
                return function(self.get(), *args, **kwargs)

        return await run_in_threadpool(locked)


class _RateLimit:
    """At most about `limit` requests per `window` seconds per key, in this process's memory: the counts of the
    current window and of the one before, weighted by how much of it still overlaps (a sliding estimate). Two
    plain dicts: memory holds the keys of two windows at most, and no call walks them."""

    def __init__(self, limit: int, window: float):
        self.limit, self.window = limit, window
        self._start = time.monotonic()
        self._current: dict[str, int] = {}
        self._previous: dict[str, int] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            elapsed = now - self._start
            if elapsed >= self.window:
                self._previous = self._current if elapsed < 2 * self.window else {}
                self._current = {}
                self._start += self.window * (elapsed // self.window)
                elapsed = now - self._start
            overlap = 1 - elapsed / self.window
            if self._previous.get(key, 0) * overlap + self._current.get(key, 0) >= self.limit:
                return False
            self._current[key] = self._current.get(key, 0) + 1
            return True


def client_key(host: str) -> str:
    """Who a client is, for the limits: an IPv4 address, or the /64 network of an IPv6 one (one host usually
    has a whole /64 to pick addresses from)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def inbox_key(email: str) -> str:
    """The inbox an address delivers to, for the per-inbox limit: without a `+tag`, and for Gmail without dots
    (`v.i.c.tim+1@gmail.com` is `victim@gmail.com`'s inbox)."""
    local, _, domain = address_key(email).rpartition("@")
    local = local.split("+", 1)[0]
    if domain in ("gmail.com", "googlemail.com"):
        local, domain = local.replace(".", ""), "gmail.com"
    return f"{local}@{domain}"


class _Mailer:
    """Confirmation mails, sent one at a time by a thread of their own: a slow or absent SMTP server never holds
    the request threads (the unsubscribes' too). At most QUEUE_SIZE wait; more are dropped, and logged."""

    QUEUE_SIZE = 100

    def __init__(self, send: Callable[[str], None]):
        self._send = send
        self._queue: queue.Queue[str] = queue.Queue(self.QUEUE_SIZE)
        threading.Thread(target=self._run, name="confirmations", daemon=True).start()

    def put(self, email: str) -> None:
        try:
            self._queue.put_nowait(email)
        except queue.Full:
            log.error("confirmation mail to %s not sent: %d are waiting already", email, self.QUEUE_SIZE)

    def _run(self) -> None:
        while True:
            email = self._queue.get()
            try:
                self._send(email)
            except Exception as exc:  # one logged line, never the thread's end
                log.error("confirmation mail to %s not sent: %s", email, redact(f"{exc}" or type(exc).__name__))


# mimetypes knows .xml and .json only as any XML and JSON, which a browser shows as source, not as a feed
_FEED_TYPES = {"feed.xml": "application/atom+xml; charset=utf-8", "feed.json": "application/feed+json"}


class _ArchiveFiles(StaticFiles):
    """The archive's files, its feeds with their own media types."""

    def file_response(
        self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        media_type = _FEED_TYPES.get(Path(full_path).name)
        if media_type:
            response.headers["content-type"] = media_type
        return response


class _Archive:
    """The published archive, served as files, and published again first whenever the sent issues changed (a
    send by `digest run` while the server runs): one indexed query per request tells."""

    def __init__(self, config: Config, databases: _Databases):
        self.config, self.databases = config, databases
        self._lock = threading.Lock()
        self._seen: tuple | None = None
        self.refresh(databases.get())
        self.files = _ArchiveFiles(directory=config.site_dir, html=True)

    def refresh(self, db: sqlite_utils.Database) -> None:
        with self._lock:
            state = tuple(db.execute("SELECT count(*), max(sent_at) FROM issues WHERE status = 'sent'").fetchone())
            if state != self._seen:
                publish(self.config, db)
                self._seen = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.databases.run(self.refresh)
        await self.files(scope, receive, send)


class _SecurityHeaders:
    """Headers on every response: no framing, no sniffing, no Referer to another site (tokens are in the
    URLs), and a content policy that allows no script at all."""

    def __init__(self, app: ASGIApp, form_origins: list[str]):
        self.app = app
        actions = " ".join(["'self'", *form_origins])
        policy_text = (
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' https: data:; "
            f"form-action {actions}; base-uri 'none'; frame-ancestors 'none'"
        )
        self.headers = [
            (b"content-security-policy", policy_text.encode("ascii")),
            (b"referrer-policy", b"same-origin"),  # "no-referrer" would make a form's Origin "null"
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + self.headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _capped_body(request: Request) -> bytes | None:
    """The request's body, or None past MAX_FORM_BYTES: read as it streams in (a chunked body has no
    Content-Length to refuse it by), never more than the limit held."""
    if int(request.headers.get("content-length") or 0) > MAX_FORM_BYTES:
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    return body


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


class WebSide:
    """The endpoints' state: settings, the database, the limits, and how a confirmation is mailed."""

    def __init__(self, config: Config, db_path: Path, *, clock: Clock = _now):
        if config.serve is None or not config.newsletter.site_url:
            raise SetupError(f"{config.path}: digest serve needs a serve: section and newsletter.site_url")
        purpose = "signs the confirmation and unsubscribe links"
        secret = unsubscribe_secret(purpose)
        if not secret:
            raise missing_secret(purpose)
        self.config, self.settings, self.secret, self.clock = config, config.serve, secret, clock
        self.site_url = config.newsletter.site_url
        self.list_id = config.newsletter.list_identifier
        self.databases = _Databases(db_path)
        self.per_client = _RateLimit(self.settings.subscribes_per_hour, 3600.0)
        self.per_inbox = _RateLimit(self.settings.confirmations_per_day, 86400.0)
        self.all_confirmations = _RateLimit(self.settings.confirmations_per_hour, 3600.0)
        origins = {_origin(self.site_url), *([_origin(config.signup_url)] if config.signup_url else [])}
        self.origins = sorted(origins)
        self.smtp = config.backends["smtp"]  # the confirmation mails go as the issues do
        self.smtp_password = smtp_password(self.smtp)  # refused now when it is needed and missing
        self.archive = _Archive(config, self.databases)
        self.mailer = _Mailer(self.mail_confirmation)

    # --- pages --------------------------------------------------------------------------

    def page(self, title: str, message: str, *, status: int = 200, form: dict | None = None) -> HTMLResponse:
        from digest.issue.render import render_page

        context = {**site_context(self.config), "title": title, "message": message, "form": form}
        html = render_page("web/message.html.j2", context, self.config.folder)
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    # --- endpoints ------------------------------------------------------------------------

    async def subscribe(self, request: Request) -> Response:
        if not self.settings.signup:
            return self.page("Not found", "There is no signup here.", status=404)
        origin = request.headers.get("origin")
        if (origin is not None and origin.lower() not in self.origins) or (
            origin is None and request.headers.get("sec-fetch-site") == "cross-site"
        ):
            return self.page("Refused", "This form can only be sent from the newsletter's own pages.", status=403)
        if int(request.headers.get("content-length") or 0) > MAX_FORM_BYTES:
            return self.page("Too large", "That request is too large for a signup form.", status=413)
        client = client_key(request.client.host) if request.client else "unknown"
        if not self.per_client.allow(client):
            response = self.page("Too many requests", "Too many signups from here: try again in an hour.", status=429)
            response.headers["Retry-After"] = "3600"
            return response
        try:
            form = await request.form(max_files=0, max_fields=20, max_part_size=MAX_FORM_BYTES)
        except Exception:  # python-multipart's and Starlette's parse errors share no base class
            return self.page("Bad request", "That form could not be read.", status=400)
        email = str(form.get("email") or "").strip()
        name = str(form.get("name") or "").strip()[:200]
        done = self.page(
            "Check your inbox",
            f"If {email} can receive {self.config.newsletter.title}, a message with a confirmation link is on its "
            f"way. Open it within {signup.CONFIRM_DAYS} days to start receiving the newsletter.",
        )
        if form.get(HONEYPOT):
            return done
        if not is_valid_email(email) or any(unicodedata.category(character) in "CcCf" for character in email):
            return self.page("Not an address", "That does not look like an email address.", status=400)
        mail = await self.databases.write(
            signup.request_subscription,
            email,
            name,
            self.clock(),
            per_day=self.settings.confirmations_per_day,
        )
        if mail and self.per_inbox.allow(inbox_key(email)) and self.all_confirmations.allow(""):
            self.mailer.put(email)
        return done

    def mail_confirmation(self, email: str) -> None:
        """On the mailer's thread, after the answer went out (its timing tells nothing)."""
        now = self.clock()
        token = signup.make_confirm_token(self.secret, self.list_id, email, now)
        url = f"{self.site_url}confirm?token={quote(token)}"
        message = signup.confirmation_message(self.config, email, url, now)
        connection = Connection(self.smtp, self.smtp_password)
        try:
            sender = self.config.newsletter.from_address
            connection.transact(parseaddr(sender)[1], email, message.as_bytes(policy=policy.SMTP))
        finally:
            connection.close()

    def _confirm_token(self, request: Request) -> signup.ConfirmToken | Response:
        """The request's valid, unexpired confirmation token, or the page that refuses it."""
        token = signup.verify_confirm_token(self.secret, self.list_id, request.query_params.get("token", ""))
        if token is None:
            return self.page("Link not valid", "This confirmation link is not valid: nothing was changed.", status=400)
        if token.expired(self.clock()):
            return self.page(
                "Link expired",
                f"This confirmation link is more than {signup.CONFIRM_DAYS} days old: nothing was changed. "
                "Subscribe again to get a new one.",
                status=400,
            )
        return token

    async def confirm_page(self, request: Request) -> Response:
        """GET: a page with one button. Mail scanners (Safe Links, Mimecast) open every link of a mail: a GET that
        confirmed would subscribe an address without its owner."""
        token = self._confirm_token(request)
        if isinstance(token, Response):
            return token
        return self.page(
            "Confirm your subscription",
            f"Start sending {self.config.newsletter.title} to {token.email}?",
            form={"action": f"confirm?token={quote(request.query_params['token'])}", "button": "Confirm"},
        )

    async def confirm(self, request: Request) -> Response:
        """POST, the page's button: the subscriber becomes active."""
        if await _capped_body(request) is None:
            return self.page("Too large", "That request is too large.", status=413)
        token = self._confirm_token(request)
        if isinstance(token, Response):
            return token
        outcome = await self.databases.write(signup.confirm, token, self.clock())
        title = self.config.newsletter.title
        pages = {
            "confirmed": ("Subscribed", f"{token.email} will receive {title}. Thank you!"),
            "already": ("Already subscribed", f"{token.email} already receives {title}."),
            "unsubscribed": ("Not changed", f"{token.email} unsubscribed after this link was sent: subscribe again."),
            "blocked": ("Not changed", f"Mail to {token.email} cannot be delivered, so it was not subscribed."),
            "unknown": ("Not changed", "This subscription request is no longer known: subscribe again."),
        }
        heading, text = pages[outcome]
        return self.page(heading, text)

    async def unsubscribe_page(self, request: Request) -> Response:
        """GET: only a page with a button; scanners and previews that follow links change nothing."""
        token = request.query_params.get("token", "")
        email = await self.databases.run(signed_address, self.secret, self.list_id, token)
        if email is None:
            return self.page("Link not valid", "This unsubscribe link is not valid: nothing was changed.", status=400)
        return self.page(
            "Unsubscribe",
            f"Stop sending {self.config.newsletter.title} to {email}?",
            form={"action": f"unsubscribe?token={quote(token)}", "button": "Unsubscribe"},
        )

    async def unsubscribe(self, request: Request) -> Response:
        """POST: RFC 8058 one-click (List-Unsubscribe=One-Click, urlencoded or multipart) or the page's button.
        The body is not needed: the signed token in the URL says who."""
        body = await _capped_body(request)
        if body is None:
            return self.page("Too large", "That request is too large.", status=413)
        token = request.query_params.get("token", "")
        how = "one-click unsubscribe" if b"one-click" in body.lower() else "unsubscribe page"
        email = await self.databases.write(signup.unsubscribe, self.secret, self.list_id, token, self.clock(), how)
        if email is None:
            return self.page("Link not valid", "This unsubscribe link is not valid: nothing was changed.", status=400)
        return self.page("Unsubscribed", f"{email} will not receive {self.config.newsletter.title} again.")

    async def healthz(self, request: Request) -> Response:
        await self.databases.run(lambda db: db.execute("SELECT 1").fetchone())
        return PlainTextResponse("ok\n", headers={"Cache-Control": "no-store"})


def create_app(config: Config, db_path: Path, *, clock: Clock = _now) -> ASGIApp:
    web = WebSide(config, db_path, clock=clock)
    app = Starlette(
        routes=[
            Route("/healthz", web.healthz, methods=["GET"]),
            Route("/subscribe", web.subscribe, methods=["POST"]),
            Route("/confirm", web.confirm_page, methods=["GET"]),
            Route("/confirm", web.confirm, methods=["POST"]),
            Route("/unsubscribe", web.unsubscribe_page, methods=["GET"]),
            Route("/unsubscribe", web.unsubscribe, methods=["POST"]),
            Mount("/", app=web.archive),
        ]
    )
    return _SecurityHeaders(app, web.origins)


def serve(config: Config, db_path: Path, *, host: str, port: int, on_ready: Callable[[str], None]) -> None:
    """Run the application under uvicorn until Ctrl-C or SIGTERM. The port is taken first, so that a port in use
    is one line and exit 2. No access log: its lines would hold the tokens of the URLs; X-Forwarded-For is
    believed from the local reverse proxy only (uvicorn's default, FORWARDED_ALLOW_IPS)."""
    import uvicorn

    app = create_app(config, db_path)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise SetupError(f"--port: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    on_ready(f"http://{host}:{listener.getsockname()[1]}")
    settings = uvicorn.Config(app, access_log=False, proxy_headers=True, log_level="info", lifespan="off")
    uvicorn.Server(settings).run(sockets=[listener])
