"""Data-pipeline benchmark: structures/s for reading + neighbour-graph building, and peak RSS.

Contenders, each run in its own forked child process (torch, ASE and mlip are imported once in
the parent before forking, so children start at once and imports are not timed); peak RSS is
the child's, which includes the pages it inherited ("RSS at start"):
  mlip HDF5, dataset[i] in order     HDF5Dataset(path, cutoff)[i], i = 0, 1, ...
  mlip HDF5, dataset[i] shuffled     the same in a random order (what a training epoch does)
  mlip HDF5, batched reads           HDF5Dataset.get_structures(256 at a time) + structure_to_graph
  extxyz, ase.io.iread               ase.io.iread -> Structure -> structure_to_graph
  MACE HDF5, read_mace_hdf5          mlip.data.convert.read_mace_hdf5 -> structure_to_graph
  Structures in memory               structure_to_graph alone (no I/O), for reference
All of them build graphs with the same builder (mlip.data.graph.structure_to_graph).

The machine is shared, so each contender runs --rounds times (interleaved with the others) and
the run with the least CPU time is kept; structures per CPU-second (the child's own CPU time)
is the figure to compare, wall-clock rates are shown too. Files are read from the page cache.

Inputs:
  (a) the shipped sample data mlip/sample_data/*.h5 (skipped with a message when absent);
  (b) a synthetic file of --n-structures small molecules and crystals written into a temporary
      directory; the extxyz and MACE files hold its first --n-read structures (the same data),
      and every contender reads --n-read structures.

    python scripts/bench_data.py [--n-structures 100000] [--n-read 3000] [--rounds 2]
                                 [--cutoff 5.0] [--sample 'mlip/sample_data/*.h5'] [--skip-sample]
"""

from __future__ import annotations

import argparse
import glob
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))  # run from a checkout without installing
READ_BATCH = 256


# ------------------------------------------------------------------------------- data


def synthetic_structures(n_structures: int, seed: int = 0):
    """Small labelled molecules (80 %) and crystals (20 %), random but physically sized."""
    from mlip.data.structure import Structure

    rng = np.random.default_rng(seed)
    molecule_elements = np.array([1, 6, 7, 8])
    crystal_elements = np.array([3, 8, 13, 14, 26, 29])
    for index in range(n_structures):
        if index % 5:
            n_atoms = int(rng.integers(3, 25))
            box = (12.0 * n_atoms) ** (1 / 3)  # ~12 Å³ per atom
            numbers = rng.choice(molecule_elements, size=n_atoms)
            positions = rng.uniform(0, box, size=(n_atoms, 3))
            cell, pbc, stress = None, False, None
        else:
            n_atoms = int(rng.integers(1, 17))
            lengths = (15.0 * n_atoms) ** (1 / 3) * rng.uniform(0.8, 1.2, size=3)
            cell = np.diag(lengths) + rng.normal(scale=0.3, size=(3, 3))
            numbers = rng.choice(crystal_elements, size=n_atoms)
            positions = rng.uniform(0, 1, size=(n_atoms, 3)) @ cell
            pbc, stress = True, rng.normal(scale=0.01, size=(3, 3))
            stress = (stress + stress.T) / 2
        yield Structure(
            numbers=numbers,
            positions=positions,
            cell=cell,
            pbc=pbc,
            energy=float(-3.0 * n_atoms + rng.normal()),
            forces=rng.normal(size=(n_atoms, 3)) if index % 7 else None,
            stress=stress,
            charge=int(rng.integers(-1, 2)),
            spin=int(rng.integers(1, 3)),
            id=f"synthetic-{index}",
            subset="crystal" if index % 5 == 0 else "molecule",
        )


def write_synthetic_files(directory: Path, n_structures: int, n_read: int) -> dict[str, Path]:
    """The synthetic data as mlip HDF5 (all), extxyz and MACE HDF5 (first n_read)."""
    import ase.io

    from mlip.data.writer import write_structures

    paths = {"mlip": directory / "synthetic.h5", "extxyz": directory / "synthetic.extxyz"}
    start = time.perf_counter()
    write_structures(paths["mlip"], synthetic_structures(n_structures))
    print(f"  wrote {n_structures} structures as mlip HDF5 in {time.perf_counter() - start:.1f} s "
          f"({paths['mlip'].stat().st_size / 2**20:.1f} MiB)")

    head = list(synthetic_structures(n_read))
    start = time.perf_counter()
    ase.io.write(paths["extxyz"], [structure.to_atoms() for structure in head], format="extxyz")
    print(f"  wrote {n_read} structures as extxyz in {time.perf_counter() - start:.1f} s "
          f"({paths['extxyz'].stat().st_size / 2**20:.1f} MiB)")

    try:
        from mlip.data.convert import write_mace_hdf5
    except ImportError:
        print("  mlip.data.convert.write_mace_hdf5 not available: MACE HDF5 skipped")
        return paths
    paths["mace"] = directory / "synthetic_mace.h5"
    start = time.perf_counter()
    write_mace_hdf5(paths["mace"], head)
    print(f"  wrote {n_read} structures as MACE HDF5 in {time.perf_counter() - start:.1f} s "
          f"({paths['mace'].stat().st_size / 2**20:.1f} MiB)")
    return paths


