"""The Friday run with nobody watching (issue 20): an item a feed brought that the checks find broken (a dead
link, already sent, too large for the email) is held back in the draft, and the issue goes out to everyone."""

from __future__ import annotations

from datetime import timedelta
from email import message_from_bytes
from email.utils import format_datetime

import pytest

from digest import store
from digest.issue.draft import draft_path, dump_draft, new_draft, read_draft
from digest.models import DraftItem

from conftest import LAST_WEEK, POSTED
from helpers.feeds import Route, linking_feed, rss
from helpers.project import make_link_checked_project, make_project, subscribers

EARLIER = "2020-W10"


@pytest.fixture
def friday(tmp_path, feed_server, server, monkeypatch):
    """A feed whose week holds a good link, a 404, a 403, a 429, a link sent in an earlier issue (a new guid) and
    a 200 KB link; link checks on, approval none."""
    from digest import jobs

    monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", "a secret of the tests, long enough")
    monkeypatch.setattr(jobs, "current_week", lambda now, tz: LAST_WEEK)
    feed_server.routes["/ok"] = Route(b"fine", headers={"Content-Type": "text/html"})
    feed_server.routes["/wall"] = Route(b"no robots", status=403, headers={"Content-Type": "text/html"})
    feed_server.routes["/busy"] = Route(b"slow down", status=429, headers={"Content-Type": "text/html"})
    feed_server.routes["/again"] = Route(b"old news", headers={"Content-Type": "text/html"})
    links = {
        "ok": feed_server.url("/ok"),
        "gone": feed_server.url("/gone"),
        "wall": feed_server.url("/wall"),
        "busy": feed_server.url("/busy"),
        "again": feed_server.url("/again"),
        "huge": feed_server.url("/huge?q=" + "a" * 200_000),
    }
    feed_server.routes["/feed.xml"] = Route(linking_feed(links, POSTED))
    make_link_checked_project(tmp_path, server.port, subscribers(3), feed_server.url("/feed.xml"))
    earlier = new_draft(EARLIER, "Earlier", ["News"])
    earlier.sections[0].items.append(DraftItem(title="Old post", url=links["again"], summary="Sent long ago."))
    db = store.open_db(tmp_path / "digest.db")
    db["issues"].insert(
        {"id": EARLIER, "subject": "Earlier", "status": "sent", "created_at": "2020-03-02T00:00:00+00:00"}
    )
    db.execute("UPDATE issues SET sent_draft = ? WHERE id = ?", [dump_draft(earlier), EARLIER])
    db.conn.commit()
    return tmp_path, links


def test_a_friday_run_holds_back_what_a_feed_brought_broken_and_sends_the_rest(friday, server, run_cli):
    folder, links = friday
    code, out, err = run_cli("run", "--yes", cwd=folder)
    assert code == 0, (out + err)[-3000:]
    assert sorted(server.per_recipient().values()) == [1, 1, 1]  # everyone, once
    message = message_from_bytes(server.messages[0].data)
    body = "".join(part.get_payload(decode=True).decode() for part in message.walk() if not part.is_multipart())
    assert links["ok"] in body and links["wall"] in body and links["busy"] in body
    assert links["gone"] not in body and links["again"] not in body and "/huge" not in body

    draft = read_draft(draft_path(folder / "drafts", LAST_WEEK))
    held = {item.url: item.reason for section in draft.sections for item in section.held}
    assert set(held) == {links["gone"], links["again"], links["huge"]}
    assert "answers 404" in held[links["gone"]]
    assert f"already sent in {EARLIER}" in held[links["again"]]
    assert "Gmail clips" in held[links["huge"]]
    text = draft_path(folder / "drafts", LAST_WEEK).read_text()
    assert "held:" in text and "reason:" in text

    assert "held back: 3" in out  # the run's summary
    assert "News: “Post gone”: " in out and "answers 404" in out

    code, out, err = run_cli("status", "--week", LAST_WEEK, cwd=folder)
    assert code == 0, err
    assert "3 held back by the checks" in out
    assert "Post gone" in out and "Post again" in out and "Post huge" in out
    # the run warned of the 403 and the 429; status fetches nothing, and says those links are not in its count
    checked = next(line for line in out.splitlines() if line.startswith("  checked:"))
    assert "2 of 3 links not judged" in checked and "digest check fetches them" in checked, checked


