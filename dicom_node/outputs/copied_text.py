"""The text of attributes copied from a source into a derived object, in a Specific Character Set that
holds it.

The bytes of text VRs (SH, LO, ST, LT, PN, UC, UT) are in the source's Specific Character Set, which real
exports often leave out (a German name in Latin-1 with no declaration), misspell (``ISO_IR_100``,
``ISO-8859-1``, ``UTF-8``), give as ``ISO_IR 6`` (the default repertoire, declared by absence) or contradict
(UTF-8 bytes under ``ISO_IR 100``). :func:`fix_character_set` decodes every copied text value: with the
declared character set where it holds the bytes (for ISO 8859 without C1 controls), else as UTF-8 where the
bytes are valid UTF-8, else as ISO 8859-1; and declares ``ISO_IR 100`` when Latin-1 holds all copied text,
else ``ISO_IR 192``. Every decision is noted (keyword and rule, never the text).
"""

from __future__ import annotations

import codecs
import copy
import re
from collections.abc import Callable, Iterable, Iterator, Sequence

from pydicom import charset as dicom_charset
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from dicom_node.outputs import attribute_values as values

#: ``note(keyword, problem, action)``: how corrections are reported.
Note = Callable[[str, str, str], None]

#: Specific Character Set terms a derived object may declare: known to pydicom (it encodes the text) and to
#: highdicom (it refuses others).
DECLARABLE_CHARSETS = frozenset(dicom_charset.python_encoding) - {"", "ISO_IR 6", "ISO 2022 58"}

#: Spellings of character sets seen in exports instead of the Defined Terms of PS3.3 C.12.1.1.2 (after
#: upper-casing and removing everything but letters and digits).
_CHARSET_ALIASES = {
    "ISO88591": "ISO_IR 100",
    "LATIN1": "ISO_IR 100",
    "ISOLATIN1": "ISO_IR 100",
    "UTF8": "ISO_IR 192",
    "ASCII": "",
    "ISOIR6": "",
    "USASCII": "",
}


def _squash(term: str) -> str:
    return re.sub(r"[^A-Z0-9]", "", term.upper())


_BY_SQUASHED = {_squash(term): term for term in DECLARABLE_CHARSETS} | _CHARSET_ALIASES


def normalise_charset_term(term: str) -> str | None:
    """A Specific Character Set term as PS3.3 spells it (``''`` for the default repertoire), or ``None``."""
    stripped = term.strip()
    if stripped in DECLARABLE_CHARSETS:
        return stripped
    return _BY_SQUASHED.get(_squash(stripped))


_C1_CONTROLS = re.compile("[\x80-\x9f]")


def decodes_strictly(data: bytes, terms: Sequence[str]) -> str | None:
    """``data`` decoded with the declared terms, or ``None`` when it does not decode without loss."""
    if data.isascii():
        return data.decode("ascii")
    if not terms or not any(terms):
        return None
    if len(terms) == 1:
        try:
            text = data.decode(dicom_charset.python_encoding[terms[0]], errors="strict")
        except (UnicodeDecodeError, LookupError):
            return None
        # ISO 8859 decodes any byte, but 0x80-0x9F (C1 controls) are outside the repertoire (PS3.5 6.1.2.5.2):
        # such bytes are text in another encoding (UTF-8 read as Latin-1 is the usual case).
        return None if _C1_CONTROLS.search(text) else text
    # ISO 2022 code extensions: pydicom switches on the escape sequences (lenient; replacement = loss).
    text = dicom_charset.decode_bytes(data, list(terms), set())
    return None if "\ufffd" in text else text


def guess_decode(data: bytes) -> tuple[str, str]:
    """Text of undeclared bytes: UTF-8 when the bytes are valid UTF-8, else ISO 8859-1 (never fails)."""
    try:
        return codecs.decode(data, "utf-8", errors="strict"), "UTF-8"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "ISO 8859-1"


def charset_for(texts: Sequence[str]) -> str | None:
    """The Specific Character Set that holds every text: none (ASCII), ISO_IR 100 (Latin-1) or ISO_IR 192."""
    if all(t.isascii() for t in texts):
        return None
    try:
        for text in texts:
            text.encode("latin-1")
    except UnicodeEncodeError:
        return "ISO_IR 192"
    return "ISO_IR 100"


