"""The web page `img2music serve` shows at `/`: drop an image, watch the graph, get the music.

Hand-written HTML, CSS and JavaScript, shipped as package data and served by the app itself, so
the page needs nothing from the internet and no build step. It talks to the same API as any
other client (`/v1/chat/completions` streamed, `/v1/runs/...`), with the same key.

The score that follows the audio is drawn by abcjs, which `scripts/install.sh` takes from npm
(a pinned version) into the git-ignored `vendor/` folder; the app serves it as `page/abcjs.js`
and tells the page it has it. Without it the page shows the SVG score that abcm2ps engraved.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from img2music.server.protocol import MAX_NOTE_CHARS, ApiError
from img2music.settings import Settings

# Everything the page loads comes from this server; model output shown on it cannot run script.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' blob:; media-src 'self' blob:; "
                               "connect-src 'self' blob:; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
ASSETS = {"page.js": "text/javascript; charset=utf-8", "page.css": "text/css; charset=utf-8",
          "rework.js": "text/javascript; charset=utf-8", "icon.svg": "image/svg+xml"}
ABCJS = files(__name__).joinpath("vendor", "abcjs-basic-min.js")
BODY_RESERVE_BYTES = 16_384
# Seconds the page waits beyond the server's run limit before it gives up on a silent server.
CLIENT_MARGIN_S = 30.0


def mount_page(app: FastAPI, settings: Settings) -> None:
    """Serve the page at `/` and its files under `/page/`; they need no key, the API does.

    The files are read once, here, so that serving them never blocks the event loop.
    """
    contents = {name: files(__name__).joinpath(name).read_bytes()
                for name in ("index.html", *ASSETS)}
    abcjs = _read_if_there(ABCJS)

    def asset_response(name: str, media_type: str) -> Response:
        return Response(contents[name], media_type=media_type, headers=PAGE_HEADERS)

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return asset_response("index.html", "text/html; charset=utf-8")

    @app.get("/page/config.json", include_in_schema=False)
    async def page_config() -> JSONResponse:
        """What the page needs before the first call: whether to ask for a key, limits, defaults."""
        return JSONResponse({**page_settings(settings), "abcjs": abcjs is not None},
                            headers=PAGE_HEADERS)

    @app.get("/page/abcjs.js", include_in_schema=False)
    async def abcjs_script() -> Response:
        if abcjs is None:
            raise ApiError(404, "this server has no abcjs (scripts/install.sh installs it)",
                           type="not_found_error", code="file_not_found")
        return Response(abcjs, media_type=ASSETS["page.js"], headers=PAGE_HEADERS)

    @app.get("/page/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in ASSETS:
            raise ApiError(404, f"the page has no file {name!r}", type="not_found_error",
                           code="file_not_found")
        return asset_response(name, ASSETS[name])


def page_settings(settings: Settings) -> dict[str, Any]:
    """The limits the page checks first; the Advanced panel's options come from `/v1/options`
    (with the key, as every part of the API)."""
    return {
        "auth": settings.api_key is not None,
        "run_timeout_s": settings.server_run_timeout_s,
        "client_timeout_s": settings.server_run_timeout_s + CLIENT_MARGIN_S,
        # base64 makes the image 4/3 as large; the note and the rest fit in the reserve.
        "max_upload_bytes": min(settings.max_image_bytes,
                                (settings.server_max_body_bytes - BODY_RESERVE_BYTES) * 3 // 4),
        "max_note_chars": MAX_NOTE_CHARS,
        "max_takes": settings.server_max_concurrent_runs,  # a run's takes each hold a slot
    }



def _read_if_there(path: Traversable) -> bytes | None:
    return path.read_bytes() if path.is_file() else None
