"""Job pipeline: moves a completed series' jobs through conversion, segmentation, encoding and sending.

Work in progress; the stages and workers land in the following commits.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)
