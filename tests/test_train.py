"""Training: loss masking, metrics, EMA, atomic checkpoints, an end-to-end run and the export round trip."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch_geometric.data import Batch
from train_helpers import (
    cluster_structures,
    compose_config,
    crystal_structures,
    read_metrics,
    tiny_overrides,
    write_emt_data,
)

import mlip
from mlip.data.dataset import HDF5Dataset
from mlip.data.graph import structure_to_graph
from mlip.export import read_export
from mlip.models.potential import Potential
from mlip.train.build import build_module, train
from mlip.train.checkpoint import atomic_torch_save, find_resume_checkpoint
from mlip.train.ema import ExponentialMovingAverage
from mlip.train.losses import PotentialLoss
from mlip.train.metrics import ErrorAccumulator
from mlip.train.module import PotentialModule

CUTOFF = 4.0


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def emt_files(tmp_path_factory) -> list[str]:
    return write_emt_data(tmp_path_factory.mktemp("emt"), n_clusters=24, n_crystals=24)


@pytest.fixture(scope="module")
def trained_run(emt_files, tmp_path_factory) -> Path:
    """One short training run shared by the end-to-end checks (about 10 s on a loaded 2-core machine)."""
    run_dir = tmp_path_factory.mktemp("runs") / "e2e"
    overrides = tiny_overrides(
        emt_files, run_dir, **{"trainer.max_epochs": 12, "optimizer.lr": 0.01, "ema_decay": 0.9, "data.val_fraction": 0.2}
    )
    train(compose_config(overrides), run_dir)
    return run_dir


def mixed_batch(with_labels: dict[str, list[bool]]) -> Batch:
    """Clusters + crystals with labels removed where ``with_labels[name][k]`` is False."""
    structures = cluster_structures(2, seed=3) + crystal_structures(2, seed=4)
    for name, present in with_labels.items():
        for structure, keep in zip(structures, present):
            if not keep:
                setattr(structure, name, None)
    return Batch.from_data_list([structure_to_graph(s, CUTOFF) for s in structures])


def fake_predictions(batch: Batch, offset: float) -> dict[str, torch.Tensor]:
    """Labels + ``offset`` everywhere (NaN labels stay NaN, as a model would not produce)."""
    return {
        "energy": torch.nan_to_num(batch.energy) + offset,
        "forces": torch.nan_to_num(batch.forces) + offset,
        "stress": torch.nan_to_num(batch.stress) + offset,
    }


# ------------------------------------------------------------------------------ loss and metrics
def test_loss_ignores_missing_labels():
    batch = mixed_batch({"energy": [True, False, True, True], "forces": [False, True, True, True]})
    assert torch.isnan(batch.energy).sum() == 1 and torch.isnan(batch.forces).any()
    predictions = {key: value.requires_grad_(True) for key, value in fake_predictions(batch, 0.0).items()}
    loss, _ = PotentialLoss({"energy": 1.0, "forces": 1.0, "stress": 1.0})(predictions, batch)
    assert loss.item() == 0.0  # perfect on every labelled entry; NaNs of missing labels never leak in
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in predictions.values())


def test_loss_weights_and_per_atom_energy():
    batch = mixed_batch({"stress": [False, False, True, False]})
    offset = 0.1
    loss, terms = PotentialLoss({"energy": 2.0, "forces": 3.0, "stress": 5.0})(fake_predictions(batch, offset), batch)
    n_atoms = torch.bincount(batch.batch).double()
    expected_energy = ((offset / n_atoms) ** 2).mean()  # energy error per atom
    assert terms["energy"].item() == pytest.approx(expected_energy.item(), rel=1e-5)
    assert terms["forces"].item() == pytest.approx(offset**2, rel=1e-5)
    assert terms["stress"].item() == pytest.approx(offset**2, rel=1e-5)
    assert loss.item() == pytest.approx(2 * expected_energy.item() + 3 * offset**2 + 5 * offset**2, rel=1e-5)


def test_direct_force_head_is_trained_and_measured_against_force_labels():
    batch = mixed_batch({"forces": [True, True, False, True]})
    predictions = fake_predictions(batch, 0.0)
    predictions["direct_forces"] = predictions["forces"] + 0.002
    loss, terms = PotentialLoss({"energy": 0.0, "forces": 0.0, "stress": 0.0, "direct_forces": 2.0})(predictions, batch)
    assert terms["direct_forces"].item() == pytest.approx(0.002**2, rel=1e-4)
    assert loss.item() == pytest.approx(2 * 0.002**2, rel=1e-4)
    accumulator = ErrorAccumulator()
    accumulator.update(predictions, batch)
    metrics = accumulator.compute("val")
    assert metrics["val/direct_forces_mae"] == pytest.approx(2.0, rel=1e-4)  # meV/Å
    assert metrics["val/forces_mae"] == 0.0


def test_huber_loss_is_linear_for_large_errors():
    batch = mixed_batch({})
    huber = PotentialLoss({"energy": 0.0, "forces": 1.0, "stress": 0.0}, kind="huber", huber_delta=0.01)
    _, small = huber(fake_predictions(batch, 1.0), batch)
    _, large = huber(fake_predictions(batch, 2.0), batch)
    assert large["forces"].item() / small["forces"].item() == pytest.approx((2.0 - 0.005) / (1.0 - 0.005), rel=1e-4)


def test_metrics_per_subset_in_mev():
    batch = mixed_batch({"forces": [True, False, True, True]})
    predictions = fake_predictions(batch, 0.0)
    predictions["forces"] = predictions["forces"].clone()
    predictions["forces"][batch.batch == 2] += 0.003  # 3 meV/Å on every component of the first crystal
    accumulator = ErrorAccumulator()
    accumulator.update(predictions, batch)
    metrics = accumulator.compute("val")
    n_crystal_atoms = int((batch.batch >= 2).sum())
    n_first_crystal = int((batch.batch == 2).sum())
    assert metrics["val/crystal/forces_mae"] == pytest.approx(3.0 * n_first_crystal / n_crystal_atoms, rel=1e-4)
    assert metrics["val/crystal/forces_rmse"] == pytest.approx(3.0 * math.sqrt(n_first_crystal / n_crystal_atoms), rel=1e-4)
    assert metrics["val/cluster/forces_mae"] == 0.0
    labelled_atoms = n_crystal_atoms + int((batch.batch == 0).sum())  # cluster 1 has no forces
    assert metrics["val/forces_mae"] == pytest.approx(3.0 * n_first_crystal / labelled_atoms, rel=1e-4)
    assert "val/cluster/stress_mae" not in metrics  # clusters have no stress labels


# ------------------------------------------------------------------------------ EMA and checkpoints
def test_ema_tracks_weights_with_warmup():
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = ExponentialMovingAverage(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # decay_0 = min(0.5, 1/10) = 0.1 -> 0.9
    assert ema.averaged.weight.item() == pytest.approx(0.9)
    for _ in range(20):
        ema.update(model)
    assert ema.averaged.weight.item() == pytest.approx(1.0, abs=1e-5)
    assert not ema.averaged.weight.requires_grad
    assert int(ema.state_dict()["num_updates"]) == 21


def test_ema_copy_of_an_lmax_3_model_has_exactly_its_tensors_and_exports():
    """A MACE-like model with lmax 3 and 16 channels: e3nn's compiled tensor products, deep-copied,
    grow `_tensor_constant` buffers; the EMA's copy must not, so that it updates and its weights
    (what best_model.pt holds) load strictly into a freshly built model."""
    from mlip.models.build import build_potential, potential_from_config

    config = {"backbone": {"name": "mace", "num_channels": 16, "lmax": 3, "correlation": 1, "num_layers": 2},
              "cutoff": 4.0, "elements": [1, 8], "atomic_energies": {1: 0.0, 8: 0.0}, "scale": 1.0, "shift": 0.0}
    model = build_potential(config, statistics={"avg_num_neighbors": 4.0}, dtype=torch.float32)
    ema = ExponentialMovingAverage(model, decay=0.9)
    assert [name for name, _ in ema.averaged.named_buffers()] == [name for name, _ in model.named_buffers()]
    assert ema.averaged.state_dict().keys() == model.state_dict().keys()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1)
    ema.update(model)
    fresh = potential_from_config(ema.averaged.config, dtype=torch.float32)
    fresh.load_state_dict(ema.averaged.state_dict())  # strict
    changed = next(name for name, _ in model.named_parameters())
    assert not torch.equal(dict(fresh.named_parameters())[changed], dict(model.named_parameters())[changed])


def test_ema_fused_update_follows_every_weight_and_buffer_but_not_frozen_ones():
    """The fused (foreach) update must equal the per-tensor formula on every trainable tensor,
    copy every buffer and leave frozen parameters at their averaged value."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    model[2].bias.requires_grad_(False)  # frozen, as with finetune.freeze
    ema = ExponentialMovingAverage(model, decay=0.9)
    before = {name: tensor.clone() for name, tensor in ema.averaged.state_dict().items()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter))
        model[1].running_mean.add_(1.0)
    decay = ema.current_decay()
    ema.update(model)
    current = model.state_dict()
    for name, averaged in ema.averaged.state_dict().items():
        if name == "2.bias":
            expected = before[name]
        elif name.startswith("1.running") or name.endswith("num_batches_tracked"):
            expected = current[name]
        else:
            expected = decay * before[name] + (1.0 - decay) * current[name]
        assert torch.allclose(averaged, expected), name
    with pytest.raises(ValueError, match="buffers"):
        ema.update(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)))


