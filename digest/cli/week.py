"""The commands of the week's issue, in the order of its making: collect, build, check, approve, and run, the
weekly job that does them all and sends; with feeds and status, which report on them. The summaries that
`run` prints again for its own steps are here, beside the commands that print them first."""

from __future__ import annotations

import sys
from dataclasses import asdict
from typing import TYPE_CHECKING

import typer

from digest.cli.app import AS_JSON, WEEK, fail, issue_week, open_db, print_json, read_config, say, warn
from digest.cli.sending import ALLOW_CLIPPED, BACKEND, FORCE, SEND_NOW, YES, Sending, confirmation
from digest.cli.web import print_publish

if TYPE_CHECKING:
    from digest.feeds.collect import CollectReport, FeedReport
    from digest.jobs import BuildReport


def collect(ctx: typer.Context, as_json: bool = AS_JSON) -> None:
    """Fetch every feed, store new posts, print a per-feed summary."""
    from digest.feeds.collect import collect as collect_feeds

    config, db = read_config(ctx), open_db(ctx)
    with _Progress(len(config.feeds), "Collecting", quiet=as_json) as on_feed:
        report = collect_feeds(config, db, on_feed=on_feed)
    if as_json:
        print_json(
            {
                "seconds": round(report.seconds, 3),
                "new_posts": report.new_posts,
                "failed": len(report.failed),
                "feeds": [asdict(feed) for feed in report.feeds],
            }
        )
    else:
        _print_collect_summary(report)
    raise typer.Exit(report.exit_code)


class _Progress:
    """Per-feed lines when not on a terminal, a progress bar on one; nothing when quiet."""

    def __init__(self, length: int, label: str, *, quiet: bool = False):
        self.bar = None if quiet or not sys.stdout.isatty() else typer.progressbar(length=length, label=label)
        self.quiet = quiet

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
            return lambda _: self.bar.update(1)
        return None if self.quiet else (lambda feed: say(_feed_line(feed)))

    def __exit__(self, *exc_info) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc_info)


def _feed_line(feed: FeedReport) -> str:
    if feed.outcome == "failed":
        return f"FAILED  {feed.name}: {feed.error}"
    news = f"{feed.new_posts} new" if feed.outcome == "new" else "unchanged"
    return f"ok      {feed.name}: {news}" + (f"; warning: {feed.warning}" if feed.warning else "")


def _print_collect_summary(report: CollectReport) -> None:
    ok = len(report.feeds) - len(report.failed)
    say(
        f"{len(report.feeds)} feeds in {report.seconds:.1f} s: {ok} ok, {len(report.failed)} failed, "
        f"{report.new_posts} new posts"
    )
    for feed in report.failed:
        say(f"  failed: {feed.name} ({feed.url}): {feed.error}")
    for feed in report.feeds:
        if feed.warning:
            say(f"  warning: {feed.name} ({feed.url}): {feed.warning}")


def build(
    ctx: typer.Context,
    week: str | None = WEEK,
    as_json: bool = AS_JSON,
    force: bool = typer.Option(
        False,
        "--force",
        help="Build although a receipt in the drafts folder says more was sent than the database knows "
        "(a lost database): the posts of those issues may be offered again.",
    ),
) -> None:
    """Write drafts/<week>.yaml with the week's posts, and render it to .html and .txt."""
    from digest.jobs import build as build_issue

    config = read_config(ctx)
    issue_id = issue_week(config, week)
    report = build_issue(config, open_db(ctx), issue_id, force=force)
    if as_json:
        print_json(asdict(report))
    else:
        _print_build(report)


def _print_build(report: BuildReport, prefix: str = "") -> None:
    if report.outcome == "empty":
        say(f"{prefix}{report.issue}: nothing new this week, no draft written: {report.advice}")
    elif report.outcome != "built":
        say(f"{prefix}{report.issue}: already {report.outcome}, draft left as it is")
    else:
        say(f"{prefix}{report.issue}: {report.counts}")
        if not prefix:
            say(f"  draft: {report.draft}")
            say(f"  html:  {report.html} ({report.html_bytes:,} bytes)")
            say(f"  text:  {report.text}")
    if report.size_warning:
        warn(report.size_warning)


def check(
    ctx: typer.Context,
    week: str | None = WEEK,
    as_json: bool = AS_JSON,
    links: bool | None = typer.Option(
        None, "--links/--no-links", show_default="check.links", help="Fetch every link, or none this time."
    ),
) -> None:
    """What could go wrong with the week's issue: dead links, items already sent, placeholders, missing
    summaries, the size. Exit 1 when there are errors, which `send` and `run` refuse unless --force."""
    from digest.issue.checks import check_issue

    config = read_config(ctx)
    report = check_issue(config, open_db(ctx), issue_week(config, week), links=links)
    if as_json:
        print_json(
            {
                "issue": report.issue,
                "errors": len(report.errors),
                "warnings": len(report.warnings),
                "links": report.links,
                "fetched": report.fetched,
                "findings": [asdict(finding) for finding in report.findings],
            }
        )
    else:
        for finding in report.findings:
            say(str(finding))
        say(report.summary)
    raise typer.Exit(1 if report.errors else 0)


