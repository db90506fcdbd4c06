"""`digest send --backend buttondown` against a loopback fake of Buttondown's API, checked against its OpenAPI."""

from __future__ import annotations

import json
import re
from datetime import UTC

import pytest
from jsonschema import Draft202012Validator

from digest import load_config, store
from digest.send.buttondown import ButtondownBackend
from digest.send.sending import send_issue

from conftest import SHARED
from helpers.buttondown import KEY, Answer
from helpers.project import WEEK, make_project, subscribers

OPENAPI = json.loads((SHARED / "reference" / "buttondown-openapi.json").read_text(encoding="utf-8"))
EMAIL_INPUT = Draft202012Validator({"$ref": "#/components/schemas/EmailInput", "components": OPENAPI["components"]})


def project(tmp_path, api, **options):
    settings = {"api_url": api.url, "timeout": 0.5, "max_attempts": 3, "backoff": 0.01}
    return make_project(tmp_path, 2525, subscribers(2), buttondown=settings, **options)  # smtp: never dialled


def issue(tmp_path) -> dict:
    return store.get_issue(store.open_db(tmp_path / "digest.db"), WEEK)


def send(run_cli, tmp_path, *options):
    return run_cli("send", "--week", WEEK, "--backend", "buttondown", "--yes", *options, cwd=tmp_path)


def test_the_validator_knows_a_bad_body():
    assert not EMAIL_INPUT.is_valid({"subject": 1, "status": "shipped", "colour": "red"})


def test_creates_a_draft_once_then_sends_it_on_request(tmp_path, api, run_cli):
    project(tmp_path, api)
    code, out, err = send(run_cli, tmp_path)
    assert code == 0, err
    assert out == f"send {WEEK} via buttondown: created as a draft, id em_1\n"
    (request,) = api.requests
    assert (request.method, request.path) == ("POST", "/v1/emails")
    assert request.headers["authorization"] == f"Token {KEY}"
    assert request.headers["x-api-version"] == "2026-04-01"
    assert request.headers["x-idempotency-key"].startswith(f"digest-{WEEK}-")
    assert "x-buttondown-live-dangerously" not in request.headers
    assert list(EMAIL_INPUT.iter_errors(request.body)) == []
    body = request.body
    assert body["subject"] == "Test Digest – Mar 30 to Apr 5, 2026 ✨" and body["status"] == "draft"
    assert body["body"].startswith("<!-- buttondown-editor-mode: fancy -->\n")
    assert "{{ unsubscribe_url }}" in body["body"] and "%%DIGEST" not in body["body"]
    assert body["metadata"] == {"digest_issue": WEEK, "digest_key": request.headers["x-idempotency-key"]}
    row = issue(tmp_path)
    assert (row["backend"], row["remote_id"], row["status"]) == ("buttondown", "em_1", "sending")
    assert row["idempotency_key"] == request.headers["x-idempotency-key"]

    code, out, _ = send(run_cli, tmp_path)
    assert code == 0 and "already a draft at Buttondown (id em_1), nothing to do" in out and len(api.requests) == 1
    code, _, err = run_cli("send", "--week", WEEK, "--backend", "smtp", "--yes", cwd=tmp_path)
    assert code == 2 and "was handed to buttondown; finish it with --backend buttondown" in err

    code, out, _ = send(run_cli, tmp_path, "--send-now")
    assert code == 0 and out == f"send {WEEK} via buttondown: handed over for sending, id em_1\n"
    patch = api.requests[-1]
    assert (patch.method, patch.path, patch.body) == ("PATCH", "/v1/emails/em_1", {"status": "about_to_send"})
    assert issue(tmp_path)["status"] == "sent" and issue(tmp_path)["sent_at"]
    code, out, _ = send(run_cli, tmp_path, "--send-now")
    assert code == 0 and "already sent" in out and len(api.requests) == 2


