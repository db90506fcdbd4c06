"""The docs stay true to the code: the command reference is what --help says now, every setting feeds.yaml
accepts is documented, and every `digest ...` command the docs print names a command whose options parse."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import typer
import typer.main
from typer._click.core import Command  # Typer 0.28 carries its own copy of click
from typer._click.exceptions import ClickException
from typer.core import TyperGroup

from digest import load_config
from digest.cli import app
from digest.errors import ConfigError

from conftest import REPO

ROOT = REPO
DOCS = ROOT / "docs"
CLI = typer.main.get_command(app)


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


# Walked here again, not imported from docs/reference.py: a command the generator skipped must still be found.
def _command_paths(group: TyperGroup, prefix: tuple[str, ...] = ()) -> list[tuple[Command, tuple[str, ...]]]:
    ctx = typer.Context(group)
    found = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        found.append((command, (*prefix, name)))
        if isinstance(command, TyperGroup):
            found.extend(_command_paths(command, (*prefix, name)))
    return found


# --- the command reference -------------------------------------------------------------


def test_command_reference_is_what_cog_makes_from_the_help_now():
    result = subprocess.run(
        [sys.executable, "-m", "cogapp", "--check", "docs/commands.md"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, (
        f"docs/commands.md is out of date: run `cog -r docs/commands.md`\n{result.stdout}{result.stderr}"
    )


def test_command_reference_has_every_command_and_option():
    page = (DOCS / "commands.md").read_text(encoding="utf-8")
    missing = []
    for command, path in [(CLI, ()), *_command_paths(CLI)]:
        title = " ".join(("digest", *path))
        if f"### {title}\n" not in page:
            missing.append(title)
        for param in command.params:
            if param.param_type_name == "option":
                missing += [f"{title} {opt}" for opt in [*param.opts, *param.secondary_opts] if opt not in page]
    assert not missing, f"not in docs/commands.md (run `cog -r docs/commands.md`): {', '.join(missing)}"


# --- the settings reference ------------------------------------------------------------

FEED = "feeds: [{url: 'http://127.0.0.1/feed.xml'}]\n"
UNKNOWN = "zz_not_a_setting"


def _known_keys(tmp_path: Path, yaml_text: str) -> set[str] | None:
    """The keys digest's reader accepts where UNKNOWN stands, from its own refusal of it; None when that
    place is no mapping of keys."""
    path = tmp_path / "feeds.yaml"
    path.write_text(yaml_text, encoding="utf-8")
    try:
        load_config(path)
    except ConfigError as exc:
        match = re.search(r"unknown key \(known: (.*)\)$", str(exc))
        if match and UNKNOWN in str(exc):
            return {key for key in match[1].split(", ") if key}
        return None
    raise AssertionError(f"{UNKNOWN} was accepted in:\n{yaml_text}")


def _settings_digest_reads(tmp_path: Path) -> dict[str, set[str]]:
    """Every key of feeds.yaml, by section ("" for the top level, "feeds" for a feed's keys)."""
    sections = {"": _known_keys(tmp_path, f"{FEED}{UNKNOWN}: 1\n")}
    sections["feeds"] = _known_keys(tmp_path, f"feeds: [{{url: 'http://127.0.0.1/feed.xml', {UNKNOWN}: 1}}]\n")
    for key in sorted(sections[""] or ()):
        if key != "feeds":
            keys = _known_keys(tmp_path, f"{FEED}{key}: {{{UNKNOWN}: 1}}\n")
            if keys is not None:
                sections[key] = keys
    assert all(keys is not None for keys in sections.values())
    return {section: keys or set() for section, keys in sections.items()}


def _documented_settings() -> dict[str, set[str]]:
    """The keys in the first column of docs/settings.md's tables, by the section their heading names
    (`## `smtp:``), "" under `## Top level`."""
    documented: dict[str, set[str]] = {}
    section = None
    for line in (DOCS / "settings.md").read_text(encoding="utf-8").splitlines():
        heading = re.match(r"## (?:`(\w+):`|(Top level))$", line)
        if heading:
            section = heading[1] or ""
            documented.setdefault(section, set())
        elif line.startswith("## "):
            section = None
        elif section is not None and line.startswith("| `"):
            documented[section] |= set(re.findall(r"`(\w+)`", line.split("|")[1]))
    return documented


def test_every_setting_digest_reads_is_in_settings_md(tmp_path):
    reads = _settings_digest_reads(tmp_path)
    assert {"newsletter", "feeds", "collect", "smtp", "check"} <= set(reads), reads.keys()
    assert "security" in reads["smtp"] and "from" in reads["newsletter"]
    documented = _documented_settings()
    missing = sorted(
        f"{section}.{key}" if section else key
        for section, keys in reads.items()
        for key in keys - documented.get(section, set())
    )
    assert not missing, f"settings digest reads but docs/settings.md does not document: {', '.join(missing)}"


def test_settings_md_documents_no_setting_digest_refuses(tmp_path):
    reads = _settings_digest_reads(tmp_path)
    extra = sorted(
        f"{section}.{key}" if section else key
        for section, keys in _documented_settings().items()
        for key in keys - reads.get(section, set())
    )
    assert not extra, f"docs/settings.md documents settings digest does not read: {', '.join(extra)}"


# --- every command the docs print ------------------------------------------------------

FENCE = re.compile(r"^(\s*)(```|~~~)")


def code_lines(text: str) -> list[tuple[int, str]]:
    """The lines inside fenced code blocks, with their line numbers; not those cog generates from --help
    (its wrapped sentences may start with "digest", and the cog test checks them)."""
    lines, fence, generated = [], None, False
    for number, line in enumerate(text.splitlines(), 1):
        opening = FENCE.match(line)
        if line.startswith(("<!-- [[[cog", "<!-- [[[end]]]")):
            generated = line.startswith("<!-- [[[cog")
        elif generated:
            continue
        elif opening and (fence is None or opening[2] == fence):
            fence = None if fence else opening[2]
        elif fence:
            lines.append((number, line))
    return lines


def digest_commands(line: str) -> list[list[str]]:
    """The arguments of each `digest` command on a line of a shell session, crontab, systemd unit or workflow."""
    line = re.sub(r"^\s*(?:\$\s+|-\s+run:\s*|run:\s*|ExecStart=)", "", line)
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return []
    commands, command = [], []
    for word in [*words, ";"]:
        if word in (";", "&&", "||", "|", "&") or word.startswith((">", "2>")):
            if command:
                commands.append(command)
            command = []
            if word.startswith((">", "2>")):
                command = [">"]  # a redirection's file, not part of the command
        else:
            command.append(word)
    found = []
    for words in commands:
        while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):  # VAR=value digest ...
            words = words[1:]
        if words and (words[0] == "digest" or words[0].endswith("/digest")):
            found.append(words[1:])
    return found


