"""The DICOM objects a route can send (``action.outputs``) and a destination can take
(``destinations.NAME.outputs``), with the rule that binds them: the volumetry SR references the segments of
the SEG it measures, so ``sr`` is only sent beside a SEG."""

from __future__ import annotations

from typing import Literal

OutputKind = Literal["seg", "seg_binary", "seg_labelmap", "sr", "overlay", "rtstruct"]
#: The output kinds that are a DICOM-SEG.
SEG_KINDS = ("seg", "seg_binary", "seg_labelmap")
#: What a route sends when it does not say: the SEG and the volumetry SR that references it.
DEFAULT_OUTPUTS: tuple[OutputKind, ...] = ("seg", "sr")


#: The kinds a destination can restrict itself to (its Segmentation Type is its ``seg_type``).
DestinationKind = Literal["seg", "sr", "overlay", "rtstruct"]


def route_outputs(value: list[OutputKind]) -> list[OutputKind]:
    """Each kind once; ``sr`` only beside a SEG (the report references the SEG's segments)."""
    kinds = list(dict.fromkeys(value))
    if "sr" in kinds and not any(k in SEG_KINDS for k in kinds):
        raise ValueError(
            "sr references the segments of the SEG it measures: list seg (or seg_binary, seg_labelmap) "
            "beside it"
        )
    return kinds


def destination_outputs(value: list[DestinationKind] | None) -> list[DestinationKind] | None:
    if value is None:
        return None
    kinds = list(dict.fromkeys(value))
    if "sr" in kinds and "seg" not in kinds:
        raise ValueError("sr references the segments of the SEG it measures: list seg beside it")
    return kinds
