"""The editor's live preview: a local web page that re-renders the draft whenever it or a template changes.

The page shows the email at desktop width, at 375 px and in dark mode (inverted, as
the Gmail app and Outlook do, or with the email's own dark stylesheet, as Apple Mail
does), the text version, the inbox line (sender, subject and preheader),
the HTML size against Gmail's clipping limit and the list of links. A watcher
thread wakes on the operating system's file-change events (inotify, FSEvents, through
watchfiles) for the folders of feeds.yaml, the draft and the templates, and re-renders
when a file's modification time, size or inode changed. Each new rendering goes to the
page whole, in a Server-Sent Event, and the page puts it into its frames: no request
back, no reload. A broken draft shows its error on the page and the last good rendering
stays.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from email.utils import parseaddr
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path

from digest.errors import ConfigError
from digest.issue.draft import draft_path, read_draft
from digest.issue.render import (
    GMAIL_CLIP_BYTES,
    WARN_BYTES,
    forget_templates,
    personalize,
    render_issue,
    template_folders,
)
from digest.send import registry
from digest.send.unsubscribe import sample_url
from digest.settings.config import Config, load_config

QUIET_MS = 20  # a save is taken as done once its folder has had no event for this long
SAFETY_NET_MS = 1000  # and the files are looked at anyway this often, for events a file system never sends
# The preview's copies of the email (never the sent one): links open a new tab instead of replacing the
# email inside its frame, and the dark copy applies the email's dark-mode rules as a client in dark mode does.
_HEAD = re.compile(r"<head[^>]*>", re.IGNORECASE)
_DARK_QUERY = re.compile(r"@media\s*\(\s*prefers-color-scheme\s*:\s*dark\s*\)", re.IGNORECASE)


def framed(html: str, dark: bool = False) -> str:
    """The email as the preview's frames show it: links open in a new tab; `dark`: its dark stylesheet on."""
    if dark:
        html = _DARK_QUERY.sub("@media all", html)
    return _HEAD.sub(lambda match: match.group() + '<base target="_blank">', html, count=1)


@dataclass
class PreviewState:
    version: int = 0
    html: str = ""
    text: str = ""
    subject: str = ""
    preheader: str = ""
    sender: str = ""
    links: list[dict] = field(default_factory=list)
    findings: list[dict] = field(default_factory=list)  # what `digest check` says (links: their cached answers)
    error: str | None = None

    def as_json(self) -> dict:
        size = len(self.html.encode("utf-8"))
        return {
            "version": self.version,
            "html": framed(self.html),
            "html_dark": framed(self.html, dark=True),
            "text": self.text,
            "subject": self.subject,
            "preheader": self.preheader,
            "sender": self.sender,
            "links": self.links,
            "findings": self.findings,
            "error": self.error,
            "html_bytes": size,
            "target_bytes": WARN_BYTES,
            "clip_bytes": GMAIL_CLIP_BYTES,
            "clipped": size > GMAIL_CLIP_BYTES,
            "has_email": bool(self.html),
        }


class _LinkCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[dict] = []
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href, self._text = dict(attrs).get("href"), []

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.links.append({"url": self._href, "text": " ".join("".join(self._text).split())})
            self._href = None


def links_of(html: str) -> list[dict]:
    collector = _LinkCollector()
    collector.feed(html)
    return collector.links


class Preview:
    """Renders one week's draft and keeps the result current while the files change."""

    def __init__(self, config_path: Path, issue_id: str):
        self.config_path, self.issue_id = config_path, issue_id
        self.state = PreviewState()
        self.changed = threading.Condition()
        self._stamp: tuple = ()
        self._config: Config | None = None
        self._config_stamp: tuple | None = ()

    def watched(self, config: Config | None) -> list[Path]:
        """feeds.yaml and the draft."""
        return [self.config_path] + ([draft_path(config.drafts_dir, self.issue_id)] if config is not None else [])

    def folders(self) -> list[Path]:
        """The folders whose events may mean a change: of feeds.yaml, of the draft, of the templates (those
        that exist: the config's folder tells when a templates folder or the drafts folder appears)."""
        paths = [*self.watched(self._config), *self.templates()]
        folders = {path if path.is_dir() else path.parent for path in paths}
        return sorted(folder for folder in folders if folder.is_dir())

    def templates(self) -> list[Path]:
        """Every template, the built-in ones and the folder's own, and their folders (an override added or
        removed changes its folder)."""
        folders = template_folders(self.config_path.resolve().parent)
        return [*folders, *(path for folder in folders for path in sorted(folder.glob("*")))]

    def refresh(self) -> bool:
        """Re-render when any watched file changed since the last look; returns whether it did."""
        config_stamp = _file_stamp(self.config_path)
        if config_stamp != self._config_stamp:
            self._config_stamp = config_stamp
            try:
                self._config = load_config(self.config_path, backends=registry())
            except ConfigError:
                self._config = None  # _render reports the error
        templates = tuple((str(path), _file_stamp(path)) for path in self.templates())
        stamp = (templates, tuple((str(path), _file_stamp(path)) for path in self.watched(self._config)))
        if stamp == self._stamp:
            return False
        if not self._stamp or templates != self._stamp[0]:
            forget_templates()
        self._stamp = stamp
        self._render()
        return True

    def _render(self) -> None:
        previous = self.state
        state = PreviewState(version=previous.version + 1)
        try:
            config = self._config or load_config(self.config_path, backends=registry())
            draft = read_draft(draft_path(config.drafts_dir, self.issue_id))
            rendered = render_issue(draft, config.newsletter, config.folder)
        except ConfigError as exc:
            state.error = str(exc)
        except Exception as exc:  # a template error must show on the page, not stop the preview
            state.error = f"cannot render: {type(exc).__name__}: {exc}"
        else:
            unsubscribe = sample_url(config.newsletter)
            state.html = personalize(rendered.html, unsubscribe_url=unsubscribe, name="Ada", html=True)
            state.text = personalize(rendered.text, unsubscribe_url=unsubscribe, name="Ada", html=False)
            state.subject, state.preheader = rendered.subject, rendered.preheader
            name, address = parseaddr(config.newsletter.from_address)
            state.sender = name or address
            state.links = links_of(state.html)
            state.findings = self._findings(config, draft)
        if state.error:  # keep showing the last good rendering under the error
            state.html, state.text, state.subject = previous.html, previous.text, previous.subject
            state.preheader, state.links, state.sender = previous.preheader, previous.links, previous.sender
        with self.changed:
            self.state = state
            self.changed.notify_all()

    def _findings(self, config: Config, draft) -> list[dict]:
        """The checks as `digest check` makes them, links judged by their cached answers: nothing is fetched
        at every save. None before the database exists."""
        from digest import store
        from digest.issue.checks import check_issue
        from digest.settings.config import database_path

        path = database_path(self.config_path)
        if not path.exists():
            return []
        db = store.open_db(path)
        try:
            report = check_issue(config, db, self.issue_id, draft=draft, fetch=False)
        finally:
            db.close()
        return [{"severity": f.severity, "where": f.where, "message": f.message} for f in report.findings]

    def wait_for_change(self, version: int, timeout: float, stopping: threading.Event | None = None) -> PreviewState:
        """The state once its version is no longer `version`, or as it is after `timeout` or once `stopping`."""
        with self.changed:
            self.changed.wait_for(
                lambda: self.state.version != version or (stopping is not None and stopping.is_set()), timeout=timeout
            )
            return self.state


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells a change: the modification time, and the size and inode too, because the clock behind
    mtime ticks every few ms: an editor that truncates then writes may leave the same mtime twice."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


