"""Fine-tuning from an exported model (`init_from`, `finetune.*`; mlip.train.finetune, mlip.models.elements):
element expansion keeps the known elements' predictions, reference-energy choices, frozen parameters,
provenance in the export, resume, and clear errors for bad inputs."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch
from ase import Atoms
from torch_geometric.data import Batch
from train_helpers import compose_config, tiny_overrides, write_emt_data

import mlip
from mlip.data.graph import atoms_to_graph
from mlip.export import export_model, read_export
from mlip.models.build import UnregisteredBackboneError, build_potential
from mlip.train.build import train
from mlip.train.finetune import (
    build_finetuned_potential,
    finetune_references,
    freeze_parameters,
    read_pretrained,
    sha256_of,
)

CUTOFF = 3.0  # Å
SMALL = {  # two MACE layers: the second has the residual self-connection (an e3nn product with the species)
    "mace": {"num_channels": 4, "num_layers": 2, "correlation": 2, "radial_mlp": [8]},
    "facet": {"num_channels": 4, "num_layers": 2, "num_spline_knots": 6},
    "transip": {"dim": 8, "depth": 1, "heads": 2, "num_fourier": 4},
}
H, C, O, LI = 1, 6, 8, 3  # noqa: E741
PRETRAINED_ENERGIES = {H: -13.6123456789, C: -1029.5, O: -2041.3}  # eV


def pretrained_file(path, name="mace", dtype=torch.float64, elements=(H, C, O), training=None, **extra):
    """A small model of ``name`` (random weights, nonzero shift) exported to ``path``."""
    torch.manual_seed(1)
    config = {"backbone": {"name": name, **SMALL[name]}, "cutoff": CUTOFF, "condition_dim": 4, "readout_hidden": [4], **extra}
    statistics = {"elements": list(elements), "atomic_energies": {z: PRETRAINED_ENERGIES.get(z, -5.0) for z in elements},
                  "avg_num_neighbors": 3.0, "scale": 1.3, "shift": -0.2}
    potential = build_potential(config, statistics, dtype=dtype)
    return export_model(potential, path, training_info=training or {"global_step": 123, "monitor": "val/loss", "value": 0.5})


def methanol(dtype=torch.float64) -> Batch:
    atoms = Atoms("CH3OH", positions=[[0, 0, 0], [1.09, 0, 0], [-0.36, 1.03, 0], [-0.36, -0.51, 0.89],
                                       [-0.47, -0.67, -1.16], [-1.4, -0.6, -1.2]])
    return Batch.from_data_list([atoms_to_graph(atoms, CUTOFF, dtype)])


def lithium_hydride(dtype=torch.float64) -> Batch:
    atoms = Atoms("LiH", positions=[[0, 0, 0], [1.6, 0, 0]])
    return Batch.from_data_list([atoms_to_graph(atoms, CUTOFF, dtype)])


STATISTICS = {"elements": [H, LI, C, O], "atomic_energies": {H: -13.0, LI: -7.4, C: -1000.0, O: -2000.0},
              "isolated_atom_energies": {H: -13.5, LI: -7.5, C: -1028.0, O: -2040.0}}


# ----------------------------------------------------------------------------- element expansion
@pytest.mark.parametrize("name", sorted(SMALL))
def test_element_expansion_keeps_the_known_elements_predictions(name, tmp_path):
    """A structure of known elements has the pretrained energy and forces (float64, atol 1e-12)
    after Li was added; the new element has rows of its own, and the model predicts for it."""
    pretrained = read_pretrained(pretrained_file(tmp_path / "model.pt", name))
    source = mlip.load(pretrained.path)
    model = build_finetuned_potential(pretrained, STATISTICS, {LI: -7.5}, dtype=torch.float64).eval()
    assert model.elements == [H, C, O, LI]  # known species keep their index, new ones come after
    expected, actual = source(methanol()), model(methanol())
    torch.testing.assert_close(actual["energy"], expected["energy"], rtol=0, atol=1e-12)
    torch.testing.assert_close(actual["forces"], expected["forces"], rtol=0, atol=1e-12)
    table = model.backbone.embedding.species.weight
    torch.testing.assert_close(table[:3], source.backbone.embedding.species.weight, rtol=0, atol=0)
    assert table.shape[0] == 4 and not torch.equal(table[3], table[0])
    assert torch.isfinite(model(lithium_hydride())["energy"]).all()


def test_mace_residual_self_connection_is_rescaled_for_the_new_element_count(tmp_path):
    """The e3nn self-connection normalises by the number of elements: copying its weights without
    the rescaling would change the known elements' energies (what the expansion test guards)."""
    pretrained = read_pretrained(pretrained_file(tmp_path / "model.pt", "mace"))
    source = mlip.load(pretrained.path)
    model = build_finetuned_potential(pretrained, STATISTICS, {LI: -7.5}, dtype=torch.float64).eval()
    old = source.backbone.layers[1].self_connection
    new = model.backbone.layers[1].self_connection
    assert old.instructions[0].path_weight != new.instructions[0].path_weight
    with torch.no_grad():  # undo the rescaling: the prediction moves
        view = new.weight_view_for_instruction(0)
        view[:, :3, :] = old.weight_view_for_instruction(0)
    assert not torch.allclose(model(methanol())["energy"], source(methanol())["energy"], rtol=0, atol=1e-9)


