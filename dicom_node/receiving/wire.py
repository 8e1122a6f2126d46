"""The bytes on the path of every C-STORE, built and read without pydicom datasets or 4 KB reads.

Each C-STORE of one association waits for the previous one's response, so the association thread's time
per instance adds up directly. pynetdicom spends much of it on three things that the node does itself:

* **The instance's file** (:func:`part10_file`). ``Event.encoded_dataset()`` builds the File Meta
  Information as a pydicom data set: seven elements set one by one, each value validated (a UID with a
  component starting with ``0`` also issues a warning), then written by pydicom's file writer, about
  0.17 ms per instance. :func:`part10_file` writes the same seven elements straight to bytes, byte for
  byte what pynetdicom writes, for the ordinary case (UIDs of digits and dots, the data set in memory);
  anything else goes to pynetdicom's own method.
* **The C-STORE response** (:func:`send_store_responses`). ``DIMSEServiceProvider.send_msg`` copies the
  response primitive into a pydicom command set and encodes it three times (twice for its group length),
  about 0.23 ms per instance. The association's ``send_msg`` is replaced by one that encodes an ordinary
  C-STORE response (status, the two UIDs and the message ID, no error comment or offending element)
  directly, the same bytes as pynetdicom's, and queues it as pynetdicom's does; every other message, and
  every message while a handler is bound to ``EVT_DIMSE_SENT`` (which must see the message object), goes
  through pynetdicom's ``send_msg``.
* **Reading a PDU** (:func:`read_whole_pdus`). ``AssociationSocket.recv`` reads in 4096-byte pieces and
  appends each to a ``bytearray``: 33 ``recv`` calls for a PDU of 130 KB. The association's socket gets a
  ``recv`` that reads into one buffer of the PDU's size, as much as the connection holds per call, with
  the same result: the bytes asked for, or fewer when the peer closed the connection (the DUL then
  aborts the association, as it does with pynetdicom's ``recv``); exceptions pass through unchanged.

What this replaces is pynetdicom's internals: :data:`SEND_MSG_SOURCE_SHA256` and
:data:`RECV_SOURCE_SHA256` pin the sources of the version they were checked against, and
``tests/dicom_node/test_wire.py`` compares the bytes with pynetdicom's own, so that an upgrade of
pynetdicom fails loudly there instead of sending other bytes.
"""

from __future__ import annotations

import re
import socket
import struct
import types
from io import BytesIO
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

#: SHA-256 of ``inspect.getsource(DIMSEServiceProvider.send_msg)`` in pynetdicom 3.0.4: it converts the
#: primitive to a message, triggers ``EVT_DIMSE_SENT`` and hands each P-DATA to ``self.dul.send_pdu``.
SEND_MSG_SOURCE_SHA256 = "a839cf2fb46976d9da29cf06fea41c04416b38d14fab612af12e5d869bd5b3f0"
#: SHA-256 of ``inspect.getsource(AssociationSocket.recv)`` in pynetdicom 3.0.4: it returns a
#: ``bytearray`` of ``nr_bytes``, or of fewer when the peer closed the connection.
RECV_SOURCE_SHA256 = "6bc20a33b1b7cfe76d4ad4407ca242563bc6206fde4b4e1cf7a2fbb1f11d621d"

#: Values written here; any other value (empty, over 64 characters, other characters) goes to pydicom.
_PLAIN_UID = re.compile(r"[0-9.]{1,64}\Z")
_PREAMBLE = b"\x00" * 128 + b"DICM"
_DEFAULTS = cast(dict[str, str], create_file_meta.__kwdefaults__)
#: The Implementation Class UID and Version Name that ``Event.file_meta`` writes (pynetdicom's own).
_IMPLEMENTATION_UID = str(_DEFAULTS["implementation_uid"])
_IMPLEMENTATION_VERSION = str(_DEFAULTS["implementation_version"])
#: Bytes a read allocates before any arrive (more than the largest PDU the node accepts by default).
FIRST_BUFFER = 1 << 20
_C_STORE_RSP = 0x8001
_NO_DATA_SET = 0x0101


