"""Backbones: graph -> per-atom features. `BACKBONES` maps a short name to its class."""

from mlip.models.backbones.base import Backbone, BackboneInputs, NodeFeatures
from mlip.models.backbones.mace import MACEBackbone

BACKBONES: dict[str, type[Backbone]] = {
    "mace": MACEBackbone,
}

__all__ = ["BACKBONES", "Backbone", "BackboneInputs", "MACEBackbone", "NodeFeatures"]