def test_no_new_elements_copies_every_weight(tmp_path):
    pretrained = read_pretrained(pretrained_file(tmp_path / "model.pt"))
    source = mlip.load(pretrained.path)
    model = build_finetuned_potential(pretrained, {"elements": [H, O]}, "keep", dtype=torch.float64)
    assert model.elements == source.elements  # a known element absent from the new data stays
    for key, tensor in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], tensor), key


# ----------------------------------------------------------------------------- reference energies
def test_keep_references_are_bitwise_the_files(tmp_path):
    path = pretrained_file(tmp_path / "model.pt", dtype=torch.float32)
    stored = read_export(path)["state_dict"]["atomic_energies"]
    model = build_finetuned_potential(read_pretrained(path), {"elements": [H, C, O]}, "keep", dtype=torch.float32)
    assert torch.equal(model.atomic_energies, stored)
    assert float(model.shift) == float(read_export(path)["state_dict"]["shift"])
    assert model.reference_energies == "average"  # the pretrained mode


def test_keep_with_a_new_element_is_an_error_naming_it(tmp_path):
    pretrained = read_pretrained(pretrained_file(tmp_path / "model.pt"))
    with pytest.raises(ValueError, match=r"keep.*Li \(Z=3\).*finetune.atomic_energies=\{Li: <eV>\}"):
        build_finetuned_potential(pretrained, STATISTICS, "keep", dtype=torch.float64)


def test_reference_choices():
    known = {H: -13.6, C: -1029.5, O: -2041.3}
    elements = [H, C, O, LI]
    average = finetune_references("average", known, "average", -0.2, elements, STATISTICS)
    assert average == {"atomic_energies": {H: -13.0, C: -1000.0, O: -2000.0, LI: -7.4}, "reference_energies": "average",
                       "shift": -0.2}
    isolated = finetune_references("isolated", known, "average", -0.2, elements, STATISTICS)
    assert isolated["atomic_energies"] == STATISTICS["isolated_atom_energies"] and isolated["shift"] == 0.0
    assert isolated["reference_energies"] == "isolated"
    mapping = finetune_references({LI: -7.0, H: -13.0}, known, "isolated", 0.0, elements, STATISTICS)
    assert mapping["atomic_energies"] == {H: -13.0, C: -1029.5, O: -2041.3, LI: -7.0}
    assert mapping["reference_energies"] == "isolated"  # the pretrained mode, the values given as such
    # a known element absent from the new data keeps its reference under average
    partial = finetune_references("average", known, "average", 0.0, [H, C, O], {"atomic_energies": {H: -1.0}})
    assert partial["atomic_energies"] == {H: -1.0, C: -1029.5, O: -2041.3}
    with pytest.raises(ValueError, match=r"isolated.*Li \(Z=3\)"):
        finetune_references("isolated", known, "average", 0.0, elements, {"isolated_atom_energies": {H: 1, C: 1, O: 1}})
    # isolated: a pretrained element the new data lacks (O here) keeps its reference, with a warning;
    # one the data has still needs an isolated-atom energy
    with pytest.warns(UserWarning, match=r"no isolated-atom energy for O \(Z=8\), which the training data does not"):
        kept = finetune_references("isolated", known, "average", 0.0, [H, C, O],
                                   {"elements": [H, C], "isolated_atom_energies": {H: -13.5, C: -1028.0}})
    assert kept["atomic_energies"] == {H: -13.5, C: -1028.0, O: -2041.3} and kept["shift"] == 0.0
    with pytest.raises(ValueError, match=r"isolated.*C \(Z=6\)"):
        finetune_references("isolated", known, "average", 0.0, [H, C, O], {"elements": [H, C], "isolated_atom_energies": {H: 1}})
    with pytest.raises(ValueError, match=r"new element\(s\) Li"):
        finetune_references({H: -13.0}, known, "average", 0.0, elements, STATISTICS)
    with pytest.raises(ValueError, match=r"N \(Z=7\) is neither in the pretrained model nor"):
        finetune_references({7: -1.0, LI: -7.0}, known, "average", 0.0, elements, STATISTICS)


