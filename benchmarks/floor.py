"""The floor: the least any collector must do, to measure `digest collect` against in the same run.

httpx fetches every feed concurrently (conditional GET with the ETags of the run before), and
`feedparser.parse` reads each new body in a pool of 2 processes (without its own HTML sanitizing and link
resolving, which a collector may do its own way), returning only its number of entries:
no storage, no cleaning, no deduplication. Like digest, it spreads its connections over small httpx
pools (one pool of 128 connections spends its CPU on httpcore's bookkeeping) with one TLS context for all, and
never hands feedparser a URL.

    python benchmarks/floor.py URL_FILE STATE_FILE     # one run, as a process of its own; prints JSON

URL_FILE holds one feed URL a line; STATE_FILE keeps the ETags between runs (created if missing).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

CONCURRENCY = 128
POOL_SIZE = 16  # connections per httpx client, as digest's fetcher
WORKERS = 2


def entries_in(body: bytes) -> int:
    import feedparser

    return len(feedparser.parse(body, sanitize_html=False, resolve_relative_uris=False).entries)


async def collect(urls: list[str], etags: dict[str, str]) -> tuple[int, int]:
    import httpx

    semaphore = asyncio.Semaphore(CONCURRENCY)
    loop = asyncio.get_running_loop()
    limits = httpx.Limits(max_connections=POOL_SIZE, max_keepalive_connections=POOL_SIZE)
    tls = ssl.create_default_context()  # one for every client, as digest's: each costs 25-30 ms to build
    clients = [httpx.AsyncClient(limits=limits, timeout=60, verify=tls) for _ in range(CONCURRENCY // POOL_SIZE)]
    parsed = entries = 0
    with ProcessPoolExecutor(WORKERS) as pool:

        async def one(number: int, url: str) -> None:
            nonlocal parsed, entries
            async with semaphore:
                headers = {"If-None-Match": etags[url]} if url in etags else {}
                response = await clients[number % len(clients)].get(url, headers=headers)
            if response.status_code == 200:
                if "etag" in response.headers:
                    etags[url] = response.headers["etag"]
                found = await loop.run_in_executor(pool, entries_in, response.content)
                entries, parsed = entries + found, parsed + 1  # after the await: `entries += await` loses updates

        await asyncio.gather(*(one(number, url) for number, url in enumerate(urls)))
    for client in clients:
        await client.aclose()
    return parsed, entries


def main() -> None:
    started = time.perf_counter()
    urls = Path(sys.argv[1]).read_text().split()
    state = Path(sys.argv[2])
    etags = json.loads(state.read_text()) if state.exists() else {}
    parsed, entries = asyncio.run(collect(urls, etags))
    state.write_text(json.dumps(etags))
    print(json.dumps({"seconds": time.perf_counter() - started, "parsed": parsed, "entries": entries}))


if __name__ == "__main__":
    main()
