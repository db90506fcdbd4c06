"""Hostile input on the send path: text from a feed or an editor never reaches a subscriber's own values."""

from __future__ import annotations

import email
import re
from email import policy

import pytest

from digest import load_config
from digest.issue.draft import draft_path, read_draft, write_draft
from digest.issue.prose import escape_markdown
from digest.models import SUBSCRIBER_NAME_MARK, UNSUBSCRIBE_URL_MARK, DraftItem
from digest.send.unsubscribe import UnsubscribeLinks

from helpers.project import SECRET, WEEK, make_project


@pytest.fixture(autouse=True)
def secret(monkeypatch):
    monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", SECRET)


def forms(mark: str) -> list[str]:
    """A mark as feed or editor text may carry it: plain, Markdown-escaped, as HTML entities, URL-encoded."""
    entities = "".join(f"&#{ord(c)};" if c in "%_" else c for c in mark)
    named = mark.replace("%", "&percnt;").replace("_", "&lowbar;")
    url_encoded = mark.replace("%", "%25")
    return [
        mark,
        escape_markdown(mark),
        entities,
        named,
        url_encoded,
        f"[read more]({mark})",
        f"[read more](https://evil.example/?u={url_encoded})",
        f'<a href="{entities}">here</a>',
        f"%%DIGEST_{mark}",  # a removed prefix must not join another mark
    ]


def test_no_form_of_a_mark_in_feed_or_editor_text_becomes_a_subscribers_value(tmp_path, server, run_cli):
    people = [
        {"email": "ada@example.com", "name": "Ada Secretname", "status": "active"},
        {"email": "grace@example.com", "name": "Grace Othername", "status": "active"},
    ]
    config_path = make_project(tmp_path, server.port, people)
    path = draft_path(tmp_path / "drafts", WEEK)
    draft = read_draft(path)
    hostile = [form for mark in (UNSUBSCRIBE_URL_MARK, SUBSCRIBER_NAME_MARK) for form in forms(mark)]
    feed_items = [  # what build writes of a feed's text: escaped Markdown
        DraftItem(title=form, url=f"https://blog.example.com/f{n}?{form}", summary=escape_markdown(form), source=form)
        for n, form in enumerate(hostile)
    ]
    editor_items = [  # what an editor writes: Markdown as it is
        DraftItem(title=form, url=f"https://blog.example.com/e{n}", summary=f"See {form} now.", source="me")
        for n, form in enumerate(hostile)
    ]
    draft.sections[0].items += feed_items + editor_items
    draft.intro = " ".join(hostile)
    draft.preheader = hostile[0]
    draft.markdown = True
    write_draft(path, draft)

    code, out, err = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
    assert code == 0, err + out
    links = UnsubscribeLinks.for_newsletter(load_config(config_path).newsletter)
    assert len(server.messages) == 2
    for received in server.messages:
        message = email.message_from_bytes(received.data, policy=policy.default)
        person = next(p for p in people if p["email"] == received.rcpt)
        url = links.url(person["email"])
        token = re.search(r"token=([\w.-]+)", url)[1]
        assert url in message["List-Unsubscribe"]
        text, html = (part.get_content() for part in message.iter_parts())
        assert text.count(token) == 1 and f"Unsubscribe: {url}" in text  # the footer's line only
        assert html.count(token) == 1 and f'href="{url}"' in html.replace("&amp;", "&")  # the footer's link only
        surname = person["name"].split()[1]
        assert surname not in text and surname not in html
