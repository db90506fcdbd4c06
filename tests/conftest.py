from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))

from feedserver import FeedServer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CORPUS = SHARED / "feeds-corpus"


@pytest.fixture
def feed_server():
    server = FeedServer().start()
    yield server
    server.stop()


def write_config(directory: Path, feeds: list[dict], **newsletter) -> Path:
    settings = {"title": "Test Digest", "timezone": "Europe/London",
                "sections": ["News", "Articles", "Videos", "Projects", "Jobs"]}
    settings.update(newsletter)
    path = directory / "feeds.yaml"
    path.write_text(yaml.safe_dump({"newsletter": settings, "feeds": feeds}, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run `digest ARGS` in this process through the real entry point; returns (exit code, stdout, stderr)."""
    from digest.cli import main

    def run(*args: str, cwd: Path | None = None) -> tuple[int, str, str]:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["digest", *args])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run
