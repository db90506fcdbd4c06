"""The live preview in a real Chromium (Debian's /usr/bin/chromium driven by Playwright)."""

from __future__ import annotations

import os
import time
from datetime import date
from pathlib import Path

import pytest

from digest import load_config
from digest.issue.draft import draft_path, write_draft
from digest.models import Draft, DraftItem, DraftSection
from digest.web.preview import GMAIL_CLIP_BYTES, Preview, PreviewServer

from conftest import write_config
from helpers.browser import chromium

WEEK = "2026-W14"


def make_draft(items: int = 6) -> Draft:
    sections = [DraftSection(title="News"), DraftSection(title="Articles")]
    for n in range(items):
        sections[n % 2].items.append(
            DraftItem(
                title=f"Item {n}: what is new in Django",
                url=f"https://blog.example.com/2026/04/a-very-long-slug-that-should-wrap-nicely-on-a-phone-{n}/",
                summary="A short summary of the post, one or two sentences long, as an editor would keep it.",
                source="blog.example.com",
                author="Ada",
                published=date(2026, 4, 1),
            )
        )
    return Draft(
        issue=WEEK,
        week_start=date(2026, 3, 30),
        week_end=date(2026, 4, 5),
        subject="Django Digest – Mar 30 to Apr 5",
        intro="Hello, readers.",
        sections=sections,
    )


@pytest.fixture
def site(tmp_path):
    config_path = write_config(
        tmp_path,
        [],
        archive_url="https://digest.example.com/issues/{issue}/",
        **{"from": "Django Digest <digest@example.com>"},
    )
    config = load_config(config_path)
    path = draft_path(config.drafts_dir, WEEK)
    write_draft(path, make_draft())
    server = PreviewServer(config_path, WEEK, port=0).start()
    yield server, path
    server.stop()


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    page = context.new_page()
    page.console_errors = []
    page.on("console", lambda message: message.type == "error" and page.console_errors.append(message.text))
    page.on("pageerror", lambda error: page.console_errors.append(str(error)))
    yield page
    context.close()


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_preview_loads_with_no_console_errors(site, page, tmp_path):
    server, _ = site
    page.goto(server.url)
    page.wait_for_function("document.getElementById('subject').textContent.includes('Django Digest')")
    page.wait_for_function("document.getElementById('desktop').contentDocument?.body?.innerText.includes('Item 5')")
    assert "Item 0" in page.locator("#text").text_content()
    assert "https://digest.example.com/issues/2026-W14/" in page.locator("#links").text_content()
    assert "of Gmail's 102.0 KB clipping limit" in page.locator("#size").text_content()
    assert page.locator("#from").text_content() == "Django Digest"  # the sender, as an inbox lists it
    page.screenshot(path=str(tmp_path / "preview.png"), full_page=True)
    assert page.console_errors == []


def test_email_has_no_horizontal_overflow_at_375px(site, browser):
    server, path = site
    draft = make_draft()  # the worst a feed can do: words and URLs far wider than a phone
    item = draft.sections[0].items[0]
    item.title = "Supercalifragilistic" * 4
    item.summary = "See https://example.com/" + "a-very-long-path-segment/" * 6 + " for the details."
    item.author = "Ada-Lovelace-Byron-King-Countess-of-Lovelace"
    write_draft(path, draft)
    deadline = time.monotonic() + 5
    while item.title not in server.preview.state.text and time.monotonic() < deadline:
        time.sleep(0.05)
    context = browser.new_context(viewport={"width": 375, "height": 800})
    page = context.new_page()
    page.goto(server.url + "email.html")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    assert page.evaluate("document.body.scrollWidth") <= 375
    context.close()


def test_editing_the_draft_updates_the_page_without_a_reload(site, page):
    server, path = site
    page.goto(server.url)
    page.wait_for_function("document.getElementById('subject').textContent.includes('Django Digest')")
    page.evaluate("window.notReloaded = true")
    started = time.monotonic()
    edit(path, "Item 3: what is new in Django", "Item 3: rewritten by the editor")
    page.wait_for_function(
        "document.getElementById('mobile').contentDocument?.body?.innerText.includes('rewritten by the editor')",
        timeout=5000,
    )
    elapsed = time.monotonic() - started
    assert page.evaluate("window.notReloaded") is True
    assert "rewritten by the editor" in page.locator("#text").text_content()
    assert elapsed < 1.0, f"the page took {elapsed:.2f} s to follow the edit"