class PreviewServer:
    """The preview on 127.0.0.1, in background threads: start(), url, stop()."""

    def __init__(self, config_path: Path, issue_id: str, port: int = 8000, host: str = "127.0.0.1"):
        self.preview = Preview(config_path, issue_id)
        self.preview.refresh()
        self._stopping = threading.Event()
        self.host = host
        self.httpd = ThreadingHTTPServer((host, port), _handler(self.preview, self._stopping))
        self.httpd.daemon_threads = True
        self._threads = [
            threading.Thread(target=self.httpd.serve_forever, daemon=True),
            threading.Thread(target=self._watch, daemon=True),
        ]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.httpd.server_port}/"

    def start(self) -> PreviewServer:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self.preview.changed:
            self.preview.changed.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()

    def _watch(self) -> None:
        """Re-render on each burst of file events; start watching again when the set of folders changed."""
        import watchfiles

        force_polling = None
        while not self._stopping.is_set():
            folders = self.preview.folders()
            try:
                for _changes in watchfiles.watch(
                    *folders,
                    watch_filter=None,  # editors' temporary files too: the stamps decide what changed
                    step=QUIET_MS,
                    rust_timeout=SAFETY_NET_MS,
                    yield_on_timeout=True,
                    stop_event=self._stopping,
                    recursive=False,
                    raise_interrupt=False,
                    force_polling=force_polling,
                ):
                    self.preview.refresh()
                    if self.preview.folders() != folders:
                        break
            except Exception:  # no more inotify watches, a folder gone meanwhile: look, and never spin
                force_polling = True
                self._stopping.wait(SAFETY_NET_MS / 1000)


def _loopback_host(host: str) -> bool:
    """Whether a Host header names this machine: 127.0.0.1, localhost or [::1], with any port."""
    name = host.strip().lower()
    name = name[: name.index("]") + 1] if name.startswith("[") and "]" in name else name.rsplit(":", 1)[0]
    return name in ("127.0.0.1", "localhost", "[::1]")


def _handler(preview: Preview, stopping: threading.Event) -> type[BaseHTTPRequestHandler]:
    page = (files("digest.web") / "preview.html").read_text(encoding="utf-8")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.partition("?")[0]
            if not _loopback_host(self.headers.get("Host", "")):
                # A page elsewhere whose name an attacker re-points at 127.0.0.1 (DNS rebinding) would send
                # its own name here: it must not read the draft.
                self._send(403, "text/plain; charset=utf-8", b"forbidden: open the preview at 127.0.0.1")
            elif path == "/":
                self._send(200, "text/html; charset=utf-8", page.encode("utf-8"))
            elif path == "/email.html":  # the email alone, in a tab of its own
                self._send(200, "text/html; charset=utf-8", framed(preview.state.html).encode("utf-8"))
            elif path == "/events":
                self._events()
            elif path == "/favicon.ico":
                self._send(204, "image/x-icon", b"")
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _events(self) -> None:
            """Server-Sent Events: the current rendering at once, then each new one as it is made (the whole
            state, as one line of JSON), and a comment every 15 s to keep the connection alive."""
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            state = preview.state
            try:
                while True:
                    self.wfile.write(f"event: update\ndata: {json.dumps(state.as_json())}\n\n".encode())
                    self.wfile.flush()
                    while (fresh := preview.wait_for_change(state.version, timeout=15, stopping=stopping)) is state:
                        if stopping.is_set():
                            return
                        self.wfile.write(b": keep-alive\n\n")
                        self.wfile.flush()
                    state = fresh
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, format: str, *args) -> None:
            pass

    return Handler
