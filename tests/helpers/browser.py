"""Debian's Chromium, driven by Playwright: the preview's tests and the accessibility judge use it, and the
WCAG tags axe-core judges by."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from playwright.sync_api import Browser, sync_playwright

CHROMIUM = "/usr/bin/chromium"  # Playwright cannot download its own browser here; .ci/run installs this one
WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]  # the axe-core tags the judges run
_QUIET = ["--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic"]


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium that makes no connection of its own, closed afterwards."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium chromium-driver", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu", "--no-first-run", *_QUIET]
        )
        try:
            yield browser
        finally:
            browser.close()
