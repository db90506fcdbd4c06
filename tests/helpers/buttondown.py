"""A loopback fake of Buttondown's API for the sending tests: scripted answers, remembered idempotency keys."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from .loopback import LoopbackServer, QuietHandler

KEY = "bd-test-key-0123456789"


@dataclass
class Answer:
    status: int = 201
    body: dict = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    listing: bool = False  # the answer to a GET /emails (a lookup), not to a POST or PATCH


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: dict


class FakeButtondown(LoopbackServer):
    """Answers from a script, in order (then 201 with a new id), and records every request.

    Like Buttondown, it remembers the email a POST created under its X-Idempotency-Key and answers a
    repeat of that key with the same email, whatever the repeat's body says.
    """

    def __init__(self) -> None:
        self.script: list[Answer] = []
        self.requests: list[Request] = []
        self.created: dict[str, dict] = {}  # idempotency key → the email created with it
        self.slow = 0.0  # seconds added to every answer (longer than the client's timeout: answers lost)
        self.replay = True  # a repeated key gets the email it created (False: the script answers it)
        fake = self

        class Handler(QuietHandler):
            def answer(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                fake.requests.append(
                    Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                key = self.headers.get("X-Idempotency-Key")
                if self.command == "GET":  # list_emails: the emails created, filtered by subject
                    subject = parse_qs(urlsplit(self.path).query).get("subject", [""])[0]
                    found = [email for email in fake.created.values() if subject in email.get("subject", "")]
                    answer = (
                        fake.script.pop(0)
                        if fake.script and fake.script[0].listing
                        else Answer(200, {"results": found, "count": len(found), "next": None, "previous": None})
                    )
                elif self.command == "POST" and key in fake.created and fake.replay:
                    answer = Answer(201, fake.created[key])
                else:
                    answer = fake.script.pop(0) if fake.script else Answer()
                    if answer.status < 300 and not answer.body:
                        answer.body = {
                            "id": f"em_{len(fake.requests)}",
                            "status": body.get("status", "draft"),
                            "subject": body.get("subject", ""),
                            "metadata": body.get("metadata", {}),
                        }
                    if answer.status < 300 and self.command == "POST" and key:
                        fake.created[key] = answer.body
                time.sleep(answer.delay + fake.slow)
                payload = json.dumps(answer.body).encode()
                try:
                    self.send_response(answer.status)
                    for name, value in {"Content-Type": "application/json", **answer.headers}.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up waiting (a timeout test): no traceback in a later test's stderr
                    self.close_connection = True

            do_POST = do_PATCH = do_GET = answer

        super().__init__(Handler)

    @property
    def url(self) -> str:
        return self.base + "/v1"
