"""The headers of the newsletter mail and of the confirmation mail, as Python's own parser reads them.

RFC 5322: a phrase is atoms, quoted strings or RFC 2047 encoded-words (never an encoded-word inside quotes);
header lines are folded to 78 characters where a fold is possible; UTC is written `+0000`.
"""

from __future__ import annotations

import email
from datetime import UTC, datetime
from email import policy
from email._header_value_parser import get_phrase
from email.utils import parseaddr
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from digest.models import SUBSCRIBER_NAME_MARK, UNSUBSCRIBE_URL_MARK, RenderedIssue
from digest.send.message import MessageFactory
from digest.send.unsubscribe import UnsubscribeLinks
from digest.settings.config import Config, Newsletter
from digest.web.signup import confirmation_message

TITLES = [
    "Café & Code — Weekly",
    'Say "hi", world: the (weekly) digest',
    "Django Digest",
    "نشرة بايثون الأسبوعية — " * 4,
    "A newsletter whose title is long enough that its List-Id cannot fit on one line at all",
]


def newsletter_mail(newsletter: Newsletter, subject: str = "Issue 12", url_template: str | None = None) -> bytes:
    body = f"Hello {SUBSCRIBER_NAME_MARK}, leave: {UNSUBSCRIBE_URL_MARK}\n"
    rendered = RenderedIssue(subject=subject, preheader="", html=f"<p>{body}</p>", text=body)
    links = UnsubscribeLinks(
        mailto="mailto:digest@example.com?subject=unsubscribe", url_template=url_template, secret="s", newsletter="x"
    )
    factory = MessageFactory(rendered, newsletter, links, "2026-W49")
    return factory.copy("zoe@example.com", "Zoë", factory.message_id("zoe@example.com"))


def confirmation_mail(newsletter: Newsletter) -> bytes:
    config = Config(path=Path("feeds.yaml"), newsletter=newsletter, feeds=())
    url = "https://digest.example.com/confirm?token=" + "t" * 90
    message = confirmation_message(config, "zoe@example.com", url, datetime(2026, 12, 7, 9, 30, tzinfo=UTC))
    return message.as_bytes(policy=policy.SMTP)


def header_lines(raw: bytes) -> list[bytes]:
    return raw.partition(b"\r\n\r\n")[0].split(b"\r\n")


def foldable_long_lines(raw: bytes) -> list[bytes]:
    """Header lines over 78 characters that hold a space to fold at (a URL or a list id alone cannot be)."""
    lines = header_lines(raw)
    return [line for line in lines if len(line) > 78 and len(line.split()) > (1 if line[:1].isspace() else 2)]


def raw_header(raw: bytes, name: str) -> str:
    """The header's value as written, unfolded (RFC 5322 2.2.3: remove each CRLF before a space)."""
    head = raw.partition(b"\r\n\r\n")[0].decode("ascii").replace("\r\n ", " ").replace("\r\n\t", "\t")
    prefix = name.lower() + ":"
    values = [line.partition(":")[2].strip() for line in head.split("\r\n") if line.lower().startswith(prefix)]
    assert len(values) == 1, values
    return values[0]


@pytest.mark.parametrize("make", [newsletter_mail, confirmation_mail])
@pytest.mark.parametrize("title", TITLES)
def test_list_id_is_a_phrase_and_the_id_a_filter_can_find(make, title):
    newsletter = Newsletter(title=title, from_address="Digest <digest@example.com>")
    raw = make(newsletter)
    phrase, rest = get_phrase(raw_header(raw, "List-Id"))
    assert rest.strip() == f"<{newsletter.list_identifier}>"
    assert not phrase.all_defects
    assert " ".join(phrase.value.split()) == " ".join(title.split())
    parsed = email.message_from_bytes(raw, policy=policy.default)["List-Id"]
    assert parsed.endswith(f"<{newsletter.list_identifier}>")
    assert foldable_long_lines(raw) == []


@pytest.mark.parametrize("make", [newsletter_mail, confirmation_mail])
def test_the_date_is_utc_written_plus_0000(make):
    date = raw_header(make(Newsletter()), "Date")
    assert date.endswith(" +0000") and "GMT" not in date


