"""Summaries for title-only feeds (`summaries: page`): each new post without text gets its page's description,
fetched once, during collect, from a loopback site: og:description, else the meta description, else the first
paragraph of the article, else nothing."""

from __future__ import annotations

import pytest

from digest import store

from conftest import write_config
from helpers.feeds import Route, rss

HTML = {"Content-Type": "text/html; charset=utf-8"}
LONG = "A paragraph long enough to stand for the page, as a first paragraph of an article is. "


def test_title_only_posts_get_their_pages_description_once(tmp_path, feed_server, run_cli):
    pages = {
        "/og": b'<html><head><meta property="og:description" content="From Open Graph &amp; friends">'
        b'<meta name="description" content="Not this one"></head><body><p>Nor this.</p></body></html>',
        "/meta": b'<html><head><meta name="description" content="Only a meta description"></head></html>',
        "/para": f"<html><body><p>Byline</p><article><p>Short.</p><p>{LONG * 6}</p></article></body></html>".encode(),
        "/nothing": b"<html><body><p>Too short.</p></body></html>",
    }
    for path, body in pages.items():
        feed_server.routes[path] = Route(body, headers=HTML)
    items = [{"title": f"Post {path}", "link": feed_server.url(path), "guid": path} for path in pages]
    items.append({"title": "With text", "link": feed_server.url("/og"), "guid": "text", "description": "Own words"})
    feed_server.routes["/feed.xml"] = Route(rss(items))
    write_config(tmp_path, [{"name": "Forum", "url": feed_server.url("/feed.xml"), "summaries": "page"}])
    assert run_cli("collect", cwd=tmp_path)[0] == 0
    db = store.open_db(tmp_path / "digest.db")
    summaries = dict(db.execute("SELECT guid, summary FROM posts").fetchall())
    assert summaries["/og"] == "From Open Graph & friends"
    assert summaries["/meta"] == "Only a meta description"
    assert summaries["/para"].startswith(LONG.strip()) and summaries["/para"].endswith("…")
    assert len(summaries["/para"]) <= 300
    assert summaries["/nothing"] == "" and summaries["text"] == "Own words"
    fetched = [path for path, _ in feed_server.requests if path in pages]
    assert sorted(fetched) == sorted(pages)  # each page once (the post with text needs none)

    items.append({"title": "Newer", "link": feed_server.url("/meta"), "guid": "newer"})
    feed_server.routes["/feed.xml"] = Route(rss(items))  # the feed changed: every post is read again
    assert run_cli("collect", cwd=tmp_path)[0] == 0
    again = [path for path, _ in feed_server.requests if path in pages]
    assert again == [*fetched, "/meta"]  # only the new post's page
    summaries = dict(db.execute("SELECT guid, summary FROM posts").fetchall())
    assert summaries["/og"] == "From Open Graph & friends"  # kept, though the feed still gives no text


def test_a_feed_without_the_setting_fetches_no_page(tmp_path, feed_server, run_cli):
    feed_server.routes["/page"] = Route(b'<meta name="description" content="x">', headers=HTML)
    feed_server.routes["/feed.xml"] = Route(rss([{"title": "T", "link": feed_server.url("/page"), "guid": "g"}]))
    write_config(tmp_path, [{"name": "Forum", "url": feed_server.url("/feed.xml")}])
    assert run_cli("collect", cwd=tmp_path)[0] == 0
    assert [path for path, _ in feed_server.requests] == ["/feed.xml"]


def test_a_page_is_read_in_its_headers_charset_once_per_link_and_never_off_the_feeds_own_host(
    tmp_path, feed_server, run_cli
):
    text = "Café in Zürich: a naïve résumé of what the forum said this week."
    feed_server.routes["/utf8"] = Route(
        f"<html><body><article><p>{text}</p></article></body></html>".encode(),
        headers={"Content-Type": "text/html; charset=utf-8"},  # and no <meta charset>
    )
    feed_server.routes["/internal"] = Route(b'<meta name="description" content="secret">', headers=HTML)
    elsewhere = feed_server.url("/internal").replace("127.0.0.1", "localhost")  # this machine, by another name
    items = [
        {"title": "One", "link": feed_server.url("/utf8"), "guid": "one"},
        {"title": "Two", "link": feed_server.url("/utf8"), "guid": "two"},  # the same page
        {"title": "Relayed", "link": elsewhere, "guid": "relayed"},
    ]
    feed_server.routes["/feed.xml"] = Route(rss(items))
    write_config(tmp_path, [{"name": "Forum", "url": feed_server.url("/feed.xml"), "summaries": "page"}])
    assert run_cli("collect", cwd=tmp_path)[0] == 0
    summaries = dict(store.open_db(tmp_path / "digest.db").execute("SELECT guid, summary FROM posts").fetchall())
    assert summaries == {"one": text, "two": text, "relayed": ""}
    assert [path for path, _ in feed_server.requests].count("/utf8") == 1
    assert "/internal" not in [path for path, _ in feed_server.requests]