# ------------------------------------------------------------------------------- contenders
# Each returns an iterator of graphs; they run inside a child process.


def graphs_from_memory(n_read, cutoff):
    """Graph building alone: the structures are generated before the clock starts."""
    from mlip.data.graph import structure_to_graph

    structures = list(synthetic_structures(n_read))
    yield None  # signals "setup done": the timing starts after this
    for structure in structures:
        yield structure_to_graph(structure, cutoff)


def graphs_from_dataset(paths, n_read, cutoff, shuffled):
    from mlip.data.dataset import HDF5Dataset

    dataset = HDF5Dataset(paths, cutoff=cutoff)
    n = min(n_read, len(dataset))
    order = np.random.default_rng(0).permutation(len(dataset))[:n] if shuffled else range(n)
    for index in order:
        yield dataset[int(index)]


def graphs_from_batched_reads(paths, n_read, cutoff):
    from mlip.data.dataset import HDF5Dataset
    from mlip.data.graph import structure_to_graph

    dataset = HDF5Dataset(paths, cutoff=None)
    n = min(n_read, len(dataset))
    for start in range(0, n, READ_BATCH):
        for structure in dataset.get_structures(range(start, min(start + READ_BATCH, n))):
            yield structure_to_graph(structure, cutoff)


def graphs_from_extxyz(path, n_read, cutoff):
    import ase.io

    from mlip.data.graph import structure_to_graph
    from mlip.data.structure import Structure

    for index, atoms in enumerate(ase.io.iread(path, index=f":{n_read}", format="extxyz")):
        results = atoms.calc.results if atoms.calc is not None else {}
        stress = results.get("stress")
        if stress is not None and np.shape(stress) == (6,):
            from ase.stress import voigt_6_to_full_3x3_stress

            stress = voigt_6_to_full_3x3_stress(stress)
        structure = Structure(
            numbers=atoms.numbers,
            positions=atoms.positions,
            cell=atoms.cell.array if atoms.pbc.any() else None,
            pbc=atoms.pbc,
            energy=results.get("energy"),
            forces=results.get("forces"),
            stress=stress,
            charge=atoms.info.get("charge", 0),
            spin=atoms.info.get("spin", 1),
            id=str(atoms.info.get("id", index)),
            subset=str(atoms.info.get("subset", "")),
        )
        yield structure_to_graph(structure, cutoff)


def graphs_from_mace_hdf5(path, n_read, cutoff):
    from mlip.data.convert import read_mace_hdf5
    from mlip.data.graph import structure_to_graph

    for index, structure in enumerate(read_mace_hdf5(path)):
        if index >= n_read:
            break
        yield structure_to_graph(structure, cutoff)


class Measurement(NamedTuple):
    structures: int
    wall_seconds: float
    cpu_seconds: float  # this process only: robust to other processes loading the machine
    peak_rss_mib: float
    start_rss_mib: float
    edges: int


def _child(contender: str, arguments: tuple, queue) -> None:
    """Run one contender in this (forked) process and put a `Measurement` on the queue."""
    import torch

    torch.set_num_threads(1)
    start_rss = _current_rss_mib()
    generator = CONTENDERS[contender](*arguments)
    if contender == IN_MEMORY:
        next(generator)  # let it build its structures before the clock starts
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    count = 0
    n_edges = 0
    for graph in generator:
        count += 1
        n_edges += graph.edge_index.shape[1]
    wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(tuple(Measurement(count, wall, cpu, peak, start_rss, n_edges)))


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


IN_MEMORY = "Structures in memory (graphs only)"
CONTENDERS = {
    IN_MEMORY: lambda p, n, c: graphs_from_memory(n, c),
    "mlip HDF5, dataset[i] in order": lambda p, n, c: graphs_from_dataset(p, n, c, False),
    "mlip HDF5, dataset[i] shuffled": lambda p, n, c: graphs_from_dataset(p, n, c, True),
    "mlip HDF5, batched reads": graphs_from_batched_reads,
    "extxyz, ase.io.iread": graphs_from_extxyz,
    "MACE HDF5, read_mace_hdf5": graphs_from_mace_hdf5,
}


