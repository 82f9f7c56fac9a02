"""HDF5Dataset: several files as one index space, selections, splits, graphs, workers, memory."""

from __future__ import annotations

import gc
import pickle

import numpy as np
import psutil
import pytest
import torch
from conftest import random_crystal, random_molecule
from torch_geometric.loader import DataLoader

from mlip.data.dataset import HDF5Dataset
from mlip.data.errors import MLIPDataError
from mlip.data.graph import DEFAULT_MIN_DISTANCE
from mlip.data.structure import Structure
from mlip.data.writer import StructureWriter, write_structures


def make_structures(rng, count: int, prefix: str) -> list[Structure]:
    """Alternating labelled molecules (neutral singlet / anion doublet) and crystals."""
    structures = []
    for k in range(count):
        if k % 3 == 2:
            structure = random_crystal(rng, numbers=(14, 8, 8))
            structure.stress = np.eye(3) * 1e-3
            structure.subset = "crystal"
        elif k % 3 == 1:
            structure = random_molecule(rng, numbers=(6, 1, 1, 1))
            structure.charge, structure.spin, structure.subset = -1, 2, "radical"
        else:
            structure = random_molecule(rng, numbers=(8, 1, 1))
            structure.subset = "neutral"
        structure.energy = -float(k)
        structure.forces = rng.normal(size=(structure.n_atoms, 3))
        structure.id = f"{prefix}-{k}"
        structures.append(structure)
    return structures


@pytest.fixture
def shards(tmp_path, rng):
    """Two shards (7 + 5 structures) matched by a glob."""
    write_structures(tmp_path / "shard-0.h5", make_structures(rng, 7, "a"))
    write_structures(tmp_path / "shard-1.h5", make_structures(rng, 5, "b"))
    return str(tmp_path / "shard-*.h5")


def ids(dataset) -> list[str]:
    return [dataset.get_structure(i).id for i in range(len(dataset))]


def test_shards_form_one_index_space(shards):
    dataset = HDF5Dataset(shards)
    assert len(dataset) == 12
    assert ids(dataset) == [f"a-{k}" for k in range(7)] + [f"b-{k}" for k in range(5)]
    path, local_index = dataset.locate(8)
    assert path.name == "shard-1.h5" and local_index == 1
    assert dataset.get_structure(-1).id == "b-4"
    assert [s.id for s in dataset.get_structures([9, 0, 6, 7])] == ["b-2", "a-0", "a-6", "b-0"]
    with pytest.raises(IndexError):
        dataset.get_structure(12)


def test_missing_shards_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError):
        HDF5Dataset(str(tmp_path / "none-*.h5"))
    with pytest.raises(FileNotFoundError):
        HDF5Dataset(tmp_path / "absent.h5")


def test_selection_by_subset_charge_spin_elements_and_size(shards):
    assert {s.split("-")[1] for s in ids(HDF5Dataset(shards, subsets=["crystal"]))} == {"2", "5"}
    crystals = HDF5Dataset(shards, subsets="crystal")
    assert len(crystals) == 3 and all(s.is_periodic for s in crystals.get_structures(range(3)))

    anions = HDF5Dataset(shards, charges=[-1])
    assert len(anions) == 4 and set(anions.spin) == {2} and set(anions.subset_labels) == {"radical"}
    assert len(HDF5Dataset(shards, spins=1)) == 8

    # "H, C, O only" keeps water and methyl; Si/O crystals contain Si.
    organics = HDF5Dataset(shards, elements=["H", "C", "O"])
    assert len(organics) == 9 and set(organics.subset_labels) == {"neutral", "radical"}
    np.testing.assert_array_equal(organics.elements, [1, 6, 8])
    assert len(HDF5Dataset(shards, elements=[1, 8])) == 5  # water only

    small = HDF5Dataset(shards, max_atoms=3)
    assert set(small.n_atoms) == {3} and len(small) == 8

    combined = HDF5Dataset(shards, subsets=["neutral", "radical"], charges=0)
    assert set(combined.subset_labels) == {"neutral"}
    with pytest.raises(ValueError, match="unknown element"):
        HDF5Dataset(shards, elements=["Xx"])


def test_metadata_arrays_are_compact_numpy(shards):
    dataset = HDF5Dataset(shards)
    for name in ("n_atoms", "charge", "spin", "has_energy", "has_forces", "has_stress", "subset_codes"):
        array = getattr(dataset, name)
        assert isinstance(array, np.ndarray) and array.dtype != object and array.shape == (12,), name
    np.testing.assert_array_equal(dataset.has_stress, [k % 3 == 2 for k in range(7)] + [k % 3 == 2 for k in range(5)])
    assert dataset.subset_names == ("crystal", "neutral", "radical")


