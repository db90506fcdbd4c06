"""The one tree of errors that reach the person running digest, each carrying its exit code.

    DigestError                      (1) the work failed, and waiting will not fix it
    ├── BadInput                     (2) a file, an option, a setting or a secret: nothing was changed
    │   ├── ConfigError                  a line of feeds.yaml, subscribers.csv or a draft (file, line, field)
    │   ├── BadWeek                      an issue id that is no ISO week
    │   └── SetupError                   something missing on this machine: an environment variable, a file
    ├── Failed                       (1)
    │   ├── SendError                    a backend could not do its job (server, login, API)
    │   ├── Clipped                      the email is past Gmail's clipping limit
    │   ├── Unrecorded                   a receipt says an issue was sent, and the database knows nothing of it
    │   ├── CheckFailed                  `digest check` found errors in the issue (a dead link, a placeholder)
    │   └── DatabaseProblem              the database is empty, newer than this digest, removed or unreadable
    └── TryLater                     (75) another digest holds the lock, or the database is busy

The CLI prints `error: <message>` on one line and exits with the code; nothing else is caught.
Errors inside one feed or one delivery never get here: they are that feed's or that delivery's outcome.
"""

from __future__ import annotations

from pathlib import Path


class DigestError(Exception):
    """A one-line problem for the person running digest."""

    exit_code = 1


class BadInput(DigestError):
    exit_code = 2


class Failed(DigestError):
    exit_code = 1


class TryLater(DigestError):
    exit_code = 75


class ConfigError(BadInput):
    """Bad input in a file the user wrote: the message names the file, the line and the field."""

    def __init__(self, path: Path | str, line: int | None, field: str | None, problem: str):
        self.path, self.line, self.field, self.problem = Path(path), line, field, problem
        where = f"{path}:{line}" if line else str(path)
        what = f"{field}: {problem}" if field else problem
        super().__init__(f"{where}: {what}")


class BadWeek(BadInput):
    """An issue id that is not an ISO week digest can handle."""


class SetupError(BadInput):
    """Something missing or wrong on this machine (an env var, a secret file, an option)."""


class SendError(Failed):
    """The backend could not do its job (server unreachable, login refused, API error)."""


class Clipped(SendError):
    """The email is past Gmail's clipping limit, and sending it clipped was not allowed."""


class Unrecorded(SendError):
    """The drafts folder's receipt says the issue began sending, and the database knows nothing of it."""


class CheckFailed(Failed):
    """The issue's checks found errors, and sending it anyway was not asked for (--force)."""


class DatabaseProblem(Failed):
    """The database cannot be used as it is: empty, written by a newer digest, removed during a send."""


class Busy(TryLater):
    """Another process holds the lock."""
