"""Fetching feeds over HTTP, concurrently: conditional GET, redirects, timeouts, size cap, retries.

This module returns bytes and headers; it neither parses XML nor touches the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from dataclasses import dataclass, field
from typing import AsyncIterator, Iterable

import httpx

from . import __version__
from .config import CollectSettings

USER_AGENT = f"digest/{__version__} (RSS/Atom to newsletter; +https://pypi.org/project/digest/)"
ACCEPT = "application/atom+xml, application/rss+xml, application/rdf+xml, application/xml;q=0.9, text/xml;q=0.9, */*;q=0.5"
PERMANENT_REDIRECTS = {301, 308}
POOL_SIZE = 16  # connections per httpx client


@dataclass(frozen=True)
class FetchRequest:
    key: str  # the feed's URL as configured: how the caller knows the answer
    url: str  # where to fetch it now (the remembered permanent redirect target, if any)
    etag: str | None = None
    last_modified: str | None = None


@dataclass
class FetchResult:
    key: str
    url: str  # the final URL after redirects
    status: int | None = None
    content: bytes | None = None  # None when not modified or failed
    headers: dict[str, str] = field(default_factory=dict)
    etag: str | None = None
    last_modified: str | None = None
    permanent_url: str | None = None  # set when every redirect hop was permanent
    error: str | None = None

    @property
    def not_modified(self) -> bool:
        return self.status == 304


class _TooLarge(Exception):
    pass


class _Retryable(Exception):
    pass


async def fetch_all(requests: Iterable[FetchRequest], settings: CollectSettings = CollectSettings(),
                    transport: httpx.AsyncBaseTransport | None = None) -> AsyncIterator[FetchResult]:
    """Fetch every feed with bounded concurrency, yielding each result as soon as it is in."""
    requests = list(requests)
    # httpcore's pool does work proportional to its connections for every request it starts or ends,
    # so a thousand feeds through one 64-connection pool cost more CPU than the network; small pools don't.
    shards = max(1, min(len(requests), settings.concurrency) // POOL_SIZE)
    per_pool = -(-settings.concurrency // shards)
    limits = httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool)
    tls = ssl.create_default_context()  # one for all pools: building it takes ~20 ms
    semaphore = asyncio.Semaphore(settings.concurrency)
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(httpx.AsyncClient(
            headers={"User-Agent": USER_AGENT, "Accept": ACCEPT}, timeout=httpx.Timeout(settings.timeout),
            limits=limits, follow_redirects=True, max_redirects=10, verify=tls, transport=transport))
            for _ in range(shards)]

        async def one(client: httpx.AsyncClient, request: FetchRequest) -> FetchResult:
            async with semaphore:
                return await fetch_one(client, request, settings)

        fetches = [one(clients[number % shards], request) for number, request in enumerate(requests)]
        for finished in asyncio.as_completed(fetches):
            yield await finished


async def fetch_one(client: httpx.AsyncClient, request: FetchRequest, settings: CollectSettings) -> FetchResult:
    """One feed, with retries; never raises for network or HTTP trouble: the result says what went wrong."""
    result = FetchResult(key=request.key, url=request.url)
    headers = {}
    if request.etag:
        headers["If-None-Match"] = request.etag
    if request.last_modified:
        headers["If-Modified-Since"] = request.last_modified
    delay = settings.backoff
    for attempt in range(1, settings.retries + 2):
        result.error = None
        try:
            await asyncio.wait_for(_get(client, request.url, headers, settings, result), settings.timeout * 2)
            return result
        except (_Retryable, httpx.TimeoutException, httpx.TransportError, asyncio.TimeoutError) as exc:
            result.error = _describe(exc, settings)
        except _TooLarge:
            result.error = f"response larger than {settings.max_bytes // 1024 // 1024} MB"
            return result
        except httpx.TooManyRedirects:
            result.error = "too many redirects"
            return result
        except httpx.HTTPError as exc:
            result.error = f"HTTP error: {exc}"
            return result
        if attempt <= settings.retries:
            await asyncio.sleep(delay * (1 + random.random() / 2))
            delay *= 2
    return result


async def _get(client: httpx.AsyncClient, url: str, headers: dict[str, str], settings: CollectSettings,
               result: FetchResult) -> None:
    async with client.stream("GET", url, headers=headers) as response:
        result.status = response.status_code
        result.url = str(response.url)
        result.permanent_url = _permanent_target(response)
        if response.status_code == 304:
            return
        if response.status_code >= 500 or response.status_code == 429:
            raise _Retryable(f"HTTP {response.status_code} {response.reason_phrase}")
        if response.status_code >= 400:
            result.error = f"HTTP {response.status_code} {response.reason_phrase}"
            return
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > settings.max_bytes:
            raise _TooLarge()
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > settings.max_bytes:
                raise _TooLarge()
        result.content = bytes(body)
        result.headers = {name.lower(): value for name, value in response.headers.items()}
        result.etag = response.headers.get("ETag")
        result.last_modified = response.headers.get("Last-Modified")


def _permanent_target(response: httpx.Response) -> str | None:
    """The final URL when every hop was a permanent redirect: fetch it there next time."""
    if response.history and all(hop.status_code in PERMANENT_REDIRECTS for hop in response.history):
        return str(response.url)
    return None


def _describe(exc: Exception, settings: CollectSettings) -> str:
    if isinstance(exc, (httpx.TimeoutException, asyncio.TimeoutError)):
        return f"timed out after {settings.timeout:g} s"
    if isinstance(exc, _Retryable):
        return str(exc)
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect: {exc}" if str(exc) else "cannot connect"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