def test_split_is_reproducible_disjoint_and_complete(shards):
    dataset = HDF5Dataset(shards)
    train, val, test = dataset.split(val_fraction=0.25, test_fraction=0.25, seed=7)
    assert (len(train), len(val), len(test)) == (6, 3, 3)
    parts = [set(ids(part)) for part in (train, val, test)]
    assert parts[0].isdisjoint(parts[1]) and parts[0].isdisjoint(parts[2]) and parts[1].isdisjoint(parts[2])
    assert set.union(*parts) == set(ids(dataset))

    again = dataset.split(val_fraction=0.25, test_fraction=0.25, seed=7)
    assert [ids(part) for part in again] == [ids(part) for part in (train, val, test)]
    other_seed = dataset.split(val_fraction=0.25, test_fraction=0.25, seed=8)
    assert ids(other_seed.val) != ids(val) or ids(other_seed.test) != ids(test)

    # Parts are datasets: metadata follows the selection, and they split again.
    np.testing.assert_array_equal(val.charge, [dataset.charge[i] for i in val.indices])
    assert [val.get_structure(k).id for k in range(len(val))] == [dataset.get_structure(i).id for i in val.indices]
    inner_train, inner_val, inner_test = train.split(0.5)
    assert len(inner_test) == 0 and len(inner_train) + len(inner_val) == len(train)
    with pytest.raises(ValueError):
        dataset.split(0.6, 0.5)


def test_getitem_builds_graphs_with_labels_and_masks(shards):
    dataset = HDF5Dataset(shards, cutoff=3.0, dtype=torch.float64)
    crystal_index = 2
    graph = dataset[crystal_index]
    structure = dataset.get_structure(crystal_index)
    assert graph.pos.dtype == torch.float64
    np.testing.assert_allclose(graph.pos.numpy(), structure.positions)
    np.testing.assert_array_equal(graph.z.numpy(), structure.numbers)
    assert graph.energy.item() == structure.energy and graph.stress_mask.item()
    np.testing.assert_allclose(graph.stress[0].numpy(), structure.stress)
    assert graph.edge_index.shape[1] > 0 and graph.structure_id == "a-2"

    molecule_graph = dataset[0]
    assert not molecule_graph.stress_mask.item() and torch.isnan(molecule_graph.stress).all()
    assert molecule_graph.forces_mask.item()


def test_dataloader_with_two_workers_sees_every_structure_once(shards):
    dataset = HDF5Dataset(shards, cutoff=3.0)
    dataset.get_structure(0)  # the parent process already holds an open handle before forking
    train = dataset.split(0.25, seed=1).train
    seen = []
    for batch in DataLoader(train, batch_size=4, shuffle=True, num_workers=2):
        assert batch.pos.shape[0] == batch.z.shape[0] and batch.energy.shape == (batch.num_graphs,)
        seen.extend(batch.structure_id)
    assert sorted(seen) == sorted(ids(train))


def test_dataset_pickles_without_file_handles(shards):
    dataset = HDF5Dataset(shards, cutoff=3.0)
    dataset.get_structure(5)
    clone = pickle.loads(pickle.dumps(dataset))
    assert all(reader._handle is None for reader in clone.readers)
    assert ids(clone) == ids(dataset)


def rss_megabytes() -> float:
    return psutil.Process().memory_info().rss / 2**20


def test_memory_stays_flat_while_iterating_a_large_file(tmp_path):
    """>= 100k structures: metadata is a few bytes per structure and reads do not accumulate."""
    n_structures, atoms_per_structure = 100_000, 3
    rng = np.random.default_rng(0)
    positions = rng.normal(size=(n_structures, atoms_per_structure, 3))
    forces = rng.normal(size=(n_structures, atoms_per_structure, 3))
    numbers = np.array([8, 1, 1])
    path = tmp_path / "large.h5"
    with StructureWriter(path) as writer:  # default chunking and gzip
        for k in range(n_structures):
            writer.write(Structure(numbers=numbers, positions=positions[k], energy=-1.0, forces=forces[k], id=str(k)))
    del positions, forces

    dataset = HDF5Dataset(path, elements=["H", "O"])
    assert len(dataset) == n_structures
    metadata_bytes = sum(reader.offsets.nbytes + reader.charge.nbytes + reader.spin.nbytes for reader in dataset.readers)
    metadata_bytes += sum(mask.nbytes for reader in dataset.readers for mask in reader.masks.values())
    assert metadata_bytes / n_structures < 32  # compact arrays, no per-structure Python objects

    sample = range(0, n_structures, 4)  # 25k reads spread over the whole file
    for index in sample[:2000]:  # warm-up: chunk caches, allocator pools
        dataset.get_structure(index)
    gc.collect()
    before = rss_megabytes()
    for index in sample:
        structure = dataset.get_structure(index)
    assert structure.id == str(sample[-1])
    gc.collect()
    growth = rss_megabytes() - before
    assert growth < 20, f"RSS grew by {growth:.1f} MB over {len(sample)} reads"


# ---------------------------------------------------------------------------- selection arguments


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"subsets": []}, "empty subset list; use None for all subsets"),
        ({"charges": []}, "empty charge list; use None for all charges"),
        ({"spins": ()}, "empty spin list; use None for all spins"),
        ({"elements": []}, "empty element list; use None for all elements"),
    ],
)
def test_an_empty_selection_list_is_an_error_not_everything(shards, arguments, message):
    with pytest.raises(ValueError, match=message):
        HDF5Dataset(shards, **arguments)


