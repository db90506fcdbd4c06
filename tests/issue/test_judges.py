"""Third-party judges of the demo's email: SpamAssassin on the message, axe-core (in Chromium) on its HTML.

`.ci/run` installs both (Debian's spamassassin with its bundled rules; axe-playwright-python, which bundles
axe.min.js). They run offline: `spamassassin -L` skips the network tests.
"""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
from email import policy

import pytest

from digest import load_config, store
from digest.sample import SAMPLE_WEEK, run_demo
from digest.send import sending

from helpers.browser import WCAG_21_AA, chromium


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo's week, with one complete message written by a dry run (what subscribers get)."""
    directory = tmp_path_factory.mktemp("demo") / "newsletter"
    run_demo(directory, say=lambda line: None)
    os.environ["DIGEST_UNSUBSCRIBE_SECRET"] = "a judge of 36 characters: SpamAssassin"
    try:
        config = load_config(directory / "feeds.yaml")
        db = store.open_db(directory / "digest.db")
        eml = sending.dry_run_issue(config, db, SAMPLE_WEEK)[1][0]
    finally:
        del os.environ["DIGEST_UNSUBSCRIBE_SECRET"]
    return directory, eml


def test_spamassassin_scores_the_demo_message_below_half_a_point(demo):
    if shutil.which("spamassassin") is None:
        pytest.fail("spamassassin is missing: apt-get install spamassassin", pytrace=False)
    _, eml = demo
    checked = subprocess.run(
        ["spamassassin", "-t", "-L"], input=eml.read_bytes(), capture_output=True, timeout=120, check=True
    )
    report = checked.stdout.decode("utf-8", "replace")
    score = float(re.search(r"^X-Spam-Status: \w+, score=(-?[\d.]+)", report, re.MULTILINE)[1])
    assert score < 0.5, report[report.find("Content analysis details") :]


def test_the_demo_message_carries_the_headers_of_a_newsletter(demo):
    _, eml = demo
    message = email.message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert message["List-Id"] == "Django Digest <django-digest.digest.example.com>"
    assert message["Precedence"] == "bulk" and message["Auto-Submitted"] == "auto-generated"
    assert message["X-Auto-Response-Suppress"] == "OOF, AutoReply"
    html = message.get_body(("html",)).get_content()
    assert re.search(r"<h1[^>]*>.*Django Digest.*</h1>", html, re.DOTALL)
    assert "<!--[if mso]><style>" in html and "font-family: Arial, Helvetica, sans-serif" in html
    hidden = re.search(r'<div style="display:none;[^"]*">', html)[0]
    assert "color" not in hidden  # hidden by display and size, not by a colour (HTML_FONT_LOW_CONTRAST)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_no_wcag_21_aa_violation_in_the_demo_email(demo, scheme):
    from axe_playwright_python.sync_playwright import Axe

    directory, _ = demo
    html_path = directory / "drafts" / f"{SAMPLE_WEEK}.html"
    with chromium() as browser:
        page = browser.new_context(color_scheme=scheme).new_page()
        page.goto(html_path.as_uri())
        results = Axe().run(page, options={"runOnly": {"type": "tag", "values": WCAG_21_AA}})
    assert results.violations_count == 0, results.generate_report()
