"""`measure_each`: the per-structure loop every structure-based task shares.

A task (`stability`, `relax`, `eos`, `vibrations`, `speed`) lists its items, each a table row
with the cells that name it (``{"structure": "H2O", "atoms": 3}``) and the starting `Atoms`, and
says how one item is measured. `measure_each` then does, for every item and on its own:

1. append the row to ``result.rows`` (so a skipped or failed item is still a row);
2. skip it with the reason in ``row["note"]`` when the model lacks an element of it
   (``unsupported elements: C (Z=6)``) or, for a task that needs the stress (``needs_stress``),
   when it is periodic and the calculator implements no stress
   (``no stress: EMT does not implement stress``);
3. otherwise call ``measure(atoms, row, *extra)`` on a copy of the start with a fresh calculator
   of the model; it fills the row (and ``result.data``); an exception (of ``measure``, or of
   making the calculator) becomes the reason in ``row["note"]`` and the next item goes on;
4. advance the progress bar by one (so a task's ``items()`` is the number of its items).

Each item's reason stays in its row; when no item was measured at all, the task's note
(``result.note``, the cell in the summary table) is the first row's reason. The loop over
models, and the failure of a whole (task, model), is `mlip.zoo.runner`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ase import Atoms

from mlip.zoo.results import TaskContext, TaskResult, attach, implements, reason, unsupported


def stress_missing(calculator, atoms: Atoms) -> str:
    """A reason if ``atoms`` is periodic and ``calculator`` implements no stress, else ''."""
    if atoms.pbc.any() and not implements(calculator, "stress"):
        return f"no stress: {type(calculator).__name__} does not implement stress"
    return ""


def measure_each(result: TaskResult, model, context: TaskContext, items: Sequence[tuple],
                 measure: Callable[..., None], needs_stress: bool = False, empty: str = "nothing to run") -> list[dict]:
    """Measure every item of ``items`` (``(row, atoms, *extra)`` tuples) on its own; returns the
    rows whose ``measure`` returned. See the module docstring for the skips, reasons and progress.
    With no item measured, ``result.note`` becomes the first row's reason (``empty`` without items)."""
    measured = []
    for row, start, *extra in items:
        result.rows.append(row)
        skip = unsupported(model, start)
        if not skip:
            try:
                atoms = attach(start, model)
                skip = stress_missing(atoms.calc, atoms) if needs_stress else ""
                if not skip:
                    measure(atoms, row, *extra)
                    measured.append(row)
            except Exception as error:  # this item failed; the model's other items go on
                skip = reason(error)
        if skip:
            row["note"] = skip
        context.advance()
    if not measured:
        result.note = next((row["note"] for row in result.rows if row.get("note")), empty)
    return measured
