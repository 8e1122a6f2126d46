"""Test-only fault injection for the reliability tests (``tests/reliability``); inert unless switched on.

The reliability tests run a real ``segnode serve`` and must stop it, deterministically, inside a given
stage, or make the inference of one series fail as a broken GPU would. They switch this on with the
environment variable ``SEGNODE_TEST_FAULTS`` (a JSON object); a production node never sets it, and the node
logs a warning at start when it is set. Keys:

* ``stage_pause_s``: ``{"converting": 5, "segmenting": 5, "encoding": 5, "sending": 5}`` -- seconds a job
  waits inside that stage (converting, segmenting, encoding: at the start of the stage; sending: after the
  C-STORE returned and before its outcome is recorded, the worst moment for a crash);
* ``fail_prediction_series``: Series Instance UIDs whose prediction raises ``RuntimeError`` as a CUDA
  failure would;
* ``fail_output_kinds``: output kinds beside the SEG (``sr``, ``overlay``, ``rtstruct``) whose encoding
  fails as an encoder's error would (the other kinds of the job go on);
* ``hold``: ``{"stages": ["encoding"], "dir": "/tmp/holds"}`` -- a job reaching one of these stages (at the
  point where ``stage_pause_s`` would pause it) stands still until the test releases it: it creates
  ``<dir>/<stage>-<job id>.held`` and waits until ``<dir>/<stage>-<job id>.release`` exists. The test knows
  the job is in the stage, and for as long as it needs (a stop, a kill, a peer going away), instead of
  hoping to catch it there. A cluster worker also holds at ``<stage>.committed`` (e.g.
  ``segmenting.committed``): after the stage's result is committed and before its task is acknowledged.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from config.errors import SegNodeError

logger = logging.getLogger(__name__)

#: The environment variable that switches fault injection on (tests only).
ENVIRONMENT_VARIABLE = "SEGNODE_TEST_FAULTS"
_STAGES = frozenset({"converting", "segmenting", "encoding", "sending"})
#: Where a job can be held: in a stage, or (cluster workers) between its commit and the acknowledgement.
_HOLD_POINTS = _STAGES | {f"{stage}.committed" for stage in _STAGES}
_KEYS = frozenset({"stage_pause_s", "fail_prediction_series", "hold", "fail_output_kinds"})
_OUTPUT_KINDS = frozenset({"sr", "overlay", "rtstruct"})
#: How long a held job waits for its release before it goes on (a test that forgot to release).
HOLD_LIMIT_S = 900.0


class FaultPlanError(SegNodeError):
    reason = "invalid_fault_plan"


@dataclass(frozen=True)
class Failpoints:
    """What to inject; the default plan injects nothing."""

    stage_pause_s: Mapping[str, float] = field(default_factory=dict)
    fail_prediction_series: frozenset[str] = frozenset()
    hold_stages: frozenset[str] = frozenset()
    hold_dir: Path | None = None
    fail_output_kinds: frozenset[str] = frozenset()

    @property
    def active(self) -> bool:
        return bool(
            self.stage_pause_s or self.fail_prediction_series or self.hold_stages or self.fail_output_kinds
        )

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Failpoints:
        """The plan in ``SEGNODE_TEST_FAULTS`` (none when unset); :class:`FaultPlanError` if malformed."""
        raw = environ.get(ENVIRONMENT_VARIABLE, "").strip()
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise FaultPlanError(f"{ENVIRONMENT_VARIABLE} is not JSON: {exc}") from exc
        if not isinstance(data, dict) or set(data) - _KEYS:
            raise FaultPlanError(f"{ENVIRONMENT_VARIABLE} must be an object with keys among {sorted(_KEYS)}")
        pauses = data.get("stage_pause_s", {})
        if not isinstance(pauses, dict) or set(pauses) - _STAGES:
            raise FaultPlanError(
                f"{ENVIRONMENT_VARIABLE}: stage_pause_s keys must be among {sorted(_STAGES)}"
            )
        hold_stages, hold_dir = _hold_settings(data.get("hold", {}))
        kinds = data.get("fail_output_kinds", [])
        if not isinstance(kinds, list) or set(kinds) - _OUTPUT_KINDS:
            raise FaultPlanError(
                f"{ENVIRONMENT_VARIABLE}: fail_output_kinds must be among {sorted(_OUTPUT_KINDS)}"
            )
        plan = cls(
            {str(k): float(v) for k, v in pauses.items()},
            frozenset(str(uid) for uid in data.get("fail_prediction_series", [])),
            hold_stages,
            hold_dir,
            frozenset(str(kind) for kind in kinds),
        )
        logger.warning("TEST FAULT INJECTION ACTIVE (%s): %s", ENVIRONMENT_VARIABLE, raw)
        return plan

    def pause(self, stage: str, job_id: int) -> None:
        """Pause (``stage_pause_s``) or hold (``hold``) the job in ``stage``, if the plan says so."""
        seconds = self.stage_pause_s.get(stage, 0.0)
        if seconds > 0:
            logger.warning("job %d: injected pause of %g s in stage %s", job_id, seconds, stage)
            time.sleep(seconds)
        if stage in self.hold_stages and self.hold_dir is not None:
            self._hold(stage, job_id, self.hold_dir)

    @staticmethod
    def _hold(stage: str, job_id: int, folder: Path) -> None:
        held = folder / f"{stage}-{job_id}.held"
        release = held.with_suffix(".release")
        logger.warning("job %d: held in stage %s until %s exists", job_id, stage, release)
        held.touch()
        deadline = time.monotonic() + HOLD_LIMIT_S
        while not release.exists():
            if time.monotonic() > deadline:
                logger.error(
                    "job %d: not released from stage %s within %g s, going on", job_id, stage, HOLD_LIMIT_S
                )
                return
            time.sleep(0.05)
        logger.warning("job %d: released from stage %s", job_id, stage)

    def after_commit(self, stage: str, job_id: int) -> None:
        """Cluster workers: hold the job (``<stage>.committed``) between the commit of ``stage`` and the
        acknowledgement of its task, if the plan says so."""
        point = f"{stage}.committed"
        if point in self.hold_stages and self.hold_dir is not None:
            self._hold(point, job_id, self.hold_dir)

    def fails_output(self, kind: str) -> bool:
        """Whether the plan makes the encoding of output ``kind`` fail."""
        return kind in self.fail_output_kinds

    def before_prediction(self, series_instance_uid: str) -> None:
        if series_instance_uid in self.fail_prediction_series:
            raise RuntimeError(
                f"CUDA error: an illegal memory access was encountered (injected for series "
                f"{series_instance_uid})"
            )


def _hold_settings(raw: object) -> tuple[frozenset[str], Path | None]:
    """The stages and folder of a ``hold`` entry (none when absent)."""
    if raw == {}:
        return frozenset(), None
    if not isinstance(raw, dict) or set(raw) != {"stages", "dir"}:
        raise FaultPlanError(f'{ENVIRONMENT_VARIABLE}: hold must be {{"stages": [...], "dir": "..."}}')
    stages = raw["stages"]
    if not isinstance(stages, list) or not stages or set(stages) - _HOLD_POINTS:
        raise FaultPlanError(f"{ENVIRONMENT_VARIABLE}: hold stages must be among {sorted(_HOLD_POINTS)}")
    folder = Path(str(raw["dir"]))
    if not folder.is_dir():
        raise FaultPlanError(f"{ENVIRONMENT_VARIABLE}: hold dir {folder} is not a folder")
    return frozenset(str(stage) for stage in stages), folder
