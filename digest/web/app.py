"""`digest serve`: the newsletter's web endpoints, an ASGI application (Starlette) served by uvicorn.

    GET  /  /issues/<issue>/  /feed.xml  /feed.json   the archive as `digest publish` writes it, kept current
    POST /subscribe            a queued request (confirmations.py); the same answer for any address, 429 past a limit
    GET  /confirm?token=       a page with one button (mail scanners open every link of a mail)
    POST /confirm?token=       that button: the subscriber becomes active
    GET  /unsubscribe?token=   a page with one button (a GET never unsubscribes: mail scanners follow links)
    POST /unsubscribe?token=   RFC 8058 one-click, and that button
    GET  /healthz

It shares the SQLite file with a running `digest send` (WAL): each worker thread has its own connection, a read
never waits on a writer, and each write is one short transaction that waits a few seconds at most for another
process's lock (then 503 and Retry-After; an unsubscribe, which nobody sends twice, up to UNSUBSCRIBE_WAIT). Every
URL it makes names site_url, never the request's Host. No page needs JavaScript, every value is escaped by the
templates, and no page sends a Referer to another site (the URLs hold tokens).
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
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

import anyio
import sqlite_utils
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from digest import store
from digest.errors import SetupError
from digest.send.smtp_transport import Connection, smtp_password
from digest.send.unsubscribe import missing_secret, signed_address, unsubscribe_secret
from digest.settings.config import Config
from digest.settings.subscribers import is_valid_email
from digest.web import signup
from digest.web.confirmations import DRAIN_SECONDS, Confirmations, enqueue
from digest.web.limits import SignupLimits, client_key
from digest.web.publish import publish, site_context
from digest.web.serve_log import LOG_CONFIG

log = logging.getLogger("digest.serve")
MAX_FORM_BYTES = 16 * 1024  # a signup form is a few hundred bytes; a one-click POST a few dozen
HONEYPOT = "website"  # the signup form's field that people never see and bots fill in
Clock = Callable[[], datetime]
T = TypeVar("T")


def _now() -> datetime:
    return datetime.now(UTC)


WRITE_WAIT = 3.0  # seconds a request's write waits for the database before the answer is 503 and Retry-After
# An unsubscribe waits much longer: a mailbox provider POSTs a one-click once (RFC 8058) and does not retry a 503,
# and a person who pressed the button may not come back; a slow answer is better than a lost unsubscribe. Below
# the usual 30 s timeouts of clients and proxies. Signups are queued in the database and need no such wait.
UNSUBSCRIBE_WAIT = 20.0


class Busy(Exception):
    """The database stayed locked by another writer (a send, a backup) for WRITE_WAIT: answered 503."""


class _Databases:
    """One connection per thread (Starlette runs plain functions in a pool of threads). Reads never wait on a
    writer (WAL). A write waits its turn behind this process's writers in the event loop (no thread is held while
    it queues, so a long lock held by another process leaves the threads to the archive and /healthz), then at
    most WRITE_WAIT seconds in SQLite's busy handler; past that it is Busy, and so are the writes that queued
    behind it meanwhile."""

    def __init__(self, path: Path):
        self.path = path
        self._local = threading.local()
        self._writing: anyio.Lock | None = None  # made in the event loop, at the first write
        self._locked_at: float | None = None  # when the last write found the database locked by another

    def get(self) -> sqlite_utils.Database:
        """This thread's connection."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = store.open_db(self.path)
            db.execute("PRAGMA synchronous=FULL")  # an unsubscribe answered 200 survives a power cut too
            db.execute(f"PRAGMA busy_timeout = {int(WRITE_WAIT * 1000)}")
        return db

    async def run(self, function: Callable[..., T], *args, **kwargs) -> T:
        """`function(db, *args, **kwargs)` in a worker thread, with that thread's connection."""
        return await run_in_threadpool(lambda: function(self.get(), *args, **kwargs))

    async def write(self, function: Callable[..., T], *args, **kwargs) -> T:
        """The same for a function that writes: this process's writers take turns on a lock, woken as soon as
        the one before commits, instead of in SQLite's busy handler, which sleeps up to 100 ms at a time
        (benchmarks/unsubscribe.py during a send: the slowest 1 % took 550-710 ms without the lock, 220-300 ms
        with it, at the same rate). Busy when the database stays locked."""
        if self._writing is None:
            self._writing = anyio.Lock()
        started = time.monotonic()
        async with self._writing:
            if self._locked_at is not None and self._locked_at > started:
                raise Busy  # the writer before this one found the database locked by another: so would this one
            try:
                result = await run_in_threadpool(self._busy_aware, function, *args, **kwargs)
            except Busy:
                self._locked_at = time.monotonic()
                raise
            self._locked_at = None
            return result

    async def patient_write(self, function: Callable[..., T], *args, **kwargs) -> T:
        """`write`, tried again while the database stays locked, for up to about UNSUBSCRIBE_WAIT. Each attempt takes
        its turn on this process's lock and holds one thread for WRITE_WAIT at most: waiting unsubscribes hold no
        thread between attempts (the archive and /healthz keep theirs), and signups queued meanwhile still get
        their 503 within a few seconds."""
        started = time.monotonic()
        while True:
            try:
                return await self.write(function, *args, **kwargs)
            except Busy:
                if time.monotonic() - started > UNSUBSCRIBE_WAIT - WRITE_WAIT:
                    raise
            await anyio.sleep(0.05)  # an attempt refused at once (the one before found the lock held) is not a spin

    def _busy_aware(self, function: Callable[..., T], *args, **kwargs) -> T:
        try:
            return function(self.get(), *args, **kwargs)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise Busy from None
            raise


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

    def __init__(self, app: ASGIApp, form_origins: list[str], site_url: str):
        self.app = app
        site = urlsplit(site_url)
        self.scheme, self.host = site.scheme, site.netloc.encode("idna" if not site.netloc.isascii() else "ascii")
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
        # the site's own scheme and host, never the request's Host header, in every URL made (a redirect's Location)
        headers = [(name, value) for name, value in scope["headers"] if name != b"host"]
        scope = {**scope, "scheme": self.scheme, "headers": [*headers, (b"host", self.host)]}

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
        self.limits = SignupLimits(self.settings)
        origins = {_origin(self.site_url), *([_origin(config.signup_url)] if config.signup_url else [])}
        self.origins = sorted(origins)
        self.smtp = config.backends["smtp"]  # the confirmation mails go as the issues do
        self.smtp_password = smtp_password(self.smtp)  # refused now when it is needed and missing
        self.archive = _Archive(config, self.databases)
        self.confirmations = Confirmations(db_path, self.record_request, self.mail_confirmation, clock).start()

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
        refused = self.limits.client(client)
        if refused:
            return self.try_later(*refused)
        try:
            form = await request.form(max_files=0, max_fields=20, max_part_size=MAX_FORM_BYTES)
        except Exception:  # python-multipart's and Starlette's parse errors share no base class
            return self.page("Bad request", "That form could not be read.", status=400)
        email = str(form.get("email") or "").strip()
        name = str(form.get("name") or "").strip()[:200]
        if form.get(HONEYPOT):
            return self.check_your_inbox(email)
        if not is_valid_email(email) or any(unicodedata.category(character) in "CcCf" for character in email):
            return self.page("Not an address", "That does not look like an email address.", status=400)
        refused = self.limits.confirmation(client, email)
        if refused:
            return self.try_later(*refused)
        # The same work for every address: one queued row; whether it is new, pending or active is decided by
        # the confirmations' thread after the answer went out.
        await self.databases.write(enqueue, email, name, self.clock())
        self.confirmations.wake()
        return self.check_your_inbox(email)

    def check_your_inbox(self, email: str) -> Response:
        return self.page(
            "Check your inbox",
            f"If {email} can receive {self.config.newsletter.title}, a message with a confirmation link is on its "
            f"way. Open it within {signup.CONFIRM_DAYS} days to start receiving the newsletter.",
        )

    def try_later(self, text: str, seconds: int) -> Response:
        response = self.page("Too many requests", text, status=429)
        response.headers["Retry-After"] = str(seconds)
        return response

    def record_request(self, db: sqlite_utils.Database, email: str, name: str, requested: datetime) -> bool:
        """On the confirmations' thread: the request recorded; whether to mail a confirmation link."""
        return signup.request_subscription(db, email, name, requested, per_day=self.settings.confirmations_per_day)

    def mail_confirmation(self, email: str, sequence: int) -> None:
        """On the confirmations' thread, after the answer went out (its timing tells nothing)."""
        now = self.clock()
        token = signup.make_confirm_token(self.secret, self.list_id, email, now, sequence)
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
        unsubscribe = signup.unsubscribe
        email = await self.databases.patient_write(unsubscribe, self.secret, self.list_id, token, self.clock(), how)
        if email is None:
            return self.page("Link not valid", "This unsubscribe link is not valid: nothing was changed.", status=400)
        return self.page("Unsubscribed", f"{email} will not receive {self.config.newsletter.title} again.")

    async def healthz(self, request: Request) -> Response:
        await self.databases.run(lambda db: db.execute("SELECT 1").fetchone())
        return PlainTextResponse("ok\n", headers={"Cache-Control": "no-store"})