# ----------------------------------------------------------------------------- freezing
def test_freeze_pattern_matching_nothing_lists_parameter_names(tmp_path):
    model = mlip.load(pretrained_file(tmp_path / "model.pt"))
    with pytest.raises(ValueError, match=r"finetune.freeze: pattern\(s\) 'backbone.nothing.\*' match no parameter.*"
                                         r"backbone.embedding.species"):
        freeze_parameters(model, ["backbone.embedding.*", "backbone.nothing.*"])
    assert all(parameter.requires_grad for parameter in model.parameters())  # nothing frozen on an error
    with pytest.raises(ValueError, match="freezes every parameter"):
        freeze_parameters(model, ["*"])
    frozen = freeze_parameters(model, ["backbone.embedding.*"])
    assert frozen == ["backbone.embedding.condition.weight", "backbone.embedding.species.weight"]
    assert sorted(name for name, parameter in model.named_parameters() if not parameter.requires_grad) == frozen


def test_frozen_parameters_are_left_out_of_the_optimiser_and_the_ema(tmp_path):
    from mlip.train.ema import ExponentialMovingAverage
    from mlip.train.module import PotentialModule

    model = mlip.load(pretrained_file(tmp_path / "model.pt")).train()
    frozen = set(freeze_parameters(model, ["backbone.layers.0.*"]))
    module = PotentialModule(model, ema_decay=0.5)
    trainable = {id(parameter) for parameter in module.trainable_parameters()}
    names = {name for name, parameter in model.named_parameters() if id(parameter) in trainable}
    assert names and not names & frozen and names | frozen == {name for name, _ in model.named_parameters()}
    ema = ExponentialMovingAverage(model, decay=0.5)
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)  # as if a step had moved everything
    ema.update(model)
    averaged = dict(ema.averaged.named_parameters())
    for name in frozen:
        assert torch.equal(averaged[name], before[name]), name
    moved = sorted(set(averaged) - frozen)[0]  # a trained parameter: its average moves
    assert not torch.equal(averaged[moved], before[moved])


# ----------------------------------------------------------------------------- bad inputs
def test_bad_model_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"init_from: no model file at .*missing\.pt"):
        read_pretrained(tmp_path / "missing.pt")
    payload = read_export(pretrained_file(tmp_path / "model.pt"))
    payload["potential_config"]["backbone"] = {"_target_": "os.system", **SMALL["mace"]}
    torch.save(payload, tmp_path / "evil.pt")
    with pytest.raises(UnregisteredBackboneError, match=r"init_from: .*evil\.pt: potential_config.backbone._target_ = 'os.system'"):
        read_pretrained(tmp_path / "evil.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"init_from=.*other\.pt: .*not an exported mlip model"):
        read_pretrained(tmp_path / "other.pt")


# ----------------------------------------------------------------------------- training runs
TINY_MACE = {"num_channels": 8, "correlation": 2, "num_layers": 2, "radial_mlp": [16]}  # = tiny_overrides' + 2 layers
CU, AL = 29, 13


@pytest.fixture(scope="module")
def emt_files(tmp_path_factory) -> list[str]:
    return write_emt_data(tmp_path_factory.mktemp("emt"), n_clusters=8, n_crystals=8)


@pytest.fixture(scope="module")
def copper_model(tmp_path_factory):
    """A pretrained model that knows Cu only (random weights), float32 as the training config."""
    torch.manual_seed(2)
    config = {"backbone": {"name": "mace", **TINY_MACE}, "cutoff": 4.0, "condition_dim": 4, "readout_hidden": [8]}
    statistics = {"elements": [CU], "atomic_energies": {CU: -0.1}, "avg_num_neighbors": 8.0, "scale": 0.5, "shift": 0.01}
    potential = build_potential(config, statistics, dtype=torch.float32)
    path = tmp_path_factory.mktemp("pretrained") / "copper.pt"
    return export_model(potential, path, training_info={"global_step": 42, "monitor": "val/loss", "value": 0.1})


def finetune_overrides(emt_files, run_dir, model, **extra):
    return tiny_overrides(emt_files, run_dir, **{
        "model.backbone.num_layers": 2,
        "model.cutoff": 5.0,  # the file's is 4.0: replaced, with a warning
        "init_from": str(model),
        "finetune.atomic_energies": "{Al: -0.05}",
        "finetune.freeze": "[backbone.layers.0.*,readout.*]",
        "trainer.max_epochs": 1,
        "data.test_fraction": 0.0,
        "test_after_fit": False,
        "checkpoint.every_n_train_steps": 2,
        **extra,
    })


class InitialWeights(pl.Callback):
    """Records the potential's weights when training starts (after any checkpoint was restored)."""

    def __init__(self):
        self.weights: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer, pl_module):
        self.weights = {key: value.detach().clone() for key, value in pl_module.potential.state_dict().items()}


