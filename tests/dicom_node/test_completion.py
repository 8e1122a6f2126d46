"""Series completion with a frozen clock: quiet period, association release, expected count, late ones."""

from __future__ import annotations

from collections.abc import Callable

import pydicom
import pytest
from pynetdicom import evt
from sqlalchemy import select, text
from sqlalchemy.exc import SQLAlchemyError

from config.model import SegNodeConfig
from config.node import CompletionConfig
from dicom_node.audit.log import InstanceHeader
from dicom_node.audit.tables import Event, Series
from dicom_node.jobs.store import JobState
from dicom_node.receiving import scp
from dicom_node.receiving.completion import CompletionTracker
from dicom_node.service import NodeService
from tests.support import audit
from tests.support.node import FrozenClock, send_recorded
from tests.support.paths import CINE, T2_SAG, series_files
from tests.support.waiting import wait_until

StartNode = Callable[..., NodeService]


def series_row(node: NodeService) -> Series:
    with node.db.read() as session:
        [row] = session.scalars(select(Series))
        return row


def test_completion_by_quiet_period_with_frozen_clock(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode
) -> None:
    clock = FrozenClock()
    node = start_node(
        make_config(**{"completion.quiet_period_s": 5, "completion.on_association_release": False}),
        clock=clock,
    )
    send_recorded(node, series_files(T2_SAG))
    assert node.completer.run_once() == []
    clock.advance(4.999)
    assert node.completer.run_once() == []
    assert series_row(node).state == "open"
    clock.advance(0.001)
    [job] = node.completer.run_once()
    assert job.state is JobState.queued
    row = series_row(node)
    assert (row.state, row.completed_by, row.instance_count) == ("complete", "quiet_period", 19)
    assert node.completer.run_once() == []  # fires once


def test_completion_by_association_release_with_frozen_clock(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode
) -> None:
    clock = FrozenClock()
    node = start_node(
        make_config(**{"completion.quiet_period_s": 3600, "completion.on_association_release": True}),
        clock=clock,
    )
    send_recorded(node, series_files(T2_SAG))
    [job] = node.completer.run_once()  # the clock has not moved: only the release can have fired
    assert series_row(node).completed_by == "association_release"
    assert [j.id for j in audit.jobs(node.db)] == [job.id]


