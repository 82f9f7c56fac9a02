"""Measure what the Facet building blocks cost and how equivariant they are.

1. Grid-MLP rotation-equivariance error vs grid degree, Lebedev and Gauss-Legendre (float64, random rotations):
   relative error |f(D x) - D f(x)| / |D f(x)| for lmax = 1, 2, 3 at grid amplitude 1 and 2
   (the spherical RMS of every input channel; FacetBackbone normalises its grid input to <= 1).
   Then the error of one SiLU channel vs the anisotropy of its pre-activation (what the grid
   MLP's anisotropy bound caps).
2. Rotation error of a whole FacetBackbone potential (energy and forces) vs grid degree.
3. Cost of the radial functions per edge batch, forward + backward (float32): cubic-spline
   table lookup (mlip.nn.spline) vs Bessel basis + radial MLP (mlip.nn.radial + mlip.nn.mlp).
4. Forward + forces and a training step of a FacetBackbone vs MACEBackbone potential on a periodic cell.
5. Optional (--fit): a small trainability check, both backbones fitted to Lennard-Jones argon
   clusters (energies + forces, 300 Adam steps); a sanity check, not an accuracy benchmark.

All timings are medians of interleaved repetitions inside one run, so relative numbers survive
a loaded machine; absolute numbers do not. Usage:

    python scripts/equivariance_vs_grid.py [--quick] [--skip-models] [--fit]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from e3nn import o3

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mlip.models.backbones.facet import FacetBackbone, default_grid_degree
from mlip.nn.mlp import MLP
from mlip.nn.radial import RadialEmbedding
from mlip.nn.spherical_grid import (
    GridMLP,
    num_coefficients,
    quadrature_grid,
    spherical_signal_irreps,
)
from mlip.nn.spline import SplineRadial


def grid_mlp_error(lmax: int, degree: int, amplitude: float, rotations: list[torch.Tensor], quadrature: str) -> float:
    torch.manual_seed(0)
    channels = 32
    layer = GridMLP(lmax, channels, 2 * channels, channels, degree, quadrature).double()
    coefficients = torch.randn(16, num_coefficients(lmax), channels, dtype=torch.float64)
    coefficients *= amplitude / math.sqrt(num_coefficients(lmax))
    errors = []
    for rotation in rotations:
        wigner = spherical_signal_irreps(lmax).D_from_matrix(rotation)
        reference = torch.einsum("ij,njc->nic", wigner, layer(coefficients))
        rotated_input = torch.einsum("ij,njc->nic", wigner, coefficients)
        errors.append(((layer(rotated_input) - reference).norm() / reference.norm()).item())
    return max(errors)


def grid_table(degrees_of_lmax: dict[int, list[int]], rotations) -> None:
    print("## Grid-MLP relative equivariance error (float64, max over", len(rotations), "rotations)")
    print()
    print("| lmax | quadrature | degree | grid points | error, amplitude 1 | error, amplitude 2 |")
    print("|---|---|---|---|---|---|")
    for lmax, degrees in degrees_of_lmax.items():
        for quadrature in ("lebedev", "gauss_legendre"):
            for degree in degrees:
                marker = " (default)" if degree == default_grid_degree(lmax) else ""
                errors = [grid_mlp_error(lmax, degree, amplitude, rotations, quadrature) for amplitude in (1.0, 2.0)]
                points = quadrature_grid(degree, quadrature)[0].shape[0]
                print(f"| {lmax} | {quadrature} | {degree}{marker} | {points} | {errors[0]:.1e} | {errors[1]:.1e} |")
    print()


def anisotropy_table(rotations) -> None:
    """Aliasing of one SiLU channel vs how much its pre-activation varies over the sphere (lmax 1).

    The pre-activation is h(x) = a + b·x; its l > 0 spherical RMS is |b| / sqrt(3). Relative
    rotation error of the projected SiLU(h) (l <= 1), max over isotropic levels a in [-4, 2],
    random directions of b and the rotations. This is what GridMLP's anisotropy bound caps.
    """
    from mlip.nn.spherical_grid import real_spherical_harmonics

    generator = torch.Generator().manual_seed(0)
    wigners = [spherical_signal_irreps(1).D_from_matrix(rotation) for rotation in rotations]
    magnitudes = (0.5, 1.0, 1.39, 1.73, 2.0, 3.0, 6.0, 10.0)
    print("## One SiLU channel on the sphere: relative rotation error vs anisotropy |b| of h(x) = a + b·x (lmax 1)")
    print()
    print("| grid | " + " | ".join(f"|b| = {m}" for m in magnitudes) + " |")
    print("|---|" + "---|" * len(magnitudes))
    for quadrature, degree in (("lebedev", 11), ("lebedev", 15), ("lebedev", 21), ("gauss_legendre", 11)):
        points, weights = quadrature_grid(degree, quadrature)
        harmonics = real_spherical_harmonics(1, points)  # (G, 4)

        def project(level, direction):
            return (weights * torch.nn.functional.silu(level + points @ direction)) @ harmonics  # (4,)

        cells = []
        for magnitude in magnitudes:
            worst = 0.0
            for level in (-4.0, -2.0, -1.0, 0.0, 1.0, 2.0):
                for rotation, wigner in zip(rotations, wigners):
                    direction = torch.randn(3, generator=generator, dtype=torch.float64)
                    direction = direction / direction.norm() * magnitude
                    reference = wigner @ project(level, direction)
                    error = (project(level, rotation @ direction) - reference).norm() / reference.norm()
                    worst = max(worst, error.item())
            cells.append(f"{worst:.1e}")
        print(f"| {quadrature} {degree} ({points.shape[0]} points) | " + " | ".join(cells) + " |")
    print()


def random_cluster(num_atoms: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (n, 3) Å with atoms >= 0.9 Å apart, and species (n,)."""
    rng = np.random.default_rng(seed)
    positions: list[np.ndarray] = []
    while len(positions) < num_atoms:
        candidate = rng.uniform(-2.5, 2.5, size=3)
        if all(np.linalg.norm(candidate - p) > 0.9 for p in positions):
            positions.append(candidate)
    return torch.tensor(np.array(positions)), torch.tensor(rng.integers(0, 3, size=num_atoms))


