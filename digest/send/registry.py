"""The registry of delivery backends: every backend module of this package, imported so that its class
registers (base.Backend), and the backend a command names (--backend).

Apart from base.py because it imports the backends, which import base.py: a backend is added by writing its
module and naming it here; no other module names a backend.
"""

from __future__ import annotations

from digest.errors import SetupError
from digest.send.base import _REGISTRY, DEFAULT, Backend
from digest.send.buttondown import ButtondownBackend
from digest.send.memory import MemoryBackend
from digest.send.smtp import SmtpBackend

BACKENDS = (ButtondownBackend, MemoryBackend, SmtpBackend)  # every backend: imported here, so registered


def registry() -> dict[str, type[Backend]]:
    """Every backend by name (each registered itself when its module was imported, above)."""
    return _REGISTRY


def backend_class(name: str | None, *, listed_only: bool = False) -> type[Backend]:
    """The backend of this name (default: DEFAULT); `listed_only`, as the command line asks: not one kept for
    tests (the in-memory one would mark an issue sent without mailing anyone)."""
    name = name or DEFAULT
    backends = registry()
    if name not in backends or (listed_only and not backends[name].listed):
        # sorted: the registry's order is whichever backend module was imported first
        listed = ", ".join(sorted(key for key, backend in backends.items() if backend.listed))
        raise SetupError(f"--backend: {name!r} is not one of {listed}")
    return backends[name]
