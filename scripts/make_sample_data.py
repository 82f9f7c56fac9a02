"""Generate the small sample data sets shipped in mlip/sample_data/, labelled with tblite (xTB).

Two files, both written through `mlip.data.writer.StructureWriter` (HDF5 schema v1):

* ``molecules.h5`` (OMol25-like): small organic molecules, neutral closed-shell, radicals
  (doublets and triplets), cations and anions. Geometries are frames of Langevin molecular
  dynamics driven by GFN2-xTB itself at several temperatures; every frame is then labelled by
  an independent GFN2-xTB single point (energy, forces, Mulliken partial charges) with the
  molecule's total charge and spin multiplicity.
* ``crystals.h5`` (MPTrj-like): simple inorganic crystals, 6-16 atoms per cell, relaxed
  isotropically with periodic GFN1-xTB, then randomly strained (normal and shear) and rattled;
  labelled with GFN1-xTB energy, forces, full 3x3 stress (eV/Å³, ASE sign) and partial charges.
  Before writing, the stress of one strained and rattled crystal is checked against a central
  finite difference of the energy, (1/V) dE/dε.

Everything is deterministic given ``--seed`` (run with OMP_NUM_THREADS=1, which this script
sets unless the caller already did).

    python scripts/make_sample_data.py --out-dir mlip/sample_data --seed 0   # the shipped files
    python scripts/make_sample_data.py --out-dir /tmp/sample --quick   # a few seconds
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tblite threads: deterministic and polite

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.build import bulk, molecule
from ase.constraints import FixCom
from ase.filters import FrechetCellFilter
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation
from ase.calculators.calculator import CalculationFailed
from ase.optimize import BFGS, LBFGS
from ase.spacegroup import crystal

import tblite
from tblite.ase import TBLite

from mlip.data.structure import Structure
from mlip.data.writer import StructureWriter

try:  # ASE >= 3.29
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # older ASE: same function under its former name
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta

TBLITE_VERSION = getattr(tblite, "__version__", None)
if TBLITE_VERSION is None:
    from importlib.metadata import version

    TBLITE_VERSION = version("tblite")

MOLECULE_METHOD = "GFN2-xTB"
CRYSTAL_METHOD = "GFN1-xTB"
ENERGY_REFERENCE = (
    "tblite total energy in eV, not referenced to isolated atoms (includes the atomic energies "
    "as xTB defines them)"
)


def log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------- calculators


def xtb_calculator(method: str, charge: int = 0, multiplicity: int = 1) -> TBLite:
    """A fresh, silent tblite calculator (no wavefunction carried over from earlier calls)."""
    return TBLite(method=method, charge=charge, multiplicity=multiplicity, verbosity=0)


def single_point(atoms: Atoms, method: str, charge: int = 0, multiplicity: int = 1) -> dict:
    """Energy (eV), forces (eV/Å), partial charges (e) and, if periodic, 3x3 stress (eV/Å³)."""
    atoms = atoms.copy()
    atoms.calc = xtb_calculator(method, charge, multiplicity)
    labels = {
        "energy": atoms.get_potential_energy(),
        "forces": atoms.get_forces(),
        "partial_charges": np.array(atoms.calc.results["charges"], dtype=np.float64),
    }
    if atoms.pbc.any():
        labels["stress"] = atoms.get_stress(voigt=False)
    return labels


# ---------------------------------------------------------------------------- molecules


@dataclass(frozen=True)
class MoleculeSpec:
    """One chemical species: a geometry builder plus its total charge and multiplicity."""

    name: str  # unique, used in structure ids
    build: Callable[[], Atoms]
    charge: int = 0
    multiplicity: int = 1

    @property
    def subset(self) -> str:
        if self.charge > 0:
            return "cation"
        if self.charge < 0:
            return "anion"
        return "neutral" if self.multiplicity == 1 else "radical"


def g2(name: str) -> Callable[[], Atoms]:
    """Builder of a G2 molecule from ase.collections (ASE's reference geometries)."""
    return lambda: molecule(name)


def isoelectronic(name: str, index: int, symbol: str) -> Callable[[], Atoms]:
    """Builder of a G2 molecule with atom ``index`` replaced by ``symbol`` (e.g. CH4 -> NH4+).

    The geometry is only a starting point: every species is relaxed before its dynamics.
    """

    def build() -> Atoms:
        atoms = molecule(name)
        atoms[index].symbol = symbol
        return atoms

    return build


def deprotonated(name: str) -> Callable[[], Atoms]:
    """Builder of a G2 acid without its O-H proton (e.g. HCOOH -> HCOO-)."""

    def build() -> Atoms:
        atoms = molecule(name)
        oxygens = [atom.index for atom in atoms if atom.symbol == "O"]
        hydrogens = [atom.index for atom in atoms if atom.symbol == "H"]
        distances = atoms.get_all_distances()[np.ix_(hydrogens, oxygens)]
        acidic = hydrogens[int(np.argmin(distances.min(axis=1)))]
        del atoms[acidic]
        return atoms

    return build


def molecule_specs() -> list[MoleculeSpec]:
    """The species of molecules.h5: closed-shell neutrals, radicals, cations and anions."""
    neutral = [
        "H2O", "NH3", "CH4", "H2CO", "HCN", "CH3OH", "C2H6", "C2H4", "C2H2", "HCOOH", "CH3CHO",
        "CH3CH2OH", "CH3OCH3", "CH3COOH", "CH3CN", "CH3NO2", "CH3CONH2", "N2H4", "H2O2", "SO2",
        "CH3SH", "CH3SCH3", "CH3Cl", "H2CCHF", "HCF3", "C4H4O", "C4H4S", "C5H5N", "C6H6",
        "trans-butane",
    ]
    radicals_doublet = [
        "CH3", "OH", "NH2", "NO", "NO2", "HCO", "C2H3", "C2H5", "CH3O", "H2COH", "CH3S",
        "CH3CH2O", "C3H7", "ClO",
    ]
    radicals_triplet = ["O2", "CH2_s3B1d", "NH"]
    specs = [MoleculeSpec(name, g2(name)) for name in neutral]
    specs += [MoleculeSpec(name, g2(name), 0, 2) for name in radicals_doublet]
    specs += [MoleculeSpec(name, g2(name), 0, 3) for name in radicals_triplet]
    specs += [
        # closed-shell cations
        MoleculeSpec("NH4+", isoelectronic("CH4", 0, "N"), +1, 1),
        MoleculeSpec("H3O+", isoelectronic("NH3", 0, "O"), +1, 1),
        MoleculeSpec("CH3NH3+", isoelectronic("C2H6", 0, "N"), +1, 1),
        MoleculeSpec("H2COH+", g2("H2COH"), +1, 1),
        MoleculeSpec("C5H5NH+", isoelectronic("C6H6", 0, "N"), +1, 1),
        # radical cations (one electron removed from a closed-shell molecule)
        MoleculeSpec("H2O.+", g2("H2O"), +1, 2),
        MoleculeSpec("NH3.+", g2("NH3"), +1, 2),
        MoleculeSpec("C2H4.+", g2("C2H4"), +1, 2),
        MoleculeSpec("C6H6.+", g2("C6H6"), +1, 2),
        # closed-shell anions
        MoleculeSpec("OH-", isoelectronic("HF", 0, "O"), -1, 1),
        MoleculeSpec("SH-", g2("SH"), -1, 1),
        MoleculeSpec("CN-", g2("CN"), -1, 1),
        MoleculeSpec("NO2-", g2("NO2"), -1, 1),
        MoleculeSpec("CH3O-", g2("CH3O"), -1, 1),
        MoleculeSpec("CH3CH2O-", g2("CH3CH2O"), -1, 1),
        MoleculeSpec("CH3S-", g2("CH3S"), -1, 1),
        MoleculeSpec("HCOO-", deprotonated("HCOOH"), -1, 1),
        MoleculeSpec("CH3COO-", deprotonated("CH3COOH"), -1, 1),
        # radical anion (superoxide)
        MoleculeSpec("O2.-", g2("O2"), -1, 2),
    ]
    for spec in specs:
        check_spin_parity(spec)
    return specs


def check_spin_parity(spec: MoleculeSpec) -> None:
    """Refuse a charge/multiplicity pair that is impossible for the electron count."""
    n_electrons = int(spec.build().numbers.sum()) - spec.charge
    if (n_electrons - (spec.multiplicity - 1)) % 2 != 0:
        raise ValueError(
            f"{spec.name}: {n_electrons} electrons cannot have multiplicity {spec.multiplicity}"
        )


def relaxed_molecule(spec: MoleculeSpec, max_steps: int) -> Atoms:
    """The species' starting geometry relaxed with GFN2-xTB at its charge and multiplicity."""
    atoms = spec.build()
    atoms.set_initial_magnetic_moments(None)
    atoms.calc = xtb_calculator(MOLECULE_METHOD, spec.charge, spec.multiplicity)
    BFGS(atoms, logfile=None).run(fmax=0.05, steps=max_steps)
    return atoms


def molecular_dynamics_frames(
    atoms: Atoms,
    charge: int,
    multiplicity: int,
    temperature_K: float,
    rng: np.random.Generator,
    n_frames: int,
    equilibration_steps: int,
    sample_interval: int,
    timestep_fs: float = 0.5,
    friction_per_fs: float = 0.01,
) -> Iterator[Atoms]:
    """Frames of GFN2-xTB Langevin dynamics started from ``atoms`` (bare copies, no labels)."""
    atoms = atoms.copy()
    atoms.calc = xtb_calculator(MOLECULE_METHOD, charge, multiplicity)
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    atoms.set_constraint(FixCom())  # keeps the molecule in place without biasing the ensemble
    dynamics = Langevin(
        atoms,
        timestep=timestep_fs * units.fs,
        temperature_K=temperature_K,
        friction=friction_per_fs / units.fs,
        fixcm=False,
        rng=rng,
    )
    dynamics.run(equilibration_steps)
    for _ in range(n_frames):
        dynamics.run(sample_interval)
        yield Atoms(numbers=atoms.numbers, positions=atoms.positions)


def molecule_structures(
    specs: list[MoleculeSpec],
    temperatures_K: list[float],
    seed: int,
    n_frames: int,
    equilibration_steps: int,
    sample_interval: int,
    relax_steps: int,
) -> Iterator[Structure]:
    """Labelled MD frames of every species at every temperature."""
    for species_index, spec in enumerate(specs):
        start = relaxed_molecule(spec, relax_steps)
        log(f"molecule {spec.name} ({spec.subset}): relaxed")
        for temperature_index, temperature in enumerate(temperatures_K):
            rng = np.random.default_rng([seed, species_index, temperature_index])
            frames = molecular_dynamics_frames(
                start, spec.charge, spec.multiplicity, temperature, rng, n_frames, equilibration_steps, sample_interval
            )
            try:
                for frame_index, frame in enumerate(frames):
                    labels = single_point(frame, MOLECULE_METHOD, spec.charge, spec.multiplicity)
                    yield Structure(
                        numbers=frame.numbers,
                        positions=frame.positions,
                        charge=spec.charge,
                        spin=spec.multiplicity,
                        id=f"{spec.name}/{spec.charge}/{spec.multiplicity}/{temperature:g}K/{frame_index}",
                        subset=spec.subset,
                        **labels,
                    )
            except CalculationFailed as error:  # the rest of this trajectory is dropped
                log(f"molecule {spec.name} at {temperature:g} K stopped: {error}")


# ---------------------------------------------------------------------------- crystals


@dataclass(frozen=True)
class CrystalSpec:
    name: str
    build: Callable[[], Atoms]


def rutile_tio2() -> Atoms:
    return crystal(
        ["Ti", "O"], basis=[(0, 0, 0), (0.305, 0.305, 0)], spacegroup=136,
        cellpar=[4.59, 4.59, 2.96, 90, 90, 90],
    ).repeat((1, 1, 2))


def crystal_specs() -> list[CrystalSpec]:
    """Materials whose GFN1-xTB (Γ-point, small cell) volume is within ~15% of experiment.

    Left out after trying them: MgO, LiF, NaF, Al, Mg, wurtzite ZnO/GaN/AlN (GFN1-xTB cells
    expand by 35-250% in volume) and CsCl, KF (SCF does not converge).
    """
    return [
        CrystalSpec("Si", lambda: bulk("Si", "diamond", a=5.43, cubic=True)),
        CrystalSpec("C", lambda: bulk("C", "diamond", a=3.57, cubic=True)),
        CrystalSpec("SiC", lambda: bulk("SiC", "zincblende", a=4.36, cubic=True)),
        CrystalSpec("BN", lambda: bulk("BN", "zincblende", a=3.62, cubic=True)),
        CrystalSpec("NaCl", lambda: bulk("NaCl", "rocksalt", a=5.64, cubic=True)),
        CrystalSpec("KCl", lambda: bulk("KCl", "rocksalt", a=6.29, cubic=True)),
        CrystalSpec("LiCl", lambda: bulk("LiCl", "rocksalt", a=5.13, cubic=True)),
        CrystalSpec("CaF2", lambda: bulk("CaF2", "fluorite", a=5.46, cubic=True)),
        CrystalSpec("NaBr", lambda: bulk("NaBr", "rocksalt", a=5.97, cubic=True)),
        CrystalSpec("TiO2", rutile_tio2),
        CrystalSpec("wBN", lambda: bulk("BN", "wurtzite", a=2.55, c=4.21).repeat((2, 2, 1))),
    ]


def relaxed_crystal(spec: CrystalSpec, max_steps: int) -> Atoms:
    """Positions and cell relaxed with GFN1-xTB (forces and stress·volume below 0.01 eV/Å)."""
    atoms = spec.build()
    atoms.calc = xtb_calculator(CRYSTAL_METHOD)
    LBFGS(FrechetCellFilter(atoms), logfile=None).run(fmax=0.01, steps=max_steps)
    atoms.calc = None
    return atoms


def strained(atoms: Atoms, strain: np.ndarray) -> Atoms:
    """``atoms`` deformed by the symmetric strain ε: cell and positions times (1 + ε)."""
    deformation = np.eye(3) + strain
    result = atoms.copy()
    result.set_cell(atoms.cell.array @ deformation, scale_atoms=False)
    result.positions = atoms.positions @ deformation
    return result


def random_strain(rng: np.random.Generator, max_normal: float, max_shear: float) -> np.ndarray:
    """A symmetric strain with normal components in ±max_normal and shear in ±max_shear."""
    strain = np.diag(rng.uniform(-max_normal, max_normal, size=3))
    upper = np.triu_indices(3, k=1)
    strain[upper] = rng.uniform(-max_shear, max_shear, size=3)
    return np.triu(strain) + np.triu(strain, k=1).T


def crystal_structures(
    specs: list[CrystalSpec],
    seed: int,
    n_frames: int,
    relax_steps: int,
    max_normal_strain: float,
    max_shear_strain: float,
    rattle_range: tuple[float, float],
) -> Iterator[Structure]:
    """Per material: the relaxed cell (frame 0), then strained and rattled copies."""
    for material_index, spec in enumerate(specs):
        rng = np.random.default_rng([seed, 1000 + material_index])
        reference = relaxed_crystal(spec, relax_steps)
        log(f"crystal {spec.name}: relaxed, {len(reference)} atoms")
        for frame_index in range(n_frames):
            atoms = reference.copy()
            if frame_index > 0:
                atoms = strained(atoms, random_strain(rng, max_normal_strain, max_shear_strain))
                rattle = rng.uniform(*rattle_range)
                atoms.positions += rng.normal(0.0, rattle, size=atoms.positions.shape)
            try:
                labels = single_point(atoms, CRYSTAL_METHOD)
            except CalculationFailed as error:
                log(f"crystal {spec.name} frame {frame_index} skipped: {error}")
                continue
            yield Structure(
                numbers=atoms.numbers,
                positions=atoms.positions,
                cell=atoms.cell.array,
                pbc=atoms.pbc,
                id=f"{spec.name}/{len(atoms)}/{frame_index}",
                subset=spec.name,
                **labels,
            )


def finite_difference_stress(atoms: Atoms, method: str, step: float = 1e-4) -> np.ndarray:
    """(1/V) dE/dε by central differences of the energy under symmetric strains, eV/Å³."""
    volume = atoms.get_volume()
    stress = np.zeros((3, 3))
    for i in range(3):
        for j in range(i, 3):
            strain = np.zeros((3, 3))
            strain[i, j] = strain[j, i] = step / 2 if i != j else step
            energies = [
                single_point(strained(atoms, sign * strain), method)["energy"] for sign in (1, -1)
            ]
            # ε_ij and ε_ji both move by step/2 off the diagonal: dE/dh = V (σ_ij + σ_ji) / 2
            stress[i, j] = stress[j, i] = (energies[0] - energies[1]) / (2 * step) / volume
    return stress


def check_stress_sign(structure: Structure) -> float:
    """Largest |analytic - finite-difference| stress (eV/Å³); raises if they disagree."""
    atoms = structure.to_atoms()
    numeric = finite_difference_stress(atoms, CRYSTAL_METHOD)
    deviation = float(np.abs(numeric - structure.stress).max())
    scale = float(np.abs(structure.stress).max())
    print(
        f"stress check on {structure.id}: max |σ| = {scale:.5f} eV/Å³, "
        f"max |σ_tblite - (1/V) dE/dε| = {deviation:.2e} eV/Å³"
    )
    if deviation > 1e-3 * max(scale, 1e-2):
        raise RuntimeError(
            f"tblite stress of {structure.id} disagrees with (1/V) dE/dε by {deviation:.3e} eV/Å³"
        )
    return deviation


# ---------------------------------------------------------------------------- driver


@dataclass(frozen=True)
class GenerationSettings:
    molecules: list[MoleculeSpec]
    temperatures_K: list[float]
    molecule_frames: int  # per species and temperature
    equilibration_steps: int
    sample_interval: int  # MD steps of 0.5 fs between frames
    molecule_relax_steps: int
    crystals: list[CrystalSpec]
    crystal_frames: int  # per material, the relaxed one included
    crystal_relax_steps: int
    max_normal_strain: float = 0.04
    max_shear_strain: float = 0.03
    rattle_range: tuple[float, float] = (0.02, 0.10)  # Å, std of the Gaussian displacement


def full_settings() -> GenerationSettings:
    return GenerationSettings(
        molecules=molecule_specs(),
        temperatures_K=[300.0, 500.0, 800.0],
        molecule_frames=8,
        equilibration_steps=200,
        sample_interval=40,
        molecule_relax_steps=200,
        crystals=crystal_specs(),
        crystal_frames=30,
        crystal_relax_steps=60,
    )


def quick_settings() -> GenerationSettings:
    """A tiny run (a few seconds) that exercises every code path."""
    wanted_molecules = {"H2O", "CH3", "NH4+", "OH-"}
    return GenerationSettings(
        molecules=[spec for spec in molecule_specs() if spec.name in wanted_molecules],
        temperatures_K=[500.0],
        molecule_frames=2,
        equilibration_steps=10,
        sample_interval=5,
        molecule_relax_steps=5,
        crystals=[spec for spec in crystal_specs() if spec.name in {"Si", "NaCl"}],
        crystal_frames=2,
        crystal_relax_steps=2,
    )


def write_file(path: Path, structures: Iterator[Structure], method: str, source: str) -> int:
    with StructureWriter(
        path,
        level_of_theory=f"{method} (tblite {TBLITE_VERSION})",
        energy_reference=ENERGY_REFERENCE,
        source=source,
        overwrite=True,
    ) as writer:
        return writer.write_many(structures)


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parents[1] / "mlip" / "sample_data",
                        help="output folder (default: mlip/sample_data/, where the package ships them)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument("--quick", action="store_true", help="tiny run for tests (seconds)")
    parser.add_argument(
        "--skip-stress-check", action="store_true",
        help="do not compare the tblite stress with a finite difference of the energy",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    settings = quick_settings() if arguments.quick else full_settings()
    command = "scripts/make_sample_data.py" + (" --quick" if arguments.quick else "")
    source = f"{command} --seed {arguments.seed} (mlip sample data)"
    arguments.out_dir.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    crystals = list(
        crystal_structures(
            settings.crystals, arguments.seed, settings.crystal_frames,
            settings.crystal_relax_steps, settings.max_normal_strain,
            settings.max_shear_strain, settings.rattle_range,
        )
    )
    if not arguments.skip_stress_check:
        check_stress_sign(next(s for s in crystals if s.id.endswith("/1")))
    n_crystals = write_file(arguments.out_dir / "crystals.h5", iter(crystals), CRYSTAL_METHOD, source)
    print(f"crystals.h5: {n_crystals} structures ({time.perf_counter() - started:.0f} s)")

    started = time.perf_counter()
    molecules = molecule_structures(
        settings.molecules, settings.temperatures_K, arguments.seed, settings.molecule_frames,
        settings.equilibration_steps, settings.sample_interval, settings.molecule_relax_steps,
    )
    n_molecules = write_file(arguments.out_dir / "molecules.h5", molecules, MOLECULE_METHOD, source)
    print(f"molecules.h5: {n_molecules} structures ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main(sys.argv[1:])
