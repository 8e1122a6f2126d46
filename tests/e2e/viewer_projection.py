"""Where a label map must appear on a viewer's screen, and whether a screenshot shows it there.

The viewer reports how its canvas maps to patient coordinates (``canvasToWorld`` of cornerstone3D,
the transform with which it draws the source image). Every screen pixel of the canvas is mapped through it
to a voxel of the source Volume (nearest voxel centre), which gives the label the pixel must show. The
screenshot's overlay pixels are those with colour: an MR image is drawn in grey (R = G = B), a segment's
fill and outline in its recommended colour blended over it.

The tolerance: a pixel where screenshot and label map disagree counts as *misplaced* when it lies farther
than one voxel (in screen pixels) plus one pixel from the label map's projected boundary; the projection
matches when misplaced pixels are at most 0.5 % of the projected label area. Rendering (interpolation at
the edges, the outline drawn along the border) moves the boundary by less than that; a SEG mirrored or
shifted by a few voxels puts whole bands of pixels farther away.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from scipy import ndimage

from conversion.volume import Volume

#: Smallest colour (max - min of R, G, B) of an overlay pixel; a grey image pixel has about 0.
CHROMA_THRESHOLD = 24
#: Misplaced pixels allowed, as a fraction of the projected label area.
MISPLACED_FRACTION = 0.005


@dataclass(frozen=True)
class Projection:
    """The label map as the viewer must show it on its canvas (one value per screen pixel)."""

    labels: npt.NDArray[np.int32]
    #: Screen pixels that show the source image (inside its rows and columns).
    inside: npt.NDArray[np.bool_]
    #: Source voxel value of every screen pixel (for the check that the transform is the image's).
    voxels: npt.NDArray[np.float32]
    #: Canvas pixels per voxel (the smaller of the two in-plane directions).
    pixels_per_voxel: float
    #: Distance of the shown plane from slice ``k`` of the volume, in slices (0 when the viewer shows it).
    slice_offset: float


@dataclass(frozen=True)
class Comparison:
    """How a screenshot's overlay agrees with a projection."""

    dice: float
    expected_pixels: int
    overlay_pixels: int
    misplaced_pixels: int
    tolerance_px: float

    @property
    def misplaced_fraction(self) -> float:
        return self.misplaced_pixels / max(self.expected_pixels, 1)

    @property
    def matches(self) -> bool:
        return self.misplaced_fraction <= MISPLACED_FRACTION

    def __str__(self) -> str:
        return (
            f"Dice {self.dice:.3f}, {self.misplaced_pixels} misplaced pixels "
            f"({100 * self.misplaced_fraction:.2f} % of {self.expected_pixels}; tolerance "
            f"{self.tolerance_px:.1f} px from the boundary), {self.overlay_pixels} overlay pixels"
        )


def canvas_pixels(png: bytes, canvas: dict[str, Any]) -> npt.NDArray[np.uint8]:
    """The viewport canvas's pixels as (rows, columns, RGB)."""
    rgb: npt.NDArray[np.uint8] = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    width, height = canvas["size"]
    assert rgb.shape[:2] == (height, width), f"canvas PNG {rgb.shape[:2]} != canvas size {canvas['size']}"
    return rgb


def shown_on_page(screenshot_png: bytes, canvas: dict[str, Any], pixels: npt.NDArray[np.uint8]) -> float:
    """Fraction of the canvas pixels that the page screenshot shows unchanged at the canvas's place (the
    rest is covered by OHIF's text and markers): the canvas is what the user sees."""
    assert canvas["ratio"] == 1, "screenshots are taken at device scale factor 1"
    left, top = int(round(canvas["rect"][0])), int(round(canvas["rect"][1]))
    page = np.asarray(Image.open(io.BytesIO(screenshot_png)).convert("RGB"))
    height, width = pixels.shape[:2]
    crop = page[top : top + height, left : left + width]
    if crop.shape != pixels.shape:
        return 0.0
    return float(np.all(np.abs(crop.astype(np.int16) - pixels) <= 2, axis=2).mean())


