"""The render stage: a Draft becomes the finished email of an issue (HTML and text), once per issue.

HTML: Jinja2 (autoescape on) renders templates/email.mjml.j2 (the newsletter folder's own copy when it has
one) to MJML, mjml-python (mrml) turns it
into HTML (no web fonts), then premailer inlines the CSS with network access off, keeping the media
queries (responsive columns, dark mode) in <head>. Text: templates/text.txt.j2, its own template.

Per-subscriber parts are not rendered here: the output holds UNSUBSCRIBE_URL_MARK (the footer's
unsubscribe link, and its own line in the text version) and `personalize` substitutes the values into
the finished output. No text of a draft can produce a mark: the templates write a random stand-in of each
render, the output loses every other mark's prefix, and only then do the stand-ins become the marks. The
archive's copy (`web=True`) leaves the per-subscriber links out; web/publish.py renders its pages with the
same environment (`render_page`).
"""

from __future__ import annotations

import functools
import html as html_lib
import logging
import re
import secrets
import unicodedata
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from digest.errors import ConfigError
from digest.issue.prose import Prose, escape_markdown, render_prose
from digest.models import SUBSCRIBER_NAME_MARK, UNSUBSCRIBE_URL_MARK, Draft, DraftItem, DraftSection, RenderedIssue
from digest.settings.config import Newsletter
from digest.text import cut_at_word, strip_invisible, wrap
from digest.urls import is_http_url

if TYPE_CHECKING:
    import jinja2

__all__ = ["issue_context", "personalize", "render_issue", "render_page"]

GMAIL_CLIP_BYTES = 102 * 1024  # Gmail hides everything after about 102 KB of HTML, the unsubscribe link too
WARN_BYTES = 90 * 1024  # `build` warns past this: room for the per-subscriber link and a few late edits

# The email's templates: the repository's templates/ folder, shipped inside the package (digest/templates is
# a link to it). A newsletter folder's own templates/, beside its feeds.yaml, overrides them file by file.
BUILT_IN_TEMPLATES = Path(__file__).parent.parent / "templates"
OVERRIDES = "templates"
HTML_TEMPLATE = "email.mjml.j2"
TEXT_TEMPLATE = "text.txt.j2"
MARK_PREFIX = "%%DIGEST_"  # common to every mark: feed text loses it before rendering
PREHEADER_CHARS = 150
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def columns(text: str) -> int:
    """How many columns a terminal gives the text: a wide character (an emoji, CJK) takes two, a combining
    mark or a joiner none. For the text version's underlines."""
    width = 0
    for character in text:
        if unicodedata.combining(character) or unicodedata.category(character) in ("Mn", "Cf") or character == "\ufe0f":
            continue
        width += 2 if unicodedata.east_asian_width(character) in ("W", "F") else 1
    return width


def template_folders(folder: Path | None) -> list[Path]:
    """Where templates are looked for, first first: the newsletter folder's own, then the built-in ones."""
    return ([folder / OVERRIDES] if folder is not None else []) + [BUILT_IN_TEMPLATES]


@functools.lru_cache(maxsize=16)
def _environment(folder: Path | None, autoescape: bool) -> jinja2.Environment:
    """One per newsletter folder, shared by render and preview. auto_reload (the default) re-reads a template
    only when its file changed: the preview picks up edits, and every other render uses the compiled one."""
    import jinja2  # here, not at the top: the senders import personalize, and `digest collect` them

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(path) for path in template_folders(folder)]),
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["wrap"] = wrap
    env.filters["columns"] = columns
    return env


def forget_templates() -> None:
    """Look for templates afresh: an override was added or removed (the preview calls this)."""
    _environment.cache_clear()


@functools.cache
def _premailer():
    """premailer settings: no network, keep !important (MJML's responsive rules need it), no cssutils
    validation (slow, and it rejects valid email CSS). Built once; transform() can be called repeatedly.

    Imported on first use, like mjml: they take 60 ms to import, and `digest collect` never renders.
    """
    import cssutils
    from premailer import Premailer

    cssutils.log.setLevel(logging.CRITICAL)  # premailer's CSS parser complains about valid email CSS
    return Premailer(
        allow_network=False,
        allow_loading_external_files=False,
        strip_important=False,
        disable_validation=True,
        keep_style_tags=False,
        remove_classes=False,
        cssutils_logging_level=logging.CRITICAL,
    )


