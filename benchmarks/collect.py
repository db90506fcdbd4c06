"""Benchmark `digest collect`: N feeds x 20 items on a loopback server that answers each request after 100 ms.

Runs the real command twice (the second run finds every feed unchanged: 304) and prints
wall time, feeds/s and peak memory of each run. The server runs in its own process.

    python benchmarks/collect.py            # 100 and 1,000 feeds
    python benchmarks/collect.py 250        # just 250 feeds
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from feedsite import serve_bodies

DELAY = 0.1
ITEMS = 20


def feed_body(number: int) -> bytes:
    items = "".join(
        f"<item><title>Feed {number} post {n}: what is new in Django</title>"
        f"<link>https://blog{number}.example.com/2026/04/post-{n}/?utm_source=rss</link>"
        f"<guid>https://blog{number}.example.com/2026/04/post-{n}/</guid>"
        f"<pubDate>Wed, 01 Apr 2026 {n % 24:02d}:00:00 +0000</pubDate>"
        f"<description><![CDATA[<p>{'Django and Python news, tips and releases. ' * 12}</p>"
        f'<p><a href="/about/">About</a> <img src="https://pixel.example/t.gif" width="1" height="1"></p>]]>'
        f"</description></item>"
        for n in range(ITEMS)
    )
    return (
        f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>Feed {number}</title>'
        f"<link>https://blog{number}.example.com/</link><description>d</description>{items}</channel></rss>"
    ).encode()


def serve(port_queue: multiprocessing.Queue, feeds: int) -> None:
    """The loopback feed server (feedsite.serve_bodies): every answer waits DELAY seconds; ETag → 304."""
    bodies = {f"/feed/{n}.xml": feed_body(n) for n in range(feeds)}
    serve_bodies(port_queue, bodies.get, DELAY, "application/rss+xml")


def run_collect(workdir: Path) -> tuple[float, float, float]:
    """Wall seconds of one `digest collect` process, the seconds its collect took inside it, peak RSS (MB)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "digest", "collect", "--json"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"digest collect failed: {process.stderr.read().decode()}")
    return wall, json.loads(output)["seconds"], usage.ru_maxrss / 1024


def bench(feeds: int) -> None:
    queue: multiprocessing.Queue = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(queue, feeds), daemon=True)
    server.start()
    port = queue.get(timeout=10)
    try:
        with tempfile.TemporaryDirectory() as directory:
            workdir = Path(directory)
            config = {
                "newsletter": {"title": "Bench", "sections": ["Articles"]},
                "feeds": [
                    {"name": f"Feed {n}", "url": f"http://127.0.0.1:{port}/feed/{n}.xml", "section": "Articles"}
                    for n in range(feeds)
                ],
            }
            (workdir / "feeds.yaml").write_text(yaml.safe_dump(config))
            for label in ("first run", "unchanged re-run"):
                wall, inside, peak = run_collect(workdir)
                print(
                    f"{feeds:>5} feeds x {ITEMS} items, {label:<16}: {wall:6.2f} s wall "
                    f"({inside:5.2f} s collecting, the rest is starting Python and importing), "
                    f"{feeds / wall:5.0f} feeds/s, peak {peak:4.0f} MB"
                )
    finally:
        server.terminate()


if __name__ == "__main__":
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, server answers after {DELAY * 1000:.0f} ms")
    for count in [int(arg) for arg in sys.argv[1:]] or [100, 1000]:
        bench(count)
    print(
        f"(peak = max RSS of the digest process; resource limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]} files)"
    )
