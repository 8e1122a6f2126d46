"""Views of a :class:`Volume` as images of other libraries (for analysis and tests, not the hot path)."""

from __future__ import annotations

from typing import Any

import numpy as np

from conversion.volume import Volume


def to_nibabel(volume: Volume) -> Any:
    """A ``nibabel.Nifti1Image`` of the volume with its RAS affine (no data copy, no file written)."""
    import nibabel as nib

    nib_any: Any = nib

    img = nib_any.Nifti1Image(volume.voxels, volume.affine_ras)
    img.header.set_xyzt_units("mm")
    img.set_qform(volume.affine_ras, code=1)
    img.set_sform(volume.affine_ras, code=1)
    return img


def to_sitk(volume: Volume) -> Any:
    """A ``SimpleITK.Image`` (LPS, like DICOM) with origin, spacing and direction of the volume.

    SimpleITK indexes arrays as ``[k, j, i]``, so the voxels are transposed (copied) into that order.
    """
    import SimpleITK as sitk

    image: Any = sitk.GetImageFromArray(np.ascontiguousarray(volume.voxels.transpose(2, 1, 0)))
    spacing = volume.spacing
    direction = volume.affine[:3, :3] / np.array(spacing)
    image.SetSpacing(spacing)
    image.SetOrigin(tuple(float(v) for v in volume.affine[:3, 3]))
    image.SetDirection(tuple(float(v) for v in direction.flatten()))
    return image
