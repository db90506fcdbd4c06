"""The links of posts: the clean form a reader is shown, and the identity that tells two articles apart.

- `clean_url`: absolute http(s), host lower-cased, default port and tracking parameters (`utm_*`, `fbclid`,
  `ref` unless on a code host, `source` when it names where the link was shared, ...) removed. Scheme, `www.`
  and the fragment stay: `scripting.com/…/01.html#a1` and `#a2` are two posts, and not every site answers
  without `www.` or over https. Fragments that only track (`#tk.rss_all`, `#xtor=RSS-8`) go.
- `url_key`: what two links must share to be one article: the clean form without its scheme, `www.` and
  default port, so `http://www.example.com:80/a?ref=x` and `https://example.com/a` are one post.
- `unwrap`: the target of a redirector that carries it in the query (Facebook, Google, Tumblr, ...).
  Redirectors that carry only an id (FeedPress, FeedBurner) cannot be undone offline: `is_opaque_redirect`
  tells them, so that a post shows its feed's site as its source instead of the tracker's.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import parse_qsl, unquote, urljoin, urlsplit, urlunsplit

# Query parameters that only say who sent the reader: the same article with and without them is one post.
_TRACKING_PARAMETERS = {
    "fbclid",
    "gclid",
    "dclid",
    "gbraid",
    "wbraid",
    "msclkid",
    "yclid",
    "twclid",
    "igshid",
    "mc_cid",
    "mc_eid",
    "_hsenc",
    "_hsmi",
    "mkt_tok",
    "ref_src",
    "ref_url",
    "referrer",
    "oly_anon_id",
    "oly_enc_id",
    "vero_id",
    "wt_mc",
    "spm",
    "s_cid",
    "cmpid",
    "sr_share",
}
_TRACKING_PREFIXES = ("utm_", "pk_", "mtm_", "at_", "ga_")
# `ref` names a referrer (Ghost's ?ref=blog.example.com), except on code hosts, where it names a branch;
# `source` is a tracker when it says where the link was shared (Medium's ?source=rss----…), else content.
_CODE_HOSTS = ("github.com", "gitlab.com", "bitbucket.org", "codeberg.org", "sr.ht")
_TRACKING_SOURCE = re.compile(
    r"^(rss|feed|atom|twitter|facebook|linkedin|newsletter|e?mail|social|share|reddit)", re.IGNORECASE
)
# Fragments that only track: `#utm_source=…`, `#xtor=RSS-8`, `#tk.rss_all`, AddThis's `#.VtCA1eS6FaQ`.
_TRACKING_FRAGMENT = re.compile(r"utm_|^xtor=|^tk\.|^\.[\w-]{8,}$|^ref=", re.IGNORECASE)
_DEFAULT_PORTS = {"http": 80, "https": 443}
# host -> (path, the query parameter holding the target)
_REDIRECTORS = {
    "l.facebook.com": ("/l.php", "u"),
    "lm.facebook.com": ("/l.php", "u"),
    "www.google.com": ("/url", "q url"),
    "google.com": ("/url", "q url"),
    "t.umblr.com": ("/redirect", "z"),
    "www.linkedin.com": ("/redir/redirect", "url"),
    "out.reddit.com": (None, "url"),
    "slack-redir.net": ("/link", "url"),
    "www.youtube.com": ("/redirect", "q"),
    "href.li": (None, None),
}
# host -> path prefix of links that redirect to the article by an id alone
_OPAQUE = {
    "tracking.feedpress.it": "/link/",
    "feedpress.me": "/link/",
    "feedproxy.google.com": "/~r/",
    "feeds.feedburner.com": "/~r/",
    "feeds2.feedburner.com": "/~r/",
    "rss.feedsportal.com": "/",
    "da.feedsportal.com": "/",
}


def _invisible(char: str) -> bool:
    """Controls and format characters (a bidi override in a link would make it read as another)."""
    return ord(char) < 32 or (ord(char) > 126 and unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp"))


_UNFIT_ASCII = re.compile(r"[\x00-\x20\x7f]")  # in ASCII, what isspace() and _invisible() find


def _has_unfit_characters(url: str) -> bool:
    """Spaces or invisible characters: a link holding them is not one (a regular expression when the URL
    is ASCII, as nearly all are; a loop of lookups in the Unicode database only when it is not)."""
    if url.isascii():
        return bool(_UNFIT_ASCII.search(url))
    return any(char.isspace() or _invisible(char) for char in url)


def _is_tracking(pair: str, host: str) -> bool:
    """Whether one raw `name=value` pair of a query only tracks the reader."""
    name, _, value = (unquote(part) for part in pair.partition("="))
    name = name.lower()
    if name == "ref":
        return not host.endswith(_CODE_HOSTS)
    if name == "source":
        return bool(_TRACKING_SOURCE.match(value))
    return name in _TRACKING_PARAMETERS or name.startswith(_TRACKING_PREFIXES)


def clean_url(url: str | None, base: str | None = None) -> str | None:
    """Absolute http(s) URL without tracking parameters, or None when it is not one."""
    url = (url or "").strip()
    if not url:
        return None
    try:
        parts = urlsplit(urljoin(base, url) if base else url)
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not host or _has_unfit_characters(url):
        return None
    if ":" in host:
        host = f"[{host}]"
    if port and port != _DEFAULT_PORTS[scheme]:
        host = f"{host}:{port}"
    # The query's own text is kept, pair by pair: decoding and encoding it again would change it (`%2B`, a
    # latin-1 `%E9`) and could make two articles one.
    query = "&".join(pair for pair in parts.query.split("&") if pair and not _is_tracking(pair, host))
    fragment = "" if _TRACKING_FRAGMENT.search(parts.fragment) else parts.fragment
    return urlunsplit((scheme, host, parts.path or "/", query, fragment))


def url_key(url: str) -> str:
    """The identity of a clean URL: scheme, `www.` and the default port do not tell articles apart."""
    parts = urlsplit(url)
    host = parts.netloc.lower().removeprefix("www.")
    return urlunsplit(("", host, parts.path, parts.query, parts.fragment))


def prefer(stored: str | None, incoming: str | None) -> str | None:
    """Of two forms of one article's link, the https one."""
    if stored and incoming and stored.startswith("http:") and incoming.startswith("https:"):
        return incoming
    return stored or incoming