def test_finetuning_run_freezes_records_provenance_and_resumes(emt_files, copper_model, tmp_path):
    run_dir = tmp_path / "runs" / "finetuned"
    source = read_export(copper_model)["state_dict"]
    recorder = InitialWeights()
    with pytest.warns(UserWarning, match=r"architecture comes from .*copper\.pt; .*replaced by the file's: .*model.cutoff: 5.0 -> 4.0"):
        results = train(compose_config(finetune_overrides(emt_files, run_dir, copper_model)), run_dir,
                        extra_callbacks=[recorder])
    written = (run_dir / "config.yaml").read_text()
    assert "cutoff: 4.0" in written and "cutoff: 5.0" not in written  # the data graphs use the file's cutoff too
    first_step = results["global_step"]
    assert first_step > 0 and results["resumed_from"] is None
    start = recorder.weights
    # fresh start: the Cu weights are the file's (the species table got an Al row)
    assert torch.equal(start["backbone.embedding.species.weight"][:1], source["backbone.embedding.species.weight"])
    assert torch.equal(start["atomic_energies"][:1], source["atomic_energies"])

    exported = read_export(run_dir / "best_model.pt")
    weights = exported["state_dict"]
    assert exported["elements"] == [CU, AL]
    assert torch.equal(weights["atomic_energies"], torch.tensor([source["atomic_energies"][0].item(), -0.05]))
    frozen = [k for k in source if k.startswith(("backbone.layers.0.", "readout.")) and k in dict(mlip.load(copper_model).named_parameters())]
    assert frozen
    for key in frozen:  # frozen: the EMA export equals the pretrained weights exactly (Cu slice of per-element ones)
        known = weights[key] if weights[key].shape == source[key].shape else weights[key][: source[key].shape[0]]
        assert torch.equal(known, source[key]), key
    assert any(weights[key].shape != source[key].shape for key in frozen)  # a per-element tensor among them
    trained = [k for k in ("backbone.layers.1.linear_up.weight", "backbone.embedding.condition.weight")]
    for key in trained:
        assert not torch.equal(weights[key], source[key]), key
    provenance = exported["training"]["finetuned_from"]
    assert provenance["path"] == str(copper_model.resolve()) and provenance["sha256"] == sha256_of(copper_model)
    assert provenance["training"] == {"global_step": 42, "monitor": "val/loss", "value": 0.1}
    assert provenance["new_elements"] == [AL] and provenance["freeze"] == ["backbone.layers.0.*", "readout.*"]
    assert provenance["atomic_energies"] == {"Al": -0.05}
    assert json.loads((run_dir / "finetune.json").read_text())["sha256"] == provenance["sha256"]
    assert exported["config"]["init_from"] == str(copper_model)

    # resume (as after kill -9): continues from last.ckpt, not from the file
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    resumed = train(compose_config(finetune_overrides(emt_files, run_dir, copper_model, **{"trainer.max_epochs": 2})),
                    run_dir, extra_callbacks=[recorder])
    assert resumed["resumed_from"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == 2 * first_step
    start = recorder.weights
    for key, tensor in start.items():
        assert torch.equal(tensor, last["state_dict"][f"potential.{key}"]), key
    assert not torch.equal(start["backbone.layers.1.linear_up.weight"], source["backbone.layers.1.linear_up.weight"])

    # a different file under the same name: resuming is refused before anything is written
    changed = tmp_path / "changed.pt"
    payload = read_export(copper_model)
    payload["training"] = {"global_step": 1}
    torch.save(payload, changed)
    with pytest.raises(ValueError, match=r"resume: this run was fine-tuned from .*copper\.pt \(sha256"):
        train(compose_config(finetune_overrides(emt_files, run_dir, changed, **{"trainer.max_epochs": 3})), run_dir)


def test_finetuning_run_input_errors_name_the_field(emt_files, copper_model, tmp_path):
    run_dir = tmp_path / "runs" / "bad"
    with pytest.raises(FileNotFoundError, match=r"init_from: no model file at .*nothing\.pt"):
        train(compose_config(finetune_overrides(emt_files, run_dir, tmp_path / "nothing.pt")), run_dir)
    with pytest.raises(ValueError, match=r"finetune.freeze: pattern\(s\) 'backbone.no_such.\*' match no parameter"):
        train(compose_config(finetune_overrides(emt_files, run_dir, copper_model,
                                                **{"finetune.freeze": "[backbone.no_such.*]"})), run_dir)
    with pytest.raises(ValueError, match=r"keep: .*new element\(s\) Al \(Z=13\)"):
        train(compose_config(finetune_overrides(emt_files, run_dir, copper_model,
                                                **{"finetune.atomic_energies": "keep"})), run_dir)
    overrides = finetune_overrides(emt_files, run_dir, copper_model, **{"model/backbone": "transip"})
    overrides = [item for item in overrides if not item.startswith("model.backbone.")]
    with pytest.raises(ValueError, match=r"holds a mace backbone .* model/backbone=mace"):
        train(compose_config(overrides + ["model.backbone.dim=8"]), run_dir)
    assert not (run_dir / "config.yaml").exists()


def test_validation_elements_known_to_the_pretrained_model_are_allowed(tmp_path):
    from ase.build import bulk
    from train_helpers import emt_structure

    from mlip.data.writer import write_structures
    from mlip.train.build import build_datamodule, check_split_elements

    copper = [emt_structure(bulk("Cu", "fcc", a=3.6 + 0.01 * k, cubic=True), "Cu", k) for k in range(4)]
    alloy = bulk("Cu", "fcc", a=3.6, cubic=True)
    alloy.numbers[0] = AL
    write_structures(tmp_path / "train.h5", copper, source="test")
    write_structures(tmp_path / "val.h5", [emt_structure(alloy, "CuAl", 0)], source="test")
    overrides = tiny_overrides([str(tmp_path / "train.h5")], tmp_path / "runs" / "x",
                               **{"data.val_paths": f"[{tmp_path / 'val.h5'}]", "data.test_fraction": 0.0})
    datamodule = build_datamodule(compose_config(overrides))
    with pytest.raises(ValueError, match=r"missing from the training split, which has Cu \(Z=29\)"):
        check_split_elements(datamodule)
    check_split_elements(datamodule, known_elements=[CU, AL])  # a pretrained model that knows Al


def test_finetuning_run_killed_with_sigkill_resumes_from_last_checkpoint(emt_files, copper_model, tmp_path):
    """`mlip-train ... init_from=...` killed mid-run and run again continues from last.ckpt (not from the file)."""
    import signal
    import subprocess

    from test_resume import REPO_ROOT, subprocess_environment, training_command, wait_for

    run_dir = tmp_path / "runs" / "killed"
    command = training_command(emt_files, run_dir, **{
        "model.backbone.num_layers": 2, "init_from": str(copper_model), "finetune.atomic_energies": "{Al: -0.05}"})
    last = run_dir / "checkpoints" / "last.ckpt"
    first = subprocess.Popen(command, cwd=REPO_ROOT, env=subprocess_environment(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(last, first, timeout=300)
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait()
    saved_step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    resumed = subprocess.run(command, cwd=REPO_ROOT, env=subprocess_environment(), capture_output=True, text=True,
                             timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["resumed_from"] == str(last) and results["global_step"] > saved_step
    assert f"resuming from {last}" in resumed.stdout + resumed.stderr
    exported = read_export(run_dir / "best_model.pt")
    assert exported["training"]["finetuned_from"]["sha256"] == sha256_of(copper_model)
    assert exported["elements"] == [CU, AL]
