"""Configuration of routes, destinations, SEG encoding and sending.

A route is an ordered rule: ``match`` (called/calling AE title and DICOM attributes of the series) and
``action`` (the tasks to run, which stacks, which outputs, which destinations) or ``action: ignore``.
Rules are tried in order; the first that matches wins unless it says ``continue: true``, in which case the
following rules are tried too (fan-out). When no rule matches, ``default_route`` applies (``ignore`` unless
configured). Example::

    destinations:
      pacs: {ae_title: PACS, host: 10.0.0.5, port: 104}
    routes:
      - name: prostate
        match:
          called_ae_title: SEG_PROSTATE
          modality: MR
          series_description: "(?i)t2.*tra"
          slice_thickness: {max: 5}
        action:
          tasks: [{name: total_mr, fast: true}]
          stacks: largest
          outputs: [seg]
          destinations: [pacs]
      - name: localizers
        match: {image_type_contains: [LOCALIZER]}
        action: ignore

Cross-references (destination names, called AE titles served by the node) are checked by
:func:`routing_reference_problems`, which the root model runs; every problem names its key path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from config.node import AETitle, TlsVersion
from config.outputs import (
    DEFAULT_OUTPUTS,
    SEG_KINDS,
    DestinationKind,
    OutputKind,
    destination_outputs,
    route_outputs,
)

_UID_ROOT_RE = re.compile(r"^[0-9]+(\.[0-9]+)*\.?$")


def _as_list(value: Any) -> Any:
    """Accept a single value where a list is expected (``modality: MR`` == ``modality: [MR]``)."""
    if isinstance(value, (str, int, float)):
        return [value]
    return value


def _non_empty_list(value: list[Any]) -> list[Any]:
    if not value:
        raise ValueError("must list at least one value")
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from exc
    return value


Regex = Annotated[str, AfterValidator(_regex)]
TextList = Annotated[list[str], BeforeValidator(_as_list), AfterValidator(_non_empty_list)]
AETitleList = Annotated[list[AETitle], BeforeValidator(_as_list), AfterValidator(_non_empty_list)]
Plane = Literal["axial", "sagittal", "coronal"]


# ------------------------------------------------------------------------------------------- sending


class RetryConfig(BaseModel):
    """Exponential back-off of the C-STORE to a destination: delay n = initial * factor^(n-1), capped."""

    model_config = ConfigDict(extra="forbid")

    initial_delay_s: float = Field(default=30.0, gt=0, description="Wait before the second attempt.")
    factor: float = Field(default=2.0, ge=1.0, description="Each wait is the previous one times this.")
    max_delay_s: float = Field(default=1800.0, gt=0, description="Longest wait between two attempts.")
    max_total_s: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="Give up when the next attempt would start later than this after the first one (24 h).",
    )
    max_attempts: int | None = Field(
        default=None, ge=1, description="Give up after this many attempts (unset: only max_total_s limits)."
    )


class SendingConfig(BaseModel):
    """How SegNode acts as a C-STORE SCU (defaults for every destination)."""

    model_config = ConfigDict(extra="forbid")

    calling_ae_title: AETitle = Field(default="SEGNODE", description="Calling AE title of SegNode's SCU.")
    connect_timeout_s: float = Field(default=10.0, gt=0, description="TCP connection timeout.")
    acse_timeout_s: float = Field(default=30.0, gt=0, description="Association request/release timeout.")
    dimse_timeout_s: float = Field(default=120.0, gt=0, description="Wait for the C-STORE response.")
    network_timeout_s: float = Field(default=60.0, gt=0, description="Idle network timeout.")
    retry: RetryConfig = Field(default_factory=RetryConfig, description="Default retry policy.")


class PipelineConfig(BaseModel):
    """Where jobs keep their results and how many workers process them (``dicom_node/jobs``)."""

    model_config = ConfigDict(extra="forbid")

    work_dir: Path = Field(
        default=Path("work"), description="Folder of per-job working files (label maps, one folder per job)."
    )
    outbox_dir: Path = Field(
        default=Path("outbox"), description="Folder of encoded DICOM objects waiting to be sent (per job)."
    )
    conversion_workers: int = Field(
        default=1, ge=1, le=16, description="Threads that read series from the spool and build volumes."
    )
    encode_workers: int = Field(default=1, ge=1, le=16, description="Threads that encode DICOM-SEG objects.")
    queue_size: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Jobs waiting between two stages (bounded: a full queue holds the stage before it back).",
    )
    poll_interval_s: float = Field(
        default=0.5,
        gt=0,
        le=60,
        description="How often the database is checked for new, resumed, retried and due-to-send jobs.",
    )
    warm_up: bool = Field(
        default=True,
        description="Load the models of inference.default_task at start, not at the first series.",
    )


class DestinationTlsConfig(BaseModel):
    """DICOM over TLS towards one destination (PS3.15 Annex B, BCP 195)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="Connect to this destination over TLS only.")
    ca_certificates: Path | None = Field(
        default=None,
        description="PEM file of the CA certificates the destination's certificate must chain to.",
    )
    certificate: Path | None = Field(
        default=None, description="PEM file with SegNode's client certificate, for peers that require one."
    )
    private_key: Path | None = Field(default=None, description="PEM file with the client certificate's key.")
    server_hostname: str | None = Field(
        default=None,
        description="Name the destination's certificate must carry (unset: the destination's host).",
    )
    min_version: TlsVersion = Field(
        default=TlsVersion.tls1_2, description="Lowest TLS protocol version used (TLSv1.2 or TLSv1.3)."
    )

    @model_validator(mode="after")
    def _complete(self) -> DestinationTlsConfig:
        if self.enabled and self.ca_certificates is None:
            raise ValueError("TLS is enabled: ca_certificates is required to verify the destination")
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together")
        return self


