"""The interface between `Potential` and every backbone, and the contract the base class enforces.

A backbone turns a batch of neighbour graphs into per-atom features. It knows nothing about
energies, forces, units or reference energies: those live in `mlip.models.potential.Potential`.

The contract (docs/models.md, "Adding a backbone"):

* The constructor takes the keywords ``num_elements``, ``cutoff`` (Å) and ``condition_dim``
  (0: no charge/spin input) plus the backbone's own hyperparameters, all plain data.
  `Backbone` records the arguments of the constructor call as ``config`` (with ``_target_``,
  the class path) and stores ``num_elements``, ``cutoff`` and ``condition_dim``; a subclass
  writes neither.
* Initial node features come from `NodeEmbedding` (species embedding plus a bias-free linear
  map of the charge/spin condition), the one conditioning rule for every backbone.
* A backbone owns the radial basis it shares between layers (layers get the evaluated basis).
* ``supports_edge_weights = True`` declares that the backbone scales each edge's contribution
  by ``BackboneInputs.edge_weights`` (an edge of weight 0 contributes as if it were absent);
  `Potential`'s inner cutoff needs it.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

import torch


def class_path(cls: type) -> str:
    """``"module.QualifiedName"``: how a backbone's `_target_` names its class."""
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass
class BackboneInputs:
    species: torch.Tensor  # (n_atoms,) long, index into the model's element list
    edge_index: torch.Tensor  # (2, n_edges) long: [0] = neighbour j (sender), [1] = centre i (receiver)
    edge_vectors: torch.Tensor  # (n_edges, 3) Å, r_j - r_i (+ periodic shift); differentiable
    batch: torch.Tensor  # (n_atoms,) long, graph index of each atom
    num_graphs: int
    node_condition: torch.Tensor | None = None  # (n_atoms, condition_dim) charge/spin embedding
    pos: torch.Tensor | None = None  # (n_atoms, 3) Å (strained when stress is computed)
    cell: torch.Tensor | None = None  # (n_graphs, 3, 3) Å (strained when stress is computed)
    shifts: torch.Tensor | None = None  # (n_edges, 3) integer cell-image multiples
    # (n_edges,) in [0, 1], or None (every edge counts fully): how much each edge counts for the
    # learned model (`Potential`'s inner cutoff). A backbone that declares `supports_edge_weights`
    # multiplies everything an edge contributes by it, so an edge of weight 0 acts as if absent.
    edge_weights: torch.Tensor | None = None


@dataclass
class NodeFeatures:
    scalars: torch.Tensor  # (n_atoms, num_scalar_features), rotation invariant
    vectors: torch.Tensor | None = None  # (n_atoms, num_vector_features, 3), rotate with the structure


CONTRACT_KEYWORDS = ("num_elements", "cutoff", "condition_dim")