def test_send_now_posts_about_to_send_with_the_confirmation_header(tmp_path, api, run_cli):
    project(tmp_path, api)
    assert send(run_cli, tmp_path, "--send-now")[0] == 0
    (request,) = api.requests
    assert request.body["status"] == "about_to_send" and list(EMAIL_INPUT.iter_errors(request.body)) == []
    assert request.headers["x-buttondown-live-dangerously"] == "true"
    assert issue(tmp_path)["status"] == "sent" and issue(tmp_path)["remote_id"] == "em_1"


def test_5xx_and_timeouts_are_retried_with_the_same_idempotency_key(tmp_path, api, run_cli):
    project(tmp_path, api)
    api.script = [Answer(503, {"detail": "Service Unavailable"}), Answer(201, {"id": "em_slow"}, delay=1.0)]
    code, _out, err = send(run_cli, tmp_path)
    assert code == 0, err
    # 503, a timeout (the answer was lost), then the replay; a lookup before each retry (the scripted email
    # carries no metadata of ours: found by the replay, which honours the key)
    assert [r.method for r in api.requests] == ["POST", "GET", "POST", "GET", "POST"]
    assert len({r.headers["x-idempotency-key"] for r in api.requests if r.method == "POST"}) == 1
    assert issue(tmp_path)["remote_id"] == "em_slow"  # the one email, created by the request that timed out


def test_the_key_is_kept_across_runs_until_buttondown_answers(tmp_path, api, run_cli):
    project(tmp_path, api)
    api.script = [Answer(502, {"detail": "Bad gateway"})] * 3
    code, _, err = send(run_cli, tmp_path)
    assert code == 1 and err == "error: Buttondown: POST /emails failed 3 times, last: 502 Bad gateway\n"
    stored = issue(tmp_path)["idempotency_key"]
    assert stored and issue(tmp_path)["remote_id"] is None
    assert send(run_cli, tmp_path)[0] == 0
    posts = [r for r in api.requests if r.method == "POST"]
    assert {r.headers["x-idempotency-key"] for r in posts} == {stored} and len(posts) == 4
    assert [r.method for r in api.requests[5:]] == ["GET", "POST"]  # looked up first: nothing there, created
    assert issue(tmp_path)["remote_id"] == "em_7"


def test_the_confirmation_shows_the_subject_as_the_email_carries_it(tmp_path, api):
    from digest.errors import Failed
    from digest.issue.draft import draft_path, read_draft, write_draft

    config = load_config(project(tmp_path, api, titles=["Django 6.0 released"]))
    path = draft_path(tmp_path / "drafts", WEEK)
    draft = read_draft(path)
    draft.subject = "Test Digest #3: {lead}"
    write_draft(path, draft)
    questions: list[str] = []
    with pytest.raises(Failed, match="not confirmed"):
        send_issue(
            config,
            store.open_db(tmp_path / "digest.db"),
            WEEK,
            backend="buttondown",
            confirm=lambda question: questions.append(question) or False,
        )
    assert questions == [f"Send {WEEK} “Test Digest #3: Django 6.0 released” to Buttondown (as a draft)?"]
    assert not api.requests


def test_429_waits_for_retry_after(tmp_path, api):
    config = load_config(project(tmp_path, api))
    api.script = [Answer(429, {"detail": "Slow down."}, {"Retry-After": "1"})]
    waits = []
    db = store.open_db(tmp_path / "digest.db")
    report = send_issue(config, db, WEEK, backend=ButtondownBackend(config, sleep=waits.append))
    assert waits == [1.0] and report.remote_id == "em_2" and len(api.requests) == 2


@pytest.mark.parametrize(
    "status, detail",
    [
        (400, "The subject is too long."),
        (401, "Invalid token."),
        (422, [{"loc": ["body", "status"], "msg": "Input should be a status"}]),
    ],
)
def test_other_4xx_stop_with_buttondowns_message(tmp_path, api, run_cli, status, detail):
    project(tmp_path, api)
    api.script = [Answer(status, {"code": "invalid", "detail": detail})]
    code, _out, err = send(run_cli, tmp_path)
    message = detail if isinstance(detail, str) else "Input should be a status"
    if status == 401:
        message += " (check BUTTONDOWN_API_KEY: the API key from Buttondown's settings)"
    assert code == 1 and err == f"error: Buttondown refused POST /emails: {status} {message}\n"
    assert len(api.requests) == 1
    first_key = api.requests[0].headers["x-idempotency-key"]
    assert issue(tmp_path)["remote_id"] is None and issue(tmp_path)["idempotency_key"] is None
    assert (issue(tmp_path)["status"], issue(tmp_path)["backend"]) == ("draft", None)  # nothing was created
    assert send(run_cli, tmp_path)[0] == 0  # the corrected re-run is not answered from the old key's cache
    assert api.requests[1].headers["x-idempotency-key"] != first_key


