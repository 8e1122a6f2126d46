"""``python -m dicom_node.cli``: the same as the ``segnode`` console script."""

from dicom_node.cli import main

raise SystemExit(main())
