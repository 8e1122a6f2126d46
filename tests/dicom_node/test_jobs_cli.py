"""``segnode jobs list|show|retry|resend|cancel`` on a real node database, with series received over TCP."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from dicom_node.cli import main
from dicom_node.jobs.records import SegOutput
from dicom_node.jobs.store import JobState
from dicom_node.outputs.outbox import attempt_delivery, due_deliveries, open_deliveries, settle_job
from tests.support.dcmtk import storescp
from tests.support.paths import T2_SAG, series_files
from tests.support.pipeline import PipelineNode, receive
from tests.support.ports import free_port


def run_main(argv: list[str]) -> int:
    """``segnode`` in-process; the handler its logging set-up adds (bound to this test's captured stderr)
    is removed afterwards."""
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        return main(argv)
    finally:
        root.handlers[:] = before


def cli(capsys: pytest.CaptureFixture[str], node: PipelineNode, *args: str) -> tuple[int, str, str]:
    config = node.tmp / "segnode.yaml"
    if not config.exists():
        import yaml

        config.write_text(
            yaml.safe_dump(node.config.model_dump(mode="json", by_alias=True)), encoding="utf-8"
        )
    code = run_main(["jobs", *args, "--config", str(config)])
    out = capsys.readouterr()
    return code, out.out, out.err


def sending_job(node: PipelineNode) -> int:
    """A job whose SEG (here: a real MR object standing in for it) waits in the outbox for ``pacs``."""
    ctx = node.ctx
    job_id = receive(node.service, series_files(T2_SAG))
    for stage in (JobState.converting, JobState.segmenting, JobState.encoding):
        ctx.jobs.transition(job_id, stage)
    source = series_files(T2_SAG)[0]
    ctx.outbox_dir(job_id).mkdir(parents=True)
    shutil.copy(source, ctx.outbox_dir(job_id) / "object.dcm")
    output = SegOutput(
        "object.dcm", "1.2.3", "1.2.3.4", "BINARY", ["pacs"], "total_mr", 0, "labels.npy", 19, 4
    )
    ctx.jobs.set_output(job_id, "seg", [output.to_json()])
    open_deliveries(ctx, job_id, [output])
    return job_id


def test_list_and_show_a_queued_job_as_table_and_json(
    tmp_path: Path, make_node: Callable[..., PipelineNode], capsys: pytest.CaptureFixture[str]
) -> None:
    node = make_node(tmp_path, free_port())
    job_id = receive(node.service, series_files(T2_SAG))
    code, out, _ = cli(capsys, node, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "id",
        "state",
        "failed_stage",
        "reason",
        "route",
        "series_instance_uid",
        "updated_at",
    ]
    assert lines[2].split()[:2] == [str(job_id), "queued"] and lines[-1] == "(1 job)"
    code, out, _ = cli(capsys, node, "list", "--format", "json", "--state", "done")
    assert (code, json.loads(out)) == (0, [])
    code, out, _ = cli(capsys, node, "show", str(job_id), "--format", "json")
    data = json.loads(out)
    assert (data["id"], data["state"], data["deliveries"]) == (job_id, "queued", [])
    assert [e["what"] for e in data["events"]] == ["job_created"]
    code, out, _ = cli(capsys, node, "show", str(job_id))
    assert code == 0 and out.startswith(f"job {job_id}: queued") and "job_created success" in out


def test_show_lists_destinations_with_attempts_and_retry_makes_them_due_now(
    tmp_path: Path, make_node: Callable[..., PipelineNode], capsys: pytest.CaptureFixture[str]
) -> None:
    retry = {"initial_delay_s": 60, "max_attempts": 3}
    node = make_node(tmp_path, free_port(), **{"destinations.pacs.retry": retry})  # nothing listens there
    ctx = node.ctx
    job_id = sending_job(node)
    [delivery_id] = due_deliveries(ctx)
    info = attempt_delivery(ctx, delivery_id)
    assert (info.state, info.last_outcome) == ("pending", "peer_unreachable")
    code, out, _ = cli(capsys, node, "show", str(job_id))
    assert code == 0
    assert "destinations:" in out and "pacs         seg   pending  1         peer_unreachable" in out
    assert "pacs answered: pacs (STORESCP@127.0.0.1:" in out
    assert "send_attempt failure [peer_unreachable]: pacs: attempt 1:" in out

    assert due_deliveries(ctx) == []  # waiting for its back-off
    code, out, _ = cli(capsys, node, "retry", str(job_id))
    assert (code, out) == (0, f"job {job_id}: waiting deliveries due now (pacs)\n")
    assert due_deliveries(ctx) == [delivery_id]

    for _ in range(3):  # max_attempts 3
        attempt_delivery(ctx, delivery_id)
    assert settle_job(ctx, job_id) is JobState.failed
    code, out, _ = cli(capsys, node, "list", "--state", "failed")
    assert f"{job_id}" in out and "sending" in out and "peer_unreachable" in out
    code, out, _ = cli(capsys, node, "retry", str(job_id))
    assert (code, out) == (0, f"job {job_id}: sending again to pacs\n")
    job = ctx.jobs.get(job_id)
    assert (job.state, job.failed_stage) == (JobState.sending, None)
    assert due_deliveries(ctx) == [delivery_id]


def test_cancel_stops_a_job_and_its_deliveries_and_refuses_finished_jobs(
    tmp_path: Path, make_node: Callable[..., PipelineNode], capsys: pytest.CaptureFixture[str]
) -> None:
    node = make_node(tmp_path, free_port())
    job_id = sending_job(node)
    code, out, _ = cli(capsys, node, "cancel", str(job_id))
    assert (code, out) == (0, f"job {job_id}: cancelled (1 pending deliveries cancelled)\n")
    job = node.ctx.jobs.get(job_id)
    assert (job.state, job.reason) == (JobState.cancelled, "cancelled_by_user")
    assert due_deliveries(node.ctx) == []
    code, _, err = cli(capsys, node, "cancel", str(job_id))
    assert (
        code == 1
        and err == f"error [not_cancellable]: job {job_id} is cancelled; there is nothing to cancel\n"
    )
    code, _, err = cli(capsys, node, "retry", str(job_id))
    assert code == 1 and "error [not_retryable]: job" in err


def test_retry_of_a_job_failed_at_conversion_queues_it_again(
    tmp_path: Path, make_node: Callable[..., PipelineNode], capsys: pytest.CaptureFixture[str]
) -> None:
    node = make_node(tmp_path, free_port())
    job_id = receive(node.service, series_files(T2_SAG))
    node.ctx.jobs.transition(job_id, JobState.converting)
    node.ctx.jobs.transition(job_id, JobState.failed, reason="spool_file_missing", detail="file gone")
    code, out, _ = cli(capsys, node, "retry", str(job_id))
    assert (code, out) == (0, f"job {job_id}: resumes at queued\n")
    assert node.ctx.jobs.get(job_id).state is JobState.queued


def test_unknown_job_and_missing_database_are_clear_errors(
    tmp_path: Path, make_node: Callable[..., PipelineNode], capsys: pytest.CaptureFixture[str]
) -> None:
    node = make_node(tmp_path, free_port())
    code, _, err = cli(capsys, node, "show", "999")
    assert (code, err) == (1, "error [job_not_found]: job 999 does not exist\n")
    empty = tmp_path / "empty.db"
    code = run_main(["jobs", "list", "--database", f"sqlite:///{empty}"])
    err = capsys.readouterr().err
    assert code == 1 and "no jobs table (has the node run there?)" in err


def test_results_of_a_job_without_volumes_say_why(
    tmp_path: Path, make_node: Callable[..., PipelineNode], capsys: pytest.CaptureFixture[str]
) -> None:
    node = make_node(tmp_path, free_port())
    job_id = receive(node.service, series_files(T2_SAG))
    results = ["results", str(job_id), "--database", node.config.database.url]
    assert run_main(results) == 1
    assert capsys.readouterr().err == (
        f"error [no_results]: job {job_id} has no results: it is queued; volumes are measured when its "
        "label maps are encoded\n"
    )
    node.ctx.jobs.transition(job_id, JobState.converting)
    node.ctx.jobs.transition(job_id, JobState.failed, reason="spool_file_missing", detail="file gone")
    assert run_main([*results, "--format", "csv"]) == 1
    assert capsys.readouterr().err == (
        f"error [no_results]: job {job_id} has no results: it failed while converting (spool_file_missing) "
        "before its volumes were measured\n"
    )


def test_resend_sends_a_done_jobs_seg_again_and_explains_what_it_cannot(
    tmp_path: Path, make_node: Callable[..., PipelineNode], capsys: pytest.CaptureFixture[str]
) -> None:
    """A PACS lost the SEG: ``jobs resend`` delivers the same object again (to a real DCMTK storescp) and the
    job ends done again; jobs in other states, unknown destinations and purged outboxes are refused."""
    received = tmp_path / "pacs"
    with storescp(received) as pacs:
        node = make_node(tmp_path / "node", pacs.port)
        ctx = node.ctx
        job_id = sending_job(node)
        code, _, err = cli(capsys, node, "resend", str(job_id))
        assert code == 1 and err.startswith(f"error [not_resendable]: job {job_id} is sending;")
        [delivery_id] = due_deliveries(ctx)
        assert attempt_delivery(ctx, delivery_id).state == "delivered"
        assert settle_job(ctx, job_id) is JobState.done
        assert len(list(received.iterdir())) == 1
        shutil.rmtree(received)
        received.mkdir()

        code, _, err = cli(capsys, node, "resend", str(job_id), "--destination", "archive")
        assert (code, err) == (
            1,
            f"error [unknown_destination]: job {job_id} was not routed to archive; its destinations: pacs\n",
        )
        code, _, err = cli(capsys, node, "resend", str(job_id), "--kind", "rtstruct")
        assert (code, err) == (
            1,
            f"error [unknown_output_kind]: job {job_id} made no rtstruct for pacs; it made: seg\n",
        )
        assert ctx.jobs.get(job_id).state is JobState.done
        code, out, _ = cli(capsys, node, "resend", str(job_id), "--destination", "pacs", "--kind", "seg")
        assert (code, out) == (0, f"job {job_id}: sending again to pacs (seg)\n")
        job = ctx.jobs.get(job_id)
        assert (job.state, job.reason) == (JobState.sending, "resend_requested")
        assert due_deliveries(ctx) == [delivery_id]
        info = attempt_delivery(ctx, delivery_id)
        assert (info.state, info.attempts) == ("delivered", 1)
        assert settle_job(ctx, job_id) is JobState.done
        [again] = list(received.iterdir())
        assert again.read_bytes()[128:] and again.stat().st_size > 0
        code, out, _ = cli(capsys, node, "show", str(job_id), "--format", "json")
        whats = [e["what"] for e in json.loads(out)["events"]]
        assert whats.count("send_attempt") == 2 and whats[-1] == "job_transition"

        shutil.rmtree(ctx.outbox_dir(job_id))  # what retention does after delivered_hours
        code, _, err = cli(capsys, node, "resend", str(job_id))
        assert code == 1 and err.startswith(f"error [outbox_purged]: job {job_id}: its object(s) object.dcm")
        assert "send the series to the node again" in err
        assert ctx.jobs.get(job_id).state is JobState.done