def model_energy_and_forces(backbone, positions, species, cutoff):
    positions = positions.clone().requires_grad_(True)
    distances = (positions[None] - positions[:, None]).norm(dim=-1)
    centre, neighbour = torch.nonzero((distances < cutoff) & (distances > 0), as_tuple=True)
    edge_index = torch.stack([neighbour, centre])
    from mlip.models.backbones.base import BackboneInputs

    inputs = BackboneInputs(
        species=species,
        edge_index=edge_index,
        edge_vectors=positions[neighbour] - positions[centre],
        batch=torch.zeros(len(species), dtype=torch.long),
        num_graphs=1,
    )
    energy = backbone(inputs).scalars.sum()
    (gradient,) = torch.autograd.grad(energy, positions)
    return energy.detach(), -gradient


def model_table(lmax: int, degrees: list[int], rotations) -> None:
    cutoff = 4.0
    positions, species = random_cluster(12, seed=1)
    print(f"## FacetBackbone rotation error vs Lebedev grid degree (float64, lmax={lmax}, C=16, 2 layers,")
    print("## energy = sum of output scalars, 12-atom cluster, max over rotations)")
    print()
    print("| grid degree | energy rel. error | force rel. error |")
    print("|---|---|---|")
    for degree in degrees:
        torch.manual_seed(0)
        backbone = FacetBackbone(
            3, cutoff, num_channels=16, lmax=lmax, num_layers=2, grid_degree=degree, avg_num_neighbors=6.0
        ).double()
        energy, forces = model_energy_and_forces(backbone, positions, species, cutoff)
        energy_errors, force_errors = [], []
        for rotation in rotations:
            rotated_energy, rotated_forces = model_energy_and_forces(backbone, positions @ rotation.T, species, cutoff)
            energy_errors.append(abs((rotated_energy - energy).item() / energy.item()))
            expected = forces @ rotation.T
            force_errors.append(((rotated_forces - expected).norm() / expected.norm()).item())
        marker = " (default)" if degree == default_grid_degree(lmax) else ""
        print(f"| {degree}{marker} | {max(energy_errors):.1e} | {max(force_errors):.1e} |")
    print()


