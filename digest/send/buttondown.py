"""Buttondown delivery: one POST /emails per issue, safe to repeat.

The idempotency key is stored in the issue row before the first request, with the issue marked `sending`
(frozen: `build` leaves its draft alone, its posts are not offered again, smtp is refused), and reused by
every retry and re-run, so a request whose answer was lost cannot create a second email; the returned id is
stored, so a later run never posts again. The key also goes into the email's metadata, and a run that finds
a key stored but no id (the answer to an earlier request was lost) first looks the email up by it. Within a
run too, a POST repeated after a lost answer (a timeout, a dropped connection, a 5xx) is preceded by that
lookup: a server that ignores the key would otherwise create a second email.

The key is dropped (the issue a plain draft again, a corrected re-run getting a fresh key) only on a
definitive refusal: a 4xx to the first attempt of a run whose lookup found nothing. A 4xx after an attempt
whose answer was lost (a timeout, a dropped connection, a 5xx) proves nothing about that attempt: the key is
kept, the run stops, and the next one looks the email up.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlite_utils

from digest import store
from digest.credentials import env_secret, redact
from digest.errors import ConfigError, SendError, SetupError
from digest.issue.draft import write_atomically
from digest.issue.render import personalize
from digest.models import RenderedIssue
from digest.retry import CONNECTION_REFUSED, LOOKUP_FAILED, NO_SUCH_HOST, TIMED_OUT, backoff, connection_failure
from digest.send.base import Backend, SendPlan, SendReport
from digest.settings.config import Config
from digest.settings.sections import HOUR, read_section, setting
from digest.settings.yamlfile import MappingReader
from digest.urls import secret_url_problem

if TYPE_CHECKING:
    import httpx

KEY_ENV = "BUTTONDOWN_API_KEY"
API_URL_ENV = "BUTTONDOWN_API_URL"  # wins over buttondown.api_url (tests point it at a local fake)
LINK_ROOM = 200  # bytes Buttondown's unsubscribe link may take beyond its template variable
API_VERSION = "2026-04-01"  # creates drafts by default; sending needs the confirmation header below
CONFIRM_SEND = {"X-Buttondown-Live-Dangerously": "true"}
EDITOR_MODE = "<!-- buttondown-editor-mode: fancy -->\n"  # the body is HTML (see EmailInput.body)
UNSUBSCRIBE_VARIABLE = "{{ unsubscribe_url }}"  # Buttondown's per-subscriber unsubscribe link
MAX_RETRY_AFTER = 300.0
LOOKUP_PAGES = 5  # of the newest emails searched for an earlier request's (a page holds tens of emails)
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
    return {
        "subject": rendered.subject,
        "body": EDITOR_MODE + html,
        "template": "naked",
        "status": "about_to_send" if send_now else "draft",
        "metadata": {"digest_issue": issue_id},
    }


class Refusal(SendError):
    """A 4xx (other than 429) from Buttondown: retrying the same request cannot help."""

    def __init__(self, message: str, *, after_lost_answer: bool = False):
        super().__init__(message)
        self.after_lost_answer = after_lost_answer  # an earlier attempt of this call may have been carried out


@dataclass(frozen=True)
class ButtondownSettings:
    api_url: str = setting("https://api.buttondown.com/v1")
    timeout: float = setting(30.0, above=0, maximum=HOUR)
    max_attempts: int = setting(5, minimum=1, maximum=100)  # for 429, 5xx and timeouts
    backoff: float = setting(1.0, minimum=0, maximum=HOUR)  # seconds before the first retry of a 5xx or timeout

    def check(self, reader: MappingReader) -> None:
        problem = secret_url_problem(self.api_url)
        if problem:
            raise reader.error("api_url", problem)


class ButtondownBackend(Backend):
    """Hands the email to Buttondown, which mails its own subscribers: as a draft to review there, or sent."""

    name = "buttondown"
    Settings = ButtondownSettings
    sends_later = True

    def __init__(
        self,
        config: Config,
        *,
        send_now: bool = False,
        on_result: Callable[[str, str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        super().__init__(config, send_now=send_now, on_result=on_result)
        key = env_secret(KEY_ENV)
        if not key:
            raise SetupError(f"{KEY_ENV} (or {KEY_ENV}_FILE) is not set: the API key from Buttondown's settings")
        self.sleep = sleep
        self.headers = {"Authorization": f"Token {key}", "X-API-Version": API_VERSION, "Accept": "application/json"}

    @classmethod
    def read_settings(
        cls, reader: MappingReader | None, warnings: list[str], environ: Mapping[str, str]
    ) -> ButtondownSettings:
        settings = read_section(reader, ButtondownSettings, warnings)
        url = environ.get(API_URL_ENV, "").strip()
        if url:
            problem = secret_url_problem(url)
            if problem:
                raise ConfigError(API_URL_ENV, None, None, problem)
            settings = replace(settings, api_url=url)
        return settings

    def done(self, db: sqlite_utils.Database, issue_id: str) -> str | None:
        done = super().done(db, issue_id)
        issue = store.get_issue(db, issue_id) or {}
        if done is None and issue.get("remote_id") and not self.send_now:
            return (
                f"{issue_id}: already a draft at Buttondown (id {issue['remote_id']}), nothing to do; "
                f"--send-now sends it"
            )
        return done

    def forget_unanswered(self, db: sqlite_utils.Database, issue_id: str) -> None:
        """A stored key without an email id: the editor has checked Buttondown, and nothing was created."""
        store.forget_remote(db, issue_id)

    def question(self, plan: SendPlan) -> str:
        whom = "every Buttondown subscriber (sent now)" if self.send_now else "Buttondown (as a draft)"
        return f"Send {plan.issue} “{plan.ready()[1].subject}” to {whom}?"

    def html_bytes(self, plan: SendPlan) -> int:
        """The body as Buttondown gets it (template syntax escaped), with room for its own unsubscribe link."""
        body = request_body(plan.ready()[1], plan.issue, send_now=self.send_now)["body"]
        return len(body.encode("utf-8")) + LINK_ROOM

    def dry_run(self, plan: SendPlan, directory: Path) -> list[Path]:
        """The API request that would be made (without the key)."""
        path = directory / "buttondown-request.json"
        body = request_body(plan.ready()[1], plan.issue, send_now=self.send_now)
        write_atomically(path, json.dumps(body, indent=2, ensure_ascii=False) + "\n")
        return [path]

    def describe(self, report: SendReport, plan: SendPlan) -> list[str]:
        state = "handed over for sending" if report.complete else "created as a draft"
        return [f"send {report.issue} via {self.name}: {state}, id {report.remote_id}"]

    def deliver(self, db: sqlite_utils.Database, plan: SendPlan) -> SendReport:
        """Create the email (a draft, or sent with send_now); send an earlier draft when send_now.

        What Buttondown says the email's status is decides what is recorded: a retry with the stored key may
        be answered with the email an earlier request created, in the mode of that request (a draft when
        this run wants it sent, or sent when this run asked for a draft).
        """
        started = time.perf_counter()
        issue_id, (_, rendered) = plan.issue, plan.ready()
        issue = store.issue_row(db, issue_id)
        remote_id, status = issue["remote_id"], "draft"
        if remote_id is None:
            earlier = issue["idempotency_key"]  # an earlier run sent a request whose answer never came
            key = store.begin_remote(db, issue_id, self.name, f"digest-{issue_id}-{secrets.token_hex(8)}")
            body = request_body(rendered, issue_id, send_now=self.send_now)
            body["metadata"]["digest_key"] = key
            answer = self._find(key) if earlier else None
            if answer is None:
                headers = {"X-Idempotency-Key": key, **(CONFIRM_SEND if self.send_now else {})}
                try:
                    answer = self._call("POST", "/emails", body, headers, adopt=lambda: self._adopt(key))
                except Refusal as refusal:
                    if refusal.after_lost_answer or earlier:  # a refusal proves nothing about that attempt
                        raise SendError(
                            f"{refusal}; an earlier attempt got no answer and may have created the email, so "
                            f"{issue_id} stays handed over: the next run looks it up again (if Buttondown "
                            f"has no such email, --force starts afresh)"
                        ) from None
                    store.forget_remote(db, issue_id)
                    raise
            remote_id, status = str(answer["id"]), str(answer.get("status") or body["status"])
            store.record_remote(db, issue_id, self.name, remote_id, sent=False, now=datetime.now(UTC))
        if self.send_now and status == "draft":  # PATCH needs no confirmation header
            self._call("PATCH", f"/emails/{remote_id}", {"status": "about_to_send"}, {})
            status = "about_to_send"
        sent = status != "draft"
        store.record_remote(db, issue_id, self.name, remote_id, sent=sent, now=datetime.now(UTC))
        return SendReport(
            issue=issue_id,
            backend=self.name,
            remote_id=remote_id,
            complete=sent,
            remote_status=status,
            seconds=time.perf_counter() - started,
        )

    def _find(self, key: str) -> dict | None:
        """The email an earlier request with this key created, if Buttondown has it: by the key in its metadata,
        among the most recent emails (newest first, LOOKUP_PAGES pages at most), whatever their subject: the
        editor may have changed it at Buttondown, and a subject filter would miss it."""
        for number in range(1, LOOKUP_PAGES + 1):
            query = {"ordering": "-creation_date", "page": number}
            page = self._call("GET", "/emails", None, {}, query=query, listing=True)
            for email in page.get("results") or []:
                ours = isinstance(email, dict) and (email.get("metadata") or {}).get("digest_key") == key
                if ours and email.get("id"):
                    return email
            if not page.get("next"):
                break
        return None

    def _adopt(self, key: str) -> dict | None:
        """Before a POST is repeated after a lost answer: the email it created, if any. A server that ignores
        the idempotency key would otherwise create a second one. A refusal of the lookup keeps the key."""
        try:
            return self._find(key)
        except Refusal as refusal:
            raise SendError(
                f"{refusal}; an earlier attempt got no answer and may have created the email: the next run "
                f"looks it up again"
            ) from None

    def _call(
        self,
        method: str,
        path: str,
        body: dict | None,
        headers: dict[str, str],
        *,
        query: dict | None = None,
        listing: bool = False,
        adopt: Callable[[], dict | None] | None = None,
    ) -> dict:
        """One API call: 429 waits for Retry-After, 5xx and timeouts back off, other 4xx raise Refusal.
        `adopt`: asked before a retry that follows a lost answer; what it finds is the answer."""
        url = self.settings.api_url.rstrip("/") + path
        problem, lost, received = "", False, False  # received: a request may have reached the server
        import httpx  # here: every command reads the settings of this module, few of them call Buttondown

        with httpx.Client(timeout=self.settings.timeout, headers=self.headers) as client:
            for attempt in range(1, self.settings.max_attempts + 1):
                wait = backoff(attempt, self.settings.backoff)
                if received and adopt is not None and (found := adopt()) is not None:
                    return found
                try:
                    response = client.request(method, url, json=body, headers=headers, params=query)
                except httpx.TransportError as exc:  # timeouts, refused or dropped connections
                    problem, lost = self._unreachable(exc) or f"{type(exc).__name__}: {redact(str(exc))}", True
                    received = received or not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                else:
                    foreign = self._foreign(response, method, path)
                    if foreign and response.is_success:  # kept handed over: the next run looks the email up
                        raise SendError(foreign)
                    if foreign and response.status_code < 500:
                        raise Refusal(foreign, after_lost_answer=lost)
                    if response.is_success:
                        return _answer(response, method, path, listing=listing)
                    problem = f"{response.status_code} {_detail(response)}"
                    if response.status_code == 429:
                        wait = _retry_after(response, wait)
                    elif response.status_code < 500:
                        if response.status_code == 401:
                            problem += f" (check {KEY_ENV}: the API key from Buttondown's settings)"
                        raise Refusal(f"Buttondown refused {method} {path}: {problem}", after_lost_answer=lost)
                    else:
                        lost = received = True  # a 5xx may come after the work was done
                if attempt < self.settings.max_attempts:
                    self.sleep(wait)
        raise SendError(f"Buttondown: {method} {path} failed {self.settings.max_attempts} times, last: {problem}")

    def _setting(self) -> str:
        """Where the API's URL came from, to be checked."""
        from_environment = os.environ.get(API_URL_ENV, "").strip()  # wins over feeds.yaml (read_settings)
        return f"{API_URL_ENV} in the environment" if from_environment else "buttondown.api_url in feeds.yaml"

    def _foreign(self, response: httpx.Response, method: str, path: str) -> str | None:
        """An answer that Buttondown's API never gives (a web page, not JSON; a 404 for /emails, which it always
        has), in words that name the setting of its URL: digest reached some other web server."""
        try:
            response.json()
        except ValueError:
            kind = response.headers.get("Content-Type", "").split(";")[0].strip()
            what = "an HTML page" if "html" in kind or response.text.lstrip().startswith("<") else kind or "a body"
            said = f"answered {response.status_code} with {what}, not JSON"
        else:
            if response.status_code != 404 or path != "/emails":
                return None
            said = "answered 404: Buttondown's API has /emails"
        return (
            f"Buttondown: {self.settings.api_url} does not look like Buttondown's API ({method} {path} {said}); "
            f"check {self._setting()}"
        )

    def _unreachable(self, exc: httpx.TransportError) -> str | None:
        """A failed connection in words that name the setting to change, when its cause points at one."""
        import httpx

        url, setting = self.settings.api_url, self._setting()
        why = TIMED_OUT if isinstance(exc, httpx.TimeoutException) else connection_failure(exc)
        if why == CONNECTION_REFUSED:
            return f"nothing listens at {url} (connection refused); check {setting}"
        if why == NO_SUCH_HOST:
            return f"no such host at {url} (DNS); check {setting}"
        if why == LOOKUP_FAILED:
            return f"the name of {url} could not be looked up (DNS); check the network and {setting}"
        if why == TIMED_OUT:
            return (
                f"no answer from {url} within buttondown.timeout ({self.settings.timeout:g} s); check {setting}, "
                f"or raise buttondown.timeout"
            )
        return None


def _detail(response: httpx.Response) -> str:
    """Buttondown's own message: `detail` (a string, or a list of validation errors), else the raw text."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):
        detail = "; ".join(str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in detail)
    return redact(" ".join(str(detail or response.text or response.reason_phrase).split()))[:500]


def _answer(response: httpx.Response, method: str, path: str, *, listing: bool = False) -> dict:
    """A success's JSON object, which must carry the email's id (or, for a listing, its results)."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and (data.get("results") is not None if listing else data.get("id")):
        return data
    text = redact(" ".join(response.text.split()))[:200]
    wanted = "a list of emails" if listing else "an email id"
    raise SendError(f"Buttondown: {method} {path} answered {response.status_code} without {wanted}: {text!r}")


def _retry_after(response: httpx.Response, default: float) -> float:
    """Retry-After in seconds, or as an HTTP date (RFC 9110); capped at MAX_RETRY_AFTER."""
    value = response.headers.get("Retry-After", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError, IndexError):
            return default
    return min(MAX_RETRY_AFTER, max(0.0, seconds))
