"""The inference engine: warm nnU-Net predictors, TotalSegmentator 2.18's MRI pipeline on arrays.

One :class:`Engine` per process. It builds one nnU-Net predictor per part model the first time the model is
needed and keeps it; every later series reuses it. A volume goes in as its voxel array ``(i, j, k)`` and LPS
affine (a :class:`conversion.volume.Volume`'s ``voxels`` and ``affine``); a label map on the same grid comes
out. No NIfTI files, no temporary folders. The steps (see :mod:`inference.preprocess`) are those of
TotalSegmentator 2.18 (``nnunet.py: nnUNet_predict_image``) for the MRI tasks:

closest-canonical reorientation -> order-1 zoom to the model spacing, int32 -> nnU-Net sliding window
(tile step 0.8 for ``total_mr``, 0.5 for the other tasks, Gaussian, no mirroring, fp16 autocast on CUDA;
logits held one slab of tiles at a time, :mod:`inference.sliding`) -> argmax -> part labels mapped to task
labels, later parts written over earlier ones where non-zero ->
nearest-neighbour zoom back -> orientation undone.

torch and nnunetv2 are imported lazily (inside methods), so importing this module is cheap.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from config.inference import InferenceConfig
from inference import preprocess
from inference.checks import check_image, check_roi, check_size
from inference.devices import resolve_device
from inference.errors import (
    DeviceUnavailableError,
    InferenceError,
    InputTooLargeError,
    InputTooSmallError,
    InvalidRoiError,
    OutOfMemoryError,
)
from inference.host_memory import release_freed_memory
from inference.registry import (
    Mode,
    PartModel,
    Task,
    get_part_model,
    get_task,
)
from inference.results import ModelInfo, SegmentationResult
from inference.weights import MissingWeightsError, find_model_folder, resolve_weights_dir

if TYPE_CHECKING:  # pragma: no cover - typing only (torch and nnunetv2 are imported lazily)
    import torch

    from inference.nnunet_models import Predictor

__all__ = [
    "DeviceUnavailableError",
    "Engine",
    "InferenceError",
    "InputTooLargeError",
    "InputTooSmallError",
    "InvalidRoiError",
    "MissingWeightsError",
    "ModelInfo",
    "OutOfMemoryError",
    "SegmentationResult",
    "resolve_device",
]

logger = logging.getLogger(__name__)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: TotalSegmentator splits an image into three overlapping z parts above this many voxels (multi-model runs).
TRIPLE_SPLIT_VOXELS = 512 * 512 * 900
#: Tasks whose tile step TotalSegmentator sets to 0.8 (all others: 0.5).
STEP_08_TASKS = frozenset({"total_mr"})
#: The model TotalSegmentator runs on the whole image to find the crop for ``roi_subset`` on MRI.
ROI_CROP_MODEL = 852


class _Timer:
    def __init__(self, timings: dict[str, float], name: str) -> None:
        self.timings = timings
        self.name = name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings[self.name] = self.timings.get(self.name, 0.0) + time.perf_counter() - self.start


def configure_cpu_threads(threads: int | None, interop_threads: int | None) -> None:
    """Set torch's intra-op threads (``None``: all cores) and, once per process, its inter-op threads."""
    import torch

    torch.set_num_threads(threads or os.cpu_count() or 1)
    if interop_threads is not None and torch.get_num_interop_threads() != interop_threads:
        try:
            torch.set_num_interop_threads(interop_threads)
        except RuntimeError as exc:  # torch allows it only before the first parallel work of the process
            logger.warning("inter-op threads stay %d: %s", torch.get_num_interop_threads(), exc)
    intra, inter = torch.get_num_threads(), torch.get_num_interop_threads()
    logger.info("torch CPU threads: %d intra-op, %d inter-op", intra, inter)


