"""The `digest` command: parse options, call the functions of the stages, print what happened."""

from __future__ import annotations

import json
import sqlite3
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import click
import typer

from . import jobs, store
from .config import Config, ConfigError, load_config
from .weeks import BadWeek, current_week, parse_week

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Turn the week's posts from RSS/Atom feeds into an edited email newsletter.")

EXIT_BAD_INPUT = 2


class UserError(Exception):
    """A one-line problem for the user; the CLI prints it and exits 2."""


def _paths(ctx: typer.Context) -> dict:
    return ctx.ensure_object(dict)


@app.callback()
def main_options(
    ctx: typer.Context,
    config: Path = typer.Option(Path("feeds.yaml"), "--config", envvar="DIGEST_CONFIG",
                                help="The newsletter's settings and feeds."),
    db: Path = typer.Option(Path("digest.db"), "--db", envvar="DIGEST_DB", help="The SQLite state file."),
) -> None:
    _paths(ctx).update(config=config, db=db)


def _config(ctx: typer.Context) -> Config:
    return load_config(_paths(ctx)["config"])


def _db(ctx: typer.Context):
    return store.open_db(_paths(ctx)["db"])


def _week(config: Config, week: Optional[str]) -> str:
    if week is None:
        return current_week(datetime.now(timezone.utc), config.newsletter.tz)
    try:
        parse_week(week)
    except BadWeek as exc:
        raise UserError(f"--week: {exc}") from None
    return week.strip()


def _say(line: str) -> None:
    typer.echo(line)


# --- commands -------------------------------------------------------------------------


@app.command()
def init(ctx: typer.Context) -> None:
    """Write a starter feeds.yaml and subscribers.csv (never overwrites an existing file)."""
    from .sample import starter_files

    config_path = _paths(ctx)["config"]
    for path, text in starter_files(config_path).items():
        if path.exists():
            _say(f"{path}: exists, left as it is")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            _say(f"{path}: written")


@app.command()
def collect(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print a JSON summary.")) -> None:
    """Fetch every feed, store new posts, print a per-feed summary."""
    config = _config(ctx)
    db = _db(ctx)
    report = _collect_with_progress(config, db, quiet=as_json)
    if as_json:
        _say(json.dumps({"seconds": round(report.seconds, 3), "new_posts": report.new_posts,
                         "failed": len(report.failed), "feeds": [asdict(feed) for feed in report.feeds]}, indent=2))
    else:
        _print_collect_summary(report)
    if report.feeds and len(report.failed) == len(report.feeds):
        raise typer.Exit(1)


def _collect_with_progress(config: Config, db, quiet: bool) -> jobs.CollectReport:
    if quiet:
        return jobs.collect(config, db)
    if sys.stdout.isatty():
        with typer.progressbar(length=len(config.feeds), label="Collecting") as bar:
            return jobs.collect(config, db, on_feed=lambda _: bar.update(1))
    return jobs.collect(config, db, on_feed=lambda feed: _say(_feed_line(feed)))


def _feed_line(feed: jobs.FeedReport) -> str:
    if feed.outcome == "failed":
        return f"FAILED  {feed.name}: {feed.error}"
    if feed.outcome == "new":
        return f"ok      {feed.name}: {feed.new_posts} new"
    return f"ok      {feed.name}: unchanged"


def _print_collect_summary(report: jobs.CollectReport) -> None:
    ok = len(report.feeds) - len(report.failed)
    _say(f"{len(report.feeds)} feeds in {report.seconds:.1f} s: {ok} ok, {len(report.failed)} failed, "
         f"{report.new_posts} new posts")
    for feed in report.failed:
        _say(f"  failed: {feed.name} ({feed.url}): {feed.error}")


@app.command()
def build(ctx: typer.Context,
          week: Optional[str] = typer.Option(None, "--week", help="ISO week such as 2026-W14 (default: this week)."),
          as_json: bool = typer.Option(False, "--json", help="Print a JSON summary.")) -> None:
    """Write drafts/<week>.yaml with the week's posts, and render it to .html and .txt."""
    config = _config(ctx)
    issue_id = _week(config, week)
    db = _db(ctx)
    report = jobs.build(config, db, issue_id)
    if as_json:
        data = asdict(report)
        _say(json.dumps({key: str(value) if isinstance(value, Path) else value for key, value in data.items()},
                        indent=2))
        return
    _print_build(report)


def _print_build(report: jobs.BuildReport) -> None:
    if report.outcome == "empty":
        _say(f"{report.issue}: nothing new this week, no draft written")
    elif report.outcome != "built":
        _say(f"{report.issue}: already {report.outcome}, draft left as it is")
    else:
        _say(f"{report.issue}: {report.items} items ({report.new_items} new since the last build)")
        _say(f"  draft: {report.draft}")
        _say(f"  html:  {report.html} ({report.html_bytes:,} bytes)")
        _say(f"  text:  {report.text}")


@app.command()
def feeds(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Feed health: last fetch, status, error, posts, consecutive failures."""
    config = _config(ctx)
    health = {row["url"]: row for row in store.feed_health(_db(ctx))}
    rows = []
    for feed in config.feeds:
        row = health.get(feed.url, {})
        rows.append({"name": feed.name, "url": feed.url, "section": feed.section,
                     "last_fetched_at": row.get("last_fetched_at"), "last_status": row.get("last_status"),
                     "last_error": row.get("last_error"), "posts": row.get("posts", 0),
                     "consecutive_failures": row.get("consecutive_failures", 0),
                     "redirect_url": row.get("redirect_url")})
    if as_json:
        _say(json.dumps(rows, indent=2))
        return
    for row in rows:
        state = "never fetched" if not row["last_fetched_at"] else (
            f"FAILING x{row['consecutive_failures']}: {row['last_error']}" if row["last_error"] else "ok")
        _say(f"{row['name']} [{row['section']}] {row['url']}")
        _say(f"    last fetch {row['last_fetched_at'] or '-'}, HTTP {row['last_status'] or '-'}, "
             f"{row['posts']} posts, {state}")
        if row["redirect_url"]:
            _say(f"    moved permanently to {row['redirect_url']}")


@app.command()
def demo(directory: Optional[Path] = typer.Option(None, "--dir", help="Where to write (default: a new temp dir).")) -> None:
    """The whole weekly job, offline, on bundled sample feeds served from a loopback server."""
    from .sample import run_demo

    run_demo(directory, say=_say)


def main() -> None:
    """Entry point: bad input ends in one line on stderr and exit code 2, never a traceback."""
    try:
        result = app(standalone_mode=False)
    except (ConfigError, UserError) as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except sqlite3.DatabaseError as exc:
        typer.echo(f"error: database {exc}", err=True)
        sys.exit(1)
    except click.ClickException as exc:  # usage errors: unknown option, missing argument
        exc.show()
        sys.exit(EXIT_BAD_INPUT)
    except click.exceptions.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)