def test_atomic_save_keeps_previous_file_when_writing_fails(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("simulated crash while writing")

    with pytest.raises(RuntimeError, match="simulated crash"):
        atomic_torch_save({"step": 2, "bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert os.listdir(tmp_path) == ["last.ckpt"]  # no temporary file left behind


def test_checkpoint_restores_random_number_generators():
    import random

    import numpy as np

    module = PotentialModule(torch.nn.Linear(1, 1))
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, buffer := io.BytesIO())  # and it survives a weights_only load
    first = (torch.rand(3), np.random.rand(3), random.random())
    buffer.seek(0)
    module.on_load_checkpoint(torch.load(buffer, weights_only=True))
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1]) and first[2] == second[2]


def test_find_resume_checkpoint(tmp_path):
    assert find_resume_checkpoint("auto", tmp_path) is None
    (tmp_path / "last.ckpt").write_bytes(b"x")
    assert find_resume_checkpoint("auto", tmp_path) == str(tmp_path / "last.ckpt")
    assert find_resume_checkpoint("never", tmp_path) is None
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        find_resume_checkpoint(str(tmp_path / "nope.ckpt"), tmp_path)


def test_optimizer_and_schedule_come_from_the_config_by_target():
    from mlip.train.schedules import WarmupCosine, build_optimizer, build_scheduler

    parameters = list(torch.nn.Linear(2, 1).parameters())
    default = build_optimizer({"lr": 0.01, "betas": [0.8, 0.9]}, parameters)  # no _target_: AdamW
    assert type(default) is torch.optim.AdamW and default.param_groups[0]["betas"] == (0.8, 0.9)
    sgd = build_optimizer({"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.5}, parameters)
    assert type(sgd) is torch.optim.SGD and sgd.param_groups[0]["momentum"] == 0.5

    cosine = build_scheduler({"_target_": "mlip.train.schedules.warmup_cosine", "warmup_steps": 2, "min_factor": 0.1},
                             sgd, total_steps=10)
    assert cosine["interval"] == "step" and "monitor" not in cosine
    schedule = cosine["scheduler"].lr_lambdas[0]
    assert isinstance(schedule, WarmupCosine) and schedule.total_steps == 10 and schedule(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))

    plateau = build_scheduler({"_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau", "patience": 2}, sgd)
    assert isinstance(plateau["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert plateau["monitor"] == "val/loss" and plateau["interval"] == "epoch"
    with pytest.warns(UserWarning, match="no warm-up"):
        build_scheduler({"_target_": "mlip.train.schedules.reduce_on_plateau", "warmup_steps": 100, "monitor": "val/forces_mae"}, sgd)
    step = build_scheduler({"_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 3, "interval": "epoch"}, sgd)
    assert type(step["scheduler"]) is torch.optim.lr_scheduler.StepLR and step["interval"] == "epoch"
    assert build_scheduler(None, sgd) is None
    with pytest.raises(ValueError, match="replaced by `_target_`"):
        build_scheduler({"name": "cosine", "warmup_steps": 2}, sgd)
    # a key of another schedule (e.g. an experiment's, after scheduler=constant) is named, with its removal
    with pytest.raises(ValueError, match=r"linear_warmup takes no \['min_factor'\].*'~scheduler.min_factor'"):
        build_scheduler({"_target_": "mlip.train.schedules.linear_warmup", "warmup_steps": 2, "min_factor": 0.1}, sgd)
    with pytest.raises(ValueError, match=r"optimizer: torch.optim.Adam takes no \['patience'\]"):
        build_optimizer({"_target_": "torch.optim.Adam", "lr": 0.01, "patience": 5}, parameters)


def test_loss_weights_have_one_default():
    from mlip.train.losses import LossWeights
    from train_helpers import compose_config

    config = compose_config([])
    assert dict(config.loss.weights) == vars(LossWeights())  # train.yaml takes them from the dataclass
    assert compose_config(["loss.weights.stress=3"]).loss.weights.stress == 3.0


# ------------------------------------------------------------------------------ end to end
def test_training_lowers_validation_force_error(trained_run):
    validations = [row for row in read_metrics(trained_run) if "val/forces_mae" in row]
    assert len(validations) == 12
    first, best = validations[0]["val/forces_mae"], min(row["val/forces_mae"] for row in validations)
    assert best < 0.6 * first, f"validation force MAE went from {first:.1f} to only {best:.1f} meV/Å"
    logged = {name for row in read_metrics(trained_run) for name in row}
    assert {"val/cluster/forces_mae", "val/crystal/stress_mae", "train/forces_mae", "train/loss_step", "lr"} <= logged


def test_run_directory_holds_config_statistics_checkpoints_and_results(trained_run):
    for name in ("config.yaml", "statistics.json", "checkpoints/last.ckpt", "checkpoints/best.ckpt", "best_model.pt"):
        assert (trained_run / name).is_file(), name
    results = json.loads((trained_run / "results.json").read_text())
    n_train = 48 - round(0.2 * 48) - round(0.1 * 48)  # 33: statistics come from the training split only
    assert results["global_step"] == 12 * math.ceil(n_train / 4)
    assert results["test"]["test/forces_mae"] > 0
    statistics = json.loads((trained_run / "statistics.json").read_text())
    assert statistics["elements"] == [13, 29] and statistics["n_structures"] == n_train


def test_export_round_trip_gives_identical_predictions(trained_run, emt_files):
    exported = read_export(trained_run / "best_model.pt")
    assert exported["elements"] == [13, 29] and exported["cutoff"] == CUTOFF and exported["dtype"] == "float32"
    assert exported["config"]["model"]["cutoff"] == CUTOFF and exported["statistics"]["n_structures"] == 33
    assert exported["mlip_version"] == mlip.__version__ and exported["torch_version"] == torch.__version__

    loaded = mlip.load(trained_run / "best_model.pt")
    # the same EMA weights straight from the best Lightning checkpoint
    checkpoint = torch.load(trained_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    prefix = "ema.averaged."
    reference = Potential.from_config(exported["potential_config"], dtype=torch.float32)
    reference.load_state_dict({k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)})
    reference.eval()

    batch = Batch.from_data_list([HDF5Dataset(emt_files, cutoff=CUTOFF)[i] for i in (0, 1, 30, 31)])
    expected = reference(batch, compute_forces=True, compute_stress=True)
    actual = loaded(batch, compute_forces=True, compute_stress=True)
    for key in ("energy", "forces"):
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0)
    torch.testing.assert_close(actual["stress"], expected["stress"], rtol=0, atol=0, equal_nan=True)
    # and the EMA weights differ from the raw training weights, so the export really took the EMA copy
    raw = {k[len("potential."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("potential.")}
    assert any(not torch.equal(raw[name], value) for name, value in loaded.state_dict().items())


def test_load_rejects_a_lightning_checkpoint(trained_run):
    with pytest.raises(ValueError, match="not an exported mlip model"):
        mlip.load(trained_run / "checkpoints" / "last.ckpt")


def test_transip_with_rotation_augmentation_and_equivariance_loss(emt_files, tmp_path):
    """The symmetry options train the map T with the potential and log the extra loss term."""
    run_dir = tmp_path / "transip"
    overrides = tiny_overrides(
        emt_files,
        run_dir,
        backbone="transip",
        **{
            "trainer.max_epochs": 1,
            "symmetry.rotation_augmentation": "true",
            "symmetry.equivariance_loss": "{weight:1.0,level:atom}",
            "test_after_fit": "false",
        },
    )
    config = compose_config(overrides)
    train(config, run_dir)
    assert "train/equivariance_mse_loss" in {name for row in read_metrics(run_dir) for name in row}

    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert any(name.startswith("equivariance_loss.transform.") for name in checkpoint["state_dict"])  # T is saved
    module = build_module(config, Potential.from_config(read_export(run_dir / "best_model.pt")["potential_config"], dtype=torch.float32))
    n_potential = len(list(module.potential.parameters()))
    n_map = len(list(module.equivariance_loss.parameters()))
    assert n_map > 0
    optimised = sum(len(group["params"]) for group in checkpoint["optimizer_states"][0]["param_groups"])
    assert optimised == n_potential + n_map  # T trained together with the potential, the EMA copy not at all
    assert mlip.load(run_dir / "best_model.pt").backbone.__class__.__name__ == "TransIPBackbone"


def test_transip_with_rotation_gradient_penalty(emt_files, tmp_path):
    """symmetry.rotation_gradient_penalty adds the energy-gradient rotation penalty to the training
    loss: it is logged, and minimising it makes the energy less sensitive to rotations."""
    run_dir = tmp_path / "transip_penalty"
    overrides = tiny_overrides(
        emt_files,
        run_dir,
        backbone="transip",
        **{"trainer.max_epochs": 3, "symmetry.rotation_gradient_penalty": 10.0, "test_after_fit": "false", "ema_decay": 0},
    )
    config = compose_config(overrides)
    train(config, run_dir)
    epochs = [row["train/rotation_gradient_penalty_loss"] for row in read_metrics(run_dir) if "train/rotation_gradient_penalty_loss" in row]
    assert len(epochs) == 3 and all(math.isfinite(value) for value in epochs)
    assert epochs[-1] < 0.5 * epochs[0]  # the penalty is minimised, not just reported


class CoincidentAtoms(pl.Callback):
    """Moves atom 1 of the first structure of training batch 2 onto atom 0 (records that structure's id)."""

    structure_id = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 2:
            batch.pos[1] = batch.pos[0]
            self.structure_id = batch.structure_id[0]


def test_training_stops_at_nan_from_coincident_atoms_naming_the_structure(emt_files, tmp_path):
    """Two coincident atoms make the MACE-like backbone return NaN: the run stops with an error that
    names the structure, instead of finishing with NaN weights (nonfinite: raise, the default)."""
    run_dir = tmp_path / "nan"
    config = compose_config(tiny_overrides(emt_files, run_dir, **{"trainer.max_epochs": 1, "test_after_fit": "false"}))
    callback = CoincidentAtoms()
    with pytest.raises(FloatingPointError, match="non-finite training loss") as caught:
        train(config, run_dir, extra_callbacks=[callback])
    assert f"structure {callback.structure_id!r}: predicted energy" in str(caught.value)
    assert not (run_dir / "best_model.pt").exists()


def test_transip_with_the_issue_15_symmetry_loss_options(emt_files, tmp_path):
    """A few real optimiser steps with the feature-mean loss, a warm-up over half the run, the
    reused main pass, a stop-gradient target and per-structure InfoNCE: the weight is logged
    rising from 0, the loss terms are finite."""
    run_dir = tmp_path / "transip_options"
    overrides = tiny_overrides(
        emt_files,
        run_dir,
        backbone="transip",
        **{
            "trainer.max_epochs": 1,
            "symmetry.rotation_augmentation": "true",
            "symmetry.equivariance_loss": "{weight:0.3,level:atom,reduction:mean,warmup_fraction:0.5,reuse_main_pass:true,"
            "stop_gradient_target:true,contrastive_weight:0.1,contrastive_level:structure}",
            "test_after_fit": "false",
        },
    )
    train(compose_config(overrides), run_dir)
    rows = read_metrics(run_dir)
    weights = [row["train/equivariance_weight"] for row in rows if "train/equivariance_weight" in row]
    assert weights and weights[0] == 0.0 and max(weights) > 0.0 and max(weights) <= 0.3 + 1e-6
    for name in ("train/equivariance_mse_loss", "train/equivariance_infonce_loss"):
        values = [row[name] for row in rows if name in row]
        assert values and all(math.isfinite(value) for value in values)
