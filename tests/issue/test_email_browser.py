"""The email as Chromium lays it out: right-to-left items, blocked images, and the dark-mode colours of the
"View in browser" strip whatever the MJML compiler does with the body's class."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import date

import pytest

from digest.issue.render import render_issue
from digest.models import Draft, DraftItem, DraftSection
from digest.settings.config import Newsletter

from helpers.browser import WCAG_21_AA, chromium

NEWSLETTER = Newsletter(
    title="Django Digest",
    from_address="Django Digest <digest@example.com>",
    site_url="https://digest.example.com/",
    archive_url="https://digest.example.com/issues/{issue}/",
)
ARABIC_TITLE = "إصدار جانغو الجديد: ما الذي تغير في طبقة قاعدة البيانات"
ARABIC_SUMMARY = "نظرة على كيفية تغيير الإصدار الجديد لطبقة قاعدة البيانات، مع ملاحظات الترحيل."
HEBREW_TITLE = "מה חדש בגרסה האחרונה של ג'נגו"

# The contrast of an element's text against the first opaque background behind it (WCAG 2.1's formula).
CONTRAST = """element => {
  const rgb = text => text.match(/[\\d.]+/g).map(Number);
  const linear = c => (c /= 255) <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  const luminance = ([r, g, b]) => [r, g, b].map(linear)
    .reduce((sum, c, i) => sum + c * [0.2126, 0.7152, 0.0722][i], 0);
  let node = element, background = null;
  while (node && node.nodeType === 1) {
    const colour = rgb(getComputedStyle(node).backgroundColor);
    if (colour.length < 4 || colour[3] > 0) { background = colour; break; }
    node = node.parentElement;
  }
  background = background || [255, 255, 255];
  const [a, b] = [luminance(rgb(getComputedStyle(element).color)), luminance(background)];
  return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
}"""


def draft(*items: DraftItem) -> Draft:
    return Draft(
        issue="2026-W14",
        week_start=date(2026, 3, 30),
        week_end=date(2026, 4, 5),
        subject="Django Digest: Mar 30 – Apr 5, 2026",
        intro="Welcome to the issue.",
        sections=[DraftSection(title="News", items=list(items))],
    )


ENGLISH = DraftItem(title="Django 6.0 released", url="https://example.org/en", summary="The ORM changed.")


def test_a_right_to_left_item_reads_right_to_left_in_a_left_to_right_email(tmp_path):
    arabic = DraftItem(title=ARABIC_TITLE, url="https://example.org/ar", summary=ARABIC_SUMMARY, source="example.org")
    hebrew = DraftItem(title=HEBREW_TITLE, url="https://example.org/he", summary="", source="example.org")
    rendered = render_issue(draft(ENGLISH, arabic, hebrew), NEWSLETTER)
    path = tmp_path / "email.html"
    path.write_text(rendered.html, encoding="utf-8")
    with chromium() as browser:
        page = browser.new_page()
        page.goto(path.as_uri())
        assert page.evaluate("getComputedStyle(document.body).direction") == "ltr"
        for text in (ARABIC_TITLE, ARABIC_SUMMARY, HEBREW_TITLE):
            block = page.locator(f"xpath=//*[self::h3 or self::p][contains(normalize-space(.), {text!r})]").first
            assert block.evaluate("element => getComputedStyle(element).direction") == "rtl", text
            # the words sit against the block's right edge, not its left
            left, right = block.evaluate(
                """element => { const range = document.createRange(); range.selectNodeContents(element);
                const words = range.getBoundingClientRect(), box = element.getBoundingClientRect();
                return [words.left - box.left, box.right - words.right]; }"""
            )
            assert right < 2 < left, text
        english = page.locator("h3", has_text="Django 6.0 released")
        assert english.evaluate("element => getComputedStyle(element).direction") == "ltr"
    words = " ".join(rendered.text.split())  # wrapped in logical order: each line reads right to left alone
    assert ARABIC_TITLE in words and ARABIC_SUMMARY in words
    assert not re.search("[\u200e\u200f\u202a-\u202e\u2066-\u2069]", rendered.text)  # no bidi marks to copy


def test_a_blocked_image_keeps_its_box_and_does_not_repeat_the_title(tmp_path):
    """The image is decorative beside its title: an empty alt, and a box of the image's size whatever loads."""
    from axe_playwright_python.sync_playwright import Axe

    item = replace(ENGLISH, image="https://images.example.invalid/a.png", image_width=240, image_height=160)
    rendered = render_issue(draft(item), NEWSLETTER)
    path = tmp_path / "email.html"
    path.write_text(rendered.html, encoding="utf-8")
    with chromium() as browser:
        page = browser.new_page()
        page.route("**/*", lambda route: route.abort() if route.request.url.startswith("http") else route.continue_())
        page.goto(path.as_uri())
        image = page.locator("img")
        assert image.get_attribute("alt") == ""
        box = image.bounding_box()
        assert (box["width"], box["height"]) == (120, 80)
        assert image.evaluate("element => element.complete && element.naturalWidth") == 0  # it did not load
        results = Axe().run(page, options={"runOnly": {"type": "tag", "values": WCAG_21_AA}})
    assert results.violations_count == 0, results.generate_report()


@pytest.mark.parametrize("body_class", ["as rendered", "on <body> only", "nowhere"])
def test_the_view_in_browser_link_is_readable_in_dark_mode_wherever_the_body_class_goes(tmp_path, body_class):
    """mjml-python puts mj-body's css-class on a div inside <body>; another compiler (mjml 5) may put it
    elsewhere or not at all: the strip's dark colours must hold either way."""
    html = render_issue(draft(ENGLISH), NEWSLETTER).html
    assert 'class="pg"' in html
    if body_class != "as rendered":
        html = html.replace('class="pg"', "")
    if body_class == "on <body> only":
        html = re.sub(r"<body\b", '<body class="pg"', html, count=1)
    path = tmp_path / "email.html"
    path.write_text(html, encoding="utf-8")
    with chromium() as browser:
        for scheme in ("light", "dark"):
            page = browser.new_context(color_scheme=scheme).new_page()
            page.goto(path.as_uri())
            link = page.locator("a", has_text="View in browser").first
            assert link.evaluate(CONTRAST) >= 4.5, scheme
