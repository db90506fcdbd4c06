"""`digest demo` (issue 19): the same output every time, and next steps that run as printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def _normalised(text: str, directory) -> str:
    return text.replace(str(directory), "DIR")


def test_the_demo_prints_the_same_thing_every_time(tmp_path):
    runs = []
    for name in ("one", "two"):
        result = subprocess.run(
            [sys.executable, "-m", "digest", "demo", "--dir", str(tmp_path / name)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        runs.append((_normalised(result.stdout, tmp_path / name), result.stderr))
        drafts = tmp_path / name / "drafts"
        runs[-1] += tuple((drafts / f"2026-W14.{kind}").read_bytes() for kind in ("yaml", "html", "txt"))
    assert runs[0] == runs[1]


def test_the_demos_next_steps_run_as_printed(tmp_path):
    """Every `  $ ` line, in order, in one shell (a server is started in the background and polled)."""
    result = subprocess.run(
        [sys.executable, "-m", "digest", "demo", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    steps = re.findall(r"^  \$ (.+)$", result.stdout, re.MULTILINE)
    assert steps and steps[0] == f"cd {tmp_path / 'demo'}"
    script = ["set -e"]
    for step in steps:
        if step.startswith("digest preview"):
            script += [
                f"{step} --port 0 > preview.out 2>&1 & server=$!",
                "for n in $(seq 300); do grep -q 'previewing' preview.out && break; sleep 0.1; done",
                "curl -sf $(grep -o 'http://[^ ]*' preview.out) > /dev/null; kill $server",
            ]
        else:
            script.append(step)
    environment = {key: value for key, value in os.environ.items() if not key.startswith("DIGEST_")}
    environment["BROWSER"] = "true"  # --open "opens" it with true(1): no browser starts
    run = subprocess.run(
        ["bash", "-c", "\n".join(script)], capture_output=True, text=True, env=environment, timeout=120
    )
    assert run.returncode == 0, (script, run.stdout, run.stderr)
    assert "dry run, nothing sent" in run.stdout
