"""Benchmark the live preview: from saving a 60-item draft to every view of the page showing the edit.

Runs `digest preview`'s server on a realistic 60-item draft (the one benchmarks/render.py renders), opens
it in Debian's Chromium through Playwright, and saves the draft N times, each time rewriting one title.
A save's time is from just before the file is written to the first animation frame in which the desktop,
phone and dark-mode frames and the plain-text view all hold the new title (taken in the page, against the
same wall clock), so Playwright's own round trips are not counted.

    python benchmarks/preview.py            # 30 saves
    python benchmarks/preview.py --saves 50
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from render import realistic_draft  # noqa: E402

from digest.issue.draft import draft_path, write_draft  # noqa: E402
from digest.web.preview import PreviewServer  # noqa: E402

from helpers.browser import chromium  # noqa: E402

TARGET_MS = 250
WEEK = "2026-W14"
# The first frame in which every view shows `marker`: its time (ms since the epoch) in window.doneAt.
WATCH = """marker => {
  window.doneAt = null;
  const shows = id => document.getElementById(id).contentDocument?.body?.innerText.includes(marker);
  const check = () => {
    if (["desktop", "mobile", "dark"].every(shows) && document.getElementById("text").textContent.includes(marker))
      window.doneAt = performance.timeOrigin + performance.now();
    else requestAnimationFrame(check);
  };
  requestAnimationFrame(check);
}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--saves", type=int, default=30)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        config = folder / "feeds.yaml"
        config.write_text(
            "newsletter:\n  title: Benchmark Weekly\n  from: Benchmark <news@example.com>\n"
            "  sections: [News, Articles, Events, Videos, Projects, Jobs]\nfeeds: []\n"
        )
        draft = realistic_draft(60)
        path = draft_path(folder / "drafts", WEEK)
        write_draft(path, draft)
        first_title = draft.sections[0].items[0].title
        server = PreviewServer(config, WEEK, port=0).start()
        try:
            with chromium() as browser:
                page = browser.new_page(viewport={"width": 1500, "height": 1000})
                page.goto(server.url)
                page.wait_for_function("document.getElementById('dark').contentDocument?.body?.innerText.length > 0")
                times = []
                text = path.read_text()
                for save in range(options.saves):
                    marker = f"Rewritten title {save}"
                    page.evaluate(WATCH, marker)
                    started = time.time()
                    path.write_text(text.replace(first_title, marker))
                    page.wait_for_function("window.doneAt !== null", timeout=10_000)
                    times.append(page.evaluate("window.doneAt") - started * 1000)
                    time.sleep(0.05)  # an editor's saves come seconds apart: let the page settle between them
        finally:
            server.stop()
    times.sort()
    print(f"{options.saves} saves of a 60-item draft ({len(server.preview.state.html):,} bytes of HTML)")
    print(
        f"save to every view updated: median {statistics.median(times):.0f} ms, "
        f"p90 {times[int(len(times) * 0.9) - 1]:.0f} ms, max {times[-1]:.0f} ms (target: median <= {TARGET_MS} ms)"
    )


if __name__ == "__main__":
    main()
