"""The structure catalog describes every label of every task with correct DICOM codes and a colour."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from inference import catalog, registry
from inference.catalog import (
    BILATERAL,
    LEFT,
    RIGHT,
    CatalogError,
    Code,
    Structure,
    catalog_problems,
    get_catalog,
    load_structures,
    structures,
    validate_catalog,
    verhoeff_valid,
)
from inference.registry import UnknownTaskError
from tests.support.paths import ROOT, SHARED_REFERENCE

#: Label counts of the MRI tasks (TotalSegmentator 2.18; 50 + 30 licensed = the paper's 80 structures).
EXPECTED_LABELS = {
    "total_mr": 50,
    "vertebrae_mr": 25,
    "body_mr": 2,
    "thigh_shoulder_muscles_mr": 18,
    "appendicular_bones_mr": 8,
    "tissue_types_mr": 3,
    "face_mr": 1,
}


def test_packaged_catalog_is_valid_for_every_registered_task() -> None:
    validate_catalog()  # raises CatalogError listing every problem
    for task, count in EXPECTED_LABELS.items():
        entries = get_catalog(task)
        assert sorted(entries) == list(range(1, count + 1)), task
        assert [s.name for _, s in sorted(entries.items())] == list(registry.get_task(task).structures)


def test_every_part_model_label_has_an_entry() -> None:
    # auxiliary labels (the face model's brain and liver) included
    for model in registry.part_models().values():
        for label, name in model.class_map.items():
            assert name in structures(), f"part model {model.dataset_id} label {label} {name}"


def test_left_and_right_differ_by_code_not_only_by_name() -> None:
    pairs = 0
    for task in registry.tasks():
        entries = {s.name: s for s in get_catalog(task).values()}
        for name, left in entries.items():
            if not name.endswith("_left"):
                continue
            right = entries[name[: -len("_left")] + "_right"]
            pairs += 1
            assert left.type == right.type, name  # same structure ...
            assert left.type_modifier is not None and right.type_modifier is not None
            assert (left.type_modifier.value, right.type_modifier.value) == (LEFT[0], RIGHT[0]), name
            assert left.identity != right.identity  # ... told apart by the coded laterality
            assert (left.laterality, right.laterality) == ("left", "right")
            assert left.display_name.startswith("Left ") and right.display_name.startswith("Right ")
    assert pairs == 15 + 4  # 15 pairs in total_mr, 4 in thigh_shoulder_muscles_mr


def test_unsided_labels_of_paired_structures_are_bilateral() -> None:
    for task in ("appendicular_bones_mr", "thigh_shoulder_muscles_mr"):
        for entry in get_catalog(task).values():
            if not entry.name.endswith(("_left", "_right")):
                assert entry.type_modifier == Code(*BILATERAL), entry.name
    # unpaired organs carry no laterality
    for name in ("liver", "spleen", "heart", "brain", "aorta", "vertebrae_L1", "sacrum"):
        assert structures()[name].type_modifier is None


def test_no_two_labels_of_a_task_share_type_modifier_and_region() -> None:
    for task in registry.tasks():
        identities = [s.identity for s in get_catalog(task).values()]
        assert len(identities) == len(set(identities)), task
        names = [s.display_name for s in get_catalog(task).values()]
        assert len(names) == len(set(names)), task


def test_codes_are_well_formed_snomed_ct_ids() -> None:
    for entry in structures().values():
        assert catalog.structure_problems(entry) == [], entry.name
        for code in (entry.category, entry.type, entry.type_modifier, entry.anatomic_region):
            if code is not None:
                assert code.scheme == "SCT"
                assert verhoeff_valid(code.value), (entry.name, code)


def test_verhoeff_check_rejects_mistyped_ids() -> None:
    assert verhoeff_valid("39607008")  # Lung
    assert not verhoeff_valid("39607007")  # last digit changed
    assert not verhoeff_valid("36907008")  # two digits swapped
    # the 3D Slicer table's code for brain aneurysm is no SNOMED CT id; the catalog replaced it
    assert not verhoeff_valid("128059003")
    assert structures()["brain_aneurysm"].type.value == "85659009"


def test_codes_agree_with_dicom_part16_where_it_defines_them() -> None:
    from pydicom.sr._cid_dict import cid_concepts
    from pydicom.sr.codedict import codes

    def cid(number: int) -> dict[str, str]:
        return {
            getattr(codes.SCT, kw).value: getattr(codes.SCT, kw).meaning for kw in cid_concepts[number]["SCT"]
        }

    categories, laterality = cid(7150), cid(244)
    from pydicom.sr._concepts_dict import concepts

    part16: dict[str, set[str]] = {}
    for entries in concepts["SCT"].values():
        for value, (meaning, cids) in entries.items():
            if cids:
                part16.setdefault(value, set()).add(meaning)
    checked = 0
    for entry in structures().values():
        assert categories.get(entry.category.value) == entry.category.meaning, entry.name
        if entry.type_modifier is not None:
            assert laterality.get(entry.type_modifier.value) == entry.type_modifier.meaning, entry.name
        if entry.type.value in part16:
            checked += 1
            assert entry.type.meaning in part16[entry.type.value], (entry.name, entry.type)
    assert checked > 80  # most types are PS3.16 codes; the rest come from the two tables


def test_highdicom_segment_descriptions_build_from_every_entry() -> None:
    import highdicom as hd

    algorithm = hd.AlgorithmIdentificationSequence(
        name="SegNode total_mr",
        family=hd.sr.CodedConcept("123109", "DCM", "Artificial Intelligence"),
        version="test",
    )
    for number, entry in enumerate(sorted(structures().values(), key=lambda s: s.name), start=1):
        concepts = entry.coded_concepts()
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=entry.display_name,
            segmented_property_category=concepts["category"],
            segmented_property_type=concepts["type"],
            algorithm_type="AUTOMATIC",
            algorithm_identification=algorithm,
            anatomic_regions=[concepts["anatomic_region"]] if "anatomic_region" in concepts else None,
            display_color=entry.display_color(),
        )
        type_item = description.SegmentedPropertyTypeCodeSequence[0]
        assert type_item.CodeValue == entry.type.value
        if entry.type_modifier is None:
            assert "SegmentedPropertyTypeModifierCodeSequence" not in type_item
        else:
            assert (
                type_item.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == entry.type_modifier.value
            )
        assert len(description.RecommendedDisplayCIELabValue) == 3


def test_colours_are_rgb_and_distinct_within_each_task() -> None:
    for task in registry.tasks():
        colours = [s.rgb for s in get_catalog(task).values()]
        assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in colours)
        assert len(colours) == len(set(colours)), task


def test_problems_are_reported_with_the_structure_and_task() -> None:
    good = structures()
    kidney_left = good["kidney_left"]
    broken = {
        "kidney_left": Structure(**{**kidney_left.__dict__, "type_modifier": None}),
        "kidney_right": good["kidney_right"],
        "liver": Structure(**{**good["liver"].__dict__, "type": Code("10200005", "SCT", "Liver")}),
        "spleen": Structure(**{**good["spleen"].__dict__, "type": Code("85756007", "SCT", "Tissue")}),
        "gallbladder": Structure(
            **{**good["gallbladder"].__dict__, "category": Code("123037004", "SCT", "x")}
        ),
        "stomach": Structure(**{**good["stomach"].__dict__, "rgb": (0, 300, 0)}),
        "pancreas": Structure(**{**good["pancreas"].__dict__, "type": good["gallbladder"].type}),
    }
    class_map = {1: "kidney_left", 2: "kidney_right", 3: "liver", 4: "spleen", 5: "gallbladder"}
    class_map |= {6: "stomach", 7: "pancreas", 8: "colon"}
    problems = catalog_problems(broken, {"demo_task": class_map, "other": {1: "liver", 2: "liver"}})
    text = "\n".join(problems)
    assert "kidney_left: a left structure needs the modifier 7771000 Left" in text
    assert "liver type: SNOMED CT id 10200005 fails its Verhoeff check digit" in text
    assert "spleen: generic 'Tissue' type is not a description" in text
    assert "gallbladder: category 123037004 is not in CID 7150" in text
    assert "stomach: colour (0, 300, 0) is not RGB 0..255" in text
    assert "task demo_task label 8 (colon): no catalog entry" in text
    assert "task demo_task: gallbladder and pancreas have the same type and modifier" in text
    assert "task other" not in text  # the same name twice is one structure, not a duplicate
    with pytest.raises(CatalogError) as info:
        raise CatalogError(problems)
    assert info.value.reason == "invalid_catalog" and info.value.problems == problems


def test_unreadable_catalog_and_unknown_task_fail_clearly() -> None:
    with pytest.raises(CatalogError, match="cannot be read"):
        load_structures('{"structures": {"liver": {"display_name": "Liver"}}}')
    with pytest.raises(UnknownTaskError, match="unknown task 'total_ct'"):
        get_catalog("total_ct")
    with pytest.raises(CatalogError, match="no catalog entry for structure 'lung_middle_lobe'"):
        catalog.get_structure("lung_middle_lobe")


def test_catalog_covers_the_other_mri_tasks_of_the_reference() -> None:
    for name in ("liver_segment_1", "liver_segment_8", "liver_lesions", "brain_aneurysm"):
        assert name in structures()
    assert structures()["liver_lesions"].category.meaning == "Morphologically Abnormal Structure"
    assert structures()["liver_lesions"].anatomic_region == Code("10200004", "SCT", "Liver")


def test_packaged_catalog_is_what_the_build_script_generates(tmp_path: Path) -> None:
    if not SHARED_REFERENCE.is_dir():
        pytest.skip(f"reference tables not present at {SHARED_REFERENCE} (only beside a developer checkout)")
    out = tmp_path / "catalog.json"
    script = ROOT / "scripts" / "build_catalog.py"
    run = subprocess.run(
        [sys.executable, str(script), "--reference", str(SHARED_REFERENCE), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    packaged = ROOT / "inference" / "data" / "catalog.json"
    assert json.loads(out.read_text()) == json.loads(packaged.read_text())
    check = subprocess.run(
        [
            sys.executable,
            str(script),
            "--reference",
            str(SHARED_REFERENCE),
            "--out",
            str(packaged),
            "--check",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr
