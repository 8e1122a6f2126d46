"""The REST API (``/api/...``) and ``/metrics``: every request needs credentials; job actions need the
admin role. The handlers only translate between HTTP and the node's shared queries and job actions
(``dicom_node.jobs.queries``, ``dicom_node.jobs.admin``, ``dicom_node.audit.query``)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse

from config.errors import SegNodeError
from config.model import SegNodeConfig
from dicom_node.audit.query import PATIENT_COLUMNS, AuditFilter, query_rows
from dicom_node.audit.tables import SeriesState
from dicom_node.http.auth import Principal
from dicom_node.http.context import HttpContext
from dicom_node.http.health import (
    Check,
    database_check,
    destinations_check,
    engine_check,
    readiness,
    spool_check,
)
from dicom_node.http.schemas import (
    ActionResult,
    DestinationRow,
    JobDetail,
    JobRow,
    Readiness,
    ResultRow,
)
from dicom_node.jobs import queries
from dicom_node.jobs.store import JobNotFoundError, JobState

#: Job actions and what each does, in the words of the API documentation.
ACTIONS: dict[str, str] = {
    "retry": "Retry a failed job at the stage that failed (sending: every failed destination again), or make "
    "the waiting deliveries of a job in sending due now.",
    "resend": "Send the objects of a done job again (all its destinations and kinds, or those named in the "
    "body).",
    "cancel": "Cancel a job that is not finished (its pending deliveries too).",
}
_REDACTED = "***"


def redacted_config(config: SegNodeConfig) -> dict[str, Any]:
    """The running configuration without secrets: the patient ID salt, the database password and webhook
    URLs (whose path or query often is the secret) are replaced; environment variable names stay."""
    from sqlalchemy.engine import make_url

    data = config.model_dump(mode="json")
    if data["privacy"]["patient_id_salt"]:
        data["privacy"]["patient_id_salt"] = _REDACTED
    data["database"]["url"] = make_url(config.database.url).render_as_string(hide_password=True)
    for hook in data["notifications"]["webhooks"]:
        scheme, _, rest = hook["url"].partition("://")
        hook["url"] = f"{scheme}://{rest.split('/', 1)[0].rsplit('@', 1)[-1]}/{_REDACTED}"
    return data


def check_json(check: Check) -> dict[str, Any]:
    return {"name": check.name, "ok": check.ok, "detail": check.detail, **check.data}


def readiness_report(h: HttpContext) -> tuple[str, list[Check]]:
    checks = [
        database_check(h.db),
        spool_check(h.spool_free_bytes(), h.watermark_bytes),
        engine_check(h.engine_status()),
        destinations_check(h.config, h.metrics.destinations),
    ]
    return readiness(checks), checks


def destination_health(h: HttpContext) -> dict[str, dict[str, Any]]:
    now = h.metrics.clock()
    return {
        s.name: {
            "state": s.state,
            "since": s.since,
            "down_for_s": round(s.down_for_s(now), 1),
            "last_check_at": s.last_check_at,
            "last_outcome": s.last_outcome,
            "last_detail": s.last_detail,
            "source": s.source,
        }
        for s in h.metrics.destinations.states()
    }


def run_action(h: HttpContext, principal: Principal, action: str, job_id: int, body: dict[str, Any]) -> str:
    """Carry out a job action with the node's one implementation; audited with who asked.
    Raises :class:`JobNotFoundError` or the action's :class:`SegNodeError` when refused."""
    from dicom_node.jobs.admin import cancel_job, resend_job, retry_job

    perform: dict[str, Callable[[], str]] = {
        "retry": lambda: retry_job(h.actions, job_id),
        "resend": lambda: resend_job(
            h.actions, job_id, list(body.get("destinations") or []), list(body.get("kinds") or [])
        ),
        "cancel": lambda: cancel_job(h.actions, job_id),
    }
    try:
        text = perform[action]()
    except SegNodeError as exc:
        h.action_done(principal, action, job_id, "refused", f"[{exc.reason}] {exc.message}")
        raise
    h.action_done(principal, action, job_id, "success", text)
    h.wake()
    return text


