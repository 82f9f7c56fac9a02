"""Weighted training loss on energy per atom, forces and stress, with masks for missing labels.

Labels that are missing are NaN in the batch and flagged False in ``energy_mask``,
``forces_mask`` and ``stress_mask`` (one flag per structure). Every term selects the labelled
entries with the boolean masks before comparing, so a NaN never reaches the loss.
`nonfinite_structures` says which structures of a batch made a loss non-finite anyway (a NaN
prediction, e.g. from two coincident atoms, or a NaN in a label that is flagged present).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LossWeights:
    """The loss weights: the one source of their defaults (the training config's ``loss`` section
    is this dataclass, registered with Hydra by `mlip.train.build.register_configs`)."""

    energy: float = 1.0  # weight of the per-atom energy term, (eV/atom)^-2 for MSE
    forces: float = 10.0  # weight of the force term, (eV/Å)^-2 for MSE
    stress: float = 100.0  # weight of the stress term, (eV/Å³)^-2 for MSE
    direct_forces: float = 10.0  # weight of the direct-force head's term (only if the model has one)


@dataclass
class LossConfig:
    """Keywords of `PotentialLoss`; the schema and defaults of the training config's ``loss``."""

    kind: str = "mse"  # mse or huber
    huber_delta: float = 0.01  # huber: where the error turns from quadratic to linear (eV/atom, eV/Å, eV/Å³)
    weights: LossWeights = field(default_factory=LossWeights)


def elementwise_error(prediction: torch.Tensor, target: torch.Tensor, kind: str, huber_delta: float) -> torch.Tensor:
    """Mean of the squared (``mse``) or Huber (``huber``) error over all elements."""
    if prediction.numel() == 0:
        return prediction.sum() * 0.0  # keeps the graph connected when no label of this kind is present
    if kind == "mse":
        return torch.nn.functional.mse_loss(prediction, target)
    if kind == "huber":
        return torch.nn.functional.huber_loss(prediction, target, delta=huber_delta)
    raise ValueError(f"unknown loss kind {kind!r}; expected 'mse' or 'huber'")


def atoms_per_graph(batch) -> torch.Tensor:
    """(G,) number of atoms of every structure in the batch."""
    return torch.bincount(batch.batch, minlength=batch.num_graphs)


def labelled_pairs(predictions: dict, batch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Prediction/target pairs restricted to labelled entries, one per quantity.

    ``energy`` is per atom (eV/atom), ``forces`` and ``direct_forces`` (n_labelled_atoms, 3) eV/Å
    (both against the force labels), ``stress`` (n_labelled_structures, 3, 3) eV/Å³. Quantities
    the model did not predict are skipped.
    """
    pairs = {}
    n_atoms = atoms_per_graph(batch).to(predictions["energy"].dtype)
    energy_mask = batch.energy_mask.view(-1)
    pairs["energy"] = (
        predictions["energy"][energy_mask] / n_atoms[energy_mask],
        batch.energy.view(-1)[energy_mask] / n_atoms[energy_mask],
    )
    atom_mask = batch.forces_mask.view(-1)[batch.batch]  # (n,) structure flag broadcast to atoms
    for name in ("forces", "direct_forces"):  # conservative -dE/dr and the optional direct head
        if name in predictions:
            pairs[name] = (predictions[name][atom_mask], batch.forces[atom_mask])
    if "stress" in predictions:
        stress_mask = batch.stress_mask.view(-1)
        pairs["stress"] = (predictions["stress"][stress_mask], batch.stress.view(-1, 3, 3)[stress_mask])
    return pairs


class PotentialLoss(torch.nn.Module):
    """Σ_k w_k · error_k over energy per atom, forces and stress (labelled entries only)."""

    def __init__(self, weights: LossWeights | dict | None = None, kind: str = "mse", huber_delta: float = 0.01):
        super().__init__()
        if isinstance(weights, dict) or weights is None:
            weights = LossWeights(**(weights or {}))
        if kind not in ("mse", "huber"):
            raise ValueError(f"unknown loss kind {kind!r}; expected 'mse' or 'huber'")
        self.weights = weights
        self.kind = kind
        self.huber_delta = huber_delta

    def forward(self, predictions: dict, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns the total loss and the unweighted term of every quantity (for logging)."""
        terms = {
            name: elementwise_error(prediction, target, self.kind, self.huber_delta)
            for name, (prediction, target) in labelled_pairs(predictions, batch).items()
        }
        total = sum(getattr(self.weights, name) * term for name, term in terms.items())
        return total, terms


def nonfinite_structures(predictions: dict, batch) -> dict[int, list[str]]:
    """Structures of ``batch`` with a NaN or infinite value where the loss looks.

    Returns {graph index: [what, ...]}, e.g. ``{3: ["positions", "predicted energy"]}``, over the
    positions, every predicted quantity (energy, forces, direct_forces, stress) and the labels
    flagged present by the masks. Empty when every one of them is finite.
    """
    n_graphs = batch.num_graphs
    found: dict[int, list[str]] = {}

    def mark(bad: torch.Tensor, what: str, per_atom: bool) -> None:
        bad = bad.reshape(bad.shape[0], -1).any(dim=1) if bad.dim() > 1 else bad
        if per_atom:  # (n_atoms,) -> (n_graphs,)
            bad = torch.bincount(batch.batch[bad], minlength=n_graphs) > 0
        for index in torch.nonzero(bad).view(-1).tolist():
            found.setdefault(index, []).append(what)

    mark(~torch.isfinite(batch.pos), "positions", per_atom=True)
    for name, per_atom in (("energy", False), ("forces", True), ("direct_forces", True), ("stress", False)):
        if name in predictions:
            mark(~torch.isfinite(predictions[name].detach()), f"predicted {name}", per_atom)
    mark(~torch.isfinite(batch.energy.view(-1)) & batch.energy_mask.view(-1), "energy label", per_atom=False)
    atom_has_forces = batch.forces_mask.view(-1)[batch.batch]
    mark(~torch.isfinite(batch.forces).all(dim=1) & atom_has_forces, "forces label", per_atom=True)
    stress_bad = ~torch.isfinite(batch.stress.view(n_graphs, 9)).all(dim=1)
    mark(stress_bad & batch.stress_mask.view(-1), "stress label", per_atom=False)
    return dict(sorted(found.items()))