def run_contender(contender: str, path, n_read: int, cutoff: float) -> Measurement:
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=_child, args=(contender, (path, n_read, cutoff), queue))
    process.start()
    result = Measurement(*queue.get())
    process.join()
    return result


def measure(inputs: dict, n_read: int, cutoff: float, rounds: int) -> list[tuple[str, Measurement]]:
    """Best (least CPU time) of `rounds` runs per contender, contenders interleaved per round."""
    best: dict[str, Measurement] = {}
    for _ in range(rounds):
        for name, path in inputs.items():
            result = run_contender(name, path, n_read, cutoff)
            if name not in best or result.cpu_seconds < best[name].cpu_seconds:
                best[name] = result
    return list(best.items())


def print_table(title: str, rows: list[tuple[str, Measurement]]) -> None:
    print(f"\n{title}")
    header = (
        f"{'reader':34s} {'structures':>10s} {'CPU s':>7s} {'per CPU-s':>9s} {'wall s':>7s} "
        f"{'per wall-s':>10s} {'edges/struct':>12s} {'peak RSS MiB':>12s} {'RSS at start':>12s}"
    )
    print(header)
    print("-" * len(header))
    for name, m in rows:
        print(
            f"{name:34s} {m.structures:10d} {m.cpu_seconds:7.2f} {m.structures / m.cpu_seconds:9.0f} "
            f"{m.wall_seconds:7.2f} {m.structures / m.wall_seconds:10.0f} "
            f"{m.edges / max(m.structures, 1):12.1f} {m.peak_rss_mib:12.0f} {m.start_rss_mib:12.0f}"
        )


# ------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-structures", type=int, default=100_000,
                        help="structures in the synthetic mlip HDF5 file")
    parser.add_argument("--n-read", type=int, default=3000,
                        help="structures read by each contender (and held by extxyz/MACE files)")
    parser.add_argument("--cutoff", type=float, default=5.0, help="neighbour cutoff, Å")
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs per contender, interleaved; the one with least CPU time is kept")
    parser.add_argument("--sample", default=str(REPOSITORY / "mlip" / "sample_data" / "*.h5"),
                        help="glob of the sample data files (default: the shipped mlip/sample_data/*.h5)")
    parser.add_argument("--skip-sample", action="store_true", help="skip the sample data")
    arguments = parser.parse_args()
    n_read = min(arguments.n_read, arguments.n_structures)
    import ase.io  # noqa: F401  (imported once, outside the timings; forked children inherit)
    import torch

    import mlip.data.dataset  # noqa: F401

    torch.set_num_threads(1)
    print(f"cutoff {arguments.cutoff} Å, torch threads 1, one process per run, best of "
          f"{arguments.rounds} interleaved runs by CPU time; "
          f"CPU count {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")

    sample_files = sorted(glob.glob(arguments.sample))
    if arguments.skip_sample:
        pass
    elif not sample_files:
        print(f"\n(a) no sample data matches {arguments.sample}: skipped")
    else:
        inputs = dict.fromkeys(list(CONTENDERS)[1:4], sample_files)
        rows = measure(inputs, n_read, arguments.cutoff, arguments.rounds)
        print_table(f"(a) sample data: {', '.join(Path(f).name for f in sample_files)}", rows)

    with tempfile.TemporaryDirectory(prefix="mlip-bench-data-") as directory:
        print(f"\n(b) synthetic data ({arguments.n_structures} structures, 80 % molecules of 3-24 "
              "atoms, 20 % crystals of 1-16 atoms):")
        paths = write_synthetic_files(Path(directory), arguments.n_structures, n_read)
        inputs = {
            IN_MEMORY: "",
            "mlip HDF5, dataset[i] in order": paths["mlip"],
            "mlip HDF5, dataset[i] shuffled": paths["mlip"],
            "mlip HDF5, batched reads": paths["mlip"],
            "extxyz, ase.io.iread": paths["extxyz"],
            "MACE HDF5, read_mace_hdf5": paths.get("mace"),
        }
        inputs = {name: path for name, path in inputs.items() if path is not None}
        rows = measure(inputs, n_read, arguments.cutoff, arguments.rounds)
        print_table(f"(b) synthetic data, first {n_read} structures (shuffled: {n_read} random "
                    f"of {arguments.n_structures})", rows)


if __name__ == "__main__":
    main()
