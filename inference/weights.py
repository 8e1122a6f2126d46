"""Model weights: where they live and which are installed (:mod:`inference.weights_install` gets them there).

Layout: exactly TotalSegmentator's, so that an existing ``~/.totalsegmentator`` tree works as it is::

    <weights>/DatasetNNN_Name/<Trainer>__nnUNetPlans__3d_fullres/dataset.json
                                                            /plans.json
                                                            /fold_0/checkpoint_final.pth

The weights folder is ``inference.weights_dir`` of the configuration, else ``$TOTALSEG_WEIGHTS_PATH``, else
``~/.totalsegmentator/nnunet/results`` (TotalSegmentator's own default).

Download locations are package data (``inference/data/catalog_weights.json``), taken from TotalSegmentator
2.18: open weights are zip files of its GitHub release (``<base>/<release>/<DatasetNNN_Name>.zip``); licensed
weights come from its licence server (``POST <server>/download_weights`` with the licence number, the task
and the client version), also as a zip. A download goes to a temporary file inside the weights folder, is
checked (length, zip CRCs, sha256 when known, layout) and extracted into a temporary folder that is then
moved into place with ``os.replace``, so that a model folder is either complete or absent.

SegNode never sends usage statistics anywhere: the only network requests it makes are the downloads asked for
with ``segnode models download``, to the configured location (and wherever that server redirects, as GitHub
does to its file storage); it does not check licences online, count predictions or report runs (unlike the
TotalSegmentator command, which posts usage statistics by default). Hospitals without internet use
``segnode models import`` with a zip or a folder copied from elsewhere.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config.errors import SegNodeError
from inference import registry
from inference.registry import PartModel, Task

if TYPE_CHECKING:  # pragma: no cover - typing only
    from config.inference import InferenceConfig

logger = logging.getLogger(__name__)

#: Package data with the download locations (relative to the ``inference`` package).
WEIGHTS_RESOURCE = "data/catalog_weights.json"
#: TotalSegmentator's environment variable for the weights folder.
WEIGHTS_ENV = "TOTALSEG_WEIGHTS_PATH"
#: TotalSegmentator's default weights folder, below the home directory.
DEFAULT_WEIGHTS_SUBDIR = Path(".totalsegmentator") / "nnunet" / "results"
#: Prefix of SegNode's temporary files and folders inside the weights folder (ignored by the status).
TEMP_PREFIX = ".segnode-"


class WeightsError(SegNodeError):
    """Base class of the weights errors."""

    reason = "weights_error"


class MissingWeightsError(WeightsError):
    """The weights a task needs are not installed (or incomplete)."""

    reason = "missing_weights"


class DownloadError(WeightsError):
    """A download failed: ``offline`` (server unreachable) or ``download_failed`` (HTTP error, truncated)."""

    reason = "download_failed"


class InvalidWeightsError(WeightsError):
    """An archive or folder that is not a valid set of weights (corrupt zip, wrong layout)."""

    reason = "invalid_weights"


class LicenseError(WeightsError):
    """A licensed task without licence key (``license_required``) or with one the server refuses."""

    reason = "license_required"


# ------------------------------------------------------------------------------------------- locations


def resolve_weights_dir(
    config: InferenceConfig | None = None, environ: Mapping[str, str] | None = None
) -> Path:
    """The weights folder: the configuration's, else ``$TOTALSEG_WEIGHTS_PATH``, else TotalSegmentator's.

    Parameters
    ----------
    config
        The ``inference`` section; its ``weights_dir`` wins when set.
    environ
        Where ``TOTALSEG_WEIGHTS_PATH`` is looked up; ``None``: the process environment.

    Returns
    -------
    Path
        The folder (``~`` expanded); it need not exist yet.
    """
    env = os.environ if environ is None else environ
    if config is not None and config.weights_dir is not None:
        return Path(config.weights_dir).expanduser()
    if env.get(WEIGHTS_ENV):
        return Path(env[WEIGHTS_ENV]).expanduser()
    return Path.home() / DEFAULT_WEIGHTS_SUBDIR


@dataclass(frozen=True)
class WeightSource:
    """Where the weights of one nnU-Net dataset come from."""

    dataset_id: int
    folder: str
    #: GitHub release tag of open weights (``None`` for licensed ones).
    release: str | None
    #: Official download URL of open weights (``None`` for licensed ones).
    url: str | None
    #: Task name the licence server knows the weights by (``None`` for open ones).
    license_task: str | None
    sha256: str | None


@dataclass(frozen=True)
class DownloadLocations:
    """Base URLs of the downloads; the defaults are TotalSegmentator 2.18's official locations."""

    release_base_url: str
    license_server_url: str
    license_endpoint: str
    #: Client version sent to the licence server (the TotalSegmentator version whose weights SegNode runs).
    license_client_version: str

    @classmethod
    def from_config(cls, config: InferenceConfig | None = None) -> DownloadLocations:
        """TotalSegmentator's official locations, with ``inference.weights_base_url`` and
        ``inference.license_server_url`` of ``config`` in their place where set (a mirror)."""
        data = _package_data()
        base = data["release_base_url"]
        server = data["license_server_url"]
        if config is not None and config.weights_base_url:
            base = config.weights_base_url
        if config is not None and config.license_server_url:
            server = config.license_server_url
        return cls(
            release_base_url=str(base).rstrip("/"),
            license_server_url=str(server),
            license_endpoint=str(data["license_download_endpoint"]),
            license_client_version=str(data["license_client_version"]),
        )

    def url_for(self, source: WeightSource) -> str:
        """The URL the weights of ``source`` are fetched from."""
        if source.license_task is not None:
            return self.license_server_url.rstrip("/") + "/" + self.license_endpoint
        return f"{self.release_base_url}/{source.release}/{source.folder}.zip"


