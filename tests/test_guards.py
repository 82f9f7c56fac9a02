"""Training never goes on silently with NaN: non-finite losses, gradients and weights.

A tiny MACE potential trains for a few steps on in-memory EMT clusters (tests/train_helpers.py).
The NaN is injected into the batch itself (two coincident atoms, which make the MACE-like
backbone return NaN, or a NaN label flagged present), so the data layer's own checks, which
refuse such structures in files, are not in the way.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader
from torch_geometric.loader.dataloader import Collater
from train_helpers import cluster_structures

from mlip.data.graph import structure_to_graph
from mlip.models.backbones.mace import MACEBackbone
from mlip.models.potential import Potential
from mlip.train.module import NonFiniteTrainingError, PotentialModule

CUTOFF = 4.0


def tiny_potential() -> Potential:
    torch.manual_seed(0)
    backbone = MACEBackbone(
        num_elements=2, cutoff=CUTOFF, condition_dim=4, num_channels=8, lmax=1, correlation=2,
        num_layers=1, radial_mlp=(16,), avg_num_neighbors=8.0,
    )
    return Potential(
        backbone, elements=[13, 29], atomic_energies=[-0.3, -0.1], scale=1.0, shift=0.0, cutoff=CUTOFF,
        charge_spin_conditioning=True, condition_dim=4, readout_hidden=(8,),
    )


def cluster_graphs(count: int = 6) -> list:
    """EMT-labelled 13-atom clusters with ids 'cluster-0' ... as graphs (float32)."""
    return [structure_to_graph(structure, CUTOFF) for structure in cluster_structures(count, seed=5)]


def make_coincident(graph) -> None:
    """Atom 1 on top of atom 0 (their edge stays in the graph, with length 0)."""
    graph.pos[1] = graph.pos[0]


def fit(module: PotentialModule, train_graphs: list, val_graphs: list | None = None, epochs: int = 1, callbacks=()):
    """Plain Lightning fit, batches of 2 structures in file order; returns the trainer."""
    def loader(graphs):
        return DataLoader(graphs, batch_size=2, shuffle=False, collate_fn=Collater(graphs))

    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, inference_mode=False, num_sanity_val_steps=0,
        limit_val_batches=1.0 if val_graphs else 0, callbacks=list(callbacks),
    )
    trainer.fit(module, loader(train_graphs), loader(val_graphs) if val_graphs else None)
    return trainer


def all_finite(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(parameter).all()) for parameter in module.parameters())


def test_coincident_atoms_stop_training_naming_the_structure():
    graphs = cluster_graphs()
    make_coincident(graphs[3])  # second batch: cluster-2, cluster-3
    module = PotentialModule(tiny_potential(), optimizer={"lr": 0.01})
    with pytest.raises(NonFiniteTrainingError) as caught:
        fit(module, graphs)
    message = str(caught.value)
    assert "non-finite training loss" in message and "batch 1" in message
    assert "structure 'cluster-3': predicted energy, predicted forces" in message
    assert "'cluster-2'" in message  # the whole batch is listed
    assert all_finite(module)  # stopped before the NaN reached the weights


def test_nan_label_flagged_present_is_named():
    graphs = cluster_graphs(4)
    graphs[0].forces[5, 1] = float("nan")
    module = PotentialModule(tiny_potential(), optimizer={"lr": 0.01})
    with pytest.raises(NonFiniteTrainingError, match=r"structure 'cluster-0': forces label"):
        fit(module, graphs)


def test_skip_mode_warns_skips_the_batch_and_keeps_weights_finite():
    graphs = cluster_graphs()
    make_coincident(graphs[3])
    potential = tiny_potential()
    initial = [parameter.detach().clone() for parameter in potential.parameters()]
    module = PotentialModule(potential, optimizer={"lr": 0.01}, nonfinite="skip", ema_decay=0.9)
    with pytest.warns(UserWarning, match=r"structure 'cluster-3'.*batch skipped \(1 so far\)"):
        trainer = fit(module, graphs, val_graphs=cluster_graphs(2), epochs=2)
    assert trainer.global_step == 6 and module.skipped_batches == 2  # 3 batches x 2 epochs, one bad per epoch
    assert all_finite(module.potential) and all_finite(module.ema.averaged)
    assert any(not torch.equal(a, b) for a, b in zip(initial, module.potential.parameters()))  # it did train
    assert int(module.ema.num_updates) == 4  # the skipped steps left the EMA alone
    assert math.isfinite(float(trainer.callback_metrics["val/loss"]))


def test_skipped_batch_changes_no_weight():
    """A skipped step is a true no-op for AdamW: no weight decay, no moment update."""
    graphs = cluster_graphs(2)
    make_coincident(graphs[0])
    potential = tiny_potential()
    initial = [parameter.detach().clone() for parameter in potential.parameters()]
    module = PotentialModule(potential, optimizer={"lr": 0.01, "weight_decay": 0.1}, nonfinite="skip", ema_decay=None)
    with pytest.warns(UserWarning, match="batch skipped"):
        fit(module, graphs)
    assert all(torch.equal(a, b) for a, b in zip(initial, module.potential.parameters()))


class NaNGradient(pl.Callback):
    """Makes one parameter's gradient NaN in the given step (a finite loss, a non-finite gradient)."""

    def __init__(self, step: int):
        self.step = step

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step == self.step:
            next(pl_module.potential.parameters()).grad.fill_(float("nan"))


def test_nonfinite_gradient_raises_or_is_skipped():
    graphs = cluster_graphs(4)
    with pytest.raises(NonFiniteTrainingError, match=r"non-finite gradient at global step 1, epoch 0, batch 1 .*'cluster-2', 'cluster-3'.*1 of \d+ gradient tensors"):
        fit(PotentialModule(tiny_potential()), graphs, callbacks=[NaNGradient(step=1)])
    module = PotentialModule(tiny_potential(), nonfinite="skip")
    with pytest.warns(UserWarning, match="non-finite gradient"):
        fit(module, graphs, callbacks=[NaNGradient(step=1)])
    assert module.skipped_batches == 1 and all_finite(module)


class CorruptEMA(pl.Callback):
    """Puts a NaN into the EMA copy after the last training batch (what the export would take)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == trainer.num_training_batches - 1:
            with torch.no_grad():
                next(pl_module.ema.averaged.parameters()).view(-1)[0] = float("nan")


def test_nonfinite_weights_are_never_validated_or_exported():
    module = PotentialModule(tiny_potential(), ema_decay=0.9)
    with pytest.raises(NonFiniteTrainingError, match=r"non-finite weights before validation .*ema\.averaged\."):
        fit(module, cluster_graphs(4), val_graphs=cluster_graphs(2), callbacks=[CorruptEMA()])
    module = PotentialModule(tiny_potential(), ema_decay=0.9, nonfinite="skip")  # skip never covers weights
    with pytest.raises(NonFiniteTrainingError, match="non-finite weights at the end of training"):
        fit(module, cluster_graphs(4), callbacks=[CorruptEMA()])


def test_nonfinite_option_is_validated():
    with pytest.raises(ValueError, match="nonfinite must be one of"):
        PotentialModule(tiny_potential(), nonfinite="ignore")