def trained_model_table(export_path: str, data_paths: list[str], num_structures: int) -> None:
    """Rotation error of a trained Facet export on real structures, vs the grid degree of its grid MLPs.

    The grid is not learned (its tables are non-persistent buffers), so one set of trained
    weights can be evaluated on any grid: the default-degree row is the model as trained and
    shipped, the finer rows show how much of the error is grid aliasing. Errors from
    `mlip.evaluation_equivariance.equivariance_errors` (float64, 7 angles about 2 random axes per
    structure): the largest mean |ΔE| per atom and force RMS error over the angles.
    """
    import mlip
    from mlip.data.graph import structure_to_graph
    from mlip.data.reader import StructureReader
    from mlip.evaluation_equivariance import equivariance_errors
    from mlip.nn.spherical_grid import SphericalGrid

    model = mlip.load(export_path).double().eval()
    backbone = model.backbone
    if not isinstance(backbone, FacetBackbone):
        raise SystemExit(f"{export_path}: not a Facet model ({type(backbone).__name__})")
    graphs, force_scale = [], []
    for path in data_paths:
        reader = StructureReader(path)
        for index in np.linspace(0, len(reader) - 1, num_structures).astype(int):
            structure = reader[int(index)]
            graphs.append(structure_to_graph(structure, model.cutoff, dtype=torch.float64))
            if structure.forces is not None:
                force_scale.append(np.sqrt(np.mean(np.square(structure.forces))))
    print(f"## Trained Facet model {export_path}: rotation error on {len(graphs)} structures of {', '.join(data_paths)}")
    print(f"## (float64; label force RMS {1000 * np.mean(force_scale):.0f} meV/Å for scale)")
    print()
    print("| grid (quadrature, degree, points) | energy error (meV/atom) | force error (meV/Å) |")
    print("|---|---|---|")
    quadrature, trained_degree = backbone.config["grid_quadrature"], backbone.config["grid_degree"]
    if quadrature == "axial":  # exact per-channel rule: only the model as trained
        errors = equivariance_errors(model, graphs, num_angles=7, num_axes=2)
        print(
            f"| axial, {trained_degree} (as trained) | {1000 * errors.energy_error_per_atom.max():.2e} | "
            f"{1000 * errors.max_force_error:.2e} |"
        )
        print()
        return
    for degree in sorted({2 * backbone.lmax + 1, trained_degree, trained_degree + 4, trained_degree + 10}):
        for layer in backbone.layers:
            layer.node_mlp.grid = SphericalGrid(backbone.lmax, degree, quadrature)
        errors = equivariance_errors(model, graphs, num_angles=7, num_axes=2)
        marker = " (as trained)" if degree == trained_degree else ""
        points = backbone.layers[0].node_mlp.grid.num_points
        print(
            f"| {quadrature}, {degree}{marker}, {points} | {1000 * errors.energy_error_per_atom.max():.2e} | "
            f"{1000 * errors.max_force_error:.2e} |"
        )
    print()


def median_time(function, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def radial_cost(num_edges: int, num_outputs: int, repeats: int) -> None:
    torch.manual_seed(0)
    cutoff = 5.0
    spline = SplineRadial(cutoff, num_outputs, num_intervals=16)
    bessel = RadialEmbedding(cutoff, num_basis=8)
    mlp = MLP(8, [64, 64, 64], num_outputs, bias=False)  # MACE-sized radial MLP
    distances = torch.empty(num_edges).uniform_(0.8, cutoff)

    def run(radial, create_graph: bool):
        r = distances.clone().requires_grad_(True)
        weights = radial(r)
        loss = (weights * torch.linspace(-1, 1, num_outputs)).sum()
        if create_graph:  # force training: dE/dr with graph, then backward through it
            (gradient,) = torch.autograd.grad(loss, r, create_graph=True)
            gradient.square().sum().backward()
        else:
            loss.backward()

    contenders = {
        "cubic spline, basis GEMM (SplineRadial.forward)": spline,
        "cubic spline, table gather (forward_by_gather)": spline.forward_by_gather,
        "Bessel(8) + MLP [64, 64, 64]": lambda r: mlp(bessel(r)),
    }
    print(f"## Radial functions: {num_edges} edges -> {num_outputs} outputs, float32, median of {repeats}")
    print("## (splines: 16 knot intervals on [0, 5] Å)")
    print()
    print("| radial | forward + backward (ms) | + double backward (ms) | parameters |")
    print("|---|---|---|---|")
    times: dict[str, list[float]] = {name: [] for name in contenders}
    double: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):  # interleave contenders so load changes hit both
        for name, radial in contenders.items():
            times[name].append(median_time(lambda radial=radial: run(radial, False), 1))
            double[name].append(median_time(lambda radial=radial: run(radial, True), 1))
    spline_parameters = sum(p.numel() for p in spline.parameters())
    parameters = dict.fromkeys(contenders, spline_parameters)
    parameters["Bessel(8) + MLP [64, 64, 64]"] = sum(p.numel() for p in mlp.parameters())
    for name in contenders:
        print(
            f"| {name} | {1e3 * statistics.median(times[name]):.2f} | {1e3 * statistics.median(double[name]):.2f} "
            f"| {parameters[name]} |"
        )
    print()


