"""Every repository path the README and docs/ name exists, and the operations guide lists every migration,
so that the documentation follows the layout."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.paths import ROOT

DOCUMENTS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
#: ``dicom_node/jobs/store.py``, ``tests/bench/``, ``deploy/install.sh``: a top-level folder of the repository
#: and what follows it, up to the first character that cannot be part of a path.
_FOLDERS = "dicom_node|conversion|inference|config|tests|deploy|docs|scripts"
_PATH = re.compile(rf"(?<![\w./-])((?:{_FOLDERS})/[\w./-]*)")


def named_paths(text: str) -> set[str]:
    """The repository paths a document names (trailing sentence punctuation dropped)."""
    return {match.rstrip(".,:;") for match in _PATH.findall(text)}


def test_named_paths_are_found_in_text() -> None:
    text = "see `dicom_node/jobs/store.py`, tests/bench/ and deploy/install.sh. Not my_config/x.py."
    assert named_paths(text) == {"dicom_node/jobs/store.py", "tests/bench/", "deploy/install.sh"}


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_named_path_exists(document: Path) -> None:
    missing = sorted(p for p in named_paths(document.read_text(encoding="utf-8")) if not (ROOT / p).exists())
    assert not missing, f"{document.relative_to(ROOT)} names paths that do not exist: {', '.join(missing)}"


def test_the_operations_guide_lists_every_migration() -> None:
    versions = ROOT / "dicom_node" / "audit" / "migrations" / "versions"
    shipped = {p.stem for p in versions.glob("[0-9][0-9][0-9][0-9]_*.py")}
    listed = set(re.findall(r"`(\d{4}_\w+)`", (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")))
    assert shipped and listed == shipped, f"docs/operations.md: {sorted(listed)}; shipped: {sorted(shipped)}"
