"""Fetching feeds over HTTP, concurrently: conditional GET, redirects, deadlines, a size cap, retries.

This module returns bytes and headers; it neither parses XML nor touches the database. Feed servers
are hostile until proven otherwise, and nothing one of them does may cost the others or the machine:
- size: the cap applies to the decoded bytes as they stream, layer by layer of Content-Encoding. The
  layers are undone here, not by httpx, whose decoder inflates a whole chunk at once (437 bytes of
  `gzip, gzip, gzip` became 1 GiB in memory before any cap could look);
- time: one deadline per feed covers every attempt, redirect and pause between retries, and the
  message says which it was (a slow drip of bytes never trips a per-read timeout);
- addresses: link-local and cloud metadata addresses (169.254.169.254) are refused always, and
  loopback and private ones unless the feed is configured at such an address (or `private: true`).
  What counts is the address a name resolves to when connecting, checked again on every redirect,
  so that a public feed cannot lead digest into the machine or its network. A refused redirect is
  never remembered;
- anything else that goes wrong is that feed's error in its result, never an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
import socket
import ssl
import sys
import zlib
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

# httpx imports its command-line client (click, rich, pygments: 50 ms) whenever they are installed, as typer
# installs them; digest never runs it. A None in sys.modules makes that import fail, and httpx does without.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
import httpcore  # noqa: E402
import httpx  # noqa: E402

from digest import __version__  # noqa: E402
from digest.retry import CONNECTION_REFUSED, backoff, connection_failure  # noqa: E402
from digest.settings.config import CollectSettings  # noqa: E402

USER_AGENT = f"digest/{__version__} (RSS/Atom to newsletter; +https://pypi.org/project/digest/)"
ACCEPT = (
    "application/atom+xml, application/rss+xml, application/rdf+xml, application/xml;q=0.9, text/xml;q=0.9, */*;q=0.5"
)
ACCEPT_ENCODING = "gzip, deflate"  # what _Decoder undoes; nothing else is asked for
PERMANENT_REDIRECTS = {301, 308}
MAX_REDIRECTS = 10
POOL_SIZE = 16  # connections per httpx client
CHUNK = 64 * 1024  # the most one decompression step may produce
# Metadata services of cloud providers outside the link-local range (which is refused as a whole).
METADATA_ADDRESSES = {ipaddress.ip_address(address) for address in ("100.100.100.200", "fd00:ec2::254")}


@dataclass(frozen=True)
class FetchRequest:
    key: str  # the feed's URL as configured: how the caller knows the answer
    url: str  # where to fetch it now (the remembered permanent redirect target, if any)
    etag: str | None = None
    last_modified: str | None = None
    allow_private: bool = False  # loopback and private addresses allowed (the feed is configured at one)


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
    refused: bool = False  # the error is an address digest will not fetch from

    @property
    def not_modified(self) -> bool:
        return self.status == 304


class _Stop(Exception):
    """This feed's fetch is over, with this message: retrying cannot help."""

    def __init__(self, message: str, refused: bool = False):
        super().__init__(message)
        self.refused = refused


class _Retryable(Exception):
    pass


# --- addresses ---------------------------------------------------------------------------


_NAT64 = [ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48")]  # RFC 6052, RFC 8215
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # ::a.b.c.d, deprecated but still routed by some stacks
_RESERVED_IPV4 = [ipaddress.ip_network("240.0.0.0/4")]  # includes 255.255.255.255, the broadcast address
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")  # deprecated, still routed inside some networks; "global" to Python


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one leads to: mapped (::ffff:a.b.c.d), 6to4 (2002::/16), Teredo's client,
    or NAT64's (64:ff9b::/96). Each must be judged as the IPv4 address it is."""
    if ip.ipv4_mapped or ip.sixtofour:
        return ip.ipv4_mapped or ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]
    if any(ip in network for network in _NAT64) or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_problem(address: str, allow_private: bool) -> str | None:
    """Why digest must not connect to this IP address, or None."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        ip = _embedded_ipv4(ip) or ip
    if ip.is_link_local or ip in METADATA_ADDRESSES:
        return "a link-local or cloud metadata address"
    if ip.is_multicast or ip.is_unspecified:
        return "not a unicast address"
    if any(ip in network for network in _RESERVED_IPV4):  # "private" to Python, routed nowhere
        return "a reserved address"
    if not (ip.is_loopback or ip.is_private or ip in _SITE_LOCAL or not ip.is_global):
        return None
    return None if allow_private else "a loopback or private address (set `private: true` on the feed if it is meant)"


def configured_private(url: str) -> bool:
    """A feed configured at a loopback or private address (an IP, or localhost) may be fetched there."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return not ip.is_global and not ip.is_link_local


