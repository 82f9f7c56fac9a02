"""Models: the physical `Potential` wrapper (mlip.models.potential), its backbones
(mlip.models.backbones) and the builders (mlip.models.build)."""

from mlip.models.backbones import (
    BACKBONES,
    Backbone,
    BackboneInputs,
    FacetBackbone,
    MACEBackbone,
    NodeEmbedding,
    NodeFeatures,
    TransIPBackbone,
    register_backbone,
)
from mlip.models.build import (
    UnregisteredBackboneError,
    backbone_class,
    build_backbone,
    build_potential,
    check_keywords,
    default_dtype,
    potential_from_config,
    independent_copy,
    rebuild,
)
from mlip.models.conditioning import ChargeSpinEmbedding
from mlip.models.potential import Potential

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneInputs",
    "ChargeSpinEmbedding",
    "FacetBackbone",
    "MACEBackbone",
    "NodeEmbedding",
    "NodeFeatures",
    "Potential",
    "TransIPBackbone",
    "UnregisteredBackboneError",
    "backbone_class",
    "build_backbone",
    "build_potential",
    "check_keywords",
    "default_dtype",
    "potential_from_config",
    "independent_copy",
    "rebuild",
    "register_backbone",
]