# MJML's own reset block belongs in <head> (MJML never inlines it); premailer leaves it alone.
# Inlining it would add `border-collapse`, `display:block`... to every table, td and p: measured on
# 60 items, +3.4 KB of HTML and a cold premailer pass of 18 ms instead of 12 ms.
_MJML_RESET = re.compile(r'<style type="text/css">(\s*#outlook a)')
_MARKS = re.compile(f"{re.escape(UNSUBSCRIBE_URL_MARK)}|{re.escape(SUBSCRIBER_NAME_MARK)}")
# premailer drops mrml's `<!doctype html>` (it compares it case-sensitively with lxml's
# `<!DOCTYPE html>`): taken off before and put back after.
_DOCTYPE = re.compile(r"^\s*<!doctype[^>]*>\s*", re.IGNORECASE)
_BODY_TAG = re.compile(r"<body\b[^>]*>", re.IGNORECASE)


# --- context -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    title: str
    url: str | None  # None: not http(s), shown unlinked
    summary: str  # the draft's text on one line (templates of earlier releases print it)
    meta: str  # "source · author"
    summary_prose: Prose  # the summary's Markdown as sanitized HTML and as plain text
    image: _Image | None = None


@dataclass(frozen=True)
class _Image:
    """An item's image, scaled to fit IMAGE_BOX: its place reserved by width and height."""

    url: str
    width: int
    height: int
    alt: str = ""  # decorative beside the item's title, which a blocked image's alt would repeat


IMAGE_BOX = 120  # pixels: the most an item's image takes either way


def _image(item: DraftItem) -> _Image | None:
    url = _http_url(item.image)
    if not url or not item.image_width or not item.image_height:
        return None  # without its size, its place cannot be reserved: left out
    scale = min(1.0, IMAGE_BOX / max(item.image_width, item.image_height))
    width, height = max(1, round(item.image_width * scale)), max(1, round(item.image_height * scale))
    return _Image(url=url, width=width, height=height)


@dataclass(frozen=True)
class _More:
    """ "and 37 more from Example Blog": a feed's posts held back past its max_items."""

    count: int
    feed: str
    site: str | None


@dataclass(frozen=True)
class _Section:
    title: str  # without its emoji
    items: tuple[_Item, ...]
    more: tuple[_More, ...]
    emoji: str = ""  # a heading's leading emoji ("📰 News"): shown, hidden from screen readers


@dataclass(frozen=True)
class _Sponsor:
    title: str
    url: str | None
    text: str
    text_prose: Prose


def _clean(text: str | None) -> str:
    """Draft text without invisible controls (bidi overrides, zero-width and control characters; line breaks
    kept) and without the marks' prefix (repeated: removing one may join another)."""
    text = strip_invisible(text or "", keep_newlines=True)
    while MARK_PREFIX in text:
        text = text.replace(MARK_PREFIX, "")
    return text


def _one_line(text: str | None) -> str:
    return " ".join(_clean(text).split())


def _http_url(url: str | None) -> str | None:
    """The URL when it is absolute http(s), else None (javascript:, relative, mailto...: not linked)."""
    url = _clean(url).strip()
    if not url or any(ch.isspace() for ch in url) or not is_http_url(url):
        return None
    return url


def format_dates(start: date, end: date) -> str:
    """ "Mar 30 – Apr 5, 2026" (English month abbreviations whatever the locale)."""
    first = f"{_MONTHS[start.month - 1]} {start.day}"
    last = f"{_MONTHS[end.month - 1]} {end.day}, {end.year}"
    if start.year != end.year:
        first += f", {start.year}"
    return f"{first} – {last}"


