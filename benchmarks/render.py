"""Benchmark the render stage: a realistic 60-item issue (6 sections, intro, sponsor) rendered N times.

Prints the median and p90 of render_issue() in ms, the HTML and text sizes, the <style> bytes in <head>,
and the targets. "warm" runs reuse the compiled templates and premailer's CSS caches, as the renders of
one process after the first do; "cold" runs clear those caches first, as the first render of a
`digest send` or `digest build` process pays.

    python benchmarks/render.py             # 20 runs of each
    python benchmarks/render.py --runs 50 --items 60
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import premailer.cache

from digest.issue import render
from digest.models import Draft, DraftItem, DraftSection, Sponsor
from digest.settings.config import Newsletter

TARGET_MS = 150.0
TARGET_BYTES = 100_000
HEAD_STYLE_BYTES = 16 * 1024
SECTIONS = ("News", "Articles", "Events", "Videos", "Projects", "Jobs")
SOURCES = (
    "djangoproject.com",
    "adamj.eu",
    "lincolnloop.com",
    "testdriven.io",
    "simonwillison.net",
    "wagtail.org",
    "github.com",
    "realpython.com",
    "b-list.org",
    "jetbrains.com",
)
AUTHORS = (
    "Adam Johnson",
    "Sarah Boyce",
    "Carlton Gibson",
    "Jacob Kaplan-Moss",
    None,
    "Will Vincent",
    "Jeff Triplett",
    None,
    "Natalia Bidart",
    "Tim Schilling",
)
TOPICS = (
    "async views",
    "the ORM",
    "database indexes",
    "template partials",
    "Wagtail",
    "HTMX",
    "uv.lock",
    "supply-chain security",
    "GitHub Actions",
    "PostgreSQL",
    "Celery",
    "the admin",
    "migrations",
    "composite primary keys",
    "Content Security Policy",
    "Django REST Framework",
)
TITLES = (
    "How we sped up {t} by 40% in production",
    "A practical guide to {t} in Django 6.0",
    "Why {t} surprised us after upgrading",
    "Djangonaut diaries: fixing a bug in {t}",
    "Testing {t} without losing your mind",
    "What's new with {t} this spring",
    "Incident report: {t} and unpinned dependencies",
    "Building a faster dashboard with {t}",
)
SENTENCES = (
    "A deep dive into {t} shows how a subtle default can cost real performance in busy projects.",
    "The author walks through profiling, the fix that landed upstream, and what to change in your code.",
    "Includes benchmarks on PostgreSQL and SQLite and a checklist for teams upgrading this quarter.",
    "A clear explanation of the trade-offs, with code you can copy and adapt to your own project.",
    "It ends with practical advice on testing, deployment and keeping dependencies locked down.",
)


def realistic_draft(items: int = 60, seed: int = 14) -> Draft:
    rng = random.Random(seed)
    sections = [DraftSection(title=title) for title in SECTIONS]
    for number in range(items):
        topic = rng.choice(TOPICS)
        source = rng.choice(SOURCES)
        title = rng.choice(TITLES).format(t=topic)
        summary = " ".join(s.format(t=topic) for s in rng.sample(SENTENCES, 2))
        while len(summary) < 230:
            summary += " " + rng.choice(SENTENCES).format(t=topic)
        summary = summary[:260].rsplit(" ", 1)[0].rstrip(",") + "."
        slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
        url = f"https://{source}/blog/2026/04/{slug}/"
        sections[number * len(SECTIONS) // items].items.append(
            DraftItem(
                title=title,
                url=url,
                summary=summary,
                source=source,
                author=rng.choice(AUTHORS),
                published=date(2026, 4, 1 + number % 5),
            )
        )
    return Draft(
        issue="2026-W14",
        week_start=date(2026, 3, 30),
        week_end=date(2026, 4, 5),
        subject="Django Digest: Mar 30 – Apr 5, 2026",
        preheader="",
        intro=(
            "Welcome to this week's issue. DjangoCon Europe is only days away, the PyCon US schedule is "
            "live, and a supply-chain scare reminded everyone to lock their dependencies.\n\n"
            "As always, reply to this email with anything we should feature next week."
        ),
        sponsor=Sponsor(
            title="Acme Hosting: deploy Django in minutes",
            url="https://acme.example.com/?ref=digest",
            text="Managed PostgreSQL, zero-downtime deploys and a free tier for side projects.",
        ),
        sections=sections,
    )


NEWSLETTER = Newsletter(
    title="Django Digest",
    site_url="https://digest.example.com/",
    archive_url="https://digest.example.com/issues/{issue}/",
    postal_address="Django Digest, 1 Example Street, Lawrence, KS 66044, USA",
    reason="You are receiving this email because you subscribed to Django Digest at digest.example.com.",
)


def clear_caches() -> None:
    premailer.cache.cache.clear()
    render._HTML_ENV.cache.clear()
    render._TEXT_ENV.cache.clear()


def timings(draft: Draft, runs: int, cold: bool) -> list[float]:
    result = []
    for _ in range(runs):
        if cold:
            clear_caches()
        started = time.perf_counter()
        render.render_issue(draft, NEWSLETTER)
        result.append((time.perf_counter() - started) * 1000)
    return result


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]


def head_style_bytes(html: str) -> int:
    head = html.split("</head>", 1)[0]
    return sum(len(m.encode("utf-8")) for m in re.findall(r"<style[^>]*>(.*?)</style>", head, re.DOTALL))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--items", type=int, default=60)
    args = parser.parse_args()
    draft = realistic_draft(args.items)
    render.render_issue(draft, NEWSLETTER)  # import-time work out of the way
    rendered = render.render_issue(draft, NEWSLETTER)
    html_bytes, text_bytes = len(rendered.html.encode("utf-8")), len(rendered.text.encode("utf-8"))
    styles = head_style_bytes(rendered.html)
    empty_bytes = len(render.render_issue(realistic_draft(0), NEWSLETTER).html.encode("utf-8"))
    per_item = (html_bytes - empty_bytes) / max(args.items, 1)
    print(f"render_issue: {args.items} items in {len(draft.sections)} sections, {args.runs} runs each")
    ok = True
    for label, cold in (("warm", False), ("cold", True)):
        values = timings(draft, args.runs, cold)
        median = statistics.median(values)
        ok &= median <= TARGET_MS
        print(
            f"  {label}: median {median:7.1f} ms   p90 {p90(values):7.1f} ms   (target: median <= {TARGET_MS:.0f} ms)"
            f"  {'OK' if median <= TARGET_MS else 'TOO SLOW'}"
        )
    print(
        f"  HTML: {html_bytes:,} bytes: {empty_bytes:,} of frame + {per_item:,.0f} per item"
        f"   (target: < {TARGET_BYTES:,})"
        f"  {'OK' if html_bytes < TARGET_BYTES else 'TOO BIG'}"
    )
    print(
        f"  <style> in <head>: {styles:,} bytes   (target: < {HEAD_STYLE_BYTES:,})"
        f"  {'OK' if styles < HEAD_STYLE_BYTES else 'TOO BIG'}"
    )
    print(f"  text: {text_bytes:,} bytes")
    ok &= html_bytes < TARGET_BYTES and styles < HEAD_STYLE_BYTES
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
