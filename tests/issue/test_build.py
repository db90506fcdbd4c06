"""Selection by week, carry-forward, never-resent posts, and the draft that keeps the editor's edits."""

from __future__ import annotations

import difflib
import os
import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
import yaml
from freezegun import freeze_time

from digest import jobs, load_config, store
from digest.errors import ConfigError
from digest.issue.draft import draft_path, read_draft
from digest.issue.selection import select_posts
from digest.issue.weeks import current_week, week_span
from digest.models import Post
from digest.urls import url_key

from conftest import write_config

LONDON = ZoneInfo("Europe/London")
NOW = datetime(2026, 4, 10, 12, 0, tzinfo=UTC)
WEBLOG = "https://www.djangoproject.com/rss/weblog/"
BLOGS = "https://www.djangoproject.com/rss/community/blogs/"


@pytest.fixture
def config(tmp_path):
    return load_config(
        write_config(
            tmp_path,
            [
                {"name": "Weblog", "url": WEBLOG, "section": "News"},
                {"name": "Blogs", "url": BLOGS, "section": "Articles", "exclude": ["casino"]},
            ],
        )
    )


@pytest.fixture
def db(tmp_path):
    return store.open_db(tmp_path / "digest.db")


def post(slug: str, when: datetime | None, feed: str = BLOGS, url: str | None = None, **fields) -> Post:
    url = url or f"https://blog.example.com/{slug}/"
    return Post(
        id=f"{feed}#{slug}",
        feed_url=feed,
        canonical_url=url,
        title=fields.get("title", slug.replace("-", " ").title()),
        author=fields.get("author"),
        summary=fields.get("summary", f"All about {slug}."),
        content_html=f"<p>All about {slug}.</p>",
        published_at=when,
        url_key=url_key(url),
    )


def add(db, *posts: Post, feed: str = BLOGS, now: datetime = NOW) -> int:
    return store.record_fetch(
        db, url=feed, name=feed, section="Articles", outcome=store.FetchOutcome(status=200), posts=posts, now=now
    )


def local(*args) -> datetime:
    return datetime(*args, tzinfo=LONDON)


def titles(db, config, week, now=NOW) -> list[str]:
    return [p.row["title"] for p in select_posts(db, config, week, now).posts]


def mark_sent(db, issue_id):
    """As a send does: the email holds the posts placed among its items."""
    in_email = [
        row[0]
        for row in db.execute("SELECT post_id FROM issue_posts WHERE issue_id = ? AND placement = 'item'", [issue_id])
    ]
    store.begin_send(db, issue_id, "the draft as sent", in_email, "test.example.com")
    db.execute("UPDATE issues SET status = 'sent', sent_at = ? WHERE id = ?", [store.iso(NOW), issue_id])


# --- weeks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "moment, week",
    [
        ("2026-04-05 22:59:00", "2026-W14"),  # Sunday 23:59 in London (BST, UTC+1)
        ("2026-04-05 23:00:00", "2026-W15"),  # Monday 00:00 in London
        ("2026-12-31 12:00:00", "2026-W53"),
        ("2027-01-04 00:00:00", "2027-W01"),
    ],
)
def test_current_week_turns_at_monday_midnight_local_time(moment, week):
    with freeze_time(moment):
        assert current_week(datetime.now(UTC), LONDON) == week


def test_post_at_sunday_2359_is_in_that_week_and_monday_0000_in_the_next(db, config):
    add(db, post("sunday-night", local(2026, 4, 5, 23, 59)), post("monday-morning", local(2026, 4, 6, 0, 0)))
    assert titles(db, config, "2026-W14") == ["Sunday Night"]
    assert titles(db, config, "2026-W15") == ["Monday Morning"]
    start, end = week_span("2026-W14", LONDON)
    assert start == datetime(2026, 3, 29, 23, 0, tzinfo=UTC)  # Monday 00:00 BST
    assert end == datetime(2026, 4, 5, 23, 0, tzinfo=UTC)


# --- selection ------------------------------------------------------------------------


