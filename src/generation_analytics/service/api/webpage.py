"""The dashboard's files (page, script, styles, the vendored uPlot), shipped in the package, served by the gateway.

The page holds no figures: it asks the gateway's JSON API for every one, with the caller's key, so it shows
exactly what the API answers and is open to everyone (auth.py). Files are read once when the app is built,
from a fixed set of names, so no request path ever reaches the file system. Each is served with an ETag
(304 when unchanged), gzip when the browser accepts it, and, for the page, a Content-Security-Policy that
lets it load only its own files and call only this origin (no CDN, works offline).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from generation_analytics.questions import QUESTIONS

FILES_DIR = Path(__file__).with_name("dashboard")
PAGE = "index.html"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Only its own files and its own origin; uPlot sizes elements through the CSSOM (allowed), no inline <style>.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
# Seconds between refreshes the page uses unless its URL says otherwise (`?refresh=N`).
REFRESH_S = 30


@dataclass(frozen=True)
class Asset:
    """One file as served: its bytes, gzipped bytes (when smaller), type and validator."""

    body: bytes
    gzipped: bytes | None
    content_type: str
    etag: str

    @classmethod
    def of(cls, body: bytes, content_type: str) -> Asset:
        packed = gzip.compress(body, compresslevel=9, mtime=0)
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        return cls(body, packed if len(packed) < len(body) else None, content_type, etag)


def load_assets(directory: Path = FILES_DIR) -> dict[str, Asset]:
    """Every servable file of `directory` by name (LICENSE and notes are shipped, not served)."""
    return {
        path.name: Asset.of(path.read_bytes(), CONTENT_TYPES[path.suffix])
        for path in sorted(directory.iterdir())
        if path.is_file() and path.suffix in CONTENT_TYPES
    }


def _answer(request: web.Request, asset: Asset, headers: dict[str, str]) -> web.Response:
    # no-cache: revalidated on every load (a 304 when unchanged), so an upgraded service shows its page at once.
    headers = {
        **SECURITY_HEADERS,
        **headers,
        "ETag": asset.etag,
        "Cache-Control": "no-cache",
        "Vary": "Accept-Encoding",
    }
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    if asset.gzipped is not None and "gzip" in request.headers.get("Accept-Encoding", ""):
        headers["Content-Encoding"] = "gzip"
        return web.Response(body=asset.gzipped, headers={**headers, "Content-Type": asset.content_type})
    return web.Response(body=asset.body, headers={**headers, "Content-Type": asset.content_type})


def api_features() -> dict[str, bool]:
    """What this version of the API can answer beyond the basics, read from the questions it takes:
    `compare_previous` (GetOverview's previous equal window, shown beside each headline tile)."""
    overview = {f.name for f in dataclasses.fields(QUESTIONS["GetOverview"])}
    return {"compare_previous": "compare_previous" in overview}


# The page's settings travel inside it (one request fewer before the first figure): this tag, filled in.
CONFIG_TAG = b'<meta name="ga-config" content="{}">'


class Dashboard:
    """The handlers of `/`, `/dashboard` and `/dashboard/{name}`.

    The page carries its settings in a <meta name="ga-config"> tag: whether to ask for a key before its
    first call (so that with auth on no request goes out without one, and no 401 lands in the browser's
    console), how often to refresh, and which optional questions the API takes (`api_features`).
    """

    def __init__(self, *, auth_required: bool, assets: dict[str, Asset] | None = None) -> None:
        self._assets = dict(assets if assets is not None else load_assets())
        config: dict[str, Any] = {"auth_required": auth_required, "refresh_s": REFRESH_S, "features": api_features()}
        page = self._assets[PAGE]
        assert CONFIG_TAG in page.body, f"{PAGE} lost its config tag"
        tag = f'<meta name="ga-config" content="{html.escape(json.dumps(config), quote=True)}">'.encode()
        self._assets[PAGE] = Asset.of(page.body.replace(CONFIG_TAG, tag), page.content_type)

    async def page(self, request: web.Request) -> web.Response:
        return _answer(request, self._assets[PAGE], {"Content-Security-Policy": CSP})

    async def file(self, request: web.Request) -> web.Response:
        asset = self._assets.get(request.match_info["name"])
        if asset is None:
            raise web.HTTPNotFound()
        return _answer(request, asset, {})

    async def to_page(self, request: web.Request) -> web.Response:
        """`/dashboard/` -> `/dashboard`: the page's relative links resolve from the latter."""
        raise web.HTTPPermanentRedirect("/dashboard")

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.page),
            web.get("/dashboard", self.page),
            web.get("/dashboard/", self.to_page),
            web.get("/dashboard/{name}", self.file),
        ]
