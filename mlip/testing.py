"""The physics contract every backbone must pass through `Potential`, as reusable checks.

For whoever adds a backbone (docs/models.md, "Adding a backbone")::

    import torch
    from mlip import testing

    potential = testing.small_potential({"_target_": "my_package.MyBackbone", "width": 8},
                                        dtype=torch.float64, trusted=True)
    testing.check_contract(potential, testing.Tolerances.for_dtype(torch.float64))

`check_contract` runs every check below; each one can also be called alone and raises
`AssertionError` with the measured numbers when the model breaks the contract:

* `check_translation` / `check_periodic_images` / `check_permutation`: energy invariant, forces
  (and stress) unchanged or permuted, to rounding, for every backbone;
* `check_rotation` (proper rotations) and `check_reflection` (improper ones): energy invariant,
  forces F -> R F and stress σ -> R σ Rᵀ, within `Tolerances.rotation`; for a backbone without
  built-in rotation symmetry (`rotation=None`, e.g. TransIP) `check_rotation` only measures
  and returns the error, and `check_reflection` is skipped;
* `check_forces_match_finite_differences`, `check_stress_matches_finite_differences`:
  F = -∂E/∂r and σ = (1/V) ∂E/∂ε against central differences;
* `check_cutoff_smoothness`: an edge beyond the cutoff changes nothing; energy and force are
  continuous as a neighbour crosses it; inside it atoms interact;
* `check_isolated_atoms`: an atom without neighbours has zero force, an energy independent of
  where it is, and fragments farther apart than the cutoff add up; for backbones whose features
  vanish without neighbours (`Tolerances.isolated_energy_is_reference`) it is exactly
  E_ref(Z) + shift;
* `check_batch_equals_singles`: a batch gives the results of its structures one at a time.

Graphs are built here by brute force (`graph`), with an optional margin beyond the cutoff, so
the checks need nothing but torch and torch_geometric. Units: Å, eV, eV/Å, eV/Å³.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Batch, Data

from mlip.constants import torch_dtype

ELEMENTS = (1, 6, 8, 14)
ATOMIC_ENERGIES = {1: -0.5, 6: -1.5, 8: -2.0, 14: -3.0}  # eV: small, so that absolute tolerances mean something
SCALE, SHIFT = 10.0, -0.2  # eV, eV/atom: a large scale gives untrained small models forces well above the tolerances
CUTOFF = 3.0  # Å

# small settings of the registered backbones, for fast checks (tests/test_backbone_contract.py)
SMALL_BACKBONES: dict[str, dict[str, Any]] = {
    "mace": {"num_channels": 4, "lmax": 1, "correlation": 2, "num_layers": 2, "radial_mlp": [8]},
    "facet": {"num_channels": 4, "lmax": 1, "num_layers": 2, "num_spline_knots": 6},
    "transip": {"dim": 8, "depth": 2, "heads": 2, "num_fourier": 4},
}


@dataclass(frozen=True)
class Tolerances:
    """Absolute tolerances of the contract (eV for energies and ∂E/∂ε, eV/Å for forces).

    exact: symmetries that hold to rounding for every backbone (translation, periodic images,
        permutation, batching, edges beyond the cutoff).
    rotation: error allowed under rotations; None = no built-in rotation symmetry (measured only).
    reflection: whether improper rotations are checked too (with `rotation`).
    finite_difference: forces and ∂E/∂ε against central differences with `step` (Å, or strain):
        allowed error finite_difference · (1 + |value|).
    continuity: energy change of a neighbour moving from just inside to the cutoff.
    isolated_energy_is_reference: an atom without neighbours has exactly E_ref + shift.
    """

    exact: float
    rotation: float | None
    reflection: bool
    finite_difference: float
    step: float
    continuity: float
    isolated_energy_is_reference: bool = False

    @classmethod
    def for_dtype(cls, dtype: torch.dtype | str, **overrides) -> Tolerances:
        """The defaults of an exactly equivariant backbone in float32 or float64 (then ``overrides``)."""
        if torch_dtype(dtype) == torch.float64:
            base = cls(exact=1e-9, rotation=1e-9, reflection=True, finite_difference=1e-6, step=1e-4, continuity=1e-6)
        else:
            base = cls(exact=1e-4, rotation=1e-4, reflection=True, finite_difference=1e-3, step=5e-3, continuity=1e-4)
        return replace(base, **overrides)


def backbone_tolerances(name: str, dtype: torch.dtype | str) -> Tolerances:
    """Tolerances of the registered backbones, in their `SMALL_BACKBONES` settings.

    mace: exactly equivariant (e3nn), features vanish without neighbours. facet: exactly
    equivariant at lmax 1 (axial grid rule; at lmax >= 2 the Lebedev grid MLP is equivariant to
    ~1e-6 relative, tested in tests/test_facet.py). transip: translations exact, no built-in
    rotation symmetry (rotations measured only; learned in training).
    """
    tolerances = Tolerances.for_dtype(dtype)
    if name == "mace":
        return replace(tolerances, isolated_energy_is_reference=True)
    if name == "transip":
        return replace(tolerances, rotation=None, reflection=False)
    return tolerances


# ------------------------------------------------------------------------------ structures
@dataclass(frozen=True)
class Geometry:
    """A structure as NumPy arrays: numbers (n,), positions (n, 3) Å, cell (3, 3) rows or None."""

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray | None = None
    charge: int = 0
    spin: int = 1

    def moved(self, positions=None, cell=None) -> Geometry:
        return replace(self, positions=self.positions if positions is None else np.asarray(positions, float),
                       cell=self.cell if cell is None else np.asarray(cell, float))

    def transformed(self, matrix: np.ndarray, translation=(0.0, 0.0, 0.0)) -> Geometry:
        """r -> matrix r + translation for positions, and the cell's lattice vectors."""
        cell = None if self.cell is None else self.cell @ matrix.T
        return replace(self, positions=self.positions @ matrix.T + np.asarray(translation), cell=cell)

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)


