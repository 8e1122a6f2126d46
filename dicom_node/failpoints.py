"""Test-only fault injection for the reliability tests (``tests/reliability``); inert unless switched on.

The reliability tests run a real ``segnode serve`` and must stop it, deterministically, inside a given
stage, or make the inference of one series fail as a broken GPU would. They switch this on with the
environment variable ``SEGNODE_TEST_FAULTS`` (a JSON object); a production node never sets it, and the node
logs a warning at start when it is set. Keys:

* ``stage_pause_s``: ``{"converting": 5, "segmenting": 5, "encoding": 5, "sending": 5}`` -- seconds a job
  waits inside that stage (converting, segmenting, encoding: at the start of the stage; sending: after the
  C-STORE returned and before its outcome is recorded, the worst moment for a crash);
* ``fail_prediction_series``: Series Instance UIDs whose prediction raises ``RuntimeError`` as a CUDA
  failure would.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from config.errors import SegNodeError

logger = logging.getLogger(__name__)

#: The environment variable that switches fault injection on (tests only).
ENVIRONMENT_VARIABLE = "SEGNODE_TEST_FAULTS"
_STAGES = frozenset({"converting", "segmenting", "encoding", "sending"})


class FaultPlanError(SegNodeError):
    reason = "invalid_fault_plan"


@dataclass(frozen=True)
class FaultPlan:
    """What to inject; the default plan injects nothing."""

    stage_pause_s: Mapping[str, float] = field(default_factory=dict)
    fail_prediction_series: frozenset[str] = frozenset()

    @property
    def active(self) -> bool:
        return bool(self.stage_pause_s or self.fail_prediction_series)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> FaultPlan:
        """The plan in ``SEGNODE_TEST_FAULTS`` (none when unset); :class:`FaultPlanError` if malformed."""
        raw = environ.get(ENVIRONMENT_VARIABLE, "").strip()
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise FaultPlanError(f"{ENVIRONMENT_VARIABLE} is not JSON: {exc}") from exc
        if not isinstance(data, dict) or set(data) - {"stage_pause_s", "fail_prediction_series"}:
            raise FaultPlanError(
                f"{ENVIRONMENT_VARIABLE} must be an object with stage_pause_s and/or fail_prediction_series"
            )
        pauses = data.get("stage_pause_s", {})
        if not isinstance(pauses, dict) or set(pauses) - _STAGES:
            raise FaultPlanError(
                f"{ENVIRONMENT_VARIABLE}: stage_pause_s keys must be among {sorted(_STAGES)}"
            )
        plan = cls(
            {str(k): float(v) for k, v in pauses.items()},
            frozenset(str(uid) for uid in data.get("fail_prediction_series", [])),
        )
        logger.warning("TEST FAULT INJECTION ACTIVE (%s): %s", ENVIRONMENT_VARIABLE, raw)
        return plan

    def pause(self, stage: str, job_id: int) -> None:
        seconds = self.stage_pause_s.get(stage, 0.0)
        if seconds > 0:
            logger.warning("job %d: injected pause of %g s in stage %s", job_id, seconds, stage)
            time.sleep(seconds)

    def before_prediction(self, series_instance_uid: str) -> None:
        if series_instance_uid in self.fail_prediction_series:
            raise RuntimeError(
                f"CUDA error: an illegal memory access was encountered (injected for series "
                f"{series_instance_uid})"
            )
