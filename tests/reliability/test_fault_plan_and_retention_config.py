"""The test-only fault plan is inert by default and refuses malformed settings; retention keys validate."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from config.errors import ConfigError
from config.loader import parse_config
from dicom_node.failpoints import ENVIRONMENT_VARIABLE, Failpoints, FaultPlanError
from tests.support.waiting import wait_until


def test_without_the_variable_nothing_is_injected() -> None:
    plan = Failpoints.from_environment({})
    assert not plan.active
    plan.pause("segmenting", 1)  # returns at once
    plan.before_prediction("1.2.3")


def test_the_plan_pauses_stages_and_fails_prediction_of_the_named_series_only() -> None:
    plan = Failpoints.from_environment(
        {ENVIRONMENT_VARIABLE: '{"stage_pause_s": {"encoding": 0.01}, "fail_prediction_series": ["1.2.3"]}'}
    )
    assert plan.active and plan.stage_pause_s == {"encoding": 0.01}
    plan.before_prediction("1.2.4")
    with pytest.raises(RuntimeError, match=r"CUDA error.*1\.2\.3"):
        plan.before_prediction("1.2.3")


def test_a_held_job_stands_still_in_its_stage_until_the_test_releases_it(tmp_path: Path) -> None:
    raw = json.dumps({"hold": {"stages": ["encoding"], "dir": str(tmp_path)}})
    plan = Failpoints.from_environment({ENVIRONMENT_VARIABLE: raw})
    assert plan.active and plan.hold_stages == {"encoding"}
    plan.pause("segmenting", 7)  # not held there
    holding = threading.Thread(target=plan.pause, args=("encoding", 7))
    holding.start()
    wait_until((tmp_path / "encoding-7.held").exists, 30, "the job held in encoding")
    assert holding.is_alive()  # still held: nothing released it
    (tmp_path / "encoding-7.release").touch()
    holding.join(30)
    assert not holding.is_alive()


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("{not json", "is not JSON"),
        ('{"crash": true}', "must be an object with keys among"),
        ('{"stage_pause_s": {"receiving": 1}}', "stage_pause_s keys must be among"),
        ('{"hold": {"stages": ["encoding"]}}', "hold must be"),
        ('{"hold": {"stages": ["receiving"], "dir": "/tmp"}}', "hold stages must be among"),
        ('{"hold": {"stages": ["encoding"], "dir": "/no/such/folder"}}', "is not a folder"),
    ],
)
def test_a_malformed_plan_is_refused_with_its_reason(raw: str, fragment: str) -> None:
    with pytest.raises(FaultPlanError, match=fragment) as caught:
        Failpoints.from_environment({ENVIRONMENT_VARIABLE: raw})
    assert caught.value.reason == "invalid_fault_plan"


def test_retention_defaults_and_a_failed_delay_shorter_than_the_delivered_one_is_refused() -> None:
    config = parse_config({}, "node.yaml", environ={})
    assert (config.retention.delivered_hours, config.retention.failed_days) == (24.0, 30.0)
    assert config.retention.enabled
    with pytest.raises(ConfigError, match=r"retention.*failed_days must not be shorter than delivered_hours"):
        parse_config({"retention": {"delivered_hours": 72, "failed_days": 1}}, "node.yaml", environ={})
    with pytest.raises(ConfigError, match=r"retention\.delivered_hours"):
        parse_config({"retention": {"delivered_hours": 0}}, "node.yaml", environ={})
