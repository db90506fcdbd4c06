"""The `digest` command: each command parses its options, calls one library function and prints its report.

Errors are translated once, where Typer invokes a command (`_Commands.invoke`): a DigestError prints one line
and exits with its own code (errors.py), so that Typer's CliRunner sees the codes a shell would. Library
modules are imported inside the commands: `digest --help` does not pay for httpx, Jinja2 or SQLite.
"""

from __future__ import annotations

import io
import json
import os
import select
import signal
import sqlite3
import sys
import threading
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperGroup

from digest.credentials import redact
from digest.errors import DigestError, SetupError

if TYPE_CHECKING:
    from digest.feeds.collect import CollectReport, FeedReport
    from digest.jobs import BuildReport
    from digest.send import SendPlan
    from digest.settings.config import Config

EXIT_TERMINATED = 143  # stopped by SIGTERM (128 + 15), as a shell reports a process it terminated
# stdout closed early (`digest feeds | head`): 128 + SIGPIPE, what `grep` or `git log` give there. Not 0: the
# output was cut short, which a script with `set -o pipefail` should hear; a shell without it ignores it.
EXIT_BROKEN_PIPE = 141
NO_TERMINAL = "no terminal to ask for confirmation: add --yes to send without asking"


class Terminated(KeyboardInterrupt):
    """SIGTERM (systemctl stop, a cancelled CI job), handled like Ctrl-C: the messages in flight are finished
    and recorded, so that a resumed send mails no one twice."""


class _Commands(TyperGroup):
    """Where Typer invokes a command: the one place that turns errors into a line and an exit code."""

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]  # Typer passes its own Context
        try:
            return super().invoke(ctx)
        except DigestError as exc:
            _exit(str(exc), exc.exit_code)
        except sqlite3.OperationalError as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            _exit(f"database: {exc}" + ("; try again later" if busy else ""), 75 if busy else 1)
        except sqlite3.DatabaseError as exc:
            _exit(f"database: {exc}", 1)
        except OSError as exc:  # a file that must be written: disk full, read-only folder, permissions
            if isinstance(exc, BrokenPipeError) and _stdout_closed():
                _silence_stdout()
                raise typer.Exit(EXIT_BROKEN_PIPE) from None
            _exit(f"{exc.filename}: {exc.strerror or exc}" if exc.filename else str(exc.strerror or exc), 1)
        except Terminated:
            _exit("stopped by SIGTERM (what was in flight is recorded; run again to resume)", EXIT_TERMINATED)
        except KeyboardInterrupt:
            _exit("interrupted (what was in flight is recorded; run again to resume)", 130)


def _stdout_closed() -> bool:
    """Whether whoever read stdout has gone (the end of a pipe polls as an error then): a server that hangs
    up mid-send is a BrokenPipeError too, and must stay an error."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), no file descriptor (a test's buffer)
        return False


def _silence_stdout() -> None:
    """What is still buffered for a closed stdout goes to /dev/null as Python exits, not into a second error."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _exit(message: str, code: int) -> None:
    typer.echo(f"error: {redact(message)}" if code not in (130, EXIT_TERMINATED) else redact(message), err=True)
    raise typer.Exit(code)


app = typer.Typer(
    cls=_Commands,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Turn the week's posts from RSS/Atom feeds into an edited email newsletter.",
)


def _say(line: str, *, err: bool = False) -> None:
    typer.echo(redact(line), err=err)


def _warn(line: str) -> None:
    typer.echo(f"warning: {redact(line)}", err=True)


def _version(wanted: bool) -> None:
    if wanted:
        from importlib.metadata import version

        typer.echo(f"digest {version('digest')}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    config: Path = typer.Option(
        Path("feeds.yaml"), "--config", envvar="DIGEST_CONFIG", help="The newsletter's settings and feeds."
    ),
    db: Path | None = typer.Option(
        None, "--db", envvar="DIGEST_DB", show_default="digest.db next to feeds.yaml", help="The SQLite state file."
    ),
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_version, help="Print digest's version and exit."
    ),
) -> None:
    ctx.ensure_object(dict).update(config=config, db=db)


def _config(ctx: typer.Context) -> Config:
    from digest.settings.config import load_config

    config = load_config(ctx.obj["config"])
    for line in config.warnings:
        _warn(line)
    return config


def _db(ctx: typer.Context):
    """The database, closed (WAL checkpointed) when the command ends rather than whenever it is collected."""
    from digest import store
    from digest.settings.config import database_path

    db = store.open_db(database_path(ctx.obj["config"], ctx.obj["db"]))
    ctx.call_on_close(db.close)
    return db


