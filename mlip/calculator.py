"""ASE calculator for a trained `mlip` potential.

    from mlip.calculator import MLIPCalculator
    atoms.calc = MLIPCalculator("model.pt")          # an export written by mlip-train, or a Potential
    atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()

What it adds on top of `Potential.forward`:

* a neighbour list with a skin, reused across MD / relaxation steps. The list is built with
  cutoff + skin and rebuilt only when an atom moved more than skin/2 since the last build, or
  the cell, pbc or atomic numbers changed. Each step the stored pairs are filtered to those
  strictly inside the cutoff, so results are the same as with a fresh list (up to summation order);
* charge and spin from ``atoms.info["charge"]`` / ``atoms.info["spin"]`` (OMol25 convention:
  total charge in e, multiplicity 2S+1), with defaults 0 / 1;
* batched evaluation of many structures (`predict_batch`) for throughput;
* clear errors (`MLIPInputError`) for empty Atoms, elements the model was not trained on, a
  structure without a charge given to a model that was trained on charged structures, NaN or
  infinite positions or cell, and two atoms closer than ``min_distance`` (0.1 Å by default: the
  model is not defined for coincident atoms), checked on every call; the closest pair is read
  from the neighbour list's edge lengths, which the calculator computes anyway. These two
  geometry errors are `MLIPGeometryError`, a subclass (`mlip.md` reports them as instability);
* `MLIPPredictionError` when the model returns a NaN or infinite energy, force or stress.

Stress is computed for cells with pbc and nonzero volume (in the same backward pass as the
forces); asking for stress of a non-periodic structure raises `PropertyNotImplementedError`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import (
    Calculator,
    PropertyNotImplementedError,
    all_changes,
)
from ase.data import chemical_symbols
from ase.stress import full_3x3_to_voigt_6_stress

from mlip import performance
from mlip.constants import DTYPES, is_integer
from mlip.data.graph import SkinNeighbourList, atoms_to_graph
from mlip.data.neighbours import closest_edge
from mlip.data.schema import zero_volume_reason


class MLIPInputError(ValueError):
    """A structure the calculator cannot evaluate with this model (the message says why)."""


class MLIPGeometryError(MLIPInputError):
    """NaN or infinite positions or cell, or two atoms closer than ``min_distance`` (a collapse in MD)."""


class MLIPPredictionError(ArithmeticError):
    """The model returned a NaN or infinite energy, force or stress (the message names the atoms)."""


def load_potential(model_or_path, dtype: torch.dtype) -> tuple[torch.nn.Module, dict | None]:
    """The `Potential` in ``dtype`` (a copy of the one given, or loaded with `mlip.load`) and its
    training statistics, if known.

    The model is *built* in ``dtype`` (`mlip.load(path, dtype=...)`, or `mlip.models.rebuild` for a
    given module in another precision), never cast with ``.to(dtype)``, which would keep
    float32-rounded constants in a float64 model. Statistics are the export's ``statistics``
    entry (`DatasetStatistics.to_dict()`), or a `statistics` attribute of a given module; None when
    neither exists. A given module is copied, so the caller's model is never touched.
    """
    if isinstance(model_or_path, torch.nn.Module):
        statistics = getattr(model_or_path, "statistics", None)
        if statistics is not None and not isinstance(statistics, dict):
            statistics = statistics.to_dict()
        parameter = next(model_or_path.parameters(), None)
        if parameter is not None and parameter.dtype != dtype and hasattr(model_or_path, "config"):
            from mlip.models import rebuild

            return rebuild(model_or_path, dtype), statistics
        from mlip.models import independent_copy

        return independent_copy(model_or_path), statistics
    if isinstance(model_or_path, (str, os.PathLike)):
        from mlip.export import load, read_export

        path = os.fspath(model_or_path)
        return load(path, dtype=dtype), read_export(path).get("statistics")
    raise TypeError(f"MLIPCalculator: expected a Potential or a path to an exported model, got {type(model_or_path).__name__}")


def model_elements(model) -> list[int]:
    """Atomic numbers the model knows (its `elements` attribute may hold numbers or symbols)."""
    elements = []
    for element in model.elements:
        if isinstance(element, str):
            elements.append(chemical_symbols.index(element))
        else:
            elements.append(int(element))
    return elements


def trained_on_charged_structures(model, statistics: dict | None) -> bool:
    """True if the model conditions on charge and its training data held a nonzero total charge.

    Read from the potential's `charge_spin_conditioning` flag and the training statistics'
    ``charge_counts`` ({total charge: number of structures}).
    """
    if not getattr(model, "charge_spin_conditioning", False) or not statistics:
        return False
    charge_counts = statistics.get("charge_counts") or {}
    return any(int(charge) != 0 and int(count) > 0 for charge, count in charge_counts.items())


def head_for(model, head: str | None, where: str = "head") -> str | None:
    """The head to evaluate ``model`` with when one ``head`` is asked for a whole zoo of models:
    ``head`` (checked) for a multi-head model, None for a single-head one (which has no heads).
    `MLIPInputError` listing the heads for a multi-head model without ``head`` or with an unknown one."""
    from mlip.models.potential import UnknownHeadError

    heads = getattr(model, "heads", None)
    if not heads:
        return None
    try:
        model.head_index(head)
    except UnknownHeadError as error:
        raise MLIPInputError(f"{where}: {error}") from None
    return head


class MLIPCalculator(Calculator):
    """ASE calculator wrapping an `mlip` `Potential` (or the path of an exported one).

    Args:
        model_or_path: a `Potential` module or a path accepted by `mlip.load`.
        device: torch device, e.g. "cpu" or "cuda".
        dtype: "float64" (default; what MD energy conservation wants) or "float32" (faster).
        skin: neighbour-list skin in Å; 0 rebuilds the list every call.
        default_charge: total charge (e) used when ``atoms.info`` has no "charge". Left as None it
            means 0, except for a model trained on charged structures, where a missing charge is
            an error (pass default_charge=0 explicitly to accept 0).
        default_spin: multiplicity 2S+1 used when ``atoms.info`` has no "spin".
        head: for a multi-head model, the head to evaluate (its name, e.g. a level of theory);
            ``atoms.info["head"]`` overrides it per structure. Without either, a multi-head model
            is an error listing its heads; a single-head model takes no head. An unknown name is
            an `MLIPInputError` listing the known heads.
        min_distance: Å; two atoms closer than this are an `MLIPGeometryError` naming them (0 turns
            the check off). Must be below the cutoff (the pairs come from the neighbour list).
        compile: compile the backbone with `torch.compile` (dynamic shapes; forces and stress are
            still taken by autograd through the compiled graph). The first call compiles (seconds
            to a minute); if compilation fails there, warn and run eagerly. The Facet backbone
            compiles (1.2-1.5x faster float64 MD on CPU, docs/calculator.md); the MACE-like one fails inside e3nn
            and falls back. Off by default.
        retain_freed_memory: call `mlip.performance.retain_freed_memory()`, which makes glibc
            malloc keep freed memory for reuse (process-wide). Large force calls on CPU become
            much faster (docs/calculator.md); the process keeps its peak memory. Off by default.
    """

    implemented_properties: ClassVar[list[str]] = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(
        self,
        model_or_path,
        device: str = "cpu",
        dtype: str = "float64",
        skin: float = 0.5,
        default_charge: int | None = None,
        default_spin: int = 1,
        min_distance: float = 0.1,
        compile: bool = False,
        retain_freed_memory: bool = False,
        head: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if dtype not in DTYPES:
            raise ValueError(f"MLIPCalculator: dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if skin < 0:
            raise ValueError(f"MLIPCalculator: skin must be >= 0 Å, got {skin}")
        self.device = torch.device(device)
        self.dtype = DTYPES[dtype]
        model, self.statistics = load_potential(model_or_path, self.dtype)
        self.model = model.to(device=self.device).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.cutoff = float(self.model.cutoff)
        if not 0.0 <= min_distance < self.cutoff:
            raise ValueError(f"MLIPCalculator: min_distance must be in [0, cutoff = {self.cutoff} Å), got {min_distance}")
        self.min_distance = float(min_distance)
        self.skin = float(skin)
        self.elements = model_elements(self.model)
        self.charged_model = trained_on_charged_structures(self.model, self.statistics)
        self.default_charge = default_charge
        self.default_spin = int(default_spin)
        self.heads = list(getattr(self.model, "heads", None) or [])  # [] for a single-head model
        self.head = head
        if head is not None:
            self._head_index(head, "head")  # an unknown head fails here, not at the first call
        if retain_freed_memory and not performance.retain_freed_memory():
            warnings.warn("MLIPCalculator: retain_freed_memory has no effect here (needs Linux with glibc)", stacklevel=2)
        self._compiled = bool(compile)
        if self._compiled:  # self.model is the calculator's own copy (load_potential)
            self.model.backbone.forward = torch.compile(self.model.backbone.forward, dynamic=True)
        self._neighbours = SkinNeighbourList(self.cutoff, self.skin)  # the MD list (mlip.data.neighbours)

    @property
    def neighbour_list_builds(self) -> int:
        """How many times the skin neighbour list was built (for tests / tuning)."""
        return self._neighbours.builds

    @property
    def compiled(self) -> bool:
        """True while the backbone runs compiled (False if compile was off or fell back to eager)."""
        return self._compiled

    # ----------------------------------------------------------------------------------------
    # input checks
    # ----------------------------------------------------------------------------------------

    def check_atoms(self, atoms: Atoms) -> None:
        """Raise `MLIPInputError` for empty Atoms or elements outside the model's element list."""
        if len(atoms) == 0:
            raise MLIPInputError("MLIPCalculator: the Atoms object is empty (0 atoms); there is nothing to evaluate")
        unknown = sorted({int(z) for z in atoms.numbers} - set(self.elements))
        if unknown:
            names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in unknown)
            known = " ".join(chemical_symbols[z] for z in self.elements)
            raise MLIPInputError(f"MLIPCalculator: element(s) {names} not in the model's training elements [{known}]")

    def check_geometry(self, atoms: Atoms) -> None:
        """Raise `MLIPGeometryError` for NaN or infinite positions (naming the atoms) or cell."""
        bad = ~np.isfinite(atoms.positions).all(axis=1)
        if bad.any():
            raise MLIPGeometryError(f"MLIPCalculator: non-finite position (NaN or inf) of {_atom_list(atoms, np.flatnonzero(bad))}")
        if not np.isfinite(atoms.cell.array).all():
            raise MLIPGeometryError(f"MLIPCalculator: the cell contains NaN or inf: {atoms.cell.array.tolist()} Å")

    def check_min_distance(self, atoms: Atoms, edge_index: np.ndarray, shifts: np.ndarray, squared_lengths: np.ndarray) -> None:
        """Raise `MLIPGeometryError` naming the closest pair if it is closer than `min_distance` Å.

        ``edge_index`` (2, E), ``shifts`` (E, 3) and ``squared_lengths`` (E,) Å² are the
        neighbour-list edges within the cutoff (all pairs closer than ``min_distance`` are among them).
        """
        if self.min_distance <= 0.0:
            return
        closest = closest_edge(edge_index, shifts, np.sqrt(squared_lengths), within=self.min_distance)
        if closest is None:
            return
        i, j, distance, shift = closest.i, closest.j, closest.distance, list(closest.shift)
        if i == j:
            pair = f"atom {_atom_name(atoms, i)} and its own periodic image (cell shift {shift}) are"
        else:
            image = f" (periodic image, cell shift {shift})" if any(shift) else ""
            pair = f"atoms {_atom_name(atoms, i)} and {_atom_name(atoms, j)}{image} are"
        raise MLIPGeometryError(
            f"MLIPCalculator: {pair} {distance:.4f} Å apart, closer than min_distance = {self.min_distance} Å "
            "(coincident atoms; the model is not defined there)"
        )

    def _head_index(self, head, where: str) -> int:
        from mlip.models.potential import UnknownHeadError

        try:
            return self.model.head_index(head)
        except UnknownHeadError as error:
            raise MLIPInputError(f"MLIPCalculator: {where}: {error}") from None

    def head_of(self, atoms: Atoms) -> int | None:
        """The head index for ``atoms`` (``atoms.info["head"]``, else the calculator's `head`);
        None for a single-head model."""
        where = "atoms.info['head']" if "head" in atoms.info else "head"
        head = atoms.info.get("head", self.head)
        if not self.heads:
            return None if head is None else self._head_index(head, where)  # a named head: an error
        if head is None:
            raise MLIPInputError(
                f"MLIPCalculator: this model has several heads ({', '.join(self.heads)}); choose one with "
                "MLIPCalculator(..., head=<name>) or atoms.info['head']"
            )
        return self._head_index(head, where)

    def charge_and_spin(self, atoms: Atoms) -> tuple[int, int]:
        """Total charge (e) and multiplicity 2S+1 of `atoms`, from atoms.info or the defaults."""
        if "charge" in atoms.info:
            charge = _integer(atoms.info["charge"], "atoms.info['charge'] (total charge, e)")
        elif self.default_charge is not None:
            charge = _integer(self.default_charge, "default_charge (total charge, e)")
        elif self.charged_model:
            raise MLIPInputError(
                "MLIPCalculator: this model was trained on charged structures, but atoms.info has no 'charge'. "
                "Set atoms.info['charge'] (total charge in e) or create the calculator with default_charge=0."
            )
        else:
            charge = 0
        spin = _integer(atoms.info.get("spin", self.default_spin), "atoms.info['spin'] (multiplicity 2S+1)")
        if spin < 1:
            raise MLIPInputError(f"MLIPCalculator: spin multiplicity 2S+1 must be >= 1, got atoms.info['spin'] = {spin}")
        return charge, spin

    # ----------------------------------------------------------------------------------------
    # single structure (the ASE interface)
    # ----------------------------------------------------------------------------------------

    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        """ASE's changes (positions, cell, ...) plus a change of atoms.info charge or spin."""
        changes = super().check_state(atoms, tol)
        if self.atoms is not None and not changes:
            for key in ("charge", "spin", "head"):
                if atoms.info.get(key) != self.atoms.info.get(key):
                    changes.append(key)
        return changes

    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        self.check_atoms(atoms)
        self.check_geometry(atoms)  # before the skin test: a NaN displacement never triggers a rebuild
        want_stress = has_volume(atoms)
        if "stress" in properties and not want_stress:
            raise PropertyNotImplementedError(
                "MLIPCalculator: stress needs a periodic structure with a cell of nonzero volume"
            )
        charge, spin = self.charge_and_spin(atoms)
        self.head_of(atoms)
        edge_index, shifts, squared_lengths = self._neighbours.search(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
        self.check_min_distance(atoms, edge_index, shifts, squared_lengths)
        graph = self._graph(atoms, edge_index, shifts, charge, spin)
        output = self._evaluate(graph, want_stress)
        results = _results_of_graph(output, 0, slice(0, len(atoms)), want_stress)
        _check_finite_results(atoms, results)
        self.results = results

    def _graph(self, atoms: Atoms, edge_index: np.ndarray, shifts: np.ndarray, charge: int, spin: int):
        """One structure as a graph of model inputs (`mlip.data.graph.atoms_to_graph`, no labels),
        with its head index (``graph.head``) for a multi-head model."""
        graph = atoms_to_graph(atoms, self.cutoff, self.dtype, charge, spin, edges=(edge_index, shifts), labels=False)
        head = self.head_of(atoms)
        if head is not None and self.heads:
            graph.head = torch.tensor([head], dtype=torch.long)
        return graph

    def _evaluate(self, batch, compute_stress: bool) -> dict[str, np.ndarray]:
        batch = batch.to(self.device)
        try:
            output = self.model(batch, compute_forces=True, compute_stress=compute_stress)
        except Exception as error:
            if not self._compiled:
                raise
            warnings.warn(f"MLIPCalculator: torch.compile failed ({type(error).__name__}: {error}); running eagerly", stacklevel=2)
            del self.model.backbone.forward  # back to the class's eager forward
            self._compiled = False
            output = self.model(batch, compute_forces=True, compute_stress=compute_stress)
        return {key: value.detach().cpu().to(torch.float64).numpy() for key, value in output.items() if torch.is_tensor(value)}

    # ----------------------------------------------------------------------------------------
    # many structures
    # ----------------------------------------------------------------------------------------

    def predict_batch(self, structures: Sequence[Atoms], max_atoms_per_batch: int = 2000) -> list[dict]:
        """Energy, forces (and stress for periodic cells) of many structures, several per forward pass.

        Returns one dict per structure with ASE-style results: "energy", "free_energy" (eV),
        "forces" (n, 3) eV/Å, "energies" (n,) eV per atom, and "stress" (6,) Voigt eV/Å³ for
        structures with a periodic cell. Batches hold up to `max_atoms_per_batch` atoms. Fresh
        neighbour lists are built (no skin), so the calculator's MD state is untouched.
        """
        results: list[dict] = []
        pending: list[tuple] = []  # (index, atoms, Data) of the batch being assembled
        pending_atoms = 0
        for index, atoms in enumerate(structures):
            try:
                self.check_atoms(atoms)
                self.check_geometry(atoms)
                charge, spin = self.charge_and_spin(atoms)
                self.head_of(atoms)
                fresh = SkinNeighbourList(self.cutoff, skin=0.0)
                edge_index, shifts, squared_lengths = fresh.search(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
                self.check_min_distance(atoms, edge_index, shifts, squared_lengths)
            except ValueError as error:  # MLIPInputError, or the neighbour list's geometry errors
                kind = type(error) if isinstance(error, MLIPInputError) else MLIPInputError
                raise kind(_in_structure(error, atoms, index)) from None
            data = self._graph(atoms, edge_index, shifts, charge, spin)
            if pending and pending_atoms + len(atoms) > max_atoms_per_batch:
                results.extend(self._predict_pending(pending))
                pending, pending_atoms = [], 0
            pending.append((index, atoms, data))
            pending_atoms += len(atoms)
        if pending:
            results.extend(self._predict_pending(pending))
        return results

    def _predict_pending(self, pending: list[tuple]) -> list[dict]:
        from torch_geometric.data import Batch

        batch = Batch.from_data_list([data for _, _, data in pending])
        with_stress = [has_volume(atoms) for _, atoms, _ in pending]
        output = self._evaluate(batch, compute_stress=any(with_stress))
        results, start = [], 0
        for graph_index, (index, atoms, _) in enumerate(pending):
            atom_slice = slice(start, start + len(atoms))
            result = _results_of_graph(output, graph_index, atom_slice, with_stress[graph_index])
            try:
                _check_finite_results(atoms, result)
            except MLIPPredictionError as error:
                raise MLIPPredictionError(_in_structure(error, atoms, index)) from None
            results.append(result)
            start += len(atoms)
        return results


def _atom_name(atoms: Atoms, index: int) -> str:
    """'3 (H)': index and chemical symbol of one atom."""
    return f"{index} ({chemical_symbols[int(atoms.numbers[index])]})"


def _atom_list(atoms: Atoms, indices, limit: int = 5) -> str:
    """'atom 3 (H)' or 'atoms 0 (C), 4 (H) and 7 more'."""
    indices = [int(index) for index in indices]
    names = ", ".join(_atom_name(atoms, index) for index in indices[:limit])
    more = f" and {len(indices) - limit} more" if len(indices) > limit else ""
    return f"atom{'s' if len(indices) > 1 else ''} {names}{more}"


def _in_structure(error: Exception, atoms: Atoms, index: int) -> str:
    """The message of ``error`` located in `predict_batch`'s input: "MLIPCalculator: structure 3 (id 'abc'): ..."."""
    identifier = atoms.info.get("id")
    name = f"structure {index}" + (f" (id {identifier!r})" if identifier else "")
    return f"MLIPCalculator: {name}: {str(error).removeprefix('MLIPCalculator: ')}"


def _check_finite_results(atoms: Atoms, results: dict) -> None:
    """Raise `MLIPPredictionError` if the predicted energy, forces or stress hold NaN or inf."""
    bad_forces = ~np.isfinite(results["forces"]).all(axis=1)
    if bad_forces.any():
        raise MLIPPredictionError(f"MLIPCalculator: the model predicted non-finite forces on {_atom_list(atoms, np.flatnonzero(bad_forces))}")
    for name in ("energy", "stress"):
        if name in results and not np.isfinite(results[name]).all():
            raise MLIPPredictionError(f"MLIPCalculator: the model predicted a non-finite {name}: {results[name]}")


def _integer(value, what: str) -> int:
    """`value` as an int, or `MLIPInputError` if it is not a whole number (e.g. a fractional charge)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MLIPInputError(f"MLIPCalculator: {what} must be an integer, got {value!r}") from None
    if not is_integer(number):
        raise MLIPInputError(f"MLIPCalculator: {what} must be an integer, got {value!r}")
    return int(number)


def has_volume(atoms: Atoms) -> bool:
    """True for a structure with some periodicity and a cell of nonzero volume (stress is defined)."""
    return bool(atoms.pbc.any()) and zero_volume_reason(atoms.cell.array) is None


def _results_of_graph(output: dict[str, np.ndarray], graph_index: int, atom_slice: slice, with_stress: bool) -> dict:
    energy = float(output["energy"][graph_index])
    results = {"energy": energy, "free_energy": energy, "forces": output["forces"][atom_slice].copy()}
    if "node_energy" in output:
        results["energies"] = output["node_energy"][atom_slice].copy()
    if with_stress:
        results["stress"] = full_3x3_to_voigt_6_stress(output["stress"][graph_index])
    return results