def test_an_edit_reaches_the_frames_with_no_request_and_keeps_their_scroll_position(site, page):
    """The new rendering comes whole in the event: the page fetches nothing, and the editor who scrolled
    down to the item being rewritten stays there."""
    server, path = site
    write_draft(path, make_draft(items=30))  # taller than its frame
    page.goto(server.url)
    mobile = "document.getElementById('mobile')"
    page.wait_for_function(f"{mobile}.contentDocument?.body?.innerText.includes('Item 29')")
    page.evaluate(f"{mobile}.contentWindow.scrollTo(0, 400)")
    assert page.evaluate(f"{mobile}.contentWindow.scrollY") == 400
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    edit(path, "Item 5: what is new in Django", "Item 5: rewritten")
    page.wait_for_function(f"{mobile}.contentDocument?.body?.innerText.includes('Item 5: rewritten')")
    page.wait_for_function(f"{mobile}.contentWindow.scrollY === 400")
    assert [url for url in requests if url.startswith("http")] == []
    assert page.console_errors == []


def test_an_open_event_stream_ends_when_the_preview_stops(site):
    """Ctrl-C on `digest preview` must not leave a browser's event stream open until its next keep-alive."""
    import socket

    server, _ = site
    connection = socket.create_connection(("127.0.0.1", server.httpd.server_port), timeout=5)
    connection.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    received = b""
    while b"event: update" not in received:
        received += connection.recv(65536)
    server.stop()
    while chunk := connection.recv(65536):  # a timeout (5 s) fails the test; the stream used to last 15 s
        received += chunk
    connection.close()


def test_the_watcher_follows_a_templates_folder_created_after_it_started(tmp_path):
    """The preview watches folders, not files: a templates folder made while it runs is watched from then on."""
    config_path = write_config(tmp_path, [])
    write_draft(draft_path(load_config(config_path).drafts_dir, WEEK), make_draft())
    server = PreviewServer(config_path, WEEK, port=0).start()
    try:
        override = tmp_path / "templates" / "text.txt.j2"
        override.parent.mkdir()
        override.write_text("FIRST: {{ title }}\n{{ unsubscribe_url }}\n")
        state = server.preview.wait_for_change(1, timeout=10)
        while not state.text.startswith("FIRST"):
            state = server.preview.wait_for_change(state.version, timeout=10)
        override.write_text("SECOND, longer: {{ title }}\n{{ unsubscribe_url }}\n")
        while not state.text.startswith("SECOND"):
            state = server.preview.wait_for_change(state.version, timeout=10)
    finally:
        server.stop()


def test_a_broken_draft_shows_its_error_and_keeps_the_last_rendering(site, page):
    server, path = site
    page.goto(server.url)
    page.wait_for_function("document.getElementById('desktop').contentDocument?.body?.innerText.includes('Item 5')")
    edit(path, "sections:", "sections: [")
    page.wait_for_function("document.getElementById('error').textContent.includes('not valid YAML')")
    assert f"{path}:" in page.locator("#error").text_content()
    assert "Item 5" in page.locator("#text").text_content()
    assert page.console_errors == []
    edit(path, "sections: [", "sections:")
    page.wait_for_function("document.getElementById('error').textContent === ''")


def test_size_meter_warns_past_gmails_clipping_limit(site, page):
    server, path = site
    write_draft(path, make_draft(items=400))
    page.goto(server.url)
    page.wait_for_function("document.getElementById('meter').classList.contains('clipped')")
    assert server.preview.state.as_json()["html_bytes"] > GMAIL_CLIP_BYTES
    assert "Gmail will clip this email" in page.locator("#size").text_content()