def backbone_cost(repeats: int) -> None:
    """Potential forward + forces on one periodic cell, Facet vs MACE backbones with matched width."""
    from ase.build import bulk
    from torch_geometric.data import Batch

    from mlip.data.graph import atoms_to_graph
    from mlip.models.build import build_potential

    cutoff = 5.0
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=0)
    data = Batch.from_data_list([atoms_to_graph(atoms, cutoff)])
    average = data.edge_index.shape[1] / len(atoms)
    models = {
        "facet (C=32, lmax=2, 2 layers)": {
            "_target_": "mlip.models.backbones.facet.FacetBackbone", "num_channels": 32, "lmax": 2, "num_layers": 2,
        },
        "mace (C=32, lmax=2, correlation 3, 2 layers)": {
            "_target_": "mlip.models.backbones.mace.MACEBackbone", "num_channels": 32, "lmax": 2, "num_layers": 2,
            "correlation": 3,
        },
    }
    potentials = {}
    for name, backbone in models.items():
        torch.manual_seed(0)
        config = {"backbone": backbone, "cutoff": cutoff, "elements": [14], "atomic_energies": [0.0]}
        potentials[name] = build_potential(config, statistics={"avg_num_neighbors": average}, dtype=torch.float32)
    print(f"## Potential forward + forces, float32: Si cell with {len(atoms)} atoms, {data.edge_index.shape[1]} edges")
    print()
    print("| backbone | energy + forces (ms) | training step, force loss backward (ms) | parameters |")
    print("|---|---|---|---|")

    def training_step(potential):
        outputs = potential(data, compute_forces=True, training=True)
        (outputs["energy"].square().sum() + outputs["forces"].square().sum()).backward()

    inference: dict[str, list[float]] = {name: [] for name in potentials}
    training: dict[str, list[float]] = {name: [] for name in potentials}
    for _ in range(repeats):
        for name, potential in potentials.items():
            inference[name].append(median_time(lambda potential=potential: potential(data, compute_forces=True), 1))
            training[name].append(median_time(lambda potential=potential: training_step(potential), 1))
    for name, potential in potentials.items():
        count = sum(p.numel() for p in potential.parameters())
        print(
            f"| {name} | {1e3 * statistics.median(inference[name]):.1f} "
            f"| {1e3 * statistics.median(training[name]):.1f} | {count} |"
        )
    print()


def lennard_jones_batches(num_train: int, num_test: int, cutoff: float):
    """Random 8-atom argon clusters (atoms >= 1 Å apart) labelled by ASE's smooth Lennard-Jones (σ = ε = 1)."""
    from ase import Atoms
    from ase.calculators.lj import LennardJones
    from torch_geometric.data import Batch

    from mlip.data.graph import atoms_to_graph

    rng = np.random.default_rng(0)
    graphs = []
    for _ in range(num_train + num_test):
        positions: list[np.ndarray] = []
        while len(positions) < 8:
            candidate = rng.uniform(-2.2, 2.2, size=3)
            if all(np.linalg.norm(candidate - p) > 1.0 for p in positions):
                positions.append(candidate)
        atoms = Atoms("Ar8", positions=positions)
        atoms.calc = LennardJones(sigma=1.0, epsilon=1.0, rc=cutoff, smooth=True)
        graph = atoms_to_graph(atoms, cutoff)
        graph.energy = torch.tensor([atoms.get_potential_energy()], dtype=torch.float32)
        graph.forces = torch.tensor(atoms.get_forces(), dtype=torch.float32)
        graphs.append(graph)
    return Batch.from_data_list(graphs[:num_train]), Batch.from_data_list(graphs[num_train:])


