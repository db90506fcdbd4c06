"""digest: turn the week's posts from RSS/Atom feeds into an edited email newsletter.

The library API is what `__all__` names; every other module and name is internal and may change. Names are
imported on first use, so that `import digest` (and `digest --help`) stays quick.

    config = digest.load_config("feeds.yaml")
    db = digest.open_db("digest.db")
    report = digest.run_week(config, db, confirm=lambda question: True)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_API = {
    # settings and state
    "load_config": "jobs",
    "Config": "settings.config",
    "open_db": "store",
    # the weekly job, one function per command
    "collect": "feeds.collect",
    "build": "jobs",
    "run_week": "jobs",
    "unsubscribe": "jobs",
    "feed_health": "feeds.collect",
    "CollectReport": "feeds.collect",
    "BuildReport": "jobs",
    "WeekReport": "jobs",
    "send_issue": "send.sending",
    "dry_run_issue": "send.sending",
    "send_test_copy": "send.sending",
    # the stages, for code that wants one of them
    "parse_feed": "feeds.parse",
    "render_issue": "issue.render",
    "PreviewServer": "web.preview",
    # delivery backends
    "Backend": "send",
    "SendPlan": "send",
    "SendReport": "send",
    "registry": "send",
    # errors
    "DigestError": "errors",
    "BadInput": "errors",
    "Failed": "errors",
    "TryLater": "errors",
    "ConfigError": "errors",
    "SetupError": "errors",
    "SendError": "errors",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'digest' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
