"""Backbones: graph -> per-atom features. `BACKBONES` maps a short name to its class.

The registry is also the list of classes a model file may name (see `mlip.export`): a file
can only pick one of these, never make mlip import anything. Code of your own registers its
backbone with `register_backbone` (e.g. in the script that loads the model).
"""

from mlip.models.backbones.base import Backbone, BackboneInputs, NodeEmbedding, NodeFeatures, class_path
from mlip.models.backbones.facet import FacetBackbone
from mlip.models.backbones.mace import MACEBackbone
from mlip.models.backbones.transip import TransIPBackbone

BACKBONES: dict[str, type[Backbone]] = {
    "mace": MACEBackbone,
    "facet": FacetBackbone,
    "transip": TransIPBackbone,
}


def register_backbone(name: str, cls: type[Backbone]) -> None:
    """Add ``cls`` to `BACKBONES` under ``name``, so that model files may name it.

    Raises ValueError if ``cls`` is not a `Backbone` subclass or ``name`` is taken by another class.
    """
    if not (isinstance(cls, type) and issubclass(cls, Backbone)):
        raise ValueError(f"register_backbone: {cls!r} is not a subclass of mlip.models.backbones.Backbone")
    if BACKBONES.get(name, cls) is not cls:
        raise ValueError(f"register_backbone: the name {name!r} is already taken by {class_path(BACKBONES[name])}")
    BACKBONES[name] = cls


__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneInputs",
    "FacetBackbone",
    "MACEBackbone",
    "NodeEmbedding",
    "NodeFeatures",
    "TransIPBackbone",
    "class_path",
    "register_backbone",
]
