"""``stackbot serve``: the operator console, a FastAPI application in a process of its own.

It reads the ledger (so it works while the bot is down) and sends commands through the same
PostgreSQL request-and-NOTIFY path as ``stackbot kill`` (``bot/ledger/control_requests``), so
it needs no broker. Routes: ``bot/web/api.py`` (JSON, ``/api/v1``) and ``bot/web/pages.py``
(the dashboard). Everything but ``/health`` and the static assets needs a login.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from bot.config import Settings
from bot.errors import LedgerError
from bot.logs import get_logger
from bot.web import api, pages
from bot.web.console import HERE, Console
from bot.web.events import Changes

API_VERSION = "v1"
log = get_logger("web")

CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def create_app(settings: Settings, account: str, connect: bool = True) -> FastAPI:
    """The console for one account. ``connect=False`` skips the ledger (schema export)."""
    console = Console(settings, account)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not connect:
            yield
            return
        from bot.app import database_logins_of
        from bot.ledger.logins import prepare
        from bot.ledger.repository import make_engine
        from bot.ledger.urls import async_url, plain_url

        logins = database_logins_of(settings)
        await prepare(logins)
        console.engine = make_engine(logins.service, pool_size=4)
        console.changes = Changes(plain_url(async_url(logins.service)))
        console.changes.start()
        log.info("console_started", account=account, host=settings.web.host,
                 port=settings.web.port)
        try:
            yield
        finally:
            await console.changes.close()
            await console.engine.dispose()

    app = FastAPI(title="stackbot console", version=API_VERSION, lifespan=lifespan,
                  docs_url=None, redoc_url=None,  # Swagger UI would load from a CDN
                  openapi_url=f"/api/{API_VERSION}/openapi.json")
    app.state.console = console

    @app.middleware("http")
    async def headers(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(LedgerError)
    @app.exception_handler(SQLAlchemyError)
    @app.exception_handler(OSError)
    async def ledger_down(request: Request, exc: Exception) -> JSONResponse:
        log.error("ledger_unavailable", error=str(exc), path=request.url.path)
        return JSONResponse({"detail": "ledger unavailable"}, status_code=503)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Any:
        wants_html = "text/html" in request.headers.get("accept", "") and \
            not request.url.path.startswith("/api/")
        if exc.status_code == 401 and wants_html:
            return RedirectResponse("/login", status_code=303)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code,
                            headers=exc.headers)

    @app.get("/health", tags=["health"])
    async def health() -> dict[str, Any]:
        """Liveness, and whether the ledger answers. Needs no login."""
        if not connect or console.engine is None:
            return {"status": "ok", "ledger": False}
        try:
            async with console.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return {"status": "ok", "ledger": True}
        except (SQLAlchemyError, OSError):
            return {"status": "ok", "ledger": False}

    app.include_router(api.router, prefix=f"/api/{API_VERSION}")
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    return app
