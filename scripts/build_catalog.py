#!/usr/bin/env python3
"""Generate ``inference/data/catalog.json``, SegNode's structure catalog, from the reference tables.

Sources, in order of precedence for every structure name of every MRI task:

1. ``totalsegmentator_snomed_mapping_v2.18.0.csv`` -- TotalSegmentator's own table (codes and colours);
2. ``slicer_totalsegmentator_snomed_mapping.csv`` -- the 3D Slicer TotalSegmentator extension's table, for
   the structures TotalSegmentator's table lacks (lungs, vertebrae, discs, thigh and shoulder muscles...);
3. the explicit tables below (``CATEGORY_FIXES`` ... ``DISPLAY_NAMES``), each value with its source.

Structure names come from ``mr_class_maps_all.json`` (every MRI task and the part models of total_mr).
Both tables live in ``../shared/reference`` beside the repository (see its README). The generated file is
committed; ``--check`` verifies that it is up to date (run by ``tests/inference/test_catalog.py`` when the
reference folder is present).

Usage: ``python scripts/build_catalog.py [--reference DIR] [--out FILE] [--check]``
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE = ROOT.parent / "shared" / "reference"
DEFAULT_OUT = ROOT / "inference" / "data" / "catalog.json"

TS_TABLE = "totalsegmentator_snomed_mapping_v2.18.0.csv"
SLICER_TABLE = "slicer_totalsegmentator_snomed_mapping.csv"
CLASS_MAPS = "mr_class_maps_all.json"

Code = tuple[str, str, str]  # (value, scheme, meaning)

# DICOM PS3.16 CID 244 (Laterality).
LEFT: Code = ("7771000", "SCT", "Left")
RIGHT: Code = ("24028007", "SCT", "Right")
# CID 244 lists 51440002 with the meaning "Bilateral" (pydicom's PS3.16 tables: codes.SCT.Bilateral).
BILATERAL: Code = ("51440002", "SCT", "Bilateral")

# Segmented Property Category codes whose value or meaning differs from DICOM PS3.16 CID 7150.
CATEGORY_FIXES: dict[str, Code] = {
    # Both tables write SCT 123037004 (SNOMED CT: "Body structure") with the meaning "Anatomical Structure";
    # CID 7150 defines "Anatomical Structure" as SCT 91723000 (pydicom codes.SCT.AnatomicalStructure).
    "123037004": ("91723000", "SCT", "Anatomical Structure"),
    # Slicer's table writes "Morphologically Altered Structure"; CID 7150's meaning of 49755003 is
    # "Morphologically Abnormal Structure".
    "49755003": ("49755003", "SCT", "Morphologically Abnormal Structure"),
}

# Code meanings of type codes that differ from PS3.16 (CID 7151 / 7166 / 7192) for the same code value.
MEANING_FIXES: dict[str, str] = {
    "75297007": "Gluteus minimus muscle",  # TotalSegmentator's table misspells "Gluteus minius muscle"
    "30315005": "Small intestine",  # CID 7151 (TotalSegmentator: "Small Intestine")
    "89837001": "Bladder",  # CID 7151 meaning of 89837001 (TotalSegmentator: "Urinary bladder")
    "108371006": "Tarsus",  # CID 7151 (TotalSegmentator: "Tarsal bones")
    "66019005": "Extremity",  # CID 7151 (TotalSegmentator: "Limb")
    "71133005": "Couinaud hepatic segment I",  # CID 7151 (Slicer: "Caudate lobe of liver")
}

# Type codes of the tables that are not valid SNOMED CT concepts, replaced by the correct concept.
TYPE_FIXES: dict[str, Code] = {
    # Slicer's table: 128059003 "Cerebral aneurysm" fails the SCTID Verhoeff check digit, so it is no
    # SNOMED CT id. The label is an aneurysm of the brain arteries: SCT 85659009 "aneurysm" (morphologic
    # abnormality, PS3.16 CID 3810), with the table's anatomic region Brain (12738006) and category
    # Morphologically Abnormal Structure.
    "brain_aneurysm": ("85659009", "SCT", "aneurysm"),  # meaning spelled as in CID 3810
}

# Laterality missing from both tables for a left/right pair (Slicer's table has the type code only).
MODIFIER_FILLS: dict[str, Code] = {
    "quadriceps_femoris_left": LEFT,
    "quadriceps_femoris_right": RIGHT,
}

# Paired structures whose one label holds both sides (TotalSegmentator names no side): CID 244 Bilateral.
BILATERAL_STRUCTURES: frozenset[str] = frozenset(
    {
        # appendicular_bones_mr (855): each bone of both limbs in one label
        "patella",
        "tibia",
        "fibula",
        "tarsal",
        "metatarsal",
        "phalanges_feet",
        "ulna",
        "radius",
        # thigh_shoulder_muscles_mr (857): the shoulder muscles of both sides in one label
        "deltoid",
        "supraspinatus",
        "infraspinatus",
        "subscapularis",
        "coracobrachial",
        "trapezius",
        "pectoralis_minor",
        "serratus_anterior",
        "teres_major",
        "triceps_brachii",
    }
)

# The right member of a pair is drawn darker than the left, as in TotalSegmentator's table
# (gluteus_maximus left 253,115,34 / right 187,85,26: factor 0.74); gap-filled pairs follow that rule.
RIGHT_SHADE = 0.74

# Recommended colours for structures neither table colours. Each value names its source.
COLOUR_FILLS: dict[str, tuple[int, int, int]] = {
    # TotalSegmentator table, upper lobe of the same side (CT models split the lungs by lobe)
    "lung_left": (71, 232, 244),
    "lung_right": (100, 218, 227),
    # TotalSegmentator table, vertebrae_body
    "vertebrae": (190, 160, 130),
    # Slicer DICOM master terminology (SegmentationCategoryTypeModifier-DICOM-Master.json), "Cartilage"
    "intervertebral_discs": (111, 184, 210),
    # SegNode choices (no published colour): muscle hues around Slicer's "Muscle" 192,104,88, one per
    # label so that neighbouring muscles differ; right sides derived with RIGHT_SHADE.
    "quadriceps_femoris_left": (230, 120, 90),
    "thigh_medial_compartment_left": (240, 160, 80),
    "thigh_posterior_compartment_left": (200, 90, 130),
    "sartorius_left": (250, 200, 100),
    "deltoid": (220, 100, 60),
    "supraspinatus": (180, 120, 200),
    "infraspinatus": (140, 100, 210),
    "subscapularis": (210, 140, 180),
    "coracobrachial": (160, 200, 90),
    "trapezius": (230, 150, 150),
    "pectoralis_minor": (200, 60, 80),
    "serratus_anterior": (120, 170, 220),
    "teres_major": (250, 130, 200),
    "triceps_brachii": (190, 140, 70),
    # SegNode choices: Couinaud segments in eight distinct hues around the liver colour family
    "liver_segment_1": (222, 130, 101),
    "liver_segment_2": (241, 214, 145),
    "liver_segment_3": (177, 122, 101),
    "liver_segment_4": (111, 184, 210),
    "liver_segment_5": (216, 101, 79),
    "liver_segment_6": (221, 130, 180),
    "liver_segment_7": (144, 238, 144),
    "liver_segment_8": (192, 104, 88),
}

# Segment labels where "<Side> <type meaning>" would mislead or read badly.
DISPLAY_NAMES: dict[str, str] = {
    "vertebrae": "Vertebrae",
    "intervertebral_discs": "Intervertebral discs",
    "hip_left": "Left hip bone",  # the label is the hip bone; both tables code the hip region (29836001)
    "hip_right": "Right hip bone",
    "body_trunc": "Body (trunk)",
    "body_extremities": "Body (extremities)",
    "torso_fat": "Torso fat",
    "thigh_medial_compartment_left": "Left thigh medial compartment muscles",
    "thigh_medial_compartment_right": "Right thigh medial compartment muscles",
    "thigh_posterior_compartment_left": "Left thigh posterior compartment muscles",
    "thigh_posterior_compartment_right": "Right thigh posterior compartment muscles",
    "tarsal": "Tarsal bones",
    "metatarsal": "Metatarsal bones",
    "phalanges_feet": "Phalanges of the feet",
    "autochthon_left": "Left autochthonous back muscles",
    "autochthon_right": "Right autochthonous back muscles",
    "liver_lesions": "Liver lesions",
    "brain_aneurysm": "Brain aneurysm",
}


def _code(value: str, scheme: str, meaning: str) -> Code | None:
    value, scheme, meaning = value.strip(), scheme.strip(), meaning.strip()
    if not value:
        return None
    return (value, scheme, meaning)


def _rgb(text: str) -> tuple[int, int, int] | None:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if len(parts) != 3:
        return None
    r, g, b = (int(p) for p in parts)
    return (r, g, b)


def read_totalsegmentator(path: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):

            def col(seq: str, row: dict[str, str] = row) -> Code | None:
                return _code(
                    row[f"{seq}.CodeValue"], row[f"{seq}.CodingSchemeDesignator"], row[f"{seq}.CodeMeaning"]
                )

            out[row["Structure"].strip()] = {
                "category": col("SegmentedPropertyCategoryCodeSequence"),
                "type": col("SegmentedPropertyTypeCodeSequence"),
                "type_modifier": col("SegmentedPropertyTypeModifierCodeSequence"),
                "anatomic_region": col("AnatomicRegionSequence"),
                "anatomic_region_modifier": col("AnatomicRegionModifierSequence"),
                "rgb": _rgb(row["DicomRGBColor"]),
            }
    return out


def read_slicer(path: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):

            def col(prefix: str, row: dict[str, str] = row) -> Code | None:
                return _code(
                    row[f"{prefix}_CodeValue"], row[f"{prefix}_CodingScheme"], row[f"{prefix}_CodeMeaning"]
                )

            name = row["Name"].strip()
            if not name:
                continue
            colour = ",".join(row[c] for c in ("Color_R", "Color_G", "Color_B"))
            out[name] = {
                "category": col("Category"),
                "type": col("Type"),
                "type_modifier": col("TypeModifier"),
                "anatomic_region": col("Region"),
                "anatomic_region_modifier": col("RegionModifier"),
                "rgb": _rgb(colour),
            }
    return out


def structure_names(class_maps: dict[str, Any]) -> list[str]:
    names: set[str] = set()
    for task, entry in class_maps.items():
        if task == "_total_mr_parts":
            for classes in entry.values():
                if isinstance(classes, dict):
                    names.update(classes.values())
        elif not task.startswith("_"):
            names.update(entry["classes"].values())
            names.update(entry.get("auxiliary_labels_removed", {}).values())
    return sorted(names)


def _sentence(meaning: str) -> str:
    """``Kidney`` -> ``kidney``; keeps acronyms (``L5 vertebra``, ``C1 vertebra``)."""
    if len(meaning) > 1 and meaning[0].isupper() and meaning[1].islower():
        return meaning[0].lower() + meaning[1:]
    return meaning


def display_name(name: str, type_meaning: str, modifier: Code | None) -> str:
    if name in DISPLAY_NAMES:
        return DISPLAY_NAMES[name]
    if modifier == LEFT:
        return f"Left {_sentence(type_meaning)}"
    if modifier == RIGHT:
        return f"Right {_sentence(type_meaning)}"
    return type_meaning[0].upper() + type_meaning[1:]


def _as_json(code: Code | None) -> dict[str, str] | None:
    return None if code is None else {"value": code[0], "scheme": code[1], "meaning": code[2]}


def build(reference: Path) -> dict[str, Any]:
    ts = read_totalsegmentator(reference / TS_TABLE)
    slicer = read_slicer(reference / SLICER_TABLE)
    class_maps = json.loads((reference / CLASS_MAPS).read_text(encoding="utf-8"))
    structures: dict[str, Any] = {}
    problems: list[str] = []
    for name in structure_names(class_maps):
        if name in ts:
            row, source = dict(ts[name]), ["totalsegmentator"]
        elif name in slicer:
            row, source = dict(slicer[name]), ["slicer"]
        else:
            problems.append(f"{name}: in neither table and no gap fill")
            continue
        category = row["category"]
        if category is not None and category[0] in CATEGORY_FIXES:
            row["category"] = CATEGORY_FIXES[category[0]]
            source.append("category:CID7150")
        if name in TYPE_FIXES:
            row["type"] = TYPE_FIXES[name]
            source.append("type:segnode")
        type_code = row["type"]
        if type_code is not None and type_code[0] in MEANING_FIXES:
            row["type"] = (type_code[0], type_code[1], MEANING_FIXES[type_code[0]])
            source.append("meaning:PS3.16")
        if name in MODIFIER_FILLS:
            if row["type_modifier"] is not None:
                problems.append(f"{name}: MODIFIER_FILLS entry is stale (the table has a modifier)")
            row["type_modifier"] = MODIFIER_FILLS[name]
            source.append("modifier:segnode")
        if name in BILATERAL_STRUCTURES:
            if row["type_modifier"] is not None:
                problems.append(f"{name}: BILATERAL_STRUCTURES entry is stale (the table has a modifier)")
            row["type_modifier"] = BILATERAL
            source.append("modifier:bilateral")
        if row["rgb"] is None:
            if name in COLOUR_FILLS:
                row["rgb"] = COLOUR_FILLS[name]
            elif name.endswith("_right") and name[: -len("_right")] + "_left" in COLOUR_FILLS:
                left = COLOUR_FILLS[name[: -len("_right")] + "_left"]
                row["rgb"] = tuple(round(v * RIGHT_SHADE) for v in left)
            else:
                problems.append(f"{name}: no colour in either table and no COLOUR_FILLS entry")
                continue
            source.append("colour:segnode")
        elif name in COLOUR_FILLS:
            problems.append(f"{name}: COLOUR_FILLS entry is stale (the table has a colour)")
        if row["category"] is None or row["type"] is None:
            problems.append(f"{name}: no category or type code")
            continue
        structures[name] = {
            "display_name": display_name(name, row["type"][2], row["type_modifier"]),
            "category": _as_json(row["category"]),
            "type": _as_json(row["type"]),
            "type_modifier": _as_json(row["type_modifier"]),
            "anatomic_region": _as_json(row["anatomic_region"]),
            "anatomic_region_modifier": _as_json(row["anatomic_region_modifier"]),
            "rgb": list(row["rgb"]),
            "source": "+".join(source),
        }
    if problems:
        raise SystemExit("catalog build failed:\n  " + "\n  ".join(problems))
    return {
        "_source": (
            f"generated by scripts/build_catalog.py from {TS_TABLE} (TotalSegmentator 2.18.0), "
            f"{SLICER_TABLE} (3D Slicer TotalSegmentator extension) and the script's gap-fill tables; "
            "do not edit by hand"
        ),
        "structures": structures,
    }


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE, help="folder with the tables")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="catalog file to write")
    parser.add_argument("--check", action="store_true", help="only check that --out is up to date")
    args = parser.parse_args(argv)
    for name in (TS_TABLE, SLICER_TABLE, CLASS_MAPS):
        if not (args.reference / name).is_file():
            print(f"error: {args.reference / name} not found (pass --reference)", file=sys.stderr)
            return 2
    text = render(build(args.reference))
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is out of date; run scripts/build_catalog.py", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}: {len(json.loads(text)['structures'])} structures")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
