"""What the HTTP service's handlers are given, and the checks every request goes through (credentials,
role, refusals written to the audit log)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import HTTPException, Request

from config.model import SegNodeConfig
from dicom_node.audit.database import Database
from dicom_node.audit.log import AuditLog
from dicom_node.http.auth import AuthFailure, Credentials, Principal, RefusalLog, SessionSigner
from dicom_node.http.health import EngineStatus
from dicom_node.http.metrics import NodeMetrics

if TYPE_CHECKING:
    from dicom_node.jobs.context import PipelineContext

LOG = logging.getLogger(__name__)


@dataclass
class HttpContext:
    """The node as the HTTP service sees it."""

    config: SegNodeConfig
    audit: AuditLog
    #: The job actions' context (``dicom_node.jobs.admin`` functions take it).
    actions: PipelineContext
    metrics: NodeMetrics
    credentials: Credentials
    engine_status: Callable[[], EngineStatus] = lambda: EngineStatus("absent", "no pipeline in this process")
    spool_free_bytes: Callable[[], int | None] = lambda: None
    #: Tell the pipeline to look for work now (after a retry, resend or cancel).
    wake: Callable[[], None] = lambda: None
    sessions: SessionSigner = field(init=False)
    refusals: RefusalLog = field(default_factory=RefusalLog)

    def __post_init__(self) -> None:
        self.sessions = SessionSigner(self.credentials, self.config.http.session_minutes * 60)

    @property
    def db(self) -> Database:
        return self.audit.db

    @property
    def watermark_bytes(self) -> int:
        return self.config.storage.min_free_space_mb * 1024 * 1024

    # -- refusals ----------------------------------------------------------------------------------------

    def refuse(self, request: Request, status: int, reason: str, who: str | None = None) -> HTTPException:
        """Write the refusal to the audit log (capped, see :class:`RefusalLog`) and return the exception to
        raise: 401 (with a Basic challenge) for missing or wrong credentials, 403 otherwise."""
        client = request.client.host if request.client else "?"
        write, skipped = self.refusals.admit()
        if write:
            detail = f"{request.method} {request.url.path} from {client}" + (f" as {who!r}" if who else "")
            if skipped:
                detail += f" ({skipped} earlier refusal(s) not recorded one by one)"
            self.audit.event("http_request_refused", "refused", reason, detail=detail)
        LOG.warning("HTTP %s %s from %s refused: %s", request.method, request.url.path, client, reason)
        headers = {"WWW-Authenticate": 'Basic realm="SegNode", charset="UTF-8"'} if status == 401 else None
        messages = {
            "missing_credentials": "credentials required (HTTP basic, or a bearer token)",
            "wrong_credentials": "wrong user name, password or token",
            "unsupported_scheme": "use HTTP basic or a bearer token",
            "admin_role_required": "this action needs the admin role",
            "cross_site_request": "request refused: it did not come from the dashboard's own page",
        }
        return HTTPException(status, {"reason": reason, "message": messages.get(reason, reason)}, headers)

    def api_principal(self, request: Request, admin: bool = False) -> Principal:
        """The caller of an API request (``Authorization`` header), or raise 401/403."""
        found = self.credentials.authenticate(request.headers.get("authorization"))
        if isinstance(found, AuthFailure):
            raise self.refuse(request, 401, found.reason, found.tried)
        if admin and not found.is_admin:
            raise self.refuse(request, 403, "admin_role_required", found.name)
        return found

    def action_done(self, principal: Principal, action: str, job_id: int, outcome: str, text: str) -> None:
        """Record who asked for a job action over HTTP, and what came of it."""
        self.audit.event(
            "operator_action",
            outcome,
            action,
            job_id=job_id,
            detail=f"{action} by {principal.kind} {principal.name!r} ({principal.role}) over HTTP: {text}"[
                :4000
            ],
        )
