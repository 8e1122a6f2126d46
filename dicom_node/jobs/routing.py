"""Routing: which tasks, stacks, outputs and destinations apply to a received series, and why.

Rules (``config.routing.RouteRule``) are tried in order against :class:`SeriesFacts` (the AE titles of the
association and a few header attributes). The first rule that matches decides, unless it says
``continue: true``: then the following rules are tried too and every matching rule adds its action
(fan-out). An ``ignore`` action adds nothing. When no rule matches at all, ``default_route`` applies.

Every rule's evaluation is kept with a reason per criterion, so that the audit log and ``segnode route
simulate`` can say why a rule matched and why the others did not. Pure functions, no I/O.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from config.outputs import SEG_KINDS
from config.routing import (
    IGNORE,
    DestinationConfig,
    MatchConfig,
    NumberRange,
    RouteAction,
    RouteRule,
    StackFilter,
    destination_kinds,
)
from conversion.volume import Volume
from dicom_node.outputs.derived import OutputKind
from dicom_node.outputs.seg import SegmentationType

logger = logging.getLogger(__name__)

#: Name under which the default route appears in decisions.
DEFAULT_ROUTE_NAME = "default_route"


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def _multi(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)) or (
        hasattr(value, "__iter__") and not isinstance(value, (str, bytes))
    ):
        return tuple(_text(v) for v in value)
    return tuple(v for v in _text(value).split("\\") if v)


def _float(value: object) -> float | None:
    try:
        return None if value in (None, "") else float(str(value))
    except ValueError:
        return None


def _geometry(headers: Sequence[Dataset]) -> tuple[str | None, int]:
    """(acquisition plane, number of distinct slice positions) from the headers."""
    from conversion.headers import SourceImage, frames_of

    orientation = None
    positions: list[np.ndarray] = []
    count_without_position = 0
    for index, header in enumerate(headers):
        meta = getattr(header, "file_meta", None)
        ts = UID(str(meta.get("TransferSyntaxUID", ""))) if meta is not None else UID("")
        for frame in frames_of(index, SourceImage.from_dataset(header, ts)):
            if orientation is None and frame.orientation is not None:
                orientation = np.asarray(frame.orientation, dtype=np.float64)
            if frame.position is None:
                count_without_position += 1
            else:
                positions.append(np.asarray(frame.position, dtype=np.float64))
    if orientation is None:
        return None, len(positions) + count_without_position
    normal = np.cross(orientation[:3], orientation[3:])
    plane = ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]
    distinct = {round(float(p @ normal), 2) for p in positions}
    return plane, len(distinct) + count_without_position


@dataclass(frozen=True)
class SeriesFacts:
    """What routing looks at: the association's AE titles and attributes of the series."""

    series_instance_uid: str
    called_ae_title: str
    calling_ae_title: str
    modality: str
    series_description: str
    body_part_examined: str
    image_type: tuple[str, ...]
    slice_thickness: float | None
    #: Distinct slice positions (for a multi-stack series: the positions of one stack).
    number_of_slices: int
    #: axial / sagittal / coronal by the dominant component of the slice normal; None without orientation.
    plane: str | None

    @classmethod
    def from_headers(
        cls, headers: Sequence[Dataset], called_ae_title: str, calling_ae_title: str
    ) -> SeriesFacts:
        """Facts of one series from the headers of its instances (no pixel data needed)."""
        if not headers:
            raise ValueError("a series needs at least one instance header")
        first = headers[0]
        thickness = _float(first.get("SliceThickness"))
        for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
            if thickness is None and first.get(groups):
                group = first[groups][0]
                if "PixelMeasuresSequence" in group:
                    thickness = _float(group.PixelMeasuresSequence[0].get("SliceThickness"))
        plane, slices = _geometry(headers)
        return cls(
            series_instance_uid=_text(first.get("SeriesInstanceUID")),
            called_ae_title=called_ae_title.strip(),
            calling_ae_title=calling_ae_title.strip(),
            modality=_text(first.get("Modality")),
            series_description=_text(first.get("SeriesDescription")),
            body_part_examined=_text(first.get("BodyPartExamined")),
            image_type=_multi(first.get("ImageType")),
            slice_thickness=thickness,
            number_of_slices=slices,
            plane=plane,
        )


@dataclass(frozen=True)
class CriterionResult:
    """One criterion of a rule and whether the series met it, in words."""

    criterion: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class RuleEvaluation:
    """How one rule fared against a series."""

    index: int
    name: str
    matched: bool
    #: False for rules after the one that decided (they were not tried).
    reached: bool
    criteria: tuple[CriterionResult, ...]

    def explain(self) -> str:
        if not self.criteria:
            return "no criteria: matches every series"
        shown = [c for c in self.criteria if not c.ok] if not self.matched else list(self.criteria)
        return "; ".join(c.detail for c in shown)


