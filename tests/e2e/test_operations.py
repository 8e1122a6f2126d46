"""Operations over real HTTP against a running ``segnode serve`` and a real Orthanc: the REST API with both
roles and refused credentials (audited, no patient data), the dashboard in headless Chromium (a failed job's
reason, retry, done), and ``/metrics`` while series go through.

One node for the module: two series are sent while the destination Orthanc is down; the first job fails at
sending (``peer_unreachable``, one attempt allowed), the second at segmenting (the test-only failpoint fails
its inference). The dashboard test starts Orthanc (the cause fixed) and retries the first job in the browser;
the API test cancels the second; the metrics test compares the scrapes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from operations_support import (
    BIRTH_DATE,
    JOB_TIMEOUT_S,
    PASSWORDS,
    PATIENT_ID,
    PATIENT_NAME,
    TOKEN,
    Api,
    OpsStack,
    ops_stack,
    sample,
)

from tests.support.browser import chromium, screenshot, wait_for
from tests.support.paths import ROOT
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

#: The screenshots are test artefacts (in the test's folder); with SEGNODE_DOC_IMAGES=1 they also replace the
#: pictures of docs/operations.md.
DOC_IMAGES = ROOT / "docs" / "images"


def _shots(artefacts: Path, name: str) -> list[Path]:
    paths = [artefacts / f"{name}.png"]
    if os.environ.get("SEGNODE_DOC_IMAGES") == "1":
        paths.append(DOC_IMAGES / f"dashboard-{name}.png")
    return paths


#: Every GET endpoint of the API (the test checks the OpenAPI schema lists no other).
GET_PATHS = [
    "/api/health",
    "/api/ready",
    "/api/jobs",
    "/api/jobs?state=failed",
    "/api/jobs/{a}",
    "/api/jobs/{a}/results",
    "/api/jobs/{a}/results?format=csv",
    "/api/associations",
    "/api/series",
    "/api/destinations",
    "/api/config",
    "/api/audit",
    "/api/audit?table=series",
    "/api/audit?table=jobs&newest_first=false",
    "/metrics",
    "/openapi.json",
]


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpsStack]:
    with ops_stack(tmp_path_factory.mktemp("ops")) as stack:
        yield stack


def _refused(api: Api, what: str) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = api.admin(f"/api/audit?what={what}&limit=5000&newest_first=false")
    return rows


def test_api_every_endpoint_both_roles_refusals_audited_no_patient_data(ops: OpsStack) -> None:
    api, a, b = ops.api, ops.jobs["t2"], ops.jobs["pd"]
    paths = [p.format(a=a) for p in GET_PATHS]
    for path in paths:
        for auth in (api.basic("admin"), api.basic("viewer"), f"Bearer {TOKEN}"):
            answer = api.get(path, auth)
            assert answer.status == 200, (path, auth[:12], answer.status, answer.body[:300])
        missing = api.get(path)
        assert missing.status == 401 and missing.headers.get("www-authenticate", "").startswith("Basic")
        assert api.get(path, api.basic("viewer", "guess")).status == 401
        assert api.get(path, "Bearer not-the-token").status == 401
    schema = api.admin("/openapi.json")
    listed = {path for path in schema["paths"]}
    assert listed == {
        "/api/health",
        "/api/ready",
        "/api/jobs",
        "/api/jobs/{job_id}",
        "/api/jobs/{job_id}/results",
        "/api/jobs/{job_id}/retry",
        "/api/jobs/{job_id}/resend",
        "/api/jobs/{job_id}/cancel",
        "/api/associations",
        "/api/series",
        "/api/destinations",
        "/api/config",
        "/api/audit",
        "/metrics",
    }
    # what the read endpoints say about the failed jobs
    job = api.admin(f"/api/jobs/{a}")
    assert (job["state"], job["failed_stage"], job["reason"]) == ("failed", "sending", "peer_unreachable")
    other = api.admin(f"/api/jobs/{b}")
    assert (other["failed_stage"], other["reason"]) == ("segmenting", "inference_failed")
    assert "injected" in other["detail"]
    assert {run["stage"] for run in job["stage_runs"]} >= {"converting", "segmenting", "encoding", "sending"}
    assert job["deliveries"][0]["last_outcome"] == "peer_unreachable"
    assert any(e["what"] == "job_transition" and e["outcome"] == "failure" for e in job["events"])
    # the volumes of the job that failed at sending were measured; the one that failed at segmenting has none
    volumes = api.admin(f"/api/jobs/{a}/results")
    assert volumes == job["outputs"]["volumetry"] and all(v["volume_ml"] > 0 for v in volumes)
    csv_answer = api.get(f"/api/jobs/{a}/results?format=csv", api.basic("viewer"))
    assert csv_answer.headers["content-type"].startswith("text/csv")
    assert len(csv_answer.body.decode().splitlines()) == len(volumes) + 1
    none = api.get(f"/api/jobs/{b}/results", api.basic("viewer"))
    assert none.status == 409 and none.json()["detail"]["reason"] == "no_results"
    assert "failed while segmenting" in none.json()["detail"]["message"]
    assert api.get("/api/jobs/999999/results", api.basic("viewer")).status == 404
    failed = api.admin("/api/jobs?state=failed")
    assert {j["id"] for j in failed} == {a, b} and all("segmenting" in j["stage_seconds"] for j in failed)
    assert api.get("/api/jobs?state=finished", api.basic("viewer")).status == 422
    (orthanc,) = api.admin("/api/destinations")
    assert orthanc["name"] == "orthanc" and orthanc["failed_deliveries"] == 1
    assert orthanc["health"]["state"] == "down"
    ready = api.admin("/api/ready")
    assert ready["status"] == "degraded", ready
    config = api.admin("/api/config")["config"]
    assert config["http"]["users"][0]["password_env"] == "SEGNODE_ADMIN_PASSWORD"
    # job actions: admin only; refused with a reason where the job's state does not allow them
    for action in ("retry", "resend", "cancel"):
        assert api.request("POST", f"/api/jobs/{b}/{action}", api.basic("viewer")).status == 403
        assert api.request("POST", f"/api/jobs/{b}/{action}", f"Bearer {TOKEN}").status == 403
        assert api.request("POST", f"/api/jobs/{b}/{action}").status == 401
    resend = api.request("POST", f"/api/jobs/{b}/resend", api.basic("admin"))
    assert resend.status == 409 and resend.json()["detail"]["reason"] == "not_resendable"
    assert api.request("POST", "/api/jobs/999999/retry", api.basic("admin")).status == 404
    cancel = api.request("POST", f"/api/jobs/{b}/cancel", api.basic("admin"))
    assert cancel.status == 200 and cancel.json()["state"] == "cancelled"
    again = api.request("POST", f"/api/jobs/{b}/cancel", api.basic("admin"))
    assert again.status == 409 and again.json()["detail"]["reason"] == "not_cancellable"
    # every refusal is in the audit log, with its reason, path and the user that tried
    refused = _refused(api, "http_request_refused")
    reasons = {str(r["reason"]) for r in refused}
    assert reasons >= {"missing_credentials", "wrong_credentials", "admin_role_required"}
    assert any("as 'viewer'" in str(r["detail"]) and "/cancel" in str(r["detail"]) for r in refused)
    actions = _refused(api, "operator_action")
    assert [(r["reason"], r["outcome"]) for r in actions if r["job_id"] == b] == [
        ("resend", "refused"),
        ("cancel", "success"),
        ("cancel", "refused"),
    ]
    assert "user 'admin'" in str(actions[-1]["detail"])
    # no patient data and no secret in any answer (the database keeps name and birth date here)
    seen = b"\n".join(api.seen)
    for secret in (PATIENT_ID, PATIENT_NAME, "Phiwatch", BIRTH_DATE, *PASSWORDS.values(), TOKEN):
        assert secret.encode() not in seen, secret
    with ops.node.db.read() as session:
        from dicom_node.audit.tables import Series

        stored = session.get_one(Series, ops.series["t2"])
        assert (stored.patient_name, stored.patient_birth_date) == (PATIENT_NAME, BIRTH_DATE)


def _login(driver: object, base: str, user: str) -> None:
    driver.get(base + "/dashboard")  # type: ignore[attr-defined]
    wait_for(driver, "the login form", lambda d: d.find_elements("id", "user"))
    driver.find_element("id", "user").send_keys(user)  # type: ignore[attr-defined]
    driver.find_element("id", "password").send_keys(PASSWORDS[user])  # type: ignore[attr-defined]
    driver.find_element("id", "login").click()  # type: ignore[attr-defined]
    wait_for(driver, "the jobs page", lambda d: d.find_elements("id", "jobs-table"))


def test_dashboard_shows_the_failure_and_a_retry_in_the_browser_brings_the_job_to_done(
    ops: OpsStack, tmp_path: Path
) -> None:
    api, a = ops.api, ops.jobs["t2"]
    base = api.base
    artefacts = tmp_path / "screenshots"
    with chromium(tmp_path / "chromium") as driver:
        _login(driver, base, "admin")
        row = wait_for(driver, f"job {a} failed", lambda d: d.find_elements("id", f"job-{a}"))[0]
        assert "failed" in row.text and "sending: peer_unreachable" in row.text, row.text
        screenshot(driver, *_shots(artefacts, "jobs"), full_page=True)
        driver.find_element("link text", str(a)).click()
        reason = wait_for(driver, "the failure reason", lambda d: d.find_elements("id", "failure-reason"))[0]
        assert reason.text == "peer_unreachable"
        assert "peer_unreachable" in driver.find_element("id", "events").text  # the audit trail
        screenshot(driver, *_shots(artefacts, "job-failed"), full_page=True)
        # a form posted from another site, or without the page's CSRF token, is refused (and audited)
        cookie = driver.get_cookie("segnode_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        jar = {
            "Cookie": f"segnode_session={cookie['value']}",
            "Content-Type": "application/x-www-form-urlencoded",
        }
        forged = api.request(
            "POST", f"/dashboard/jobs/{a}/cancel", headers={**jar, "Origin": "http://evil.example"}
        )
        no_token = api.request("POST", f"/dashboard/jobs/{a}/cancel", headers={**jar, "Origin": base})
        assert (forged.status, no_token.status) == (403, 403)
        assert api.job_state(a) == "failed"
        # fix the cause (the destination comes back), then press retry
        ops.orthanc.start()
        driver.find_element("id", "action-retry").click()
        message = wait_for(driver, "the retry's message", lambda d: d.find_elements("id", "action-message"))[
            0
        ]
        assert "sending again to orthanc" in message.text
        wait_for(
            driver,
            f"job {a} done on the page (live refresh)",
            lambda d: d.find_element("id", "job-state").get_attribute("data-state") == "done",
            timeout_s=JOB_TIMEOUT_S,
        )
        screenshot(driver, *_shots(artefacts, "job-done"), full_page=True)
        driver.get(base + "/dashboard/destinations")
        wait_for(
            driver,
            "the destination answering",
            lambda d: "yes" in d.find_element("id", "destination-orthanc").text,
            timeout_s=120,
        )
        screenshot(driver, *_shots(artefacts, "destinations"), full_page=True)
    refusals = _refused(api, "http_request_refused")
    assert sum(r["reason"] == "cross_site_request" for r in refusals) >= 2
    assert api.job_state(a) == "done"
    assert ops.orthanc.find_series(api.admin(f"/api/jobs/{a}")["study_instance_uid"], "SEG")
    with chromium(tmp_path / "chromium-viewer") as driver:
        _login(driver, base, "viewer")
        driver.get(f"{base}/dashboard/jobs/{a}")
        wait_for(driver, "the job page", lambda d: d.find_elements("id", "job-state"))
        assert not driver.find_elements("id", "action-retry")
        assert "logged in read-only" in driver.find_element("tag name", "main").text


def test_metrics_move_as_documented_while_series_go_through(ops: OpsStack) -> None:
    api, a = ops.api, ops.jobs["t2"]
    if api.job_state(a) == "failed":  # the browser test did not run: fix the cause and retry here
        ops.orthanc.start()
        assert api.request("POST", f"/api/jobs/{a}/retry", api.basic("admin")).status == 200
    wait_until(lambda: api.job_state(a) == "done", JOB_TIMEOUT_S, f"job {a} done")
    resend = api.request("POST", f"/api/jobs/{a}/resend", api.basic("admin"), {"destinations": ["orthanc"]})
    assert resend.status == 200, resend.body
    wait_until(lambda: api.job_state(a) == "done", JOB_TIMEOUT_S, f"job {a} sent again")
    before, failed, after = ops.metrics_before, ops.metrics_failed, api.metrics()

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("segnode_instances_received_total") == 19 + 16
    assert moved("segnode_associations_total", outcome="accepted") >= 2
    assert moved("segnode_associations_total", outcome="released") >= 2
    for stage in ("completion", "convert", "segment"):  # the second job's failed segment run counts too
        assert moved("segnode_stage_seconds_count", stage=stage) == 2, stage
        assert moved("segnode_stage_seconds_sum", stage=stage) > 0, stage
    assert moved("segnode_stage_seconds_count", stage="encode") == 1
    assert moved("segnode_stage_seconds_count", stage="send") == 3  # failed, delivered, delivered again
    assert moved("segnode_inference_seconds_count", task="total_mr", device="cpu") == 1
    assert moved("segnode_inference_seconds_sum", task="total_mr", device="cpu") > 0
    unreachable = sample(
        failed, "segnode_send_attempts_total", destination="orthanc", outcome="peer_unreachable"
    )
    assert unreachable == 1
    assert moved("segnode_send_attempts_total", destination="orthanc", outcome="success") == 2
    assert sample(failed, "segnode_job_failures_total", stage="sending", reason="peer_unreachable") == 1
    assert sample(failed, "segnode_job_failures_total", stage="segmenting", reason="inference_failed") == 1
    assert sample(failed, "segnode_jobs", state="failed") == 2
    assert sample(after, "segnode_jobs", state="done") == 1
    assert sample(after, "segnode_jobs", state="cancelled") == 1
    assert sample(after, "segnode_spool_free_bytes") > 0
    assert sample(after, "segnode_engine_loaded") == 1
    assert sample(failed, "segnode_destination_up", destination="orthanc") == 0
    assert sample(after, "segnode_destination_up", destination="orthanc") == 1
    for stage in ("queued", "converting", "segmenting", "encoding", "sending"):
        assert ("segnode_queue_depth", (("stage", stage),)) in after, stage
    text = api.get("/metrics", f"Bearer {TOKEN}").body.decode()
    assert "# TYPE segnode_stage_seconds histogram" in text