def parse_problem(args: list[str]) -> str | None:
    """Why the real CLI would refuse these arguments before running anything; None when they parse."""
    group: Command = CLI
    name, ctx = "digest", None
    try:
        while True:
            ctx = group.make_context(name, list(args), parent=ctx)
            if not isinstance(group, TyperGroup):
                return None
            # what the group left for its command: the command's name, then its arguments
            rest = [*ctx._protected_args, *ctx.args]
            if not rest:
                return f"{name}: no command"
            name, command, args = group.resolve_command(ctx, rest)
            assert command is not None and name is not None
            group = command
    except typer.Exit as exc:  # --version, --help
        return None if exc.exit_code == 0 else f"exits {exc.exit_code}"
    except ClickException as exc:
        return exc.format_message()


def documented_commands() -> list[tuple[str, list[str]]]:
    found = []
    for page in _pages():
        for number, line in code_lines(page.read_text(encoding="utf-8")):
            found += [(f"{page.relative_to(ROOT)}:{number}", args) for args in digest_commands(line)]
    return found


def test_every_digest_command_in_the_docs_parses():
    commands = documented_commands()
    assert len(commands) > 30, commands  # the walk-through, the references, the recipes
    problems = [
        f"{where}: digest {shlex.join(args)}: {problem}"
        for where, args in commands
        if (problem := parse_problem(args)) is not None
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "line, expected",
    [
        ("digest send --to you@example.com     # one test copy", [["send", "--to", "you@example.com"]]),
        ("  $ digest preview --week 2026-W14", [["preview", "--week", "2026-W14"]]),
        (
            "0 16 * * 5  cd /srv/newsletter && . ./secrets.env && /srv/venv/bin/digest run --yes >> digest.log 2>&1",
            [["run", "--yes"]],
        ),
        (
            "ExecStart=/srv/newsletter/.venv/bin/digest serve --host 127.0.0.1 --port 8080",
            [["serve", "--host", "127.0.0.1", "--port", "8080"]],
        ),
        ("      - run: digest run --yes", [["run", "--yes"]]),
        (
            "DIGEST_UNSUBSCRIBE_SECRET=demo digest send --week 2026-W14 --dry-run",
            [["send", "--week", "2026-W14", "--dry-run"]],
        ),
        ("digest demo --dir demo && cd demo", [["demo", "--dir", "demo"]]),
        ("git config user.name digest && git add --force digest.db", []),
        ("Description=Weekly digest newsletter", []),
        ('python -c "import digest.issue.render as r; print(r.BUILT_IN_TEMPLATES)"', []),
    ],
)
def test_digest_commands_are_found_on_every_kind_of_line(line, expected):
    assert digest_commands(line) == expected


