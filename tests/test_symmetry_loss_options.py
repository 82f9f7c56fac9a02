"""Options of the learned-equivariance loss (issue 15): feature-mean reduction, weight warm-up,
stop-gradient on the target copy, reuse of the main forward pass (one extra pass), per-structure
InfoNCE, and zero loss for an exactly equivariant embedding with the matching map."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from mlip.data.graph import structure_to_graph
from mlip.geometry import random_rotations, rotate_batch
from mlip.models.backbones import Backbone, NodeFeatures
from mlip.models.backbones.transip import TransIPBackbone
from mlip.train.module import PotentialModule
from mlip.train.symmetry import LearnedEquivarianceLoss, graph_mean, info_nce, node_embeddings
from tests.conftest import random_molecule
from tests.test_symmetry import CUTOFF, make_potential

WIDTH = 16


class DuplicatedTransIP(TransIPBackbone):
    """TransIP whose embeddings are returned twice side by side: (n, 2F), same weights."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.num_scalar_features = 2 * self.num_scalar_features

    def forward(self, inputs) -> NodeFeatures:
        scalars = super().forward(inputs).scalars
        return NodeFeatures(scalars=torch.cat([scalars, scalars], dim=-1))


class EdgeVectorSum(Backbone):
    """Exactly rotation-*equivariant* embeddings [v_i, -v_i], v_i = Σ_j u(r_ij) r_ij (mean zero
    over the 6 features, so the loss's layer norm keeps them equivariant)."""

    def __init__(self, num_elements: int, cutoff: float, condition_dim: int = 0):
        super().__init__()
        self.num_scalar_features = 6
        self.cutoff = cutoff
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, inputs) -> NodeFeatures:
        vectors = inputs.edge_vectors
        envelope = (1 - vectors.norm(dim=-1, keepdim=True) / self.cutoff).clamp(min=0) ** 2
        summed = torch.zeros(inputs.species.shape[0], 3, dtype=vectors.dtype).index_add(0, inputs.edge_index[1], envelope * vectors)
        summed = self.scale * summed
        return NodeFeatures(scalars=torch.cat([summed, -summed], dim=-1))


class RotateBlocks(torch.nn.Module):
    """The exact map for `EdgeVectorSum`: rotates both 3-vector blocks by the relative rotation."""

    def forward(self, embeddings, relative_rotations):
        first = torch.einsum("nij,nj->ni", relative_rotations, embeddings[:, :3])
        second = torch.einsum("nij,nj->ni", relative_rotations, embeddings[:, 3:])
        return torch.cat([first, second], dim=-1)


