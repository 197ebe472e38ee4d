"""The dashboard: server-rendered pages (Jinja2, assets shipped in the package), usable with
no script at all; ``static/console.js`` only adds live updates from the event stream."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markdown_it import MarkdownIt
from markupsafe import Markup

from bot.ledger.model_versions import test_accuracy
from bot.status import runs_of
from bot.web import views
from bot.web.api import send_command
from bot.web.auth import LOGIN_COOKIE, SESSION_COOKIE, verify_password
from bot.web.charts import equity_svg
from bot.web.console import HERE, Console, Operator, require

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(HERE / "templates"))
Auth = Annotated[Operator, Depends(require)]
LEVELS = ("pause", "cancel", "flatten")


def _console(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def _page(request: Request, template: str, who: Operator | None, *, code: int = 200,
          **ctx: Any) -> HTMLResponse:
    console = _console(request)
    return templates.TemplateResponse(request, template, {
        "who": who, "csrf": who.session.csrf if who and who.session else "",
        "account": console.account, **ctx}, status_code=code)


def _csrf(who: Operator, token: str | None) -> None:
    if not Console.csrf_ok(who, token):
        raise HTTPException(403, "missing or wrong CSRF token")


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request) -> HTMLResponse:
    console = _console(request)
    token = console.sessions.login_token()
    page = _page(request, "login.html", None, login_token=token)
    page.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict",
                    secure=console.settings.web.secure_cookies, max_age=3600)
    return page


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, username: Annotated[str, Form(max_length=200)] = "",
                password: Annotated[str, Form(max_length=1000)] = "",
                csrf: Annotated[str, Form(max_length=500)] = "") -> Response:
    console = _console(request)
    web = console.settings.web
    client = _client(request)
    wait = console.limiter.retry_after(client)
    if wait > 0:
        page = _page(request, "login.html", None, code=429,
                     login_token=console.sessions.login_token(),
                     error=f"Too many failed logins. Try again in {wait:.0f} s.")
        page.headers["Retry-After"] = f"{wait:.0f}"
        return page
    if not console.sessions.login_token_ok(request.cookies.get(LOGIN_COOKIE), csrf):
        raise HTTPException(403, "missing or wrong CSRF token: reload the login page")
    good = (web.password_hash is not None and username == web.username
            and verify_password(web.password_hash.get_secret_value(), password))
    if not good:
        console.limiter.failed(client)
        token = console.sessions.login_token()
        page = _page(request, "login.html", None, code=401, login_token=token,
                     error="Wrong user name or password.")
        page.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict",
                        secure=web.secure_cookies, max_age=3600)
        return page
    cookie, _ = console.sessions.issue(username)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(SESSION_COOKIE, cookie, httponly=True, samesite="strict",
                        secure=web.secure_cookies, max_age=int(web.session_hours * 3600))
    response.delete_cookie(LOGIN_COOKIE)
    return response


@router.post("/logout")
async def logout(who: Auth, csrf: Annotated[str, Form()] = "") -> Response:
    _csrf(who, csrf)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request, who: Auth) -> HTMLResponse:
    console = _console(request)
    async with console.db.connect() as conn:
        status = await views.status(conn, console.settings, console.account)
        curve = await views.equity(conn, console.account, 800)
        ctx: dict[str, Any] = {
            "status": status,
            "chart": Markup(equity_svg(curve)),  # noqa: S704 - built from numbers, escaped
            "positions": await views.positions(conn, console.account),
            "orders": await views.orders(conn, console.account, True, 50),
            "fills": await views.fills(conn, console.account, 20),
            "signals": await views.signals(conn, console.account, 20),
        }
    return _page(request, "overview.html", who, levels=LEVELS, **ctx)


@router.post("/kill", response_class=HTMLResponse)
async def kill(request: Request, who: Auth,
               level: Annotated[str, Form()] = "",
               reason: Annotated[str, Form(max_length=500)] = "",
               confirm: Annotated[str, Form()] = "",
               csrf: Annotated[str, Form()] = "") -> Response:
    """First POST: a confirmation page saying what will happen; the second (confirm=yes)
    sends it."""
    _csrf(who, csrf)
    if level not in LEVELS or not reason.strip():
        return _page(request, "message.html", who, code=422, title="Kill refused",
                     message="Choose a level (pause, cancel or flatten) and give a reason.")
    if confirm != "yes":
        return _page(request, "confirm.html", who, level=level, reason=reason.strip())
    await send_command(_console(request), who, "kill", reason.strip(), level)
    return RedirectResponse("/", status_code=303)


@router.post("/resume", response_class=HTMLResponse)
async def resume(request: Request, who: Auth,
                 reason: Annotated[str, Form(max_length=500)] = "",
                 csrf: Annotated[str, Form()] = "") -> Response:
    _csrf(who, csrf)
    if not reason.strip():
        return _page(request, "message.html", who, code=422, title="Resume refused",
                     message="Give a reason: it goes to the audit trail.")
    await send_command(_console(request), who, "resume", reason.strip(), None)
    return RedirectResponse("/", status_code=303)


@router.get("/audit", response_class=HTMLResponse)
async def audit(request: Request, who: Auth, before: int | None = None) -> HTMLResponse:
    console = _console(request)
    async with console.db.connect() as conn:
        rows = await views.audit(conn, console.account, 100, before)
    return _page(request, "audit.html", who, rows=rows,
                 older=rows[-1]["seq"] if len(rows) == 100 else None)


@router.get("/runs", response_class=HTMLResponse)
async def runs(request: Request, who: Auth) -> HTMLResponse:
    async with _console(request).db.connect() as conn:
        rows = [views.plain(r) for r in await runs_of(conn, 100, None)]
    return _page(request, "table.html", who, title="Runs", rows=rows)


@router.get("/models", response_class=HTMLResponse)
async def models(request: Request, who: Auth) -> HTMLResponse:
    async with _console(request).db.connect() as conn:
        rows = await views.models(conn)
    for r in rows:
        acc = test_accuracy(r.pop("metrics") or {})
        r["test accuracy"] = f"{acc:.3f}" if acc is not None else ""
        r["symbols"] = ",".join(r["symbols"] or [])
    return _page(request, "table.html", who, title="Model versions", rows=rows)


def _reports(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted((p.parent for p in root.glob("*/report.md")),
                  key=lambda p: p.stat().st_mtime, reverse=True)


def _inside(root: Path, *parts: str) -> Path:
    """A path under ``root``, or 404: names from the URL never leave the reports folder."""
    path = root.joinpath(*parts).resolve()
    if not path.is_relative_to(root.resolve()) or not path.exists():
        raise HTTPException(404, "no such report")
    return path


@router.get("/reports", response_class=HTMLResponse)
async def reports(request: Request, who: Auth) -> HTMLResponse:
    root = _console(request).reports_dir
    return _page(request, "reports.html", who, root=str(root),
                 reports=[p.name for p in _reports(root)])


@router.get("/reports/{name}", response_class=HTMLResponse)
async def report(request: Request, who: Auth, name: str) -> HTMLResponse:
    folder = _inside(_console(request).reports_dir, name)
    md = _inside(folder, "report.md").read_text(encoding="utf-8")
    # raw HTML in the report is shown as text; images resolve under /reports/{name}/
    html = MarkdownIt("commonmark", {"html": False}).enable("table").render(md)
    html = html.replace('<img src="', f'<img src="/reports/{name}/')
    return _page(request, "report.html", who, name=name, body=Markup(html))  # noqa: S704


@router.get("/reports/{name}/{file}")
async def report_file(request: Request, who: Auth, name: str, file: str) -> FileResponse:
    if not file.lower().endswith(".png"):
        raise HTTPException(404, "no such report file")
    return FileResponse(_inside(_console(request).reports_dir, name, file),
                        media_type="image/png")