def test_a_release_whose_connection_close_is_seen_first_is_still_a_release(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynetdicom's association thread triggers EVT_RELEASED only after it queued the A-RELEASE-RP; its DUL
    thread may send it, see the peer close the connection and trigger EVT_CONN_CLOSE first. Here
    EVT_RELEASED is held until the connection close has been handled, and the association is still
    recorded as released and its series completed on release."""
    original = scp.handle_released

    def released_after_the_close(event: evt.Event, receiver: scp.Receiver) -> None:
        wait_until(lambda: receiver.association_id(event.assoc) is None, what="the connection close handled")
        original(event, receiver)

    monkeypatch.setattr(scp, "handle_released", released_after_the_close)
    clock = FrozenClock()
    node = start_node(
        make_config(**{"completion.quiet_period_s": 3600, "completion.on_association_release": True}),
        clock=clock,
    )
    send_recorded(node, series_files(T2_SAG))  # waits until the audit records the association released
    [job] = node.completer.run_once()
    assert series_row(node).completed_by == "association_release"
    assert [j.id for j in audit.jobs(node.db)] == [job.id]


def test_untrusted_expected_count_holds_release_back_until_the_quiet_period(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode
) -> None:
    """The cine subset announces 280 Images in Acquisition but holds 12: release alone must not complete
    it; the quiet period still does."""
    clock = FrozenClock()
    node = start_node(
        make_config(**{"completion.quiet_period_s": 30, "completion.on_association_release": True}),
        clock=clock,
    )
    send_recorded(node, series_files(CINE))
    assert node.completer.run_once() == []
    clock.advance(30)
    [job] = node.completer.run_once()
    assert series_row(node).completed_by == "quiet_period"
    assert job.state is JobState.queued


def test_late_instance_reopens_the_series_and_the_new_job_supersedes_the_old(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode
) -> None:
    clock = FrozenClock()
    node = start_node(
        make_config(**{"completion.quiet_period_s": 10, "completion.on_association_release": False}),
        clock=clock,
    )
    files = series_files(T2_SAG)
    send_recorded(node, files[:-1])
    clock.advance(10)
    [first] = node.completer.run_once()
    assert series_row(node).instance_count == len(files) - 1

    send_recorded(node, files[-1:])  # the late instance
    assert series_row(node).state == "open"
    assert node.completer.run_once() == []
    clock.advance(10)
    [second] = node.completer.run_once()
    assert series_row(node).instance_count == len(files)
    old, new = audit.jobs(node.db)
    assert (old.id, new.id) == (first.id, second.id)
    assert old.state == "superseded" and old.superseded_by == new.id and new.state == "queued"
    with node.db.read() as session:
        whats = [(e.what, e.job_id) for e in session.scalars(select(Event).order_by(Event.id))]
    assert ("series_reopened", None) in whats
    assert ("job_superseded", first.id) in whats
    assert whats.index(("job_created", second.id)) < whats.index(("job_superseded", first.id))


def test_identical_resend_of_a_complete_series_does_not_reopen_it(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode
) -> None:
    clock = FrozenClock()
    node = start_node(
        make_config(**{"completion.quiet_period_s": 10, "completion.on_association_release": False}),
        clock=clock,
    )
    files = series_files(T2_SAG)[:4]
    send_recorded(node, files)
    clock.advance(10)
    assert len(node.completer.run_once()) == 1
    send_recorded(node, files)
    clock.advance(10)
    assert node.completer.run_once() == []
    assert series_row(node).state == "complete" and len(audit.jobs(node.db)) == 1


def test_queued_job_and_open_series_survive_a_restart(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode
) -> None:
    clock = FrozenClock()
    config = make_config(**{"completion.quiet_period_s": 10, "completion.on_association_release": False})
    node = start_node(config, clock=clock)
    send_recorded(node, series_files(T2_SAG))
    clock.advance(10)
    [job] = node.completer.run_once()
    send_recorded(node, series_files(CINE))  # a second series, still open at the "crash"
    node.stop()

    again = start_node(config, clock=clock)
    assert [j.id for j in again.jobs.resumable_jobs()] == [job.id]
    clock.advance(10)  # the restored open series completes by the quiet period from its last instance
    [second] = again.completer.run_once()
    assert second.series_instance_uid == pydicom.dcmread(series_files(CINE)[0]).SeriesInstanceUID
    assert [j.id for j in again.jobs.resumable_jobs()] == [job.id, second.id]


def _header(series: str, number: int, images: int | None, acquisition: str | None = "1") -> InstanceHeader:
    return InstanceHeader(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
        sop_instance_uid=f"1.2.3.{number}",
        study_instance_uid="1.2.3",
        series_instance_uid=series,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        images_in_acquisition=images,
        acquisition_number=acquisition,
    )


def test_tracker_completes_on_a_trusted_expected_count_without_waiting() -> None:
    clock = FrozenClock()
    tracker = CompletionTracker(CompletionConfig(quiet_period_s=60, on_association_release=True), clock)
    for n in range(1, 4):
        tracker.instance_received(_header("1.9", n, 4), association_id=1, count=n)
    assert tracker.pop_ready() == []
    tracker.association_ended(1, released=True)
    assert tracker.pop_ready() == []  # released, but 3 of 4 announced instances
    tracker.instance_received(_header("1.9", 4, 4), association_id=2, count=4)
    [ready] = tracker.pop_ready()
    assert (ready.rule, ready.instance_count) == ("expected_count", 4)


def test_tracker_distrusts_inconsistent_counts_and_aborted_associations() -> None:
    clock = FrozenClock()
    tracker = CompletionTracker(CompletionConfig(quiet_period_s=60, on_association_release=True), clock)
    tracker.instance_received(_header("1.8", 1, 2, "1"), association_id=1, count=1)
    tracker.instance_received(_header("1.8", 2, 2, "2"), association_id=1, count=2)  # other acquisition
    tracker.association_ended(1, released=False)  # aborted: not a completion signal
    assert tracker.pop_ready() == []
    tracker.instance_received(_header("1.8", 3, None), association_id=3, count=3)
    tracker.association_ended(3, released=True)
    [ready] = tracker.pop_ready()
    assert ready.rule == "association_release"  # the count of 2 was not trusted
    disabled = CompletionTracker(
        CompletionConfig(quiet_period_s=60, on_association_release=True, use_expected_count=False), clock
    )
    for n in range(1, 3):
        disabled.instance_received(_header("1.7", n, 5), association_id=4, count=n)
    disabled.association_ended(4, released=True)
    assert [r.rule for r in disabled.pop_ready()] == ["association_release"]


def test_a_database_failure_at_completion_is_retried_at_the_next_poll(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode
) -> None:
    clock = FrozenClock()
    node = start_node(
        make_config(**{"completion.quiet_period_s": 5, "completion.on_association_release": False}),
        clock=clock,
    )
    send_recorded(node, series_files(T2_SAG)[:3])
    with node.db.engine.begin() as conn:
        conn.execute(
            text("CREATE TRIGGER refuse BEFORE UPDATE ON series BEGIN SELECT RAISE(ABORT, 'refused'); END")
        )
    clock.advance(5)
    with pytest.raises(SQLAlchemyError, match="refused"):
        node.completer.run_once()
    assert series_row(node).state == "open" and audit.jobs(node.db) == []
    with node.db.engine.begin() as conn:
        conn.execute(text("DROP TRIGGER refuse"))
    [job] = node.completer.run_once()
    assert series_row(node).completed_by == "quiet_period" and job.state is JobState.queued