def _release(timings: dict[str, float]) -> None:
    """After a series: with ``inference.cpu_memory: reuse``, the heap's free pages back to the system."""
    with _Timer(timings, "release_memory"):
        release_freed_memory()


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class Engine:
    """Warm nnU-Net predictors and TotalSegmentator's MRI pipeline; one per process, thread-safe.

    Constructing an engine is cheap: it resolves the weights folder and nothing else. The device is
    resolved, and torch imported, on first use (:attr:`device`); each part model's predictor is built the
    first time a task needs it (or by :meth:`warm_up`) and kept for the life of the engine.

    Parameters
    ----------
    config
        The ``inference`` section of the configuration (device, CPU threads, weights folder, the voxel
        limit, the out-of-memory fallbacks); ``None``: the defaults.

    Raises
    ------
    config.errors.SegNodeError
        Nothing is raised at construction; a missing weights folder or an unavailable device is reported
        by the first :meth:`segment` (or :meth:`warm_up`) that needs it.
    """

    def __init__(self, config: InferenceConfig | None = None) -> None:
        self.config = config or InferenceConfig()
        self.weights_dir = resolve_weights_dir(self.config)
        self._device: torch.device | None = None
        self._predictors: dict[tuple[int, str, float], Predictor] = {}
        self._model_info: dict[int, ModelInfo] = {}
        self._checked: set[int] = set()
        self._lock = threading.RLock()

    # -- devices and predictors -------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """The ``torch.device`` inference runs on (resolved on first use)."""
        if self._device is None:
            device = resolve_device(self.config.device)
            if device.type == "cpu":
                configure_cpu_threads(self.config.cpu_threads, self.config.cpu_interop_threads)
            logger.info("inference device: %s", device)
            self._device = device
        return self._device

    def check_weights(self, task: Task, models: Iterable[PartModel]) -> None:
        """Raise :class:`MissingWeightsError` (task, folder, remedy) for the first model not installed."""
        for model in models:
            if model.dataset_id not in self._checked:
                find_model_folder(model, self.weights_dir, task=task.name)
                self._checked.add(model.dataset_id)

    def predictor(self, model: PartModel, device: torch.device, step_size: float) -> Predictor:
        """The warm predictor of ``model`` on ``device`` (built on first use)."""
        from inference.compiled import compile_network, wants_compile
        from inference.nnunet_models import build_predictor

        key = (model.dataset_id, str(device), step_size)
        with self._lock:
            cached = self._predictors.get(key)
            if cached is None:
                start = time.perf_counter()
                cached = build_predictor(model.model_dir(self.weights_dir), model.fold, device, step_size)
                logger.info(
                    "loaded model %d on %s in %.1fs", model.dataset_id, device, time.perf_counter() - start
                )
                if wants_compile(cached, device, self.config.cpu_compile):
                    compile_network(cached, device, self.config.cpu_precision)
                self._predictors[key] = cached
            return cached

    def model_info(self, model: PartModel) -> ModelInfo:
        with self._lock:
            info = self._model_info.get(model.dataset_id)
            if info is None:
                digest = hashlib.sha256()
                with model.checkpoint_path(self.weights_dir).open("rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(block)
                info = ModelInfo(
                    dataset_id=model.dataset_id,
                    dataset_folder_name=model.dataset_folder_name,
                    trainer=model.trainer,
                    plans=model.plans,
                    configuration=model.configuration,
                    fold=model.fold,
                    spacing_mm=model.spacing_mm,
                    checkpoint_sha256=digest.hexdigest(),
                    release=model.release,
                )
                self._model_info[model.dataset_id] = info
            return info

    def warm_up(self, task: str = "total_mr", fast: bool = False, fastest: bool = False) -> None:
        """Build the predictors of a task now (e.g. when the node starts) rather than on the first series."""
        spec = get_task(task)
        models = spec.models(spec.mode(fast, fastest))
        self.check_weights(spec, models)
        for model in models:
            self.predictor(model, self.device, self._step_size(spec))

    def loaded_models(self) -> list[str]:
        """The predictors built so far, as ``<dataset id>@<device>`` (the health check shows them)."""
        with self._lock:
            return [f"{dataset_id}@{device}" for dataset_id, device, _ in self._predictors]

    @staticmethod
    def _step_size(task: Task) -> float:
        return 0.8 if task.name in STEP_08_TASKS else 0.5

    # -- the pipeline -------------------------------------------------------------------------------------

    def segment(
        self,
        voxels: np.ndarray,
        affine_lps: npt.NDArray[np.float64],
        task: str = "total_mr",
        fast: bool = False,
        fastest: bool = False,
        roi_subset: Sequence[str] | None = None,
    ) -> SegmentationResult:
        """Segment one stack with a TotalSegmentator MRI task; the labels come back on the grid of ``voxels``.

        Parameters
        ----------
        voxels
            The image, a 3D array indexed ``(i, j, k)`` of any numeric dtype (:attr:`Volume.voxels`).
        affine_lps
            The 4x4 matrix from voxel index to patient coordinates, LPS in mm (:attr:`Volume.affine`).
        task
            A task of :mod:`inference.registry` (``total_mr``, ``tissue_types_mr``, ...).
        fast, fastest
            TotalSegmentator's ``--fast`` (3 mm model) and ``--fastest`` (6 mm) for tasks that have them.
        roi_subset
            Structure names to keep (``total_mr`` only): the 3 mm model finds their bounding box, then only
            the part models holding them run on that crop, as TotalSegmentator's ``--roi_subset`` does.

        Returns
        -------
        SegmentationResult
            ``labels`` (uint8, the shape of ``voxels``), the class map, the models that ran with their
            checkpoint digests, the device, per-stage timings and notable events (out-of-memory retries).

        Raises
        ------
        inference.registry.UnknownTaskError, inference.registry.UnsupportedModeError
            ``task`` is not registered; ``fast`` and ``fastest`` together or a mode the task lacks.
        InputTooSmallError
            ``voxels`` is not 3D, or an axis has fewer than 2 voxels or no extent at the model spacing.
        InputTooLargeError
            More voxels than ``inference.max_voxels`` (as given or at the model spacing).
        InferenceError
            ``affine_lps`` is not a finite, invertible 4x4 matrix (reason ``invalid_geometry``).
        InvalidRoiError
            ``roi_subset`` is empty, names unknown structures or is given for another task than ``total_mr``.
        MissingWeightsError
            Weights not installed; the message names the task, the folder and the command that gets them.
        DeviceUnavailableError
            ``inference.device`` names a device this machine does not have.
        OutOfMemoryError
            The image does not fit in memory on any device the fallbacks allow.
        """
        start = time.perf_counter()
        spec = get_task(task)
        mode = spec.mode(fast, fastest)
        models = spec.models(mode)
        data, ras, roi = self._checked_input(spec, models, voxels, affine_lps, roi_subset)
        timings: dict[str, float] = {}
        events: list[str] = []
        device = self.device
        try:
            if roi is None:
                labels = self._run(spec, models, data, ras, timings, events, device, prefix="")
            else:
                labels, models = self._run_roi(spec, mode, models, roi, data, ras, timings, events, device)
        finally:
            _release(timings)
        timings["total"] = time.perf_counter() - start
        class_map = dict(spec.class_map)
        if roi is not None:
            class_map = {k: v for k, v in class_map.items() if v in roi}
        return SegmentationResult(
            labels=labels,
            class_map=class_map,
            task=spec.name,
            mode=mode,
            models=tuple(self.model_info(m) for m in models),
            device=str(device),
            timings=timings,
            roi_subset=roi,
            events=events,
        )

    def _checked_input(
        self,
        task: Task,
        models: Sequence[PartModel],
        voxels: np.ndarray,
        affine_lps: npt.NDArray[np.float64],
        roi_subset: Sequence[str] | None,
    ) -> tuple[np.ndarray, npt.NDArray[np.float64], tuple[str, ...] | None]:
        """(image, RAS affine, ROI) once the input, the ROI, the weights and the size are found usable."""
        data = np.asarray(voxels)
        affine_lps = np.asarray(affine_lps, dtype=np.float64)
        check_image(data, affine_lps)
        roi = check_roi(task, roi_subset)
        needed = list(models)
        if roi is not None:
            needed = [get_part_model(ROI_CROP_MODEL), *needed]
        self.check_weights(task, needed)
        affine_ras = LPS_TO_RAS @ affine_lps
        check_size(data.shape, affine_ras, models[0].spacing_mm, self.config.max_voxels)
        return data, affine_ras, roi

    def _run(
        self,
        task: Task,
        models: Sequence[PartModel],
        data: np.ndarray,
        affine_ras: npt.NDArray[np.float64],
        timings: dict[str, float],
        events: list[str],
        device: torch.device,
        prefix: str,
    ) -> npt.NDArray[np.uint8]:
        """TotalSegmentator's ``nnUNet_predict_image`` without crop: canonical, zoom, predict, merge, back."""
        spacing = models[0].spacing_mm
        on_gpu = device.type == "cuda"
        with _Timer(timings, prefix + "reorient"):
            canonical = preprocess.to_canonical(np.asarray(data, dtype=np.float64), affine_ras)
        zooms = preprocess.header_zooms(canonical.affine)
        zoom = preprocess.zoom_factors(zooms, spacing)
        target, source_ornt = canonical.data.shape, canonical.source_ornt
        with _Timer(timings, prefix + "resample"):
            if zoom is None:
                image: np.ndarray = canonical.data
                model_zooms = zooms
            else:
                shape = preprocess.zoomed_shape(canonical.data.shape, zoom)
                if on_gpu:
                    from inference.gpu_resample import zoom_linear

                    image = zoom_linear(canonical.data, shape, device)
                else:
                    image = preprocess.resample_image_cpu(canonical.data, zoom)
                affine = canonical.affine.copy()
                affine[:3, :3] = affine[:3, :3] / zoom[None, :]
                model_zooms = preprocess.header_zooms(affine)
        del canonical  # the float64 copy on the source grid (where resampled): only its shape is needed now
        multimodel = len(models) > 1
        split = multimodel and int(np.prod(image.shape)) > TRIPLE_SPLIT_VOXELS and image.shape[2] > 200
        parts = preprocess.triple_split_bounds(image.shape[2]) if split else ((0, image.shape[2]),)
        label_of = task.label_of
        combined = np.zeros(image.shape, dtype=np.uint8)
        step = self._step_size(task)
        for model in models:
            lut = np.zeros(max(model.class_map) + 1, dtype=np.uint8)
            for value, name in model.class_map.items():
                lut[value] = label_of.get(name, 0)  # auxiliary labels (not in the task) -> 0
            with _Timer(timings, f"{prefix}predict_{model.dataset_id}"):
                pieces = [
                    self._predict(model, image[:, :, lo:hi], model_zooms, device, step, events)
                    for lo, hi in parts
                ]
                seg = preprocess.triple_split_merge(pieces, image.shape[2]) if split else pieces[0]
            with _Timer(timings, prefix + "merge"):
                if seg.size and int(seg.max()) >= len(lut):
                    lut = np.pad(lut, (0, int(seg.max()) + 1 - len(lut)))
                mapped = lut[seg]
                np.copyto(combined, mapped, where=mapped != 0)
        with _Timer(timings, prefix + "resample_back"):
            if zoom is not None:
                if on_gpu:
                    from inference.gpu_resample import zoom_nearest

                    combined = zoom_nearest(combined, (target[0], target[1], target[2]), device)
                else:
                    combined = preprocess.resample_labels_cpu(combined, (target[0], target[1], target[2]))
            labels = preprocess.from_canonical(combined, source_ornt)
        return np.ascontiguousarray(labels)

    def _run_roi(
        self,
        task: Task,
        mode: Mode,
        models: Sequence[PartModel],
        roi: tuple[str, ...],
        data: np.ndarray,
        affine_ras: npt.NDArray[np.float64],
        timings: dict[str, float],
        events: list[str],
        device: torch.device,
    ) -> tuple[npt.NDArray[np.uint8], tuple[PartModel, ...]]:
        """``roi_subset`` as TotalSegmentator does it for MRI: 3 mm model 852 finds the crop, then only the
        part models holding the structures run on the crop (int32 cast, 20 mm margin)."""
        crop_model = get_part_model(ROI_CROP_MODEL)
        organ = self._run(task, [crop_model], data, affine_ras, timings, events, device, prefix="roi_")
        label_of = task.label_of
        roi_ids = [label_of[name] for name in roi]
        mask = np.isin(organ, roi_ids)
        bbox = preprocess.roi_bbox(mask, preprocess.header_zooms(affine_ras))
        if bbox is None:
            events.append(f"roi_subset {', '.join(roi)}: none of the structures found; empty result")
            return np.zeros(data.shape, dtype=np.uint8), (crop_model,)
        if len(models) > 1:
            models = [m for m in models if any(name in roi for name in m.class_map.values())]
        sl = tuple(slice(lo, hi) for lo, hi in bbox)
        cropped = np.asarray(data, dtype=np.float64)[sl].astype(np.int32)
        affine_crop = preprocess.crop_affine(affine_ras, (bbox[0][0], bbox[1][0], bbox[2][0]))
        part = self._run(task, models, cropped, affine_crop, timings, events, device, prefix="")
        labels = np.zeros(data.shape, dtype=np.uint8)
        labels[sl] = part
        labels *= np.isin(labels, roi_ids)
        return labels, (crop_model, *models)

    def _predict(
        self,
        model: PartModel,
        image: np.ndarray,
        zooms: npt.NDArray[np.float32],
        device: torch.device,
        step: float,
        events: list[str],
    ) -> npt.NDArray[np.uint8]:
        """One part model on one image, with the out-of-memory fallbacks on a GPU."""
        import torch

        from inference.sliding import predict_labels_bounded

        attempts: list[tuple[torch.device, bool]] = [(device, device.type == "cuda")]
        if device.type == "cuda" and self.config.gpu_oom_fallback:
            attempts += [(device, False), (torch.device("cpu"), False)]
        last: BaseException | None = None
        for number, (target, on_device) in enumerate(attempts):
            predictor = self.predictor(model, target, step)
            predictor.perform_everything_on_device = on_device
            try:
                return predict_labels_bounded(predictor, image, zooms, self.config.cpu_precision)
            except Exception as exc:  # only out-of-memory is retried, the rest re-raised
                if not _is_oom(exc):
                    raise
                last = exc
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                if number + 1 < len(attempts):
                    nxt, nxt_on_device = attempts[number + 1]
                    what = (
                        "logits on the CPU" if nxt.type == "cuda" and not nxt_on_device else f"device {nxt}"
                    )
                    message = (
                        f"out of memory running model {model.dataset_id} on {target} for an image of shape "
                        f"{image.shape}; retrying with {what}"
                    )
                    logger.warning(message)
                    events.append(message)
        raise OutOfMemoryError(
            f"out of memory running model {model.dataset_id} for an image of shape {image.shape} "
            f"on {device} (fallbacks {'tried' if len(attempts) > 1 else 'disabled'}): {last}"
        )
