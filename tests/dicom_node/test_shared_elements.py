"""SharedElementsWriter (dicom_node.outputs.shared_elements): the files it writes are byte for byte those of
pydicom's ``save_as(enforce_file_format=True)``, with a character set of the template, nested sequences,
elements of the image that replace the template's, and where it falls back to ``save_as``."""

from __future__ import annotations

import io

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, SecondaryCaptureImageStorage

from dicom_node.outputs.shared_elements import SharedElementsWriter


def template() -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Jörg"
    ds.PatientID = "Ä-1"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.StudyInstanceUID = "1.2.3"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "113076", "DCM", "Segmentation"
    ds.DerivationCodeSequence = [code]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    return ds


def image(shared: Dataset, n: int, syntax: str = ExplicitVRLittleEndian) -> Dataset:
    ds = Dataset()
    ds.update(shared)
    ds.SOPInstanceUID = f"1.2.3.{n}"
    ds.InstanceNumber = n
    ds.ImageComments = f"Bild {n} für Jörg"
    source = Dataset()
    source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID = SecondaryCaptureImageStorage, f"1.2.4.{n}"
    ds.SourceImageSequence = [source]
    ds.Rows, ds.Columns = 2, 3
    ds.PixelData = bytes(range(n, n + 6))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    ds.file_meta = meta
    return ds


def both(writer: SharedElementsWriter, ds: Dataset) -> tuple[bytes, bytes]:
    expected, written = io.BytesIO(), io.BytesIO()
    ds.save_as(expected, enforce_file_format=True)
    writer.write(ds, written)
    return written.getvalue(), expected.getvalue()


def test_images_of_a_template_are_written_as_pydicom_writes_them() -> None:
    shared = template()
    writer = SharedElementsWriter(shared)
    for n in range(1, 4):
        ds = image(shared, n)
        assert writer.fits(ds)
        written, expected = both(writer, ds)
        assert written == expected, f"image {n}"
    assert "Müller".encode("latin-1") in written


def test_an_element_replaced_in_the_image_is_its_own() -> None:
    shared = template()
    writer = SharedElementsWriter(shared)
    both(writer, image(shared, 1))  # the template's PatientID is cached now
    ds = image(shared, 2)
    ds.PatientID = "other"
    written, expected = both(writer, ds)
    assert written == expected and b"other" in written


@pytest.mark.parametrize("case", ["implicit", "ambiguous", "preamble"])
def test_what_the_cache_cannot_write_goes_through_save_as(case: str) -> None:
    shared = template()
    if case == "ambiguous":
        shared.SmallestImagePixelValue = 0  # US or SS, by Pixel Representation
    writer = SharedElementsWriter(shared)
    ds = image(shared, 1, ImplicitVRLittleEndian if case == "implicit" else ExplicitVRLittleEndian)
    if case == "preamble":
        ds.preamble = b"\1" * 128
    assert not writer.fits(ds)
    written, expected = both(writer, ds)
    assert written == expected


def test_a_file_meta_element_in_the_dataset_is_refused() -> None:
    shared = template()
    writer = SharedElementsWriter(shared)
    ds = image(shared, 1)
    ds.add_new(0x00020010, "UI", ExplicitVRLittleEndian)
    with pytest.raises(ValueError, match="file meta"):
        writer.write(ds, io.BytesIO())


def test_a_shared_element_changed_in_place_is_encoded_again() -> None:
    shared = template()
    shared.ImageType = ["DERIVED", "SECONDARY"]
    writer = SharedElementsWriter(shared)
    first = image(shared, 1)
    both(writer, first)
    first.ImageType[1] = "PRIMARY"  # the element (and its list) is the template's, shared by every image
    first.DerivationCodeSequence[0].CodeMeaning = "Changed"
    written, expected = both(writer, image(shared, 2))
    assert written == expected and b"PRIMARY" in written and b"Changed" in written


def test_long_pixel_data_is_written_as_pydicom_writes_it() -> None:
    """A long OB value (the pixels of an image) goes straight to the file after its header: the same bytes."""
    shared = template()
    writer = SharedElementsWriter(shared)
    ds = image(shared, 1)
    ds.Rows, ds.Columns = 300, 401
    ds.PixelData = bytes(range(256)) * 470  # 120,320 bytes: longer than what goes through the buffer
    written, expected = both(writer, ds)
    assert written == expected and written.endswith(ds.PixelData)
    ds.PixelData = ds.PixelData + b"\1"  # odd length: padded by pydicom's writer
    written, expected = both(writer, ds)
    assert written == expected


def test_file_meta_is_written_as_pydicom_writes_it() -> None:
    """The file meta elements are encoded once while their values stay (each image has its own instance
    UID), with the elements pydicom adds and the group length; a changed one is encoded again."""
    shared = template()
    writer = SharedElementsWriter(shared)
    for n in range(1, 4):
        ds = image(shared, n)
        if n == 3:
            ds.file_meta.ImplementationClassUID = "1.2.3.4.5"
            ds.file_meta.ImplementationVersionName = "OTHER"
        written, expected = both(writer, ds)
        assert written == expected, f"image {n}"
    assert b"OTHER" in written


def test_pixels_in_a_buffer_are_written_as_their_bytes_are() -> None:
    """Pixel Data held as a memoryview of a buffer (the overlay's images are drawn into reused buffers),
    long (straight to the file) or short, gives the file that the same bytes give, as ``save_as`` does."""
    shared = template()
    writer = SharedElementsWriter(shared)
    for size in (120_320, 6):
        ds = image(shared, 1)
        pixels = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
        ds.Rows, ds.Columns = 2, size // 2
        ds.PixelData = pixels
        expected = both(writer, ds)[1]
        ds.PixelData = np.frombuffer(bytearray(pixels), dtype=np.uint8).data
        assert isinstance(ds.PixelData, memoryview)
        written, again = both(writer, ds)
        assert written == expected and again == expected, f"{size} bytes"


def code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
    return item


@pytest.mark.parametrize("case", ["nested", "empty", "charset", "undefined", "ambiguous", "changed"])
def test_sequences_and_values_of_the_images_are_written_as_pydicom_writes_them(case: str) -> None:
    """The images' own elements (plain values encoded once while they repeat, sequences item by item from
    their elements' bytes, nested ones too) give the files of ``save_as``, image after image; an item with
    a character set of its own, of undefined length, or with an element whose VR depends on others is
    left to pydicom's writer; a value changed in place in an item is encoded again."""
    shared = template()
    writer = SharedElementsWriter(shared)
    purpose = code("121322", "DCM source")
    for n in range(1, 4):
        ds = image(shared, n)
        ds.DerivationDescription = "Jörg's outlines"  # the same for every image
        ds.SourceImageSequence[0].PurposeOfReferenceCodeSequence = [purpose, code(f"11{n}", "Wörter")]
        item = ds.SourceImageSequence[0]
        if case == "empty":
            item.PurposeOfReferenceCodeSequence = []
        elif case == "charset":
            item.SpecificCharacterSet = "ISO_IR 192"
            item.PurposeOfReferenceCodeSequence[1].CodeMeaning = "Wörter ☃"
        elif case == "undefined":
            item.is_undefined_length_sequence_item = True
        elif case == "ambiguous":
            item.SmallestImagePixelValue = 3  # US or SS: by the Pixel Representation
        elif case == "changed" and n == 3:
            purpose.CodeMeaning = "Changed"  # the item every image shares, changed in place
        written, expected = both(writer, ds)
        assert written == expected, f"image {n}"
    assert (b"Changed" in written) is (case == "changed")