def test_sections_follow_the_config_order_and_posts_their_date(db, config):
    add(db, post("b-article", local(2026, 4, 2)), post("a-article", local(2026, 4, 1)))
    add(db, post("release", local(2026, 4, 3), feed=WEBLOG), feed=WEBLOG)
    selected = select_posts(db, config, "2026-W14", NOW).posts
    assert [(p.section, p.row["title"]) for p in selected] == [
        ("News", "Release"),
        ("Articles", "A Article"),
        ("Articles", "B Article"),
    ]


def test_exclude_keywords_drop_posts(db, config):
    add(db, post("casino-bonus", local(2026, 4, 2), title="Best Casino bonus"), post("orm", local(2026, 4, 2)))
    assert titles(db, config, "2026-W14") == ["Orm"]


def test_same_article_from_two_feeds_is_one_post(db, config):
    url = "https://adamj.eu/tech/2026/04/01/django-tip/"
    assert add(db, post("tip", local(2026, 4, 1), url=url)) == 1
    assert add(db, post("tip", local(2026, 4, 1), feed=WEBLOG, url=url), feed=WEBLOG) == 0
    assert titles(db, config, "2026-W14") == ["Tip"]


def test_first_seen_and_dates_are_never_rewritten(db, config):
    first = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)
    add(db, post("undated", None), now=first)
    add(db, post("undated", None, title="Undated, edited"), now=datetime(2026, 4, 8, 9, 0, tzinfo=UTC))
    row = next(db.query("SELECT * FROM posts"))
    assert row["first_seen_at"] == row["published_at"] == store.iso(first)
    assert row["title"] == "Undated, edited"  # content of an unsent post is refreshed
    assert titles(db, config, "2026-W14") == ["Undated, edited"]


def test_future_posts_wait_for_their_time(db, config):
    add(db, post("tomorrow", local(2026, 4, 4, 12)))
    assert titles(db, config, "2026-W14", now=local(2026, 4, 3, 12)) == []
    assert titles(db, config, "2026-W14", now=local(2026, 4, 4, 13)) == ["Tomorrow"]


def test_with_no_issue_sent_an_issue_holds_only_its_own_week(db, config):
    add(db, post("old", local(2026, 3, 25)), post("current", local(2026, 4, 1)))
    assert titles(db, config, "2026-W14") == ["Current"]


def test_unsent_posts_since_the_last_sent_issue_are_carried_forward(db, config, tmp_path):
    add(db, post("w12", local(2026, 3, 18)), post("w13", local(2026, 3, 25)), post("w14", local(2026, 4, 1)))
    jobs.build(config, db, "2026-W12", now=NOW)
    mark_sent(db, "2026-W12")
    # W13 was skipped: its post is carried into W14; W12's post went out and never comes back.
    assert titles(db, config, "2026-W14") == ["W13", "W14"]


def test_a_sent_post_is_never_chosen_again(db, config):
    add(db, post("once", local(2026, 4, 1)))
    jobs.build(config, db, "2026-W14", now=NOW)
    mark_sent(db, "2026-W14")
    assert titles(db, config, "2026-W14") == []
    assert titles(db, config, "2026-W15", now=local(2026, 4, 12)) == []


# --- build and the draft ----------------------------------------------------------------


def test_empty_week_writes_no_draft(db, config):
    report = jobs.build(config, db, "2026-W14", now=NOW)
    assert report.outcome == "empty"
    assert not config.drafts_dir.exists()