@pytest.mark.parametrize(
    "subject",
    [
        "A subject long enough to need a fold: " + "words that go on and on " * 6,
        "Le numéro de la semaine: " + "élève café crème " * 8,
        "東京のニュース" * 12,
    ],
)
def test_header_lines_are_folded_to_78_characters(subject):
    url_template = "https://digest.example.com/unsubscribe?token={token}"
    raw = newsletter_mail(Newsletter(title="Café & Code — Weekly"), subject=subject, url_template=url_template)
    assert foldable_long_lines(raw) == []
    message = email.message_from_bytes(raw, policy=policy.default)
    assert message["Subject"] == subject
    assert message.get_body(("plain",)).get_content().startswith("Hello Zoë, leave: https://digest.example.com/")


def test_a_long_unsubscribe_url_keeps_its_line_whole_and_within_998():
    """A URL is one word: it cannot be folded (nor moved to a line of its own: Python's parser would keep the
    fold's space in the value), but the mailto after it is."""
    url_template = "https://digest.example.com/unsubscribe?list=" + "x" * 300 + "&token={token}"
    raw = newsletter_mail(Newsletter(), url_template=url_template)
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    long_lines = [line for line in header_lines(raw) if len(line) > 78]
    assert len(long_lines) == 1 and long_lines[0].startswith(b"List-Unsubscribe: <https://digest.example.com/")
    message = email.message_from_bytes(raw, policy=policy.default)
    assert message["List-Unsubscribe"].startswith("<https://digest.example.com/unsubscribe?list=xxx")
    assert message["List-Unsubscribe"].endswith(">, <mailto:digest@example.com?subject=unsubscribe>")


SPECIALS = '<>"()\\,;:@[].'
TITLE_TEXT = st.lists(
    st.one_of(
        st.sampled_from([*SPECIALS, " ", "é", "—", "🎉", "=?", "?=", "ß", "東", "\u3000"]),
        st.characters(blacklist_categories=("Cs", "Cc")),
    ),
    max_size=200,
).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(title=TITLE_TEXT)
@pytest.mark.parametrize("make", [newsletter_mail, confirmation_mail])
def test_a_parser_that_decodes_the_title_still_finds_the_list_id(make, title):
    """Decoded, an encoded-word's `<>` and quotes are raw again: `Café <Code> Weekly` must not read as the
    address `Code`. Whatever the title, the address found is the list id, and the header has no defects."""
    newsletter = Newsletter(title=title, from_address="Digest <digest@example.com>", site_url="https://example.org")
    header = email.message_from_bytes(make(newsletter), policy=policy.default)["List-Id"]
    assert parseaddr(str(header))[1] == newsletter.list_identifier
    assert not header.defects


@pytest.mark.parametrize("title", ["Café <Code> Weekly", 'Café & Code — "Weekly"', "Café: (the) weekly, @home"])
def test_a_non_ascii_title_with_specials_keeps_its_words(title):
    newsletter = Newsletter(title=title, from_address="Digest <digest@example.com>")
    header = email.message_from_bytes(newsletter_mail(newsletter), policy=policy.default)["List-Id"]
    assert parseaddr(str(header)) == (
        " ".join(title.translate(dict.fromkeys(map(ord, SPECIALS), " ")).split()),
        newsletter.list_identifier,
    )


def test_the_derived_list_id_spells_accents_as_letters_and_keeps_ascii_titles_as_they_were():
    site = "https://digest.example.com"
    assert Newsletter(title="Django Digest", site_url=site).list_identifier == "django-digest.digest.example.com"
    assert Newsletter(title="Café & Code", site_url=site).list_identifier == "cafe-code.digest.example.com"
    assert Newsletter(title="Ærø Straße", site_url=site).list_identifier.endswith(".digest.example.com")


def test_a_long_title_gives_a_list_id_within_rfc_2919s_255_octets_cut_at_a_hyphen():
    site = "https://digest.example.com"
    list_id = Newsletter(title="weekly news " * 30, site_url=site).list_identifier
    assert len(list_id.encode()) <= 255 and list_id.endswith(".digest.example.com")
    label = list_id.removesuffix(".digest.example.com")
    assert (
        label.startswith("weekly-news-weekly")
        and not label.endswith("-")
        and label.split("-")[-1] in {"weekly", "news"}
    )
    assert len(Newsletter(title="x" * 300, site_url=site).list_identifier.encode()) <= 255
