"""What every answer of the web app gets, whatever made it: the security headers, and for an error no
handler knew a plain 500 that names an error id instead of the exception (whose text can quote server
paths); the traceback goes to the log under that id. A pure ASGI middleware, so it also sees the 500s
it makes itself (Starlette's `@app.middleware("http")` and `exception_handler(Exception)` do not: the
catch-all handler runs outside every middleware). A client that hangs up mid-upload is not an error.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse

log = logging.getLogger("wbc")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
# Swagger UI (served from local files) styles its widgets inline; scripts stay 'self' only
DOCS_CSP = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")


def security_headers(path: str, status: int) -> dict[str, str]:
    """The headers of an answer to `path`; the API's answers and every error are never cached."""
    docs = path in ("/docs", "/docs/") or path.startswith("/docs-assets")
    headers = {
        "Content-Security-Policy": DOCS_CSP if docs else CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
    }
    if path.startswith("/api/") or status >= 500:
        headers["Cache-Control"] = "no-store"
    return headers


class GuardedResponses:
    """Security headers on every HTTP answer; unhandled errors as a generic 500 with an error id."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, started = scope.get("path", ""), False

        async def send_guarded(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for key, value in security_headers(path, int(message["status"])).items():
                    if key == "Cache-Control":
                        headers.setdefault(key, value)  # a route's own caching wins
                    else:
                        headers[key] = value
            await send(message)

        try:
            await self.app(scope, receive, send_guarded)
        except ClientDisconnect:  # a tab closed mid-upload: nobody is left to answer
            log.info("%s %s: the client went away before its request had arrived", scope.get("method"), path)
        except Exception as err:
            if started:  # half an answer is out: the server closes the connection, and logs it
                raise
            error_id = secrets.token_hex(4)
            log.error("%s %s failed (error %s)", scope.get("method"), path, error_id, exc_info=err)
            detail = f"the server could not do this (error {error_id}; the details are in the server's log under that id)"
            await JSONResponse({"detail": detail, "error_id": error_id}, status_code=500)(scope, receive, send_guarded)
