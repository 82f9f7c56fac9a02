"""Multi-head models and training (`Potential(heads=...)`, `data.heads`, `finetune.replay_head`):
each head has its own references, scale, shift and readout over one shared backbone; heads
round-trip through export and the calculator; data, statistics, metrics and resume per head."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase import Atoms
from torch_geometric.data import Batch
from train_helpers import compose_config, tiny_overrides, write_emt_data

import mlip
from mlip.calculator import MLIPCalculator, MLIPInputError
from mlip.data.graph import atoms_to_graph
from mlip.export import export_model, read_export
from mlip.models.build import build_potential, potential_from_config
from mlip.models.potential import UnknownHeadError
from mlip.train.build import train
from mlip.train.datamodule import PotentialDataModule
from mlip.train.finetune import build_finetuned_potential, read_pretrained
from mlip.train.metrics import ErrorAccumulator

CUTOFF = 3.5  # Å
H, C, O = 1, 6, 8
TINY = {"name": "mace", "num_channels": 4, "num_layers": 2, "correlation": 2, "radial_mlp": [8]}
HEAD_STATISTICS = {  # two levels of theory: very different reference energies, scales and shifts
    "dft": {"atomic_energies": {H: -13.6, C: -1029.0, O: -2041.0}, "scale": 0.7, "shift": 0.05},
    "xtb": {"atomic_energies": {H: -10.7, C: -48.8, O: -110.6}, "scale": 2.0, "shift": -0.3},
}


def two_head_model(dtype=torch.float64, reference_energies=None, seed=0):
    torch.manual_seed(seed)
    config = {"backbone": dict(TINY), "cutoff": CUTOFF, "condition_dim": 4, "readout_hidden": [4],
              "heads": ["dft", "xtb"]}
    if reference_energies:
        config["atomic_energies"] = reference_energies
    statistics = {"elements": [H, C, O], "avg_num_neighbors": 3.0,
                  "heads": {name: {**values, "isolated_atom_energies": values["atomic_energies"]}
                            for name, values in HEAD_STATISTICS.items()}}
    return build_potential(config, statistics, dtype=dtype).eval()


def methanol() -> Atoms:
    return Atoms("CH3OH", positions=[[0, 0, 0], [1.09, 0, 0], [-0.36, 1.03, 0], [-0.36, -0.51, 0.89],
                                      [-0.47, -0.67, -1.16], [-1.4, -0.6, -1.2]])


def graph_of(atoms: Atoms, head: int | None, dtype=torch.float64):
    graph = atoms_to_graph(atoms, CUTOFF, dtype)
    if head is not None:
        graph.head = torch.tensor([head])
    return graph


def predict(model, atoms: Atoms, head: int | None):
    return model(Batch.from_data_list([graph_of(atoms, head)]))


# ----------------------------------------------------------------------------- the model
def test_each_head_gives_its_own_reference_energy_for_an_isolated_atom():
    """With isolated-atom references a lone atom's energy is exactly its head's E_ref(Z)."""
    model = two_head_model(reference_energies="isolated")
    for index, (name, values) in enumerate(HEAD_STATISTICS.items()):
        for z, reference in values["atomic_energies"].items():
            energy = predict(model, Atoms(numbers=[z], positions=[[0, 0, 0]]), index)["energy"]
            assert float(energy) == pytest.approx(reference, abs=1e-12), (name, z)
    assert model.head_values("xtb")["atomic_energies"] == HEAD_STATISTICS["xtb"]["atomic_energies"]


def test_heads_differ_share_the_backbone_and_mixed_batches_equal_single_structures():
    model = two_head_model()
    atoms = methanol()
    dft, xtb = predict(model, atoms, 0), predict(model, atoms, 1)
    assert abs(float(dft["energy"] - xtb["energy"])) > 100.0  # other references
    assert not torch.allclose(dft["forces"], xtb["forces"])  # other readout and scale
    # the learned part: E - Σ(E_ref + shift) = scale * readout(h); the per-head readouts differ
    assert set(name.split(".")[0] for name, _ in model.named_parameters() if "heads" in name) == {"readout"}
    batch = Batch.from_data_list([graph_of(atoms, 1), graph_of(atoms, 0), graph_of(atoms, 1)])
    mixed = model(batch)
    torch.testing.assert_close(mixed["energy"], torch.cat([xtb["energy"], dft["energy"], xtb["energy"]]), rtol=0, atol=1e-10)
    torch.testing.assert_close(mixed["forces"][:6], xtb["forces"], rtol=0, atol=1e-10)
    torch.testing.assert_close(mixed["forces"][6:12], dft["forces"], rtol=0, atol=1e-10)


def test_a_head_is_rotation_invariant_and_its_forces_are_minus_the_gradient():
    model = two_head_model()
    atoms = methanol()
    rotated = atoms.copy()
    rotated.rotate(37, "x", center="COM")
    rotated.rotate(-71, "z", center="COM")
    assert float(predict(model, rotated, 1)["energy"]) == pytest.approx(float(predict(model, atoms, 1)["energy"]), abs=1e-9)
    forces = predict(model, atoms, 1)["forces"].numpy()
    step = 1e-5
    for atom, axis in ((0, 0), (3, 2), (5, 1)):
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[atom, axis] += step
        minus.positions[atom, axis] -= step
        derivative = (float(predict(model, plus, 1)["energy"]) - float(predict(model, minus, 1)["energy"])) / (2 * step)
        assert forces[atom, axis] == pytest.approx(-derivative, abs=1e-6)


def test_missing_or_unknown_heads_are_clear_errors():
    model = two_head_model()
    with pytest.raises(UnknownHeadError, match="has heads dft, xtb but the batch has no `head`"):
        predict(model, methanol(), None)
    with pytest.raises(UnknownHeadError, match=r"batch.head \[2\] outside 0..1"):
        predict(model, methanol(), 2)
    with pytest.raises(UnknownHeadError, match="'pbe' is not one of the model's heads: dft, xtb"):
        model.head_index("pbe")
    with pytest.raises(ValueError, match="atomic_energies must have one entry per head"):
        potential_from_config({**model.config, "atomic_energies": {"dft": model.config["atomic_energies"][0]}},
                              dtype=torch.float64)


def test_heads_round_trip_through_export_and_the_calculator(tmp_path):
    model = two_head_model()
    path = export_model(model, tmp_path / "two_heads.pt")
    loaded = mlip.load(path)
    assert loaded.heads == ["dft", "xtb"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    atoms = methanol()
    for index, name in enumerate(["dft", "xtb"]):
        expected = predict(model, atoms, index)
        atoms.calc = MLIPCalculator(path, head=name)
        assert atoms.get_potential_energy() == pytest.approx(float(expected["energy"]), abs=1e-9)
        np.testing.assert_allclose(atoms.get_forces(), expected["forces"].numpy(), atol=1e-9)
    calculator = MLIPCalculator(path, head="dft")
    atoms.calc = calculator
    atoms.info["head"] = "xtb"  # overrides the calculator's head, and is noticed as a change
    assert atoms.get_potential_energy() == pytest.approx(float(predict(model, atoms, 1)["energy"]), abs=1e-9)
    [batched] = calculator.predict_batch([atoms])
    assert batched["energy"] == pytest.approx(float(predict(model, atoms, 1)["energy"]), abs=1e-9)
    with pytest.raises(MLIPInputError, match="'gfn2' is not one of the model's heads: dft, xtb"):
        MLIPCalculator(path, head="gfn2")
    unnamed = methanol()
    unnamed.calc = MLIPCalculator(path)
    with pytest.raises(MLIPInputError, match=r"several heads \(dft, xtb\); choose one"):
        unnamed.get_potential_energy()
    with pytest.raises(MLIPInputError, match=r"structure 0: this model has several heads"):
        MLIPCalculator(path).predict_batch([methanol()])


def test_a_single_head_model_refuses_a_head_name(tmp_path):
    torch.manual_seed(0)
    single = build_potential({"backbone": dict(TINY), "cutoff": CUTOFF, "condition_dim": 4},
                             {"elements": [H, C, O], "atomic_energies": {H: -1.0, C: -2.0, O: -3.0}},
                             dtype=torch.float64)
    path = export_model(single, tmp_path / "single.pt")
    with pytest.raises(MLIPInputError, match="single head"):
        MLIPCalculator(path, head="dft")
    atoms = methanol()
    atoms.calc = MLIPCalculator(path)
    assert np.isfinite(atoms.get_potential_energy())


def test_metrics_are_reported_per_head():
    model = two_head_model()
    atoms = methanol()
    graphs = []
    for head, offset in ((0, 0.1), (1, 0.4), (1, 0.4)):
        graph = graph_of(atoms, head)
        graph.energy = predict(model, atoms, head)["energy"] + offset * len(atoms)  # 100 / 400 meV/atom off
        graph.energy_mask = torch.tensor([True])
        graph.forces, graph.forces_mask = torch.zeros(len(atoms), 3), torch.tensor([False])
        graph.stress, graph.stress_mask = torch.zeros(1, 3, 3), torch.tensor([False])
        graphs.append(graph)
    batch = Batch.from_data_list(graphs)
    accumulator = ErrorAccumulator(["dft", "xtb"])
    accumulator.update(model(batch), batch)
    metrics = accumulator.compute("val")
    assert metrics["val/heads/dft/energy_mae"] == pytest.approx(100.0, abs=1e-6)
    assert metrics["val/heads/xtb/energy_mae"] == pytest.approx(400.0, abs=1e-6)
    assert metrics["val/energy_mae"] == pytest.approx(300.0, abs=1e-6)


# ----------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def emt_files(tmp_path_factory) -> list[str]:
    return write_emt_data(tmp_path_factory.mktemp("emt_heads"), n_clusters=10, n_crystals=10)


def test_data_heads_label_every_graph_and_have_statistics_of_their_own(emt_files):
    clusters, crystals = emt_files
    heads = {"clusters": {"paths": [clusters]}, "crystals": {"paths": [crystals]}}
    data = PotentialDataModule(None, cutoff=4.0, heads=heads, val_fraction=0.2, test_fraction=0.2,
                               statistics_cache=False)
    data.setup()
    for dataset in (data.train_set, data.val_set):
        for index in range(len(dataset)):
            path, _ = dataset.locate(index)
            assert int(dataset[index].head) == (0 if path.name == "clusters.h5" else 1)
    assert data.test_names == ["clusters", "crystals"] and isinstance(data.test_dataloader(), list)
    assert all((dataset.heads == index).all() for index, dataset in enumerate(data.test_sets.values()))
    combined, per_head = data.statistics(), data.head_statistics()
    assert per_head["clusters"].n_structures + per_head["crystals"].n_structures == combined.n_structures
    assert per_head["crystals"].n_with_stress == per_head["crystals"].n_structures
    assert per_head["clusters"].n_with_stress == 0
    # the single-head split of the same files in the same order is the same split
    single = PotentialDataModule([clusters, crystals], cutoff=4.0, val_fraction=0.2, test_fraction=0.2,
                                 statistics_cache=False)
    single.setup()
    assert np.array_equal(single.train_set.global_indices, data.train_set.global_indices)


def test_head_weights_set_the_sampling_proportions(emt_files):
    clusters, crystals = emt_files
    heads = {"clusters": {"paths": [clusters], "weight": 3.0}, "crystals": {"paths": [crystals], "weight": 1.0}}
    data = PotentialDataModule(None, cutoff=4.0, heads=heads, val_fraction=0.1, statistics_cache=False)
    torch.manual_seed(0)
    sampler = data.train_dataloader().sampler
    drawn = np.concatenate([data.train_set.heads[list(sampler)] for _ in range(50)])
    assert np.mean(drawn == 0) == pytest.approx(0.75, abs=0.03)


@pytest.mark.parametrize(("options", "message"), [
    ({"paths": ["CLUSTERS"]}, "data.paths and data.heads are both set"),
    ({"val_paths": ["CLUSTERS"]}, "data.val_paths cannot be combined with data.heads"),
    ({"heads": {"a": {"paths": ["CLUSTERS"]}, "b": {"paths": ["CLUSTERS"]}}}, "in the files of both 'a' and 'b'"),
    ({"heads": {"a": {"paths": ["CLUSTERS"], "weight": 1.0}, "b": {"paths": ["CRYSTALS"]}}}, "to every head or to none"),
    ({"heads": {"a": {"files": ["CLUSTERS"]}}}, r"data.heads.a must be a mapping with `paths`"),
    ({"heads": {"a/b": {"paths": ["CLUSTERS"]}}}, "without '/'"),
])
def test_bad_head_configs_name_the_field(emt_files, options, message):
    clusters, crystals = emt_files
    options = json.loads(json.dumps(options).replace("CLUSTERS", clusters).replace("CRYSTALS", crystals))
    options.setdefault("heads", {"a": {"paths": [clusters]}, "b": {"paths": [crystals]}})
    paths = options.pop("paths", None)
    with pytest.raises(ValueError, match=message):
        PotentialDataModule(paths, cutoff=4.0, **options)


# ----------------------------------------------------------------------------- training runs
def head_overrides(emt_files, run_dir, **extra):
    clusters, crystals = emt_files
    return tiny_overrides(emt_files, run_dir, **{
        "data.paths": "null",
        "data.heads": f"{{clusters:{{paths:[{clusters}],weight:1.0}},crystals:{{paths:[{crystals}],weight:1.0}}}}",
        "trainer.max_epochs": 1,
        "data.test_fraction": 0.2,
        "checkpoint.every_n_train_steps": 2,
        **extra,
    })


def test_multi_head_run_trains_exports_tests_per_head_and_resumes(emt_files, tmp_path):
    run_dir = tmp_path / "runs" / "heads"
    config = compose_config(head_overrides(emt_files, run_dir))
    results = train(config, run_dir)
    assert results["global_step"] > 0
    assert {"test/clusters/forces_mae", "test/crystals/stress_mae"} <= set(results["test"])
    assert "val/heads/crystals/stress_mae" in results["fit"] and "val/heads/clusters/energy_mae" in results["fit"]
    head_statistics = json.loads((run_dir / "head_statistics.json").read_text())
    assert set(head_statistics) == {"clusters", "crystals"}
    model = mlip.load(run_dir / "best_model.pt")
    assert model.heads == ["clusters", "crystals"]
    for index, name in enumerate(model.heads):  # each head's references are its own data's least squares
        fitted = {int(z): e for z, e in head_statistics[name]["atomic_energies"].items()}
        assert model.head_values(name)["atomic_energies"] == pytest.approx(fitted, abs=1e-5)
    assert model.head_values("clusters")["atomic_energies"] != pytest.approx(model.head_values("crystals")["atomic_energies"])
    first = results["global_step"]
    resumed = train(compose_config(head_overrides(emt_files, run_dir, **{"trainer.max_epochs": 2})), run_dir)
    assert resumed["resumed_from"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == 2 * first


def test_replay_finetuning_keeps_the_pretrained_head_and_starts_the_new_one_from_it(emt_files, tmp_path):
    """A single-head model fine-tuned into two heads: before the first step the replay head is the
    pretrained model exactly; the new head has the pretrained backbone and readout with its own
    references. The run trains both, records the heads, and resumes."""
    torch.manual_seed(3)
    config = {"backbone": {"name": "mace", "num_channels": 8, "correlation": 2, "num_layers": 1, "radial_mlp": [16]},
              "cutoff": 4.0, "condition_dim": 4, "readout_hidden": [8]}
    statistics = {"elements": [29, 13], "atomic_energies": {29: -0.1, 13: -0.2}, "avg_num_neighbors": 8.0,
                  "scale": 0.5, "shift": 0.01}
    pretrained_path = export_model(build_potential(config, statistics, dtype=torch.float32), tmp_path / "pretrained.pt")
    source = mlip.load(pretrained_path, dtype=torch.float64)
    pretrained = read_pretrained(pretrained_path)
    heads = {"old": {"atomic_energies": {29: 0.0, 13: 0.0}}, "new": {"atomic_energies": {29: -3.0, 13: -4.0}}}
    model = build_finetuned_potential(pretrained, {"elements": [29, 13], "heads": heads}, "average",
                                      dtype=torch.float64, replay_head="old").eval()
    assert model.heads == ["old", "new"]
    cluster = Atoms("Cu4Al", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0, 0, 2.5], [1.3, 1.3, 1.3]])
    graph = atoms_to_graph(cluster, 4.0, torch.float64)
    expected = source(Batch.from_data_list([graph]))
    old, new = (model(Batch.from_data_list([graph_with_head(graph, index)])) for index in (0, 1))
    torch.testing.assert_close(old["energy"], expected["energy"], rtol=0, atol=1e-12)
    torch.testing.assert_close(old["forces"], expected["forces"], rtol=0, atol=1e-12)
    torch.testing.assert_close(new["forces"], expected["forces"], rtol=0, atol=1e-12)  # same readout, scale and shift
    assert model.head_values("new")["atomic_energies"] == {29: -3.0, 13: -4.0}
    with pytest.raises(ValueError, match="replay_head='gfn2' must be one of the run's heads"):
        build_finetuned_potential(pretrained, {"elements": [29, 13], "heads": heads}, "average",
                                  dtype=torch.float64, replay_head="gfn2")
    with pytest.raises(ValueError, match="pretrained_head='old'.*has a single head"):
        build_finetuned_potential(pretrained, {"elements": [29, 13], "heads": heads}, "average",
                                  dtype=torch.float64, pretrained_head="old")

    run_dir = tmp_path / "runs" / "replay"
    overrides = head_overrides(emt_files, run_dir, **{
        "init_from": str(pretrained_path), "finetune.atomic_energies": "average", "finetune.replay_head": "clusters",
        "model.backbone.num_layers": 1})
    results = train(compose_config(overrides), run_dir)
    exported = read_export(run_dir / "best_model.pt")
    assert exported["training"]["finetuned_from"]["replay_head"] == "clusters"
    assert exported["training"]["finetuned_from"]["heads"] == ["clusters", "crystals"]
    loaded = mlip.load(run_dir / "best_model.pt")
    assert loaded.head_values("clusters")["atomic_energies"] == pytest.approx({29: -0.1, 13: -0.2}, abs=1e-6)
    resumed = train(compose_config(overrides[:-1] + ["trainer.max_epochs=2"]), run_dir)
    assert resumed["global_step"] == 2 * results["global_step"]

    # a multi-head file: fine-tuning one of its heads into a single-head run
    single = build_finetuned_potential(read_pretrained(run_dir / "best_model.pt"), {"elements": [29, 13]}, "keep",
                                       dtype=torch.float64, pretrained_head="crystals").eval()
    assert single.heads is None
    two_heads = mlip.load(run_dir / "best_model.pt", dtype=torch.float64)
    torch.testing.assert_close(single(Batch.from_data_list([graph]))["energy"],
                               two_heads(Batch.from_data_list([graph_with_head(graph, 1)]))["energy"], rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="several heads .*finetune.pretrained_head"):
        build_finetuned_potential(read_pretrained(run_dir / "best_model.pt"), {"elements": [29, 13]}, "keep",
                                  dtype=torch.float64)


def graph_with_head(graph, head: int):
    copy = graph.clone()
    copy.head = torch.tensor([head])
    return copy


def test_mlip_eval_mlip_md_and_the_zoo_take_a_head(tmp_path, capsys):
    from mlip.cli.evaluate import main as evaluate
    from mlip.cli.md import main as md
    from mlip.data.structure import Structure
    from mlip.data.writer import write_structures
    from mlip.zoo.models import ZooModel

    model = two_head_model()
    path = export_model(model, tmp_path / "two_heads.pt")
    atoms = methanol()
    expected = float(predict(model, atoms, 1)["energy"])
    data = tmp_path / "methanol.h5"
    write_structures(data, [Structure(numbers=atoms.numbers, positions=atoms.positions, energy=expected,
                                      forces=predict(model, atoms, 1)["forces"].numpy())])
    with pytest.raises(SystemExit, match=r"several heads; choose one of dft, xtb .*--head"):
        evaluate([str(path), "--data", str(data), "--no-plots", "--out", str(tmp_path / "eval")])
    assert evaluate([str(path), "--data", str(data), "--no-plots", "--out", str(tmp_path / "eval"), "--head", "xtb"]) == 0
    import csv

    with open(tmp_path / "eval" / "metrics.csv", newline="") as handle:
        [row] = [r for r in csv.DictReader(handle) if r.get("subset") in ("all", "", None)] or [None]
    errors = {key: float(value) for key, value in row.items() if key.endswith("_mae") and value not in ("", "-")}
    assert errors and all(value < 1e-6 for value in errors.values()), errors  # labels = the xtb head's predictions
    with pytest.raises(SystemExit, match=r"'pbe' is not one of the model's heads: dft, xtb"):
        evaluate([str(path), "--data", str(data), "--no-plots", "--out", str(tmp_path / "eval"), "--head", "pbe"])
    calculator = ZooModel.from_path(path, head="xtb").make_calculator()
    atoms.calc = calculator
    assert atoms.get_potential_energy() == pytest.approx(expected, abs=1e-9)
    with pytest.raises(SystemExit, match=r"several heads .*pass --head <name>"):
        md([str(path), str(data), "--steps", "2"])
    assert md([str(path), str(data), "--steps", "2", "--head", "dft", "--timestep", "0.1"]) == 0
