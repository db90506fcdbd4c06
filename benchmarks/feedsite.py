"""A loopback feed site for the collect benchmarks: N feeds made from the real-world feed corpus.

Feed n serves corpus file n mod K, with every link made its own (`https://example.com/...` becomes
`https://f<n>.example.com/...`; namespace URIs stay as they are), so that N feeds hold N times the corpus's
posts and no two feeds share one: the work of a real first collect of N different blogs, at the sizes and
oddities of real feeds (4.5 MB over 76 files, 60 KB on average). UTF-16 and UTF-32 files are left out (a
byte-level rewrite would break them). Every answer waits DELAY seconds, as a distant server does; an ETag
matching If-None-Match gets a 304.

The server runs in a process of its own, so that its CPU is not counted in the collector's.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

DELAY = 0.1  # seconds before each answer
REPOSITORY = Path(__file__).resolve().parents[1]
CORPUS_CANDIDATES = [
    Path(os.environ["DIGEST_SHARED_DIR"]) / "feeds-corpus" if os.environ.get("DIGEST_SHARED_DIR") else None,
    REPOSITORY.parent / "shared" / "feeds-corpus",
]
_NAMESPACE = re.compile(rb"""((?:xmlns(?::[\w.-]+)?|rdf:resource)\s*=\s*["'][a-z]+)://\0\.""")


def corpus() -> Path:
    for candidate in CORPUS_CANDIDATES:
        if candidate is not None and candidate.is_dir():
            return candidate
    raise SystemExit("the feed corpus (../shared/feeds-corpus) is missing; set DIGEST_SHARED_DIR")


def templates() -> list[bytes]:
    """Each corpus file with a NUL where the feed's number goes in every link's host."""
    found = []
    for path in sorted(corpus().iterdir()):
        body = path.read_bytes()
        wide = body[:2] in (b"\xff\xfe", b"\xfe\xff", b"<\0", b"\0<") or body[:4] == b"\x00\x00\xfe\xff"
        if path.suffix not in (".xml", ".rss", ".atom", ".rdf") or wide:
            continue
        found.append(_NAMESPACE.sub(rb"\1://", body.replace(b"://", b"://\0.")))
    return found


def body_of(bodies: list[bytes], number: int) -> bytes:
    return bodies[number % len(bodies)].replace(b"\0", b"f%d" % number)


def serve_bodies(
    port_queue: multiprocessing.Queue, body_of_path: Callable[[str], bytes | None], delay: float, content_type: str
) -> None:
    """A tiny asyncio HTTP/1.1 server on loopback (run it in a process of its own; its port goes into
    `port_queue`): every answer waits `delay` seconds, a path's ETag is the path, a matching If-None-Match
    gets a 304, a path without a body a 404."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                await asyncio.sleep(delay)
                body = body_of_path(path)
                etag = f'"{path}"'
                if body is None:
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                elif headers.get("if-none-match") == etag:
                    writer.write(f"HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nContent-Length: 0\r\n\r\n".encode())
                else:
                    writer.write(
                        f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nETag: {etag}\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n".encode()
                        + body
                    )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
        port_queue.put(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def _serve(port_queue: multiprocessing.Queue, delay: float) -> None:
    bodies = templates()

    def body_of_path(path: str) -> bytes | None:
        match = re.fullmatch(r"/feed/(\d+)\.xml", path)
        return body_of(bodies, int(match[1])) if match else None

    serve_bodies(port_queue, body_of_path, delay, "application/xml")


@contextmanager
def feed_site(delay: float = DELAY) -> Iterator[str]:
    """The site's base URL (feeds at /feed/<n>.xml) while the context lasts."""
    queue: multiprocessing.Queue = multiprocessing.Queue()
    server = multiprocessing.Process(target=_serve, args=(queue, delay), daemon=True)
    server.start()
    try:
        yield f"http://127.0.0.1:{queue.get(timeout=30)}"
    finally:
        server.terminate()
        server.join()


def feed_urls(base: str, count: int) -> list[str]:
    return [f"{base}/feed/{n}.xml" for n in range(count)]


@dataclass
class Usage:
    """What a process tree used: its peak memory (the sum of its processes' proportional set sizes, PSS,
    which counts a page shared by forked workers once, not once per worker) and its CPU seconds."""

    peak_bytes: int = 0
    cpu_ticks: dict[int, int] = field(default_factory=dict)

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20

    @property
    def cpu_seconds(self) -> float:
        return sum(self.cpu_ticks.values()) / os.sysconf("SC_CLK_TCK")


@contextmanager
def tree_usage(pid: int, interval: float = 0.05) -> Iterator[Usage]:
    """Samples `pid` and all its descendants every `interval` seconds until the context ends. Children of a
    forkserver are descendants too (getrusage would miss them: the forkserver, not us, waits for them)."""
    import threading

    usage = Usage()
    stop = threading.Event()

    def processes() -> dict[int, tuple[int, int]]:
        """pid → (parent, user + system ticks) of every process."""
        found = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                found[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
        return found

    def pss(process: int) -> int:
        try:
            for line in Path(f"/proc/{process}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def sample() -> None:
        while True:
            table, tree, total = processes(), [pid], 0
            children: dict[int, list[int]] = {}
            for process, (parent, _) in table.items():
                children.setdefault(parent, []).append(process)
            for process in tree:
                tree.extend(children.get(process, []))
            for process in tree:
                if process in table:
                    usage.cpu_ticks[process] = max(usage.cpu_ticks.get(process, 0), table[process][1])
                    total += pss(process)
            usage.peak_bytes = max(usage.peak_bytes, total)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield usage
    finally:
        stop.set()
        thread.join()
