"""What the published folder may hold: nothing but the archive. `digest serve` hands out every file in it, so
the drafts folder (unsent drafts, dry-run emails with addresses and tokens), the database and the subscriber
list must each be somewhere else: neither the same path, nor inside it, nor around it. Paths are compared
resolved (symlinks followed, `..` taken out), as the web server would reach them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from digest.errors import SetupError
from digest.settings.yamlfile import MappingReader

_EXPOSED = {
    "drafts_dir": ("the drafts folder", "unsent drafts and dry-run emails with addresses and tokens"),
    "subscribers": ("the subscriber list", "every subscriber's address"),
    "database": ("the database", "every address and the tokens' records"),
}


def check_site_apart(top: MappingReader, site: Path, others: dict[str, Path]) -> None:
    """A ConfigError when the published folder `site` and one of `others` (drafts_dir, subscribers, database:
    their paths) overlap, naming the line and field that placed them so: the other's key when feeds.yaml
    writes it, else publish.dir."""
    folder = top.path.resolve().parent
    site = site.resolve()
    publish = top.sub("publish")
    for key, path in others.items():
        relation = _relation(site, path.resolve())
        if relation is None:
            continue
        what, exposed = _EXPOSED[key]
        consequence = f": digest serve would hand out {exposed}; give each a place of its own"
        if key in top.mapping:  # drafts_dir or subscribers written: they moved into (or around) the archive
            words = {"same": "is the published folder itself", "inside": "is inside the published folder"}
            problem = f"{words.get(relation, 'holds the published folder')} ({_shown(site, folder)})"
            raise top.error(key, problem + consequence)
        # the other is where digest puts it by default: publish.dir (the only other path written) moved there
        words = {"same": "is", "inside": "holds"}
        problem = f"{words.get(relation, 'is inside')} {what} ({_shown(path.resolve(), folder)})"
        raise (publish or top).error("dir" if publish else "publish", problem + consequence)


SECRET_FILES = ("DIGEST_UNSUBSCRIBE_SECRET_FILE", "DIGEST_SMTP_PASSWORD_FILE", "BUTTONDOWN_API_KEY_FILE")


def check_secret_files_apart(site: Path, environ: Mapping[str, str]) -> None:
    """A SetupError when a secret's file (NAME_FILE in the environment) is in the published folder: served, the
    unsubscribe secret would let anyone forge confirmation and unsubscribe links, a password log in."""
    site = site.resolve()
    for name in SECRET_FILES:
        if environ.get(name) and _relation(site, Path(environ[name]).expanduser().resolve()) == "inside":
            raise SetupError(
                f"{name}: the file is inside the published folder ({site}), which digest serve hands out; "
                "keep it elsewhere"
            )


def _relation(site: Path, other: Path) -> str | None:
    """How `other` stands to the published folder: the same path, inside it, around it, or apart (None)."""
    if other == site:
        return "same"
    if other.is_relative_to(site):
        return "inside"
    if site.is_relative_to(other):
        return "around"
    return None


def _shown(path: Path, folder: Path) -> str:
    return str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path)


class _Served(Protocol):
    site_dir: Path
    publish: Any
    serve: Any


def check_database_apart(config: _Served, database: Path) -> None:
    """The database named by --db or DIGEST_DB kept out of the published folder (a SetupError otherwise): load_config
    checks only the default one, digest.db beside feeds.yaml. Nothing to check without publish: or serve:."""
    if config.publish is None and config.serve is None:
        return
    site = config.site_dir.resolve()
    relation = _relation(site, database.resolve())
    if relation is not None:
        where = {"same": "is the published folder itself", "inside": "is inside the published folder"}
        raise SetupError(
            f"the database {database} (--db or DIGEST_DB) {where.get(relation, 'holds the published folder')} "
            f"({site}): digest serve would hand it out; keep it elsewhere"
        )
