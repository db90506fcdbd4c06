"""One sending run at a time per database: an exclusive, non-blocking flock on `<db>.lock`.

The kernel drops the lock when the process ends, however it ends (kill -9 included),
so a stale lock file never blocks the next run.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from digest.errors import Busy


def lock_path(db_path: Path | str) -> Path:
    return Path(f"{db_path}.lock")


@contextmanager
def hold(db_path: Path | str) -> Iterator[None]:
    path = lock_path(db_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    status = os.fstat(descriptor)
    if status.st_uid == os.getuid() and status.st_mode & 0o077:  # made by an older digest: it names our pid
        os.fchmod(descriptor, status.st_mode & 0o700)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "?"
            raise Busy(f"another digest run (pid {holder}) holds {path}; try again when it has finished") from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(descriptor)
