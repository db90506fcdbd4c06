"""The `digest` command: parse options, call the functions of the stages, print what happened."""

from __future__ import annotations

import json
import signal
import sqlite3
import sys
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional

import typer

from . import jobs, store
from .config import Config, ConfigError, load_config
from .lock import Busy, hold
from .send import SendError, SendReport, SetupError, redact
from .weeks import BadWeek, current_week, parse_week

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Turn the week's posts from RSS/Atom feeds into an edited email newsletter.")

EXIT_FAILED = 1  # the work failed: every feed, the SMTP server or Buttondown; or the confirmation was declined
EXIT_BAD_INPUT = 2  # a file or an option: one line names it, nothing was changed
EXIT_TEMPFAIL = 75  # try again later: another run holds the lock, or deliveries are still pending
EXIT_TERMINATED = 143  # stopped by SIGTERM (128 + 15), like the shell reports a process it terminated


class UserError(Exception):
    """A one-line problem for the user; the CLI prints it and exits 2."""


def _paths(ctx: typer.Context) -> dict:
    return ctx.ensure_object(dict)


@app.callback()
def main_options(
    ctx: typer.Context,
    config: Path = typer.Option(Path("feeds.yaml"), "--config", envvar="DIGEST_CONFIG",
                                help="The newsletter's settings and feeds."),
    db: Optional[Path] = typer.Option(None, "--db", envvar="DIGEST_DB", show_default="digest.db next to feeds.yaml",
                                      help="The SQLite state file."),
) -> None:
    # Next to feeds.yaml, not in the current folder: a command run from elsewhere must find the same
    # ledger and unsubscribes, or it would mail everyone again.
    _paths(ctx).update(config=config, db=db or config.parent / "digest.db")


def _config(ctx: typer.Context) -> Config:
    return load_config(_paths(ctx)["config"])


def _db(ctx: typer.Context):
    """The database, closed (WAL checkpointed) when the command ends rather than whenever it is collected."""
    db = store.open_db(_paths(ctx)["db"])
    ctx.call_on_close(db.close)
    return db


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
    if report.all_failed:
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
    news = f"{feed.new_posts} new" if feed.outcome == "new" else "unchanged"
    return f"ok      {feed.name}: {news}" + (f"; warning: {feed.warning}" if feed.warning else "")


def _print_collect_summary(report: jobs.CollectReport) -> None:
    ok = len(report.feeds) - len(report.failed)
    _say(f"{len(report.feeds)} feeds in {report.seconds:.1f} s: {ok} ok, {len(report.failed)} failed, "
         f"{report.new_posts} new posts")
    for feed in report.failed:
        _say(f"  failed: {feed.name} ({feed.url}): {feed.error}")
    for feed in report.feeds:
        if feed.warning:
            _say(f"  warning: {feed.name} ({feed.url}): {feed.warning}")


@app.command()
def build(ctx: typer.Context,
          week: Optional[str] = typer.Option(None, "--week", help="ISO week such as 2026-W14 (default: this week)."),
          as_json: bool = typer.Option(False, "--json", help="Print a JSON summary.")) -> None:
    """Write drafts/<week>.yaml with the week's posts, and render it to .html and .txt."""
    config = _config(ctx)
    issue_id = _week(config, week)
    db = _db(ctx)
    with _send_errors(), hold(_paths(ctx)["db"]):  # never while a send reads the issue and marks its posts
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
        _say(f"{report.issue}: {_build_counts(report)}")
        _say(f"  draft: {report.draft}")
        _say(f"  html:  {report.html} ({report.html_bytes:,} bytes)")
        _say(f"  text:  {report.text}")
    if report.size_warning:
        typer.echo(f"warning: {report.size_warning}", err=True)


def _build_counts(report: jobs.BuildReport) -> str:
    """"27 items (3 new since the last build); held back in the draft: 12 over max_items, 2 stale"."""
    line = f"{report.items} items ({report.new_items} new since the last build)"
    held = [f"{report.held_more} over their feed's max_items"] if report.held_more else []
    held += [f"{report.held_stale} stale"] if report.held_stale else []
    if held:
        line += "; held back in the draft: " + ", ".join(held)
    if report.already:
        line += f"; {report.already} new posts whose link the draft already holds"
    return line


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
                     "last_error": row.get("last_error"), "last_warning": row.get("last_warning"),
                     "posts": row.get("posts", 0),
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
        if row["last_warning"] and not row["last_error"]:
            _say(f"    warning: {row['last_warning']}")
        if row["redirect_url"]:
            _say(f"    moved permanently to {row['redirect_url']}")