def _subscriber_db(ctx: typer.Context):
    """The database the subscribers commands work on: the newsletter folder's, or the one --db names. Outside
    a folder without --db they refuse, as every other command does, rather than start a ./digest.db."""
    from digest.settings.config import NOT_FOUND

    if ctx.obj["db"] is None and not ctx.obj["config"].is_file():
        raise SetupError(f"{ctx.obj['config']}: {NOT_FOUND}; or name the database with --db or DIGEST_DB")
    return _db(ctx)


def _week(config: Config, week: str | None) -> str:
    from digest.issue.weeks import chosen_week

    try:
        return chosen_week(week, config.newsletter.tz)
    except DigestError as exc:
        raise SetupError(f"--week: {exc}") from None


def _json(data: Any) -> None:
    _say(json.dumps(data, indent=2, default=str))


WEEK = typer.Option(None, "--week", help="ISO week such as 2026-W14 (default: this week).")
AS_JSON = typer.Option(False, "--json", help="Print a JSON summary instead of lines.")


def _status(value: str | None) -> str | None:
    from digest.settings.subscribers import SUBSCRIBER_STATUSES

    if value is not None and value not in SUBSCRIBER_STATUSES:
        raise typer.BadParameter(f"must be one of {', '.join(SUBSCRIBER_STATUSES)}")
    return value


STATUS = typer.Option(
    None, "--status", callback=_status, help="Only this status: active, pending, unsubscribed, bounced or complained."
)


# --- commands -------------------------------------------------------------------------


@app.command()
def init(
    ctx: typer.Context,
    templates: bool = typer.Option(
        False, "--templates", help="Also copy the email's templates into templates/ beside feeds.yaml, to edit."
    ),
) -> None:
    """Write a starter feeds.yaml and subscribers.csv (never overwrites an existing file)."""
    from digest.sample import init_next_steps, starter_files

    for path, written in starter_files(ctx.obj["config"], templates=templates).items():
        _say(f"{path}: {'written' if written else 'exists, left as it is'}")
    for line in init_next_steps(ctx.obj["config"]):
        _say(line)