def _padded(value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def _explicit(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """One element in Explicit VR Little Endian (a VR with a 2-byte length)."""
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _file_meta_elements(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """The File Meta Information group (0002) that pynetdicom's ``create_file_meta`` and pydicom's
    ``write_file_meta_info`` write for these values, group length first."""
    body = b"".join(
        (
            struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01",
            _explicit(0x0002, 0x0002, b"UI", _padded(sop_class, b"\0")),
            _explicit(0x0002, 0x0003, b"UI", _padded(sop_instance, b"\0")),
            _explicit(0x0002, 0x0010, b"UI", _padded(transfer_syntax, b"\0")),
            _explicit(0x0002, 0x0012, b"UI", _padded(_IMPLEMENTATION_UID, b"\0")),
            _explicit(0x0002, 0x0013, b"SH", _padded(_IMPLEMENTATION_VERSION, b" ")),
        )
    )
    return _explicit(0x0002, 0x0000, b"UL", struct.pack("<I", len(body))) + body


def part10_file(event: evt.Event) -> bytes:
    """What ``event.encoded_dataset()`` returns for a C-STORE event (preamble, ``DICM``, File Meta
    Information, the data set as received), without building a pydicom data set where the values are
    ordinary."""
    request = cast(C_STORE, event.request)
    values = (request.AffectedSOPClassUID, request.AffectedSOPInstanceUID, event.context.transfer_syntax)
    data_set = request.DataSet
    if not isinstance(data_set, BytesIO) or not all(
        isinstance(value, str) and _PLAIN_UID.match(value) for value in values
    ):
        return event.encoded_dataset()
    sop_class, sop_instance, transfer_syntax = (str(value) for value in values)
    meta = _file_meta_elements(sop_class, sop_instance, transfer_syntax)
    # a BytesIO made from bytes (the node's decoded requests) gives them back without a copy; one written
    # piece by piece (pynetdicom's) gives a view of its buffer without one
    body = data_set.getvalue() if getattr(request, "data_set_whole", False) else data_set.getbuffer()
    return b"".join((_PREAMBLE, meta, body))


def _implicit(group: int, element: int, value: bytes) -> bytes:
    """One element in Implicit VR Little Endian (command sets are always encoded so)."""
    return struct.pack("<HHI", group, element, len(value)) + value


def store_response_pdv(primitive: Any) -> bytes | None:
    """The presentation data value (message control header and command set) pynetdicom sends for an
    ordinary C-STORE response, or ``None`` for anything else."""
    if type(primitive) is not C_STORE or primitive.MessageIDBeingRespondedTo is None:
        return None
    if primitive.OffendingElement is not None or primitive.ErrorComment is not None:
        return None
    sop_class, sop_instance = primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID
    responded_to, status = primitive.MessageIDBeingRespondedTo, primitive.Status
    if not all(isinstance(uid, str) and _PLAIN_UID.match(uid) for uid in (sop_class, sop_instance)):
        return None
    if not all(type(number) is int and 0 <= number <= 0xFFFF for number in (responded_to, status)):
        return None
    body = b"".join(
        (
            _implicit(0x0000, 0x0002, _padded(str(sop_class), b"\0")),
            _implicit(0x0000, 0x0100, struct.pack("<H", _C_STORE_RSP)),
            _implicit(0x0000, 0x0120, struct.pack("<H", responded_to)),
            _implicit(0x0000, 0x0800, struct.pack("<H", _NO_DATA_SET)),
            _implicit(0x0000, 0x0900, struct.pack("<H", status)),
            _implicit(0x0000, 0x1000, _padded(str(sop_instance), b"\0")),
        )
    )
    # message control header 0x03: a command, its last fragment
    return b"\x03" + _implicit(0x0000, 0x0000, struct.pack("<I", len(body))) + body


def send_store_responses(assoc: Association) -> None:
    """Give the DIMSE of ``assoc`` a ``send_msg`` that sends ordinary C-STORE responses without pydicom
    (see the module's description); everything else goes to pynetdicom's ``send_msg``."""
    dimse = assoc.dimse
    library_send = dimse.send_msg

    def send_msg(primitive: Any, context_id: int) -> None:
        pdv = None if assoc.get_handlers(evt.EVT_DIMSE_SENT) else store_response_pdv(primitive)
        maximum = dimse.maximum_pdu_size  # pynetdicom splits a command set over PDVs of maximum - 6 bytes
        if pdv is None or (maximum and len(pdv) - 1 > maximum - 6):
            library_send(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, pdv))
        dimse.dul.send_pdu(pdata)

    dimse.send_msg = send_msg  # type: ignore[method-assign]


def _recv(transport: AssociationSocket, nr_bytes: int) -> bytearray:
    """``AssociationSocket.recv``: ``nr_bytes`` read into one buffer, fewer if the connection closed.

    The buffer grows with what arrives beyond :data:`FIRST_BUFFER` bytes (doubling), so a length the peer
    announces but never sends (up to 4 GiB in a PDU header) is never allocated."""
    connection = cast(socket.socket, transport.socket)  # None (closed) fails as in pynetdicom's
    buffer = bytearray(min(nr_bytes, FIRST_BUFFER))
    read = 0
    while read < nr_bytes:
        if read == len(buffer):
            buffer.extend(bytes(min(nr_bytes - read, len(buffer))))
        with memoryview(buffer) as view:
            count = connection.recv_into(view[read:])
        if not count:
            del buffer[read:]
            break
        read += count
    return buffer


def read_whole_pdus(assoc: Association) -> None:
    """Give the socket of ``assoc`` (set, not yet read from) the ``recv`` that reads into one buffer."""
    transport = assoc.dul.socket
    if transport is None:
        raise RuntimeError("the association has no socket yet")
    transport.recv = types.MethodType(_recv, transport)  # type: ignore[method-assign]
