"""The overlay series (dicom_node.outputs.overlay): valid Secondary Capture images for dciodvfy; every pixel
of the image area that is not on a structure's outline equals the source pixel windowed with the source's
own window by pydicom (read here from the source files, not from the Volume); outlines in the catalog
colours; "AI-generated, not for diagnostic use" in the header and, read back by OCR (tesseract), in the
pixels; references to the source images and an order beside the source series."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from skimage.segmentation import find_boundaries

from conversion.volume import Volume
from dicom_node.outputs.derived import DerivedContext, DerivedEncodingError
from dicom_node.outputs.overlay import EncodedOverlay, ImageBuffer, encode_overlay, render, slices_of
from dicom_node.outputs.seg import AlgorithmInfo, SegOptions, segments_from_catalog
from dicom_node.outputs.validation import validate_with_dciodvfy
from dicom_node.outputs.windowing import Window, windowed_stack
from tests.dicom_node.seg_support import synthetic_label_map, volumes_of
from tests.support.paths import PD_TRA, T2_SAG

ALGORITHM = AlgorithmInfo("TotalSegmentator", "total_mr", "2.0")
SEGMENTS = segments_from_catalog("total_mr")
LABELS = [1, 2, 3, 5, 17]


def encode(volume: Volume, label_map: npt.NDArray[Any]) -> EncodedOverlay:
    return encode_overlay(DerivedContext(volume, ALGORITHM, SegOptions()), label_map, SEGMENTS)


@pytest.fixture(scope="module", params=[PD_TRA, T2_SAG], ids=["axial-128", "sagittal-320"])
def case(request: pytest.FixtureRequest) -> tuple[Path, Volume, npt.NDArray[Any], EncodedOverlay]:
    folder: Path = request.param
    volume = volumes_of(folder)[0]
    label_map = synthetic_label_map(volume.shape, LABELS)
    return folder, volume, label_map, encode(volume, label_map)


def sources_by_uid(folder: Path) -> dict[str, Dataset]:
    return {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in folder.glob("*.dcm"))}


def windowed(source: Dataset) -> npt.NDArray[np.uint8]:
    """The source pixels through its Modality LUT and first VOI window, to 0..255 (pydicom)."""
    modality = apply_modality_lut(source.pixel_array, source)
    display = Dataset()
    for keyword in ("WindowCenter", "WindowWidth", "VOILUTFunction"):
        if keyword in source:
            display[keyword] = source[keyword]
    display.PhotometricInterpretation, display.BitsStored, display.PixelRepresentation = "MONOCHROME2", 8, 0
    out: npt.NDArray[np.uint8] = np.rint(apply_voi_lut(modality.astype(np.float64), display)).astype(np.uint8)
    return out


def expected_outline(labels: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """Pixels of a structure next to another label (scikit-image) or on the image edge."""
    inner: npt.NDArray[np.bool_] = find_boundaries(labels, connectivity=1, mode="inner") & (labels != 0)
    edge = np.zeros_like(inner)
    edge[0, :] = edge[-1, :] = True
    edge[:, 0] = edge[:, -1] = True
    out: npt.NDArray[np.bool_] = inner | (edge & (labels != 0))
    return out


def test_every_image_is_valid(tmp_path: Path, case: tuple[Path, Volume, Any, EncodedOverlay]) -> None:
    _, volume, _, overlay = case
    assert len(overlay.datasets) == volume.shape[2]
    for k, ds in enumerate(overlay.datasets):
        path = tmp_path / f"{k}.dcm"
        with path.open("wb") as fh:
            overlay.writer.write(ds, fh)  # as the node writes them
        validate_with_dciodvfy(path)  # raises on any Error line
        assert pydicom.dcmread(path).SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"


def test_the_series_writer_writes_what_pydicom_writes(case: tuple[Path, Volume, Any, EncodedOverlay]) -> None:
    overlay = case[3]
    assert overlay.writer.fits(overlay.datasets[0])
    for k, ds in enumerate(overlay.datasets):
        expected, written = io.BytesIO(), io.BytesIO()
        ds.save_as(expected, enforce_file_format=True)
        overlay.writer.write(ds, written)
        assert written.getvalue() == expected.getvalue(), f"image {k}"


def test_pixels_off_the_outlines_are_the_windowed_source(
    case: tuple[Path, Volume, Any, EncodedOverlay],
) -> None:
    folder, volume, label_map, overlay = case
    sources = sources_by_uid(folder)
    checked = 0
    for k, ds in enumerate(overlay.datasets):
        source = sources[ds.SourceImageSequence[0].ReferencedSOPInstanceUID]
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == volume.slice_refs[k].sop_instance_uid
        rows, columns = int(source.Rows), int(source.Columns)
        image = ds.pixel_array[:rows, :columns].astype(np.int16)
        labels = np.asarray(label_map[:, :, k]).T
        outline = expected_outline(labels)
        gray = windowed(source)
        off = ~outline
        assert np.array_equal(image[off], np.repeat(gray[off][:, None], 3, axis=1)), f"slice {k}"
        colours = np.array([SEGMENTS[int(v)].rgb for v in labels[outline]], dtype=np.int16).reshape(-1, 3)
        assert np.array_equal(image[outline], colours), f"slice {k}: outline not in the catalog colours"
        checked += int(outline.sum())
    assert checked > 0, "the label map must put outlines on some images"


def test_not_for_diagnosis_in_header_and_pixels(case: tuple[Path, Volume, Any, EncodedOverlay]) -> None:
    _, volume, label_map, overlay = case
    k = int(np.argmax((np.asarray(label_map) != 0).sum(axis=(0, 1))))
    ds = overlay.datasets[k]
    assert ds.ImageComments == "AI-generated, not for diagnostic use"
    assert ds.BurnedInAnnotation == "YES" and list(ds.ImageType) == ["DERIVED", "SECONDARY"]
    assert "not for diagnostic use" in ds.DerivationDescription
    tesseract = shutil.which("tesseract")
    assert tesseract, "tesseract not installed (apt-get install tesseract-ocr tesseract-ocr-eng)"
    rows = int(volume.first_header.Rows)
    band = Image.fromarray(ds.pixel_array[rows:])
    band = band.resize((band.width * 3, band.height * 3), Image.Resampling.LANCZOS)
    text = subprocess.run(
        [tesseract, "stdin", "stdout"], input=_png(band), capture_output=True, check=True
    ).stdout.decode()
    assert "generated, not for diagnostic use" in text, text
    present = {SEGMENTS[int(v)].name for v in np.unique(label_map[:, :, k]) if v}
    for name in present:  # the legend names every structure on the image
        assert re.sub(r"\W", "", name) in re.sub(r"\W", "", text), (name, text)


def _png(image: Image.Image) -> bytes:
    import io

    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_sorts_beside_its_source(case: tuple[Path, Volume, Any, EncodedOverlay]) -> None:
    folder, volume, _, overlay = case
    sources = sources_by_uid(folder)
    first = volume.first_header
    for ds in overlay.datasets:
        source = sources[ds.SourceImageSequence[0].ReferencedSOPInstanceUID]
        assert ds.InstanceNumber == source.InstanceNumber
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
    assert overlay.datasets[0].SeriesNumber == first.SeriesNumber
    assert overlay.datasets[0].SeriesDescription.startswith(first.SeriesDescription)
    assert len({ds.SeriesInstanceUID for ds in overlay.datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in overlay.datasets}) == len(overlay.datasets)


def test_uids_are_deterministic(case: tuple[Path, Volume, Any, EncodedOverlay]) -> None:
    _, volume, label_map, overlay = case
    again = encode(volume, label_map)
    assert [d.SOPInstanceUID for d in again.datasets] == [d.SOPInstanceUID for d in overlay.datasets]
    assert again.series_instance_uid == overlay.series_instance_uid


def test_a_source_without_a_window_gets_the_stack_window() -> None:
    volume = volumes_of(PD_TRA)[0]
    for header in volume.source_headers:
        for keyword in ("WindowCenter", "WindowWidth"):
            if keyword in header:
                delattr(header, keyword)
    overlay = encode(volume, np.zeros(volume.shape, dtype=np.uint8))
    description = overlay.datasets[0].DerivationDescription
    match = re.search(r"window center (\S+) width (\S+) \(LINEAR\)", description)
    assert match, description
    low, high = np.percentile(volume.voxels[::2, ::2, :], [0.5, 99.5])
    assert float(match[1]) == pytest.approx((low + high) / 2, rel=1e-4)


def test_only_the_sources_without_a_window_get_the_stack_window() -> None:
    volume = volumes_of(PD_TRA)[0]
    before = [
        str(ds.DerivationDescription) for ds in encode(volume, np.zeros(volume.shape, np.uint8)).datasets
    ]
    header = volume.source_headers[1]
    for keyword in ("WindowCenter", "WindowWidth"):
        if keyword in header:
            delattr(header, keyword)
    k = [ref.sop_instance_uid for ref in volume.slice_refs].index(str(header.SOPInstanceUID))
    after = [
        str(ds.DerivationDescription) for ds in encode(volume, np.zeros(volume.shape, np.uint8)).datasets
    ]
    low, high = np.percentile(volume.voxels[::2, ::2, :], [0.5, 99.5])
    assert f"window center {(low + high) / 2:g} " in after[k] and after[k] != before[k]
    assert after[:k] + after[k + 1 :] == before[:k] + before[k + 1 :]


def test_labels_outside_the_catalog_are_refused() -> None:
    volume = volumes_of(PD_TRA)[0]
    label_map = np.zeros(volume.shape, dtype=np.uint8)
    label_map[5:9, 5:9, 3] = 250
    with pytest.raises(DerivedEncodingError, match=r"labels \[250\] have no catalog entry"):
        encode(volume, label_map)


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int16, np.float64, np.int64])
@pytest.mark.parametrize("layout", ["contiguous", "fortran", "reversed", "strided"])
def test_slices_of_a_stack_are_its_transposed_slices(dtype: Any, layout: str) -> None:
    stack = (np.random.default_rng(3).random((37, 23, 19)) * 100).astype(dtype)
    stack = {
        "contiguous": stack,
        "fortran": np.asfortranarray(stack),
        "reversed": stack[::-1],
        "strided": stack[:, :, ::2],
    }[layout]
    for k in range(0, stack.shape[2], 5):
        chunk = slices_of(stack, k, k + 5)
        assert chunk.flags.c_contiguous
        assert np.array_equal(chunk, stack[:, :, k : k + 5].transpose(2, 1, 0)), f"slices {k}.."


def pydicom_windowed(pixels: npt.NDArray[Any], header: Dataset) -> npt.NDArray[np.uint8]:
    """Modality values through the header's first window, by pydicom."""
    display = Dataset()
    display.WindowCenter, display.WindowWidth = header.WindowCenter, header.WindowWidth
    display.VOILUTFunction = header.get("VOILUTFunction", "LINEAR")
    display.PhotometricInterpretation, display.BitsStored, display.PixelRepresentation = "MONOCHROME2", 8, 0
    out: npt.NDArray[np.uint8] = np.rint(apply_voi_lut(pixels.astype(np.float64), display)).astype(np.uint8)
    return out


