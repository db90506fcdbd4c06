"""The command reference of docs/commands.md, made from the CLI's own --help: `cog -r docs/commands.md`
writes it, and tests/test_docs.py fails when the page differs from what this makes now."""

from __future__ import annotations

import typer
import typer.main
from typer.core import TyperGroup
from typer.testing import CliRunner

from digest.cli import app

WIDTH = "80"  # the help's line width does not depend on the terminal that runs cog


def command_paths(group: TyperGroup, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and subcommand, in the order --help lists them."""
    ctx = typer.Context(group)
    paths: list[tuple[str, ...]] = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        paths.append((*prefix, name))
        if isinstance(command, TyperGroup):
            paths.extend(command_paths(command, (*prefix, name)))
    return paths


def help_text(args: list[str]) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], prog_name="digest", env={"COLUMNS": WIDTH})
    if result.exit_code != 0:
        raise RuntimeError(f"digest {' '.join(args)} --help exited {result.exit_code}: {result.output}")
    return result.output


def command_help_sections() -> str:
    """A heading and a code block for `digest --help` and for each command's --help."""
    sections = [("digest", [])]
    sections += [("digest " + " ".join(path), list(path)) for path in command_paths(typer.main.get_command(app))]
    return "".join(f"### {title}\n\n```\n{help_text(args).rstrip()}\n```\n\n" for title, args in sections)