@app.command()
def collect(ctx: typer.Context, as_json: bool = AS_JSON) -> None:
    """Fetch every feed, store new posts, print a per-feed summary."""
    from digest.feeds.collect import collect as collect_feeds

    config, db = _config(ctx), _db(ctx)
    with _Progress(len(config.feeds), "Collecting", quiet=as_json) as on_feed:
        report = collect_feeds(config, db, on_feed=on_feed)
    if as_json:
        _json(
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
        return None if self.quiet else (lambda feed: _say(_feed_line(feed)))

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
    _say(
        f"{len(report.feeds)} feeds in {report.seconds:.1f} s: {ok} ok, {len(report.failed)} failed, "
        f"{report.new_posts} new posts"
    )
    for feed in report.failed:
        _say(f"  failed: {feed.name} ({feed.url}): {feed.error}")
    for feed in report.feeds:
        if feed.warning:
            _say(f"  warning: {feed.name} ({feed.url}): {feed.warning}")


@app.command()
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

    config = _config(ctx)
    issue_id = _week(config, week)
    report = build_issue(config, _db(ctx), issue_id, force=force)
    if as_json:
        _json(asdict(report))
    else:
        _print_build(report)


def _print_build(report: BuildReport, prefix: str = "") -> None:
    if report.outcome == "empty":
        _say(f"{prefix}{report.issue}: nothing new this week, no draft written: {report.advice}")
    elif report.outcome != "built":
        _say(f"{prefix}{report.issue}: already {report.outcome}, draft left as it is")
    else:
        _say(f"{prefix}{report.issue}: {report.counts}")
        if not prefix:
            _say(f"  draft: {report.draft}")
            _say(f"  html:  {report.html} ({report.html_bytes:,} bytes)")
            _say(f"  text:  {report.text}")
    if report.size_warning:
        _warn(report.size_warning)


@app.command()
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

    config = _config(ctx)
    report = check_issue(config, _db(ctx), _week(config, week), links=links)
    if as_json:
        _json(
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
            _say(str(finding))
        _say(report.summary)
    raise typer.Exit(1 if report.errors else 0)


@app.command()
def feeds(ctx: typer.Context, as_json: bool = AS_JSON) -> None:
    """Feed health: last fetch, status, error, posts, consecutive failures."""
    from digest.feeds.collect import feed_health

    rows = feed_health(_config(ctx), _db(ctx))
    if as_json:
        _json(rows)
        return
    for row in rows:
        state = (
            "never fetched"
            if not row["last_fetched_at"]
            else (f"FAILING x{row['consecutive_failures']}: {row['last_error']}" if row["last_error"] else "ok")
        )
        _say(f"{row['name']} [{row['section']}] {row['url']}")
        _say(
            f"    last fetch {row['last_fetched_at'] or '-'}, HTTP {row['last_status'] or '-'}, "
            f"{row['posts']} posts, {state}"
        )
        if row["last_warning"] and not row["last_error"]:
            _say(f"    warning: {row['last_warning']}")
        if row["redirect_url"]:
            _say(f"    moved permanently to {row['redirect_url']}")


@app.command()
def preview(
    ctx: typer.Context,
    week: str | None = WEEK,
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port on 127.0.0.1 (0 picks a free one)."),
    open_browser: bool = typer.Option(False, "--open", help="Open the preview in the default browser."),
) -> None:
    """Serve the week's draft on 127.0.0.1; the page refreshes itself as the draft or a template changes."""
    from digest.web.preview import PreviewServer

    config = _config(ctx)
    issue_id = _week(config, week)
    try:
        server = PreviewServer(ctx.obj["config"], issue_id, port=port).start()
    except OSError as exc:
        raise SetupError(f"--port: cannot listen on 127.0.0.1:{port}: {exc.strerror}") from None
    _say(f"previewing {issue_id} at {server.url} (Ctrl-C to stop)")
    if server.preview.state.error:
        _say(f"  {server.preview.state.error}")
    if open_browser:
        import webbrowser

        webbrowser.open(server.url)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        _say("stopped")
    finally:
        server.stop()


@app.command()
def demo(
    directory: Path | None = typer.Option(
        None, "--dir", help="A new or empty folder to work in (default: a new temporary folder)."
    ),
) -> None:
    """The whole weekly job, offline, on bundled sample feeds served from a loopback server."""
    from digest.sample import run_demo

    run_demo(directory, say=_say)


# --- send, run, unsubscribe -------------------------------------------------------------


def _listed_backend(name: str | None) -> str | None:
    """--backend takes only the backends offered to people (checked before anything else is asked)."""
    if name is not None:
        from digest.send import backend_class

        backend_class(name, listed_only=True)
    return name


BACKEND = typer.Option(
    None,
    "--backend",
    metavar="NAME",
    show_default=False,
    callback=_listed_backend,
    help="The delivery backend, by name (default: smtp; a wrong name lists the others; see docs/sending.md).",
)
SEND_NOW = typer.Option(
    False, "--send-now", help="For a backend that creates the email first: send it too, not just create it as a draft."
)
YES = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation (required without a terminal).")
ALLOW_CLIPPED = typer.Option(
    False, "--allow-clipped", help="Send even an email past Gmail's ~102 KB clipping limit (refused otherwise)."
)
FORCE = typer.Option(
    False,
    "--force",
    help="Send although the checks found errors (see digest check), or a receipt in the drafts folder says this "
    "issue began sending and the database has no record of it; or give up a Buttondown request whose answer "
    "never came (everyone may get it twice).",
)


def _confirm(yes: bool):
    """The confirmation callback: none with --yes; refused without a terminal to ask on."""
    if yes:
        return None
    if not _terminal():
        raise SetupError(NO_TERMINAL)
    return lambda question: typer.confirm(question)


def _terminal() -> bool:
    """Whether a person can answer a question on stdin."""
    return sys.stdin.isatty()


class _Sending:
    """What a send shows while it runs: the plan's warnings, then a progress bar on a terminal."""

    def __init__(self) -> None:
        self.bar: Any = None

    def on_plan(self, plan: SendPlan) -> None:
        for problem in plan.problems:
            _warn(f"{problem} (not mailed)")
        for finding in plan.check.warnings if plan.check else []:
            _warn(f"{finding.where}: {finding.message}")
        if plan.snapshot_note:
            _warn(plan.snapshot_note)
        if plan.recipients and sys.stdout.isatty():
            self.bar = typer.progressbar(length=len(plan.recipients), label="Sending")

    def on_result(self, key: str, status: str) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def done(self) -> None:
        if self.bar is not None:
            self.bar.render_finish()


@app.command("send")
def send_command(
    ctx: typer.Context,
    week: str | None = WEEK,
    backend: str | None = BACKEND,
    to: str | None = typer.Option(None, "--to", help="Send one test copy to this address; records nothing."),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Write sample .eml files (or the backend's request) to drafts/<week>.dry-run/; send nothing.",
    ),
    send_now: bool = SEND_NOW,
    yes: bool = YES,
    allow_clipped: bool = ALLOW_CLIPPED,
    force: bool = FORCE,
) -> None:
    """Send exactly what drafts/<week>.yaml says. A re-run resumes; an issue already sent is not sent again."""
    from digest.send import sending

    config = _config(ctx)
    issue_id = _week(config, week)
    if to and dry_run:
        raise SetupError("--to sends one test copy; it does not go with --dry-run")
    if to:
        reply = sending.send_test_copy(config, issue_id, to, backend=backend)
        _say(f"{issue_id}: test copy sent to {to} ({reply}); nothing recorded")
        return
    if dry_run:
        plan, paths = sending.dry_run_issue(config, _db(ctx), issue_id, backend=backend, send_now=send_now)
        for problem in plan.problems:
            _warn(f"{problem} (not mailed)")
        if plan.done:
            _say(plan.done)
            return
        for warning in plan.warnings:
            _warn(warning)
        _say(f"{issue_id}: dry run, nothing sent; wrote {len(paths)} file(s) to {paths[0].parent}")
        for path in paths:
            _say(f"  {path.name}")
        return
    confirm = _confirm(yes)
    shown = _Sending()
    try:
        report = sending.send_issue(
            config,
            _db(ctx),
            issue_id,
            backend=backend,
            confirm=confirm,
            send_now=send_now,
            allow_clipped=allow_clipped,
            force=force,
            on_plan=shown.on_plan,
            on_result=shown.on_result,
        )
    finally:
        shown.done()
    for line in report.lines:
        _say(line)
    raise typer.Exit(report.exit_code)


@app.command()
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

    config = _config(ctx)
    confirm = _confirm(yes)
    shown = _Sending()
    quiet = not sys.stdout.isatty()
    told: set[str] = set()

    def tell(step: WeekReport) -> None:
        """Each step as soon as it is done: a send that fails afterwards must not hide what came before."""
        if step.resumed and "resumed" not in told:
            _say(f"{step.issue}: an earlier run began sending it; resuming, without collecting or building")
        if step.collected is not None and "collected" not in told:
            _print_collect_summary(step.collected)
        if step.built is not None and "built" not in told:
            if step.built.outcome == "empty":
                _say(f"build {step.issue}: nothing new this week, nothing sent: {step.built.advice}")
            else:
                _print_build(step.built, prefix="build ")
        if step.approval is not None and "approval" not in told:
            for line in step.approval.lines:
                _say(line)
            for finding in step.approval.check.warnings if step.approval.check else []:
                _warn(f"{finding.where}: {finding.message}")
        told.update(name for name in ("resumed", "collected", "built", "approval") if getattr(step, name))

    try:
        with _Progress(len(config.feeds), "Collecting", quiet=quiet) as on_feed:
            report = run_week(
                config,
                _db(ctx),
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
        _say(report.done)
    for line in report.sent.lines if report.sent is not None else []:
        _say(line)
    if report.published is not None:
        _print_publish(report.published)
    if report.problem:
        _exit(report.problem, report.exit_code)
    raise typer.Exit(report.exit_code)


@app.command()
def unsubscribe(
    ctx: typer.Context,
    address: str = typer.Argument(..., metavar="ADDRESS", help="The address, or the token of an unsubscribe link."),
) -> None:
    """Never mail an address again; this wins over subscribers.csv."""
    from digest.jobs import unsubscribe as unsubscribe_address

    email, new = unsubscribe_address(_config(ctx), _db(ctx), address)
    _say(f"{email}: unsubscribed" if new else f"{email}: already unsubscribed or bounced, nothing to do")


@app.command()
def status(ctx: typer.Context, week: str | None = WEEK, as_json: bool = AS_JSON) -> None:
    """Where the week's issue stands: collected, built, checked, approved, sending, sent, with counts."""
    from digest import jobs

    config = _config(ctx)
    facts = jobs.week_status(config, _db(ctx), _week(config, week))
    if as_json:
        _json(asdict(facts))
        return
    for line in jobs.week_status_lines(facts):
        _say(line)


@app.command()
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

    config = _config(ctx)
    issue_id = _week(config, week)
    digest, check = approve_issue(config, _db(ctx), issue_id, now=datetime.now(UTC), force=force)
    for finding in check.findings:
        _say(str(finding))
    _say(f"{issue_id}: approved (draft {digest[:12]}); the next digest run sends it")


# --- the web side: publish, serve -------------------------------------------------------------


@app.command()
def publish(
    ctx: typer.Context,
    out: Path | None = typer.Option(
        None, "--out", show_default="publish.dir, else site/ beside feeds.yaml", help="The folder to write."
    ),
) -> None:
    """Write the static archive: index.html, issues/<issue>/, feed.xml (Atom) and feed.json; only what changed."""
    from digest.web.publish import publish as publish_site

    report = publish_site(_config(ctx), _db(ctx), out=out)
    _print_publish(report)


def _print_publish(report, prefix: str = "") -> None:
    _say(
        f"{prefix}published {report.issues} issue(s) to {report.out}: {len(report.written)} file(s) written, "
        f"{report.unchanged} unchanged"
    )
    for warning in report.warnings:
        _warn(warning)


@app.command()
def serve(
    ctx: typer.Context,
    host: str | None = typer.Option(
        None, "--host", show_default="serve.host, else 127.0.0.1", help="Address to listen on."
    ),
    port: int | None = typer.Option(
        None, "--port", min=0, max=65535, show_default="serve.port, else 8080", help="Port to listen on."
    ),
) -> None:
    """Serve the archive, signup with double opt-in, confirmation and one-click unsubscribe (behind a proxy)."""
    from digest.settings.config import database_path
    from digest.web.app import serve as serve_web

    config = _config(ctx)
    if config.serve is None:
        raise SetupError(f"{config.path}: add a serve: section (and newsletter.site_url) to use digest serve")
    host, port = host or config.serve.host, config.serve.port if port is None else port
    try:
        serve_web(
            config,
            database_path(ctx.obj["config"], ctx.obj["db"]),
            host=host,
            port=port,
            on_ready=lambda address: _say(f"serving {config.newsletter.site_url} on {address} (Ctrl-C to stop)"),
        )
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM from systemctl stop (uvicorn finished the requests first)
        _say("stopped")


# --- the list of subscribers -------------------------------------------------------------------

subscribers_app = typer.Typer(
    cls=_Commands, no_args_is_help=True, help="The list of subscribers, kept in the database: import, export, list."
)
app.add_typer(subscribers_app, name="subscribers")


@subscribers_app.command("import")
def subscribers_import(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="Our CSV, or an export of Buttondown, Mailchimp, Substack or listmonk."),
) -> None:
    """Add or update subscribers from a file; an unsubscribe, bounce or complaint in the database always wins."""
    from digest.jobs import import_subscribers

    report = import_subscribers(_subscriber_db(ctx), file)
    for problem in report.problems:
        _warn(f"{problem} (skipped)")
    changes = report.changes
    kept = "".join(f"; {count} kept {status}" for status, count in sorted(changes.kept.items()))
    _say(
        f"{file}: {report.format} format, {report.read} subscriber(s): {changes.added} added, "
        f"{changes.updated} updated, {changes.unchanged} unchanged{kept}; {len(report.problems)} row(s) skipped"
    )


@subscribers_app.command("export")
def subscribers_export(
    ctx: typer.Context,
    out: Path | None = typer.Option(None, "--out", help="Write to this file (default: standard output)."),
    status: str | None = STATUS,
) -> None:
    """Write the subscribers as CSV (email, name, status, source, joined_at, consent_at)."""
    from digest.issue.draft import write_atomically
    from digest.jobs import export_subscribers

    if out is None:
        export_subscribers(_subscriber_db(ctx), sys.stdout, status=status)
        return
    buffer = io.StringIO()
    count = export_subscribers(_subscriber_db(ctx), buffer, status=status)
    write_atomically(out, buffer.getvalue())
    _say(f"{out}: {count} subscriber(s)", err=True)


@subscribers_app.command("list")
def subscribers_list(ctx: typer.Context, status: str | None = STATUS, as_json: bool = AS_JSON) -> None:
    """Show the subscribers: address, name, status, how and when they joined."""
    from digest.store import subscriber_list

    rows = list(subscriber_list(_subscriber_db(ctx), status))
    if as_json:
        _json(rows)
        return
    for row in rows:
        name = f" ({row['name']})" if row["name"] else ""
        _say(f"{row['email']}{name}: {row['status']}, joined {row['joined_at']} by {row['source']}")
    counts = Counter(row["status"] for row in rows)
    _say(f"{len(rows)} subscriber(s)" + "".join(f", {count} {name}" for name, count in sorted(counts.items())))


def _terminate(signum, frame) -> None:
    raise Terminated()


def main() -> None:
    """The console script: SIGTERM is handled like Ctrl-C (see Terminated), then Typer runs the command."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    finally:  # output that fit in stdout's buffer meets a closed pipe only here, as Python exits
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _silence_stdout()
            sys.exit(EXIT_BROKEN_PIPE)