@pytest.mark.parametrize("order", ["F", "C"])
@pytest.mark.parametrize(
    "function", ["LINEAR", "LINEAR_EXACT", "SIGMOID", "LINEAR for all", "LINEAR_EXACT for all"]
)
def test_each_slice_is_windowed_with_its_own_window(function: str, order: str) -> None:
    """Windows that differ from slice to slice (the linear ones computed for the whole stack at once, in
    the order the voxels are held: Fortran as load_series makes them, or C; a sigmoid one slice by slice),
    or one window for all slices (applied as numbers): every image is its slice through its own window, as
    pydicom computes it."""
    volume = volumes_of(PD_TRA)[0]
    volume = Volume(**{**volume.__dict__, "voxels": np.asarray(volume.voxels, order=order)})
    assert volume.voxels.flags.f_contiguous if order == "F" else volume.voxels.flags.c_contiguous
    headers = {str(h.SOPInstanceUID): h for h in volume.source_headers}
    low, high = (float(v) for v in np.percentile(volume.voxels, [1, 99]))
    for k, ref in enumerate(volume.slice_refs):
        header = headers[ref.sop_instance_uid]
        if function.endswith(" for all"):
            header.WindowCenter, header.WindowWidth = low + (high - low) * 0.41, (high - low) * 0.77
            header.VOILUTFunction = function.split()[0]
            continue
        header.WindowCenter = low + (high - low) * (0.3 + 0.04 * k)
        header.WindowWidth = (high - low) / (1 + k % 3)
        header.VOILUTFunction = function if k == 1 else "LINEAR"
    overlay = encode(volume, np.zeros(volume.shape, dtype=np.uint8))
    for k, (ref, ds) in enumerate(zip(volume.slice_refs, overlay.datasets, strict=True)):
        rows, columns = volume.shape[1], volume.shape[0]
        image = ds.pixel_array[:rows, :columns]
        expected = pydicom_windowed(volume.voxels[:, :, k].T, headers[ref.sop_instance_uid])
        assert np.array_equal(image, np.repeat(expected[:, :, None], 3, axis=2)), f"slice {k}"


