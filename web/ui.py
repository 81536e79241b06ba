"""Serving the built browser UI (frontend/dist) from the web process.

`mount_ui(app, dist_dir)` adds the UI's pages and its static files to an
application whose API routes are already in place:

- the pages `/` (the client page), `/admin` and `/cluster` all answer with
  `index.html`; the UI routes between them in the browser. Only these paths
  do, so an unknown path is still a 404 from the API;
- `/assets/*`: the scripts and styles Vite built, whose names carry a hash of
  their content, so browsers may keep them for a year.

`index.html` is read on every request, so a rebuild shows without a restart.
When the UI is not built, the pages answer 503 with a page saying how to
build it (unstyled: the Content-Security-Policy allows no inline style), and
the API keeps working.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

PAGES = ("/", "/admin", "/cluster")
DEFAULT_DIST = Path(__file__).resolve().parent.parent / "frontend" / "dist"

NOT_BUILT_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>taskring: the browser UI is not built</title></head>
<body>
<h1>The browser UI is not built</h1>
<p>This web process serves the UI from <code>{dist}</code>, which has no
<code>index.html</code>. Build it with <code>make run</code>, or by hand:</p>
<pre>cd frontend &amp;&amp; npm ci &amp;&amp; npm run build</pre>
<p>The API works meanwhile:</p>
<ul>
<li><a href="/api/cluster">/api/cluster</a>: the portals and the ring</li>
<li><a href="/readyz">/readyz</a>: whether a write can commit end to end</li>
<li><a href="/metrics">/metrics</a>: request metrics in Prometheus text format</li>
<li><a href="/healthz">/healthz</a>: whether this web process runs</li>
</ul>
</body>
</html>
"""


class HashedAssets(StaticFiles):
    """Static files whose names change with their content: cache them for good."""

    async def get_response(self, path: str, scope: Scope):
        response = await super().get_response(path, scope)
        if response.status_code == 200:
            response.headers["cache-control"] = "public, max-age=31536000, immutable"
        return response


def mount_ui(app: FastAPI, dist_dir: Path = DEFAULT_DIST) -> None:
    """Serve the UI built into `dist_dir` at PAGES and /assets."""
    index = dist_dir / "index.html"

    async def page() -> HTMLResponse:
        try:
            html = index.read_text(encoding="utf-8")
        except OSError:
            return HTMLResponse(NOT_BUILT_PAGE.format(dist=escape(str(dist_dir))), status_code=503)
        # The page names the current asset hashes, so it must never be cached itself.
        return HTMLResponse(html, headers={"cache-control": "no-cache"})

    for path in PAGES:
        app.add_api_route(path, page, methods=["GET"], include_in_schema=False)
    app.mount("/assets", HashedAssets(directory=dist_dir / "assets", check_dir=False), "assets")
