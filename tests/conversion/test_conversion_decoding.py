"""Pixel decoding through pydicom's handlers: every transfer syntax gives the same voxels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from conversion_reference import index_mapping, run_dcm2niix, values_equal
from pydicom.uid import (
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from conversion import load_series
from conversion.headers import read_sources
from conversion.pixels import decode_frames
from tests.support.paths import TEST_MRI, series_files

#: The Sunnybrook files carry UIDs with leading-zero components: pydicom warns, SegNode reads them.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")

SAG = TEST_MRI / "prostatex" / "ProstateX-0000_3.000000-t2tsesag-87368"
XA10 = TEST_MRI / "dcm_qa_enh" / "Siemens_XA10_EnhancedMR_4vol"


def test_nine_transfer_syntaxes_of_one_real_image_decode_identically() -> None:
    """The dcm_qa_ts files: the same Siemens image in 9 transfer syntaxes (JPEG-LS, JPEG 2000, RLE, ...)."""
    files = series_files(TEST_MRI / "dcm_qa_ts" / "ax_asc_35sl_9_transfer_syntaxes")
    sources = read_sources(list(files))
    syntaxes = {s.transfer_syntax for s in sources}
    assert len(sources) == 9 and len(syntaxes) == 7  # JPEG Lossless SV1 and JPEG-LS twice each
    arrays = [decode_frames(s, [None])[0] for s in sources]
    for src, arr in zip(sources, arrays, strict=True):
        assert arr.shape == (384, 384), src.transfer_syntax.name
        np.testing.assert_array_equal(arr, arrays[0], err_msg=src.transfer_syntax.name)
    assert float(arrays[0].max()) > 0


def test_compressed_enhanced_mr_frames_decode_identically() -> None:
    """emri_small in Big Endian, JPEG 2000, JPEG-LS and RLE: all ten frames equal."""
    names = ["BigEndian", "J2K", "JPEGLS", "RLE"]
    arrays = []
    for name in names:
        (src,) = read_sources(series_files(TEST_MRI / "pydicom_data" / f"emri_small_EnhancedMR_{name}"))
        frames = decode_frames(src, list(range(10)))
        arrays.append(np.stack(frames))
    for name, arr in zip(names, arrays, strict=True):
        assert arr.shape == (10, 64, 64)
        np.testing.assert_array_equal(arr, arrays[0], err_msg=name)


def test_single_frame_decoding_of_a_multi_frame_file_matches_all_frames() -> None:
    (src, *_) = read_sources(series_files(XA10))
    all_frames = decode_frames(src, [0, 1, 2, 3, 4, 5])
    assert [np.array_equal(decode_frames(src, [f])[0], all_frames[f]) for f in range(6)] == [True] * 6


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless, ImplicitVRLittleEndian])
def test_real_series_transcoded_loads_to_the_same_volume(syntax: pydicom.uid.UID, tmp_path: Path) -> None:
    (original,) = load_series(series_files(SAG))
    folder = tmp_path / "series"
    folder.mkdir()
    for f in series_files(SAG):
        ds = pydicom.dcmread(f)
        if syntax.is_compressed:
            ds.compress(syntax, generate_instance_uid=False)
            ds.save_as(folder / f.name)
        else:
            ds.file_meta.TransferSyntaxUID = syntax
            ds.save_as(
                folder / f.name, implicit_vr=syntax.is_implicit_VR, little_endian=syntax.is_little_endian
            )
    (volume,) = load_series(series_files(folder))
    assert pydicom.dcmread(next(folder.glob("*.dcm"))).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(volume.voxels, original.voxels)
    np.testing.assert_allclose(volume.affine, original.affine)
    assert volume.slice_refs == original.slice_refs
    if syntax in (JPEG2000Lossless, ImplicitVRLittleEndian):
        # dcm2niix (built with OpenJPEG, without CharLS) decodes these too: same voxels
        (ref,) = run_dcm2niix(folder, tmp_path / "dcm2niix")
        theirs = index_mapping(volume, ref)
        assert theirs is not None and values_equal(volume.voxels, theirs)


def test_datasets_in_memory_load_like_files() -> None:
    files = series_files(SAG)
    (from_files,) = load_series(files)
    (from_datasets,) = load_series([pydicom.dcmread(f) for f in files])
    np.testing.assert_array_equal(from_files.voxels, from_datasets.voxels)
    np.testing.assert_allclose(from_files.affine, from_datasets.affine)
    assert all("PixelData" not in h for h in from_datasets.source_headers)


def test_datasets_without_file_meta_as_received_over_the_network() -> None:
    (from_files,) = load_series(series_files(SAG))
    datasets = []
    for f in series_files(SAG):
        received = pydicom.Dataset()
        received.update(pydicom.dcmread(f))
        received.set_original_encoding(False, True)
        datasets.append(received)
    assert not hasattr(datasets[0], "file_meta")
    (volume,) = load_series(datasets)
    np.testing.assert_array_equal(volume.voxels, from_files.voxels)
