"""The web dashboard: server-rendered HTML (Jinja2 templates and static files in this package; no build).

A person logs in with a user name and password (a signed ``SameSite=Strict`` cookie keeps the login);
the pages show the jobs with their states, stage timings and failure reasons, one job with its audit trail
and buttons to retry, resend or cancel it (admin role), and the destinations with their health and the
disk space. Tables refresh themselves (``http.dashboard_refresh_s``) by fetching the same HTML fragments
the pages are made of. Every form sends the session's CSRF token and must come from the dashboard's own
origin (``Origin``/``Referer`` checked).
"""

from __future__ import annotations

import hmac
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from config.errors import SegNodeError
from dicom_node.http.api import ACTIONS, destination_health, readiness_report, run_action
from dicom_node.http.auth import SESSION_COOKIE, Session
from dicom_node.http.context import HttpContext
from dicom_node.jobs import queries
from dicom_node.jobs.store import JobNotFoundError, JobState

#: What each job state means, for the legend of the jobs table.
STATE_HELP: dict[str, str] = {
    "queued": "waiting for its turn",
    "converting": "reading the series and building volumes",
    "segmenting": "the model is running",
    "encoding": "writing the DICOM-SEG objects",
    "sending": "sending the results to the destinations (retried when a destination is down)",
    "done": "results delivered",
    "failed": "stopped; the reason says why. An admin can retry it once the cause is fixed",
    "superseded": "replaced by a newer job of the same series",
    "cancelled": "cancelled (by an operator, or the series matched no route)",
}