def test_a_missing_api_key_is_one_line_and_exit_2(tmp_path, api, run_cli, monkeypatch):
    project(tmp_path, api)
    monkeypatch.delenv("BUTTONDOWN_API_KEY")
    code, _, err = send(run_cli, tmp_path)
    assert code == 2 and err == (
        "error: BUTTONDOWN_API_KEY (or BUTTONDOWN_API_KEY_FILE) is not set: the API key from Buttondown's settings\n"
    )
    assert not api.requests and issue(tmp_path) is None


def test_template_syntax_in_the_content_is_not_run_by_buttondown(tmp_path, api, run_cli):
    project(tmp_path, api, titles=["The {% querystring %} tag and {{ block.super }} {# a comment #}"])
    assert send(run_cli, tmp_path)[0] == 0
    body = api.requests[0].body["body"]
    assert re.findall(r"\{[{%#][^}]*\}", body) == ["{{ unsubscribe_url }"]
    assert "&#123;% querystring %}" in body and "&#123;{ block.super }}" in body


def test_dry_run_writes_the_request_and_posts_nothing(tmp_path, api, run_cli):
    project(tmp_path, api)
    code, out, _ = run_cli("send", "--week", WEEK, "--backend", "buttondown", "--dry-run", cwd=tmp_path)
    assert code == 0 and "wrote 1 file(s)" in out and not api.requests
    written = json.loads((tmp_path / "drafts" / f"{WEEK}.dry-run" / "buttondown-request.json").read_text())
    assert list(EMAIL_INPUT.iter_errors(written)) == [] and written["status"] == "draft"


def test_once_handed_to_buttondown_the_issue_is_frozen(tmp_path, api, run_cli):
    """A Buttondown draft, or a request whose answer was lost: build leaves the draft alone, smtp is refused."""
    project(tmp_path, api)
    draft = tmp_path / "drafts" / f"{WEEK}.yaml"
    before = draft.read_text()
    api.script = [Answer(502, {"detail": "Bad gateway"})] * 3  # the email may exist at Buttondown now
    assert send(run_cli, tmp_path)[0] == 1
    assert (issue(tmp_path)["status"], issue(tmp_path)["backend"]) == ("sending", "buttondown")
    code, out, _ = run_cli("build", "--week", WEEK, cwd=tmp_path)
    assert code == 0 and out == f"{WEEK}: already sending, draft left as it is\n" and draft.read_text() == before
    code, _, err = run_cli("send", "--week", WEEK, "--backend", "smtp", "--yes", cwd=tmp_path)
    assert code == 2 and "was handed to buttondown; finish it with --backend buttondown" in err
    assert send(run_cli, tmp_path)[0] == 0  # the same key again: at most one email
    assert len({r.headers["x-idempotency-key"] for r in api.requests if r.method == "POST"}) == 1
    assert (issue(tmp_path)["status"], issue(tmp_path)["remote_id"]) == ("sending", "em_7")
    code, out, _ = run_cli("build", "--week", WEEK, cwd=tmp_path)
    assert out == f"{WEEK}: already sending, draft left as it is\n" and draft.read_text() == before


def test_429_with_a_date_in_retry_after(tmp_path, api):
    from datetime import datetime, timedelta
    from email.utils import format_datetime

    config = load_config(project(tmp_path, api))
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    api.script = [Answer(429, {"detail": "Slow down."}, {"Retry-After": later})]
    waits = []
    db = store.open_db(tmp_path / "digest.db")
    send_issue(config, db, WEEK, backend=ButtondownBackend(config, sleep=waits.append))
    assert len(waits) == 1 and 25 <= waits[0] <= 30


