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

The images are drawn as they are taken (:meth:`EncodedOverlay.images`), each into a buffer of its size that
the next image of that size reuses, and written before the next is drawn: a stack's series holds one
image's pixels at a time instead of all of them (140 MB for 120 images of 512 x 760 RGB), and a
Fortran-ordered stack is windowed 16 slices at a time rather than copied whole to 8 bits.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, cached_property
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage

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


@dataclass
class ImageBuffer:
    """An image that :func:`render` draws over, image after image of its shape."""

    image: npt.NDArray[np.uint8]
    #: The labels whose legend band its rows below the source pixels hold (None: not drawn yet).
    band: bytes | None = None


def render(
    gray: npt.NDArray[np.uint8],
    labels: npt.NDArray[Any],
    colours: npt.NDArray[np.uint8],
    legend: Mapping[int, tuple[str, tuple[int, int, int]]],
    edge: npt.NDArray[np.bool_] | None = None,
    bands: dict[bytes, npt.NDArray[np.uint8]] | None = None,
    buffers: dict[tuple[int, ...], ImageBuffer] | None = None,
) -> npt.NDArray[np.uint8]:
    """One overlay image (rows, columns, RGB): ``gray`` (rows, columns) with outlines and the legend band.
    ``legend``: label -> (name, RGB) of the structures that may be on it; ``edge``: the outline pixels
    when the caller has them (:func:`outline` of the whole stack at once); ``bands``: the legend bands of
    the images made so far, by the labels on them (filled here), where the caller keeps them;
    ``buffers``: the caller's images by shape, reused: the image is drawn over the one of its shape (made
    and kept there where missing; its legend band only where it holds another one) instead of new memory,
    and is valid until the next image of that shape is drawn."""
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
    shape = (rows + band.shape[0], width, 3)
    buffer = None if buffers is None else buffers.get(shape)
    if buffer is None:
        # fresh memory costs its page faults on first touch (as much as drawing the image): a caller that
        # draws image after image keeps a few buffers instead
        buffer = ImageBuffer(np.empty(shape, dtype=np.uint8))
        if buffers is not None:
            buffers[shape] = buffer
    image = buffer.image
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
    if buffer.band != key:  # neighbouring slices mostly have the same structures: the band stays
        image[rows:] = band
        buffer.band = key
    if where.size:
        # each outline pixel's 3 bytes as one item (numpy's fancy assignment of rows of 3 bytes goes
        # element by element); the flat indices moved to the image's width where it is wider
        index = where if width == columns else where + (where // columns) * (width - columns)
        pixels = top.reshape(-1, 3).view("V3").reshape(-1)
        pixels[index] = np.ascontiguousarray(colours, dtype=np.uint8).view("V3").reshape(-1)[on_edge]
    return image


@dataclass(frozen=True)
class _Drawing:
    """What the images of one overlay series are drawn from (see :func:`encode_overlay`)."""

    context: DerivedContext
    template: Dataset
    label_map: npt.NDArray[Any]
    layout: LabelLayout | None
    headers: Mapping[str, Dataset]
    windows: Sequence[Window]
    #: The stack windowed to 8 bits where it is not Fortran-ordered (those are windowed a chunk at a time)
    gray_stack: npt.NDArray[np.uint8] | None
    colours: npt.NDArray[np.uint8]
    legend: Mapping[int, tuple[str, tuple[int, int, int]]]
    #: What every image's Source Image Sequence item has: the Purpose of Reference code, one item.
    source: Dataset
    #: The file meta elements of every image but its SOP Instance UID.
    file_meta: FileMetaDataset

    def _chunk(self, k: int, buffer: list[npt.NDArray[np.uint8]]) -> tuple[npt.NDArray[Any], bool]:
        """Slices ``k`` to ``k + _CHUNK`` as (slices, rows, columns): windowed to 8 bits (True), or their
        modality values where the stack could not be windowed so (False: each slice windowed as it is
        drawn). voxels and labels are (columns, rows, slices): a slice of a C-ordered stack is scattered
        over it, so a few slices at a time are made contiguous in one pass over the memory; a
        Fortran-ordered stack (as ``load_series`` makes it) holds its slices so already, and is windowed
        a chunk at a time into ``buffer`` (made on the first chunk), not into a copy of the whole stack."""
        voxels = self.context.volume.voxels
        if self.gray_stack is not None:
            return slices_of(self.gray_stack, k, k + _CHUNK), True
        part = voxels[:, :, k : k + _CHUNK]
        if voxels.flags.f_contiguous and part.size:
            if not buffer:
                buffer.append(np.empty((*part.shape[:2], _CHUNK), dtype=np.uint8, order="F"))
            gray = windowed_stack(part, self.windows[k : k + _CHUNK], buffer[0][:, :, : part.shape[2]])
            if gray is not None:
                return slices_of(gray, 0, part.shape[2]), True
        return slices_of(voxels, k, k + _CHUNK), False

    def _image(self, k: int, ref: SliceRef, header: Dataset, window: Window) -> Dataset:
        """One image but for its pixels: the template's elements themselves (as ``update`` would leave them,
        without its per-element checks, which they passed when the template was built; the series' writer
        encodes them once) and the image's own."""
        ds = Dataset(dict(self.template.items()))
        ds.SOPInstanceUID = uid = self.context.uid(OutputKind.OVERLAY, f"instance-{k}")
        number = header.get("InstanceNumber")
        ds.InstanceNumber = int(number) if ref.frame_number is None and number not in (None, "") else k + 1
        source = Dataset(dict(self.source.items()))
        source.ReferencedSOPClassUID = ref.sop_class_uid
        source.ReferencedSOPInstanceUID = ref.sop_instance_uid
        if ref.frame_number is not None:
            source.ReferencedFrameNumber = ref.frame_number
        ds.SourceImageSequence = [source]
        description = _description(self.context, window)
        if description != self.template.get("DerivationDescription"):  # windows that differ by slice
            ds.DerivationDescription = description
        ds.file_meta = FileMetaDataset(dict(self.file_meta.items()))
        ds.file_meta.MediaStorageSOPInstanceUID = UID(uid)
        return ds

    def images(self) -> Iterator[Dataset]:
        """The images in slice order, each drawn when it is asked for into a buffer of its size that the
        next image of that size reuses: its Pixel Data is a view of that buffer (a ``memoryview``), taken
        off the dataset again when the next image is asked for (or the iteration ends)."""
        volume = self.context.volume
        bands: dict[bytes, npt.NDArray[np.uint8]] = {}
        buffers: dict[tuple[int, ...], ImageBuffer] = {}
        gray_buffer: list[npt.NDArray[np.uint8]] = []
        for k, ref in enumerate(volume.slice_refs):
            if k % _CHUNK == 0:
                chunk, windowed = self._chunk(k, gray_buffer)
                if self.layout is None:
                    planes = slices_of(self.label_map, k, k + _CHUNK)
                else:
                    planes = self.layout.ordered[k : k + _CHUNK]
                edges = outline(planes)  # the outlines of the chunk's slices in one pass
            header, window = self.headers[ref.sop_instance_uid], self.windows[k]
            gray = chunk[k % _CHUNK] if windowed else window.apply(chunk[k % _CHUNK])
            if str(header.get("PhotometricInterpretation", "")) == "MONOCHROME1":
                gray = 255 - gray
            pixels = render(
                gray, planes[k % _CHUNK], self.colours, self.legend, edges[k % _CHUNK], bands, buffers
            )
            ds = self._image(k, ref, header, window)
            ds.Rows = int(pixels.shape[0])
            if pixels.shape[1] != self.template.Columns:
                ds.Columns = int(pixels.shape[1])
            view = pixels.reshape(-1).data  # the buffer's bytes, in the order the file holds them
            ds.PixelData = view
            try:
                yield ds
            finally:
                if "PixelData" in ds and ds["PixelData"].value is view:
                    del ds.PixelData  # the buffer is drawn over next: nobody keeps stale pixels
        logger.info("drew overlay series for %s: %d images", self.context.where, len(volume.slice_refs))


@dataclass(frozen=True)
class EncodedOverlay:
    """The overlay series of one stack, one Secondary Capture image per source slice.

    The images are drawn as they are taken (:meth:`images`), so that a stack's series is written image by
    image with the pixels of one image in memory (a few reused buffers, one per image size: the legend's
    height varies) rather than all of them (120 images of 512 x 760 RGB: 140 MB);
    :attr:`datasets` holds them all, each with its own pixels, for callers that keep them."""

    series_instance_uid: str
    #: Writes the images as DICOM files, the elements they share encoded once (``writer.write(ds, fh)``).
    writer: SharedElementsWriter
    _drawing: _Drawing = field(repr=False)

    def images(self) -> Iterator[Dataset]:
        """The images, each drawn when it is asked for: its Pixel Data (a ``memoryview`` of a buffer that
        later images reuse) is valid until the next image is asked for, and is then taken off it; write
        or copy each image before taking the next."""
        return self._drawing.images()

    @cached_property
    def datasets(self) -> tuple[Dataset, ...]:
        """All images at once, each holding its own copy of its pixels (``bytes``)."""
        held = []
        for ds in self.images():
            ds.PixelData = bytes(ds.PixelData)
            held.append(ds)
        return tuple(held)


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


def _description(context: DerivedContext, window: Window) -> str:
    algorithm = context.algorithm
    return (
        f"{NOT_FOR_DIAGNOSIS}: outlines of the {algorithm.name} {algorithm.task} structures on the "
        f"source image; {window.describe()}"
    )


def encode_overlay(
    context: DerivedContext,
    label_map: npt.NDArray[np.integer[Any]],
    segments: Mapping[int, SegmentSpec],
    counted: Sequence[int] | None = None,
    layout: LabelLayout | None = None,
) -> EncodedOverlay:
    """The overlay series of a stack: one image per slice of ``context.volume``, drawn as they are taken
    (:meth:`EncodedOverlay.images`); ``counted``: the labels of ``label_map`` where the caller has them
    (see :func:`labels_present`); ``layout``: the label map in slice order, where the caller has made it
    for the stack's outputs (:func:`~dicom_node.outputs.label_layout.label_layout`). The input is checked
    (labels without a catalog entry, a layout of another map) and the stack windowed here, before any
    image is drawn."""
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
    headers = {str(h.SOPInstanceUID): h for h in volume.source_headers}
    series_uid = context.uid(OutputKind.OVERLAY, "series")
    template = _series_template(context, series_uid)
    template.Columns = max(volume.shape[0], MIN_WIDTH)  # as render makes them
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
    # what the images' own elements share, in the template where every image has it (encoded once)
    descriptions = {_description(context, window) for window in windows}
    if len(descriptions) == 1:
        template.DerivationDescription = descriptions.pop()
    source = Dataset()
    source.PurposeOfReferenceCodeSequence = [
        _code_item("121322", "DCM", "Source image for image processing operation")
    ]
    file_meta = FileMetaDataset()  # as set_file_meta makes it, each image with its own instance UID
    file_meta.MediaStorageSOPClassUID = UID(SecondaryCaptureImageStorage)
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    drawing = _Drawing(
        context,
        template,
        np.asarray(label_map),
        layout,
        headers,
        windows,
        None if volume.voxels.flags.f_contiguous else windowed_stack(volume.voxels, windows),
        colours,
        legend,
        source,
        file_meta,
    )
    return EncodedOverlay(series_uid, SharedElementsWriter(template), drawing)