def _busy(request: Request, exc: Exception) -> Response:
    return PlainTextResponse(
        "The newsletter's database is busy: try again in a few seconds.\n",
        status_code=503,
        headers={"Retry-After": "5", "Cache-Control": "no-store"},
    )


def _gone(request: Request, exc: Exception) -> Response:
    """The client broke off, or broke HTTP, mid-body (a malformed chunk): nobody reads the answer, nothing logged
    but uvicorn's one line."""
    return PlainTextResponse("Bad request.\n", status_code=400)


def _application(config: Config, db_path: Path, clock: Clock) -> tuple[ASGIApp, WebSide]:
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
        ],
        exception_handlers={Busy: _busy, ClientDisconnect: _gone},
    )
    return _SecurityHeaders(app, web.origins, web.site_url), web


def create_app(config: Config, db_path: Path, *, clock: Clock = _now) -> ASGIApp:
    return _application(config, db_path, clock)[0]


def serve(config: Config, db_path: Path, *, host: str, port: int, on_ready: Callable[[str], None]) -> None:
    """Run the application under uvicorn until Ctrl-C or SIGTERM. The port is taken first, so that a port in use
    is one line and exit 2. No access log: its lines would hold the tokens of the URLs; X-Forwarded-For is
    believed from the local reverse proxy only (uvicorn's default, FORWARDED_ALLOW_IPS)."""
    import uvicorn

    app, web = _application(config, db_path, _now)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise SetupError(f"--port: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    on_ready(f"http://{host}:{listener.getsockname()[1]}")
    settings = uvicorn.Config(
        app, access_log=False, proxy_headers=True, log_config=LOG_CONFIG, log_level="info", lifespan="off"
    )
    try:
        uvicorn.Server(settings).run(sockets=[listener])
    finally:
        web.confirmations.drain(DRAIN_SECONDS)  # the confirmation mails queued, before the exit
