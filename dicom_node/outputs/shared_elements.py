"""Writing a series whose images share most of their elements (the overlay series: one image per source
slice, alike but for the pixels, the SOP Instance UID, the Instance Number and the source reference).

pydicom's writer encodes each element of each image again, and its ambiguous-VR pass walks each image
first; for 120 images of some 70 elements that costs more than the pixels. :class:`SharedElementsWriter`
encodes an element that an image holds from the series' template (the same element object, as
``Dataset.update(template)`` or ``Dataset(dict(template.items()))`` leave it) once, with pydicom's own
``write_data_element``, and writes the cached bytes for every image while the element keeps its VR and
value (a sequence: its items' elements); the elements of the image itself are encoded by pydicom's writer
as ``dcmwrite`` does, those with a single plain value (string, UID, integer, bytes) once while the value
stays from image to image, a sequence item by item from the bytes of its items' elements (the source
reference: one UID of its own, the rest alike), and a long OB or OW value (the pixels) goes from its bytes
straight to the file after its header; the file meta elements are completed by pydicom's
``validate_file_meta`` as ``dcmwrite`` does and encoded once while their values stay (an image's own SOP
Instance UID is encoded for it). The file is the same,
byte for byte, as ``dataset.save_as(path, enforce_file_format=True)`` writes (tests compare them).

Only Explicit VR Little Endian (the transfer syntax of the objects SegNode makes) is written this way;
another transfer syntax, a preamble of its own or a template element whose VR depends on other elements
(``US or SS``, ``OB or OW``) goes through ``save_as``.
"""

from __future__ import annotations

import struct
from typing import IO, Any

from pydicom.charset import default_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr_element, write_data_element
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicom_node.outputs.item_bytes import dataset_item, sequence

_PREAMBLE = b"\0" * 128 + b"DICM"
#: VRs of values written from their bytes straight to the file when longer than :data:`_BULK_SIZE`.
_BULK = frozenset(("OB", "OW"))
_BULK_SIZE = 1 << 16
_BYTES = (bytes, memoryview)
_GROUP_LENGTH = BaseTag(0x00020000)
#: Types of single values that are neither multi-values nor sequences (compared as they are).
_PLAIN = frozenset((str, bytes, int, float, UID, type(None)))


def _frozen(elem: DataElement | RawDataElement) -> Any:
    """The VR and value of an element as they stay when the element (its multi-value, the items of its
    sequence) is changed in place."""
    value = elem.value
    if type(value) in _PLAIN:  # first: isinstance against pydicom's abstract classes costs more
        return elem.VR, value
    if isinstance(elem, DataElement) and isinstance(value, Sequence):
        return tuple(
            tuple((tag, _frozen(item.get_item(tag))) for tag in sorted(item.keys())) for item in value
        )
    return elem.VR, tuple(value) if isinstance(value, (list, MultiValue)) else value


def _bulk(elem: DataElement | RawDataElement) -> tuple[bytes, bytes | memoryview] | None:
    """The explicit VR little endian header and the value of an OB or OW element holding more than
    :data:`_BULK_SIZE` bytes of even length (written as they are, as pydicom writes them), None for any
    other element. The value may be ``bytes`` or a contiguous one-dimensional ``memoryview`` of bytes (an
    image drawn into a reused buffer, see ``dicom_node.outputs.overlay``; pydicom takes a ``bytearray``
    for a list of values)."""
    value = elem.value if isinstance(elem, DataElement) else None
    if isinstance(value, memoryview) and not (value.ndim == 1 and value.itemsize == 1 and value.contiguous):
        return None
    if elem.VR not in _BULK or not isinstance(value, _BYTES) or len(value) <= _BULK_SIZE or len(value) % 2:
        return None
    tag = elem.tag
    return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, str(elem.VR).encode("ascii"), 0, len(value)), value


def _is_ambiguous(vr: str | None) -> bool:
    return vr is not None and " or " in vr