class DestinationConfig(BaseModel):
    """A DICOM peer that receives SegNode's results by C-STORE."""

    model_config = ConfigDict(extra="forbid")

    ae_title: AETitle = Field(description="Called AE title of the destination (1-16 characters).")
    host: str = Field(min_length=1, description="Host name or IP address.")
    port: int = Field(ge=1, le=65535, description="TCP port.")
    calling_ae_title: AETitle | None = Field(
        default=None, description="Calling AE title towards this peer (unset: sending.calling_ae_title)."
    )
    seg_type: Literal["binary", "labelmap"] = Field(
        default="binary",
        description="Segmentation Type of SEGs sent here when the route's output is plain 'seg' "
        "(BINARY has the widest viewer support; LABELMAP needs a viewer that knows the Label Map SEG of "
        "DICOM 2024).",
    )
    outputs: Annotated[
        list[DestinationKind] | None, BeforeValidator(_as_list), AfterValidator(destination_outputs)
    ] = Field(
        default=None,
        description="The kinds this destination takes of what a route sends it (seg, sr, overlay, rtstruct; "
        "unset: all of them), e.g. [rtstruct] for a planning system or [overlay] for a PACS without SEG.",
    )
    retry: RetryConfig | None = Field(default=None, description="Retry policy here (unset: sending.retry).")
    tls: DestinationTlsConfig = Field(
        default_factory=DestinationTlsConfig, description="DICOM over TLS towards this destination."
    )


# --------------------------------------------------------------------------------------------- SEG