@pytest.mark.parametrize(
    "template, line, problem",
    [
        ("<mjml>\n{% if %}", 2, "template syntax: Expected an expression"),
        ("<mjml>\n\n{{ nosuch.attr }}", 3, "UndefinedError: 'nosuch' is undefined"),
        ("{{ 1 // 0 }}", 1, "ZeroDivisionError"),
        ("<mjml><mj-body><mj-section>", None, "not valid MJML"),
        ("{% include 'nope.j2' %}", None, "no template 'nope.j2' to include"),
        (b"\xff\xfe{{ x }}", None, "not UTF-8 text"),
    ],
)
def test_a_broken_template_override_is_one_line_naming_it_and_changes_nothing(db, config, template, line, problem):
    add(db, post("first", local(2026, 4, 1)))
    override = config.folder / "templates" / "email.mjml.j2"
    override.parent.mkdir()
    override.write_bytes(template if isinstance(template, bytes) else template.encode())
    with pytest.raises(ConfigError) as caught:
        jobs.build(config, db, "2026-W14", now=NOW)
    assert (caught.value.path, caught.value.line) == (override, line) and problem in caught.value.problem
    assert not config.drafts_dir.exists() and store.offered_posts(db, "2026-W14") == []
    override.unlink()  # the built-in template again: the same build goes through
    assert jobs.build(config, db, "2026-W14", now=NOW).items == 1


def test_build_writes_draft_html_and_text(db, config):
    add(db, post("first", local(2026, 4, 1), author="Ada"), post("second", local(2026, 4, 2)))
    report = jobs.build(config, db, "2026-W14", now=NOW)
    assert report.outcome == "built" and report.items == 2
    draft = yaml.safe_load(report.draft.read_text())
    assert draft["issue"] == "2026-W14"
    articles = next(s for s in draft["sections"] if s["title"] == "Articles")
    assert articles["items"][0] == {
        "title": "First",
        "url": "https://blog.example.com/first/",
        "summary": "All about first.",
        "source": "blog.example.com",
        "author": "Ada",
        "published": datetime(2026, 4, 1).date(),
    }
    assert "https://blog.example.com/second/" in report.text.read_text()
    assert 'href="https://blog.example.com/second/"' in report.html.read_text()


def test_rebuild_keeps_the_editors_edits_and_appends_only_new_posts(db, config):
    add(db, post("one", local(2026, 3, 30)), post("two", local(2026, 3, 31)), post("three", local(2026, 4, 1)))
    report = jobs.build(config, db, "2026-W14", now=NOW)
    data = yaml.safe_load(report.draft.read_text())
    articles = next(s for s in data["sections"] if s["title"] == "Articles")
    _one, two, three = articles["items"]
    two["summary"] = "Rewritten by the editor."
    articles["items"] = [three, two]  # "one" deleted, order changed
    data["intro"] = "Hello readers."
    report.draft.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))

    add(db, post("four", local(2026, 4, 2)))
    again = jobs.build(config, db, "2026-W14", now=NOW)
    assert again.new_items == 1
    draft = read_draft(again.draft)
    assert draft.intro == "Hello readers."
    assert [(i.title, i.summary) for i in draft.items] == [
        ("Three", "All about three."),
        ("Two", "Rewritten by the editor."),
        ("Four", "All about four."),
    ]
    assert "Rewritten by the editor." in again.html.read_text()

    third = jobs.build(config, db, "2026-W14", now=NOW)
    assert third.new_items == 0 and [i.title for i in read_draft(third.draft).items] == ["Three", "Two", "Four"]


def test_a_post_for_a_section_the_editor_removed_brings_the_section_back_in_place(db, config):
    add(db, post("article", local(2026, 4, 1)))
    report = jobs.build(config, db, "2026-W14", now=NOW)
    data = yaml.safe_load(report.draft.read_text())
    data["sections"] = [s for s in data["sections"] if s["title"] == "Articles"]
    report.draft.write_text(yaml.safe_dump(data, sort_keys=False))
    add(db, post("release", local(2026, 4, 2), feed=WEBLOG), feed=WEBLOG)
    jobs.build(config, db, "2026-W14", now=NOW)
    assert [s.title for s in read_draft(report.draft).sections] == ["News", "Articles"]


def added_lines(before: str, after: str) -> list[str]:
    """The lines `after` adds to `before`, asserting that every line of `before` is still there, in order."""
    old, new = before.splitlines(), after.splitlines()
    added = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        assert tag in ("equal", "insert"), (tag, old[i1:i2], new[j1:j2])
        added += new[j1:j2] if tag == "insert" else []
    return added