def project(volume: Volume, label_map: npt.NDArray[Any], k: int, canvas: dict[str, Any]) -> Projection:
    """The label of slice ``k`` that every canvas pixel must show (nearest voxel centre)."""
    width, height = canvas["size"]
    # Canvas pixels to CSS pixels (the unit of canvasToWorld) to patient coordinates.
    origin = np.asarray(canvas["origin"], dtype=np.float64)
    step_x = (np.asarray(canvas["dx"], dtype=np.float64) - origin) * canvas["rect"][2] / width
    step_y = (np.asarray(canvas["dy"], dtype=np.float64) - origin) * canvas["rect"][3] / height
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    world = origin + xs[..., None] * step_x + ys[..., None] * step_y
    inverse = np.linalg.inv(volume.affine)
    index = world @ inverse[:3, :3].T + inverse[:3, 3]
    i, j = np.rint(index[..., 0]).astype(int), np.rint(index[..., 1]).astype(int)
    ni, nj, _ = volume.shape
    inside = (i >= 0) & (i < ni) & (j >= 0) & (j < nj)
    ic, jc = np.clip(i, 0, ni - 1), np.clip(j, 0, nj - 1)
    labels = np.where(inside, label_map[ic, jc, k], 0).astype(np.int32)
    voxels = np.where(inside, volume.voxels[ic, jc, k], 0).astype(np.float32)
    voxel_per_pixel = np.linalg.norm(inverse[:3, :3] @ np.stack([step_x, step_y], axis=1), axis=0)
    return Projection(
        labels=labels,
        inside=inside,
        voxels=voxels,
        pixels_per_voxel=float(1.0 / voxel_per_pixel.max()),
        slice_offset=float(np.abs(index[..., 2] - k).max()),
    )


def overlay_mask(crop: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
    """Screen pixels with colour (the segmentation overlay)."""
    wide = crop.astype(np.int16)
    chroma = wide.max(axis=2) - wide.min(axis=2)
    mask: npt.NDArray[np.bool_] = chroma >= CHROMA_THRESHOLD
    return mask


def compare(projection: Projection, overlay: npt.NDArray[np.bool_]) -> Comparison:
    """Screenshot overlay against the projected label map, within the image area."""
    expected = (projection.labels > 0) & projection.inside
    seen = overlay & projection.inside
    tolerance = projection.pixels_per_voxel + 1.0
    # Distance of every pixel to the expected boundary: inside the mask to the nearest background pixel,
    # outside to the nearest mask pixel.
    to_boundary = np.where(
        expected, ndimage.distance_transform_edt(expected), ndimage.distance_transform_edt(~expected)
    )
    wrong = (seen != expected) & (to_boundary > tolerance)
    both = int((seen & expected).sum())
    total = int(seen.sum()) + int(expected.sum())
    return Comparison(
        dice=2 * both / total if total else 1.0,
        expected_pixels=int(expected.sum()),
        overlay_pixels=int(seen.sum()),
        misplaced_pixels=int(wrong.sum()),
        tolerance_px=tolerance,
    )


def colour_agreement(
    crop: npt.NDArray[np.uint8], projection: Projection, label: int, rgb: tuple[int, int, int]
) -> float:
    """Cosine between the mean colour cast inside a structure (eroded by its tolerance) and the colour
    cast of its recommended colour: 1 when the viewer shows the catalog colour, low when segments are
    swapped or drawn in another colour."""
    region = (projection.labels == label) & projection.inside
    region = ndimage.binary_erosion(region, iterations=int(np.ceil(projection.pixels_per_voxel)) + 1)
    if not region.any():
        return float("nan")
    pixels = crop[region].astype(np.float64)
    cast = (pixels - pixels.mean(axis=1, keepdims=True)).mean(axis=0)
    target = np.asarray(rgb, dtype=np.float64) - float(np.mean(rgb))
    return float(cast @ target / (np.linalg.norm(cast) * np.linalg.norm(target) + 1e-9))


def image_correlation(crop: npt.NDArray[np.uint8], projection: Projection) -> float:
    """Pearson correlation of the screenshot's grey pixels with the source voxels mapped through the
    viewer's transform: high only when the transform is the one the image was drawn with."""
    grey = projection.inside & ~overlay_mask(crop) & (projection.labels == 0)
    shown = crop[grey].astype(np.float64).mean(axis=1)
    source = projection.voxels[grey].astype(np.float64)
    return float(np.corrcoef(shown, source)[0, 1])


def check_picture(crop: npt.NDArray[np.uint8], projection: Projection) -> npt.NDArray[np.uint8]:
    """The screenshot with the projected label map's boundary drawn in yellow (for people to look at)."""
    expected = (projection.labels > 0) & projection.inside
    boundary = expected & ~ndimage.binary_erosion(expected)
    out = crop.copy()
    out[boundary] = (255, 255, 0)
    return out
