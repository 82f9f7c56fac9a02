"""`Potential` itself: stress of molecules, charge/spin, unknown elements, precision, direct forces,
training mode, the backbone contract it checks, building and loading in a given dtype.

The physics every backbone must satisfy through `Potential` (symmetries, derivatives, cutoff,
isolated atoms, batching) is tests/test_backbone_contract.py (mlip.testing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from torch_geometric.data import Batch

import mlip
from mlip.data.graph import structure_to_graph
from mlip.data.structure import Structure
from mlip.export import export_model, load
from mlip.models import MACEBackbone, Potential, build_potential
from mlip.models.backbones import FacetBackbone, NodeEmbedding, TransIPBackbone
from mlip.models.build import default_dtype, potential_from_config, rebuild

CUTOFF = 3.0  # Å
ELEMENTS = [1, 6, 8, 14]
ATOMIC_ENERGIES = {1: -13.6, 6: -1029.5, 8: -2041.3, 14: -7875.0}  # eV
SCALE, SHIFT = 1.7, -0.3  # eV, eV/atom


def make_potential(dtype=torch.float64, conditioning=True, direct_forces=False, correlation=3, num_layers=2):
    torch.manual_seed(0)
    with default_dtype(dtype):  # built in its precision (e3nn bakes its constants in the default dtype)
        backbone = MACEBackbone(
            num_elements=len(ELEMENTS),
            cutoff=CUTOFF,
            condition_dim=8 if conditioning else 0,
            num_channels=8,
            lmax=1,
            correlation=correlation,
            num_layers=num_layers,
            radial_mlp=[16],
            avg_num_neighbors=3.0,
        )
        return Potential(
            backbone,
            ELEMENTS,
            ATOMIC_ENERGIES,
            scale=SCALE,
            shift=SHIFT,
            cutoff=CUTOFF,
            charge_spin_conditioning=conditioning,
            condition_dim=8,
            direct_forces=direct_forces,
            readout_hidden=[8],
        )


@pytest.fixture(scope="module")
def potential():
    return make_potential()


def graph(structure: Structure, dtype=torch.float64):
    return Batch.from_data_list([structure_to_graph(structure, CUTOFF, dtype)])


def transformed(structure: Structure, matrix: np.ndarray, translation=(0.0, 0.0, 0.0)) -> Structure:
    """Apply r -> matrix r + translation (Å) to positions and the cell."""
    cell = None if structure.cell is None else structure.cell @ matrix.T
    return Structure(
        numbers=structure.numbers,
        positions=structure.positions @ matrix.T + np.asarray(translation),
        cell=cell,
        pbc=structure.pbc,
        charge=structure.charge,
        spin=structure.spin,
    )


def strained(structure: Structure, strain: np.ndarray) -> Structure:
    return transformed(structure, np.eye(3) + strain)


def energy(potential, structure: Structure) -> float:
    return float(potential(graph(structure), compute_forces=False)["energy"][0].detach())


ROTATION = Rotation.from_euler("zyx", [0.7, -1.1, 2.3]).as_matrix()
REFLECTION = np.diag([1.0, -1.0, 1.0]) @ ROTATION


def test_stress_is_nan_for_molecules_only(potential, molecule, crystal):
    batch = Batch.from_data_list([structure_to_graph(s, CUTOFF, torch.float64) for s in (molecule, crystal)])
    stress = potential(batch, compute_stress=True)["stress"]
    assert torch.isnan(stress[0]).all()
    assert torch.isfinite(stress[1]).all()


def test_charge_and_spin_change_energy_only_with_conditioning(molecule):
    def energies(potential):
        results = []
        for charge, spin in [(0, 1), (1, 2), (-1, 2), (0, 3), (7, 1)]:
            structure = Structure(molecule.numbers, molecule.positions, charge=charge, spin=spin)
            results.append(energy(potential, structure))
        return np.array(results)

    with_conditioning = energies(make_potential(conditioning=True))
    assert np.abs(with_conditioning[1:] - with_conditioning[0]).min() > 1e-6
    without = energies(make_potential(conditioning=False))
    np.testing.assert_array_equal(without, without[0])


def test_unknown_element_is_a_clear_error(potential):
    iron = Structure(numbers=[26, 8], positions=[[0, 0, 0], [1.8, 0, 0]])
    with pytest.raises(ValueError, match=r"Fe \(Z=26\)"):
        potential(graph(iron))


def test_missing_reference_energy_is_a_clear_error():
    backbone = MACEBackbone(num_elements=2, cutoff=CUTOFF, condition_dim=0, num_channels=4, num_layers=1)
    with pytest.raises(ValueError, match=r"O \(Z=8\)"):
        Potential(backbone, [1, 8], {1: -13.6}, cutoff=CUTOFF, charge_spin_conditioning=False)


def test_float32_path_runs(molecule, crystal):
    potential = make_potential(dtype=torch.float32)
    batch = Batch.from_data_list([structure_to_graph(s, CUTOFF, torch.float32) for s in (molecule, crystal)])
    out = potential(batch, compute_stress=True)
    assert out["energy"].dtype == torch.float32 and out["forces"].dtype == torch.float32
    assert torch.isfinite(out["forces"]).all() and torch.isfinite(out["stress"][1]).all()
    same_in_float64 = make_potential(dtype=torch.float64)  # built in float64, the float32 weights loaded
    same_in_float64.load_state_dict(potential.state_dict())
    reference = same_in_float64(Batch.from_data_list([structure_to_graph(s, CUTOFF, torch.float64) for s in (molecule, crystal)]))
    torch.testing.assert_close(out["forces"].double(), reference["forces"], atol=1e-5, rtol=1e-3)
    torch.testing.assert_close(out["energy"].double(), reference["energy"], atol=1e-2, rtol=0)


def test_direct_forces_are_equivariant(molecule):
    potential = make_potential(direct_forces=True)
    direct = potential(graph(molecule), compute_forces=False)["direct_forces"].detach().numpy()
    rotated = potential(graph(transformed(molecule, ROTATION)), compute_forces=False)["direct_forces"]
    np.testing.assert_allclose(rotated.detach().numpy(), direct @ ROTATION.T, atol=1e-10)
    assert np.abs(direct).max() > 1e-6


def test_training_mode_lets_force_and_stress_losses_backpropagate(potential, molecule, crystal):
    batch = Batch.from_data_list([structure_to_graph(s, CUTOFF, torch.float64) for s in (molecule, crystal)])
    out = potential(batch, compute_stress=True, training=True)
    periodic = torch.tensor([False, True])  # the molecule's NaN stress is selected away, as losses do
    loss = out["forces"].square().sum() + out["stress"][periodic].square().sum()
    loss.backward()
    gradients = [p.grad for p in potential.parameters() if p.grad is not None]
    assert gradients and any(float(g.abs().max()) > 0 for g in gradients)
    assert all(bool(torch.isfinite(g).all()) for g in gradients), "NaN stress of a molecule leaked into gradients"
    potential.zero_grad()


def test_build_potential_from_statistics_and_rebuild_from_config(molecule):
    config = {
        "backbone": {"_target_": "mlip.models.backbones.mace.MACEBackbone", "num_channels": 4, "num_layers": 1,
                     "correlation": 2, "radial_mlp": [8]},
        "cutoff": CUTOFF,
        "condition_dim": 4,
        "readout_hidden": [4],
    }
    statistics = {"elements": ELEMENTS, "atomic_energies": ATOMIC_ENERGIES, "scale": 2.0, "shift": 0.5,
                  "avg_num_neighbors": 5.5}
    built = build_potential(config, statistics, dtype=torch.float64)
    assert built.atomic_energies.dtype == torch.float64
    assert built.backbone.config["avg_num_neighbors"] == 5.5
    assert built.config["atomic_energies"] == [ATOMIC_ENERGIES[z] for z in ELEMENTS]
    rebuilt = Potential.from_config(built.config, dtype=torch.float64)
    rebuilt.load_state_dict(built.state_dict())
    expected = built(graph(molecule))["energy"]
    torch.testing.assert_close(rebuilt(graph(molecule))["energy"], expected, atol=1e-12, rtol=0)




# ------------------------------------------------------------------------------ precision
SMALL = {"mace": {"num_channels": 4, "num_layers": 2, "correlation": 3, "radial_mlp": [8]},
         "facet": {"num_channels": 4, "num_layers": 2, "num_spline_knots": 6},
         "transip": {"dim": 8, "depth": 1, "heads": 2, "num_fourier": 4}}


def small_config(name: str) -> dict:
    return {"backbone": {"name": name, **SMALL[name]}, "cutoff": CUTOFF, "condition_dim": 4, "readout_hidden": [4]}


STATISTICS = {"elements": ELEMENTS, "atomic_energies": ATOMIC_ENERGIES, "avg_num_neighbors": 5.0}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_a_loaded_float64_model_equals_one_built_in_float64(name, tmp_path):
    """Every parameter and buffer, persistent or not, of `mlip.load` of a float64 file equals the one
    of a model built directly in float64 (building in float32 and casting rounds e3nn's constants
    and the MACE-like `basis_*` buffers, which load_state_dict never restores)."""
    torch.manual_seed(0)
    built = build_potential(small_config(name), STATISTICS, dtype=torch.float64)
    loaded = mlip.load(export_model(built, tmp_path / "model.pt"))
    expected = {**dict(built.named_parameters()), **dict(built.named_buffers())}
    actual = {**dict(loaded.named_parameters()), **dict(loaded.named_buffers())}
    assert sorted(actual) == sorted(expected)
    non_persistent = set(expected) - set(built.state_dict())
    assert name != "mace" or any(".basis_" in key for key in non_persistent)  # the buffers at stake are compared
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype, key
        torch.testing.assert_close(actual[key], tensor, rtol=0, atol=0, msg=key)


def test_load_and_rebuild_in_another_dtype_build_it_there(tmp_path):
    """The calculator's float64 from a float32 training export: built in float64, not cast."""
    torch.manual_seed(0)
    single = build_potential(small_config("mace"), STATISTICS, dtype=torch.float32)
    reference = build_potential(small_config("mace"), STATISTICS, dtype=torch.float64)
    reference.load_state_dict(single.state_dict())
    for model in (load(export_model(single, tmp_path / "f32.pt"), dtype=torch.float64),
                  rebuild(single, torch.float64)):
        for key, tensor in {**dict(reference.named_parameters()), **dict(reference.named_buffers())}.items():
            torch.testing.assert_close(dict(model.named_buffers()).get(key, dict(model.named_parameters()).get(key)),
                                       tensor, rtol=0, atol=0, msg=key)


