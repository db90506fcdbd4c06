"""`digest subscribers`: the sub-app that imports, exports and lists the subscribers kept in the database. It
works on a database alone (--db), without the newsletter's settings, unlike the other commands."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import typer

from digest.cli.app import AS_JSON, Commands, open_db, say, warn
from digest.errors import SetupError


def _subscriber_db(ctx: typer.Context):
    """The database the subscribers commands work on: the newsletter folder's, or the one --db names. Outside
    a folder without --db they refuse, as every other command does, rather than start a ./digest.db."""
    from digest.settings.config import NOT_FOUND

    if ctx.obj["db"] is None and not ctx.obj["config"].is_file():
        raise SetupError(f"{ctx.obj['config']}: {NOT_FOUND}; or name the database with --db or DIGEST_DB")
    return open_db(ctx)


def _status(value: str | None) -> str | None:
    from digest.settings.subscribers import SUBSCRIBER_STATUSES

    if value is not None and value not in SUBSCRIBER_STATUSES:
        raise typer.BadParameter(f"must be one of {', '.join(SUBSCRIBER_STATUSES)}")
    return value


STATUS = typer.Option(
    None, "--status", callback=_status, help="Only this status: active, pending, unsubscribed, bounced or complained."
)

subscribers_app = typer.Typer(
    cls=Commands, no_args_is_help=True, help="The list of subscribers, kept in the database: import, export, list."
)


@subscribers_app.command("import")
def subscribers_import(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="Our CSV, or an export of Buttondown, Mailchimp, Substack or listmonk."),
) -> None:
    """Add or update subscribers from a file; an unsubscribe, bounce or complaint in the database always wins."""
    from digest.jobs import import_subscribers

    report = import_subscribers(_subscriber_db(ctx), file)
    for problem in report.problems:
        warn(f"{problem} (skipped)")
    changes = report.changes
    kept = "".join(f"; {count} kept {status}" for status, count in sorted(changes.kept.items()))
    say(
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
    from digest.jobs import export_subscribers

    if out is None:
        export_subscribers(_subscriber_db(ctx), sys.stdout, status=status)
        return
    count = _export_to_file(_subscriber_db(ctx), out, status)
    say(f"{out}: {count} subscriber(s)", err=True)


def _export_to_file(db, out: Path, status: str | None) -> int:
    """The export written row by row into a temporary file beside `out` (readable by its owner only: it holds
    every address), which then replaces `out` in one step: a kill never leaves half a list, and the list is
    never held in memory (a million subscribers: about 80 MB of text)."""
    from digest.jobs import export_subscribers

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    except OSError as exc:
        raise SetupError(f"--out {out}: cannot write there: {exc.strerror or exc}") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
            count = export_subscribers(db, stream, status=status)
        os.replace(temporary, out)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise SetupError(f"--out {out}: cannot write there: {exc.strerror or exc}") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return count


@subscribers_app.command("list")
def subscribers_list(ctx: typer.Context, status: str | None = STATUS, as_json: bool = AS_JSON) -> None:
    """Show the subscribers: address, name, status, how and when they joined."""
    from digest.store import subscriber_list

    rows = subscriber_list(_subscriber_db(ctx), status)
    with _Lines() as out:
        if as_json:
            _json_array(rows, out)
            return
        counts: Counter[str] = Counter()
        for row in rows:
            name = f" ({row['name']})" if row["name"] else ""
            out.line(f"{row['email']}{name}: {row['status']}, joined {row['joined_at']} by {row['source']}")
            counts[row["status"]] += 1
        total = sum(counts.values())
        out.line(f"{total} subscriber(s)" + "".join(f", {count} {name}" for name, count in sorted(counts.items())))


def _json_array(rows: Iterator[dict], out: _Lines) -> None:
    """The rows as one JSON array, as print_json writes it (indented by 2), written one row at a time: at a
    million subscribers, the list and its text held 2.39 GB."""
    encode = json.JSONEncoder(indent=2, default=str).encode
    previous = None
    for row in rows:
        if previous is None:
            out.line("[")
        else:
            out.line(previous + ",")
        previous = "  " + encode(row).replace("\n", "\n  ")  # no line break inside a value: JSON escapes it
    out.line("[]" if previous is None else f"{previous}\n]")


class _Lines:
    """Lines printed as `say` prints them (secrets taken out), a block of about 64 KB at a time: one write a
    line would be a million writes for a million subscribers."""

    BLOCK = 1 << 16

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.size = 0

    def line(self, text: str) -> None:
        self.lines.append(text)
        self.size += len(text) + 1
        if self.size >= self.BLOCK:
            self.flush()

    def flush(self) -> None:
        if self.lines:
            say("\n".join(self.lines))
            self.lines, self.size = [], 0

    def __enter__(self) -> _Lines:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.flush()
