"""Benchmark `POST /unsubscribe` (RFC 8058 one-click) of `digest serve`, while `digest send` mails the list.

Both are the real commands in their own processes, sharing the SQLite file as they do in production: the
server under uvicorn, the send over SMTP to a loopback aiosmtpd sink (benchmarks/send.py's). Once the send is
under way, REQUESTS one-click POSTs are made, CONCURRENCY at a time; then the same again with no send running.
Prints requests per second, latency percentiles, and how many of the addresses were still to be mailed.

    python benchmarks/unsubscribe.py                       # 10,000 subscribers, 1,000 requests, 50 at a time
    python benchmarks/unsubscribe.py 5000 --requests 200 --concurrency 200
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from send import sink

from digest import load_config
from digest.send.unsubscribe import make_token

from helpers.project import WEEK, make_project, subscribers

SECRET = "benchmark-secret-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def unsubscribe(port: int, tokens: list[str], concurrency: int) -> tuple[float, list[float], list[int]]:
    """Seconds for all, each request's latency, each answer's status: `concurrency` threads, each with one
    keep-alive connection (http.client: httpx's async pool costs ~5 ms of this process's CPU a request at 50
    connections, which measured the client, not the server)."""
    latencies: list[float] = []
    codes: list[int] = []
    shares = [tokens[number::concurrency] for number in range(concurrency)]

    def worker(share: list[str]) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for token in share:
            started = time.perf_counter()
            connection.request("POST", f"/unsubscribe?token={token}", body=ONE_CLICK, headers=FORM)
            answer = connection.getresponse()
            answer.read()
            latencies.append(time.perf_counter() - started)
            codes.append(answer.status)
        connection.close()

    threads = [threading.Thread(target=worker, args=(share,)) for share in shares if share]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies, codes


ONE_CLICK = b"List-Unsubscribe=One-Click"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def report(label: str, seconds: float, latencies: list[float], codes: list[int]) -> None:
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(
        f"{label}: {len(codes)} requests in {seconds:.2f} s = {len(codes) / seconds:,.0f} req/s; "
        f"latency median {statistics.median(latencies) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms; "
        f"answers {sorted(set(codes))}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("subscribers", type=int, nargs="?", default=10_000)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    options = parser.parse_args()
    port_pipe, child_port = multiprocessing.Pipe()
    count_pipe, child_count = multiprocessing.Pipe()
    smtp_sink = multiprocessing.Process(target=sink, args=(child_port, child_count), daemon=True)
    smtp_sink.start()
    smtp_port = port_pipe.recv()
    web_port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        people = subscribers(options.subscribers)
        config_path = make_project(
            directory,
            smtp_port,
            people,
            smtp={"connections": 4},
            site_url=f"http://127.0.0.1:{web_port}/",
            unsubscribe_url=None,
            sections={"serve": {"port": web_port}},
        )
        list_id = load_config(config_path).newsletter.list_identifier
        step = max(1, options.subscribers // (2 * options.requests))  # two rounds of distinct addresses
        addresses = [person["email"] for person in people[::step]][: 2 * options.requests]
        tokens = [make_token(SECRET, list_id, address) for address in addresses]
        env = {**os.environ, "DIGEST_UNSUBSCRIBE_SECRET": SECRET}
        digest = [sys.executable, "-m", "digest"]
        server = subprocess.Popen([*digest, "serve"], cwd=directory, env=env, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{web_port}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.05)
            send = subprocess.Popen([*digest, "send", "--week", WEEK, "--yes"], cwd=directory, env=env)
            while count_pipe.send("count") or count_pipe.recv() < 50:  # the send is under way
                time.sleep(0.01)
            during = unsubscribe(web_port, tokens[: options.requests], options.concurrency)
            mailed_when_done = count_pipe.send("count") or count_pipe.recv()
            still_sending = send.poll() is None
            send.wait()
            report(f"during the send ({options.subscribers:,} subscribers, {options.concurrency} at a time)", *during)
            print(
                f"  the send had mailed {mailed_when_done:,} of {options.subscribers:,} when the last answer came"
                f" ({'still sending' if still_sending else 'already finished'})"
            )
            idle = unsubscribe(web_port, tokens[options.requests :], options.concurrency)
            report("with no send running", *idle)
            db = sqlite3.connect(directory / "digest.db")
            skipped = db.execute("SELECT count(*) FROM deliveries WHERE status = 'skipped'").fetchone()[0]
            unsubscribed = db.execute("SELECT count(*) FROM subscribers WHERE status = 'unsubscribed'").fetchone()[0]
            print(f"  {unsubscribed:,} unsubscribed in the database; {skipped:,} of them skipped by the send")
        finally:
            server.terminate()
            server.wait()
            count_pipe.send("stop")


if __name__ == "__main__":
    main()