@cache
def _package_data() -> dict[str, Any]:
    text = resources.files("inference").joinpath(WEIGHTS_RESOURCE).read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def weight_sources() -> dict[int, WeightSource]:
    """Download facts of every known nnU-Net dataset, by dataset id."""
    out: dict[int, WeightSource] = {}
    for key, entry in _package_data()["datasets"].items():
        out[int(key)] = WeightSource(
            dataset_id=int(key),
            folder=str(entry["folder"]),
            release=entry.get("release"),
            url=entry.get("url"),
            license_task=entry.get("license_task"),
            sha256=entry.get("sha256"),
        )
    return out


# ---------------------------------------------------------------------------------------------- status


def _tasks_using(model: PartModel) -> list[str]:
    return [name for name, task in registry.tasks().items() if model in task.all_models]


def get_command(task: str, licensed: bool) -> str:
    """The command that installs a task's weights (shown in error messages)."""
    key = " --license-key KEY" if licensed else ""
    return (
        f"`segnode models download {task}{key}` (or `segnode models import ZIP_OR_FOLDER` without internet)"
    )


def _read_json(path: Path) -> object:
    return json.loads(path.read_text(encoding="utf-8"))


def model_problems(model: PartModel, weights_dir: Path) -> list[str]:
    """Why the weights of ``model`` under ``weights_dir`` cannot be used (empty list when they can)."""
    dataset_dir = weights_dir / model.dataset_folder_name
    model_dir = model.model_dir(weights_dir)
    if not dataset_dir.is_dir():
        return [f"{dataset_dir} does not exist"]
    if not model_dir.is_dir():
        return [f"{model_dir} does not exist (expected the {model.model_folder_name} results folder)"]
    problems: list[str] = []
    checkpoint = model.checkpoint_path(weights_dir)
    if not checkpoint.is_file():
        problems.append(f"{checkpoint} is missing")
    elif checkpoint.stat().st_size == 0:
        problems.append(f"{checkpoint} is empty")
    for name in ("dataset.json", "plans.json"):
        path = model_dir / name
        if not path.is_file():
            problems.append(f"{path} is missing")
            continue
        try:
            document = _read_json(path)
        except (OSError, ValueError) as exc:
            problems.append(f"{path} is not readable JSON: {exc}")
            continue
        if not isinstance(document, dict):
            problems.append(f"{path} is not a JSON object")
        elif name == "dataset.json":
            labels = document.get("labels")
            if not isinstance(labels, dict) or len(labels) != model.num_labels + 1:
                found = len(labels) if isinstance(labels, dict) else "no"
                problems.append(
                    f"{path} has {found} labels, expected {model.num_labels + 1} "
                    f"(background + the {model.num_labels} of dataset {model.dataset_id})"
                )
        elif model.configuration not in document.get("configurations", {}):
            problems.append(f"{path} has no configuration {model.configuration!r}")
    return problems