def fit_check(steps: int = 300) -> None:
    from mlip.models.build import build_potential

    cutoff = 4.0
    train, test = lennard_jones_batches(18, 6, cutoff)
    models = {
        "facet (C=16, lmax=2, 2 layers)": {
            "_target_": "mlip.models.backbones.facet.FacetBackbone", "num_channels": 16, "lmax": 2,
        },
        "mace (C=16, lmax=2, correlation 3, 2 layers)": {
            "_target_": "mlip.models.backbones.mace.MACEBackbone", "num_channels": 16, "lmax": 2, "correlation": 3,
        },
    }
    print(f"## Fit check: 18 train / 6 test Lennard-Jones Ar8 clusters, {steps} full-batch Adam steps, float32")
    print()
    print("| backbone | final train loss | test force RMSE | test energy RMSE / atom | fit time (s) |")
    print("|---|---|---|---|---|")
    for name, backbone in models.items():
        torch.manual_seed(0)
        config = {
            "backbone": backbone, "cutoff": cutoff, "elements": [18], "atomic_energies": [0.0],
            "scale": float(train.forces.std()), "shift": float(train.energy.mean()) / 8,
            "charge_spin_conditioning": False,
        }
        statistics_ = {"avg_num_neighbors": train.edge_index.shape[1] / train.num_nodes}
        potential = build_potential(config, statistics=statistics_, dtype=torch.float32)
        optimizer = torch.optim.Adam(potential.parameters(), lr=5e-3)
        start = time.perf_counter()
        for _ in range(steps):
            outputs = potential(train, compute_forces=True, training=True)
            energy_error = (outputs["energy"] - train.energy) / 8
            loss = energy_error.square().mean() + (outputs["forces"] - train.forces).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        elapsed = time.perf_counter() - start
        outputs = potential(test, compute_forces=True)
        force_rmse = (outputs["forces"] - test.forces).square().mean().sqrt().item()
        energy_rmse = ((outputs["energy"] - test.energy) / 8).square().mean().sqrt().item()
        print(f"| {name} | {loss.item():.4f} | {force_rmse:.3f} | {energy_rmse:.4f} | {elapsed:.0f} |")
    print(f"(LJ units: ε = 1 eV, σ = 1 Å; test force standard deviation {float(test.forces.std()):.3f})")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer grid degrees and repetitions")
    parser.add_argument("--skip-models", action="store_true", help="skip the backbone timing (section 4)")
    parser.add_argument("--fit", action="store_true", help="also run the Lennard-Jones fit check (minutes)")
    parser.add_argument("--trained", metavar="EXPORT", help="only: rotation error of this trained Facet export (mlip.load)")
    parser.add_argument("--data", nargs="+", default=["mlip/sample_data/molecules.h5", "mlip/sample_data/crystals.h5"], help="structures for --trained")
    parser.add_argument("--num-structures", type=int, default=12, help="structures per data file for --trained")
    args = parser.parse_args()
    if args.trained:
        torch.set_num_threads(1)
        torch.set_default_dtype(torch.float64)
        trained_model_table(args.trained, args.data, args.num_structures)
        return
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)  # e3nn's Wigner matrices follow the default dtype
    torch.manual_seed(1234)
    rotations = [o3.rand_matrix(dtype=torch.float64) for _ in range(2 if args.quick else 4)]
    if args.quick:
        degrees = {lmax: [2 * lmax + 1, default_grid_degree(lmax)] for lmax in (1, 2, 3)}
    else:
        degrees = {lmax: sorted({2 * lmax + 1, 5 * lmax + 2, default_grid_degree(lmax) - 2, default_grid_degree(lmax),
                                 default_grid_degree(lmax) + 4}) for lmax in (1, 2, 3)}
    grid_table(degrees, rotations)
    anisotropy_table(rotations)
    for lmax in (1, 2):
        model_table(lmax, sorted({2 * lmax + 1, 2 * lmax + 3, 4 * lmax + 3, default_grid_degree(lmax), 23}), rotations)
    torch.set_default_dtype(torch.float32)
    repeats = 5 if args.quick else 15
    radial_cost(num_edges=20000, num_outputs=2 * 3 * 64, repeats=repeats)
    if not args.skip_models:
        backbone_cost(repeats=3 if args.quick else 7)
    if args.fit:
        fit_check()
    print("(timings: one thread, interleaved repetitions; the machine was shared and loaded)")


if __name__ == "__main__":
    main()