def test_rebuild_keeps_the_editors_comments_layout_and_commented_out_items(db, config):
    add(db, post("one", local(2026, 3, 30)), post("two", local(2026, 3, 31)), post("three", local(2026, 4, 1)))
    report = jobs.build(config, db, "2026-W14", now=NOW)
    text = report.draft.read_text()
    text = text.replace("intro: ''\n", "intro: |\n  Hello readers: it's spring.\n\n  A second paragraph.\n")
    text = text.replace("- title: Articles\n", "# Ada: ask Carlton before sending\n- title: Articles\n")
    start, end = text.index("  - title: Two\n"), text.index("  - title: Three\n")
    text = text[:start] + "".join(f"# {line}" for line in text[start:end].splitlines(keepends=True)) + text[end:]
    report.draft.write_text(text)

    add(
        db,
        post(
            "four",
            local(2026, 4, 2),
            summary="Four: a summary with a colon, and it's long enough to be "
            "folded over two lines of the draft file by the dumper.",
        ),
    )
    again = jobs.build(config, db, "2026-W14", now=NOW)
    assert again.new_items == 1
    after = again.draft.read_text()
    added = added_lines(text, after)
    assert added[0] == "  - title: Four" and all(line.startswith("    ") for line in added[1:]), added
    assert after.index("  - title: Four") > after.index("  - title: Three")
    draft = read_draft(again.draft)
    assert [item.title for item in draft.items] == ["One", "Three", "Four"]
    assert draft.intro == "Hello readers: it's spring.\n\nA second paragraph.\n"
    assert draft.items[-1].summary.startswith("Four: a summary with a colon, and it's long")


def test_a_post_for_an_empty_section_fills_it_in_place(db, config):
    add(db, post("article", local(2026, 4, 1)))
    report = jobs.build(config, db, "2026-W14", now=NOW)
    text = report.draft.read_text()
    assert "- title: News\n  items: []\n" in text
    text = text.replace("- title: News\n", "# News first this week\n- title: News\n")
    report.draft.write_text(text)
    add(db, post("release", local(2026, 4, 2), feed=WEBLOG), feed=WEBLOG)
    jobs.build(config, db, "2026-W14", now=NOW)
    after = report.draft.read_text()
    assert after.replace("  items:\n  - title: Release\n", "  items: []\n").count("\n") >= text.count("\n")
    assert "# News first this week\n- title: News\n  items:\n  - title: Release\n" in after
    assert [(s.title, [i.title for i in s.items]) for s in read_draft(report.draft).sections][:2] == [
        ("News", ["Release"]),
        ("Articles", ["Article"]),
    ]


def test_the_draft_file_is_easy_to_edit(db, config):
    summary = "Every week a beginner asks me: which first? My answer hasn't changed much, so here it is again."
    add(db, post("one", local(2026, 3, 30), title="Django: it's here", summary=summary))
    text = jobs.build(config, db, "2026-W14", now=NOW).draft.read_text()
    assert '  - title: "Django: it\'s here"\n' in text  # no doubled apostrophe to keep right
    assert "    summary: >-\n      Every week a beginner asks me: which first? My answer hasn't" in text
    assert "# A sponsored block: replace `null`" in text and "\nsponsor: null\n" in text
    assert read_draft(draft_path(config.drafts_dir, "2026-W14")).items[0].summary == summary


@pytest.mark.parametrize(
    "damage, line, words",
    [
        (lambda text: text.replace("sections:", "sections: [", 1), None, "not valid YAML"),
        (lambda text: text.replace("- title: One\n", "- title: ''\n", 1), None, "title: must not be empty"),
        (lambda text: text.replace("https://blog.example.com/one/", "javascript:alert(1)", 1), None, "http(s) URL"),
    ],
)
def test_broken_draft_names_file_and_line_and_keeps_the_last_rendering(db, config, damage, line, words):
    add(db, post("one", local(2026, 3, 30)))
    report = jobs.build(config, db, "2026-W14", now=NOW)
    html_before = report.html.read_text()
    report.draft.write_text(damage(report.draft.read_text()))
    add(db, post("two", local(2026, 3, 31)))
    with pytest.raises(ConfigError) as caught:
        jobs.build(config, db, "2026-W14", now=NOW)
    message = str(caught.value)
    assert message.startswith(f"{report.draft}:") and words in message
    assert caught.value.line is not None
    assert report.html.read_text() == html_before
    assert f"{BLOGS}#two" not in store.offered_post_ids(db, "2026-W14")