def molecules_batch(count: int = 4, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    graphs = [structure_to_graph(random_molecule(rng, numbers=(6, 1, 8, 1, 6)[: 3 + k % 3], spread=1.2), CUTOFF, torch.float64)
              for k in range(count)]
    return Batch.from_data_list(graphs)


def transip(**kwargs):
    return make_potential(TransIPBackbone, dim=WIDTH, depth=1, heads=2, num_fourier=8, **kwargs)


def fixed_rotations(count: int, seed: int = 5):
    generator = torch.Generator().manual_seed(seed)
    return random_rotations(count, torch.float64, generator=generator), random_rotations(count, torch.float64, generator=generator)


class CountingForwards:
    """Counts forward calls of a potential's backbone and records their outputs."""

    def __init__(self, potential):
        self.outputs = []
        self.handle = potential.backbone.register_forward_hook(lambda m, a, out: self.outputs.append(out.scalars))

    def close(self):
        self.handle.remove()


# ---------------------------------------------------------------------------------- reduction
@pytest.mark.parametrize("level", ["graph", "atom"])
def test_mean_reduction_does_not_grow_with_the_feature_width(level):
    narrow = transip()
    wide = make_potential(DuplicatedTransIP, dim=WIDTH, depth=1, heads=2, num_fourier=8)  # same seed, same weights
    batch, rotations = molecules_batch(), fixed_rotations(4)
    values = {}
    for reduction in ("mean", "sum"):
        for name, potential, width in (("narrow", narrow, WIDTH), ("wide", wide, 2 * WIDTH)):
            loss_fn = LearnedEquivarianceLoss(width, level=level, transform="identity", reduction=reduction)
            values[reduction, name] = float(loss_fn(potential, batch, rotations=rotations)[0].detach())
    assert values["mean", "narrow"] > 1e-4
    assert values["mean", "wide"] == pytest.approx(values["mean", "narrow"], rel=1e-10)
    assert values["sum", "wide"] == pytest.approx(2 * values["sum", "narrow"], rel=1e-10)  # the old sum doubles
    assert values["sum", "narrow"] == pytest.approx(WIDTH * values["mean", "narrow"], rel=1e-10)


# ---------------------------------------------------------------------------------- warm-up
def test_weight_warms_up_linearly_from_zero():
    loss_fn = LearnedEquivarianceLoss(WIDTH, weight=0.3, warmup_steps=100)
    assert loss_fn.weight_at(0) == 0.0
    assert loss_fn.weight_at(50) == pytest.approx(0.15)
    assert loss_fn.weight_at(100) == pytest.approx(0.3) and loss_fn.weight_at(5000) == pytest.approx(0.3)
    assert loss_fn.weight_at(None) == pytest.approx(0.3)  # outside training: the full weight
    by_fraction = LearnedEquivarianceLoss(WIDTH, weight=2.0, warmup_fraction=0.25)
    assert by_fraction.weight_at(0, total_steps=400) == 0.0
    assert by_fraction.weight_at(50, total_steps=400) == pytest.approx(1.0)
    assert by_fraction.weight_at(100, total_steps=400) == pytest.approx(2.0)
    assert LearnedEquivarianceLoss(WIDTH).warmup_fraction == 0.1  # the default
    assert LearnedEquivarianceLoss(WIDTH, warmup_steps=0).weight_at(0) == 1.0  # no warm-up: old behaviour
    with pytest.raises(ValueError, match="not both"):
        LearnedEquivarianceLoss(WIDTH, warmup_steps=10, warmup_fraction=0.1)
    with pytest.raises(ValueError, match="total_steps"):
        by_fraction.weight_at(3)


def test_warmed_up_loss_is_zero_at_step_zero_and_full_afterwards():
    potential, batch, rotations = transip(), molecules_batch(), fixed_rotations(4)
    loss_fn = LearnedEquivarianceLoss(WIDTH, weight=0.5, warmup_steps=10, level="atom").double()
    full = float(loss_fn(potential, batch, rotations=rotations)[0].detach())
    assert full > 1e-4
    assert float(loss_fn(potential, batch, rotations=rotations, step=0)[0].detach()) == 0.0
    assert float(loss_fn(potential, batch, rotations=rotations, step=10)[0].detach()) == pytest.approx(full, rel=1e-12)


# ---------------------------------------------------------------------------------- stop-gradient
@pytest.mark.parametrize("stop", [True, False])
def test_stop_gradient_blocks_the_target_branch(stop):
    potential, batch, rotations = transip(), molecules_batch(), fixed_rotations(4)
    loss_fn = LearnedEquivarianceLoss(WIDTH, level="atom", stop_gradient_target=stop).double()
    counter = CountingForwards(potential)
    loss, _ = loss_fn(potential, batch, rotations=rotations)
    counter.close()
    source, target = counter.outputs  # copy 1 (R1 x), then the target copy 2 (R2 x)
    reached = {}
    for name, output in (("source", source), ("target", target)):
        if output.requires_grad:
            output.register_hook(lambda grad, name=name: reached.__setitem__(name, float(grad.abs().sum())))
    loss.backward()
    assert reached["source"] > 0
    if stop:
        assert "target" not in reached and not target.requires_grad
    else:
        assert reached["target"] > 0


# ---------------------------------------------------------------------------------- reuse
def test_reused_main_pass_equals_the_explicit_pair_for_the_same_rotations():
    """Main pass at R1 x (augmentation) + one extra pass at R2' (R1 x): the same pair as the
    explicit two-pass loss at R1 x and R2 x with R2 = R2' R1, so the same loss value."""
    potential, batch = transip(), molecules_batch()
    first, second = fixed_rotations(4)
    loss_fn = LearnedEquivarianceLoss(WIDTH, level="atom", contrastive_weight=0.5, contrastive_level="structure").double()
    with torch.no_grad():  # give T a non-trivial map
        loss_fn.transform.network[-1].weight.normal_(0, 0.1)
    explicit, _ = loss_fn(potential, batch, rotations=(first, second))
    augmented = rotate_batch(batch, first)  # what the main pass sees
    main = node_embeddings(potential, augmented)
    counter = CountingForwards(potential)
    relative = second @ first.transpose(-1, -2)
    reused, _ = loss_fn(potential, augmented, main_embeddings=main, rotations=(None, relative))
    counter.close()
    assert len(counter.outputs) == 1  # one extra backbone pass
    assert float(reused.detach()) == pytest.approx(float(explicit.detach()), rel=1e-9)
    counter = CountingForwards(potential)
    loss_fn(potential, batch)
    counter.close()
    assert len(counter.outputs) == 2  # without the main pass's embeddings: two passes


@pytest.mark.parametrize("reuse", [True, False])
def test_training_step_makes_one_extra_backbone_pass_with_reuse(reuse):
    potential, batch = transip(dtype=torch.float64), molecules_batch()
    batch.energy = torch.zeros(4, dtype=torch.float64)
    batch.forces = torch.zeros_like(batch.pos)
    module = PotentialModule(potential, rotation_augmentation=True, ema_decay=None,
                             equivariance_loss={"weight": 0.1, "level": "atom", "reuse_main_pass": reuse, "warmup_steps": 0})
    module.equivariance_loss.double()
    counter = CountingForwards(potential)
    _, _, loss, terms = module.training_loss(batch)
    counter.close()
    assert len(counter.outputs) == (2 if reuse else 3)  # main pass + 1 (or + 2)
    assert float(terms["equivariance_mse"]) > 1e-4 and torch.isfinite(loss)
    loss.backward()
    assert potential.backbone.blocks[0].attention.direction_bias.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------- InfoNCE
def test_per_structure_infonce_is_small_for_matching_positives_and_large_when_shuffled():
    generator = torch.Generator().manual_seed(0)
    target = torch.randn(32, WIDTH, generator=generator, dtype=torch.float64)
    matching = target + 0.01 * torch.randn(32, WIDTH, generator=generator, dtype=torch.float64)
    shuffled = matching[torch.roll(torch.arange(32), 1)]
    assert float(info_nce(matching, target, 0.1)) < 0.1
    assert float(info_nce(shuffled, target, 0.1)) > np.log(32)


def test_structure_level_infonce_uses_the_other_structures_as_negatives():
    """Atom-level MSE with structure-level InfoNCE: an invariant backbone matches every
    structure to itself (small InfoNCE); the batch must hold >= 2 structures."""
    from tests.test_symmetry import DistanceOnlyBackbone

    potential, batch = make_potential(DistanceOnlyBackbone), molecules_batch(8)
    loss_fn = LearnedEquivarianceLoss(8, level="atom", contrastive_weight=1.0, contrastive_level="structure",
                                      temperature=0.05).double()
    _, terms = loss_fn(potential, batch)
    assert float(terms["equivariance_mse"]) < 1e-20
    assert float(terms["equivariance_infonce"]) < np.log(8)  # below chance: positives are the best match
    pooled = graph_mean(torch.nn.functional.layer_norm(node_embeddings(potential, batch), (8,)), batch.batch, 8)  # (8, F)
    expected = info_nce(pooled, pooled, 0.05)  # structures vs structures, not atoms vs atoms
    assert float(terms["equivariance_infonce"]) == pytest.approx(float(expected.detach()), rel=1e-9)
    single = Batch.from_data_list(batch.to_data_list()[:1])
    with pytest.raises(ValueError, match="InfoNCE"):
        loss_fn(potential, single)
    atom_level = LearnedEquivarianceLoss(8, level="graph", contrastive_weight=1.0, contrastive_level="atom").double()
    assert atom_level.contrastive_level == "atom" and torch.isfinite(atom_level(potential, single)[1]["equivariance_infonce"])
    with pytest.raises(ValueError, match="contrastive_level"):
        LearnedEquivarianceLoss(8, contrastive_level="edge")


# ---------------------------------------------------------------------------------- exact equivariance
@pytest.mark.parametrize("level", ["graph", "atom"])
def test_exactly_equivariant_embeddings_with_the_matching_map_give_zero_loss(level):
    potential, batch = make_potential(EdgeVectorSum), molecules_batch()
    loss_fn = LearnedEquivarianceLoss(6, level=level).double()
    loss_fn.transform = RotateBlocks()
    loss, _ = loss_fn(potential, batch, torch.Generator().manual_seed(1))
    assert float(loss.detach()) < 1e-20
    plain = LearnedEquivarianceLoss(6, level=level, transform="identity").double()  # not invariant: positive
    assert float(plain(potential, batch, torch.Generator().manual_seed(1))[0].detach()) > 1e-3