def media_rss(items: list[str]) -> bytes:
    return (
        '<?xml version="1.0"?><rss version="2.0" xmlns:media="http://search.yahoo.com/mrss/"><channel>'
        "<title>Jobs</title><link>https://jobs.example.com/</link><description>d</description>"
        + "".join(items)
        + "</channel></rss>"
    ).encode()


def test_images_come_from_thumbnails_or_the_pages_og_image_and_never_a_tracking_pixel(tmp_path, feed_server, run_cli):
    feed_server.routes["/page"] = Route(
        b'<html><head><meta property="og:image" content="/cover.png"><meta property="og:image:width" '
        b'content="1200"><meta property="og:image:height" content="630"></head><body></body></html>',
        headers=HTML,
    )
    feed_server.routes["/feed.xml"] = Route(
        media_rss(
            [
                "<item><title>With a thumbnail</title><link>https://jobs.example.com/1</link><guid>1</guid>"
                "<description>Text.</description>"
                '<media:thumbnail url="https://img.example.com/1.jpg" width="300" height="200"/></item>',
                "<item><title>A pixel</title><link>https://jobs.example.com/2</link><guid>2</guid>"
                "<description>Text.</description>"
                '<enclosure url="https://track.example.com/p.gif" type="image/gif" length="43"/>'
                '<media:content url="https://track.example.com/p2.gif" medium="image" width="1" height="1"/></item>',
                f"<item><title>Page only</title><link>{feed_server.url('/page')}</link><guid>3</guid></item>",
            ]
        )
    )
    write_config(
        tmp_path,
        [{"name": "Jobs", "url": feed_server.url("/feed.xml"), "images": True, "summaries": "page"}],
    )
    assert run_cli("collect", cwd=tmp_path)[0] == 0
    images = {
        guid: (url, width, height)
        for guid, url, width, height in store.open_db(tmp_path / "digest.db").execute(
            "SELECT guid, image_url, image_width, image_height FROM posts"
        )
    }
    assert images == {
        "1": ("https://img.example.com/1.jpg", 300, 200),
        "2": (None, None, None),  # no size (the enclosure), or 1×1 (the media:content): not pictures
        "3": (feed_server.url("/cover.png"), 1200, 630),
    }
    assert run_cli("build", cwd=tmp_path)[0] == 0
    draft = next((tmp_path / "drafts").glob("*.yaml")).read_text(encoding="utf-8")
    assert "image: https://img.example.com/1.jpg\n" in draft and "image_width: 300\n" in draft
    assert "track.example.com" not in draft


def test_an_items_image_is_small_has_its_size_is_decorative_and_only_where_asked():
    from datetime import date

    from digest.issue.render import render_issue
    from digest.models import Draft, DraftItem, DraftSection
    from digest.settings.config import Newsletter

    item = DraftItem(
        title="Senior <Django> developer",
        url="https://jobs.example.com/1",
        image="https://img.example.com/1.jpg",
        image_width=300,
        image_height=200,
    )
    draft = Draft(
        issue="2026-W14",
        week_start=date(2026, 3, 30),
        week_end=date(2026, 4, 5),
        subject="s",
        sections=[DraftSection(title="Jobs", items=[item, DraftItem(title="No image", url="https://x.example/")])],
    )
    html = render_issue(draft, Newsletter()).html
    assert html.count("<img ") == 1
    tag = html[html.index("<img ") : html.index(">", html.index("<img "))]
    assert 'src="https://img.example.com/1.jpg"' in tag and 'alt=""' in tag  # beside its title
    assert 'width="120"' in tag and 'height="80"' in tag


@pytest.mark.parametrize(
    "content_type, charset",
    [
        ("text/html; charset=koi8-r", "koi8-r"),
        ('text/html; Charset = "Shift_JIS"', "Shift_JIS"),
        ("text/html; q=1; charset='utf-8'", "utf-8"),
        ("text/html; charset=", None),
        ("text/html", None),
        ("", None),
    ],
)
def test_the_charset_of_a_content_type_is_read_however_it_is_spaced_or_quoted(content_type, charset):
    from digest.feeds.pages import charset_of

    assert charset_of(content_type) == charset
