"""The ASGI application: API, ``/metrics``, the dashboard, its static files and the OpenAPI schema."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.staticfiles import StaticFiles

from dicom_node.http.api import api_router, metrics_route
from dicom_node.http.context import HttpContext
from dicom_node.http.dashboard import dashboard_router

#: Headers on every answer: no framing, no sniffing, scripts and styles from this origin only.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'; "
    "base-uri 'none'; object-src 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def create_app(h: HttpContext) -> FastAPI:
    app = FastAPI(
        title="SegNode",
        version="1",
        summary="The node's jobs, destinations, configuration and audit log; job actions for admins.",
        description="Every request needs credentials: HTTP basic (a user of http.users) or "
        "'Authorization: Bearer <token>' (http.tokens). Read-only users and tokens may call every GET; "
        "retry, resend and cancel need the admin role. Refused requests (401, 403) are written to the "
        "audit log as http_request_refused.",
        docs_url=None,  # the interactive pages load scripts from the internet; the schema is enough
        redoc_url=None,
        openapi_url=None,
    )
    app.include_router(api_router(h))
    app.include_router(metrics_route(h))
    app.include_router(dashboard_router(h))
    static = resources.files("dicom_node.http").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(request: Request) -> dict[str, Any]:
        h.api_principal(request)
        return app.openapi()

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if h.config.http.tls.enabled:
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        return response

    return app