def _time(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S UTC")
        except ValueError:
            return value
    return ""


def _seconds(value: Any) -> str:
    if not isinstance(value, int | float):
        return ""
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def _mib(value: Any) -> str:
    return f"{value / (1024 * 1024):,.0f} MiB" if isinstance(value, int) else "unknown"


def templates() -> Environment:
    env = Environment(
        loader=PackageLoader("dicom_node.http", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(time=_time, seconds=_seconds, mib=_mib)
    env.globals.update(STATE_HELP=STATE_HELP, ACTIONS=ACTIONS, STATES=[s.value for s in JobState])
    return env


class Dashboard:
    """The dashboard's pages, fragments and forms."""

    def __init__(self, h: HttpContext) -> None:
        self.h = h
        self.env = templates()

    # -- helpers -----------------------------------------------------------------------------------------

    def render(self, name: str, status: int = 200, **values: Any) -> HTMLResponse:
        values.setdefault("node", self.h.config.node.ae_titles[0].ae_title)
        values.setdefault("refresh_s", self.h.config.http.dashboard_refresh_s)
        html = self.env.get_template(name).render(**values)
        return HTMLResponse(html, status_code=status)

    def session(self, request: Request) -> Session | None:
        return self.h.sessions.verify(request.cookies.get(SESSION_COOKIE))

    def login_redirect(self, request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.headers.get("x-requested-with") == "fetch":
            return Response(status_code=401)  # the page's refresh script goes to the login page
        return RedirectResponse(f"/login?next={quote(target)}", status_code=303)

    def check_form(self, request: Request, form: dict[str, str], session: Session | None) -> None:
        """Refuse a POST that does not come from the dashboard's own page (Origin or Referer of another
        site, or none) or lacks the session's CSRF token."""
        source = request.headers.get("origin") or request.headers.get("referer") or ""
        host = request.headers.get("host", "")
        same_origin = bool(source) and source != "null" and urlsplit(source).netloc == host
        token_ok = session is None or hmac.compare_digest(form.get("csrf", ""), session.csrf)
        if not same_origin or not token_ok:
            who = session.principal.name if session else None
            raise self.h.refuse(request, 403, "cross_site_request", who)

    @staticmethod
    async def form(request: Request) -> dict[str, str]:
        body = (await request.body()).decode("utf-8", "replace")
        return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}

    def summary(self) -> dict[str, Any]:
        status, checks = readiness_report(self.h)
        return {
            "counts": queries.jobs_by_state(self.h.db),
            "readiness": status,
            "checks": checks,
            "free_bytes": self.h.spool_free_bytes(),
            "watermark_bytes": self.h.watermark_bytes,
            "destinations": destination_health(self.h),
        }

    def job_filter(self, request: Request) -> tuple[queries.JobFilter, dict[str, str]]:
        params = {k: v for k, v in request.query_params.items() if v}
        state = params.get("state")
        if state not in {s.value for s in JobState}:
            params.pop("state", None)
            state = None
        f = queries.JobFilter(
            state=state,
            route=params.get("route"),
            reason=params.get("reason"),
            series=params.get("series"),
            limit=200,
        )
        return f, params

    def message(self, request: Request) -> str | None:
        text, mac = request.query_params.get("msg"), request.query_params.get("sig")
        if text and mac and hmac.compare_digest(self.h.sessions.sign_text(text), mac):
            return text
        return None


def dashboard_router(h: HttpContext) -> APIRouter:
    d = Dashboard(h)
    router = APIRouter(include_in_schema=False)
    _login_routes(router, d)
    _page_routes(router, d)
    _action_routes(router, d)
    return router


def _login_routes(router: APIRouter, d: Dashboard) -> None:
    @router.get("/")
    def root() -> Response:
        return RedirectResponse("/dashboard", status_code=303)

    @router.get("/login")
    def login_page(request: Request, next: str = "/dashboard") -> Response:
        return d.render("login.html", next=_safe_next(next), error=None, missing=not d.h.credentials.any)

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await d.form(request)
        d.check_form(request, form, None)
        target = _safe_next(form.get("next", "/dashboard"))
        principal = d.h.credentials.check_password(form.get("user", ""), form.get("password", ""))
        if principal is None:
            d.h.refuse(request, 401, "wrong_credentials", form.get("user", "")[:64] or None)
            error = "Wrong user name or password."
            return d.render("login.html", 401, next=target, error=error, missing=not d.h.credentials.any)
        cookie, _ = d.h.sessions.issue(principal)
        d.h.audit.event("http_login", "success", detail=f"user {principal.name!r} ({principal.role})")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=int(d.h.sessions.ttl_s),
            httponly=True,
            samesite="strict",
            secure=d.h.config.http.tls.enabled,
            path="/",
        )
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        session = d.session(request)
        d.check_form(request, await d.form(request), session)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response


def _safe_next(target: str) -> str:
    """Only a path of the dashboard itself (no open redirect to another site)."""
    return (
        target
        if target.startswith("/dashboard") and "//" not in target and "\\" not in target
        else "/dashboard"
    )


def _page_routes(router: APIRouter, d: Dashboard) -> None:
    @router.get("/dashboard")
    def jobs_page(request: Request) -> Response:
        session = d.session(request)
        if session is None:
            return d.login_redirect(request)
        f, params = d.job_filter(request)
        fragment = "/dashboard/fragment/jobs" + (f"?{urlencode(params)}" if params else "")
        return d.render(
            "jobs.html",
            session=session,
            params=params,
            fragment=fragment,
            jobs=queries.list_jobs(d.h.db, f),
            **d.summary(),
        )

    @router.get("/dashboard/fragment/jobs")
    def jobs_fragment(request: Request) -> Response:
        session = d.session(request)
        if session is None:
            return d.login_redirect(request)
        f, _ = d.job_filter(request)
        return d.render("jobs_table.html", jobs=queries.list_jobs(d.h.db, f), **d.summary())

    @router.get("/dashboard/jobs/{job_id}")
    def job_page(request: Request, job_id: int) -> Response:
        session = d.session(request)
        if session is None:
            return d.login_redirect(request)
        job = _job_or_404(d, job_id)
        return d.render("job.html", session=session, job=job, message=d.message(request))

    @router.get("/dashboard/fragment/jobs/{job_id}")
    def job_fragment(request: Request, job_id: int) -> Response:
        session = d.session(request)
        if session is None:
            return d.login_redirect(request)
        return d.render("job_body.html", session=session, job=_job_or_404(d, job_id))

    @router.get("/dashboard/destinations")
    def destinations_page(request: Request) -> Response:
        session = d.session(request)
        if session is None:
            return d.login_redirect(request)
        overview = queries.destinations_overview(d.h.db, d.h.config, destination_health(d.h))
        return d.render("destinations.html", session=session, overview=overview, **d.summary())

    @router.get("/dashboard/fragment/destinations")
    def destinations_fragment(request: Request) -> Response:
        session = d.session(request)
        if session is None:
            return d.login_redirect(request)
        overview = queries.destinations_overview(d.h.db, d.h.config, destination_health(d.h))
        return d.render("destinations_body.html", overview=overview, **d.summary())


def _job_or_404(d: Dashboard, job_id: int) -> dict[str, Any]:
    try:
        return queries.show_job(d.h.db, job_id)
    except JobNotFoundError as exc:
        raise HTTPException(404, exc.message) from exc


def _action_routes(router: APIRouter, d: Dashboard) -> None:
    @router.post("/dashboard/jobs/{job_id}/{action}")
    async def job_action(request: Request, job_id: int, action: str) -> Response:
        session = d.session(request)
        if session is None:
            return d.login_redirect(request)
        form = await d.form(request)
        d.check_form(request, form, session)
        if action not in ACTIONS:
            raise HTTPException(404, f"unknown action {action!r}")
        if not session.principal.is_admin:
            raise d.h.refuse(request, 403, "admin_role_required", session.principal.name)
        destinations = [name for name in form.get("destinations", "").split(",") if name.strip()]
        try:
            text = run_action(d.h, session.principal, action, job_id, {"destinations": destinations})
        except JobNotFoundError as exc:
            raise HTTPException(404, exc.message) from exc
        except SegNodeError as exc:
            text = f"Not done: {exc.message}"
        query = urlencode({"msg": text, "sig": d.h.sessions.sign_text(text)})
        return RedirectResponse(f"/dashboard/jobs/{job_id}?{query}", status_code=303)
