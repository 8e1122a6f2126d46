"""The retention sweep runs periodically inside the service: with delays shortened to seconds, the spooled
instances of a series whose job ended are deleted by the node itself, while a series still being received on
an open association is left alone; the audit rows stay. No inference is involved: the series is routed to
``ignore`` (the job ends cancelled, which retention treats like a failure: ``retention.failed_days``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.loader import parse_config
from dicom_node.audit.tables import Instance
from dicom_node.service import NodeService
from tests.support import audit
from tests.support.paths import CINE, T2_SAG
from tests.support.scu import StoreLog, associate, store
from tests.support.series import renamed_series
from tests.support.settings import node_settings
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.filterwarnings("ignore:Invalid value for VR UI")]


def test_the_service_sweeps_ended_series_periodically_and_keeps_what_is_still_arriving(
    tmp_path: Path,
) -> None:
    ended = renamed_series(T2_SAG, tmp_path / "ended", "retention-service-ended")
    arriving = renamed_series(CINE, tmp_path / "arriving", "retention-service-arriving")
    data = node_settings(tmp_path / "node")
    data["completion"] = {"quiet_period_s": 600, "on_association_release": True}
    # 0.36 s after delivery, about 1.7 s after a failure or cancellation; swept every 0.2 s
    data["retention"] = {"delivered_hours": 0.0001, "failed_days": 0.00002, "sweep_interval_s": 0.2}
    data["pipeline"] = {
        "work_dir": str(tmp_path / "node" / "work"),
        "outbox_dir": str(tmp_path / "node" / "outbox"),
        "poll_interval_s": 0.1,
        "warm_up": False,
    }
    config = parse_config(data, "retention.yaml", environ={})
    spool = Path(config.storage.spool_dir)
    service = NodeService(config, completion_interval_s=0.2)
    service.start()
    try:
        still_open = associate(service.port, "PYSCU", files=arriving.files)
        log = StoreLog()
        store(still_open, arriving.files, log)
        assert log.successes == arriving.sop_instance_uids

        done = associate(service.port, "PYSCU", files=ended.files)
        store(done, ended.files, log)
        done.release()
        wait_until(
            lambda: [j.state for j in audit.jobs(service.db, ended.series_instance_uid)] == ["cancelled"],
            30,
            "the job ignored by the routing",
        )
        wait_until(lambda: not (spool / ended.study_instance_uid).exists(), 30, "the periodic sweep")
        # what is still arriving stays; the audit rows of both series stay
        assert len(list((spool / arriving.study_instance_uid).rglob("*.dcm"))) == len(arriving.files)
        assert audit.count(service.db, Instance) == len(arriving.files) + len(ended.files)
        [purged] = audit.events(service.db, "retention_purged", series_uid=ended.series_instance_uid)
        assert purged.reason == "series ended without delivery"
        assert f"{len(ended.files)} spooled instance(s) deleted" in (purged.detail or "")
        assert audit.events(service.db, "series_complete", series_uid=ended.series_instance_uid)
        assert not audit.events(service.db, "retention_purged", series_uid=arriving.series_instance_uid)
        still_open.release()
    finally:
        service.stop()
