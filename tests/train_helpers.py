"""Small labelled data sets and configs shared by the training tests (test_train/resume/ddp/config).

The labels come from ASE's EMT potential, a cheap physical many-body model: rattled Cu/Al
clusters (molecules: energy + forces, some with charge/spin set) and rattled, strained fcc
crystals (energy + forces + stress). Sizes are tiny so that training tests stay fast on 2 cores.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.cluster import Icosahedron

from mlip.data.structure import Structure
from mlip.data.writer import write_structures

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA_DIR = Path(os.environ.get("MLIP_SAMPLE_DATA_DIR", REPO_ROOT / "mlip" / "sample_data"))  # override: data made elsewhere
SAMPLE_DATA = [SAMPLE_DATA_DIR / "molecules.h5", SAMPLE_DATA_DIR / "crystals.h5"]


def emt_structure(atoms, subset: str, index: int, charge: int = 0, spin: int = 1, with_stress: bool = False) -> Structure:
    atoms.calc = EMT()
    periodic = bool(atoms.pbc.any())
    return Structure(
        numbers=atoms.numbers,
        positions=atoms.positions,
        cell=np.asarray(atoms.cell.array) if periodic else None,
        pbc=atoms.pbc,
        energy=atoms.get_potential_energy(),
        forces=atoms.get_forces(),
        stress=atoms.get_stress(voigt=False) if with_stress else None,
        charge=charge,
        spin=spin,
        id=f"{subset}-{index}",
        subset=subset,
    )


def cluster_structures(count: int, seed: int) -> list[Structure]:
    """Rattled 13-atom Cu/Al icosahedra (no cell)."""
    rng = np.random.default_rng(seed)
    structures = []
    for index in range(count):
        atoms = Icosahedron("Cu", 2)
        atoms.numbers[rng.random(len(atoms)) < 0.3] = 13  # some Al
        atoms.positions += rng.normal(scale=0.12, size=atoms.positions.shape)
        atoms.pbc = False
        structures.append(emt_structure(atoms, "cluster", index))
    return structures


def crystal_structures(count: int, seed: int) -> list[Structure]:
    """Rattled, randomly strained 8-atom fcc Cu/Al cells with stress."""
    rng = np.random.default_rng(seed)
    structures = []
    for index in range(count):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((1, 1, 2))
        atoms.numbers[rng.random(len(atoms)) < 0.3] = 13
        strain = np.eye(3) + rng.normal(scale=0.02, size=(3, 3))
        atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
        atoms.positions += rng.normal(scale=0.08, size=atoms.positions.shape)
        structures.append(emt_structure(atoms, "crystal", index, with_stress=True))
    return structures


def write_emt_data(directory: Path, n_clusters: int = 40, n_crystals: int = 40, seed: int = 0) -> list[str]:
    """Two HDF5 files (clusters, crystals) in ``directory``; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    clusters = directory / "clusters.h5"
    crystals = directory / "crystals.h5"
    write_structures(clusters, cluster_structures(n_clusters, seed), source="EMT test fixture")
    write_structures(crystals, crystal_structures(n_crystals, seed + 1), source="EMT test fixture")
    return [str(clusters), str(crystals)]


TINY_BACKBONES = {
    "mace": {
        "model.backbone.num_channels": 8,
        "model.backbone.correlation": 2,
        "model.backbone.num_layers": 1,
        "model.backbone.radial_mlp": "[16]",
    },
    "transip": {"model.backbone.dim": 16, "model.backbone.depth": 1, "model.backbone.heads": 2},
}


def tiny_overrides(paths: list[str], run_dir: Path, backbone: str = "mace", **extra) -> list[str]:
    """Hydra overrides for a tiny, fast model on ``paths`` written into ``run_dir``."""
    overrides = {
        "model/backbone": backbone,
        **TINY_BACKBONES[backbone],
        "data": "files",
        "data.paths": "[" + ",".join(paths) + "]",
        "data.batch_size": 4,
        "data.eval_batch_size": 20,
        "data.statistics_cache": False,
        "model.cutoff": 4.0,
        "model.readout_hidden": "[8]",
        "model.condition_dim": 4,
        "runs_dir": str(run_dir.parent),
        "name": run_dir.name,
        "progress_bar": "none",
        "num_threads": 1,
        "trainer.log_every_n_steps": 1,
        "scheduler.warmup_steps": 5,
    }
    overrides.update(extra)
    return [f"{key}={value}" for key, value in overrides.items()]


def compose_config(overrides: list[str]):
    """The `mlip-train` config composed with Hydra's compose API (no run directory, no cwd change)."""
    from hydra import compose, initialize_config_dir

    from mlip.train.build import config_dir, register_resolvers

    register_resolvers()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("train", overrides=overrides)


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """Rows of <run dir>/logs/metrics.csv with the empty cells dropped and numbers parsed."""
    import csv

    with open(run_dir / "logs" / "metrics.csv", newline="") as handle:
        return [{key: float(value) for key, value in row.items() if value != ""} for row in csv.DictReader(handle)]


class RecordStructureIds(pl.Callback):
    """Callback used by the DDP test: every rank appends "<epoch> <structure id>" for each training
    structure it sees to ``<directory>/rank<k>.txt``."""

    def __init__(self, directory: str):
        self.directory = Path(directory)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        path = self.directory / f"rank{trainer.global_rank}.txt"
        with open(path, "a") as handle:
            handle.writelines(f"{trainer.current_epoch} {sid}\n" for sid in batch.structure_id)
