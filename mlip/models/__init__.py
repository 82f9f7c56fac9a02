"""Models: the physical `Potential` wrapper and its backbones."""

from mlip.models.backbones import (
    BACKBONES,
    Backbone,
    BackboneInputs,
    FacetBackbone,
    MACEBackbone,
    NodeFeatures,
    TransIPBackbone,
    register_backbone,
)
from mlip.models.conditioning import ChargeSpinEmbedding
from mlip.models.potential import Potential, UnregisteredBackboneError, build_backbone, build_potential

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
    "UnregisteredBackboneError",
    "build_backbone",
    "build_potential",
    "register_backbone",
]