@pytest.fixture
def crowded(tmp_path, feed_server, server, monkeypatch):
    """A feed of 24 items each linking 4,000 characters (together past Gmail's clip, none oversized alone), a
    second feed of 2 short items in another section, and an item the editor added by hand to the crowded one."""
    from digest import jobs

    monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", "a secret of the tests, long enough")
    monkeypatch.setattr(jobs, "current_week", lambda now, tz: LAST_WEEK)

    def posts(prefix: str, count: int, length: int) -> bytes:
        return rss(
            [
                {
                    "title": f"{prefix} {n}",
                    "link": f"https://{prefix.lower()}.example.com/{n}?q=" + "a" * length,
                    "guid": f"{prefix}-{n}",
                    "description": f"What happened to {prefix} {n}.",
                    "date": format_datetime(POSTED - timedelta(minutes=n)),
                }
                for n in range(count)
            ]
        )

    feed_server.routes["/long.xml"] = Route(posts("Long", 24, 4_000))
    feed_server.routes["/short.xml"] = Route(posts("Short", 2, 10))
    make_project(
        tmp_path,
        server.port,
        subscribers(3),
        feeds=[
            {"name": "Long", "url": feed_server.url("/long.xml"), "section": "News"},
            {"name": "Short", "url": feed_server.url("/short.xml"), "section": "Articles"},
        ],
        sections={"check": {"links": False}},
    )
    draft = new_draft(LAST_WEEK, "This week", ["News", "Articles"])
    draft.intro = "Hello."
    draft.sections[0].items.append(DraftItem(title="Editor's pick", url="https://mine.example.org/", summary="Mine."))
    draft_path(tmp_path / "drafts", LAST_WEEK).parent.mkdir(exist_ok=True)
    draft_path(tmp_path / "drafts", LAST_WEEK).write_text(dump_draft(draft))
    return tmp_path


def test_an_email_past_gmails_clip_because_of_many_feed_items_holds_back_the_last_ones_until_it_fits(
    crowded, server, run_cli
):
    from digest import jobs
    from digest.issue.checks import email_bytes
    from digest.issue.render import GMAIL_CLIP_BYTES

    code, out, err = run_cli("run", "--yes", cwd=crowded)
    assert code == 0, (out + err)[-3000:]
    assert sorted(server.per_recipient().values()) == [1, 1, 1]  # everyone, once

    draft = read_draft(draft_path(crowded / "drafts", LAST_WEEK))
    news, tools = draft.sections
    assert news.held and not tools.held  # the crowded section gives way, the short one keeps its items
    assert all("past Gmail's clip: held back to fit" in (item.reason or "") for item in news.held)
    kept = [item.title for item in news.items]
    assert "Editor's pick" in kept  # never the editor's
    longs = [title for title in kept if title.startswith("Long ")]
    in_order = [f"Long {n}" for n in range(23, -1, -1)]  # as the section lists them (oldest first)
    assert longs + [item.title for item in news.held] == in_order  # the section's last ones went first
    assert sorted(item.title for item in tools.items) == ["Short 0", "Short 1"]
    config = jobs.load_config(crowded / "feeds.yaml")
    assert email_bytes(config, draft) <= GMAIL_CLIP_BYTES
    news.items.append(news.held[0])  # as few as it takes: one more would not fit
    assert email_bytes(config, draft) > GMAIL_CLIP_BYTES

    assert f"held back: {len(news.held)}" in out and "past Gmail's clip" in out
    code, out, err = run_cli("status", "--week", LAST_WEEK, cwd=crowded)
    assert code == 0, err
    assert f"{len(news.held)} held back by the checks" in out and "Long 0" in out