def _not_found(exc: JobNotFoundError) -> HTTPException:
    return HTTPException(404, {"reason": exc.reason, "message": exc.message})


def api_router(h: HttpContext) -> APIRouter:
    router = APIRouter(prefix="/api")
    _health_routes(router, h)
    _job_routes(router, h)
    _node_routes(router, h)
    return router


def _health_routes(router: APIRouter, h: HttpContext) -> None:
    @router.get("/health", tags=["health"], summary="Liveness: the node's HTTP service answers")
    def health(request: Request) -> dict[str, Any]:
        h.api_principal(request)
        return {"status": "ok"}

    @router.get(
        "/ready",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "not ready"}},
        tags=["health"],
        summary="Readiness: database, spool space, engine loaded, destinations answering",
        description="200 with status ready or degraded (only a destination does not answer); 503 with "
        "not_ready when the database, the spool's free space or the engine is not ready.",
    )
    def ready(request: Request) -> JSONResponse:
        h.api_principal(request)
        status, checks = readiness_report(h)
        body = {"status": status, "checks": [check_json(c) for c in checks]}
        return JSONResponse(jsonable_encoder(body), status_code=503 if status == "not_ready" else 200)


def _job_routes(router: APIRouter, h: HttpContext) -> None:
    @router.get(
        "/jobs",
        response_model=list[JobRow],
        tags=["jobs"],
        summary="Jobs, newest first, with stage timings and failure reasons",
    )
    def jobs(
        request: Request,
        state: JobState | None = None,
        failed_stage: JobState | None = None,
        series: str | None = None,
        study: str | None = None,
        route: str | None = None,
        reason: str | None = None,
        since: Annotated[datetime | None, Query(description="updated at or after (ISO 8601)")] = None,
        until: Annotated[datetime | None, Query(description="updated before (ISO 8601)")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> list[dict[str, Any]]:
        h.api_principal(request)
        f = queries.JobFilter(
            state=state.value if state else None,
            failed_stage=failed_stage.value if failed_stage else None,
            series=series,
            study=study,
            route=route,
            reason=reason,
            since=since,
            until=until,
            limit=limit,
            offset=offset,
        )
        return queries.list_jobs(h.db, f)

    @router.get(
        "/jobs/{job_id}",
        response_model=JobDetail,
        tags=["jobs"],
        summary="One job: stages, timings, outputs, deliveries, events",
    )
    def job(request: Request, job_id: int) -> dict[str, Any]:
        h.api_principal(request)
        try:
            return queries.show_job(h.db, job_id)
        except JobNotFoundError as exc:
            raise _not_found(exc) from exc

    _results_route(router, h)
    for action, description in ACTIONS.items():
        _action_route(router, h, action, description)


def _results_route(router: APIRouter, h: HttpContext) -> None:
    @router.get(
        "/jobs/{job_id}/results",
        response_model=list[ResultRow],
        tags=["jobs"],
        summary="The volume of every structure of a job, with border and plausibility flags",
        description="The numbers of the job's volumetry SR (also with ``segnode results``): JSON rows, or "
        "CSV with ``format=csv``. 404: no such job; 409: the job has no volumes (yet), with the reason.",
        responses={200: {"content": {"text/csv": {}}}},
    )
    def results(request: Request, job_id: int, format: Literal["json", "csv"] = "json") -> Any:
        from dicom_node.outputs.volumetry import to_csv

        h.api_principal(request)
        try:
            rows = queries.job_results(h.db, job_id)
        except JobNotFoundError as exc:
            raise _not_found(exc) from exc
        except queries.NoResultsError as exc:
            raise HTTPException(409, {"reason": exc.reason, "message": exc.message}) from exc
        if format == "csv":
            headers = {"Content-Disposition": f'attachment; filename="job-{job_id}-volumes.csv"'}
            return Response(to_csv(rows), media_type="text/csv", headers=headers)
        return rows


def _action_route(router: APIRouter, h: HttpContext, action: str, description: str) -> None:
    def act(
        request: Request,
        job_id: int,
        body: Annotated[dict[str, Any] | None, Body(examples=[{"destinations": ["pacs"]}])] = None,
    ) -> dict[str, Any]:
        principal = h.api_principal(request, admin=True)
        try:
            text = run_action(h, principal, action, job_id, body or {})
        except JobNotFoundError as exc:
            raise _not_found(exc) from exc
        except SegNodeError as exc:
            raise HTTPException(409, {"reason": exc.reason, "message": exc.message}) from exc
        return {
            "job_id": job_id,
            "action": action,
            "message": text,
            "state": h.actions.jobs.get(job_id).state,
        }

    router.add_api_route(
        f"/jobs/{{job_id}}/{action}",
        act,
        methods=["POST"],
        response_model=ActionResult,
        tags=["jobs"],
        summary=f"{action.capitalize()} a job (admin)",
        description=description + " 404: no such job; 409: the job is not in a state for it.",
        name=f"job_{action}",
    )


def _node_routes(router: APIRouter, h: HttpContext) -> None:
    @router.get("/associations", tags=["node"], summary="Associations, newest first")
    def associations(
        request: Request,
        since: datetime | None = None,
        ae: Annotated[str | None, Query(description="calling or called AE title")] = None,
        result: Literal["requested", "accepted", "rejected", "released", "aborted"] | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        h.api_principal(request)
        return queries.list_associations(h.db, since, ae, result, limit)

    @router.get("/series", tags=["node"], summary="Series, most recently received first")
    def series(
        request: Request,
        state: SeriesState | None = None,
        study: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        h.api_principal(request)
        return queries.list_series(h.db, state, study, limit, h.config.http.show_patient_data)

    @router.get(
        "/destinations",
        response_model=list[DestinationRow],
        tags=["node"],
        summary="Destinations: health, waiting deliveries, back-off",
    )
    def destinations(request: Request) -> list[dict[str, Any]]:
        h.api_principal(request)
        return queries.destinations_overview(h.db, h.config, destination_health(h))

    @router.get("/config", tags=["node"], summary="The running configuration, secrets redacted")
    def config(request: Request) -> dict[str, Any]:
        h.api_principal(request)
        return {"config_hash": h.config.config_hash(), "config": redacted_config(h.config)}

    @router.get("/audit", tags=["audit"], summary="Search the audit log")
    def audit(
        request: Request,
        table: Literal["events", "associations", "instances", "series", "jobs"] = "events",
        since: datetime | None = None,
        until: datetime | None = None,
        ae: str | None = None,
        study: str | None = None,
        series: str | None = None,
        state: Annotated[str | None, Query(description="outcome / result / state, by table")] = None,
        what: Annotated[str | None, Query(description="events: event name")] = None,
        job_id: Annotated[int | None, Query(description="events: of this job")] = None,
        limit: Annotated[int, Query(ge=1, le=5000)] = 500,
        newest_first: bool = True,
    ) -> list[dict[str, Any]]:
        h.api_principal(request)
        f = AuditFilter(since, until, ae, study, series, state, what, job_id, limit, newest_first)
        try:
            rows = query_rows(h.db, table, f)
        except SegNodeError as exc:
            raise HTTPException(400, {"reason": exc.reason, "message": exc.message}) from exc
        if table == "series" and not h.config.http.show_patient_data:
            rows = [{k: v for k, v in r.items() if k not in PATIENT_COLUMNS} for r in rows]
        return rows


def metrics_route(h: HttpContext) -> APIRouter:
    router = APIRouter()

    @router.get("/metrics", tags=["metrics"], summary="Prometheus metrics (text format)")
    def metrics(request: Request) -> Response:
        h.api_principal(request)
        return Response(h.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return router
