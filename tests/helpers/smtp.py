"""A real SMTP server on 127.0.0.1 (aiosmtpd) for sending tests.

The server records every message as received (CRLF line ends, dot-unstuffed) and can defer (451) or
refuse (550) chosen recipients, refuse chosen messages at DATA (554), drop the connection at DATA, slow
down, and refuse every login.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


@dataclass
class Received:
    mail_from: str
    rcpt: str
    data: bytes
    peer: tuple = ()  # the client's (address, port): one per connection


@dataclass
class Behaviour:
    defer_rcpt: dict[str, int] = field(default_factory=dict)  # address → how many 451s to RCPT before a 250
    refuse_rcpt: set[str] = field(default_factory=set)  # 550 to RCPT
    refuse_data: set[str] = field(default_factory=set)  # 554 to the message
    drop_at_data: dict[str, int] = field(default_factory=dict)  # address → how many times to hang up at DATA
    delay: float = 0.0  # seconds before answering each message
    refuse_login: bool = False
    echo_login: bool = False  # a refused login's reply repeats the credentials (a server bug digest must not print)
    too_big: set[str] = field(default_factory=set)  # 552 to the message (too large for the mailbox)


class _Handler:
    def __init__(self, server: SmtpServer):
        self.server = server

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        behaviour = self.server.behaviour
        self.server.rcpt_attempts[address] += 1
        if address in behaviour.refuse_rcpt:
            return "550 5.1.1 no such mailbox here"
        if behaviour.defer_rcpt.get(address, 0) > 0:
            behaviour.defer_rcpt[address] -= 1
            return "451 4.7.1 greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        behaviour = self.server.behaviour
        if behaviour.delay:
            await asyncio.sleep(behaviour.delay)
        rcpt = envelope.rcpt_tos[0]
        if behaviour.drop_at_data.get(rcpt, 0) > 0:
            behaviour.drop_at_data[rcpt] -= 1
            server.transport.abort()
            return "421 dropped"
        if rcpt in behaviour.refuse_data:
            return "554 5.7.1 message refused"
        if rcpt in behaviour.too_big:
            return "552 5.3.4 message too big for this mailbox"
        self.server.messages.append(
            Received(envelope.mail_from, rcpt, bytes(envelope.original_content), tuple(session.peer))
        )
        return f"250 2.0.0 Ok: queued as Q{len(self.server.messages)}"


class _Controller(Controller):
    def _trigger_server(self):
        self.port = self.server.sockets[0].getsockname()[1]  # port 0: the system chose a free one
        super()._trigger_server()


class SmtpServer:
    def __init__(
        self, behaviour: Behaviour | None = None, *, tls: ssl.SSLContext | None = None, implicit_tls: bool = False
    ):
        """With tls, STARTTLS is offered and required (or, implicit_tls, the whole session is TLS)."""
        self.behaviour = behaviour or Behaviour()
        self.messages: list[Received] = []
        self.rcpt_attempts: Counter[str] = Counter()
        self.logins: list[str] = []
        options = {"ssl_context": tls} if implicit_tls else {"tls_context": tls, "require_starttls": bool(tls)}
        self.controller = _Controller(
            _Handler(self),
            hostname="127.0.0.1",
            port=0,
            auth_require_tls=False,
            authenticator=self._authenticate,
            **options,
        )

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        self.logins.append(auth_data.login.decode())
        if self.behaviour.refuse_login and self.behaviour.echo_login:
            return AuthResult(
                success=False,
                handled=False,
                message=(f"535 5.7.8 no user {auth_data.login.decode()} with password {auth_data.password.decode()}"),
            )
        return AuthResult(success=not self.behaviour.refuse_login, handled=False)

    @property
    def port(self) -> int:
        return self.controller.port

    def start(self) -> SmtpServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def per_recipient(self) -> Counter[str]:
        return Counter(message.rcpt for message in self.messages)

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.messages)} messages arrived, expected {count}")
            time.sleep(0.01)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made by the openssl command."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key
