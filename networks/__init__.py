"""Segmentation networks built on odekern: continuous U-Net with the Table 3 baselines, and
CNM-UNet with DUSE test-time adaptation. ``build_model`` is the entry point."""

from networks.duse import DUSEConfig
from networks.models import MODEL_NAMES, build_model

__all__ = ["MODEL_NAMES", "DUSEConfig", "build_model"]