def test_a_success_without_an_id_is_one_line_and_keeps_the_key(tmp_path, api, run_cli):
    project(tmp_path, api)
    api.script = [Answer(201, {"oops": True})]
    code, _, err = send(run_cli, tmp_path)
    assert code == 1 and err.startswith("error: Buttondown: POST /emails answered 201 without an email id")
    assert err.count("\n") == 1 and issue(tmp_path)["idempotency_key"] and issue(tmp_path)["status"] == "sending"


@pytest.mark.parametrize("first, then", [((), ("--send-now",)), (("--send-now",), ())])
def test_a_replayed_answer_is_believed_over_this_runs_wish(tmp_path, api, run_cli, first, then):
    """An email created by a request whose answer was lost is answered again to the next run, in its own mode."""
    project(tmp_path, api)
    api.slow = 1.0  # created by the first request (the repeats, with its key, get the same email), answers lost
    assert send(run_cli, tmp_path, *first)[0] == 1
    api.slow = 0.0
    created = next(iter(api.created.values()))
    assert len(api.created) == 1 and issue(tmp_path)["remote_id"] is None
    code, out, err = send(run_cli, tmp_path, *then)
    assert code == 0, err
    if then:  # it asked for a draft before: now it is sent
        assert out == f"send {WEEK} via buttondown: handed over for sending, id {created['id']}\n"
        patch = api.requests[-1]
        assert (patch.method, patch.path, patch.body) == (
            "PATCH",
            f"/v1/emails/{created['id']}",
            {"status": "about_to_send"},
        )
    else:  # it was sent by the lost request: found by its key, whatever this run asked for
        assert out == f"send {WEEK} via buttondown: handed over for sending, id {created['id']}\n"
        assert api.requests[-1].method == "GET" and len(api.created) == 1
    assert (issue(tmp_path)["status"], issue(tmp_path)["remote_id"]) == ("sent", created["id"])


@pytest.mark.parametrize("lost", [Answer(201, delay=1.0), Answer(502, {"detail": "Bad gateway"}, delay=0.0)])
def test_a_server_that_ignores_the_key_and_loses_an_answer_gets_one_email(tmp_path, api, run_cli, lost):
    """Before creating again after a lost answer (a timeout, a 5xx), the run looks the email up by its key."""
    project(tmp_path, api)
    api.replay = False  # a repeated key creates another email
    api.script = [lost]
    if lost.status >= 500:  # a 5xx after the work was done: the email exists all the same
        api.created["lost"] = {"id": "em_lost", "status": "draft", "subject": "", "metadata": {}}
    code, _, err = send(run_cli, tmp_path)
    assert code == 0, err
    methods = [r.method for r in api.requests]
    if lost.status >= 500:  # the email found is not ours (another key): created by the retry
        assert methods == ["POST", "GET", "POST"] and issue(tmp_path)["remote_id"] == "em_3"
    else:  # created by the request whose answer was lost: adopted, not created again
        assert methods == ["POST", "GET"] and issue(tmp_path)["remote_id"] == "em_1"


@pytest.mark.parametrize("subject", ["Edited at Buttondown", "x" * 300])
def test_the_lookup_after_a_lost_answer_finds_the_email_whatever_its_subject(tmp_path, api, run_cli, subject):
    """An email whose subject changed after the lost answer (edited at Buttondown, or past the 200 characters a
    subject filter takes) is found by the key in its metadata: a server that ignores the key mails it once."""
    project(tmp_path, api)
    api.slow = 1.0  # the email is created, every answer is lost
    assert send(run_cli, tmp_path)[0] == 1
    api.slow, api.replay = 0.0, False  # from now on a repeated key creates another email
    (created,) = api.created.values()
    created["subject"] = subject
    code, _, err = send(run_cli, tmp_path)
    assert code == 0, err
    assert len(api.created) == 1 and issue(tmp_path)["remote_id"] == created["id"]
    lookup = api.requests[-1]
    assert lookup.method == "GET" and "subject" not in lookup.path