allow_private: contextvars.ContextVar[bool] = contextvars.ContextVar("allow_private", default=False)


async def _resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses that `address_problem` allows."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend):
        self.inner = inner

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, local_address: str | None = None, socket_options=None
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await _resolve(host, port)
        except (OSError, UnicodeError) as exc:  # UnicodeError: a name IDNA refuses (a..b)
            raise httpcore.ConnectError(f"cannot resolve {host}: {getattr(exc, 'strerror', None) or exc}") from None
        allowed = [address for address in addresses if address_problem(address, allow_private.get()) is None]
        if not allowed:
            problem = address_problem(addresses[0], allow_private.get())
            raise httpcore.ConnectError(f"{REFUSED}{host} is {addresses[0]}, {problem}")
        return await self.inner.connect_tcp(
            allowed[0], port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):  # pragma: no cover - not used
        raise httpcore.ConnectError("unix sockets are not fetched")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


REFUSED = "refused to connect: "


async def _check_redirect(url: str) -> None:
    """A redirect's target, checked by name before any pooled connection to that host could be reused."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Stop(f"redirected to {url[:200]!r}, which is not an http(s) address")
    try:
        addresses = await _resolve(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except OSError:
        return  # the connection attempt will say it cannot resolve the name
    for address in addresses:
        problem = address_problem(address, allow_private.get())
        if problem:
            raise _Stop(f"redirected to {url[:200]}: refused, {parts.hostname} is {address}, {problem}", refused=True)


# --- bodies ------------------------------------------------------------------------------


class _TooLarge(Exception):
    pass


class _Decoder:
    """Undoes the Content-Encoding layers of a body as it streams, no layer producing more than `cap` bytes."""

    def __init__(self, header: str, cap: int):
        codings = [coding.strip().lower() for coding in header.split(",")]
        codings = [coding for coding in codings if coding and coding != "identity"]
        unknown = [coding for coding in codings if coding not in ("gzip", "x-gzip", "deflate")]
        if unknown:
            raise _Stop(f"unsupported Content-Encoding: {', '.join(unknown)[:100]}")
        if len(codings) > 4:
            raise _Stop(f"{len(codings)} layers of Content-Encoding")
        self.layers = [_Inflater(coding) for coding in reversed(codings)]
        self.totals = [0] * (len(self.layers) + 1)
        self.cap = cap

    def feed(self, data: bytes) -> bytes:
        for index, layer in enumerate(self.layers):
            pieces = []
            while True:  # until the input is used up and a short piece says no output is pending either
                piece, data = layer.inflate(data, CHUNK)
                self._count(index, len(piece))
                pieces.append(piece)
                if not data and len(piece) < CHUNK:
                    break
            data = b"".join(pieces)
        self._count(len(self.layers), len(data))
        return data

    def _count(self, index: int, size: int) -> None:
        self.totals[index] += size
        if self.totals[index] > self.cap:
            raise _TooLarge()


_GZIP_MAGIC = b"\x1f\x8b"


class _Inflater:
    """One gzip or deflate layer. "deflate" is zlib-wrapped by the standard and raw from some servers: its
    first two bytes tell which. A gzip body may be several members one after another (RFC 1952 §2.2)."""

    def __init__(self, coding: str):
        self.gzip = coding != "deflate"
        self.engine = zlib.decompressobj(16 + zlib.MAX_WBITS) if self.gzip else None
        self.held = b""  # input too short to decide on yet: a deflate header, a next member's magic
        self.ended = False  # what follows the end of the stream is not part of the body

    def inflate(self, data: bytes, most: int) -> tuple[bytes, bytes]:
        """At most `most` bytes of output, and the input still to inflate. Output may be pending even when no
        input is left: call again with b"" until a piece shorter than `most` comes back."""
        if self.ended:
            return b"", b""
        if self.engine is None or self.engine.eof:
            data, self.held = self.held + data, b""
            if len(data) < 2:
                self.held = data
                return b"", b""
            if self.engine is None:
                wrapped = data[0] & 0x0F == 8 and int.from_bytes(data[:2], "big") % 31 == 0  # RFC 1950's header
                self.engine = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
            elif self.gzip and data.startswith(_GZIP_MAGIC):
                self.engine = zlib.decompressobj(16 + zlib.MAX_WBITS)  # the next member
            else:
                self.ended = True
                return b"", b""
        try:
            piece = self.engine.decompress(data, most)
        except zlib.error:
            raise _Stop("the body is not valid gzip or deflate data") from None
        return piece, self.engine.unused_data if self.engine.eof else self.engine.unconsumed_tail


# --- fetching ------------------------------------------------------------------------------


class Fetcher:
    """Fetches feeds, at most `settings.concurrency` at once, over a few small connection pools:

    async with Fetcher(settings, feed_count) as fetcher:
        result = await fetcher.fetch(request)
    """

    def __init__(self, settings: CollectSettings, feed_count: int, transport: httpx.AsyncBaseTransport | None = None):
        self.settings, self.transport = settings, transport
        # httpcore's pool does work proportional to its connections for every request it starts or ends,
        # so a thousand feeds through one 64-connection pool cost more CPU than the network; small pools don't.
        self.shards = max(1, min(feed_count, settings.concurrency) // POOL_SIZE)
        self.clients: list[httpx.AsyncClient] = []
        self.started = 0
        self._stack = contextlib.AsyncExitStack()
        self._semaphore = asyncio.Semaphore(settings.concurrency)

    async def __aenter__(self) -> Fetcher:
        per_pool = -(-self.settings.concurrency // self.shards)
        limits = httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool)
        tls = ssl.create_default_context()  # one for all pools: building it takes ~20 ms
        for _ in range(self.shards):
            client = httpx.AsyncClient(
                headers={"User-Agent": USER_AGENT, "Accept": ACCEPT, "Accept-Encoding": ACCEPT_ENCODING},
                timeout=httpx.Timeout(self.settings.timeout),
                follow_redirects=False,
                transport=self.transport or guarded_transport(tls, limits),
            )
            self.clients.append(await self._stack.enter_async_context(client))
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self._stack.aclose()

    async def fetch(self, request: FetchRequest) -> FetchResult:
        client = self.clients[self.started % self.shards]
        self.started += 1
        async with self._semaphore:
            return await fetch_one(client, request, self.settings)


def guarded_transport(tls: ssl.SSLContext, limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    transport = httpx.AsyncHTTPTransport(verify=tls, limits=limits)
    pool = transport._pool  # httpx does not take a network backend; httpcore's pool does
    pool._network_backend = _GuardedBackend(pool._network_backend)
    return transport


async def fetch_one(client: httpx.AsyncClient, request: FetchRequest, settings: CollectSettings) -> FetchResult:
    """One feed, with retries, within one deadline; never raises: the result says what went wrong."""
    result = FetchResult(key=request.key, url=request.url)
    allow = allow_private.set(request.allow_private)
    attempts, last = 0, None
    try:
        async with asyncio.timeout(settings.deadline):
            while True:
                attempts += 1
                try:
                    await _get(client, request, settings, result)
                    return result
                except (_Retryable, httpx.TimeoutException, httpx.TransportError) as exc:
                    last = _describe(exc, settings)
                    if str(exc).startswith(REFUSED):
                        _fail(result, str(exc), refused=True)
                        return result
                if attempts >= settings.max_attempts:
                    _fail(result, last if attempts == 1 else f"{last} ({attempts} attempts)")
                    return result
                await asyncio.sleep(backoff(attempts, settings.backoff, jitter=0.5))
    except TimeoutError:
        tried = f"{attempts} attempt{'s' if attempts > 1 else ''}" + (f"; the one before: {last}" if last else "")
        _fail(result, f"no complete answer within the {settings.deadline:g} s deadline ({tried})")
    except _Stop as stop:
        _fail(result, str(stop), refused=stop.refused)
    except _TooLarge:
        _fail(result, f"response larger than {settings.max_bytes / 2**20:g} MB")
    except Exception as exc:  # whatever else one server can provoke is this feed's error, not the run's
        _fail(result, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    finally:
        allow_private.reset(allow)
    return result


def _fail(result: FetchResult, error: str, *, refused: bool = False) -> None:
    result.error, result.refused = error, refused
    result.content, result.permanent_url = None, None


async def _get(
    client: httpx.AsyncClient, request: FetchRequest, settings: CollectSettings, result: FetchResult
) -> None:
    """One attempt: follow redirects by hand (each target checked), then read the body within the cap."""
    headers = {}
    if request.etag:
        headers["If-None-Match"] = request.etag
    if request.last_modified:
        headers["If-Modified-Since"] = request.last_modified
    url, permanent = request.url, True
    for hop in range(MAX_REDIRECTS + 1):
        if hop:
            await _check_redirect(url)
        async with client.stream("GET", url, headers=headers) as response:
            result.status, result.url = response.status_code, str(response.url)
            location = response.headers.get("Location")
            if response.is_redirect and location:
                permanent = permanent and response.status_code in PERMANENT_REDIRECTS
                url = urljoin(str(response.url), location.strip())
                continue
            result.permanent_url = str(response.url) if hop and permanent else None
            await _read(response, settings, result)
            return
    raise _Stop("too many redirects")


async def _read(response: httpx.Response, settings: CollectSettings, result: FetchResult) -> None:
    if response.status_code == 304:
        # A 304 has no body: reading its end gives the connection back to the pool, where an unread response
        # would close it (a new connection per unchanged feed: 2,000 feeds took 4.0-4.4 s, now 3.3-3.6). One that
        # says it has a body is left unread, and closed: h11 reads none after a 304, so those bytes would be
        # taken for the answer to the next feed asked on that connection.
        if "transfer-encoding" not in response.headers and response.headers.get("content-length", "0").strip() == "0":
            await response.aread()
        return
    if response.status_code >= 500 or response.status_code == 429:
        raise _Retryable(f"HTTP {response.status_code} {response.reason_phrase}")
    if response.status_code >= 400:
        raise _Stop(f"HTTP {response.status_code} {response.reason_phrase}")
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > settings.max_bytes:
        raise _TooLarge()
    decoder = _Decoder(response.headers.get("Content-Encoding", ""), settings.max_bytes)
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += decoder.feed(chunk)
    result.content = bytes(body)
    result.headers = {
        name.lower(): value
        for name, value in response.headers.items()
        if name.lower() not in ("content-encoding", "content-length", "transfer-encoding")
    }
    result.etag = response.headers.get("ETag")
    result.last_modified = response.headers.get("Last-Modified")


def _describe(exc: Exception, settings: CollectSettings) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out after {settings.timeout:g} s without an answer"
    if isinstance(exc, _Retryable):
        return str(exc)
    if isinstance(exc, httpx.ConnectError):
        if connection_failure(exc) == CONNECTION_REFUSED:  # not anyio's "All connection attempts failed"
            return "cannot connect: nothing listens there (connection refused)"
        return f"cannot connect: {exc}" if str(exc) else "cannot connect"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