def molecule(seed: int = 0, numbers: Sequence[int] = (8, 1, 1, 6, 14)) -> Geometry:
    """A compact random cluster (atoms 0.9-2.3 Å from their nearest neighbour)."""
    rng = np.random.default_rng(seed)
    positions: list[np.ndarray] = []
    while len(positions) < len(numbers):
        candidate = rng.uniform(-1.5, 1.5, size=3)
        distances = [np.linalg.norm(candidate - p) for p in positions]
        if not distances or (min(distances) > 0.9 and min(distances) < 2.3):
            positions.append(candidate)
    return Geometry(np.array(numbers), np.array(positions))


def crystal(seed: int = 0, numbers: Sequence[int] = (14, 8, 8, 6), length: float = 3.4) -> Geometry:
    """A random triclinic periodic cell (rows = lattice vectors, Å), atoms >= 1 Å apart."""
    rng = np.random.default_rng(seed)
    cell = np.diag([length, length * 1.1, length * 0.95]) + rng.uniform(-0.4, 0.4, size=(3, 3))
    fractional: list[np.ndarray] = []
    while len(fractional) < len(numbers):
        candidate = rng.uniform(0, 1, size=3)
        if all(_periodic_distance((candidate - f) @ cell, cell) > 1.0 for f in fractional):
            fractional.append(candidate)
    return Geometry(np.array(numbers), np.array(fractional) @ cell, cell)


def _periodic_distance(vector: np.ndarray, cell: np.ndarray) -> float:
    images = np.array([[a, b, c] for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)]) @ cell
    return float(np.linalg.norm(vector + images, axis=1).min())