def find_model_folder(model: PartModel, weights_dir: Path | None = None, *, task: str | None = None) -> Path:
    """The nnU-Net results folder of ``model`` (``<weights>/DatasetNNN_Name/<Trainer>__<Plans>__<conf>``).

    Parameters
    ----------
    model
        The part model.
    weights_dir
        The weights folder; ``None``: :func:`resolve_weights_dir` of the defaults.
    task
        The task named in the message (default: the tasks that use ``model``).

    Returns
    -------
    Path
        The folder, with its ``dataset.json``, ``plans.json`` and checkpoint found usable.

    Raises
    ------
    MissingWeightsError
        The folder is absent or incomplete (reason ``missing_weights``); the message names the task, the
        folder, what is wrong and the command that gets the weights.
    """
    weights_dir = resolve_weights_dir() if weights_dir is None else weights_dir
    problems = model_problems(model, weights_dir)
    if not problems:
        return model.model_dir(weights_dir)
    tasks = [task] if task else _tasks_using(model) or [f"dataset {model.dataset_id}"]
    raise MissingWeightsError(
        f"weights for task {tasks[0]} are not installed: nnU-Net dataset {model.dataset_id} "
        f"({model.dataset_folder_name}) not usable in {weights_dir}: {'; '.join(problems)}. "
        f"Get them with {get_command(tasks[0], model.licensed)}."
    )


def _size_on_disk(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).lstat().st_size
            except OSError:
                continue
    return total


@dataclass(frozen=True)
class ModelStatus:
    dataset_id: int
    folder: Path
    installed: bool
    size_bytes: int
    problems: tuple[str, ...]


@dataclass(frozen=True)
class TaskStatus:
    """What is installed of one task."""

    task: str
    licensed: bool
    models: tuple[ModelStatus, ...]
    #: Mode (default / fast / fastest) -> whether every part model of that mode is installed.
    modes: Mapping[str, bool] = field(hash=False)

    @property
    def state(self) -> str:
        """``installed`` (every part model), ``partial`` (some) or ``missing`` (none)."""
        installed = [m.installed for m in self.models]
        if all(installed):
            return "installed"
        return "partial" if any(installed) else "missing"

    @property
    def size_bytes(self) -> int:
        return sum(m.size_bytes for m in self.models)

    def to_json(self) -> dict[str, object]:
        return {
            "task": self.task,
            "state": self.state,
            "licensed": self.licensed,
            "size_bytes": self.size_bytes,
            "modes": dict(self.modes),
            "models": [
                {
                    "dataset_id": m.dataset_id,
                    "folder": str(m.folder),
                    "installed": m.installed,
                    "size_bytes": m.size_bytes,
                    "problems": list(m.problems),
                }
                for m in self.models
            ],
        }


def task_status(task: Task, weights_dir: Path) -> TaskStatus:
    models: list[ModelStatus] = []
    for model in task.all_models:
        problems = model_problems(model, weights_dir)
        folder = weights_dir / model.dataset_folder_name
        size = _size_on_disk(folder) if folder.is_dir() else 0
        models.append(ModelStatus(model.dataset_id, folder, not problems, size, tuple(problems)))
    ok = {m.dataset_id for m in models if m.installed}
    modes = {
        mode: all(m.dataset_id in ok for m in chosen)
        for mode, chosen in (
            ("default", task.part_models),
            ("fast", task.fast_models),
            ("fastest", task.fastest_models),
        )
        if chosen
    }
    return TaskStatus(task.name, task.licensed, tuple(models), modes)


def weights_status(weights_dir: Path) -> list[TaskStatus]:
    """What is installed of every registered task, in registry order (``segnode models list``).

    Parameters
    ----------
    weights_dir
        The weights folder (it need not exist: every task is then ``missing``).

    Returns
    -------
    list of TaskStatus
        Per task: ``installed``, ``partial`` or ``missing``, the modes that can run, each part model's
        folder, size and problems. Nothing is raised for a broken folder: its problems are listed.
    """
    return [task_status(task, weights_dir) for task in registry.tasks().values()]
