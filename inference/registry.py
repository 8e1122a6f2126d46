"""The registry of the TotalSegmentator MRI tasks and the nnU-Net part models they run.

Facts come from TotalSegmentator 2.18.0 (``map_tasks_config.py``: task configurations and weights folder
names; ``map_to_binary.py``: class maps) and are kept as package data in ``inference/data/mr_tasks.json``.

A :class:`Task` is what a route or the CLI asks for (``total_mr``); it runs one or more :class:`PartModel`
(an nnU-Net dataset trained at one spacing). ``total_mr`` runs 850 and 851 at 1.5 mm and merges them into
one 50-class map (851 written over 850 where non-zero); ``--fast`` runs 852 at 3 mm, ``--fastest`` 853 at
6 mm. Licensed tasks need weights from TotalSegmentator's licence server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from config.errors import SegNodeError

#: Sub-modes of a task, as TotalSegmentator names them.
Mode = Literal["default", "fast", "fastest"]
#: Every mode, in the order :attr:`Task.all_models` lists their models.
MODES: tuple[Mode, ...] = ("default", "fast", "fastest")

#: TotalSegmentator version whose pre/post-processing and model facts SegNode reproduces.
TOTALSEGMENTATOR_REFERENCE_VERSION = "2.18.0"


class UnknownTaskError(SegNodeError):
    """A task name that the registry does not know."""

    reason = "unknown_task"


class UnsupportedModeError(SegNodeError):
    """A task asked for in a mode (``fast``) that it does not offer."""

    reason = "unsupported_mode"


@dataclass(frozen=True)
class PartModel:
    """One nnU-Net v2 model (a trained dataset) that a task runs.

    ``class_map`` maps the model's own label values to structure names, auxiliary labels included (e.g. the
    face model also predicts brain and liver, which the task then removes).
    """

    dataset_id: int
    dataset_folder_name: str
    trainer: str
    plans: str
    configuration: str
    fold: int
    #: Isotropic voxel size in mm that TotalSegmentator resamples the image to before prediction.
    spacing_mm: float
    class_map: Mapping[int, str] = field(hash=False, compare=False)
    licensed: bool
    #: GitHub release that holds the open weights (``None`` for licensed weights).
    release: str | None = None

    @property
    def model_folder_name(self) -> str:
        """``<Trainer>__<Plans>__<configuration>``, the nnU-Net results sub-folder."""
        return f"{self.trainer}__{self.plans}__{self.configuration}"

    @property
    def num_labels(self) -> int:
        """Number of foreground labels the network predicts."""
        return len(self.class_map)

    def model_dir(self, weights_dir: Path) -> Path:
        """``<weights>/DatasetNNN_Name/<Trainer>__<Plans>__<configuration>`` (holds plans.json, fold_N/)."""
        return weights_dir / self.dataset_folder_name / self.model_folder_name

    def checkpoint_path(self, weights_dir: Path, checkpoint: str = "checkpoint_final.pth") -> Path:
        return self.model_dir(weights_dir) / f"fold_{self.fold}" / checkpoint


@dataclass(frozen=True)
class Task:
    """A segmentation task: the structures it gives and the part models it runs in each mode."""

    name: str
    part_models: tuple[PartModel, ...]
    fast_models: tuple[PartModel, ...]
    fastest_models: tuple[PartModel, ...]
    #: Task label value -> structure name, as in the task's merged output.
    class_map: Mapping[int, str] = field(hash=False, compare=False)
    licensed: bool
    #: True where TotalSegmentator refuses ``--fast`` (the licensed tasks).
    disallow_fast: bool = False

    @property
    def structures(self) -> tuple[str, ...]:
        return tuple(self.class_map[k] for k in sorted(self.class_map))

    @property
    def label_of(self) -> Mapping[str, int]:
        """Structure name -> task label value."""
        return {name: value for value, name in self.class_map.items()}

    @property
    def all_models(self) -> tuple[PartModel, ...]:
        """Every part model of the task, each once, in the order default, fast, fastest."""
        seen: dict[int, PartModel] = {}
        for model in (*self.part_models, *self.fast_models, *self.fastest_models):
            seen.setdefault(model.dataset_id, model)
        return tuple(seen.values())

    def mode(self, fast: bool = False, fastest: bool = False) -> Mode:
        """The mode TotalSegmentator 2.18 picks for these flags (``get_task_config``)."""
        if fast and fastest:
            raise UnsupportedModeError("fast and fastest are mutually exclusive")
        if (fast or fastest) and self.disallow_fast:
            raise UnsupportedModeError(f"task {self.name} does not offer a fast mode")
        if fastest and self.fastest_models:
            return "fastest"
        if (fast or fastest) and self.fast_models:
            return "fast"
        return "default"

    def models(self, mode: Mode = "default") -> tuple[PartModel, ...]:
        """The part models run in ``mode``; their outputs are merged in this order."""
        chosen = {"default": self.part_models, "fast": self.fast_models, "fastest": self.fastest_models}[mode]
        if not chosen:
            raise UnsupportedModeError(f"task {self.name} has no {mode} mode")
        return chosen


def parse_mode(name: str) -> Mode:
    """The :data:`Mode` called ``name``.

    Raises
    ------
    UnsupportedModeError
        ``name`` is not one of ``default``, ``fast``, ``fastest``.
    """
    for mode in MODES:
        if name == mode:
            return mode
    raise UnsupportedModeError(f"unknown mode {name!r}; use {', '.join(MODES)}")


def _int_keys(raw: Mapping[str, str]) -> Mapping[int, str]:
    return MappingProxyType({int(k): str(v) for k, v in sorted(raw.items(), key=lambda kv: int(kv[0]))})


@cache
def _load() -> tuple[Mapping[int, PartModel], Mapping[str, Task]]:
    text = resources.files("inference").joinpath("data/mr_tasks.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    models: dict[int, PartModel] = {}
    for entry in data["part_models"]:
        model = PartModel(
            dataset_id=int(entry["dataset_id"]),
            dataset_folder_name=str(entry["folder"]),
            trainer=str(entry["trainer"]),
            plans=str(entry["plans"]),
            configuration=str(entry["configuration"]),
            fold=int(entry["fold"]),
            spacing_mm=float(entry["spacing_mm"]),
            class_map=_int_keys(entry["classes"]),
            licensed=bool(entry["licensed"]),
            release=entry["release"],
        )
        models[model.dataset_id] = model
    tasks: dict[str, Task] = {}
    for name, entry in data["tasks"].items():
        tasks[name] = Task(
            name=name,
            part_models=tuple(models[i] for i in entry["default"]),
            fast_models=tuple(models[i] for i in entry["fast"]),
            fastest_models=tuple(models[i] for i in entry["fastest"]),
            class_map=_int_keys(entry["classes"]),
            licensed=bool(entry["licensed"]),
            disallow_fast=bool(entry["licensed"]),
        )
    return MappingProxyType(models), MappingProxyType(tasks)


def tasks() -> Mapping[str, Task]:
    """All MRI tasks by name."""
    return _load()[1]


def part_models() -> Mapping[int, PartModel]:
    """All part models by nnU-Net dataset id."""
    return _load()[0]


def get_task(name: str) -> Task:
    """The task called ``name``; :class:`UnknownTaskError` lists the known ones otherwise."""
    known = tasks()
    try:
        return known[name]
    except KeyError:
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {', '.join(sorted(known))}") from None


def get_part_model(dataset_id: int) -> PartModel:
    known = part_models()
    try:
        return known[dataset_id]
    except KeyError:
        raise UnknownTaskError(
            f"unknown nnU-Net dataset {dataset_id}; known: {', '.join(str(i) for i in sorted(known))}"
        ) from None