class SharedElementsWriter:
    """Writes the images made from one template dataset (see the module's description)."""

    def __init__(self, template: Dataset) -> None:
        self._template = template
        self._charset = template.get("SpecificCharacterSet", default_encoding)
        self._encoded: dict[BaseTag, tuple[Any, bytes]] = {}
        self._meta: dict[BaseTag, tuple[Any, bytes]] = {}
        #: The last plain value encoded for each tag of the images' own elements.
        self._values: dict[BaseTag, tuple[Any, bytes]] = {}
        self._usable = not any(_is_ambiguous(template.get_item(tag).VR) for tag in template.keys())

    def _bytes(self, elem: DataElement | RawDataElement, dataset: Dataset) -> bytes:
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        write_data_element(fp, correct_ambiguous_vr_element(elem, dataset, True), self._charset)
        return fp.getvalue()

    def _shared(
        self,
        tag: BaseTag,
        elem: DataElement | RawDataElement,
        dataset: Dataset,
        cache: dict[BaseTag, tuple[Any, bytes]] | None = None,
    ) -> bytes:
        """The element's bytes, from the cache (the template's elements', else ``cache``) while its VR and
        value (with the items of a sequence) are those it was encoded with: an element changed in place,
        through any of the datasets that share it, is encoded again."""
        cache = self._encoded if cache is None else cache
        state = _frozen(elem)
        cached = cache.get(tag)
        if cached is not None and cached[0] == state:
            return cached[1]
        encoded = self._bytes(elem, dataset)
        cache[tag] = (state, encoded)
        return encoded

    def _own(self, tag: BaseTag, elem: DataElement | RawDataElement, dataset: Dataset) -> bytes:
        """An element of the image itself (or of an item of one of its sequences): a single plain value
        from the cache of the last value of its tag (the images of a series repeat most of theirs: Rows,
        Columns, a derivation description, a code), a sequence item by item (:meth:`_sequence`), any other
        element by pydicom's writer."""
        if isinstance(elem, DataElement) and not _is_ambiguous(elem.VR):
            if elem.VR == "SQ":
                encoded = self._sequence(tag, elem)
                if encoded is not None:
                    return encoded
            elif type(elem.value) in _PLAIN:
                return self._shared(tag, elem, dataset, self._values)
        return self._bytes(elem, dataset)

    def _sequence(self, tag: BaseTag, elem: DataElement) -> bytes | None:
        """A sequence of defined length as pydicom's writer writes it: each item of defined length, its
        elements in tag order (retired group lengths left out) encoded as in :meth:`_own`; None (pydicom's
        writer then) where an item has a character set of its own, an undefined length or an element that
        pydicom reads from a file as raw bytes or whose VR depends on other elements."""
        if elem.is_undefined_length:
            return None
        for entry in elem.value:
            if entry.is_undefined_length_sequence_item or "SpecificCharacterSet" in entry:
                return None
            for key in entry.keys():
                sub = entry.get_item(key)
                if not isinstance(sub, DataElement) or _is_ambiguous(sub.VR):
                    return None
        return sequence(tag, b"".join(dataset_item(entry, self._own) for entry in elem.value))

    def _file_meta(self, meta: FileMetaDataset) -> bytes:
        """The file meta information as pydicom's ``write_file_meta_info(enforce_standard=True)`` writes it:
        the elements it lacks added by pydicom's ``validate_file_meta``, the group length set to the length
        of the others; each element's bytes from the cache while its value is the one they were encoded
        from (the images of a series differ in their SOP Instance UID alone)."""
        validate_file_meta(meta, enforce_standard=True)
        parts = []
        for tag in sorted(meta.keys()):
            if tag == _GROUP_LENGTH:
                continue
            elem = meta.get_item(tag)
            state = _frozen(elem)
            cached = self._meta.get(tag)
            if cached is None or cached[0] != state:
                fp = DicomBytesIO()
                fp.is_little_endian, fp.is_implicit_VR = True, False
                write_data_element(fp, elem, default_encoding)
                cached = self._meta[tag] = (state, fp.getvalue())
            parts.append(cached[1])
        body = b"".join(parts)
        meta.FileMetaInformationGroupLength = len(body)
        return struct.pack("<HH2sHI", 2, 0, b"UL", 4, len(body)) + body

    def fits(self, dataset: Dataset) -> bool:
        """Whether ``dataset`` is written from the cache (else :meth:`write` uses ``save_as``)."""
        meta = getattr(dataset, "file_meta", None)
        return (
            self._usable
            and meta is not None
            and meta.get("TransferSyntaxUID") == ExplicitVRLittleEndian
            and getattr(dataset, "preamble", None) is None
            and dataset.get("SpecificCharacterSet", default_encoding) == self._charset
        )

    def write(self, dataset: Dataset, fh: IO[bytes]) -> None:
        """Write ``dataset`` (made from the template) as a DICOM file to ``fh``."""
        if not self.fits(dataset):
            dataset.save_as(fh, enforce_file_format=True)
            return
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        fp.write(_PREAMBLE)
        fp.write(self._file_meta(dataset.file_meta))
        # the template's elements as they are now (a dict: one lookup per element), and the tags in order as
        # numbers (BaseTag's comparisons run in Python)
        template = dict(self._template.items())
        for tag in sorted(dataset.keys(), key=int):
            if tag.group in (0, 2):
                raise ValueError(f"{tag} (command or file meta element) cannot be written in a dataset")
            if tag.element == 0 and tag.group > 6:
                continue  # retired group lengths are not written (PS3.5 7.2), as pydicom does
            elem = dataset.get_item(tag)
            if template.get(tag) is elem:
                fp.write(self._shared(tag, elem, dataset))
                continue
            corrected = correct_ambiguous_vr_element(elem, dataset, True)
            bulk = _bulk(corrected)
            if bulk is None:
                fp.write(self._own(tag, elem, dataset))
                continue
            # bulk data (the pixels): its header as pydicom writes it, then the value itself straight to the
            # file, not copied through the buffer twice
            fp.write(bulk[0])
            fh.write(fp.getvalue())
            fh.write(bulk[1])
            fp = DicomBytesIO()
            fp.is_little_endian, fp.is_implicit_VR = True, False
        fh.write(fp.getvalue())