def test_an_unknown_subset_is_refused_with_the_known_ones_and_their_files(shards):
    with pytest.raises(ValueError) as caught:
        HDF5Dataset(shards, subsets=["crystal", "neutrl"])
    message = str(caught.value)
    assert "unknown subset 'neutrl'" in message
    assert "crystal (shard-0.h5, shard-1.h5)" in message and "neutral (shard-0.h5, shard-1.h5)" in message


def test_charges_and_spins_that_no_structure_has_are_refused(shards):
    with pytest.raises(ValueError, match=r"no structure has charge 7.*charges present: \[-1, 0\]"):
        HDF5Dataset(shards, charges=[0, 7])
    with pytest.raises(ValueError, match=r"no structure has spin multiplicity 3.*present: \[1, 2\]"):
        HDF5Dataset(shards, spins=3)
    assert len(HDF5Dataset(shards, charges="-1")) == 4  # a single value given as text (e.g. from a CLI)


def test_min_distance_and_max_neighbours_reach_the_graph_builder(shards):
    dataset = HDF5Dataset(shards, cutoff=3.0, min_distance=0.2, max_neighbours=50)
    assert (dataset.min_distance, dataset.max_neighbours) == (0.2, 50)
    train = dataset.split(0.25, seed=1).train  # views keep the settings
    assert (train.min_distance, train.max_neighbours) == (0.2, 50)
    assert HDF5Dataset(shards).min_distance == DEFAULT_MIN_DISTANCE == 0.1
    with pytest.raises(MLIPDataError, match="max_neighbours=1"):
        HDF5Dataset(shards, cutoff=3.0, max_neighbours=1)[2]  # the crystal has more neighbours


def test_datamodule_takes_one_subset_as_a_string_and_refuses_an_empty_list(shards):
    from mlip.train.datamodule import PotentialDataModule

    datamodule = PotentialDataModule([shards], cutoff=3.0, subsets="crystal", val_fraction=0.34,
                                     statistics_cache=False, min_distance=0.2, max_neighbours=500)
    datamodule.setup()
    assert datamodule.subsets == ["crystal"] and len(datamodule.dataset) == 3
    assert (datamodule.dataset.min_distance, datamodule.dataset.max_neighbours) == (0.2, 500)
    with pytest.raises(ValueError, match=r"data.subsets: empty subset list; use null for all subsets"):
        PotentialDataModule([shards], cutoff=3.0, subsets=[])
    with pytest.raises(ValueError, match=r"data.subsets: unknown subset 'neutrl'"):
        PotentialDataModule([shards], cutoff=3.0, subsets=["neutrl"]).setup()


def graph_tensors(graph) -> dict:
    return {key: value for key, value in graph.to_dict().items() if torch.is_tensor(value)}


def test_cached_graphs_equal_fresh_ones_are_built_once_and_shared_by_views(shards, monkeypatch):
    fresh = HDF5Dataset(shards, cutoff=3.0, dtype=torch.float64)
    cached = HDF5Dataset(shards, cutoff=3.0, dtype=torch.float64, cache_graphs=True)
    assert cached.caches_graphs and not fresh.caches_graphs
    for index in range(len(cached)):
        expected, got = graph_tensors(fresh[index]), graph_tensors(cached[index])
        assert expected.keys() == got.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, equal_nan=True)
    # every later access is served from memory: the file is not read again, also through a split view
    import mlip.data.dataset as dataset_module

    def no_reading(*args, **kwargs):
        raise AssertionError("a cached graph was rebuilt")

    monkeypatch.setattr(dataset_module, "structure_to_graph", no_reading)
    split = cached.split(0.25, seed=3)
    graphs = [split.train[i] for i in range(len(split.train))] + [split.val[i] for i in range(len(split.val))]
    assert sorted(graph.structure_id for graph in graphs) == sorted(ids(cached))
    assert cached[-1] is cached[len(cached) - 1]
    with pytest.raises(IndexError, match="out of range"):
        cached[len(cached)]
    # a batch is a copy: training on it cannot change the cached graph
    batch = next(iter(DataLoader(split.train, batch_size=1)))
    batch.pos.add_(1.0)
    np.testing.assert_allclose(split.train[0].pos.numpy(), split.train.get_structure(0).positions)


def test_datamodule_caches_graphs_of_small_sets_only_with_auto(shards, monkeypatch):
    import mlip.train.datamodule as datamodule_module
    from mlip.train.datamodule import PotentialDataModule

    def train_set(**kwargs):
        datamodule = PotentialDataModule([shards], cutoff=3.0, val_fraction=0.25, statistics_cache=False, **kwargs)
        datamodule.setup()
        return datamodule.train_set

    assert train_set().caches_graphs  # auto, 12 small structures
    assert not train_set(cache_graphs=False).caches_graphs
    monkeypatch.setattr(datamodule_module, "CACHE_GRAPHS_MAX_ATOMS", 10)
    assert not train_set().caches_graphs and train_set(cache_graphs=True).caches_graphs
    with pytest.raises(ValueError, match="data.cache_graphs: expected true, false or auto"):
        PotentialDataModule([shards], cutoff=3.0, cache_graphs="yes")
