"""Benchmark `digest send` over SMTP: N subscribers to a loopback aiosmtpd sink in its own process.

Prints the real command's rate (ledger included) and peak memory, and, measured in the same run over
the same number of connections, the ceiling: plain smtplib sending one pre-built message (a copy
`digest send --dry-run` wrote) N times, with no rendering, substitution or ledger.

    python benchmarks/send.py                 # 10,000 subscribers, 4 connections
    python benchmarks/send.py 2000 --connections 2
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.project import WEEK, make_project, subscribers


def sink(port_pipe, count_pipe) -> None:
    """An aiosmtpd server that accepts everything and counts; answers its count on request."""
    from aiosmtpd.controller import Controller

    class Counter:
        received = 0

        async def handle_DATA(self, server, session, envelope):
            Counter.received += 1
            return "250 OK"

    class FreePortController(Controller):
        def _trigger_server(self):
            self.port = self.server.sockets[0].getsockname()[1]
            super()._trigger_server()

    controller = FreePortController(Counter(), hostname="127.0.0.1", port=0)
    controller.start()
    port_pipe.send(controller.port)
    while (request := count_pipe.recv()) != "stop":
        if request == "reset":
            Counter.received = 0
        count_pipe.send(Counter.received)
    controller.stop()


def ceiling(port: int, message: bytes, total: int, connections: int) -> tuple[float, float]:
    """Messages per second of plain smtplib sending one pre-built message over `connections` connections,
    and the CPU seconds that took on this side (the sink's are its own process's)."""

    def worker(count: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            for n in range(count):
                smtp.sendmail("digest@example.com", [f"reader{n:05d}@example.com"], message)

    shares = [total // connections + (1 if n < total % connections else 0) for n in range(connections)]
    threads = [threading.Thread(target=worker, args=(share,)) for share in shares]
    started, cpu = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return total / (time.perf_counter() - started), time.process_time() - cpu


def digest(directory: Path, *args: str) -> tuple[str, float, int, float]:
    """Run the real command; returns its output, wall time, peak RSS in KB and CPU seconds (wait4: that
    process only)."""
    env = dict(os.environ, DIGEST_UNSUBSCRIBE_SECRET="benchmark-secret")
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "digest", *args],
        cwd=directory,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"digest {' '.join(args)} exited {process.returncode}:\n{output}")
    return output, time.perf_counter() - started, usage.ru_maxrss, usage.ru_utime + usage.ru_stime


def measure(total: int, connections: int, say=print) -> dict:
    """Send to `total` subscribers over `connections` connections, the ceiling measured before and after."""
    context = multiprocessing.get_context("spawn")
    port_parent, port_child = context.Pipe()
    count_parent, count_child = context.Pipe()
    server = context.Process(target=sink, args=(port_child, count_child), daemon=True)
    server.start()
    port = port_parent.recv()

    def received(reset: bool = False) -> int:
        count_parent.send("reset" if reset else "count")
        return count_parent.recv()

    with tempfile.TemporaryDirectory(prefix="digest-send-bench-") as tmp:
        directory = Path(tmp)
        make_project(directory, port, subscribers(total), items=20, smtp={"connections": connections})
        digest(directory, "send", "--week", WEEK, "--dry-run")
        sample = next((directory / "drafts" / f"{WEEK}.dry-run").glob("*.eml")).read_bytes()
        say(
            f"{total:,} subscribers, {connections} connections, message {len(sample) / 1024:.0f} KB, "
            f"sink pid {server.pid}"
        )
        before, before_cpu = ceiling(port, sample, total, connections)
        received(reset=True)
        output, wall, peak_kb, cpu = digest(directory, "send", "--week", WEEK, "--yes")
        delivered = received()
        after, after_cpu = ceiling(port, sample, total, connections)
    count_parent.send("stop")
    server.join(10)
    match = re.search(r"([\d,]+) sent, .* in ([\d.]+) s", output)
    sent, seconds = int(match[1].replace(",", "")), float(match[2])
    assert sent == total == delivered, (sent, total, delivered, output)
    return {
        "ceiling": max(before, after),
        "ceilings": (before, after),
        "sending_rate": sent / seconds,
        "wall": wall,
        "rate": sent / wall,
        "peak_mb": peak_kb / 1024,
        "cpu_us": cpu / total * 1e6,
        "ceiling_cpu_us": min(before_cpu, after_cpu) / total * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("subscribers", type=int, nargs="?", default=10_000)
    parser.add_argument("--connections", type=int, default=4)
    options = parser.parse_args()
    result = measure(options.subscribers, options.connections)
    best = result["ceiling"]
    before, after = result["ceilings"]
    print(f"ceiling (plain smtplib, one pre-built message): {before:,.0f} msg/s before, {after:,.0f} after")
    print(
        f"digest send, sending phase (render excluded, ledger included): {result['sending_rate']:,.0f} msg/s "
        f"= {result['sending_rate'] / best:.0%} of the ceiling"
    )
    print(
        f"digest send, whole command (start-up, render, ledger): {result['wall']:.1f} s = "
        f"{result['rate']:,.0f} msg/s = {result['rate'] / best:.0%} of the ceiling"
    )
    print(f"peak memory of the sending process (ru_maxrss): {result['peak_mb']:.0f} MB")
    print(
        f"CPU per message on the sending side: digest {result['cpu_us']:,.0f} µs, "
        f"plain smtplib {result['ceiling_cpu_us']:,.0f} µs"
    )


if __name__ == "__main__":
    main()
