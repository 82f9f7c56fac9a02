"""Learning rotational symmetry instead of building it in (for non-equivariant backbones).

Tools for training a model such as `TransIPBackbone` (see docs/transip.md):

- `random_rotations`: uniform rotations of SO(3) (Haar measure, via unit quaternions).
- `rotate_batch`: a rotated copy of a graph batch, labels rotated consistently.
- `rotation_augmentation`: a randomly rotated copy of a batch (plain data augmentation).
- `LearnedEquivarianceLoss`: the TransIP embedding loss. Two randomly rotated copies of every
  structure are embedded; a small network T, conditioned on the relative rotation R2 R1ᵀ, must
  map the embedding of copy 1 onto that of copy 2 (MSE, optionally plus an InfoNCE term that
  uses the other structures of the batch as negatives). T starts as the identity, so a model
  whose embeddings are already invariant has zero loss.
- `energy_gradient_rotation_penalty`: mean squared derivative of the energy with respect to
  infinitesimal rotations (zero for a rotation-invariant energy).

All functions work on `torch_geometric` batches with the fields of docs/design.md and on any
`Potential`; rotations act on column vectors (r' = R r), i.e. row-vector arrays are multiplied
by Rᵀ on the right.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mlip.geometry import graph_index, num_graphs, random_rotations, rotate_batch, so3_generators

def rotation_augmentation(batch, generator: torch.Generator | None = None):
    """A copy of `batch` with every structure rotated by an independent uniform random rotation."""
    rotations = random_rotations(num_graphs(batch), batch.pos.dtype, batch.pos.device, generator)
    return rotate_batch(batch, rotations)


# ------------------------------------------------------------------------------- embeddings
def node_embeddings(potential: torch.nn.Module, batch) -> torch.Tensor:
    """Per-atom backbone embeddings (n, F) of `batch`, through the potential's own input path.

    Runs `potential(batch, compute_forces=False)` and captures `potential.backbone`'s scalar
    output with a forward hook, so the embedding sees exactly what the energy readout sees
    (species lookup, charge/spin conditioning, edge vectors). Gradients flow to the parameters.
    """
    captured: list[torch.Tensor] = []
    handle = potential.backbone.register_forward_hook(lambda module, args, output: captured.append(output.scalars))
    try:
        potential(batch, compute_forces=False, compute_stress=False)
    finally:
        handle.remove()
    return captured[-1]


def graph_mean(values: torch.Tensor, index: torch.Tensor, count: int) -> torch.Tensor:
    """Mean over the atoms of each graph: (n, F) -> (G, F)."""
    sums = values.new_zeros(count, values.shape[-1]).index_add(0, index, values)
    atoms = values.new_zeros(count).index_add(0, index, torch.ones_like(values[:, 0]))
    return sums / atoms.clamp(min=1)[:, None]


# ------------------------------------------------------------------------ learned equivariance
class RotationConditionedMap(torch.nn.Module):
    """T(h, R) = h + MLP([h ; vec(R)]): maps an embedding of a structure to the embedding of its
    rotated copy. The last layer starts at zero, so T starts as the identity map."""

    def __init__(self, embedding_dim: int, hidden: int = 64):
        super().__init__()
        self.network = torch.nn.Sequential(
            torch.nn.Linear(embedding_dim + 9, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, embedding_dim)
        )
        torch.nn.init.zeros_(self.network[-1].weight)
        torch.nn.init.zeros_(self.network[-1].bias)

    def forward(self, embeddings: torch.Tensor, relative_rotations: torch.Tensor) -> torch.Tensor:
        rotation_features = relative_rotations.reshape(embeddings.shape[0], 9).to(embeddings.dtype)
        return embeddings + self.network(torch.cat([embeddings, rotation_features], dim=-1))


class LearnedEquivarianceLoss(torch.nn.Module):
    """TransIP embedding loss: rotated copies of a structure must have related embeddings.

    For each structure draw R1, R2 uniformly; embed both rotated copies (layer-normalised,
    without affine, so shrinking the embeddings cannot reduce the loss); then

        loss = weight · [ mean ‖T(z1, R2 R1ᵀ) - z2‖² + contrastive_weight · InfoNCE ]

    (the squared distance is summed over the F features and averaged over structures or atoms).

    Args:
        embedding_dim: width F of the backbone embeddings (`backbone.num_scalar_features`).
        weight: overall factor of the returned loss.
        level: "graph" compares per-structure mean embeddings; "atom" compares every atom.
        transform: "learned" (T, conditioned on R2 R1ᵀ, trained jointly; only used in training)
            or "identity" (plain invariance of the embeddings).
        hidden: hidden width of T.
        contrastive_weight: factor of the InfoNCE term (0: off). Positives: T(z1_g) and z2_g;
            negatives: z2 of the other structures (or atoms) of the batch. Needs >= 2 of them.
        temperature: InfoNCE temperature (cosine similarities are divided by it).

    `forward(potential, batch, generator=None)` returns (loss, {"equivariance_mse": ...,
    "equivariance_infonce": ...}) with detached terms for logging. T's parameters must be given
    to the optimiser together with the potential's.
    """

    def __init__(
        self,
        embedding_dim: int,
        weight: float = 1.0,
        level: str = "graph",
        transform: str = "learned",
        hidden: int = 64,
        contrastive_weight: float = 0.0,
        temperature: float = 0.1,
    ):
        super().__init__()
        if level not in ("graph", "atom"):
            raise ValueError(f"LearnedEquivarianceLoss: level must be 'graph' or 'atom', got {level!r}")
        if transform not in ("learned", "identity"):
            raise ValueError(f"LearnedEquivarianceLoss: transform must be 'learned' or 'identity', got {transform!r}")
        if temperature <= 0:
            raise ValueError(f"LearnedEquivarianceLoss: temperature must be positive, got {temperature}")
        self.weight = float(weight)
        self.level = level
        self.contrastive_weight = float(contrastive_weight)
        self.temperature = float(temperature)
        self.transform = RotationConditionedMap(embedding_dim, hidden) if transform == "learned" else None

    def forward(self, potential: torch.nn.Module, batch, generator: torch.Generator | None = None):
        count = num_graphs(batch)
        dtype, device = batch.pos.dtype, batch.pos.device
        first = random_rotations(count, dtype, device, generator)  # (G, 3, 3)
        second = random_rotations(count, dtype, device, generator)
        embeddings = [self._embed(potential, rotate_batch(batch, rotations)) for rotations in (first, second)]
        relative = second @ first.transpose(-1, -2)  # (G, 3, 3): maps copy 1 onto copy 2
        if self.level == "atom":
            relative = relative[graph_index(batch)]
        predicted = embeddings[0] if self.transform is None else self.transform(embeddings[0], relative)
        target = embeddings[1]

        mse = (predicted - target).pow(2).sum(dim=-1).mean()  # squared distance per item
        loss = mse
        terms = {"equivariance_mse": mse.detach()}
        if self.contrastive_weight > 0:
            infonce = info_nce(predicted, target, self.temperature)
            loss = loss + self.contrastive_weight * infonce
            terms["equivariance_infonce"] = infonce.detach()
        return self.weight * loss, terms

    def _embed(self, potential: torch.nn.Module, batch) -> torch.Tensor:
        embeddings = F.layer_norm(node_embeddings(potential, batch), (potential.backbone.num_scalar_features,))
        if self.level == "atom":
            return embeddings
        return graph_mean(embeddings, graph_index(batch), num_graphs(batch))


def info_nce(predicted: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE over a batch (B, F): row b of `predicted` should match row b of `target` best."""
    if predicted.shape[0] < 2:
        raise ValueError("LearnedEquivarianceLoss: the InfoNCE term needs at least 2 items per batch")
    similarities = F.normalize(predicted, dim=-1) @ F.normalize(target, dim=-1).T / temperature  # (B, B)
    labels = torch.arange(predicted.shape[0], device=predicted.device)
    return F.cross_entropy(similarities, labels)


# ---------------------------------------------------------------------- infinitesimal rotations
def energy_gradient_rotation_penalty(potential: torch.nn.Module, batch) -> torch.Tensor:
    """Mean over structures and the three axes of (∂E/∂θ)² at θ = 0, eV²/rad².

    Positions and cell of structure g are rotated by exp(Σ_k θ_gk G_k); a rotation-invariant
    energy has ∂E/∂θ = 0 (it equals minus the total torque Σ_i r_i × F_i). The graph is kept
    (create_graph), so the penalty can be minimised.
    """
    count = num_graphs(batch)
    dtype = batch.pos.dtype
    angles = torch.zeros(count, 3, dtype=dtype, device=batch.pos.device, requires_grad=True)  # (G, 3) rad
    generators = so3_generators(dtype, batch.pos.device)
    with torch.enable_grad():
        rotations = torch.linalg.matrix_exp(torch.einsum("gk,kij->gij", angles, generators))
        energy = potential(rotate_batch(batch, rotations), compute_forces=False, training=True)["energy"]
        (gradient,) = torch.autograd.grad(energy.sum(), angles, create_graph=True)
    return gradient.pow(2).mean()