def test_the_images_are_drawn_one_at_a_time_into_reused_buffers(
    case: tuple[Path, Volume, Any, EncodedOverlay],
) -> None:
    """images() holds one image's pixels at a time: each image's Pixel Data is a view of a buffer that
    the next image of its size draws over (one buffer per image size), and it is taken off the image
    when the next is asked for; each is the image that ``datasets`` holds (its own bytes)."""
    overlay = case[3]
    held = overlay.datasets
    addresses, shapes = set(), set()
    previous: Dataset | None = None
    count = 0
    for k, ds in enumerate(overlay.images()):
        if previous is not None:
            assert "PixelData" not in previous, f"image {k - 1} still holds pixels of a reused buffer"
        view = ds.PixelData
        assert isinstance(view, memoryview) and not view.readonly
        assert view.tobytes() == held[k].PixelData, f"image {k}"
        assert ds.SOPInstanceUID == held[k].SOPInstanceUID
        addresses.add(np.frombuffer(view, dtype=np.uint8).__array_interface__["data"][0])
        shapes.add((int(ds.Rows), int(ds.Columns)))
        previous, count = ds, count + 1
    assert previous is not None and "PixelData" not in previous  # the last one too, once the images end
    assert count == len(held) and len(addresses) == len(shapes) < count


