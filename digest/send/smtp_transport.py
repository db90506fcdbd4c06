"""Talking to an SMTP server: the smtp section of feeds.yaml, its password, and one connection that opens,
secures, logs in and runs mail transactions, telling what no retry can fix (SendError) from what time may.

Apart from the backend (smtp.py) because other senders use it alone: the sign-up confirmations of
`digest serve` mail through a Connection, without a send, a ledger or workers.
"""

from __future__ import annotations

import base64
import smtplib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from digest.credentials import env_secret, redact, remember_secret
from digest.errors import SendError, SetupError
from digest.retry import CONNECTION_REFUSED, LOOKUP_FAILED, NO_SUCH_HOST, TIMED_OUT, connection_failure
from digest.settings.sections import HOUR, setting
from digest.settings.yamlfile import MappingReader
from digest.urls import LOOPBACK_HOSTS

PASSWORD_ENV = "DIGEST_SMTP_PASSWORD"


@dataclass(frozen=True)
class SmtpSettings:
    host: str = setting("localhost")
    port: int = setting(587, minimum=1, maximum=65535)
    security: str = setting("starttls", choices=("starttls", "ssl", "none"))
    username: str | None = setting(None)
    connections: int = setting(4, minimum=1, maximum=100)  # used in parallel, each reused for many messages
    timeout: float = setting(30.0, above=0, maximum=HOUR)  # seconds, for every connection and command
    max_attempts: int = setting(5, minimum=1, maximum=100)  # per subscriber, for 4xx replies and dropped connections
    backoff: float = setting(1.0, minimum=0, maximum=HOUR)  # seconds before the first retry, doubled (at most 60)

    def check(self, reader: MappingReader) -> None:
        if not self.host.strip():
            raise reader.error("host", "must not be empty (the SMTP server's name or address)")
        if self.security == "none" and self.username and self.host not in LOOPBACK_HOSTS:
            raise reader.error(
                "security",
                f"none with a username would send the password to {self.host} unencrypted: use starttls or ssl",
            )


def smtp_password(settings: SmtpSettings) -> str | None:
    """From the environment only; required when smtp.username is set."""
    password = env_secret(PASSWORD_ENV)
    if settings.username and not password:
        raise SetupError(f"{PASSWORD_ENV} (or {PASSWORD_ENV}_FILE) is not set, and smtp.username is")
    if settings.username and password:  # what AUTH PLAIN and LOGIN send, should a server echo it
        remember_secret(
            *(base64.b64encode(text.encode()).decode() for text in (password, f"\0{settings.username}\0{password}"))
        )
    return password


@dataclass
class Refused(Exception):
    """A non-2xx answer at one stage of a mail transaction."""

    stage: str  # MAIL, RCPT or DATA
    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text} (after {self.stage})"


def _text(reply: bytes | str) -> str:
    """A server's reply as stored and printed: decoded, and without any secret it may echo."""
    return redact(reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply))


_NAME_MISMATCH = (62, 64)  # OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH


def _setup_problem(exc: BaseException, settings: SmtpSettings) -> SendError | None:
    """What no retry can fix when connecting (TLS, certificates, login, a server that refuses us), as the
    SendError that stops the run (exit 1); None for what time may fix (a refused or dropped connection,
    a timeout, a 4xx greeting), which is retried and then left pending (exit 75)."""
    where = f"{settings.host}:{settings.port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in _NAME_MISMATCH:
            return SendError(
                f"TLS to {where}: {exc.verify_message.rstrip('.')}; set smtp.host to a name the server's "
                f"certificate is for"
            )
        return SendError(f"TLS to {where}: {exc.verify_message}")
    if isinstance(exc, ssl.SSLError):
        return SendError(
            f"TLS with {where} failed ({exc.reason or exc}): is smtp.security right for this port? "
            f"(ssl is TLS from the first byte, usually port 465; starttls upgrades a plain "
            f"connection, usually port 587)"
        )
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return SendError(
            f"SMTP login as {settings.username!r} at {where} refused: {exc.smtp_code} {_text(exc.smtp_error)}; "
            f"check smtp.username and {PASSWORD_ENV}"
        )
    if isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code >= 500:
        return SendError(f"{where} refused the session: {exc.smtp_code} {_text(exc.smtp_error)}")
    if isinstance(exc, (smtplib.SMTPNotSupportedError, smtplib.SMTPHeloError)):
        return SendError(f"{where}: {_text(str(exc))}")
    return None


def _tls_port_problem(exc: BaseException, settings: SmtpSettings) -> SendError | None:
    """A server that never greets a plain connection may be waiting for TLS (a port for `security: ssl`):
    without this check, every run would time out and be told to try again later, for ever."""
    if settings.security == "ssl" or not isinstance(exc, (TimeoutError, smtplib.SMTPServerDisconnected)):
        return None
    probe = ssl.create_default_context()
    probe.check_hostname, probe.verify_mode = False, ssl.CERT_NONE  # a handshake only; nothing is sent
    try:
        with (
            socket.create_connection((settings.host, settings.port), timeout=min(settings.timeout, 10)) as raw,
            probe.wrap_socket(raw, server_hostname=settings.host),
        ):
            pass
    except OSError:  # ssl.SSLError included: not TLS either, so time may fix it
        return None
    return SendError(
        f"{settings.host}:{settings.port} waits for TLS from the first byte, and smtp.security is "
        f"{settings.security}: set security: ssl for this port (or use the server's STARTTLS port, usually 587)"
    )