@dataclass(frozen=True)
class RoutedAction:
    """An action to carry out, with the rule it came from."""

    rule: str
    action: RouteAction


@dataclass(frozen=True)
class RouteDecision:
    """The outcome of routing one series."""

    facts: SeriesFacts
    evaluations: tuple[RuleEvaluation, ...]
    actions: tuple[RoutedAction, ...]
    #: The rules (or ``default_route``) whose ignore action matched.
    ignored_by: tuple[str, ...] = field(default=())
    used_default: bool = False

    @property
    def ignored(self) -> bool:
        return not self.actions

    def summary(self) -> str:
        if self.actions:
            return "route " + ", ".join(a.rule for a in self.actions)
        if self.ignored_by:
            return "ignored by " + ", ".join(self.ignored_by)
        return "ignored (no route matched)"


def _in(criterion: str, value: str, allowed: Sequence[str], shown: str) -> CriterionResult:
    ok = value.upper() in {a.upper() for a in allowed}
    listing = ", ".join(allowed)
    word = "in" if ok else "not in"
    return CriterionResult(criterion, ok, f"{shown} {value or '(empty)'!r} {word} [{listing}]")


def _range(criterion: str, value: float | None, rng: NumberRange, shown: str) -> CriterionResult:
    bounds = f"[{'' if rng.min is None else f'{rng.min:g}'}, {'' if rng.max is None else f'{rng.max:g}'}]"
    if value is None:
        return CriterionResult(criterion, False, f"{shown} absent, range {bounds}")
    ok = (rng.min is None or value >= rng.min) and (rng.max is None or value <= rng.max)
    return CriterionResult(criterion, ok, f"{shown} {value:g} {'in' if ok else 'outside'} {bounds}")


def evaluate_match(match: MatchConfig, facts: SeriesFacts) -> tuple[CriterionResult, ...]:
    """Every criterion given in ``match``, evaluated against ``facts``."""
    out: list[CriterionResult] = []
    if match.called_ae_title is not None:
        out.append(_in("called_ae_title", facts.called_ae_title, match.called_ae_title, "called AE"))
    if match.calling_ae_title is not None:
        out.append(_in("calling_ae_title", facts.calling_ae_title, match.calling_ae_title, "calling AE"))
    if match.modality is not None:
        out.append(_in("modality", facts.modality, match.modality, "Modality"))
    if match.series_description is not None:
        ok = re.search(match.series_description, facts.series_description) is not None
        verb = "matches" if ok else "does not match"
        detail = f"SeriesDescription {facts.series_description!r} {verb} /{match.series_description}/"
        out.append(CriterionResult("series_description", ok, detail))
    if match.body_part_examined is not None:
        out.append(
            _in("body_part_examined", facts.body_part_examined, match.body_part_examined, "BodyPartExamined")
        )
    if match.image_type_contains is not None:
        have = {v.upper() for v in facts.image_type}
        missing = [v for v in match.image_type_contains if v.upper() not in have]
        shown = "\\".join(facts.image_type) or "(empty)"
        detail = f"ImageType {shown} " + (f"lacks {', '.join(missing)}" if missing else "contains all of ")
        if not missing:
            detail += ", ".join(match.image_type_contains)
        out.append(CriterionResult("image_type_contains", not missing, detail))
    if match.slice_thickness is not None:
        out.append(_range("slice_thickness", facts.slice_thickness, match.slice_thickness, "SliceThickness"))
    if match.number_of_slices is not None:
        out.append(
            _range("number_of_slices", float(facts.number_of_slices), match.number_of_slices, "slices")
        )
    if match.plane is not None:
        out.append(_in("plane", facts.plane or "", list(match.plane), "plane"))
    return tuple(out)


def route_series(
    facts: SeriesFacts, routes: Sequence[RouteRule], default_route: RouteAction = IGNORE
) -> RouteDecision:
    """Apply the rules in order (first match, fan-out with ``continue``) and the default route."""
    evaluations: list[RuleEvaluation] = []
    actions: list[RoutedAction] = []
    ignored_by: list[str] = []
    deciding = True
    any_match = False
    for index, rule in enumerate(routes):
        criteria = evaluate_match(rule.match, facts)
        matched = all(c.ok for c in criteria)
        evaluations.append(RuleEvaluation(index, rule.name, matched and deciding, deciding, criteria))
        if not (matched and deciding):
            continue
        any_match = True
        if rule.action.ignore:
            ignored_by.append(rule.name)
        else:
            actions.append(RoutedAction(rule.name, rule.action))
        if not rule.continue_:
            deciding = False
    used_default = not any_match
    if used_default:
        if default_route.ignore:
            ignored_by.append(DEFAULT_ROUTE_NAME)
        else:
            actions.append(RoutedAction(DEFAULT_ROUTE_NAME, default_route))
    decision = RouteDecision(facts, tuple(evaluations), tuple(actions), tuple(ignored_by), used_default)
    logger.info("series %s: %s", facts.series_instance_uid, decision.summary())
    return decision


