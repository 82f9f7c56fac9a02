"""Backbones: graph -> per-atom features. `BACKBONES` maps a short name to its class."""

from mlip.models.backbones.base import Backbone, BackboneInputs, NodeFeatures
from mlip.models.backbones.facet import FacetBackbone
from mlip.models.backbones.mace import MACEBackbone
from mlip.models.backbones.transip import TransIPBackbone

BACKBONES: dict[str, type[Backbone]] = {
    "mace": MACEBackbone,
    "facet": FacetBackbone,
    "transip": TransIPBackbone,
}

__all__ = ["BACKBONES", "Backbone", "BackboneInputs", "FacetBackbone", "MACEBackbone", "NodeFeatures", "TransIPBackbone"]
