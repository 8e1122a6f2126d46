"""The shared test helpers (tests/support) do what the tests rely on: waits say what they waited for, probes
tell a peer that answers from one that does not, DCMTK's storescp is used only once it answers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.dcmtk import storescp
from tests.support.dicom import Answer, probe
from tests.support.ports import accepts_connections, free_port
from tests.support.settings import apply_overrides
from tests.support.waiting import wait_until


def test_wait_until_returns_the_first_truthy_value() -> None:
    calls: list[int] = []

    def third_time() -> int | None:
        calls.append(1)
        return len(calls) if len(calls) == 3 else None

    assert wait_until(third_time, 30, "the third call") == 3


def test_a_wait_that_times_out_says_what_it_waited_for() -> None:
    with pytest.raises(
        AssertionError, match=r"timed out after 0\.2 s waiting for the moon\nlog tail"
    ) as caught:
        wait_until(lambda: False, 0.2, "the moon", details=lambda: "log tail")
    assert "the moon" in str(caught.value)


def test_a_wait_on_a_peer_that_exited_fails_at_once() -> None:
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    process.wait(timeout=60)
    with pytest.raises(AssertionError, match="the peer: the process exited with 3"):
        wait_until(lambda: False, 600, "the peer", process=process)


def test_nothing_listens_on_a_free_port_and_a_probe_gets_no_answer() -> None:
    port = free_port()
    assert not accepts_connections(port)
    assert probe(port, "ANY") is Answer.NONE


def test_storescp_is_yielded_once_it_answers(tmp_path: Path) -> None:
    with storescp(tmp_path / "accepting") as scp:
        assert scp.answer is Answer.ECHO_SUCCESS
        assert probe(scp.port, scp.ae_title) is Answer.ECHO_SUCCESS
    with storescp(tmp_path / "refusing", "--refuse") as scp:
        assert scp.answer is Answer.REJECTED
    assert not accepts_connections(scp.port)  # stopped on leaving


def test_dotted_overrides_reach_any_depth() -> None:
    data = {"network": {"port": 0}}
    assert apply_overrides(data, {"network.port": 11112, "destinations.pacs.retry.max_attempts": 2}) == {
        "network": {"port": 11112},
        "destinations": {"pacs": {"retry": {"max_attempts": 2}}},
    }
