"""A node with the job pipeline's stages at hand: the receiving part runs (real SCP, SQLite), the tests drive
the stages themselves (or start ``Pipeline`` threads) through a ``PipelineContext`` on the same database."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.loader import parse_config
from config.model import SegNodeConfig
from dicom_node.jobs.context import PipelineContext
from dicom_node.jobs.store import JobState
from dicom_node.service import NodeService
from tests.support.node import send_recorded
from tests.support.settings import apply_overrides, local_pipeline, node_settings


def pipeline_settings(tmp: Path, port: int, **overrides: Any) -> dict[str, Any]:
    """A node that routes MR series from PYSCU to task total_mr (tiny models, CPU) and sends the SEG to
    destination ``pacs``, a storescp (AE title STORESCP) on ``port``; quick retries (0.2 s, 0.4 s, 3 tries);
    every SEG checked with dciodvfy."""
    data = node_settings(tmp)
    data["completion"] = {"quiet_period_s": 3600, "on_association_release": True}
    data["destinations"] = {
        "pacs": {
            "ae_title": "STORESCP",
            "host": "127.0.0.1",
            "port": port,
            "retry": {"initial_delay_s": 0.2, "factor": 2.0, "max_delay_s": 0.5, "max_attempts": 3},
        }
    }
    data["sending"] = {"connect_timeout_s": 2, "acse_timeout_s": 5, "dimse_timeout_s": 20}
    data["routes"] = [
        {"name": "localizers", "match": {"image_type_contains": ["LOCALIZER"]}, "action": "ignore"},
        {
            "name": "mr_total",
            "match": {"modality": "MR", "calling_ae_title": "PYSCU"},
            "action": {"tasks": ["total_mr"], "outputs": ["seg"], "destinations": ["pacs"]},
        },
    ]
    data |= local_pipeline(tmp)
    data["seg"] = {"validate_with_dciodvfy": "always"}
    return apply_overrides(data, overrides)


def pipeline_config(tmp: Path, port: int, **overrides: Any) -> SegNodeConfig:
    return parse_config(pipeline_settings(tmp, port, **overrides), "test.yaml", environ={})


def receive(node: NodeService, files: list[Path], calling: str = "PYSCU") -> int:
    """C-STORE ``files`` to the node with a real SCU (every status Success), wait until the release is
    recorded, complete the series; returns the new job id."""
    send_recorded(node, files, calling)
    [job] = node.completer.run_once()
    return job.id


def state(ctx: PipelineContext, job_id: int) -> JobState:
    return ctx.jobs.get(job_id).state


@dataclass
class PipelineNode:
    tmp: Path
    config: SegNodeConfig
    service: NodeService
    ctx: PipelineContext


def start_pipeline_node(tmp: Path, port: int, **overrides: Any) -> PipelineNode:
    """A receiving node (pipeline threads off) configured by :func:`pipeline_settings`, and the stage
    context on the same database."""
    config = pipeline_config(tmp, port, **overrides)
    service = NodeService(config, completion_interval_s=0, process_jobs=False)
    service.start()
    return PipelineNode(tmp, config, service, PipelineContext.create(config, service.audit, service.jobs))


@contextlib.contextmanager
def pipeline_nodes() -> Iterator[Callable[..., PipelineNode]]:
    """``make(tmp, port, **overrides)`` starts a :class:`PipelineNode`; all are stopped on leaving."""
    started: list[PipelineNode] = []

    def make(tmp: Path, port: int, **overrides: Any) -> PipelineNode:
        started.append(start_pipeline_node(tmp, port, **overrides))
        return started[-1]

    try:
        yield make
    finally:
        for node in started:
            if node.service.server is not None:
                node.service.stop()