def feeds(ctx: typer.Context, as_json: bool = AS_JSON) -> None:
    """Feed health: last fetch, status, error, posts, consecutive failures."""
    from digest.feeds.collect import feed_health

    rows = feed_health(read_config(ctx), open_db(ctx))
    if as_json:
        print_json(rows)
        return
    for row in rows:
        state = (
            "never fetched"
            if not row["last_fetched_at"]
            else (f"FAILING x{row['consecutive_failures']}: {row['last_error']}" if row["last_error"] else "ok")
        )
        say(f"{row['name']} [{row['section']}] {row['url']}")
        say(
            f"    last fetch {row['last_fetched_at'] or '-'}, HTTP {row['last_status'] or '-'}, "
            f"{row['posts']} posts, {state}"
        )
        if row["last_warning"] and not row["last_error"]:
            say(f"    warning: {row['last_warning']}")
        if row["redirect_url"]:
            say(f"    moved permanently to {row['redirect_url']}")


def status(ctx: typer.Context, week: str | None = WEEK, as_json: bool = AS_JSON) -> None:
    """Where the week's issue stands: collected, built, checked, approved, sending, sent, with counts."""
    from digest import jobs

    config = read_config(ctx)
    facts = jobs.week_status(config, open_db(ctx), issue_week(config, week))
    if as_json:
        print_json(asdict(facts))
        return
    for line in jobs.week_status_lines(facts):
        say(line)


def approve(
    ctx: typer.Context,
    week: str | None = WEEK,
    force: bool = typer.Option(
        False, "--force", help="Approve although the checks found errors (false alarms): the run sends it as it is."
    ),
) -> None:
    """Approve the week's draft as it is now: with approval: required, the next digest run sends it. Editing
    the draft afterwards voids the approval. A draft the checks find errors in is refused unless --force."""
    from datetime import UTC, datetime

    from digest.send.approval import approve as approve_issue

    config = read_config(ctx)
    issue_id = issue_week(config, week)
    digest, check = approve_issue(config, open_db(ctx), issue_id, now=datetime.now(UTC), force=force)
    for finding in check.findings:
        say(str(finding))
    say(f"{issue_id}: approved (draft {digest[:12]}); the next digest run sends it")


def run(
    ctx: typer.Context,
    backend: str | None = BACKEND,
    send_now: bool = SEND_NOW,
    yes: bool = YES,
    allow_clipped: bool = ALLOW_CLIPPED,
    force: bool = FORCE,
) -> None:
    """The weekly job (cron, a systemd timer, CI): collect, build and send this week's issue.

    Safe to run twice (an issue already sent is left alone) and never twice at once (exit 75).
    Exit codes: 0 done or nothing to do, 1 the backend failed or every feed failed, 2 bad input,
    75 try again later, 143 stopped by SIGTERM.
    """
    from digest.jobs import WeekReport, run_week

    config = read_config(ctx)
    confirm = confirmation(yes)
    shown = Sending()
    quiet = not sys.stdout.isatty()
    told: set[str] = set()

    def tell(step: WeekReport) -> None:
        """Each step as soon as it is done: a send that fails afterwards must not hide what came before."""
        if step.resumed and "resumed" not in told:
            say(f"{step.issue}: an earlier run began sending it; resuming, without collecting or building")
        if step.collected is not None and "collected" not in told:
            _print_collect_summary(step.collected)
        if step.built is not None and "built" not in told:
            if step.built.outcome == "empty":
                say(f"build {step.issue}: nothing new this week, nothing sent: {step.built.advice}")
            else:
                _print_build(step.built, prefix="build ")
        if step.held and "held" not in told:
            say(
                f"held back: {len(step.held)} item(s) a feed brought that the checks found broken or that did not "
                f"fit the email, listed in the draft under `held`:"
            )
            for item in step.held:
                say(f"  {item}")
        if step.approval is not None and "approval" not in told:
            for line in step.approval.lines:
                say(line)
            for finding in step.approval.check.warnings if step.approval.check else []:
                warn(f"{finding.where}: {finding.message}")
        told.update(name for name in ("resumed", "collected", "built", "held", "approval") if getattr(step, name))

    try:
        with _Progress(len(config.feeds), "Collecting", quiet=quiet) as on_feed:
            report = run_week(
                config,
                open_db(ctx),
                backend=backend,
                confirm=confirm,
                send_now=send_now,
                allow_clipped=allow_clipped,
                force=force,
                on_feed=on_feed,
                on_plan=shown.on_plan,
                on_result=shown.on_result,
                on_step=tell,
            )
    finally:
        shown.done()
    if report.done:
        say(report.done)
    for line in report.sent.lines if report.sent is not None else []:
        say(line)
    if report.published is not None:
        print_publish(report.published)
    if report.problem:
        fail(report.problem, report.exit_code)
    raise typer.Exit(report.exit_code)