def _text_elements(dataset: Dataset, tags: Iterable[BaseTag]) -> Iterator[tuple[Dataset, BaseTag]]:
    """(dataset, tag) of every text element among ``tags`` and in their sequences' items."""
    for tag in tags:
        if tag not in dataset:
            continue
        element = dataset.get_item(tag)
        vr = element.VR if element.VR and element.VR != "UN" else values.dictionary_vr(tag)
        if vr == "SQ":
            try:
                items = dataset[tag].value
            except (ValueError, TypeError, KeyError):
                continue
            for item in items:
                yield from _text_elements(item, [t for t in item.keys() if not t.is_private])
        elif vr in values.TEXT_VRS:
            yield dataset, tag


def _declared_terms(ds: Dataset, note: Note) -> list[str]:
    """The source's Specific Character Set as Defined Terms (``[]``: the default repertoire); misspelt
    terms are respelt, unknown ones ignored (noted)."""
    if "SpecificCharacterSet" not in ds:
        return []
    found = values.string_values(ds.get_item(0x00080005), "CS")
    raw_terms = [t.strip() for t in found] if isinstance(found, list) else ["?"]
    terms = [normalise_charset_term(t) for t in raw_terms]
    clean = [t for t in terms if t is not None]
    if len(clean) < len(terms):
        note("SpecificCharacterSet", "not a Defined Term of PS3.3 C.12.1.1.2", "ignored")
        return []
    if not any(clean):
        if raw_terms and any(raw_terms):
            note("SpecificCharacterSet", "names the default repertoire", "removed (default by absence)")
        return []
    if clean != raw_terms:
        note("SpecificCharacterSet", "not spelt as the Defined Term", "respelt")
    return clean


def _decode_texts(
    dataset: Dataset, tags: list[BaseTag], terms: list[str]
) -> tuple[list[tuple[Dataset, BaseTag, str]], dict[str, str]]:
    """The text of every copied text element, and keyword -> how it was decoded where the declared
    character set does not hold its bytes."""
    texts: list[tuple[Dataset, BaseTag, str]] = []
    redecoded: dict[str, str] = {}
    for holder, tag in _text_elements(dataset, tags):
        element = holder.get_item(tag)
        if not isinstance(element, RawDataElement):
            found = values.string_values(element, values.dictionary_vr(tag) or "LO")
            texts.append((holder, tag, "\\".join(found) if isinstance(found, list) else ""))
            continue
        data = bytes(element.value or b"")
        text = decodes_strictly(data, terms)
        if text is None:
            text, how = guess_decode(data)
            redecoded[keyword_for_tag(tag) or str(tag)] = how
        texts.append((holder, tag, text))
    return texts, redecoded


def fix_character_set(ds: Dataset, copied: Iterable[BaseTag], note: Note) -> None:
    """Decode the text of the ``copied`` elements of ``ds`` (and of their sequences' items) and replace the
    elements by their decoded values; where the declared character set does not hold the bytes, decode as
    UTF-8 or Latin-1 and declare the character set that holds all copied text. ``note(keyword, problem,
    action)`` is told every correction."""
    had = "SpecificCharacterSet" in ds
    tags = [tag for tag in copied if tag in ds]
    # Sequences are copied before their items' text is replaced (the source header stays as it was).
    for tag in tags:
        if values.dictionary_vr(tag) == "SQ":
            try:
                ds[tag] = copy.deepcopy(ds[tag])
            except (ValueError, TypeError, KeyError):
                continue
    terms = _declared_terms(ds, note)
    texts, redecoded = _decode_texts(ds, tags, terms)
    target: list[str] | None = terms or None
    if redecoded or (not terms and not all(text.isascii() for _, _, text in texts)):
        chosen = charset_for([text for _, _, text in texts])
        target = [chosen] if chosen else None
        for keyword, how in redecoded.items():
            what = "text not in the declared character set" if terms else "non-ASCII text, no character set"
            note(keyword, what, f"decoded as {how}")
        if target is not None:
            problem = "does not hold the copied text" if terms else "missing for non-ASCII text"
            note("SpecificCharacterSet", problem, f"declared {target[0]}")
    if target is None:
        if had:
            del ds.SpecificCharacterSet
    else:
        ds.SpecificCharacterSet = target[0] if len(target) == 1 else target
    for holder, tag, text in texts:
        vr = values.dictionary_vr(tag) or "LO"
        holder[tag] = DataElement(tag, vr, text if vr in ("LT", "ST", "UT") else text.rstrip(" "))