def _stack_image_type(volume: Volume) -> tuple[str, ...]:
    value = volume.stack_key.get("image_type")
    if value is not None:
        return _multi(value)
    return _multi(volume.first_header.get("ImageType"))


def _stack_matches(volume: Volume, selection: StackFilter) -> bool:
    if selection.image_type_contains is not None:
        have = {v.upper() for v in _stack_image_type(volume)}
        if any(v.upper() not in have for v in selection.image_type_contains):
            return False
    if selection.label is not None and re.search(selection.label, volume.stack_label) is None:
        return False
    for key, wanted in (selection.key or {}).items():
        value = volume.stack_key.get(key)
        if value is None:
            return False
        if isinstance(wanted, (int, float)) and not isinstance(wanted, bool):
            number = _float(value)
            if number is None or abs(number - float(wanted)) > 1e-6:
                return False
        elif str(value) != str(wanted):
            return False
    return True


def select_stacks(volumes: Sequence[Volume], action: RouteAction) -> list[Volume]:
    """The stacks of a series that the action segments (may be empty when a filter matches none)."""
    if action.stacks == "all":
        return list(volumes)
    if action.stacks == "largest":
        if not volumes:
            return []
        best = max(
            range(len(volumes)), key=lambda i: (volumes[i].shape[2], int(np.prod(volumes[i].shape)), -i)
        )
        return [volumes[best]]
    assert isinstance(action.stacks, StackFilter)
    return [v for v in volumes if _stack_matches(v, action.stacks)]


@dataclass(frozen=True)
class OutputPlan:
    """One SEG variant of a task and the destinations that receive it."""

    segmentation_type: SegmentationType
    destinations: tuple[str, ...]


def plan_outputs(action: RouteAction, destinations: Mapping[str, DestinationConfig]) -> list[OutputPlan]:
    """Which Segmentation Types to encode and where each goes.

    ``seg`` follows each destination's ``seg_type``; ``seg_binary`` / ``seg_labelmap`` force the type.
    """
    targets: dict[SegmentationType, list[str]] = {}
    for kind in action.outputs:
        if kind not in SEG_KINDS:
            continue
        for name in action.destinations:
            if "seg" not in destination_kinds(action, destinations[name]):
                continue
            if kind == "seg_binary":
                seg_type = SegmentationType.BINARY
            elif kind == "seg_labelmap":
                seg_type = SegmentationType.LABELMAP
            else:
                seg_type = SegmentationType(destinations[name].seg_type.upper())
            names = targets.setdefault(seg_type, [])
            if name not in names:
                names.append(name)
    return [OutputPlan(t, tuple(names)) for t, names in sorted(targets.items())]


def derived_targets(
    action: RouteAction, destinations: Mapping[str, DestinationConfig]
) -> dict[OutputKind, tuple[str, ...]]:
    """The objects beside the SEG that the route asks for, in the order they are made (the SR first: it
    references the SEG), each with the destinations that take it (a destination's ``outputs``); a kind no
    destination takes is not made."""
    out: dict[OutputKind, tuple[str, ...]] = {}
    for kind in (OutputKind.SR, OutputKind.OVERLAY, OutputKind.RTSTRUCT):
        names = tuple(
            n for n in action.destinations if kind.value in destination_kinds(action, destinations[n])
        )
        if names:
            out[kind] = names
    return out


def describe_decision(decision: RouteDecision) -> Iterable[str]:
    """Lines for humans: the facts, then every rule and why it matched or not."""
    f = decision.facts
    yield (
        f"series {f.series_instance_uid}: {f.modality or '?'} {f.series_description!r}, "
        f"{f.number_of_slices} slices, plane {f.plane or '?'}, called AE {f.called_ae_title!r}, "
        f"calling AE {f.calling_ae_title!r}"
    )
    yield f"  => {decision.summary()}"
    for ev in decision.evaluations:
        if not ev.reached:
            state = "not tried (an earlier rule matched without continue)"
        elif ev.matched:
            state = f"MATCHED: {ev.explain()}"
        else:
            state = f"no match: {ev.explain()}"
        yield f"  rule {ev.index + 1} {ev.name!r}: {state}"
    if decision.used_default:
        yield f"  {DEFAULT_ROUTE_NAME}: applied (no rule matched)"
    for routed in decision.actions:
        a = routed.action
        tasks = ", ".join(t.name + (" (fast)" if t.fast else "") for t in a.tasks)
        stacks = a.stacks if isinstance(a.stacks, str) else a.stacks.model_dump(exclude_none=True)
        yield (
            f"  action of {routed.rule!r}: tasks {tasks}; stacks {stacks}; outputs {', '.join(a.outputs)}; "
            f"destinations {', '.join(a.destinations)}"
        )