class Unreachable(OSError):
    """A connection that failed in a way a setting may explain (nothing listens, no such host, no answer): retried
    like any dropped connection, and told in words that name the setting."""


def _unreachable(exc: BaseException, settings: SmtpSettings) -> Unreachable | None:
    host, port = settings.host, settings.port
    why = connection_failure(exc)
    if why == CONNECTION_REFUSED:
        return Unreachable(
            f"smtp.port {port} on {host}: nothing listens (connection refused); set smtp.host and smtp.port "
            f"in feeds.yaml"
        )
    if why == NO_SUCH_HOST:
        return Unreachable(f"smtp.host {host}: no such host (DNS); set smtp.host in feeds.yaml")
    if why == LOOKUP_FAILED:
        return Unreachable(f"smtp.host {host}: the name could not be looked up (DNS); check the network and smtp.host")
    if why == TIMED_OUT:
        return Unreachable(
            f"{host} port {port}: no answer within smtp.timeout ({settings.timeout:g} s); check smtp.host and "
            f"smtp.port in feeds.yaml, or raise smtp.timeout"
        )
    return None


class Connection:
    """One SMTP session: opened on first use, reused, reopened after a drop."""

    def __init__(self, settings: SmtpSettings, password: str | None):
        self.settings, self._password = settings, password
        self.smtp: smtplib.SMTP | None = None

    def open(self) -> None:
        """Connect, secure and log in. Raises SendError for what retrying cannot fix, OSError otherwise (Unreachable
        when the failure points at a setting)."""
        try:
            self._open()
        except BaseException as exc:
            self.close()
            problem = _setup_problem(exc, self.settings) or _tls_port_problem(exc, self.settings)
            if problem is not None:
                raise problem from exc
            if isinstance(exc, OSError) and (unreachable := _unreachable(exc, self.settings)):
                raise unreachable from exc
            raise

    def _open(self) -> None:
        s = self.settings
        context = ssl.create_default_context()
        if s.security == "ssl":
            self.smtp = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=context)
        else:
            self.smtp = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
        self.smtp.ehlo()
        if s.security == "starttls":
            if not self.smtp.has_extn("starttls"):
                raise SendError(f"{s.host}:{s.port} does not offer STARTTLS (see smtp.security)")
            self.smtp.starttls(context=context)
            self.smtp.ehlo()
        if s.username:
            if not self.smtp.has_extn("auth"):
                raise SendError(f"{s.host}:{s.port} does not offer AUTH here (see smtp.security and smtp.username)")
            self.smtp.login(s.username, self._password or "")

    def transact(
        self, sender: str, recipient: str, message: bytes, ready: Callable[[], bool] = lambda: True
    ) -> str | None:
        """One MAIL/RCPT/DATA transaction; returns the final reply or raises Refused / OSError. `ready` is asked
        before DATA: when it says no, the transaction is reset and nothing is sent (None)."""
        if self.smtp is None:
            self.open()
        smtp = self.smtp
        assert smtp is not None  # open() connected, or raised
        options = [f"SIZE={len(message)}"] if smtp.has_extn("size") else []
        if not recipient.isascii():
            if not smtp.has_extn("smtputf8"):
                raise smtplib.SMTPNotSupportedError("SMTPUTF8 not supported by server")
            options.append("SMTPUTF8")
        for stage, answer in (
            ("MAIL", lambda: _command(smtp, f"MAIL FROM:<{sender}>{''.join(' ' + option for option in options)}")),
            ("RCPT", lambda: _command(smtp, f"RCPT TO:<{recipient}>")),
            ("DATA", lambda: _data(smtp, message)),
        ):
            if stage == "DATA":
                try:
                    go_ahead = ready()
                except BaseException:
                    self.close()  # never left in the middle of a transaction
                    raise
                if not go_ahead:
                    if not self._reset():
                        self.close()
                    return None
            code, reply = answer()
            if not 200 <= code < 300:
                # RSET after a refused DATA too: refused before its 354, the transaction is still open
                if code == 421 or not self._reset():
                    self.close()
                raise Refused(stage, code, _text(reply))
        return f"{code} {_text(reply)}"

    def _reset(self) -> bool:
        if self.smtp is None:
            return False
        try:
            return self.smtp.rset()[0] == 250
        except (OSError, smtplib.SMTPException):
            return False

    def close(self) -> None:
        if self.smtp is not None:
            try:
                self.smtp.quit()
            except (OSError, smtplib.SMTPException):
                self.smtp.close()
            self.smtp = None


def _command(smtp: smtplib.SMTP, line: str) -> tuple[int, bytes]:
    """MAIL or RCPT with an address as it is: subscribers' addresses are bare addr-specs (subscribers._EMAIL),
    which smtplib's quoteaddr would parse again for each message."""
    smtp.send(f"{line}\r\n".encode())  # UTF-8, which leaves an ASCII line as it is
    return smtp.getreply()


def _data(smtp: smtplib.SMTP, message: bytes) -> tuple[int, bytes]:
    """DATA for a message whose lines already end in CRLF (message.py makes them so): its dots stuffed with
    bytes.replace, which is what smtplib's regular expression does, at a fifteenth of its cost (150 µs a
    26 KB message, a sixth of the sender's CPU)."""
    smtp.send(b"DATA\r\n")
    code, reply = smtp.getreply()
    if code != 354:
        return code, reply
    stuffed = (b"." if message.startswith(b".") else b"") + message.replace(b"\n.", b"\n..")
    smtp.send(stuffed + (b".\r\n" if stuffed.endswith(b"\r\n") else b"\r\n.\r\n"))
    return smtp.getreply()
