"""Decoding pixel data straight into a preallocated volume, through pydicom's pixel decoders.

Every transfer syntax pydicom has a decoder for (native little/big endian, RLE, JPEG baseline/lossless,
JPEG-LS and JPEG 2000 through the pylibjpeg plugins, or gdcm) is accepted. Files are reopened at the Pixel
Data offset found while reading the headers, so the header is parsed only once.
"""

from __future__ import annotations

import logging
import struct
from collections import defaultdict
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import as_pixel_options
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from conversion.dicomwalk import PIXEL_DATA, WalkError, element_header
from conversion.errors import NotSegmentableError, Reason
from conversion.headers import FrameInfo, SourceImage

logger = logging.getLogger(__name__)

_PIXEL_KEYWORDS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}
# AttributeError: pydicom's "Missing required element" (Rows, Columns, Photometric Interpretation...)
_DECODE_ERRORS = (
    ValueError,
    RuntimeError,
    NotImplementedError,
    OSError,
    EOFError,
    struct.error,
    KeyError,
    AttributeError,
)


def _options(src: SourceImage) -> dict[str, Any]:
    opts: dict[str, Any] = as_pixel_options(src.header, transfer_syntax_uid=src.transfer_syntax)
    opts["transfer_syntax_uid"] = src.transfer_syntax
    return opts


def _seek_value(fp: BinaryIO, src: SourceImage, opts: dict[str, Any]) -> None:
    """Position ``fp`` at the start of the Pixel Data value (after its element header)."""
    assert src.pixel_offset is not None
    fp.seek(src.pixel_offset)
    try:
        tag, vr, value_pos, _ = element_header(fp.read(12), 0, src.implicit_vr, src.little_endian)
    except WalkError as exc:
        raise EOFError(f"the pixel data element of {src.name} is cut short: {exc}") from exc
    if vr is not None:
        opts["pixel_vr"] = vr
    opts["pixel_keyword"] = _PIXEL_KEYWORDS[tag]
    fp.seek(src.pixel_offset + value_pos)


def _native_frames(src: SourceImage, frames: list[int | None]) -> list[npt.NDArray[Any]] | None:
    """Read uncompressed little-endian frames straight from the file, or ``None`` to use pydicom.

    Same result as pydicom's native decoder with its defaults (stored values as the Bits Allocated /
    Pixel Representation integer type, unused high bits left as they are).
    """
    if src.path is None or src.pixel_offset is None or not src.little_endian:
        return None
    if src.transfer_syntax not in (ImplicitVRLittleEndian, ExplicitVRLittleEndian):
        return None
    view = src.view
    bits = int(view.number(0x00280100) or 0)  # Bits Allocated
    signed = int(view.number(0x00280103) or 0) == 1  # Pixel Representation
    if int(view.number(0x00280002) or 1) != 1 or bits not in (8, 16, 32):  # Samples per Pixel
        return None
    rows, columns = int(view.number(0x00280010) or 0), int(view.number(0x00280011) or 0)
    n_frames = int(view.number(0x00280008) or 1)  # Number of Frames
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    frame_bytes = rows * columns * dtype.itemsize
    with src.path.open("rb") as fp:
        fp.seek(src.pixel_offset)
        head = fp.read(12)
        try:
            tag, _, value_pos, length = element_header(head, 0, src.implicit_vr, True)
        except WalkError:
            return None
        if tag != PIXEL_DATA:
            return None
        start = src.pixel_offset + value_pos
        if length < n_frames * frame_bytes:
            return None  # short or undefined length: let pydicom decide and explain
        out = []
        for f in frames:
            fp.seek(start + (f or 0) * frame_bytes)
            buf = fp.read(frame_bytes)
            if len(buf) != frame_bytes:
                return None
            out.append(np.frombuffer(buf, dtype=dtype).reshape(rows, columns))
        return out


def decode_frames(src: SourceImage, frames: list[int | None], *, series: str = "") -> list[npt.NDArray[Any]]:
    """Decode the given frames (``None`` for a single-frame object) of one instance as stored arrays."""
    native = _native_frames(src, frames)
    if native is not None:
        return native
    try:
        decoder = get_decoder(src.transfer_syntax)
    except NotImplementedError as exc:
        raise NotSegmentableError(
            f"{series or src.name}: no decoder for the transfer syntax {src.transfer_syntax.name} "
            f"({src.transfer_syntax}) of {src.name}",
            reason=Reason.UNDECODABLE_PIXELS,
            series=series,
        ) from exc
    opts = _options(src)
    n_frames = int(opts.get("number_of_frames", 1) or 1)
    try:
        if src.dataset is not None:
            if len(frames) > 1 and n_frames > 1:
                arr, _ = decoder.as_array(src.dataset, index=None)
                return [arr[f if f is not None else 0] for f in frames]
            return [decoder.as_array(src.dataset, index=f)[0] for f in frames]
        assert src.path is not None
        with src.path.open("rb") as fp:
            if len(frames) > 1 and n_frames > 1:
                _seek_value(fp, src, opts)
                arr, _ = decoder.as_array(fp, index=None, **opts)
                if n_frames == 1:
                    arr = arr[np.newaxis]
                return [arr[f if f is not None else 0] for f in frames]
            out = []
            for f in frames:
                _seek_value(fp, src, opts)
                out.append(decoder.as_array(fp, index=f, **opts)[0])
            return out
    except _DECODE_ERRORS as exc:
        raise NotSegmentableError(
            f"{series or src.name}: the pixel data of {src.name} ({src.transfer_syntax.name}) "
            f"cannot be decoded: {exc}",
            reason=Reason.UNDECODABLE_PIXELS,
            series=series,
        ) from exc


def fill_slices(
    out: npt.NDArray[np.float32],
    frames: list[FrameInfo],
    sources: list[SourceImage],
    *,
    series: str = "",
) -> None:
    """Decode ``frames`` into ``out[k]`` (shape ``(slices, rows, columns)``) with rescale applied."""
    by_source: dict[int, list[int]] = defaultdict(list)
    for k, fr in enumerate(frames):
        by_source[fr.source].append(k)
    for src_index, ks in by_source.items():
        src = sources[src_index]
        arrays = decode_frames(src, [frames[k].frame for k in ks], series=series)
        for k, arr in zip(ks, arrays, strict=True):
            if arr.shape != out.shape[1:]:
                raise NotSegmentableError(
                    f"{series or src.name}: {src.name} decodes to {arr.shape}, expected {out.shape[1:]}",
                    reason=Reason.UNDECODABLE_PIXELS,
                    series=series,
                )
            fr = frames[k]
            if fr.slope == 1.0 and fr.intercept == 0.0:
                out[k] = arr
            else:
                np.multiply(arr, fr.slope, out=out[k], casting="unsafe")
                out[k] += np.float32(fr.intercept)
