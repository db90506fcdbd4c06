"""The Typer app and what every command shares: the group that turns errors into one line and an exit code, the
global options, and the helpers that read the settings, open the database and print. The command modules
import these by name; they are the package's internal API."""

from __future__ import annotations

import json
import os
import select
import sqlite3
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperGroup

from digest.credentials import redact_printed
from digest.errors import DigestError, SetupError

if TYPE_CHECKING:
    from digest.settings.config import Config

EXIT_TERMINATED = 143  # stopped by SIGTERM (128 + 15), as a shell reports a process it terminated
# stdout closed early (`digest feeds | head`): 128 + SIGPIPE, what `grep` or `git log` give there. Not 0: the
# output was cut short, which a script with `set -o pipefail` should hear; a shell without it ignores it.
EXIT_BROKEN_PIPE = 141


class Terminated(KeyboardInterrupt):
    """SIGTERM (systemctl stop, a cancelled CI job), handled like Ctrl-C: the messages in flight are finished
    and recorded, so that a resumed send mails no one twice."""


class Commands(TyperGroup):
    """Where Typer invokes a command: the one place that turns errors into a line and an exit code."""

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]  # Typer passes its own Context
        try:
            return super().invoke(ctx)
        except DigestError as exc:
            fail(str(exc), exc.exit_code)
        except sqlite3.OperationalError as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            fail(f"database: {exc}" + ("; try again later" if busy else ""), 75 if busy else 1)
        except sqlite3.DatabaseError as exc:
            fail(f"database: {exc}", 1)
        except OSError as exc:  # a file that must be written: disk full, read-only folder, permissions
            if isinstance(exc, BrokenPipeError) and _stdout_closed():
                silence_stdout()
                raise typer.Exit(EXIT_BROKEN_PIPE) from None
            fail(f"{exc.filename}: {exc.strerror or exc}" if exc.filename else str(exc.strerror or exc), 1)
        except Terminated:
            fail("stopped by SIGTERM (what was in flight is recorded; run again to resume)", EXIT_TERMINATED)
        except KeyboardInterrupt:
            fail("interrupted (what was in flight is recorded; run again to resume)", 130)


def _stdout_closed() -> bool:
    """Whether whoever read stdout has gone (the end of a pipe polls as an error then): a server that hangs
    up mid-send is a BrokenPipeError too, and must stay an error."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), no file descriptor (a test's buffer)
        return False


def silence_stdout() -> None:
    """What is still buffered for a closed stdout goes to /dev/null as Python exits, not into a second error."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def fail(message: str, code: int) -> None:
    typer.echo(
        f"error: {redact_printed(message)}" if code not in (130, EXIT_TERMINATED) else redact_printed(message), err=True
    )
    raise typer.Exit(code)


app = typer.Typer(
    cls=Commands,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Turn the week's posts from RSS/Atom feeds into an edited email newsletter.",
)


def say(line: str, *, err: bool = False) -> None:
    typer.echo(redact_printed(line), err=err)


def warn(line: str) -> None:
    typer.echo(f"warning: {redact_printed(line)}", err=True)


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


def read_config(ctx: typer.Context) -> Config:
    from digest.jobs import load_config

    config = load_config(ctx.obj["config"])
    for line in config.warnings:
        warn(line)
    ctx.obj["loaded"] = config  # for db_path: a database --db names is checked against the published folder
    return config


def open_db(ctx: typer.Context):
    """The database, closed (WAL checkpointed) when the command ends rather than whenever it is collected."""
    from digest import store

    db = store.open_db(db_path(ctx))
    ctx.call_on_close(db.close)
    return db


def db_path(ctx: typer.Context) -> Path:
    """The database's file (--db, DIGEST_DB, else digest.db next to feeds.yaml), refused in a missing folder as
    a mistake in the setting that named it, rather than as the operating system's "No such file or directory"."""
    from digest.settings.config import database_path

    path = database_path(ctx.obj["config"], ctx.obj["db"])
    if not path.parent.is_dir():
        named = "the database next to feeds.yaml"
        if ctx.obj["db"] is not None:
            source = ctx.find_root().get_parameter_source("db")  # an option of the group, not of the command
            named = "DIGEST_DB" if getattr(source, "name", "") == "ENVIRONMENT" else "--db"
        raise SetupError(f"{named} {path}: no folder {path.parent}; create it, or name another file")
    if ctx.obj["db"] is not None and "loaded" in ctx.obj:
        from digest.settings.folders import check_database_apart

        check_database_apart(ctx.obj["loaded"], path)  # load_config checked the default digest.db only
    return path


def issue_week(config: Config, week: str | None) -> str:
    """The issue --week names (or this week's), an unreadable one refused as a mistake in --week."""
    from digest.issue.weeks import chosen_week

    try:
        return chosen_week(week, config.newsletter.tz)
    except DigestError as exc:
        raise SetupError(f"--week: {exc}") from None


def print_json(data: Any) -> None:
    say(json.dumps(data, indent=2, default=str))


WEEK = typer.Option(None, "--week", help="ISO week such as 2026-W14 (default: this week).")
AS_JSON = typer.Option(False, "--json", help="Print a JSON summary instead of lines.")