def test_holding_back_moves_the_entry_as_text_and_keeps_every_other_byte_the_editor_wrote(
    tmp_path, feed_server, server, monkeypatch, run_cli
):
    """The editor's comments and hand formatting survive a run that holds an item back: only the held entry's
    lines move (under `held:`, with their reason); every other line stays byte for byte."""
    from digest import jobs

    monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", "a secret of the tests, long enough")
    monkeypatch.setattr(jobs, "current_week", lambda now, tz: LAST_WEEK)
    feed_server.routes["/ok"] = Route(b"fine", headers={"Content-Type": "text/html"})
    links = {name: feed_server.url(f"/{name}") for name in ("ok", "gone")}
    feed_server.routes["/ok-too"] = Route(b"fine", headers={"Content-Type": "text/html"})
    links["ok-too"] = feed_server.url("/ok-too")
    feed_server.routes["/feed.xml"] = Route(linking_feed(links, POSTED, "What happened to {name}."))
    make_link_checked_project(tmp_path, server.port, subscribers(2), feed_server.url("/feed.xml"))
    for command in (["collect"], ["build", "--week", LAST_WEEK]):
        code, out, err = run_cli(*command, cwd=tmp_path)
        assert code == 0, (out + err)[-3000:]
    path = draft_path(tmp_path / "drafts", LAST_WEEK)
    subject = read_draft(path).subject
    text = (
        "# My own notes for this week: keep them!\n"
        f"issue:   {LAST_WEEK}    # the week\n"
        f"subject: {subject!r}\n"
        "intro: |\n"
        "    Hello,   readers.\n"
        "\n"
        "    A second paragraph.\n"
        "sections:\n"
        "# the news first\n"
        "-   title: News   # a comment after the title\n"
        "    items:\n"
        f"    - title: 'Post ok'\n"
        f"      url: {links['ok']}    # checked by hand\n"
        "      summary: >-\n"
        "         Folded text,\n"
        "         on two lines.\n"
        "    # a comment between entries, at the dashes' column\n"
        f'    - title:    "Post gone"\n'
        f"      url: {links['gone']}\n"
        "      # a comment inside the entry\n"
        "      summary: What happened to gone.\n"
        "\n"
        f"    -   {{title: Post ok-too, url: '{links['ok-too']}'}}\n"
        "    # the end of the items\n"
        "\n"
        "# trailing words of the editor\n"
    )
    path.write_text(text)

    code, out, err = run_cli("run", "--yes", cwd=tmp_path)
    assert code == 0, (out + err)[-3000:]
    assert "held back: 1" in out

    after = path.read_text()
    moved = [
        '    - title:    "Post gone"\n',
        f"      url: {links['gone']}\n",
        "      # a comment inside the entry\n",
        "      summary: What happened to gone.\n",
    ]
    before_lines = text.splitlines(keepends=True)
    start = before_lines.index(moved[0])
    kept = before_lines[:start] + before_lines[start + len(moved) :]
    after_lines = after.splitlines(keepends=True)
    at = after_lines.index("    held:\n")  # after the section's other keys (its last lines, comments included)
    assert after_lines[at - 1] == "    # the end of the items\n"
    block = after_lines[at + 1 : at + 1 + len(moved)]
    assert block == moved  # the entry as the editor wrote it
    reason = after_lines[at + 1 + len(moved)]
    assert reason.startswith("      reason: ") and "404" in reason, reason
    assert after_lines[:at] + after_lines[at + 2 + len(moved) :] == kept  # every other line, byte for byte
    draft = read_draft(path)
    (news,) = draft.sections
    assert [item.title for item in news.items] == ["Post ok", "Post ok-too"]
    assert [(item.title, item.url) for item in news.held] == [("Post gone", links["gone"])]
    assert "answers 404" in (news.held[0].reason or "")
    assert news.items[0].summary == "Folded text, on two lines."
    assert draft.intro == "Hello,   readers.\n\nA second paragraph.\n"
