"""Learning rotational symmetry instead of building it in (for non-equivariant backbones).

Tools for training a model such as `TransIPBackbone` (see docs/transip.md):

- `random_rotations`: uniform rotations of SO(3) (Haar measure, via unit quaternions).
- `rotate_batch`: a rotated copy of a graph batch, labels rotated consistently.
- `rotation_augmentation`: a randomly rotated copy of a batch (plain data augmentation).
- `LearnedEquivarianceLoss`: the TransIP embedding loss (options: feature-mean or -sum reduction,
  weight warm-up, stop-gradient target, reuse of the main forward pass, InfoNCE level). Two rotated copies of every
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
class capture_embeddings:
    """Context manager: records the per-atom scalar embeddings (n, F) of every forward pass of
    ``potential.backbone`` inside the ``with`` block (``.embeddings``, in call order)."""

    def __init__(self, potential: torch.nn.Module):
        self.potential = potential
        self.embeddings: list[torch.Tensor] = []
        self._handle = None

    def __enter__(self) -> "capture_embeddings":
        self._handle = self.potential.backbone.register_forward_hook(
            lambda module, args, output: self.embeddings.append(output.scalars)
        )
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def node_embeddings(potential: torch.nn.Module, batch) -> torch.Tensor:
    """Per-atom backbone embeddings (n, F) of `batch`, through the potential's own input path.

    Runs `potential(batch, compute_forces=False)` and captures `potential.backbone`'s scalar
    output with a forward hook, so the embedding sees exactly what the energy readout sees
    (species lookup, charge/spin conditioning, edge vectors). Gradients flow to the parameters.
    """
    with capture_embeddings(potential) as captured:
        potential(batch, compute_forces=False, compute_stress=False)
    return captured.embeddings[-1]


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


LEVELS = ("graph", "atom")
DEFAULT_WARMUP_FRACTION = 0.1  # of the run's optimiser steps, when neither warm-up option is given
CONTRASTIVE_LEVELS = {"structure": "graph", "graph": "graph", "atom": "atom"}  # "graph" = "structure"


class LearnedEquivarianceLoss(torch.nn.Module):
    """TransIP embedding loss: rotated copies of a structure must have related embeddings.

    For each structure draw R1, R2 uniformly; embed both rotated copies (layer-normalised,
    without affine, so shrinking the embeddings cannot reduce the loss); then

        loss = w(step) · [ mean D(T(z1, R2 R1ᵀ), z2) + contrastive_weight · InfoNCE ]

    with D the squared distance averaged (``reduction="mean"``) or summed (``"sum"``) over the F
    features, averaged over structures or atoms, and w(step) the weight ramped up linearly from 0.

    Args:
        embedding_dim: width F of the backbone embeddings (`backbone.num_scalar_features`).
        weight: overall factor of the returned loss (after the warm-up).
        level: "graph" compares per-structure mean embeddings; "atom" compares every atom.
        transform: "learned" (T, conditioned on R2 R1ᵀ, trained jointly; only used in training)
            or "identity" (plain invariance of the embeddings).
        hidden: hidden width of T.
        contrastive_weight: factor of the InfoNCE term (0: off). Positives: T(z1_i) and z2_i;
            negatives: z2 of the other items of the batch. Needs >= 2 of them.
        temperature: InfoNCE temperature (cosine similarities are divided by it).
        reduction: "mean" (default; independent of the width F) or "sum" (the old behaviour,
            grows with F) of the squared distance over the features.
        warmup_steps: the weight rises linearly from 0 at optimiser step 0 to `weight` at this
            step (0: no warm-up). Only applied when `forward` is given `step` (training does).
        warmup_fraction: the same as a fraction of the run's optimiser steps (`forward` needs
            `total_steps`). Give at most one of the two; neither: warmup_fraction=0.1.
        stop_gradient_target: detach the target copy z2 (no gradient flows through it; with
            `reuse_main_pass` its forward pass then runs without autograd).
        reuse_main_pass: the caller passes the training step's own embeddings (`main_embeddings`)
            as copy 1 (rotation R1 = the orientation the main pass saw), so only copy 2, the
            batch rotated once more by R2, needs an extra forward pass; T gets R2 (default True;
            False: two extra passes at independent R1, R2, the old behaviour). Only the training
            module passes `main_embeddings`; called without them the loss makes both passes.
        contrastive_level: "structure" (per-structure mean embeddings; negatives are the other
            structures of the batch) or "atom"; None: the same as `level`.

    `forward(potential, batch, generator=None, step=None, total_steps=None, main_embeddings=None,
    rotations=None)` returns (loss, {"equivariance_mse": ..., "equivariance_infonce": ...}) with
    detached terms for logging. T's parameters must be given to the optimiser together with the
    potential's.
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
        reduction: str = "mean",
        warmup_steps: int | None = None,
        warmup_fraction: float | None = None,
        stop_gradient_target: bool = False,
        reuse_main_pass: bool = True,
        contrastive_level: str | None = None,
    ):
        super().__init__()
        if level not in LEVELS:
            raise ValueError(f"LearnedEquivarianceLoss: level must be 'graph' or 'atom', got {level!r}")
        if transform not in ("learned", "identity"):
            raise ValueError(f"LearnedEquivarianceLoss: transform must be 'learned' or 'identity', got {transform!r}")
        if temperature <= 0:
            raise ValueError(f"LearnedEquivarianceLoss: temperature must be positive, got {temperature}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"LearnedEquivarianceLoss: reduction must be 'mean' or 'sum', got {reduction!r}")
        if warmup_steps is not None and warmup_fraction is not None:
            raise ValueError("LearnedEquivarianceLoss: give warmup_steps or warmup_fraction, not both")
        if warmup_steps is None and warmup_fraction is None:
            warmup_fraction = DEFAULT_WARMUP_FRACTION
        if int(warmup_steps or 0) < 0 or not 0.0 <= float(warmup_fraction or 0.0) <= 1.0:
            raise ValueError(
                f"LearnedEquivarianceLoss: warmup_steps must be >= 0 and warmup_fraction in [0, 1], "
                f"got {warmup_steps} and {warmup_fraction}"
            )
        if contrastive_level is not None and contrastive_level not in CONTRASTIVE_LEVELS:
            raise ValueError(
                f"LearnedEquivarianceLoss: contrastive_level must be 'structure', 'atom' or null, got {contrastive_level!r}"
            )
        self.weight = float(weight)
        self.level = level
        self.contrastive_weight = float(contrastive_weight)
        self.temperature = float(temperature)
        self.reduction = reduction
        self.warmup_steps = int(warmup_steps or 0)
        self.warmup_fraction = float(warmup_fraction or 0.0)
        self.stop_gradient_target = bool(stop_gradient_target)
        self.reuse_main_pass = bool(reuse_main_pass)
        self.contrastive_level = level if contrastive_level is None else CONTRASTIVE_LEVELS[contrastive_level]
        self.transform = RotationConditionedMap(embedding_dim, hidden) if transform == "learned" else None

    def weight_at(self, step: int | None = None, total_steps: int | None = None) -> float:
        """The weight at optimiser step `step` (0-based): linear from 0 to `weight` over the
        warm-up; `weight` when `step` is None or there is no warm-up."""
        if step is None:
            return self.weight
        length = float(self.warmup_steps)
        if self.warmup_fraction:
            if total_steps is None:
                raise ValueError("LearnedEquivarianceLoss: warmup_fraction needs total_steps")
            length = self.warmup_fraction * float(total_steps)
        if length <= 0:
            return self.weight
        return self.weight * min(1.0, float(step) / length)

    def forward(
        self,
        potential: torch.nn.Module,
        batch,
        generator: torch.Generator | None = None,
        step: int | None = None,
        total_steps: int | None = None,
        main_embeddings: torch.Tensor | None = None,
        rotations: tuple[torch.Tensor | None, torch.Tensor] | None = None,
    ):
        """`main_embeddings` (n, F): the raw backbone embeddings of `batch` as it is (copy 1, R1 =
        identity relative to `batch`; one extra pass). `rotations`: (R1, R2), each (G, 3, 3),
        instead of random ones (R1 is ignored with `main_embeddings`)."""
        count = num_graphs(batch)
        dtype, device = batch.pos.dtype, batch.pos.device
        if rotations is None:
            first = None if main_embeddings is not None else random_rotations(count, dtype, device, generator)
            second = random_rotations(count, dtype, device, generator)
        else:
            first, second = rotations
        if main_embeddings is not None:
            first = torch.eye(3, dtype=dtype, device=device).expand(count, 3, 3)
            copy_one = main_embeddings
        else:
            copy_one = node_embeddings(potential, rotate_batch(batch, first))
        second_batch = rotate_batch(batch, second)
        if self.stop_gradient_target:
            with torch.no_grad():
                copy_two = node_embeddings(potential, second_batch).detach()
        else:
            copy_two = node_embeddings(potential, second_batch)
        relative = second @ first.transpose(-1, -2)  # (G, 3, 3): maps copy 1 onto copy 2

        atoms = [self._normalise(potential, z) for z in (copy_one, copy_two)]  # (n, F) each
        index = graph_index(batch)
        pooled = {}

        def pair(level):
            if level not in pooled:
                if level == "atom":
                    first_items, target, rotation = atoms[0], atoms[1], relative[index]
                else:
                    first_items, target = (graph_mean(z, index, count) for z in atoms)
                    rotation = relative
                predicted = first_items if self.transform is None else self.transform(first_items, rotation)
                pooled[level] = (predicted, target)
            return pooled[level]

        predicted, target = pair(self.level)
        squared = (predicted - target).pow(2)
        mse = (squared.mean(dim=-1) if self.reduction == "mean" else squared.sum(dim=-1)).mean()
        loss = mse
        terms = {"equivariance_mse": mse.detach()}
        if self.contrastive_weight > 0:
            infonce = info_nce(*pair(self.contrastive_level), self.temperature)
            loss = loss + self.contrastive_weight * infonce
            terms["equivariance_infonce"] = infonce.detach()
        weight = self.weight_at(step, total_steps)
        if step is not None:
            terms["equivariance_weight"] = torch.tensor(weight)
        return weight * loss, terms

    def _normalise(self, potential: torch.nn.Module, embeddings: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(embeddings, (embeddings.shape[-1],))


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
