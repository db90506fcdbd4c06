"""One bash process on a pseudo-terminal, fed the lines of a walk-through one at a time, as a person types them.

`cd` and `export` carry over from line to line; every command sees a terminal on stdin, stdout and stderr, so
`digest send` asks its question and the test answers it. bash reads its script from a pipe the test writes to,
which keeps the terminal free for the commands.
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import signal
import subprocess
import time
from pathlib import Path

STATUS = re.compile(r"@@status (\d+)@@")


class Shell:
    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.master, terminal = pty.openpty()
        script, self._script = os.pipe()
        self.process = subprocess.Popen(
            ["bash", "--noprofile", "--norc", f"/dev/fd/{script}"],
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            pass_fds=(script,),
            cwd=cwd,
            env=env,
            start_new_session=True,  # one process group: bash, its commands and their background servers
        )
        os.close(terminal)
        os.close(script)
        self.output = ""  # everything printed so far, with the terminal's \r\n made \n
        self._read_to = 0  # where the output not yet given to a step begins

    def run(self, line: str, *, answers: dict[str, str] | None = None, timeout: float = 120) -> tuple[int, str]:
        """Runs one line; returns its exit status and what it printed. A question ending in a key of `answers`
        (such as "[y/N]: ") is answered with its value."""
        os.write(self._script, f"{line}\nprintf '\\n@@status %s@@\\n' $?\n".encode())
        answered = 0
        deadline = time.monotonic() + timeout
        while True:
            step = self.output[self._read_to :]
            if match := STATUS.search(step):
                self._read_to += match.end()
                return int(match.group(1)), step[: match.start()]
            for question, answer in (answers or {}).items():
                if step.count(question) > answered:
                    answered += 1
                    os.write(self.master, answer.encode())
            if time.monotonic() > deadline:
                raise TimeoutError(f"{line!r} did not end within {timeout} s; it printed:\n{step}")
            self._read(deadline)

    def cwd(self) -> Path:
        """The shell's current folder (where a person's editor would open a file the walk-through names)."""
        status, printed = self.run("pwd")
        assert status == 0, printed
        return Path(printed.split()[-1])  # a background server may have printed before it

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match:
        """The first match of `pattern` in the output since the last step ended (a background server's line);
        the next step's output begins after it."""
        deadline = time.monotonic() + timeout
        while not (match := re.search(pattern, self.output[self._read_to :])):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {pattern!r} within {timeout} s; printed:\n{self.output[self._read_to :]}")
            self._read(deadline)
        self._read_to += match.end()
        return match

    def _read(self, deadline: float) -> None:
        ready, _, _ = select.select([self.master], [], [], max(0.0, min(0.2, deadline - time.monotonic())))
        if ready:
            try:
                self.output += os.read(self.master, 65536).decode(errors="replace").replace("\r\n", "\n")
            except OSError:  # every end of the terminal closed: bash is gone
                raise RuntimeError(f"bash ended; it printed:\n{self.output}") from None

    def close(self) -> None:
        """Ends bash and whatever it left running in the background."""
        os.close(self._script)
        with contextlib.suppress(ProcessLookupError):  # nothing was left running
            os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=10)
        os.close(self.master)
