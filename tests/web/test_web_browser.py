"""The whole path of a subscriber, in Chromium against `digest serve` under uvicorn, with mail caught by
aiosmtpd: signup on the archive page → confirmation mail → confirm link → the next send mails them → the
one-click POST of the email's List-Unsubscribe header (made with httpx, as a mailbox provider makes it) → the
send after that does not. And axe-core on the pages a subscriber sees."""

from __future__ import annotations

import email
from email import policy

import httpx
import pytest

from helpers.browser import WCAG_21_AA, chromium
from helpers.project import WEEK, next_week
from helpers.web import confirmation_link


def received_by(server, address: str) -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(message.data, policy=policy.default)
        for message in server.messages
        if message.rcpt == address
    ]


def test_a_reader_signs_up_confirms_gets_an_issue_and_leaves_with_one_click(site, server, run_cli):
    with chromium() as browser:
        page = browser.new_page()
        page.goto(site.url)
        page.get_by_label("Email").fill("grace@example.com")
        page.get_by_label("Name").fill("Grace Hopper")
        page.get_by_role("button", name="Subscribe").click()
        page.get_by_role("heading", name="Check your inbox").wait_for()

        server.wait_for(1)
        page.goto(confirmation_link(server.messages[0].data))
        assert site.status("grace@example.com") == "pending"  # opening the link is not yet consent
        page.get_by_role("button", name="Confirm").click()
        page.get_by_role("heading", name="Subscribed").wait_for()
        assert site.status("grace@example.com") == "active"

        assert run_cli("send", "--week", WEEK, "--yes", cwd=site.path.parent)[0] == 0
        issue = received_by(server, "grace@example.com")[-1]
        assert issue["To"] == "Grace Hopper <grace@example.com>" and received_by(server, "ada@example.com")

        page.goto(site.url)
        page.get_by_role("link", name=issue["Subject"]).click()
        page.get_by_role("navigation").wait_for()
        assert page.url == f"{site.url}issues/{WEEK}/"
        assert "Unsubscribe" not in page.content()  # the web copy has no subscriber's link

    one_click = issue["List-Unsubscribe"].split(",")[0].strip().strip("<>")
    assert one_click.startswith(f"{site.url}unsubscribe?token=")
    answer = httpx.post(
        one_click,
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 200 and site.status("grace@example.com") == "unsubscribed"

    server.messages.clear()
    assert run_cli("send", "--week", next_week(site.path.parent), "--yes", cwd=site.path.parent)[0] == 0
    assert [message.rcpt for message in server.messages] == ["ada@example.com"]


def test_the_unsubscribe_page_asks_first_and_its_button_unsubscribes(site):
    with chromium() as browser:
        page = browser.new_page()
        page.goto(f"{site.url}unsubscribe?token={site.unsubscribe_token('ada@example.com')}")
        assert site.status("ada@example.com") is None  # opening the link changed nothing
        page.get_by_role("button", name="Unsubscribe").click()
        page.get_by_role("heading", name="Unsubscribed").wait_for()
    assert site.status("ada@example.com") == "unsubscribed"


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_no_wcag_21_aa_violation_in_the_web_pages(site, run_cli, scheme):
    from axe_playwright_python.sync_playwright import Axe

    assert run_cli("send", "--week", WEEK, "--yes", cwd=site.path.parent)[0] == 0
    pages = ["", f"issues/{WEEK}/", f"unsubscribe?token={site.unsubscribe_token('ada@example.com')}"]
    with chromium() as browser:
        page = browser.new_context(color_scheme=scheme).new_page()
        for path in pages:
            page.goto(site.url + path)
            results = Axe().run(page, options={"runOnly": {"type": "tag", "values": WCAG_21_AA}})
            assert results.violations_count == 0, (path, results.generate_report())
        page.goto(site.url)
        page.get_by_label("Email").fill("new@example.com")
        page.get_by_role("button", name="Subscribe").click()
        page.get_by_role("heading", name="Check your inbox").wait_for()
        results = Axe().run(page, options={"runOnly": {"type": "tag", "values": WCAG_21_AA}})
        assert results.violations_count == 0, ("subscribe", results.generate_report())