@app.command()
def preview(ctx: typer.Context,
            week: Optional[str] = typer.Option(None, "--week", help="ISO week such as 2026-W14 (default: this week)."),
            port: int = typer.Option(8000, "--port", min=0, max=65535,
                                     help="Port on 127.0.0.1 (0 picks a free one)."),
            open_browser: bool = typer.Option(False, "--open", help="Open the preview in the default browser.")) -> None:
    """Serve the week's draft on 127.0.0.1; the page refreshes itself as the draft or a template changes."""
    from .preview import PreviewServer

    config = _config(ctx)
    issue_id = _week(config, week)
    try:
        server = PreviewServer(_paths(ctx)["config"], issue_id, port=port).start()
    except OSError as exc:
        raise UserError(f"--port: cannot listen on 127.0.0.1:{port}: {exc.strerror}") from None
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
def demo(directory: Optional[Path] = typer.Option(
        None, "--dir", help="A new or empty folder to work in (default: a new temporary folder).")) -> None:
    """The whole weekly job, offline, on bundled sample feeds served from a loopback server."""
    from .sample import DemoError, run_demo

    try:
        run_demo(directory, say=_say)
    except DemoError as exc:
        raise UserError(str(exc)) from None


# --- send, run, unsubscribe -------------------------------------------------------------

NO_TERMINAL = "no terminal to ask for confirmation: add --yes to send without asking"


@contextmanager
def _send_errors() -> Iterator[None]:
    """Sending's failures as one line each: bad input exits 2, a backend failure 1, a held lock 75."""
    try:
        yield
    except SetupError as exc:
        raise UserError(str(exc)) from None
    except Busy as exc:
        _fail(str(exc), EXIT_TEMPFAIL)
    except SendError as exc:
        _fail(str(exc), EXIT_FAILED)


def _fail(message: str, code: int) -> None:
    typer.echo(f"error: {redact(message)}", err=True)
    raise typer.Exit(code)


def _backend(name: str, send_now: bool) -> str:
    if name not in jobs.BACKENDS:
        raise UserError(f"--backend: {name!r} is not one of {', '.join(jobs.BACKENDS)}")
    if send_now and name != "buttondown":
        raise UserError("--send-now is for --backend buttondown (smtp always sends)")
    return name


BACKEND = typer.Option("smtp", "--backend", help="smtp, or buttondown (creates the email there).")
SEND_NOW = typer.Option(False, "--send-now", help="buttondown: send the email, not just create a draft.")
YES = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation (required without a terminal).")
ALLOW_CLIPPED = typer.Option(False, "--allow-clipped",
                             help="Send even an email past Gmail's ~102 KB clipping limit (refused otherwise).")
FORCE = typer.Option(False, "--force", help="Send although the drafts folder's receipt says this issue began "
                                           "sending and the database has no record of it (everyone may get it twice).")


@app.command("send")
def send_command(
    ctx: typer.Context,
    week: Optional[str] = typer.Option(None, "--week", help="ISO week such as 2026-W14 (default: this week)."),
    backend: str = BACKEND,
    to: Optional[str] = typer.Option(None, "--to", help="Send one test copy to this address (smtp); records nothing."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Write sample .eml files (or the Buttondown request) "
                                                          "to drafts/<week>.dry-run/; send nothing."),
    send_now: bool = SEND_NOW,
    yes: bool = YES,
    allow_clipped: bool = ALLOW_CLIPPED,
    force: bool = FORCE,
) -> None:
    """Send exactly what drafts/<week>.yaml says. A re-run resumes; an issue already sent is not sent again."""
    config = _config(ctx)
    issue_id = _week(config, week)
    backend = _backend(backend, send_now)
    if to and (dry_run or backend != "smtp"):
        raise UserError("--to sends one test copy over smtp; it goes with neither --dry-run nor --backend buttondown")
    with _send_errors():
        if to:
            reply = jobs.send_test(config, issue_id, to)
            _say(f"{issue_id}: test copy sent to {to} ({reply}); nothing recorded")
            return
        db = _db(ctx)
        if dry_run:
            plan = jobs.plan_send(config, db, issue_id, backend, send_now=send_now, dry_run=True)
            _warn_problems(plan)
            if plan.done:
                _say(plan.done)
                return
            if plan.clipped:
                typer.echo(f"warning: the email is {plan.html_bytes / 1024:.0f} KB of HTML: Gmail would clip it, "
                           f"and a real send refuses it without --allow-clipped", err=True)
            paths = jobs.dry_run(config, plan, send_now=send_now)
            _say(f"{issue_id}: dry run, nothing sent; wrote {len(paths)} file(s) to {paths[0].parent}")
            for path in paths:
                _say(f"  {path.name}")
            return
        with hold(_paths(ctx)["db"]):
            code = _send(config, db, issue_id, backend, yes=yes, send_now=send_now, allow_clipped=allow_clipped,
                         force=force)
    if code:
        raise typer.Exit(code)