def _preheader(draft: Draft, intro: Prose) -> str:
    """The inbox preview line: the draft's own, else the intro's start, else the first items' titles."""
    for text in (draft.preheader, _plain(intro)):
        text = _one_line(text)
        if text:
            return cut_at_word(text, PREHEADER_CHARS)
    titles = [_one_line(item.title) for item in draft.items[:5]]
    return cut_at_word(" · ".join(title for title in titles if title), PREHEADER_CHARS)


def _prose(text: str | None, markdown: bool) -> Prose:
    """The editor's text as Markdown; a draft written before Markdown (no `markdown: true`) as plain text."""
    text = _clean(text)
    return render_prose(text if markdown else escape_markdown(text))


def _plain(prose: Prose) -> str:
    """A prose's text on one line, without its link references: for templates of earlier releases."""
    return _one_line(prose.body)


def _section(section: DraftSection, markdown: bool) -> _Section:
    items = []
    for item in section.items:
        meta = " · ".join(part for part in (_one_line(item.source), _one_line(item.author)) if part)
        items.append(
            _Item(
                title=_one_line(item.title) or "(untitled)",
                url=_http_url(item.url),
                summary=_plain(summary := _prose(item.summary, markdown)),
                meta=meta,
                summary_prose=summary,
                image=_image(item),
            )
        )
    more = tuple(
        _More(count=len(group.items), feed=_one_line(group.feed), site=_http_url(group.site))
        for group in section.more
        if group.items
    )
    emoji, title = split_emoji(_one_line(section.title))
    return _Section(title=title, items=tuple(items), more=more, emoji=emoji)


def split_emoji(heading: str) -> tuple[str, str]:
    """("📰", "News") from "📰 News": the leading symbols (emoji, their joiners and variation selectors), and
    the words a screen reader should read."""
    end = 0
    while end < len(heading) and (
        unicodedata.category(heading[end]) in ("So", "Sk", "Mn", "Cf") or heading[end] in "\ufe0f\u200d"
    ):
        end += 1
    if end == 0 or not heading[end:].strip():
        return "", heading
    return heading[:end], heading[end:].strip()


def resolve_subject(draft: Draft) -> str:
    """The draft's subject with {lead}, the first item's title, filled in as the draft stands now (the editor
    may reorder the items after the build)."""
    items = draft.items
    return draft.subject.replace("{lead}", _one_line(items[0].title) if items else "")


def _context(draft: Draft, newsletter: Newsletter, *, web: bool = False) -> dict:
    # A section with nothing to show is left out: no bare heading in the email (most weeks, Jobs or Projects).
    sections = [
        rendered
        for rendered in (_section(section, draft.markdown) for section in draft.sections)
        if rendered.items or rendered.more
    ]
    intro = _prose(draft.intro, draft.markdown)
    sponsor = None
    if draft.sponsor is not None:
        sponsor = _Sponsor(
            title=_one_line(draft.sponsor.title),
            url=_http_url(draft.sponsor.url),
            text=_plain(text := _prose(draft.sponsor.text, draft.markdown)),
            text_prose=text,
        )
    archive_url = None
    if newsletter.archive_url:
        archive_url = _http_url(newsletter.archive_url.replace("{issue}", draft.issue))
    site_url = _http_url(newsletter.site_url)
    site_label = None
    if site_url:
        parts = urlsplit(site_url)
        site_label = (parts.netloc + parts.path).rstrip("/")
        site_label = site_label[4:] if site_label.startswith("www.") else site_label
    postal = [line for line in (_one_line(line) for line in _clean(newsletter.postal_address).splitlines()) if line]
    return {
        "lang": _one_line(newsletter.language) or "en",
        "title": _one_line(newsletter.title),
        "subject": _one_line(resolve_subject(draft)),
        "dates": format_dates(draft.week_start, draft.week_end),
        "issue": draft.issue,
        "preheader": _preheader(draft, intro),
        "archive_url": archive_url,
        "site_url": site_url,
        "site_label": site_label,
        "intro": [_one_line(block) for block in intro.body.split("\n\n")],  # for templates of earlier releases
        "intro_prose": intro,  # its Markdown as sanitized HTML and as plain text
        "sponsor": sponsor,
        "sections": sections,
        "reason": _one_line(newsletter.reason),
        "postal_address": postal,
        "unsubscribe_url": UNSUBSCRIBE_URL_MARK,
        "web": web,  # the archive's page of the issue: no unsubscribe or "View in browser" link
    }