def test_builders_build_in_the_requested_dtype_and_leave_the_default_alone():
    before = torch.get_default_dtype()
    for dtype in (torch.float32, torch.float64):
        potential = build_potential(small_config("mace"), STATISTICS, dtype=dtype)
        assert {p.dtype for p in potential.parameters()} == {dtype}
        assert potential.atomic_energies.dtype == dtype
        assert {b.dtype for n, b in potential.named_buffers() if ".basis_" in n} == {dtype}
        rebuilt = potential_from_config(potential.config, dtype="float64")
        assert {p.dtype for p in rebuilt.parameters()} == {torch.float64}
    assert torch.get_default_dtype() == before


def test_a_builder_call_without_dtype_is_an_error():
    with pytest.raises(TypeError, match="dtype="):
        build_potential(small_config("transip"), STATISTICS)
    with pytest.raises(ValueError, match="dtype"):
        build_potential(small_config("transip"), STATISTICS, dtype="float16")


# ------------------------------------------------------------------------------ the backbone contract
def test_backbone_config_records_the_constructor_arguments():
    with default_dtype(torch.float64):
        backbone = TransIPBackbone(num_elements=2, cutoff=CUTOFF, dim=8, heads=2)
    assert backbone.config["_target_"] == "mlip.models.backbones.transip.TransIPBackbone"
    assert backbone.config["dim"] == 8 and backbone.config["depth"] == 2  # defaults filled in
    assert (backbone.num_elements, backbone.cutoff, backbone.condition_dim) == (2, CUTOFF, 0)
    with default_dtype(torch.float64):
        facet = FacetBackbone(num_elements=2, cutoff=CUTOFF, num_channels=4)
    # "None / auto" arguments are recorded as what they resolved to
    assert (facet.config["grid_quadrature"], facet.config["grid_degree"]) == ("axial", 11)
    with pytest.raises(ValueError, match="num_elements"):
        TransIPBackbone(num_elements=0, cutoff=CUTOFF)
    with pytest.raises(ValueError, match="cutoff"):
        TransIPBackbone(num_elements=1, cutoff=-1.0)