@app.command()
def run(ctx: typer.Context, backend: str = BACKEND, send_now: bool = SEND_NOW, yes: bool = YES,
        allow_clipped: bool = ALLOW_CLIPPED, force: bool = FORCE) -> None:
    """The weekly job (cron, a systemd timer, CI): collect, build and send this week's issue.

    Safe to run twice (an issue already sent is left alone) and never twice at once (exit 75).
    Exit codes: 0 done or nothing to do, 1 the backend failed or every feed failed, 2 bad input,
    75 try again later.
    """
    config = _config(ctx)
    issue_id = _week(config, None)
    backend = _backend(backend, send_now)
    if not yes and not sys.stdin.isatty():
        raise UserError(NO_TERMINAL)
    db = _db(ctx)
    feeds_down = False  # every feed failed: the issue holds only what earlier collects found
    with _send_errors():
        with hold(_paths(ctx)["db"]):
            done = jobs.issue_done(db, issue_id, backend, send_now=send_now)
            if done:
                _say(done)
                return
            if not force:
                jobs.check_receipt(config, db, issue_id)  # before collecting into the draft of a lost send
            if jobs.sending_began(db, issue_id):
                _say(f"{issue_id}: an earlier run began sending it; resuming, without collecting or building")
            else:
                collected = _collect_with_progress(config, db, quiet=not sys.stdout.isatty())
                _print_collect_summary(collected)
                feeds_down = collected.all_failed
                built = jobs.build(config, db, issue_id)
                if built.outcome == "empty":
                    _say(f"build {issue_id}: nothing new this week, nothing sent")
                    if feeds_down:
                        _fail("every feed failed: nothing was collected", EXIT_FAILED)
                    return
                _say(f"build {issue_id}: {_build_counts(built)}")
                if built.size_warning:
                    typer.echo(f"warning: {built.size_warning}", err=True)
            code = _send(config, db, issue_id, backend, yes=yes, send_now=send_now, allow_clipped=allow_clipped,
                         force=force)
    if feeds_down and not code:
        _fail("every feed failed this time: the issue holds only posts collected earlier", EXIT_FAILED)
    if code:
        raise typer.Exit(code)


def _send(config: Config, db, issue_id: str, backend: str, *, yes: bool, send_now: bool, allow_clipped: bool,
          force: bool) -> int:
    """Plan, confirm, send, summarize; returns the exit code."""
    plan = jobs.plan_send(config, db, issue_id, backend, send_now=send_now, allow_clipped=allow_clipped, force=force)
    _warn_problems(plan)
    if plan.snapshot_note:
        typer.echo(f"warning: {plan.snapshot_note}", err=True)
    if plan.done:
        _say(plan.done)
        return 0
    bar = None
    if backend == "smtp" and sys.stdout.isatty() and plan.recipients:
        bar = typer.progressbar(length=len(plan.recipients), label="Sending")
    chosen = jobs.backend_for(config, plan, send_now=send_now, on_result=bar and (lambda *_: bar.update(1)))
    if not yes:
        _confirm(plan, send_now)
    with bar or nullcontext():
        report = jobs.send(config, db, plan, chosen)
    _print_send(plan, report)
    return EXIT_TEMPFAIL if report.pending or report.returned_to_draft else 0