# --- rendering -----------------------------------------------------------------------


def _inline(html: str) -> str:
    """premailer, once per issue: CSS inlined, media queries and pseudo-class rules left in <head>."""
    html = _DOCTYPE.sub("", html, count=1)
    html = _MJML_RESET.sub(r'<style type="text/css" data-premailer="ignore">\1', html, count=1)
    return "<!doctype html>" + _premailer().transform(html, pretty_print=False)


def render_html(context: dict, folder: Path | None = None) -> str:
    from mjml import mjml2html

    mjml = _render_template(HTML_TEMPLATE, context, folder, autoescape=True)
    try:
        html = mjml2html(mjml, disable_comments=True, fonts={})
    except Exception as exc:  # mjml-python's own errors, on an override that is not MJML
        raise ConfigError(_template_file(HTML_TEMPLATE, folder), None, None, f"not valid MJML: {exc}") from None
    return _inline(html)


def render_text(context: dict, folder: Path | None = None) -> str:
    text = _render_template(TEXT_TEMPLATE, context, folder, autoescape=False)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n") + "\n"


def _render_template(name: str, context: dict, folder: Path | None, *, autoescape: bool) -> str:
    """A template rendered, or ConfigError naming the template file (and line) that failed: an editor's
    override may hold any mistake, and it must read as one line, not a traceback."""
    import jinja2

    try:
        return _environment(folder, autoescape).get_template(name).render(context)
    except jinja2.TemplateSyntaxError as exc:
        path = Path(exc.filename) if exc.filename else _template_file(exc.name or name, folder)
        raise ConfigError(path, exc.lineno, None, f"template syntax: {exc.message}") from None
    except jinja2.TemplateNotFound as exc:
        raise ConfigError(_template_file(name, folder), None, None, f"no template {exc.name!r} to include") from None
    except UnicodeDecodeError:
        raise ConfigError(_template_file(name, folder), None, None, "not UTF-8 text") from None
    except Exception as exc:  # raised while rendering: StrictUndefined, a filter, 1//0
        path, line = _template_frame(exc, folder) or (_template_file(name, folder), None)
        raise ConfigError(path, line, None, f"{type(exc).__name__}: {exc}") from None


def issue_context(draft: Draft, newsletter: Newsletter) -> dict:
    """The templates' context of an issue (cleaned text, http(s) links only), for pages other than the email."""
    return _context(draft, newsletter, web=True)


def render_page(name: str, context: dict, folder: Path | None = None) -> str:
    """An HTML template of templates/ (autoescaped; the newsletter folder's override first), or a ConfigError
    naming the template file and line."""
    return _render_template(name, context, folder, autoescape=True)


def _template_file(name: str, folder: Path | None) -> Path:
    """The file a template name resolves to: the override when there is one."""
    return next(
        (base / name for base in template_folders(folder) if (base / name).is_file()), BUILT_IN_TEMPLATES / name
    )


def _template_frame(exc: BaseException, folder: Path | None) -> tuple[Path, int] | None:
    """The template file and line where a rendering error was raised (Jinja maps its frames to them)."""
    bases = [str(base) for base in template_folders(folder)]
    found = None
    traceback = exc.__traceback__
    while traceback is not None:
        filename = traceback.tb_frame.f_code.co_filename
        if any(filename.startswith(base) for base in bases):
            found = (Path(filename), traceback.tb_lineno)
        traceback = traceback.tb_next
    return found


def render_issue(
    draft: Draft, newsletter: Newsletter, folder: Path | None = None, *, web: bool = False
) -> RenderedIssue:
    """The issue's email with the per-subscriber marks still in it: render once, personalize per copy.
    `web`: the archive's copy, without the per-subscriber links (an override that ignores the flag keeps
    its marks: the publisher personalizes them with the site's URL)."""
    context = _context(draft, newsletter, web=web)
    stand_ins = _stand_ins()
    context.update(unsubscribe_url=stand_ins[UNSUBSCRIBE_URL_MARK], subscriber_name=stand_ins[SUBSCRIBER_NAME_MARK])
    return RenderedIssue(
        subject=context["subject"],
        preheader=context["preheader"],
        html=_seal(render_html(context, folder), stand_ins),
        text=_seal(render_text(context, folder), stand_ins),
    )