class SegConfig(BaseModel):
    """How DICOM-SEG objects are encoded."""

    model_config = ConfigDict(extra="forbid")

    series_description: str = Field(
        default="{algorithm} {task} SEG",
        description="SeriesDescription template; fields {algorithm}, {task}, {source} (source series "
        "description), {stack} (stack label). Cut to 64 characters.",
    )
    series_number: int | None = Field(
        default=None,
        ge=0,
        le=2**31 - 1,
        description="Fixed SeriesNumber (unset: source + series_number_offset).",
    )
    series_number_offset: int = Field(default=1000, ge=0, description="Added to the source SeriesNumber.")
    compression: Literal["none", "jpeg2000", "rle"] = Field(
        default="none",
        description="Lossless pixel compression: jpeg2000 (BINARY and LABELMAP) or rle (LABELMAP only).",
    )
    uid_root: str | None = Field(
        default=None,
        description="Organisation UID root of the SEG UIDs "
        "(unset: pydicom's root 1.2.826.0.1.3680043.8.498).",
    )
    manufacturer: str = Field(default="SegNode", min_length=1, max_length=64, description="Manufacturer.")
    device_serial_number: str | None = Field(
        default=None, max_length=64, description="Device Serial Number (unset: the host name)."
    )
    validate_with_dciodvfy: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="Check every SEG with dicom3tools' dciodvfy before sending: auto = when installed.",
    )
    validation_max_frames: int | None = Field(
        default=400,
        ge=8,
        description="dciodvfy's time grows faster than the frame count (about a minute for 2,500 frames): "
        "a SEG with more frames is checked through a copy holding every module and this many of its frames "
        "(the first and last of each segment, the rest spread evenly). Unset: always the whole file.",
    )
    validation_timeout_s: float = Field(
        default=300.0, gt=0, description="Longest dciodvfy run; past it the job fails (validator_timeout)."
    )

    @field_validator("uid_root")
    @classmethod
    def _uid_root(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _UID_ROOT_RE.match(value) or any(
            p.startswith("0") and p != "0" for p in value.split(".") if p
        ):
            raise ValueError("must be a UID root: digits separated by dots, no leading zeros")
        if len(value.rstrip(".")) > 40:
            raise ValueError("longer than 40 characters (derived UIDs must fit in 64)")
        return value


# ------------------------------------------------------------------------------------------- routes


class NumberRange(BaseModel):
    """An inclusive range; either bound may be left out."""

    model_config = ConfigDict(extra="forbid")

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> NumberRange:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self


class MatchConfig(BaseModel):
    """What a series must be like for the rule to apply; every criterion given must hold (AND).

    Text comparisons of AE titles, Modality, BodyPartExamined and ImageType are case-insensitive; a single
    value may be written instead of a list, and a list means any of its values (ImageType: all of them).
    """

    model_config = ConfigDict(extra="forbid")

    called_ae_title: AETitleList | None = Field(
        default=None, description="SegNode's AE title the peer called."
    )
    calling_ae_title: AETitleList | None = Field(default=None, description="AE title of the sending peer.")
    modality: TextList | None = Field(default=None, description="Modality, e.g. MR.")
    series_description: Regex | None = Field(
        default=None, description="Regular expression searched in SeriesDescription ((?i) for any case)."
    )
    body_part_examined: TextList | None = Field(default=None, description="BodyPartExamined values.")
    image_type_contains: TextList | None = Field(
        default=None, description="Values that ImageType must all contain (e.g. [ORIGINAL, PRIMARY])."
    )
    slice_thickness: NumberRange | None = Field(default=None, description="SliceThickness in mm.")
    number_of_slices: NumberRange | None = Field(
        default=None, description="Number of distinct slice positions of the series (largest stack)."
    )
    plane: Annotated[list[Plane], BeforeValidator(_as_list), AfterValidator(_non_empty_list)] | None = Field(
        default=None, description="Acquisition plane from ImageOrientationPatient: axial, sagittal, coronal."
    )


class TaskSpec(BaseModel):
    """One task to run (a name such as ``total_mr``, or a mapping with options)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="Task of the model registry, e.g. total_mr.")
    fast: bool = Field(default=False, description="Use the task's fast (lower resolution) model.")
    roi_subset: list[str] | None = Field(
        default=None, description="Only these structures (TotalSegmentator's roi_subset)."
    )

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("roi_subset")
    @classmethod
    def _roi_subset(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("must list at least one structure (or leave roi_subset out)")
        return value


class StackFilter(BaseModel):
    """Segment the stacks of a multi-stack series that match all criteria given."""

    model_config = ConfigDict(extra="forbid")

    image_type_contains: TextList | None = Field(
        default=None, description="Values the stack's ImageType holds."
    )
    label: Regex | None = Field(default=None, description="Regular expression searched in the stack label.")
    key: dict[str, str | int | float] | None = Field(
        default=None, description="Stack attributes that must be equal, e.g. {b_value: 800}."
    )

    @model_validator(mode="after")
    def _not_empty(self) -> StackFilter:
        if self.image_type_contains is None and self.label is None and not self.key:
            raise ValueError("give image_type_contains, label or key (or use 'all' / 'largest')")
        return self


def _ignore_shorthand(value: Any) -> Any:
    """``action: ignore`` is written as a word; it stands for ``{ignore: true}``."""
    if isinstance(value, str):
        if value.strip().lower() == "ignore":
            return {"ignore": True}
        raise ValueError(f"must be 'ignore' or a mapping with tasks and destinations, not {value!r}")
    return value


class RouteAction(BaseModel):
    """What to do with a matching series: ``ignore``, or tasks, stacks, outputs and destinations."""

    model_config = ConfigDict(extra="forbid")

    ignore: bool = Field(default=False, description="Do nothing with the series (written 'action: ignore').")
    tasks: Annotated[list[TaskSpec], BeforeValidator(_as_list)] = Field(
        default_factory=list, description="Tasks to run (each gives one SEG per stack)."
    )
    stacks: Literal["all", "largest"] | StackFilter = Field(
        default="all", description="Stacks of a multi-stack series to segment: all, largest or a filter."
    )
    outputs: Annotated[
        list[OutputKind],
        BeforeValidator(_as_list),
        AfterValidator(_non_empty_list),
        AfterValidator(route_outputs),
    ] = Field(
        default_factory=lambda: list(DEFAULT_OUTPUTS),
        description="What each destination of the route receives: seg (Segmentation Type from each "
        "destination's seg_type), seg_binary, seg_labelmap, sr (TID 1500 volumetry report; it references "
        "the SEG's segments, so a route with sr lists a seg kind too), overlay (Secondary Capture images "
        "with burned-in outlines), rtstruct (RT Structure Set).",
    )
    destinations: Annotated[list[str], BeforeValidator(_as_list)] = Field(
        default_factory=list, description="Names from the destinations section."
    )

    @model_validator(mode="after")
    def _complete(self) -> RouteAction:
        if self.ignore:
            if self.tasks or self.destinations:
                raise ValueError("an ignore action takes no tasks or destinations")
            return self
        missing = [k for k in ("tasks", "destinations") if not getattr(self, k)]
        if missing:
            raise ValueError(
                f"empty action: list at least one of {' and '.join(missing)} (or write 'ignore')"
            )
        return self


Action = Annotated[RouteAction, BeforeValidator(_ignore_shorthand)]


class RouteRule(BaseModel):
    """One ordered routing rule."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, description="Name shown in logs, the audit log and route simulate.")
    match: MatchConfig = Field(default_factory=MatchConfig, description="Criteria (none: every series).")
    action: Action = Field(description="'ignore', or tasks/stacks/outputs/destinations.")
    continue_: bool = Field(
        default=False,
        alias="continue",
        description="After this rule matches, try the following rules too (fan-out).",
    )


DefaultRoute = Action
IGNORE = RouteAction(ignore=True)


def destination_kinds(action: RouteAction, destination: DestinationConfig) -> list[str]:
    """What a destination receives of a route: the route's outputs (a SEG kind as ``seg``) that the
    destination takes."""
    kinds = list(dict.fromkeys("seg" if kind in SEG_KINDS else kind for kind in action.outputs))
    taken = destination.outputs
    return [kind for kind in kinds if taken is None or kind in taken]


def routing_reference_problems(
    routes: Iterable[RouteRule],
    default_route: DefaultRoute,
    destinations: Mapping[str, DestinationConfig],
    called_ae_titles: Iterable[str],
) -> list[str]:
    """Problems (``key.path: reason``) with names that the routes use but the configuration lacks."""
    problems: list[str] = []
    served = {t.upper() for t in called_ae_titles}
    names: set[str] = set()
    defined = ", ".join(sorted(destinations)) or "none"

    def check_action(action: RouteAction, where: str) -> None:
        if not action.ignore:
            for n, name in enumerate(action.destinations):
                if name not in destinations:
                    problems.append(
                        f"{where}.destinations[{n}]: destination {name!r} is not defined in destinations "
                        f"(defined: {defined})"
                    )
                elif not destination_kinds(action, destinations[name]):
                    problems.append(
                        f"{where}.destinations[{n}]: destination {name!r} takes none of the route's outputs "
                        f"({', '.join(action.outputs)}; destinations.{name}.outputs: "
                        f"{', '.join(destinations[name].outputs or [])})"
                    )

    for index, rule in enumerate(routes):
        where = f"routes[{index}]"
        if rule.name in names:
            problems.append(f"{where}.name: route name {rule.name!r} is used twice")
        names.add(rule.name)
        for n, title in enumerate(rule.match.called_ae_title or []):
            if title.upper() not in served:
                problems.append(
                    f"{where}.match.called_ae_title[{n}]: {title!r} is not one of the node's AE titles "
                    f"(node.ae_titles: {', '.join(sorted(served))})"
                )
        check_action(rule.action, f"{where}.action")
    check_action(default_route, "default_route")
    return problems
