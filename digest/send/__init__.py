"""The send stage: an issue's email delivered through a backend, once, with a ledger that lets a re-run resume.

    base.Backend                   done, plan, question, html_bytes, dry_run, send_test, deliver, describe
    └── list_backend.ListBackend       mails subscribers.csv itself, one ledger row per subscriber
        ├── smtp.SmtpBackend           over SMTP (smtp_transport: the connection; ledger: the ledger's writer)
        └── memory.MemoryBackend       into a list in memory (tests; not offered by --backend)
    buttondown.ButtondownBackend       hands the email to Buttondown, which has its own list

A backend is a module of this package that defines a subclass with a `name` and a `Settings` dataclass
(its section of feeds.yaml), named in registry.py: `registry()` finds it, `--backend` offers it, config reads
its section. No other module names a backend. The send use case (sending.py) calls only Backend's methods;
message.py makes the MIME bytes, unsubscribe.py the signed links, approval.py the review copies.

The stage imports the issue, store and settings stages and the core modules, never web, jobs or cli. This
`__init__` only re-exports the names other stages use; the modules of the stage import one another directly
(`from digest.send.base import Backend`), never through the package.
"""

from digest.send.base import Backend, SendPlan, SendReport, check_backend
from digest.send.registry import backend_class, registry

__all__ = ["Backend", "SendPlan", "SendReport", "backend_class", "check_backend", "registry"]