def test_build_of_a_sent_issue_leaves_it_alone(db, config):
    add(db, post("one", local(2026, 3, 30)))
    report = jobs.build(config, db, "2026-W14", now=NOW)
    mark_sent(db, "2026-W14")
    before = report.draft.read_text()
    add(db, post("late", local(2026, 4, 1)))
    assert jobs.build(config, db, "2026-W14", now=NOW).outcome == "sent"
    assert report.draft.read_text() == before


def test_draft_files_get_the_usual_mode_and_keep_the_editors(tmp_path):
    from digest.issue.draft import write_atomically

    path = tmp_path / "drafts" / "2026-W14.yaml"
    write_atomically(path, "a: 1\n")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    path.chmod(0o640)
    write_atomically(path, "a: 2\n")
    assert path.stat().st_mode & 0o777 == 0o640 and path.read_text() == "a: 2\n"


@pytest.mark.parametrize(
    "subject", ['"Week 14\\nBcc: everyone@example.com"', '"Week 14\\r"', "|\n  Week 14\n  Bcc: everyone@example.com"]
)
def test_a_line_break_in_the_drafts_subject_is_refused(db, config, subject):
    add(db, post("one", local(2026, 3, 30)))
    path = jobs.build(config, db, "2026-W14", now=NOW).draft
    text = path.read_text()
    line = text.splitlines().index(next(row for row in text.splitlines() if row.startswith("subject:"))) + 1
    path.write_text(re.sub(r"(?m)^subject: .*$", lambda _: f"subject: {subject}", text, count=1))
    with pytest.raises(ConfigError) as caught:
        read_draft(path)
    assert (caught.value.line, caught.value.field) == (line, "subject") and "line break" in str(caught.value)


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda text: text.replace("sections:", "sections: &all", 1), "anchors (&all) are not supported"),
        (lambda text: text.replace("sponsor: null", "sponsor: *nothing", 1), "aliases (*nothing) are not supported"),
        (lambda text: text.replace("sponsor: null", "{[a]: b}: c", 1), "key must be plain text"),
    ],
)
def test_yaml_features_a_draft_does_not_take_are_one_line(db, config, damage, words):
    add(db, post("one", local(2026, 3, 30)))
    path = jobs.build(config, db, "2026-W14", now=NOW).draft
    path.write_text(damage(path.read_text()))
    with pytest.raises(ConfigError) as caught:
        read_draft(path)
    assert caught.value.line is not None and words in str(caught.value) and "\n" not in str(caught.value)


