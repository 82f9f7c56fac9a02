"""`run_zoo`: every task for every model, each (task, model) on its own, with progress bars.

For each task the reference models run first; their per-item results (`TaskResult.data`) are
merged and handed to every other model's run of that task as its reference. A (task, model)
that raises is recorded as a `TaskResult` whose note is the reason, and the zoo goes on; so is
a plot that fails. The report is written at the end (`mlip.zoo.report`).
"""

from __future__ import annotations

import importlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlip.zoo.results import TaskContext, TaskResult, ZooOptions, reason
from mlip.zoo.structures import crystal_starts, elements_of, molecule_starts

TASKS = ("errors", "dimers", "stability", "relax", "eos", "vibrations", "speed")


def task_module(name: str):
    """The module `mlip.zoo.<name>` of a task in `TASKS` (nothing else can be named)."""
    if name not in TASKS:
        raise ValueError(f"mlip.zoo: unknown task {name!r}; choose from {', '.join(TASKS)}")
    return importlib.import_module(f"mlip.zoo.{name}")


def parse_tasks(text: str) -> list[str]:
    """'errors,dimers' -> ['errors', 'dimers'] ('all': every task), each checked against `TASKS`."""
    names = list(TASKS) if text.strip() == "all" else [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        task_module(name)
    if not names:
        raise ValueError("mlip.zoo: no task given")
    return names


@dataclass
class ZooRun:
    """Everything a report needs: results[task][model name], the models, the starts and timings."""

    tasks: list[str]
    models: list
    context: TaskContext
    results: dict[str, dict[str, TaskResult]] = field(default_factory=dict)
    references: dict[str, dict] = field(default_factory=dict)  # task -> merged reference data
    seconds: float = 0.0


def run_zoo(models: list, test_structures: list, tasks, out, options: ZooOptions | None = None,
            progress: bool = True, command: str = "", report: bool = True) -> ZooRun:
    """Run ``tasks`` (names from `TASKS`) for ``models`` (`ZooModel`s) on the structures of a test set.

    Writes the plots and, with ``report``, report.md, report.html and summary.csv into ``out``.
    """
    options = options or ZooOptions()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = parse_tasks(tasks if isinstance(tasks, str) else ",".join(tasks))
    names = [model.name for model in models]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"mlip.zoo: model names must be unique, {', '.join(duplicates)} given twice")
    context = TaskContext(
        molecules=molecule_starts(test_structures, options.max_molecules),
        crystals=crystal_starts(test_structures, options.max_crystals),
        test_structures=list(test_structures), options=options, out=out, elements=elements_of(test_structures),
    )
    zoo = ZooRun(tasks=tasks, models=list(models), context=context)
    ordered = [model for model in models if model.is_reference] + [model for model in models if not model.is_reference]
    start = time.perf_counter()
    with _progress(progress) as bars:
        for task in tasks:
            module = task_module(task)
            zoo.results[task] = {}
            reference: dict | None = None
            for model in ordered:
                if not model.is_reference and reference is None:
                    reference = _merged_reference(zoo.results[task], models)
                result = _run_one(module, task, model, context, None if model.is_reference else reference, bars)
                zoo.results[task][model.name] = result
            zoo.references[task] = reference or {}
    zoo.seconds = time.perf_counter() - start
    if report:
        from mlip.zoo.report import write_report

        write_report(zoo, out, command=command)
    return zoo


def _merged_reference(results: dict[str, TaskResult], models: list) -> dict | None:
    """The per-item data of all reference models' results of one task, merged (None without references)."""
    merged, found = {}, False
    for model in models:
        if model.is_reference and model.name in results:
            found = True
            merged.update(results[model.name].data)
    return merged if found else None


def _run_one(module, task: str, model, context: TaskContext, reference, bars) -> TaskResult:
    try:
        total = module.items(model, context)
    except Exception:  # the count is only for the bar
        total = None
    bar = bars.add_task(f"{task}: {model.name}", total=total)
    context.advance = lambda: bars.advance(bar)
    start = time.perf_counter()
    try:
        result = module.run(model, context, reference)
    except Exception as error:  # one model failing one task never stops the zoo
        result = TaskResult(task=task, model=model.name, note=reason(error))
    result.seconds = time.perf_counter() - start
    bars.update(bar, completed=total if total is not None else 1, total=total if total is not None else 1)
    context.advance = lambda: None
    if result.note and not result.rows:
        print(f"mlip-eval: {task}: {model.name}: {result.note}", file=sys.stderr)
    bars.note_done(f"{task}: {model.name} done in {result.seconds:.1f} s")
    try:
        module.plot(result, reference, context.out / module.plot_name(model.name))
    except Exception as error:  # the table stands without its plot
        result.plot_note = f"plot failed: {reason(error)}"
        print(f"mlip-eval: {task}: {model.name}: {result.plot_note}", file=sys.stderr)
    return result


class _NoProgress:
    def note_done(self, text):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, description, total=None):
        return 0

    def advance(self, task, advance=1):
        pass

    def update(self, task, **fields):
        pass


def _progress(enabled: bool):
    if not enabled:
        return _NoProgress()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    return _rich_progress_class()(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True),
    )


def _rich_progress_class():
    from rich.progress import Progress

    class RichProgress(Progress):
        """rich's Progress plus a line per finished (task, model), so that a log file (no live bars) shows progress too."""

        def note_done(self, text):
            self.console.print(text)

    return RichProgress