def test_the_held_datasets_are_independent_copies(case: tuple[Path, Volume, Any, EncodedOverlay]) -> None:
    """``datasets`` gives every image its own bytes: drawing the images again (into new buffers) leaves them
    as they were, and they are what the series' writer writes from the images as they are drawn."""
    overlay = case[3]
    held = overlay.datasets
    assert all(type(ds.PixelData) is bytes for ds in held)
    assert len({id(ds.PixelData) for ds in held}) == len(held)
    before = [ds.PixelData for ds in held]
    for k, ds in enumerate(overlay.images()):
        written, expected = io.BytesIO(), io.BytesIO()
        overlay.writer.write(ds, written)
        overlay.writer.write(held[k], expected)
        assert written.getvalue() == expected.getvalue(), f"image {k}"
    assert [ds.PixelData for ds in held] == before and overlay.datasets is held


def test_a_stack_window_buffer_of_another_shape_or_order_is_refused() -> None:
    voxels = np.asfortranarray(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    windows = [Window(10.0, 20.0)] * 4
    expected = windowed_stack(voxels, windows)
    out = np.empty(voxels.shape, dtype=np.uint8, order="F")
    assert (
        windowed_stack(voxels, windows, out) is out and expected is not None and np.array_equal(out, expected)
    )
    for wrong in (np.empty(voxels.shape, np.uint8), np.empty((2, 3, 3), np.uint8, order="F")):
        with pytest.raises(ValueError, match="not uint8 in the stack's shape and order"):
            windowed_stack(voxels, windows, wrong)


def test_images_drawn_into_a_reused_buffer_are_those_drawn_into_new_memory() -> None:
    """A buffer reused for images of its shape gets each image's own legend band (the same height for
    one structure or another) and source pixels, as an image drawn into new memory."""
    rng = np.random.default_rng(5)
    colours = np.array([SEGMENTS[v].rgb if v in SEGMENTS else (0, 0, 0) for v in range(4)], dtype=np.uint8)
    legend = {}
    for v in (1, 2, 3):
        red, green, blue = (int(c) for c in SEGMENTS[v].rgb)
        legend[v] = (SEGMENTS[v].name, (red, green, blue))
    buffers: dict[tuple[int, ...], ImageBuffer] = {}
    bands: dict[bytes, npt.NDArray[np.uint8]] = {}
    drawn = []
    for label in (1, 2, 2, 1, 3):
        labels = np.zeros((40, 400), dtype=np.uint8)
        labels[10:30, 50 * label : 50 * label + 60] = label
        gray = rng.integers(0, 256, labels.shape, dtype=np.uint8)
        image = render(gray, labels, colours, legend, None, bands, buffers)
        assert np.array_equal(image, render(gray, labels, colours, legend)), f"label {label}"
        drawn.append(image)
    assert len(buffers) == 1 and all(np.shares_memory(image, drawn[0]) for image in drawn)
