"""Model-zoo evaluation on physical tasks: every model (mlip model files, run folders, or any ASE
calculator named ``module:factory``) through the same tasks, one report.

    from mlip.zoo.models import ZooModel
    from mlip.zoo.runner import run_zoo
    models = [ZooModel.from_path("runs/sample/best_model.pt"),
              ZooModel.from_factory("tblite.ase:TBLite", {"method": "GFN2-xTB"}, name="GFN2-xTB", reference_for=("molecule",))]
    run_zoo(models, test_structures, tasks=["dimers", "vibrations"], out="eval")

Modules, one job each:

* `mlip.zoo.models`      `ZooModel`: a named calculator factory, its elements, what it is a reference for;
* `mlip.zoo.structures`  the starting structures of the tasks, chosen from a test set;
* `mlip.zoo.results`     `TaskResult` (table rows, headline numbers, plots, a failure reason), shared helpers;
* `mlip.zoo.loop`        `measure_each`: the per-structure loop of the tasks (skips with reasons, per-item
                         failures, progress);
* `mlip.zoo.errors`, `dimers`, `stability`, `relax`, `eos`, `vibrations`, `speed`: the tasks;
* `mlip.zoo.report`      report.md and report.html;
* `mlip.zoo.runner`      `run_zoo`: tasks x models with progress bars, failures isolated.

The unit sits above `mlip.evaluation` and `mlip.md` (it uses both) and below `mlip.cli`.
Nothing here is imported by `import mlip.zoo`; import the submodules.
"""