def test_a_backbone_must_take_the_contract_keywords():
    from mlip.models.backbones import Backbone

    with pytest.raises(TypeError, match="condition_dim"):
        class Incomplete(Backbone):  # noqa: F841
            def __init__(self, num_elements, cutoff, width=4):
                super().__init__()


def test_potential_checks_the_backbone_contract():
    backbone = MACEBackbone(num_elements=2, cutoff=CUTOFF, condition_dim=4, num_channels=4, num_layers=1)
    with pytest.raises(ValueError, match="num_elements=2 but the potential needs num_elements=3"):
        Potential(backbone, [1, 6, 8], ATOMIC_ENERGIES, cutoff=CUTOFF, condition_dim=4)
    with pytest.raises(ValueError, match="cutoff"):
        Potential(backbone, [1, 6], ATOMIC_ENERGIES, cutoff=CUTOFF + 1, condition_dim=4)
    with pytest.raises(ValueError, match="condition_dim=4 but the potential needs condition_dim=0"):
        Potential(backbone, [1, 6], ATOMIC_ENERGIES, cutoff=CUTOFF, charge_spin_conditioning=False)


def test_one_conditioning_rule_for_every_backbone():
    embedding = NodeEmbedding(num_elements=2, width=3, condition_dim=4)
    species = torch.tensor([0, 1])
    assert embedding.condition.bias is None  # no bias: a zero condition adds nothing
    torch.testing.assert_close(embedding(species, torch.zeros(2, 4)), embedding.species(species))
    with pytest.raises(ValueError, match="node_condition=None"):
        embedding(species, None)
    with pytest.raises(ValueError, match="width 5"):
        embedding(species, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="condition_dim=0"):
        NodeEmbedding(2, 3, 0)(species, torch.zeros(2, 4))
    for cls, options in ((MACEBackbone, {"num_channels": 4}), (FacetBackbone, {"num_channels": 4}),
                         (TransIPBackbone, {"dim": 4, "heads": 2})):
        backbone = cls(num_elements=2, cutoff=CUTOFF, condition_dim=4, **options)
        assert isinstance(backbone.embedding, NodeEmbedding), cls.__name__


def test_files_written_before_the_shared_embedding_still_load(tmp_path, molecule):
    """Old exports named the embedding per backbone, and Facet's projection had a bias: `mlip.load`
    renames the weights and folds the bias into the species table (the same function)."""
    torch.manual_seed(0)
    potential = build_potential(small_config("facet"), STATISTICS, dtype=torch.float64)
    with torch.no_grad():
        potential.backbone.embedding.species.weight.add_(0.3)  # = old table E + old bias b
    path = export_model(potential, tmp_path / "new.pt")
    payload = torch.load(path, weights_only=True)
    state = payload["state_dict"]
    bias = torch.full_like(state["backbone.embedding.species.weight"][0], 0.3)
    state["backbone.species_embedding.weight"] = state.pop("backbone.embedding.species.weight") - bias
    state["backbone.condition_embedding.weight"] = state.pop("backbone.embedding.condition.weight")
    state["backbone.condition_embedding.bias"] = bias
    torch.save(payload, tmp_path / "old.pt")
    old, new = mlip.load(tmp_path / "old.pt"), mlip.load(path)
    torch.testing.assert_close(old(graph(molecule))["energy"], new(graph(molecule))["energy"], rtol=0, atol=1e-12)