def graph(geometry: Geometry, cutoff: float, dtype: torch.dtype = torch.float64) -> Data:
    """All pairs closer than ``cutoff`` (Å), with periodic images: the fields of docs/design.md."""
    positions = np.asarray(geometry.positions, float)
    n = len(positions)
    if geometry.cell is None:
        shift_list = np.zeros((1, 3))
        cell = np.zeros((3, 3))
    else:
        cell = np.asarray(geometry.cell, float)
        volume = abs(np.linalg.det(cell))
        spacing = [volume / np.linalg.norm(np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3])) for k in range(3)]
        fractional = positions @ np.linalg.inv(cell)  # atoms may lie outside the cell
        span = fractional.max(axis=0) - fractional.min(axis=0)
        reach = [math.ceil(cutoff / d + s) for d, s in zip(spacing, span)]
        ranges = [np.arange(-r, r + 1) for r in reach]
        shift_list = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3).astype(float)
    vectors = positions[None, :, None, :] - positions[:, None, None, :] + (shift_list @ cell)[None, None]  # (i, j, S, 3)
    distances = np.linalg.norm(vectors, axis=-1)
    centre, neighbour, image = np.nonzero((distances < cutoff) & (distances > 1e-8))
    return Data(
        pos=torch.tensor(positions, dtype=dtype),
        z=torch.tensor(np.asarray(geometry.numbers), dtype=torch.long),
        cell=torch.tensor(cell, dtype=dtype).reshape(1, 3, 3),
        pbc=torch.tensor([[geometry.cell is not None] * 3]),
        edge_index=torch.tensor(np.stack([neighbour, centre]), dtype=torch.long).reshape(2, -1),
        shifts=torch.tensor(shift_list[image], dtype=dtype).reshape(-1, 3),
        charge=torch.tensor([geometry.charge]),
        spin=torch.tensor([geometry.spin]),
        num_nodes=n,
    )


def small_potential(
    backbone: str | Mapping[str, Any],
    dtype: torch.dtype | str,
    seed: int = 0,
    conditioning: bool = True,
    trusted: bool = False,
    **potential_options,
):
    """A small untrained `Potential` over `ELEMENTS` built (in ``dtype``) by `build_potential`.

    ``backbone``: a registered name (its `SMALL_BACKBONES` settings) or a backbone config dict.
    """
    from mlip.models.build import build_potential

    config = {"name": backbone, **SMALL_BACKBONES.get(backbone, {})} if isinstance(backbone, str) else dict(backbone)
    model = {"backbone": config, "cutoff": CUTOFF, "charge_spin_conditioning": conditioning, "condition_dim": 4,
             "readout_hidden": [8], **potential_options}
    statistics = {"elements": list(ELEMENTS), "atomic_energies": ATOMIC_ENERGIES, "scale": SCALE, "shift": SHIFT,
                  "avg_num_neighbors": 4.0}
    torch.manual_seed(seed)
    return build_potential(model, statistics, dtype=dtype, trusted=trusted)


# ------------------------------------------------------------------------------ evaluation
def _dtype(potential) -> torch.dtype:
    return potential.atomic_energies.dtype


def predict(potential, geometry: Geometry | Sequence[Geometry], margin: float = 0.0, **options) -> dict[str, torch.Tensor]:
    """Outputs (detached, float64) for one geometry or a batch of them; ``margin`` Å of extra edges."""
    geometries = [geometry] if isinstance(geometry, Geometry) else list(geometry)
    batch = Batch.from_data_list([graph(g, potential.cutoff + margin, _dtype(potential)) for g in geometries])
    outputs = potential(batch, **options)
    return {key: value.detach().double() for key, value in outputs.items()}


def energy(potential, geometry: Geometry, margin: float = 0.0) -> float:
    return float(predict(potential, geometry, margin, compute_forces=False)["energy"][0])


def _assert_close(actual, expected, tolerance: float, what: str) -> float:
    """Max |actual - expected| (NumPy/torch/float); AssertionError naming ``what`` above ``tolerance``."""
    error = float(np.max(np.abs(np.asarray(actual, dtype=float) - np.asarray(expected, dtype=float))))
    if not error <= tolerance:
        raise AssertionError(f"{what}: error {error:.3g} > tolerance {tolerance:.3g}")
    return error


def _assert_not_trivial(values, what: str, threshold: float = 1e-4) -> None:
    if not float(np.max(np.abs(np.asarray(values, dtype=float)))) > threshold:
        raise AssertionError(f"{what} are all below {threshold}: the check would prove nothing")


