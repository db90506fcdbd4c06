"""Buttondown delivery: one POST /emails per issue, safe to repeat.

The idempotency key is stored in the issue row before the first request and reused by every retry and
re-run, so a request whose answer was lost cannot create a second email; the returned id is stored, so a
later run never posts again. A 4xx refusal created nothing: its key is dropped, and a corrected re-run
gets a fresh one (an idempotent API may otherwise replay the old refusal).
"""

from __future__ import annotations

import re
import secrets
import time
from datetime import datetime, timezone
from typing import Any, Callable

import httpx
import sqlite_utils

from .. import store
from ..config import ButtondownSettings
from ..models import RenderedIssue
from ..render import personalize
from . import SendError, SendReport, SetupError, env_secret

KEY_ENV = "BUTTONDOWN_API_KEY"
API_VERSION = "2026-04-01"  # creates drafts by default; sending needs the confirmation header below
CONFIRM_SEND = {"X-Buttondown-Live-Dangerously": "true"}
EDITOR_MODE = "<!-- buttondown-editor-mode: fancy -->\n"  # the body is HTML (see EmailInput.body)
UNSUBSCRIBE_VARIABLE = "{{ unsubscribe_url }}"  # Buttondown's per-subscriber unsubscribe link
MAX_RETRY_AFTER = 300.0
_TEMPLATE_OPENER = re.compile(r"\{(?=[{%#])")


def request_body(rendered: RenderedIssue, issue_id: str, *, send_now: bool) -> dict[str, Any]:
    """The EmailInput for an issue.

    Buttondown renders the body as a template, so `{{`, `{%` and `{#` from the content (a post about
    Django templates) are neutralized with an HTML entity before its own unsubscribe variable goes in.
    Buttondown has no name field of its own, so the name mark gets the no-name rendering.
    The "naked" template sends the designed HTML as it is, without Buttondown's header and footer.
    """
    html = _TEMPLATE_OPENER.sub("&#123;", rendered.html)
    html = personalize(html, unsubscribe_url=UNSUBSCRIBE_VARIABLE, name="", html=True)
    return {"subject": rendered.subject, "body": EDITOR_MODE + html, "template": "naked",
            "status": "about_to_send" if send_now else "draft", "metadata": {"digest_issue": issue_id}}


class Refusal(SendError):
    """A 4xx (other than 429) from Buttondown: retrying the same request cannot help."""


class ButtondownBackend:
    name = "buttondown"

    def __init__(self, settings: ButtondownSettings, *, send_now: bool,
                 sleep: Callable[[float], None] = time.sleep):
        key = env_secret(KEY_ENV)
        if not key:
            raise SetupError(f"{KEY_ENV} (or {KEY_ENV}_FILE) is not set: the API key from Buttondown's settings")
        self.settings, self.send_now, self.sleep = settings, send_now, sleep
        self.headers = {"Authorization": f"Token {key}", "X-API-Version": API_VERSION, "Accept": "application/json"}

    def deliver(self, db: sqlite_utils.Database, issue_id: str, rendered: RenderedIssue) -> SendReport:
        """Create the email (a draft, or sent with send_now); send an earlier draft when send_now."""
        started = time.perf_counter()
        issue = store.get_issue(db, issue_id)
        remote_id = issue["remote_id"]
        if remote_id is None:
            key = store.idempotency_key(db, issue_id, f"digest-{issue_id}-{secrets.token_hex(8)}")
            body = request_body(rendered, issue_id, send_now=self.send_now)
            headers = {"X-Idempotency-Key": key, **(CONFIRM_SEND if self.send_now else {})}
            try:
                remote_id = str(self._call("POST", "/emails", body, headers)["id"])
            except Refusal:
                store.forget_idempotency_key(db, issue_id)
                raise
        elif self.send_now:  # a draft made by an earlier run: PATCH needs no confirmation header
            self._call("PATCH", f"/emails/{remote_id}", {"status": "about_to_send"}, {})
        store.record_remote(db, issue_id, self.name, remote_id, sent=self.send_now, now=datetime.now(timezone.utc))
        return SendReport(issue=issue_id, backend=self.name, remote_id=remote_id, complete=self.send_now,
                          remote_status="about_to_send" if self.send_now else "draft",
                          seconds=time.perf_counter() - started)

    def _call(self, method: str, path: str, body: dict, headers: dict[str, str]) -> dict:
        """One API call: 429 waits for Retry-After, 5xx and timeouts back off, other 4xx raise Refusal."""
        url = self.settings.api_url.rstrip("/") + path
        problem = ""
        with httpx.Client(timeout=self.settings.timeout, headers=self.headers) as client:
            for attempt in range(1, self.settings.max_attempts + 1):
                wait = self.settings.backoff * 2 ** (attempt - 1)
                try:
                    response = client.request(method, url, json=body, headers=headers)
                except httpx.TransportError as exc:  # timeouts, refused or dropped connections
                    problem = f"{type(exc).__name__}: {exc}"
                else:
                    if response.is_success:
                        return response.json()
                    problem = f"{response.status_code} {_detail(response)}"
                    if response.status_code == 429:
                        wait = _retry_after(response, wait)
                    elif response.status_code < 500:
                        raise Refusal(f"Buttondown refused {method} {path}: {problem}")
                if attempt < self.settings.max_attempts:
                    self.sleep(wait)
        raise SendError(f"Buttondown: {method} {path} failed {self.settings.max_attempts} times, last: {problem}")


def _detail(response: httpx.Response) -> str:
    """Buttondown's own message: `detail` (a string, or a list of validation errors), else the raw text."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):
        detail = "; ".join(str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in detail)
    return " ".join(str(detail or response.text or response.reason_phrase).split())[:500]


def _retry_after(response: httpx.Response, default: float) -> float:
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(response.headers["Retry-After"])))
    except (KeyError, ValueError):
        return default