def test_an_unreadable_or_non_utf8_draft_is_one_line(tmp_path):
    path = tmp_path / "2026-W14.yaml"
    path.mkdir()
    with pytest.raises(ConfigError) as caught:
        read_draft(path)
    assert str(caught.value) == f"{path}: cannot read: Is a directory"
    path.rmdir()
    path.write_bytes(b"issue: 2026-W14\nsubject: Caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        read_draft(path)
    assert caught.value.line == 2 and "not UTF-8 text" in str(caught.value)


def test_items_held_back_by_the_checks_read_back_with_their_reason_and_may_be_moved(tmp_path):
    from digest.issue.draft import dump_draft, new_draft, parse_draft
    from digest.models import DraftItem

    draft = new_draft("2026-W14", "A subject", ["News"])
    kept = DraftItem(title="Kept", url="https://a.example.org/1", summary="s", source="a.example.org")
    draft.sections[0].items.append(kept)
    draft.sections[0].held.append(
        DraftItem(title="Gone", url="https://a.example.org/2", summary="s", source="a.example.org", reason="404")
    )
    path = tmp_path / "2026-W14.yaml"
    text = dump_draft(draft)
    assert "  held:\n" in text and "reason: '404'" in text
    assert parse_draft(path, text) == draft
    assert [item.title for _, item in draft.held_checks] == ["Gone"] and len(draft.items) == 1
    # the editor moves it elsewhere, reason and all: the draft still reads (no unknown key refused)
    moved = text.replace("  held:\n", "  stale:\n")
    assert [item.title for item in parse_draft(path, moved).sections[0].stale] == ["Gone"]


def _held_back(folder, text: str, moves: dict[int, str]) -> tuple:
    """The draft of `text` with the first section's items at `moves` held back (as an unattended run does),
    and the file write_draft leaves over `text`."""
    from dataclasses import replace

    from digest.issue.draft import parse_draft, write_draft

    path_ = draft_path(folder, "2026-W14")
    path_.write_bytes(text.encode())
    draft = parse_draft(path_, text)
    section = draft.sections[0]
    held = [replace(section.items[i], reason=reason) for i, reason in sorted(moves.items())]
    section.items = [item for i, item in enumerate(section.items) if i not in moves]
    section.held = [*section.held, *held]
    write_draft(path_, draft)
    written = path_.read_bytes().decode()
    return draft, written, parse_draft(path_, written)


HELD_TEXT = (
    "issue: 2026-W14\n"
    "subject: A subject  # mine\n"
    "sections:\n"
    "  - title: News\n"
    "    items:\n"
    "      - title: One\n"
    "        url: https://a.example.org/1\n"
    "      # between\n"
    "      - title: Two\n"
    "        url: https://a.example.org/2\n"
    "        summary: |\n"
    "          Two lines\n"
    "          of it.\n"
    "      - title: Three\n"
    "        url: https://a.example.org/3\n"
    "    held:\n"
    "    - title: Before\n"
    "      reason: earlier   # an old reason\n"
    "  - title: Tools  # untouched\n"
    "    items: []\n"
)


def test_held_back_items_are_moved_as_text_to_the_end_of_an_existing_held_list(tmp_path):
    draft, text, back = _held_back(tmp_path, HELD_TEXT, {1: "it's gone: 404", 2: "a long reason " * 12})
    assert back == draft
    assert text == (
        HELD_TEXT.split("      - title: Two\n")[0]
        + "    held:\n    - title: Before\n      reason: earlier   # an old reason\n"
        + "    - title: Two\n      url: https://a.example.org/2\n      summary: |\n        Two lines\n        of it.\n"
        + '      reason: "it\'s gone: 404"\n'
        + text.split('of it.\n      reason: "it\'s gone: 404"\n')[1].split("  - title: Tools")[0]
        + "  - title: Tools  # untouched\n    items: []\n"
    )
    assert "    - title: Three\n      url: https://a.example.org/3\n      reason: 'a long reason" in text


def test_held_back_items_write_a_held_list_and_keep_crlf_line_ends(tmp_path):
    source = HELD_TEXT.replace("    held:\n    - title: Before\n      reason: earlier   # an old reason\n", "")
    draft, text, back = _held_back(tmp_path, source.replace("\n", "\r\n"), {0: "404"})
    assert back == draft and "\n" not in text.replace("\r\n", "")
    assert text.replace("\r\n", "\n") == source.replace(
        "      - title: One\n        url: https://a.example.org/1\n", ""
    ).replace(
        "  - title: Tools",
        "    held:\n    - title: One\n      url: https://a.example.org/1\n      reason: '404'\n  - title: Tools",
    )


def test_held_back_items_in_a_layout_the_splice_cannot_move_are_written_whole_and_read_back_right(tmp_path):
    flow = "issue: 2026-W14\nsubject: S\nsections:\n- {title: News, items: [{title: One, url: 'https://a.example.org/1'}]}\n"
    draft, text, back = _held_back(tmp_path, flow, {0: "404"})
    assert back == draft and "held:" in text and "reason: '404'" in text