def _rotation(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    quaternion = rng.normal(size=4)
    w, x, y, z = quaternion / np.linalg.norm(quaternion)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


# ------------------------------------------------------------------------------ the checks
def check_translation(potential, geometry: Geometry, tolerances: Tolerances) -> None:
    """E(r + t) = E(r), F(r + t) = F(r)."""
    reference = predict(potential, geometry)
    _assert_not_trivial(reference["forces"], "forces")
    moved = predict(potential, geometry.transformed(np.eye(3), (3.7, -2.1, 1.45)))
    _assert_close(moved["energy"], reference["energy"], tolerances.exact, "translation: energy")
    _assert_close(moved["forces"], reference["forces"], tolerances.exact, "translation: forces")


def check_periodic_images(potential, geometry: Geometry, tolerances: Tolerances) -> None:
    """Moving one atom of a crystal by a lattice vector (another image, the same crystal) changes nothing."""
    reference = predict(potential, geometry, compute_stress=True)
    positions = geometry.positions.copy()
    positions[1] += geometry.cell[0] - geometry.cell[2]
    moved = predict(potential, geometry.moved(positions), compute_stress=True)
    for key in ("energy", "forces", "stress"):
        _assert_close(moved[key], reference[key], tolerances.exact, f"periodic image: {key}")


def check_permutation(potential, geometry: Geometry, tolerances: Tolerances, seed: int = 5) -> None:
    """Reordering the atoms permutes the forces and leaves the energy unchanged."""
    order = np.random.default_rng(seed).permutation(geometry.n_atoms)
    reference = predict(potential, geometry)
    permuted = predict(potential, replace(geometry, numbers=geometry.numbers[order], positions=geometry.positions[order]))
    _assert_close(permuted["energy"], reference["energy"], tolerances.exact, "permutation: energy")
    _assert_close(permuted["forces"], reference["forces"][order], tolerances.exact, "permutation: forces")


def _symmetry_errors(potential, geometry: Geometry, matrix: np.ndarray) -> dict[str, float]:
    """Errors of E, F -> R F and (crystals) σ -> R σ Rᵀ under r -> matrix r."""
    periodic = geometry.cell is not None
    reference = predict(potential, geometry, compute_stress=periodic)
    moved = predict(potential, geometry.transformed(matrix), compute_stress=periodic)
    rotation = torch.tensor(matrix)
    errors = {
        "energy": float((moved["energy"] - reference["energy"]).abs().max()),
        "forces": float((moved["forces"] - reference["forces"] @ rotation.T).abs().max()),
    }
    if periodic:
        expected = rotation @ reference["stress"][0] @ rotation.T
        errors["stress"] = float((moved["stress"][0] - expected).abs().max()) * abs(np.linalg.det(geometry.cell))
    return errors


def check_rotation(potential, geometry: Geometry, tolerances: Tolerances, seeds: Sequence[int] = (1, 2)) -> dict[str, float]:
    """Proper rotations: the largest errors of energy (eV), forces (eV/Å) and stress·V (eV).

    With ``tolerances.rotation`` None (no built-in symmetry) the errors are only measured."""
    worst: dict[str, float] = {}
    for seed in seeds:
        for key, error in _symmetry_errors(potential, geometry, _rotation(seed)).items():
            worst[key] = max(worst.get(key, 0.0), error)
    if tolerances.rotation is not None:
        for key, error in worst.items():
            _assert_close(error, 0.0, tolerances.rotation, f"rotation: {key}")
    return worst


def check_reflection(potential, geometry: Geometry, tolerances: Tolerances) -> dict[str, float]:
    """Improper rotations (a mirror, and a mirror times a rotation), for equivariant backbones."""
    if not tolerances.reflection or tolerances.rotation is None:
        return {}
    worst: dict[str, float] = {}
    for matrix in (np.diag([1.0, -1.0, 1.0]), -_rotation(3)):
        for key, error in _symmetry_errors(potential, geometry, matrix).items():
            worst[key] = max(worst.get(key, 0.0), error)
    for key, error in worst.items():
        _assert_close(error, 0.0, tolerances.rotation, f"reflection: {key}")
    return worst


def check_forces_match_finite_differences(
    potential, geometry: Geometry, tolerances: Tolerances, components: Sequence[tuple[int, int]] = ((0, 0), (1, 2), (2, 1))
) -> None:
    """F = -∂E/∂r against central differences (edge list with a margin, fixed along the steps)."""
    margin = 1.0
    forces = predict(potential, geometry, margin)["forces"]
    _assert_not_trivial(forces, "forces", threshold=tolerances.finite_difference)
    step = tolerances.step
    for atom, axis in components:
        plus, minus = geometry.positions.copy(), geometry.positions.copy()
        plus[atom, axis] += step
        minus[atom, axis] -= step
        numerical = -(energy(potential, geometry.moved(plus), margin) - energy(potential, geometry.moved(minus), margin)) / (2 * step)
        tolerance = tolerances.finite_difference * (1 + abs(numerical))
        _assert_close(forces[atom, axis], numerical, tolerance, f"force[{atom}, {axis}] vs finite differences")


def check_stress_matches_finite_differences(
    potential, geometry: Geometry, tolerances: Tolerances, components: Sequence[tuple[int, int]] = ((0, 0), (0, 1), (1, 2))
) -> None:
    """V σ_ij = ∂E/∂ε_ij (symmetric strain applied to positions and cell) against central differences;
    also σ symmetric and virials = -V σ."""
    margin = 1.0
    outputs = predict(potential, geometry, margin, compute_stress=True)
    volume = abs(np.linalg.det(geometry.cell))
    stress = outputs["stress"][0].numpy()
    _assert_not_trivial(stress * volume, "V·stress entries", threshold=tolerances.finite_difference)
    _assert_close(stress, stress.T, tolerances.exact, "stress symmetry")
    _assert_close(outputs["virials"][0].numpy(), -stress * volume, tolerances.exact, "virials = -V stress")
    step = tolerances.step
    for i, j in components:
        strain = np.zeros((3, 3))
        strain[i, j] += step / 2
        strain[j, i] += step / 2
        energies = [energy(potential, geometry.transformed(np.eye(3) + sign * strain), margin) for sign in (1, -1)]
        numerical = (energies[0] - energies[1]) / (2 * step)
        tolerance = tolerances.finite_difference * (1 + abs(numerical))
        _assert_close(stress[i, j] * volume, numerical, tolerance, f"V·stress[{i}, {j}] vs finite differences")


def check_cutoff_smoothness(potential, tolerances: Tolerances, numbers: Sequence[int] = (6, 8, 1)) -> None:
    """Atom 2 moves away from atom 0 along -x; only that pair crosses the cutoff (edges kept with a margin)."""
    cutoff = potential.cutoff
    margin = 1.5

    def cluster(distance: float) -> Geometry:
        positions = np.array([[0.0, 0.0, 0.0], [1.3, 0.2, 0.0], [-distance, 0.0, 0.0]])
        return Geometry(np.array(numbers), positions)

    def energy_and_force(distance: float) -> tuple[float, float]:
        outputs = predict(potential, cluster(distance), margin)
        return float(outputs["energy"][0]), float(outputs["forces"][2].norm())

    far, _ = energy_and_force(cutoff + 1.0)
    beyond, force_beyond = energy_and_force(cutoff + 1e-3)
    at_cutoff, force_at_cutoff = energy_and_force(cutoff)
    inside, force_inside = energy_and_force(cutoff - 1e-3)
    well_inside, _ = energy_and_force(0.6 * cutoff)
    _assert_close(beyond, far, tolerances.exact, "cutoff: energy with an edge just beyond the cutoff")
    _assert_close(at_cutoff, far, tolerances.exact, "cutoff: energy with an edge at the cutoff")
    _assert_close([force_beyond, force_at_cutoff], 0.0, tolerances.exact, "cutoff: force on an atom at/beyond the cutoff")
    _assert_close(inside, at_cutoff, tolerances.continuity, "cutoff: energy continuity 1e-3 Å inside the cutoff")
    _assert_close(force_inside, 0.0, 100 * tolerances.continuity, "cutoff: force 1e-3 Å inside the cutoff")
    if not abs(well_inside - far) > 1e-5:  # eV, well above float32 rounding of these energies
        raise AssertionError("cutoff: atoms inside the cutoff do not interact: the check would prove nothing")


def check_isolated_atoms(potential, tolerances: Tolerances) -> None:
    """No neighbours: zero force, position-independent energy, additivity of fragments beyond the
    cutoff; E = E_ref(Z) + shift exactly if ``tolerances.isolated_energy_is_reference``."""
    elements = list(potential.elements)
    energies = {}
    for z in elements:
        for charge, spin in ((0, 1), (1, 2)):
            atom = Geometry(np.array([z]), np.array([[0.1, 0.2, 0.3]]), charge=charge, spin=spin)
            outputs = predict(potential, atom)
            elsewhere = predict(potential, atom.moved(np.array([[-4.0, 2.5, 7.0]])))
            what = f"isolated Z={z} (charge {charge}, multiplicity {spin})"
            _assert_close(outputs["forces"], 0.0, 0.0, f"{what}: force")
            _assert_close(elsewhere["energy"], outputs["energy"], tolerances.exact, f"{what}: energy at another place")
            energies[z] = float(outputs["energy"][0])
            if tolerances.isolated_energy_is_reference:
                expected = float(potential.atomic_energies[elements.index(z)] + potential.shift)
                _assert_close(energies[z], expected, tolerances.exact, f"{what}: energy = E_ref + shift")
    # two fragments farther apart than the cutoff: energies add up
    first, second = molecule(1, numbers=(8, 1, 1)), molecule(2, numbers=(6, 14))
    apart = Geometry(np.concatenate([first.numbers, second.numbers]),
                     np.concatenate([first.positions, second.positions + np.array([potential.cutoff + 6.0, 0.0, 0.0])]))
    _assert_close(energy(potential, apart), energy(potential, first) + energy(potential, second), tolerances.exact,
                  "fragments beyond the cutoff: additivity of energies")


def check_batch_equals_singles(potential, geometries: Sequence[Geometry], tolerances: Tolerances) -> None:
    """A batch (molecules, crystals, a lone atom) gives each structure's results alone, and the
    same forces under ``torch.no_grad()``."""
    geometries = [*geometries, Geometry(np.array([potential.elements[0]]), np.zeros((1, 3)))]
    together = predict(potential, geometries, compute_stress=True)
    offset = 0
    for index, geometry in enumerate(geometries):
        alone = predict(potential, geometry, compute_stress=True)
        _assert_close(together["energy"][index], alone["energy"][0], tolerances.exact, f"batch: energy of structure {index}")
        forces = together["forces"][offset : offset + geometry.n_atoms]
        _assert_close(forces, alone["forces"], tolerances.exact, f"batch: forces of structure {index}")
        if geometry.cell is not None:
            _assert_close(together["stress"][index], alone["stress"][0], tolerances.exact, f"batch: stress of structure {index}")
        offset += geometry.n_atoms
    with torch.no_grad():
        _assert_close(predict(potential, geometries)["forces"], together["forces"], tolerances.exact, "batch: forces under no_grad")


CHECKS = (
    "translation", "periodic_images", "permutation", "rotation", "reflection", "forces_match_finite_differences",
    "stress_matches_finite_differences", "cutoff_smoothness", "isolated_atoms", "batch_equals_singles",
)


def run_check(name: str, potential, tolerances: Tolerances, seed: int = 0):
    """Run the check ``name`` (one of `CHECKS`) on the standard small molecule and crystal."""
    cluster, cell = molecule(seed), crystal(seed)
    if name in ("translation", "permutation", "rotation", "reflection", "forces_match_finite_differences"):
        function = globals()[f"check_{name}"]
        return [function(potential, geometry, tolerances) for geometry in (cluster, cell)]
    if name == "periodic_images":
        return check_periodic_images(potential, cell, tolerances)
    if name == "stress_matches_finite_differences":
        return check_stress_matches_finite_differences(potential, cell, tolerances)
    if name == "cutoff_smoothness":
        return check_cutoff_smoothness(potential, tolerances)
    if name == "isolated_atoms":
        return check_isolated_atoms(potential, tolerances)
    if name == "batch_equals_singles":
        return check_batch_equals_singles(potential, [cluster, cell], tolerances)
    raise ValueError(f"run_check: unknown check {name!r}; choose from {CHECKS}")


def check_contract(potential, tolerances: Tolerances, seed: int = 0) -> None:
    """Every check of `CHECKS`; AssertionError at the first one that fails."""
    for name in CHECKS:
        run_check(name, potential, tolerances, seed)