def unwrap(url: str) -> str:
    """The target of a redirector that carries it in its query, else the URL itself."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    host = (parts.hostname or "").lower()
    shape = _REDIRECTORS.get(host)
    if shape is None:
        return url
    path, names = shape
    if host == "href.li" and parts.query.startswith("http"):
        return clean_url(unquote(parts.query)) or url
    if names is None or (path is not None and parts.path != path):
        return url
    query = dict(parse_qsl(parts.query))
    for name in names.split():
        target = clean_url(query.get(name))
        if target:
            return target
    return url


def is_opaque_redirect(url: str | None) -> bool:
    """A tracker's link that names the article by an id only (FeedPress, FeedBurner): nothing to unwrap offline."""
    if not url:
        return False
    parts = urlsplit(url)
    prefix = _OPAQUE.get((parts.hostname or "").lower())
    return prefix is not None and parts.path.startswith(prefix)


def host_of(url: str | None) -> str:
    """The site's name as readers know it: the host without `www.`."""
    try:
        return (urlsplit(url or "").hostname or "").removeprefix("www.")
    except ValueError:
        return ""


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # Unicode's Cc, exactly: a regular expression, not a loop of lookups


def is_http_url(url: str) -> bool:
    """An absolute http(s) URL with a host, that urllib and httpx can take apart (brackets, port)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not _CONTROL.search(url)


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def secret_url_problem(url: str) -> str | None:
    """Why a secret (an API key) must not be sent to this URL: https only, but for http to this machine (tests)."""
    if not is_http_url(url):
        return f"must be an https URL, got {url!r}"
    parts = urlsplit(url)
    if parts.scheme != "https" and parts.hostname not in LOOPBACK_HOSTS:
        return f"must be an https URL (the API key must not travel unencrypted), got {url!r}"
    return None
