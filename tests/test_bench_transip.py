"""The splits, rotated test copies and the report of scripts/bench_transip.py (the TransIP fair
test): what its verdict rests on, checked without training a model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlip.data.dataset import HDF5Dataset
from script_modules import load_script


@pytest.fixture(scope="module")
def bench():
    """scripts/bench_transip.py as a module."""
    return load_script("bench_transip")


@pytest.fixture(scope="module")
def molecule_numbers(bench):
    dataset = HDF5Dataset([str(bench.MOLECULES)])
    return [s.numbers for s in dataset.get_structures(range(len(dataset)))]


def test_species_split_holds_out_whole_species_and_keeps_every_element(bench, molecule_numbers):
    pool, val, test = bench.fair_split(molecule_numbers, "species", seed=0)
    assert len(set(pool) | set(val) | set(test)) == len(molecule_numbers)  # a partition ...
    assert len(pool) + len(val) + len(test) == len(molecule_numbers)  # ... without overlap
    species = lambda frames: {bench.species_key(molecule_numbers[i]) for i in frames}  # noqa: E731
    assert not species(pool) & species(test) and not species(pool) & species(val) and not species(val) & species(test)
    elements = lambda frames: {int(z) for i in frames for z in molecule_numbers[i]}  # noqa: E731
    assert elements(val) | elements(test) <= elements(pool)
    assert 0.1 * len(molecule_numbers) <= len(test) < 0.3 * len(molecule_numbers)


def test_random_split_shares_species_and_training_sets_are_nested(bench, molecule_numbers):
    pool, val, test = bench.fair_split(molecule_numbers, "random", seed=0)
    assert len(set(pool) | set(val) | set(test)) == len(molecule_numbers) == len(pool) + len(val) + len(test)
    keys = lambda frames: {bench.species_key(molecule_numbers[i]) for i in frames}  # noqa: E731
    assert keys(test) & keys(pool)
    order = bench.nested_order(molecule_numbers, pool, seed=0)
    assert sorted(order.tolist()) == sorted(pool.tolist())
    pool_elements = {int(z) for i in pool for z in molecule_numbers[i]}
    front = {int(z) for i in order[: len(pool_elements)] for z in molecule_numbers[i]}
    assert front == pool_elements  # even the smallest training set has every element


def test_rotated_test_copy_rotates_positions_and_forces_together(bench):
    dataset = HDF5Dataset([str(bench.MOLECULES)])
    structures = dataset.get_structures(range(4))
    copies = bench.rotated(structures, seed=3)
    for original, copy in zip(structures, copies):
        # the same rotation R maps every position and every force: solve for it and check
        rotation, *_ = np.linalg.lstsq(original.positions - original.positions.mean(0),
                                       copy.positions - copy.positions.mean(0), rcond=None)
        if np.linalg.matrix_rank(original.positions - original.positions.mean(0)) == 3:
            np.testing.assert_allclose(rotation.T @ rotation, np.eye(3), atol=1e-8)
            np.testing.assert_allclose(original.forces @ rotation, copy.forces, atol=1e-8)
        np.testing.assert_allclose(np.linalg.norm(copy.forces, axis=1), np.linalg.norm(original.forces, axis=1))
        assert not np.allclose(copy.positions, original.positions)
        assert copy.energy == original.energy


def test_cell_keys_round_trip(bench):
    for key in ("species_250_transip_learned_w0.03_seed2", "random_1000_mace_seed0"):
        assert bench.cell_key(*bench.parse_key(key)) == key
    assert bench.expand_variants(["transip_aug", "transip_nce_w{w}"], [0.1, 0.3]) == [
        "transip_aug", "transip_nce_w0.1", "transip_nce_w0.3"]


def fake_cell(bench, split, size, variant, seed, force_mae):
    nero = {"angles": [0.0, 1.0], "energy_error": [0.0, 0.1], "energy_error_per_atom": [0.0, 0.02],
            "force_error": [0.0, 0.2]}
    return {"cell": bench.cell_key(split, size, variant, seed), "split": split, "train_structures": size,
            "variant": variant, "seed": seed, "steps": 10, "train_seconds": 1.0,
            "test_rotated_force_mae_mev_per_A": force_mae, "test_rotated_energy_mae_mev_per_atom": 1.0,
            "test_force_mae_mev_per_A": force_mae, "val_rotated_force_mae_mev_per_A": force_mae,
            "rotation_energy_std_mev_per_atom": 0.1, "rotation_force_error_mev_per_A": 0.2, "nero": nero}


def test_report_picks_the_weight_on_validation_and_reads_shipped_cells(bench, tmp_path):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    cells = [fake_cell(bench, "random", 250, "transip_aug", seed, 100.0) for seed in (0, 1)]
    cells += [fake_cell(bench, "random", 250, "transip_learned_w0.1", seed, 50.0 + seed) for seed in (0, 1)]
    cells += [fake_cell(bench, "random", 250, "transip_learned_w0.3", seed, 80.0) for seed in (0, 1)]
    for cell in cells:
        (shipped / f"{cell['cell']}.json").write_text(json.dumps(cell))
    out = tmp_path / "out"
    bench.main(["--out", str(out), "--report-only", "--results", str(shipped), "--figures", str(tmp_path / "figures"),
                "--splits", "random", "--sizes", "250", "--seeds", "0", "1", "--weights", "0.1", "0.3",
                "--variants", "transip_aug", "transip_learned_w{w}"])
    text = (out / "results.md").read_text()
    assert "chosen: transip_learned_w0.1" in text
    assert "0.51 ± 0.01 (seeds 2); per seed 0.50, 0.51" in text
    assert (tmp_path / "figures" / "nero_random_250.png").exists()
