"""monai-uda: domain-adaptive cell and nuclei segmentation as MONAI bundles."""

from __future__ import annotations

__version__ = "0.1.0"
