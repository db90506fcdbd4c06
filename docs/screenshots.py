"""Make the README's pictures from the demo: docs/images/email.png and docs/images/preview.png.

Run `python docs/screenshots.py` from the repository after a change to the email's look or the preview.
It runs `digest demo` into a temporary folder, photographs the rendered email at a phone-to-desktop
width of 700 px in Debian's Chromium, then starts `digest preview` on that folder and photographs its
page. Device scale 1 and a cropped height keep each PNG under 400 KB. The sample's emoji need a colour emoji
font (Debian: apt-get install fonts-noto-color-emoji), else Chromium draws empty boxes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
WEEK = "2026-W14"  # the demo's sample week
IMAGES = Path(__file__).resolve().parent / "images"
MAX_BYTES = 400_000
# the preview has rendered the draft, and the email's desktop frame shows it
SHOWN = """() => document.getElementById("status").textContent.startsWith("rendered")
    && document.getElementById("desktop").contentDocument?.body?.innerText.length > 0"""


INTRO = (
    "Hello, and welcome to this week's issue. A new Django Fellow starts, two security releases are out, "
    "and DjangoCon US wants your talk."
)


def run_demo(folder: Path) -> None:
    """The demo's week, with an intro written into its draft as an editor would, and rendered again."""
    subprocess.run(["digest", "demo", "--dir", str(folder)], check=True, capture_output=True, text=True)
    draft = folder / "drafts" / f"{WEEK}.yaml"
    draft.write_text(draft.read_text(encoding="utf-8").replace("\nintro: ''\n", f"\nintro: {INTRO}\n"), "utf-8")
    subprocess.run(["digest", "build", "--week", WEEK], cwd=folder, check=True, capture_output=True, text=True)


def start_preview(folder: Path) -> tuple[subprocess.Popen, str]:
    """`digest preview` on a free port; its first line names the address it serves."""
    server = subprocess.Popen(
        ["digest", "preview", "--week", WEEK, "--port", "0"],
        cwd=folder,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert server.stdout is not None
    first_line = server.stdout.readline()  # "previewing 2026-W14 at http://127.0.0.1:PORT/ (Ctrl-C to stop)"
    url = next((word for word in first_line.split() if word.startswith("http://")), None)
    if url is None:
        server.terminate()
        sys.exit(f"digest preview did not say where it listens: {first_line!r}")
    return server, url


def main() -> None:
    IMAGES.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as temporary, sync_playwright() as playwright:
        folder = Path(temporary) / "demo"
        run_demo(folder)
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
        )
        email = browser.new_page(viewport={"width": 700, "height": 1200}, device_scale_factor=1)
        email.goto((folder / "drafts" / f"{WEEK}.html").as_uri())
        email.screenshot(path=IMAGES / "email.png", clip={"x": 0, "y": 0, "width": 700, "height": 1200})

        server, url = start_preview(folder)
        try:
            preview = browser.new_page(viewport={"width": 1280, "height": 800}, device_scale_factor=1)
            preview.goto(url, wait_until="load")
            preview.wait_for_function(SHOWN)  # the page fills itself from the server's events after it loads
            preview.screenshot(path=IMAGES / "preview.png")
        finally:
            server.terminate()
            server.wait()
        browser.close()
    for name in ("email.png", "preview.png"):
        size = (IMAGES / name).stat().st_size
        print(f"{IMAGES / name}: {size:,} bytes")
        if size > MAX_BYTES:
            sys.exit(f"{name} is {size:,} bytes, over {MAX_BYTES:,}: crop it shorter")


if __name__ == "__main__":
    main()
