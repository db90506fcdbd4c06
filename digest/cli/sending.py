"""The commands that mail or stop mailing: send and unsubscribe. The send options, the confirmation and the
progress shown while sending are here too, and `run` (week.py) takes them from here, since it ends in a send."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import typer

from digest.cli.app import WEEK, issue_week, open_db, read_config, say, warn
from digest.errors import SetupError

if TYPE_CHECKING:
    from digest.send import SendPlan

NO_TERMINAL = "no terminal to ask for confirmation: add --yes to send without asking"


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


def confirmation(yes: bool):
    """The confirmation callback: none with --yes; refused without a terminal to ask on."""
    if yes:
        return None
    if not terminal():
        raise SetupError(NO_TERMINAL)
    return lambda question: typer.confirm(question)


def terminal() -> bool:
    """Whether a person can answer a question on stdin."""
    return sys.stdin.isatty()


class Sending:
    """What a send shows while it runs: the plan's warnings, then a progress bar on a terminal."""

    def __init__(self) -> None:
        self.bar: Any = None

    def on_plan(self, plan: SendPlan) -> None:
        for problem in plan.problems:
            warn(f"{problem} (not mailed)")
        for finding in plan.check.warnings if plan.check else []:
            warn(f"{finding.where}: {finding.message}")
        if plan.snapshot_note:
            warn(plan.snapshot_note)
        if plan.recipients and sys.stdout.isatty():
            self.bar = typer.progressbar(length=len(plan.recipients), label="Sending")

    def on_result(self, key: str, status: str) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def done(self) -> None:
        if self.bar is not None:
            self.bar.render_finish()


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

    config = read_config(ctx)
    issue_id = issue_week(config, week)
    if to and dry_run:
        raise SetupError("--to sends one test copy; it does not go with --dry-run")
    if to:
        reply = sending.send_test_copy(config, issue_id, to, backend=backend)
        say(f"{issue_id}: test copy sent to {to} ({reply}); nothing recorded")
        return
    if dry_run:
        plan, paths = sending.dry_run_issue(config, open_db(ctx), issue_id, backend=backend, send_now=send_now)
        for problem in plan.problems:
            warn(f"{problem} (not mailed)")
        if plan.done:
            say(plan.done)
            return
        for warning in plan.warnings:
            warn(warning)
        say(f"{issue_id}: dry run, nothing sent; wrote {len(paths)} file(s) to {paths[0].parent}")
        for path in paths:
            say(f"  {path.name}")
        return
    confirm = confirmation(yes)
    shown = Sending()
    try:
        report = sending.send_issue(
            config,
            open_db(ctx),
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
        say(line)
    raise typer.Exit(report.exit_code)


def unsubscribe(
    ctx: typer.Context,
    address: str = typer.Argument(..., metavar="ADDRESS", help="The address, or the token of an unsubscribe link."),
) -> None:
    """Never mail an address again; this wins over subscribers.csv."""
    from digest.jobs import unsubscribe as unsubscribe_address

    email, new = unsubscribe_address(read_config(ctx), open_db(ctx), address)
    say(f"{email}: unsubscribed" if new else f"{email}: already unsubscribed or bounced, nothing to do")
