"""Overlay images for viewers without DICOM-SEG support: every source slice with the outlines of the
structures burned in, in their catalog colours, a legend and the words "AI-generated, not for diagnostic
use" below the image.

The object is **Secondary Capture Image Storage** (RGB, one instance per source slice), not a derived MR
image: the MR Image IOD allows only MONOCHROME pixels (no colours); Enhanced MR Color Image Storage allows
RGB but few of the viewers that lack SEG support display it; single-frame RGB Secondary Capture is displayed
by every PACS viewer (see docs/outputs.md).

Each image is the source slice, windowed to 8 bits (the source's own Window Center/Width and VOI LUT
Function, else the 0.5-99.5 percentile range of the stack, written in Derivation Description), with a band
of legend rows added below it: the source pixels keep their rows and columns, and every pixel of the image
area that is not on an outline equals the windowed source pixel (R = G = B). An outline pixel is a labelled
pixel with a 4-neighbour of another label (or the image edge). The overlay series keeps the source's Series
Number and Instance Numbers and its description starts with the source's, so that viewers sort it beside
its source and its images in the source's order; every image references its source image (Source Image
Sequence) and says it is AI-generated in Image Comments, Derivation Description and Burned In Annotation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage

from conversion.volume import SliceRef
from dicom_node.outputs.derived import (
    NOT_FOR_DIAGNOSIS,
    DerivedContext,
    OutputKind,
    labels_present,
    lo,
    opencv,
    set_creation_time,
    set_equipment,
    set_file_meta,
    slices_of,
)
from dicom_node.outputs.label_layout import LabelLayout
from dicom_node.outputs.seg_segments import SegmentSpec
from dicom_node.outputs.shared_elements import SharedElementsWriter
from dicom_node.outputs.windowing import Window, source_window, stack_window, windowed_stack

logger = logging.getLogger(__name__)

#: Smallest width of an overlay image (columns added right of narrow images make room for the legend).
MIN_WIDTH = 384
#: Width of one legend entry (colour swatch and name), pixels.
LEGEND_ENTRY_WIDTH = 190
#: Source slices windowed per pass over the voxels (see :func:`encode_overlay`).
_CHUNK = 16


def outline(labels: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """Labelled pixels with a 4-neighbour of another label or on the image edge, in the last two axes of
    ``labels`` (one image, or a stack of images along the first axis)."""
    differs = np.zeros(labels.shape, dtype=np.bool_)
    differs[..., [0, -1], :] = True
    differs[..., :, [0, -1]] = True
    step = labels[..., 1:, :] != labels[..., :-1, :]
    differs[..., 1:, :] |= step
    differs[..., :-1, :] |= step
    step = labels[..., :, 1:] != labels[..., :, :-1]
    differs[..., :, 1:] |= step
    differs[..., :, :-1] |= step
    edge: npt.NDArray[np.bool_] = differs & (labels != 0)
    return edge


@cache
def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


@cache
def legend_band(width: int, entries: tuple[tuple[str, tuple[int, int, int]], ...]) -> npt.NDArray[np.uint8]:
    """The rows below the image: the warning, then one swatch and name per structure on the slice."""
    from PIL import Image, ImageDraw

    size = max(11, min(16, width // 32))
    line = size + 6
    per_row = max(1, width // LEGEND_ENTRY_WIDTH)
    rows = 1 + (len(entries) + per_row - 1) // per_row if entries else 2
    band = Image.new("RGB", (width, rows * line + 6), (0, 0, 0))
    draw = ImageDraw.Draw(band)
    font = _font(size)
    draw.text((4, 3), NOT_FOR_DIAGNOSIS, fill=(255, 255, 0), font=font)
    if not entries:
        draw.text((4, 3 + line), "no structure on this image", fill=(200, 200, 200), font=font)
    for n, (name, rgb) in enumerate(entries):
        x, y = 4 + (n % per_row) * (width // per_row), 3 + (1 + n // per_row) * line
        draw.rectangle((x, y + 2, x + size - 2, y + size), fill=rgb)
        draw.text((x + size + 4, y), name[:28], fill=(255, 255, 255), font=font)
    return np.asarray(band, dtype=np.uint8)


def render(
    gray: npt.NDArray[np.uint8],
    labels: npt.NDArray[Any],
    colours: npt.NDArray[np.uint8],
    legend: Mapping[int, tuple[str, tuple[int, int, int]]],
    edge: npt.NDArray[np.bool_] | None = None,
    bands: dict[bytes, npt.NDArray[np.uint8]] | None = None,
) -> npt.NDArray[np.uint8]:
    """One overlay image (rows, columns, RGB): ``gray`` (rows, columns) with outlines and the legend band.
    ``legend``: label -> (name, RGB) of the structures that may be on it; ``edge``: the outline pixels
    when the caller has them (:func:`outline` of the whole stack at once); ``bands``: the legend bands of
    the images made so far, by the labels on them (filled here), where the caller keeps them."""
    rows, columns = gray.shape
    width = max(columns, MIN_WIDTH)
    edge = outline(labels) if edge is None else edge
    # every structure on the image has outline pixels (its last row at least): they name the present ones;
    # the outline pixels are taken by their flat indices (row by row), found once
    where = np.flatnonzero(edge)
    on_edge = np.ravel(labels)[where]
    present = np.flatnonzero(np.bincount(on_edge, minlength=1))
    key = present.tobytes()
    band = None if bands is None else bands.get(key)
    if band is None:
        band = legend_band(width, tuple(legend[int(v)] for v in present if v))
        if bands is not None:
            bands[key] = band
    image = np.empty((rows + band.shape[0], width, 3), dtype=np.uint8)
    top = image[:rows]
    cv2 = opencv()

    # R = G = B = gray (OpenCV's conversion, written in place where the image has the source's width:
    # numpy's broadcast copy runs an inner loop of 3 bytes)
    source = np.ascontiguousarray(gray, dtype=np.uint8)
    if width == columns:
        filled = cv2.cvtColor(source, cv2.COLOR_GRAY2RGB, dst=top)
        if not np.shares_memory(filled, top):
            top[...] = filled
    else:
        top[:, :columns] = cv2.cvtColor(source, cv2.COLOR_GRAY2RGB)
        top[:, columns:] = 0
    image[rows:] = band
    if where.size:
        if width == columns:
            top.reshape(-1, 3)[where] = colours[on_edge]
        else:
            top[where // columns, where % columns] = colours[on_edge]
    return image


@dataclass(frozen=True)
class EncodedOverlay:
    """The overlay series of one stack, one Secondary Capture image per source slice."""

    datasets: tuple[Dataset, ...]
    series_instance_uid: str
    #: Writes the images as DICOM files, the elements they share encoded once (``writer.write(ds, fh)``).
    writer: SharedElementsWriter


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def patient_orientation(affine: npt.NDArray[np.float64]) -> list[str]:
    """Patient Orientation (row, column direction) letters from the Volume affine (LPS)."""
    letters = (("L", "R"), ("P", "A"), ("H", "F"))

    def word(vector: npt.NDArray[np.float64]) -> str:
        unit = vector / np.linalg.norm(vector)
        order = np.argsort(-np.abs(unit))
        keep = [int(a) for a in order if abs(unit[a]) >= 0.25 * abs(unit[order[0]])]
        return "".join(letters[a][0 if unit[a] > 0 else 1] for a in keep)

    return [word(affine[:3, 0]), word(affine[:3, 1])]


def _series_template(context: DerivedContext, series_uid: str) -> Dataset:
    """What every image of the overlay series shares."""
    volume, first = context.volume, context.volume.first_header
    ds = context.patient_and_study("secondary-capture-image")
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.Modality = volume.modality or "OT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = context.series_number(0)
    source = lo(str(first.get("SeriesDescription", "") or ""))
    ds.SeriesDescription = lo(f"{source} AI outlines".strip())
    laterality = str(first.get("Laterality", "") or "")
    ds.Laterality = laterality if laterality in ("R", "L") else ""  # Type 2C: empty when unknown
    ds.ConversionType = "WSD"
    set_equipment(ds, context.options)
    set_creation_time(ds)
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.PatientOrientation = patient_orientation(volume.affine)
    ds.BurnedInAnnotation = "YES"
    ds.ImageComments = NOT_FOR_DIAGNOSIS
    ds.LossyImageCompression = "00"
    ds.DerivationCodeSequence = [_code_item("113076", "DCM", "Segmentation")]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    return ds


def _image(
    template: Dataset,
    context: DerivedContext,
    k: int,
    ref: SliceRef,
    header: Dataset,
    window: Window,
    purpose: Dataset,
) -> Dataset:
    """One image's own elements; ``purpose``: the Purpose of Reference code item of the source reference,
    one item for the whole series (never changed)."""
    # the template's elements themselves (as ``update`` would leave them, without its per-element checks,
    # which the template's elements passed when it was built): SharedElementsWriter encodes them once
    ds = Dataset(dict(template.items()))
    ds.SOPInstanceUID = context.uid(OutputKind.OVERLAY, f"instance-{k}")
    number = header.get("InstanceNumber")
    ds.InstanceNumber = int(number) if ref.frame_number is None and number not in (None, "") else k + 1
    source = Dataset()
    source.ReferencedSOPClassUID = ref.sop_class_uid
    source.ReferencedSOPInstanceUID = ref.sop_instance_uid
    if ref.frame_number is not None:
        source.ReferencedFrameNumber = ref.frame_number
    source.PurposeOfReferenceCodeSequence = [purpose]
    ds.SourceImageSequence = [source]
    algorithm = context.algorithm
    ds.DerivationDescription = (
        f"{NOT_FOR_DIAGNOSIS}: outlines of the {algorithm.name} {algorithm.task} structures on the "
        f"source image; {window.describe()}"
    )
    set_file_meta(ds, SecondaryCaptureImageStorage, ds.SOPInstanceUID)
    return ds


def encode_overlay(
    context: DerivedContext,
    label_map: npt.NDArray[np.integer[Any]],
    segments: Mapping[int, SegmentSpec],
    counted: Sequence[int] | None = None,
    layout: LabelLayout | None = None,
) -> EncodedOverlay:
    """The overlay series of a stack: one image per slice of ``context.volume``; ``counted``: the labels of
    ``label_map`` where the caller has them (see :func:`labels_present`); ``layout``: the label map in slice
    order, where the caller has made it for the stack's outputs
    (:func:`~dicom_node.outputs.label_layout.label_layout`)."""
    volume = context.volume
    present = labels_present(context, label_map, segments, counted)
    if layout is not None:
        layout.check(label_map, context.where)
    colours = np.zeros((max(present, default=0) + 1, 3), dtype=np.uint8)
    legend: dict[int, tuple[str, tuple[int, int, int]]] = {}
    for label in present:
        colours[label] = segments[label].rgb
        red, green, blue = (int(c) for c in segments[label].rgb)
        legend[label] = (segments[label].name, (red, green, blue))
    bands: dict[bytes, npt.NDArray[np.uint8]] = {}
    headers = {str(h.SOPInstanceUID): h for h in volume.source_headers}
    series_uid = context.uid(OutputKind.OVERLAY, "series")
    template = _series_template(context, series_uid)
    # the stack's window (a percentile pass over the voxels) only for sources without a window of their own
    fallback: Window | None = None
    windows = []
    for ref in volume.slice_refs:
        window = source_window(headers[ref.sop_instance_uid])
        if window is None:
            if fallback is None:
                fallback = stack_window(volume.voxels)
            window = fallback
        windows.append(window)
    gray_stack = windowed_stack(volume.voxels, windows)
    purpose = _code_item("121322", "DCM", "Source image for image processing operation")
    images = []
    for k, ref in enumerate(volume.slice_refs):
        if k % _CHUNK == 0:
            # voxels and labels are (columns, rows, slices): a slice is scattered over the whole stack, so
            # a few slices at a time are made contiguous (rows, columns) in one pass over the memory, and
            # their outlines drawn in one pass
            if gray_stack is None:
                chunk = slices_of(volume.voxels, k, k + _CHUNK)
            else:
                chunk = slices_of(gray_stack, k, k + _CHUNK)
            if layout is None:
                planes = slices_of(np.asarray(label_map), k, k + _CHUNK)
            else:
                planes = layout.ordered[k : k + _CHUNK]
            edges = outline(planes)
        header, window = headers[ref.sop_instance_uid], windows[k]
        gray = window.apply(chunk[k % _CHUNK]) if gray_stack is None else chunk[k % _CHUNK]
        if str(header.get("PhotometricInterpretation", "")) == "MONOCHROME1":
            gray = 255 - gray
        pixels = render(gray, planes[k % _CHUNK], colours, legend, edges[k % _CHUNK], bands)
        ds = _image(template, context, k, ref, header, window, purpose)
        ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        images.append(ds)
    logger.info("encoded overlay series for %s: %d images", context.where, len(images))
    return EncodedOverlay(tuple(images), series_uid, SharedElementsWriter(template))
