"""Models: the physical `Potential` wrapper and its backbones."""

from mlip.models.backbones import (
    BACKBONES,
    Backbone,
    BackboneInputs,
    MACEBackbone,
    NodeFeatures,
)
from mlip.models.conditioning import ChargeSpinEmbedding
from mlip.models.potential import Potential, build_backbone, build_potential

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneInputs",
    "ChargeSpinEmbedding",
    "MACEBackbone",
    "NodeFeatures",
    "Potential",
    "build_backbone",
    "build_potential",
]
