"""Routing rules: one test per matcher, ignore, default route, first match, fan-out, stacks, outputs,
configuration errors with key paths, and ``segnode route simulate``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml

from config import ConfigError, SegNodeConfig, parse_config
from dicom_node.cli import main
from dicom_node.jobs.routing import (
    DEFAULT_ROUTE_NAME,
    SeriesFacts,
    derived_targets,
    plan_outputs,
    route_series,
    select_stacks,
)
from dicom_node.outputs.derived import OutputKind
from dicom_node.outputs.seg import SegmentationType
from tests.dicom_node.seg_support import volumes_of

PROSTATEX = "prostatex"
SAG = f"{PROSTATEX}/ProstateX-0000_3.000000-t2tsesag-87368"
COR = f"{PROSTATEX}/ProstateX-0000_5.000000-t2tsecor-03471"
DWI = f"{PROSTATEX}/ProstateX-0000_6.000000-ep2ddifftraDYNDIST-69284"
AX3D = f"{PROSTATEX}/ProstateX-0000_9.000000-tfl3d_PD_reftra1.5x1.5t3-67276"
ENH = "dcm_qa_enh/Philips_EnhancedMR_fMAP"

NODE = {
    "ae_titles": [
        {"ae_title": "SEGNODE", "accept_any_caller": True},
        {"ae_title": "SEG_FAST", "accept_any_caller": True},
    ]
}
DESTINATIONS = {
    "pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 4242},
    "research": {"ae_title": "RESEARCH", "host": "127.0.0.1", "port": 4243, "seg_type": "labelmap"},
}


def config_with(routes: list[dict[str, Any]], **extra: Any) -> SegNodeConfig:
    return parse_config({"node": NODE, "destinations": DESTINATIONS, "routes": routes, **extra}, "test.yaml")


def facts(test_mri: Path, series: str, called: str = "SEGNODE", calling: str = "PACS") -> SeriesFacts:
    folder = test_mri / series
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.iterdir()) if p.is_file()]
    return SeriesFacts.from_headers(headers, called, calling)


def rule(name: str, match: dict[str, Any], dest: str = "pacs", **more: Any) -> dict[str, Any]:
    return {"name": name, "match": match, "action": {"tasks": ["total_mr"], "destinations": [dest]}, **more}


def routed(config: SegNodeConfig, f: SeriesFacts) -> list[str]:
    return [a.rule for a in route_series(f, config.routes, config.default_route).actions]


def test_series_facts_from_real_headers(test_mri: Path) -> None:
    sag = facts(test_mri, SAG)
    assert (sag.modality, sag.plane, sag.number_of_slices) == ("MR", "sagittal", 19)
    assert sag.series_description == "t2_tse_sag"
    assert sag.slice_thickness == pytest.approx(3.0)
    assert "PRIMARY" in sag.image_type
    assert facts(test_mri, COR).plane == "coronal"
    assert facts(test_mri, AX3D).plane == "axial"  # transverse, oblique about 18 degrees
    dwi = facts(test_mri, DWI)
    assert dwi.number_of_slices == 19  # three b-value stacks at the same 19 positions
    enhanced = facts(test_mri, ENH)  # one multi-frame object: 64 frames at 32 positions
    assert (enhanced.number_of_slices, enhanced.plane) == (32, "axial")
    assert enhanced.slice_thickness is not None


def test_called_ae_title(test_mri: Path) -> None:
    config = config_with([rule("fast", {"called_ae_title": "seg_fast"})])
    assert routed(config, facts(test_mri, SAG, called="SEG_FAST")) == ["fast"]
    decision = route_series(facts(test_mri, SAG, called="SEGNODE"), config.routes, config.default_route)
    assert decision.ignored and decision.used_default
    assert "called AE 'SEGNODE' not in [seg_fast]" in decision.evaluations[0].explain()


def test_calling_ae_title(test_mri: Path) -> None:
    config = config_with([rule("from-mri", {"calling_ae_title": ["MRI1", "MRI2"]})])
    assert routed(config, facts(test_mri, SAG, calling="mri2")) == ["from-mri"]
    decision = route_series(facts(test_mri, SAG, calling="PACS"), config.routes, config.default_route)
    assert decision.ignored
    assert "calling AE 'PACS' not in [MRI1, MRI2]" in decision.evaluations[0].explain()


def test_modality(test_mri: Path) -> None:
    config = config_with([rule("ct", {"modality": "CT"}), rule("mr", {"modality": ["mr"]})])
    decision = route_series(facts(test_mri, SAG), config.routes, config.default_route)
    assert [a.rule for a in decision.actions] == ["mr"]
    assert decision.evaluations[0].explain() == "Modality 'MR' not in [CT]"


def test_series_description_regex(test_mri: Path) -> None:
    config = config_with([rule("t2", {"series_description": r"^t2_tse_(sag|tra)$"})])
    assert routed(config, facts(test_mri, SAG)) == ["t2"]
    decision = route_series(facts(test_mri, COR), config.routes, config.default_route)
    assert decision.ignored
    assert "SeriesDescription 't2_tse_cor' does not match" in decision.evaluations[0].explain()


def test_body_part_examined(test_mri: Path) -> None:
    sag = facts(test_mri, SAG)
    config = config_with([rule("prostate", {"body_part_examined": ["PROSTATE", "PELVIS"]})])
    assert routed(config, dataclasses.replace(sag, body_part_examined="prostate")) == ["prostate"]
    decision = route_series(
        dataclasses.replace(sag, body_part_examined=""), config.routes, config.default_route
    )
    assert decision.evaluations[0].explain() == "BodyPartExamined '(empty)' not in [PROSTATE, PELVIS]"


def test_image_type_contains(test_mri: Path) -> None:
    config = config_with([rule("derived-diffusion", {"image_type_contains": ["derived", "DIFFUSION"]})])
    assert routed(config, facts(test_mri, DWI)) == ["derived-diffusion"]
    decision = route_series(facts(test_mri, SAG), config.routes, config.default_route)
    assert "lacks derived, DIFFUSION" in decision.evaluations[0].explain()


def test_slice_thickness_range(test_mri: Path) -> None:
    config = config_with([rule("thick", {"slice_thickness": {"min": 2.5, "max": 3.5}})])
    assert routed(config, facts(test_mri, SAG)) == ["thick"]  # 3 mm
    thin = dataclasses.replace(facts(test_mri, SAG), slice_thickness=1.0)
    decision = route_series(thin, config.routes, config.default_route)
    assert decision.evaluations[0].explain() == "SliceThickness 1 outside [2.5, 3.5]"
    no_thickness = dataclasses.replace(facts(test_mri, SAG), slice_thickness=None)
    decision = route_series(no_thickness, config.routes, config.default_route)
    assert decision.evaluations[0].explain() == "SliceThickness absent, range [2.5, 3.5]"


def test_number_of_slices_range(test_mri: Path) -> None:
    config = config_with([rule("enough", {"number_of_slices": {"min": 16, "max": 500}})])
    assert routed(config, facts(test_mri, SAG)) == ["enough"]  # 19
    decision = route_series(facts(test_mri, COR), config.routes, config.default_route)  # 15
    assert decision.evaluations[0].explain() == "slices 15 outside [16, 500]"


def test_plane(test_mri: Path) -> None:
    config = config_with([rule("not-coronal", {"plane": ["axial", "sagittal"]})])
    assert routed(config, facts(test_mri, SAG)) == ["not-coronal"]
    assert routed(config, facts(test_mri, AX3D)) == ["not-coronal"]
    decision = route_series(facts(test_mri, COR), config.routes, config.default_route)
    assert decision.evaluations[0].explain() == "plane 'coronal' not in [axial, sagittal]"


def test_first_match_wins(test_mri: Path) -> None:
    config = config_with([rule("a", {"modality": "MR"}), rule("b", {"modality": "MR"})])
    decision = route_series(facts(test_mri, SAG), config.routes, config.default_route)
    assert [a.rule for a in decision.actions] == ["a"]
    assert decision.evaluations[1].reached is False


def test_fan_out_with_continue(test_mri: Path) -> None:
    config = config_with(
        [
            rule("to-pacs", {"modality": "MR"}, "pacs", **{"continue": True}),
            rule("not-ct", {"modality": "CT"}, "research"),
            rule("to-research", {"plane": "sagittal"}, "research"),
            rule("never", {}, "pacs"),
        ]
    )
    decision = route_series(facts(test_mri, SAG), config.routes, config.default_route)
    assert [a.rule for a in decision.actions] == ["to-pacs", "to-research"]
    assert [e.reached for e in decision.evaluations] == [True, True, True, False]
    assert decision.summary() == "route to-pacs, to-research"


def test_ignore_action(test_mri: Path) -> None:
    config = config_with(
        [
            {"name": "no-diffusion", "match": {"image_type_contains": "DIFFUSION"}, "action": "ignore"},
            rule("everything", {}),
        ]
    )
    decision = route_series(facts(test_mri, DWI), config.routes, config.default_route)
    assert decision.ignored and decision.ignored_by == ("no-diffusion",)
    assert not decision.used_default
    assert routed(config, facts(test_mri, SAG)) == ["everything"]


def test_default_route(test_mri: Path) -> None:
    ignore_default = config_with([rule("ct", {"modality": "CT"})])
    decision = route_series(facts(test_mri, SAG), ignore_default.routes, ignore_default.default_route)
    assert decision.ignored_by == (DEFAULT_ROUTE_NAME,) and decision.used_default
    config = config_with(
        [rule("ct", {"modality": "CT"})],
        default_route={"tasks": [{"name": "total_mr", "fast": True}], "destinations": "pacs"},
    )
    decision = route_series(facts(test_mri, SAG), config.routes, config.default_route)
    assert [a.rule for a in decision.actions] == [DEFAULT_ROUTE_NAME]
    assert decision.actions[0].action.tasks[0].fast is True


def test_stack_selection(test_mri: Path) -> None:
    dwi = volumes_of(test_mri / DWI)
    assert len(dwi) == 3

    def action(stacks: Any) -> Any:
        return config_with(
            [{"name": "r", "action": {"tasks": "total_mr", "destinations": "pacs", "stacks": stacks}}]
        )

    assert len(select_stacks(dwi, action("all").routes[0].action)) == 3
    (b800,) = select_stacks(dwi, action({"key": {"b_value": 800}}).routes[0].action)
    assert b800.stack_key["b_value"] == 800
    assert [v.stack_label for v in select_stacks(dwi, action({"label": "^b=[48]00$"}).routes[0].action)] == [
        "b=400",
        "b=800",
    ]
    assert select_stacks(dwi, action({"key": {"b_value": 1400}}).routes[0].action) == []
    enhanced = volumes_of(test_mri / ENH)
    (magnitude,) = select_stacks(enhanced, action({"image_type_contains": ["M"]}).routes[0].action)
    assert magnitude.stack_key["image_type"].endswith("\\M")
    sizes = [v for v in volumes_of(test_mri / AX3D)] + dwi
    (largest,) = select_stacks(sizes, action("largest").routes[0].action)
    assert largest.shape == (84, 128, 19)


def test_outputs_default_to_seg_and_sr_and_each_kind_is_listed_once() -> None:
    config = config_with([rule("r", {})])
    assert config.routes[0].action.outputs == ["seg", "sr"]
    assert derived_targets(config.routes[0].action, config.destinations) == {OutputKind.SR: ("pacs",)}
    chosen = config_with(
        [
            rule("r", {})
            | {
                "action": {
                    "tasks": "total_mr",
                    "destinations": "pacs",
                    "outputs": ["rtstruct", "seg_labelmap", "overlay", "rtstruct", "sr"],
                }
            }
        ]
    )
    action = chosen.routes[0].action
    assert action.outputs == ["rtstruct", "seg_labelmap", "overlay", "sr"]
    assert list(derived_targets(action, chosen.destinations)) == [
        OutputKind.SR,
        OutputKind.OVERLAY,
        OutputKind.RTSTRUCT,
    ]
    assert [(p.segmentation_type, p.destinations) for p in plan_outputs(action, chosen.destinations)] == [
        (SegmentationType.LABELMAP, ("pacs",))
    ]
    only_rt = config_with(
        [rule("r", {}) | {"action": {"tasks": "total_mr", "destinations": "pacs", "outputs": "rtstruct"}}]
    )
    assert plan_outputs(only_rt.routes[0].action, only_rt.destinations) == []
    assert derived_targets(only_rt.routes[0].action, only_rt.destinations) == {OutputKind.RTSTRUCT: ("pacs",)}


def test_a_destination_takes_only_the_kinds_it_lists() -> None:
    """A planning system takes only the RTSTRUCT, a PACS without SEG support only the overlay; the others
    every kind the route sends."""
    destinations = DESTINATIONS | {
        "tps": {"ae_title": "TPS", "host": "127.0.0.1", "port": 4244, "outputs": ["rtstruct"]},
        "old_pacs": {"ae_title": "OLD", "host": "127.0.0.1", "port": 4245, "outputs": "overlay"},
    }
    route = {
        "name": "r",
        "action": {
            "tasks": "total_mr",
            "outputs": ["seg", "sr", "overlay", "rtstruct"],
            "destinations": ["pacs", "tps", "old_pacs"],
        },
    }
    config = parse_config({"node": NODE, "destinations": destinations, "routes": [route]}, "test.yaml")
    action = config.routes[0].action
    assert [(p.segmentation_type, p.destinations) for p in plan_outputs(action, config.destinations)] == [
        (SegmentationType.BINARY, ("pacs",))
    ]
    assert derived_targets(action, config.destinations) == {
        OutputKind.SR: ("pacs",),
        OutputKind.OVERLAY: ("pacs", "old_pacs"),
        OutputKind.RTSTRUCT: ("pacs", "tps"),
    }


@pytest.mark.parametrize(
    ("tps", "problem"),
    [
        ({"outputs": ["sr"]}, "destinations.tps.outputs: sr references the segments of the SEG it measures"),
        (
            {"outputs": ["seg_binary"]},
            "destinations.tps.outputs[0]: must be one of 'seg', 'sr', 'overlay' or",
        ),
        (
            {"outputs": ["overlay"]},
            "routes[0].action.destinations[0]: destination 'tps' takes none of the route",
        ),
    ],
)
def test_destination_outputs_errors_name_the_key(tps: dict[str, Any], problem: str) -> None:
    destinations = {"tps": {"ae_title": "TPS", "host": "127.0.0.1", "port": 4244, **tps}}
    route = {"name": "r", "action": {"tasks": "total_mr", "outputs": ["seg", "sr"], "destinations": ["tps"]}}
    with pytest.raises(ConfigError) as err:
        parse_config({"node": NODE, "destinations": destinations, "routes": [route]}, "test.yaml")
    assert any(problem in p for p in err.value.problems), err.value.problems


def test_outputs_per_destination() -> None:
    config = config_with(
        [{"name": "r", "action": {"tasks": "total_mr", "destinations": ["pacs", "research"]}}]
    )
    plans = plan_outputs(config.routes[0].action, config.destinations)
    assert [(p.segmentation_type, p.destinations) for p in plans] == [
        (SegmentationType.BINARY, ("pacs",)),
        (SegmentationType.LABELMAP, ("research",)),
    ]
    forced = config_with(
        [
            {
                "name": "r",
                "action": {
                    "tasks": "total_mr",
                    "outputs": "seg_binary",
                    "destinations": ["pacs", "research"],
                },
            }
        ]
    )
    plans = plan_outputs(forced.routes[0].action, forced.destinations)
    assert [(p.segmentation_type, p.destinations) for p in plans] == [
        (SegmentationType.BINARY, ("pacs", "research"))
    ]


@pytest.mark.parametrize(
    ("routes", "extra", "problem"),
    [
        (
            [rule("r", {}, "nowhere")],
            {},
            "routes[0].action.destinations[0]: destination 'nowhere' is not defined in destinations",
        ),
        (
            [rule("r", {"series_description": "t2(("})],
            {},
            "routes[0].match.series_description: not a valid regular expression",
        ),
        (
            [{"name": "r", "action": {"destinations": ["pacs"]}}],
            {},
            "routes[0].action: empty action: list at least one of tasks",
        ),
        ([{"name": "r", "action": "skip"}], {}, "routes[0].action: must be 'ignore' or a mapping"),
        (
            [rule("r", {"slice_thickness": {"min": 5, "max": 1}})],
            {},
            "routes[0].match.slice_thickness: min 5",
        ),
        ([rule("r", {"plane": "diagonal"})], {}, "routes[0].match.plane[0]"),
        (
            [rule("r", {"called_ae_title": "OTHER"})],
            {},
            "routes[0].match.called_ae_title[0]: 'OTHER' is not one",
        ),
        ([rule("r", {}), rule("r", {})], {}, "routes[1].name: route name 'r' is used twice"),
        ([rule("r", {"colour": "red"})], {}, "routes[0].match.colour: "),
        (
            [],
            {"default_route": {"tasks": "total_mr", "destinations": "gone"}},
            "default_route.destinations[0]",
        ),
        ([{"name": "r", "match": {}, "action": {"ignore": True, "tasks": "total_mr"}}], {}, "takes no tasks"),
        (
            [
                rule("r", {})
                | {"action": {"tasks": "total_mr", "destinations": "pacs", "outputs": ["seg", "png"]}}
            ],
            {},
            "routes[0].action.outputs[1]: must be one of 'seg', 'seg_binary', 'seg_labelmap', 'sr', "
            "'overlay' or 'rtstruct', not 'png'",
        ),
        (
            [
                rule("r", {})
                | {"action": {"tasks": "total_mr", "destinations": "pacs", "outputs": ["sr", "overlay"]}}
            ],
            {},
            "routes[0].action.outputs: sr references the segments of the SEG it measures: list seg",
        ),
    ],
)
def test_configuration_errors_name_the_key(
    routes: list[dict[str, Any]], extra: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError) as err:
        config_with(routes, **extra)
    assert any(problem in p and p.startswith("test.yaml: ") for p in err.value.problems), err.value.problems


def _write_config(tmp_path: Path, routes: list[dict[str, Any]]) -> Path:
    path = tmp_path / "segnode.yaml"
    path.write_text(yaml.safe_dump({"node": NODE, "destinations": DESTINATIONS, "routes": routes}))
    return path


def test_route_simulate(tmp_path: Path, test_mri: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write_config(
        tmp_path,
        [
            {"name": "no-dwi", "match": {"image_type_contains": "DIFFUSION"}, "action": "ignore"},
            rule("t2-axial-sagittal", {"series_description": "(?i)t2", "plane": ["axial", "sagittal"]}),
            rule("big", {"number_of_slices": {"min": 16}}, "research"),
        ],
    )
    code = main(
        ["route", "simulate", str(test_mri / PROSTATEX), "--config", str(config), "--calling-ae", "PACS"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "4 series under" in out
    blocks = {b.split(":")[0]: b for b in out.split("\nseries ")[1:]}
    by_description = {
        next(d for d in ("t2_tse_sag", "t2_tse_cor", "ep2d_diff", "tfl_3d") if d in b): b
        for b in blocks.values()
    }
    assert "=> route t2-axial-sagittal" in by_description["t2_tse_sag"]
    assert "rule 3 'big': not tried" in by_description["t2_tse_sag"]
    cor = by_description["t2_tse_cor"]
    assert "=> ignored by default_route" in cor
    assert "plane 'coronal' not in [axial, sagittal]" in cor
    assert "slices 15 outside [16, ]" in cor
    assert "=> ignored by no-dwi" in by_description["ep2d_diff"]
    tfl = by_description["tfl_3d"]
    assert "=> route big" in tfl and "does not match /(?i)t2/" in tfl
    assert "action of 'big': tasks total_mr; stacks all; outputs seg, sr; destinations research" in tfl


def test_route_simulate_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write_config(tmp_path, [rule("r", {}, "missing")])
    assert main(["route", "simulate", str(tmp_path), "--config", str(config)]) == 2
    assert "routes[0].action.destinations[0]: destination 'missing' is not defined" in capsys.readouterr().err
    good = _write_config(tmp_path, [rule("r", {})])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["route", "simulate", str(empty), "--config", str(good)]) == 1
    assert f"error [invalid_input]: {empty}: no DICOM series found" in capsys.readouterr().err