def _confirm(plan: jobs.SendPlan, send_now: bool) -> None:
    if not sys.stdin.isatty():
        raise UserError(NO_TERMINAL)
    if plan.backend == "smtp":
        whom = f"{len(plan.recipients):,} subscribers"
    else:
        whom = "every Buttondown subscriber (sent now)" if send_now else "Buttondown (as a draft)"
    if not typer.confirm(f"Send {plan.issue} “{plan.draft.subject}” to {whom}?"):
        raise typer.Abort()


def _warn_problems(plan: jobs.SendPlan) -> None:
    for problem in plan.problems:
        typer.echo(f"warning: {problem} (not mailed)", err=True)


def _print_send(plan: jobs.SendPlan, report: SendReport) -> None:
    if report.backend == "buttondown":
        state = "handed over for sending" if report.complete else "created as a draft"
        _say(f"send {report.issue} via buttondown: {state}, id {report.remote_id}")
        return
    notes = [f"{plan.already:,} had it already"] if plan.already else []
    notes += [f"{count:,} {reason}" for reason, count in sorted(plan.not_mailed.items())]
    if report.resent:
        notes.append(f"{report.resent} in flight when the last run stopped, sent again")
    _say(f"send {report.issue} via smtp: {report.sent:,} sent, {report.failed:,} failed, {report.pending:,} pending "
         f"in {report.seconds:.1f} s" + (f" ({'; '.join(notes)})" if notes else ""))
    for address, reply in report.failures:
        _say(f"  failed: {address}: {reply}")
    if report.returned_to_draft:
        _say(f"  nothing was delivered ({report.last_error}): {report.issue} is a draft again; run again later")
    elif report.pending:
        _say(f"  still pending, last error: {report.last_error}; run again later to resume")


@app.command()
def unsubscribe(ctx: typer.Context, address: str = typer.Argument(
        ..., metavar="ADDRESS", help="The address, or the token of an unsubscribe link.")) -> None:
    """Never mail an address again; this wins over subscribers.csv."""
    config = _config(ctx)
    with _send_errors():
        email, new = jobs.unsubscribe(config, _db(ctx), address)
    _say(f"{email}: unsubscribed" if new else f"{email}: already unsubscribed or bounced, nothing to do")


class Terminated(KeyboardInterrupt):
    """SIGTERM (systemctl stop, a CI job cancelled): handled like Ctrl-C, so that messages in flight are
    finished and recorded, and a resumed send mails no one twice."""


_TERMINATED = threading.Event()


def _terminate(signum, frame) -> None:
    _TERMINATED.set()  # Typer turns every KeyboardInterrupt into exit code 130: this tells SIGTERM apart
    raise Terminated()


def main() -> None:
    """Entry point: bad input ends in one line on stderr and exit code 2, never a traceback."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        result = app(standalone_mode=False)
    except (ConfigError, UserError) as exc:
        typer.echo(f"error: {redact(str(exc))}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except sqlite3.OperationalError as exc:
        busy = "locked" in str(exc) or "busy" in str(exc)
        typer.echo(f"error: database: {exc}" + ("; try again later" if busy else ""), err=True)
        sys.exit(EXIT_TEMPFAIL if busy else EXIT_FAILED)
    except sqlite3.DatabaseError as exc:
        typer.echo(f"error: database: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    except OSError as exc:  # a file we must write: disk full, read-only folder, permissions
        where = f"{exc.filename}: " if exc.filename else ""
        typer.echo(f"error: {where}{exc.strerror or exc}", err=True)
        sys.exit(EXIT_FAILED)
    except typer.Abort:  # the confirmation was declined (or its prompt got Ctrl-C or end of input)
        typer.echo("aborted, nothing sent", err=True)
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:  # outside a command (Typer answers inside with 130)
        terminated = _TERMINATED.is_set()
        typer.echo("stopped by SIGTERM" if terminated else "interrupted", err=True)
        sys.exit(EXIT_TERMINATED if terminated else 130)
    except Exception as exc:
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # Typer's usage errors: unknown option...
            exc.show()
            sys.exit(EXIT_BAD_INPUT)
        raise
    if _TERMINATED.is_set():
        typer.echo("stopped by SIGTERM (what was in flight is recorded; run again to resume)", err=True)
        sys.exit(EXIT_TERMINATED)
    if result == 130:  # Typer's answer to Ctrl-C
        typer.echo("interrupted (what was in flight is recorded; run again to resume)", err=True)
    sys.exit(result if isinstance(result, int) else 0)