def _stand_ins() -> dict[str, str]:
    """What the templates write where a mark goes: random for each render, so that no text of a draft (a
    feed's, an editor's) can hold one, in whatever form Markdown, HTML or MJML would turn into it."""
    nonce = secrets.token_hex(16)
    return {UNSUBSCRIBE_URL_MARK: f"digest-unsubscribe-{nonce}", SUBSCRIBER_NAME_MARK: f"digest-name-{nonce}"}


def _seal(output: str, stand_ins: dict[str, str]) -> str:
    """The finished output with the marks where the templates put them and nowhere else: any other mark
    (text that became one while rendering: escaped Markdown, HTML entities) loses its prefix first."""
    while MARK_PREFIX in output:
        output = output.replace(MARK_PREFIX, "")
    for mark, stand_in in stand_ins.items():
        output = output.replace(stand_in, mark)
    return output


def size_advice(
    draft: Draft,
    newsletter: Newsletter,
    path: Path,
    html_bytes: int,
    busiest: list[tuple[str, int]],
    folder: Path | None = None,
) -> str:
    """What to tell the editor about an email past WARN_BYTES: how far, and what would bring it under."""
    items = len(draft.items)
    frame = len(render_html(_context(_without_items(draft), newsletter), folder).encode("utf-8"))
    clipped = (
        "Gmail clips it past 102 KB and `send` refuses it"
        if html_bytes > GMAIL_CLIP_BYTES
        else ("Gmail clips past 102 KB")
    )
    head = f"{path.name} is {html_bytes / 1024:.0f} KB of HTML, over {WARN_BYTES // 1024} KB: {clipped}. "
    if frame > WARN_BYTES * 0.9:
        return head + (
            f"Even without its {items} items it is {frame / 1024:.0f} KB: shorten the intro, the sponsor "
            f"and the section titles"
        )
    per_item = max(1.0, (html_bytes - frame) / max(1, items))
    cut = min(items, -(-(html_bytes - WARN_BYTES) // int(per_item)))
    feeds = ", ".join(f"{name} ({count} items)" for name, count in busiest)
    return head + (
        f"Removing about {cut} of its {items} items (≈{per_item / 1024:.1f} KB each) from the draft "
        f"would bring it under" + (f"; or lower max_items of the busiest feeds: {feeds}" if feeds else "")
    )


def _without_items(draft: Draft) -> Draft:
    return replace(draft, sections=[replace(section, items=[]) for section in draft.sections])


def personalize(part: str, *, unsubscribe_url: str, name: str, html: bool) -> str:
    """One subscriber's copy of a finished part (HTML when `html`, else text): the marks replaced.

    The values are HTML-escaped (quotes too) in HTML. UNSUBSCRIBE_URL_MARK is the href of the
    footer's unsubscribe link and its own line in the text version. The templates do not use
    SUBSCRIBER_NAME_MARK (a greeting would read oddly for the many subscribers without a name,
    and Buttondown has no name at all); it is still replaced here, so a template may use it where
    an empty name reads fine.
    """
    if html:
        unsubscribe_url = html_lib.escape(unsubscribe_url, quote=True)
        name = html_lib.escape(name, quote=True)
    values = {UNSUBSCRIBE_URL_MARK: unsubscribe_url, SUBSCRIBER_NAME_MARK: name}
    return _MARKS.sub(lambda match: values[match.group()], part)  # one pass: a value is never re-scanned


def after_body_tag(html: str, fragment: str) -> str:
    """`fragment` right after the <body> tag (any template's: an override has its own), else after the doctype: the
    banner of a review copy, the navigation bar of the archive's page."""
    match = _BODY_TAG.search(html) or _DOCTYPE.match(html)
    end = match.end() if match else 0
    return html[:end] + fragment + html[end:]
