"""Shared small fixtures: a random molecule and a random triclinic crystal, as `Structure`s.

Keep fixtures generic (any module may use them) and small (tests must stay fast).
Graphs: `mlip.data.graph.structure_to_graph(structure, cutoff, dtype)`; batches:
`torch_geometric.data.Batch.from_data_list([...])`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mlip.data.structure import Structure

# Test tensors are tiny: intra-op threads only add synchronisation, and on a loaded 2-core
# machine they made a 4-atom forward pass ~25x slower (0.8 s instead of 0.03 s).
torch.set_num_threads(1)


def random_molecule(rng: np.random.Generator, numbers=(8, 1, 1, 6, 1), spread: float = 1.6) -> Structure:
    """A small cell-less cluster with atoms at least 0.8 Å apart (positions in Å)."""
    positions = []
    while len(positions) < len(numbers):
        candidate = rng.uniform(-spread, spread, size=3)
        if all(np.linalg.norm(candidate - p) > 0.8 for p in positions):
            positions.append(candidate)
    return Structure(numbers=np.array(numbers), positions=np.array(positions), id="molecule")


def random_crystal(rng: np.random.Generator, numbers=(14, 8, 8, 14), length: float = 3.6) -> Structure:
    """A periodic triclinic cell (lattice vectors as rows, Å) with atoms at least 1 Å apart."""
    cell = np.diag([length, length * 1.1, length * 0.95]) + rng.uniform(-0.5, 0.5, size=(3, 3))
    fractional = []
    while len(fractional) < len(numbers):
        candidate = rng.uniform(0, 1, size=3)
        cartesian = candidate @ cell
        if all(np.linalg.norm(cartesian - f @ cell) > 1.0 for f in fractional):
            fractional.append(candidate)
    positions = np.array(fractional) @ cell
    return Structure(numbers=np.array(numbers), positions=positions, cell=cell, pbc=np.ones(3, bool), id="crystal")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261125)


@pytest.fixture
def molecule(rng) -> Structure:
    return random_molecule(rng)


@pytest.fixture
def crystal(rng) -> Structure:
    return random_crystal(rng)



@pytest.fixture
def float64_default():
    """Run a test with torch's default dtype set to float64 (restored afterwards)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)

@pytest.fixture(scope="session")
def trained_model(tmp_path_factory):
    """Path of a tiny MACE model trained ~10-20 s on the shipped sample data through the real
    Hydra + Lightning pipeline and exported; trained once per session (test_md, test_eval)."""
    from hydra import compose, initialize_config_dir
    from train_helpers import SAMPLE_DATA, tiny_overrides

    from mlip.train.build import config_dir, register_resolvers, train

    missing = [str(path) for path in SAMPLE_DATA if not path.is_file()]
    assert not missing, f"shipped sample data missing: {missing}"
    run_dir = tmp_path_factory.mktemp("trained") / "tiny"
    overrides = tiny_overrides(
        [str(path) for path in SAMPLE_DATA], run_dir,
        **{"trainer.max_epochs": 6, "trainer.max_time": "00:00:00:20", "logger": "none", "data.batch_size": 8},
    )
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        results = train(compose("train", overrides=overrides), run_dir)
    assert results["best_model"], f"training wrote no best_model.pt in {run_dir}"
    return Path(results["best_model"])
