"""The ``segnode`` command in a new process: what an operator sees (exit code, stdout, stderr)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from tests.support.serve import node_environment


def run_segnode(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None, timeout_s: float = 300
) -> subprocess.CompletedProcess[str]:
    """``segnode ARGS`` (as ``python -m dicom_node.cli``) with this environment minus SegNode settings,
    plus ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        env=node_environment(env),
        cwd=cwd,
    )
