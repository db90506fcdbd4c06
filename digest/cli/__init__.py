"""The `digest` command: each command parses its options, calls one library function and prints its report.

Errors are translated once, where Typer invokes a command (`app.Commands.invoke`): a DigestError prints one
line and exits with its own code (errors.py), so that Typer's CliRunner sees the codes a shell would. Library
modules are imported inside the commands: `digest --help` does not pay for httpx, Jinja2 or SQLite. The
commands live one module per group (week, sending, web, subscribers, setup); they are registered here, in
the order `digest --help` lists them.
"""

from __future__ import annotations

import signal
import sys

from digest.cli import sending, setup, subscribers, web, week
from digest.cli.app import EXIT_BROKEN_PIPE, Terminated, app, silence_stdout

__all__ = ["app", "main"]

app.command()(setup.init)
app.command()(week.collect)
app.command()(week.build)
app.command()(week.check)
app.command()(week.feeds)
app.command()(web.preview)
app.command()(setup.demo)
app.command("send")(sending.send_command)
app.command()(week.run)
app.command()(sending.unsubscribe)
app.command()(week.status)
app.command()(week.approve)
app.command()(web.publish)
app.command()(web.serve)
app.add_typer(subscribers.subscribers_app, name="subscribers")


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
            silence_stdout()
            sys.exit(EXIT_BROKEN_PIPE)
