"""Segmentation networks built on odekern: continuous U-Net with the Table 3 baselines, and
CNM-UNet with DUSE test-time adaptation. ``build_model`` is the entry point; ``load_official``
brings weights over from the authors' code bases; ``networks.presets`` holds the papers'
training settings."""

from networks.duse import DUSEConfig
from networks.models import MODEL_NAMES, build_model
from networks.official import load_official

__all__ = ["MODEL_NAMES", "DUSEConfig", "build_model", "load_official"]