def _plain_copy(value: Any) -> Any:
    """Tuples as lists, recursively (configs are JSON-friendly); other values unchanged."""
    if isinstance(value, (list, tuple)):
        return [_plain_copy(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain_copy(item) for key, item in value.items()}
    return value


def _config_of(cls: type, signature: inspect.Signature, arguments: dict[str, Any]) -> dict[str, Any]:
    """``{"_target_": class path, argument: value, ...}`` of a constructor call; checks the contract keywords."""
    config: dict[str, Any] = {"_target_": class_path(cls)}
    for name, value in list(arguments.items())[1:]:  # skip self
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            config.update(_plain_copy(value))
        elif kind is not inspect.Parameter.VAR_POSITIONAL:
            config[name] = _plain_copy(value)
    missing = [name for name in CONTRACT_KEYWORDS if name not in config]
    if missing:
        raise TypeError(f"{cls.__name__}: the backbone contract needs the keywords {', '.join(missing)}")
    num_elements, cutoff, condition_dim = (config[name] for name in CONTRACT_KEYWORDS)
    if isinstance(num_elements, bool) or int(num_elements) != num_elements or num_elements < 1:
        raise ValueError(f"{cls.__name__}: num_elements must be an integer >= 1, got {num_elements!r}")
    if not float(cutoff) > 0:
        raise ValueError(f"{cls.__name__}: cutoff must be positive, got {cutoff!r} Å")
    if isinstance(condition_dim, bool) or int(condition_dim) != condition_dim or condition_dim < 0:
        raise ValueError(f"{cls.__name__}: condition_dim must be an integer >= 0, got {condition_dim!r}")
    config.update(num_elements=int(num_elements), cutoff=float(cutoff), condition_dim=int(condition_dim))
    return config


class NodeEmbedding(torch.nn.Module):
    """Initial scalar node features of every backbone: h_i = E[Z_i] + W c_i.

    E is a learned species table (num_elements, width); W a *bias-free* linear map of the
    charge/spin condition c_i (condition_dim). The rule, the same for every backbone:

    * no bias: a bias would only add the same vector to every species' row of E;
    * ``condition_dim > 0`` needs a condition (ValueError for None: `Potential` always passes
      one, charge 0 / multiplicity 1 when the batch has none), ``condition_dim = 0`` refuses one,
      and the condition's width must equal ``condition_dim``.
    """

    def __init__(self, num_elements: int, width: int, condition_dim: int = 0):
        super().__init__()
        self.condition_dim = int(condition_dim)
        self.species = torch.nn.Embedding(int(num_elements), int(width))
        self.condition = torch.nn.Linear(self.condition_dim, int(width), bias=False) if self.condition_dim > 0 else None

    def forward(self, species: torch.Tensor, node_condition: torch.Tensor | None) -> torch.Tensor:
        """species (n,) long, node_condition (n, condition_dim) or None -> (n, width)."""
        features = self.species(species)
        if self.condition is None:
            if node_condition is not None:
                raise ValueError("NodeEmbedding: got node_condition but the backbone was built with condition_dim=0")
            return features
        if node_condition is None:
            raise ValueError(
                f"NodeEmbedding: the backbone was built with condition_dim={self.condition_dim} but got "
                "node_condition=None (Potential passes one whenever charge_spin_conditioning is on)"
            )
        if node_condition.shape[-1] != self.condition_dim:
            raise ValueError(
                f"NodeEmbedding: node_condition has width {node_condition.shape[-1]}, expected {self.condition_dim}"
            )
        return features + self.condition(node_condition)


class Backbone(torch.nn.Module):
    """Base class of every backbone (see the module docstring for the contract).

    Subclasses define ``__init__(self, num_elements, cutoff, condition_dim=0, **their own keywords)``
    (calling ``super().__init__()``), set ``num_scalar_features`` / ``num_vector_features`` and
    implement ``forward``. After construction the instance has ``num_elements`` (int), ``cutoff``
    (float, Å), ``condition_dim`` (int) and ``config``: ``{"_target_": class path, every
    constructor argument with defaults filled in}`` (updated by `resolved_hyperparameters`), from
    which the same architecture is rebuilt.
    """

    num_scalar_features: int
    num_vector_features: int = 0
    supports_edge_weights: bool = False  # see BackboneInputs.edge_weights
    num_elements: int
    cutoff: float
    condition_dim: int
    config: dict[str, Any]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_records_backbone_config", False):
            return
        signature = inspect.signature(init)
        any_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
        missing = [name for name in CONTRACT_KEYWORDS if name not in signature.parameters]
        if missing and not any_keyword:  # with **kwargs, checked at construction
            raise TypeError(f"{cls.__qualname__}.__init__ must take the keywords {', '.join(CONTRACT_KEYWORDS)}; "
                            f"it lacks {', '.join(missing)}")

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            config = _config_of(type(self), signature, bound.arguments)  # checked before anything is built
            init(self, *args, **kwargs)
            if type(self).__init__ is __init__:  # the outermost constructor of this instance records
                self.num_elements, self.cutoff = config["num_elements"], config["cutoff"]
                self.condition_dim = config["condition_dim"]
                config.update(_plain_copy(self.resolved_hyperparameters()))
                self.config = config

        __init__._records_backbone_config = True
        cls.__init__ = __init__

    def resolved_hyperparameters(self) -> dict[str, Any]:
        """Values that arguments meaning "the default" (None, "auto") resolved to, recorded in
        ``config`` instead of the placeholder, so that a model file keeps its architecture even if
        a later version changes such a default. Override when the constructor resolves any."""
        return {}

    def element_axes(self) -> dict[str, int]:
        """The backbone's tensors indexed by species: state-dict name (relative to the backbone)
        -> the axis that runs over the model's elements. The shared `NodeEmbedding` table is one;
        a backbone with per-element weights of its own adds them (see `expand_element_tensor`)."""
        return {"embedding.species.weight": 0}

    def expand_element_tensor(
        self, name: str, source_tensor: torch.Tensor, initial: torch.Tensor, source: Backbone
    ) -> torch.Tensor:
        """Tensor ``name`` of this backbone, built for more elements than ``source`` (the same
        architecture, whose species are the first ``source.num_elements`` of this one's), from
        ``source``'s value: the known elements' slices are ``source_tensor``'s, exactly; the new
        elements keep ``initial`` (this backbone's fresh initialisation).

        Used to fine-tune a model on data with new elements (`mlip.models.elements`). The default
        handles the tensors of `element_axes`; a backbone whose per-element weights are not a plain
        axis (e.g. folded into a tensor product's flat weights) overrides this. Raises ValueError
        for a tensor that changed shape and that the backbone does not say how to expand.
        """
        axis = self.element_axes().get(name)
        if axis is None:
            raise ValueError(
                f"{type(self).__name__}: tensor {name} {tuple(source_tensor.shape)} -> {tuple(initial.shape)} changes "
                "shape with the number of elements, but the backbone does not say how to expand it (element_axes / "
                "expand_element_tensor)"
            )
        if source_tensor.shape[axis] != source.num_elements or initial.shape[axis] != self.num_elements:
            raise ValueError(
                f"{type(self).__name__}: tensor {name} axis {axis} has sizes {source_tensor.shape[axis]} -> "
                f"{initial.shape[axis]}, not the element counts {source.num_elements} -> {self.num_elements}"
            )
        expanded = initial.detach().clone()
        expanded.narrow(axis, 0, source.num_elements).copy_(source_tensor)
        return expanded

    def forward(self, inputs: BackboneInputs) -> NodeFeatures:  # pragma: no cover - interface
        raise NotImplementedError
