"""The commands that start a newsletter: init (the starter files) and demo (the whole weekly job on sample
feeds). They need no feeds.yaml yet, which sets them apart from every other command."""

from __future__ import annotations

from pathlib import Path

import typer

from digest.cli.app import say


def init(
    ctx: typer.Context,
    templates: bool = typer.Option(
        False, "--templates", help="Also copy the email's templates into templates/ beside feeds.yaml, to edit."
    ),
) -> None:
    """Write a starter feeds.yaml and subscribers.csv (never overwrites an existing file)."""
    from digest.sample import init_next_steps, starter_files

    for path, written in starter_files(ctx.obj["config"], templates=templates).items():
        say(f"{path}: {'written' if written else 'exists, left as it is'}")
    for line in init_next_steps(ctx.obj["config"]):
        say(line)


def demo(
    directory: Path | None = typer.Option(
        None, "--dir", help="A new or empty folder to work in (default: a new temporary folder)."
    ),
) -> None:
    """The whole weekly job, offline, on bundled sample feeds served from a loopback server."""
    from digest.sample import run_demo

    run_demo(directory, say=say)
