"""Models: the physical `Potential` wrapper and its backbones."""

from mlip.models.backbones import (
    BACKBONES,
    Backbone,
    BackboneInputs,
    FacetBackbone,
    MACEBackbone,
    NodeFeatures,
    TransIPBackbone,
)
from mlip.models.conditioning import ChargeSpinEmbedding
from mlip.models.potential import Potential, build_backbone, build_potential

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneInputs",
    "ChargeSpinEmbedding",
    "FacetBackbone",
    "MACEBackbone",
    "NodeFeatures",
    "Potential",
    "TransIPBackbone",
    "build_backbone",
    "build_potential",
]