def test_the_newsletter_folders_own_templates_override_the_built_in_ones_live(tmp_path):
    """An override added, edited or removed beside feeds.yaml re-renders the preview with it."""
    config_path = write_config(tmp_path, [])
    write_draft(draft_path(load_config(config_path).drafts_dir, WEEK), make_draft())
    preview = Preview(config_path, WEEK)
    assert preview.refresh() is True and "Item 5" in preview.state.text and preview.state.error is None
    assert preview.refresh() is False
    override = tmp_path / "templates" / "text.txt.j2"
    override.parent.mkdir()
    override.write_text("OUR OWN TEXT v1: {{ title }}\n{{ unsubscribe_url }}\n")
    assert preview.refresh() is True and preview.state.text.startswith("OUR OWN TEXT v1: Test Digest")
    override.write_text("OUR OWN TEXT v2: {{ title }}\n{{ unsubscribe_url }}\n")
    os.utime(override, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert preview.refresh() is True and preview.state.text.startswith("OUR OWN TEXT v2")
    assert "Item 5" in preview.state.html  # the HTML template is still the built-in one
    override.unlink()
    assert preview.refresh() is True and "Item 5" in preview.state.text


def test_dark_mode_shows_the_inversion_or_the_emails_own_dark_style(site, page, tmp_path):
    server, _ = site
    page.goto(server.url)
    dark = "document.getElementById('dark')"
    page.wait_for_function(f"{dark}.contentDocument?.body?.innerText.includes('Item 5')")
    assert "invert" in page.evaluate(f"getComputedStyle({dark}).filter")
    card = "(c => c && getComputedStyle(c).backgroundColor)({}.contentDocument?.querySelector('.cd'))"
    assert page.evaluate(card.format(dark)) == "rgb(255, 255, 255)"  # inverted by the frame's filter
    page.get_by_role("button", name="own dark style").click()
    page.wait_for_function(f"{card.format(dark)} === 'rgb(23, 35, 29)'")  # the template's dark-mode rule
    assert page.evaluate(f"getComputedStyle({dark}).filter") == "none"
    assert page.evaluate(card.format("document.getElementById('mobile')")) == "rgb(255, 255, 255)"
    page.screenshot(path=str(tmp_path / "preview-dark.png"), full_page=True)
    assert page.console_errors == []


def test_links_in_the_email_open_a_new_tab_and_the_meter_counts_the_real_email(site, page):
    server, _ = site
    page.goto(server.url)
    page.wait_for_function("document.getElementById('desktop').contentDocument?.body?.innerText.includes('Item 5')")
    assert page.evaluate("document.getElementById('desktop').contentDocument.querySelector('base').target") == "_blank"
    assert "<base" not in server.preview.state.html
    page.context.route("https://blog.example.com/**", lambda route: route.fulfill(body="the post"))
    with page.context.expect_page() as opened:
        page.frame_locator("#desktop").get_by_role("link", name="Item 1: what is new in Django").click()
    opened.value.wait_for_load_state()
    assert opened.value.url.startswith("https://blog.example.com/2026/04/")
    assert page.frame_locator("#desktop").get_by_text("Item 5: what is new in Django").count() == 1


def test_a_rewrite_within_one_clock_tick_is_still_seen(tmp_path):
    """File mtimes advance every few ms: an editor that truncates then writes can leave the same mtime."""
    config_path = write_config(tmp_path, [])
    path = draft_path(load_config(config_path).drafts_dir, WEEK)
    write_draft(path, make_draft())
    preview = Preview(config_path, WEEK)
    assert preview.refresh() is True
    stamp = path.stat().st_mtime_ns
    path.write_text("")  # half-saved: the preview sees an empty draft
    os.utime(path, ns=(stamp, stamp))
    assert preview.refresh() is True and "empty" in preview.state.error
    write_draft(path, make_draft(items=3))  # the save completes within the same tick
    os.utime(path, ns=(stamp, stamp))
    assert preview.refresh() is True
    assert preview.state.error is None and "Item 2" in preview.state.text and "Item 3" not in preview.state.text


def test_the_classic_yaml_slip_gets_a_hint_on_the_page(tmp_path):
    config_path = write_config(tmp_path, [])
    path = draft_path(load_config(config_path).drafts_dir, WEEK)
    write_draft(path, make_draft())
    preview = Preview(config_path, WEEK)
    assert preview.refresh() is True and preview.state.error is None
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if "Item 3:" in text)
    edit(path, "'Item 3: what is new in Django'", "Item 3: what is new in Django")  # the editor drops the quotes
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert preview.refresh() is True
    assert preview.state.error.startswith(f"{path}:{line}: not valid YAML")
    assert "needs quotes around it" in preview.state.error
    assert "Item 3: what is new in Django" in preview.state.text  # the last good rendering stays


def test_the_checks_are_shown_beside_the_email_and_follow_the_draft(site, page, tmp_path):
    from digest import store

    server, path = site
    store.open_db(tmp_path / "digest.db").close()  # built drafts have a database: the checks need it
    page.goto(server.url)
    page.wait_for_function("document.getElementById('subject').textContent.includes('Django Digest')")
    edit(path, "Hello, readers.", "Hello, readers. TODO")
    page.wait_for_function(
        "document.getElementById('findings').innerText.includes('error: intro: a placeholder is left: TODO')",
        timeout=5000,
    )
    assert page.locator("#checks-count").text_content().startswith("(1 error(s), ")
    edit(path, "Hello, readers. TODO", "Hello, readers.")
    page.wait_for_function("!document.getElementById('findings').innerText.includes('TODO')", timeout=5000)
    assert not page.console_errors