@pytest.mark.parametrize(
    "args, problem",
    [
        (["send", "--bogus"], "No such option: --bogus"),
        (["sned"], "No such command 'sned'"),
        (["subscribers", "list", "--status", "gone"], "must be one of"),
        (["preview", "--port", "eighty"], "'eighty' is not a valid int"),
        (["subscribers", "import"], "Missing argument"),
        (["--bogus", "status"], "No such option: --bogus"),
    ],
)
def test_a_command_the_cli_would_refuse_is_reported(args, problem):
    assert problem in (parse_problem(args) or "")


def test_commands_that_parse_are_not_reported():
    for args in (["--config", "x/feeds.yaml", "status", "--week", "2026-W14"], ["subscribers", "import", "x.csv"]):
        assert parse_problem(args) is None, args


# --- links into the docs from outside them ---------------------------------------------

DOCS_LINK = re.compile(r"docs/([\w-]+\.md)(?:#([\w-]+))?")


def heading_anchors(markdown: str) -> set[str]:
    """The anchors MkDocs gives a page's headings (Python-Markdown's toc slugify)."""
    anchors = set()
    for line in markdown.splitlines():
        if match := re.match(r"#{1,6} (.+?)\s*$", line):
            text = unicodedata.normalize("NFKD", match[1]).encode("ascii", "ignore").decode()
            anchors.add(re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text).strip().lower()))
    return anchors


def broken_docs_links(text: str) -> list[str]:
    broken = []
    for match in DOCS_LINK.finditer(text):
        page = DOCS / match[1]
        anchors = heading_anchors(page.read_text(encoding="utf-8")) if page.exists() else set()
        if not page.exists() or (match[2] and match[2] not in anchors):
            broken.append(match[0])
    return broken


def test_links_into_the_docs_from_the_readme_and_the_code_resolve():
    """mkdocs --strict checks the links between pages; these come from outside them (README.md, messages and
    help texts in digest/)."""
    sources = [ROOT / "README.md", *sorted((ROOT / "digest").rglob("*.py")), *sorted((ROOT / "digest").rglob("*.yaml"))]
    broken = [
        f"{path.relative_to(ROOT)}: {link}"
        for path in sources
        for link in broken_docs_links(path.read_text(encoding="utf-8"))
    ]
    assert not broken, "links to a missing docs page or heading:\n" + "\n".join(broken)


def test_a_link_to_a_missing_page_or_heading_is_found():
    assert heading_anchors("## `smtp:`\n### digest subscribers import\n## Exit codes") == {
        "smtp",
        "digest-subscribers-import",
        "exit-codes",
    }
    text = "see docs/commands.md#exit-codes, docs/nowhere.md and docs/commands.md#no-such-heading"
    assert broken_docs_links(text) == ["docs/nowhere.md", "docs/commands.md#no-such-heading"]
