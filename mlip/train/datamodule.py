"""`PotentialDataModule`: HDF5 files -> reproducible train/val/test split -> batched graphs.

The split is drawn once from ``split_seed`` (independent of the training seed), so every run
and every DDP rank sees the same partition. Statistics (reference energies, scale, average
number of neighbours) are computed on the training split only and cached next to the data.

Validation and test data can also be files of their own (``val_paths``, ``test_paths``): then
no random validation (or test) split is drawn from ``paths``. Several test sets are evaluated
one by one (one test dataloader each, in the order given) and reported under their own names
(`test_names`): ``test/<name>/energy_mae``, ``test/<name>/<subset>/forces_rmse``.

Multi-head training (``heads``): several datasets, each with its own head name (e.g. its level
of theory), files and sampling weight, in one run. Every structure's graph carries its head
index (``graph.head``); the split is drawn over all of them; statistics are computed per head
as well (`head_statistics`); the random test split is one test set per head, reported as
``test/<head>/...``; with weights the training loader draws structures of head h with
probability proportional to its weight (with replacement, ``len(train_set)`` draws per epoch).

Loaders are plain ``torch.utils.data.DataLoader`` objects with PyG's ``Collater`` as
``collate_fn``: Lightning recognises them and, under DDP, swaps in a ``DistributedSampler`` so
that every rank draws a disjoint shard of each epoch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader
from torch_geometric.loader.dataloader import Collater

from mlip.constants import torch_dtype
from mlip.data.graph import DEFAULT_MAX_NEIGHBOURS, DEFAULT_MIN_DISTANCE

# data.cache_graphs=auto keeps a set's graphs in memory up to this many atoms (a few hundred MB
# for molecules; dense crystals with many neighbours per atom take more per atom)
CACHE_GRAPHS_MAX_ATOMS = 500_000

class PotentialDataModule(pl.LightningDataModule):
    """Datasets and loaders for training a potential.

    Args:
        paths: HDF5 files (schema v1) or glob patterns; all are concatenated before splitting.
        cutoff: neighbour cutoff, Å (the model's).
        batch_size: structures per training batch (per DDP rank).
        eval_batch_size: structures per validation/test batch (default: ``batch_size``).
        val_fraction, test_fraction: fractions of all structures of ``paths`` held out.
        val_paths: HDF5 files or globs that form the validation set (concatenated) instead of a
            random split of ``paths``; ``val_fraction`` is then ignored (None: random split).
        test_paths: test sets of their own instead of a random test split of ``paths``
            (``test_fraction`` is then ignored): a list of files/globs, one test set per file
            named by its file stem, or ``{name: file-or-glob-or-list}``, one test set per name
            (its files concatenated). None: random split (``test_fraction``).
        split_seed: seed of the split permutation.
        num_workers: loader worker processes (0 = load in the main process).
        subsets: keep only structures of ``paths`` whose subset label is in this list, or equal
            to this one name (None = all). An empty list and a name that no file holds are
            errors. The files of ``val_paths``/``test_paths`` are used whole.
        dtype: "float32" or "float64" for positions and labels.
        statistics_cache: cache the statistics of the training split next to the data.
        min_distance: refuse structures with atoms closer than this, Å (None or 0: no check);
            see `mlip.data.dataset.HDF5Dataset`.
        max_neighbours: refuse structures with more neighbour edges per atom than this.
        heads: multi-head training: ``{head name: {"paths": files or globs, "weight": w}}``
            (``weight`` optional: set for every head or for none; none = every structure drawn
            equally often). ``paths`` must then be unset (None or empty): it is the heads' files,
            in the order of the heads. ``val_paths`` and ``test_paths`` cannot be combined with
            heads (their files would have no head): evaluate other files with ``mlip-eval --head``.
        exclude_isolated_atoms: leave single atoms without neighbours out of the training split
            (their energies are the references of ``model.atomic_energies=isolated``, as MACE does
            with ``config_type=IsolatedAtom``); the statistics still record their energies.
        cache_graphs: keep the graphs in memory after their first epoch (no file read and no
            neighbour search later; `mlip.data.dataset.HDF5Dataset`): ``True``, ``False``, or
            ``"auto"`` (the default), which caches each opened set (the training files, the
            validation files, each test set) of at most `CACHE_GRAPHS_MAX_ATOMS` atoms.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike] | None,
        cutoff: float,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        split_seed: int = 0,
        num_workers: int = 0,
        subsets: Sequence[str] | str | None = None,
        dtype: str = "float32",
        statistics_cache: bool = True,
        min_distance: float | None = DEFAULT_MIN_DISTANCE,
        max_neighbours: float | None = DEFAULT_MAX_NEIGHBOURS,
        val_paths: Sequence[str | os.PathLike] | str | None = None,
        test_paths: Sequence[str | os.PathLike] | Mapping[str, Any] | str | None = None,
        exclude_isolated_atoms: bool = False,
        heads: Mapping[str, Mapping[str, Any]] | None = None,
        cache_graphs: bool | str = "auto",
    ):
        super().__init__()
        self.heads = _head_sets(heads, paths, val_paths, test_paths)  # {name: {"paths": [...], "weight": w}} or None
        if self.heads is None:
            self.paths = _resolved(paths, "data.paths")  # fail at configuration time, not when training starts
            self.file_heads = None
        else:
            self.paths = [path for head in self.heads.values() for path in head["paths"]]
            self.file_heads = [index for index, head in enumerate(self.heads.values()) for _ in head["paths"]]
        self.val_paths = None if val_paths is None else _resolved(val_paths, "data.val_paths")
        self.test_paths = _test_sets(test_paths)  # {name: [files]} or None
        self.cutoff = float(cutoff)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.split_seed = int(split_seed)
        self.num_workers = int(num_workers)
        self.subsets = _subset_list(subsets)
        self.min_distance = None if min_distance is None else float(min_distance)
        self.max_neighbours = None if max_neighbours is None else float(max_neighbours)
        self.dtype = torch_dtype(dtype)
        self.statistics_cache = statistics_cache
        self.exclude_isolated_atoms = bool(exclude_isolated_atoms)
        if cache_graphs not in (True, False, "auto"):
            raise ValueError(f"data.cache_graphs: expected true, false or auto, got {cache_graphs!r}")
        self.cache_graphs = cache_graphs
        self.isolated_atoms = None  # the single atoms left out of the training split (a dataset view)
        self.dataset = None
        self.train_set = self.val_set = self.test_set = None
        self.test_sets: dict[str | None, Any] = {}  # name (None: the random test split) -> dataset
        self._statistics = None
        self._head_statistics = None

    @property
    def head_names(self) -> list[str] | None:
        """The heads of a multi-head run, in order (a graph's ``head`` indexes this list); None: one head."""
        return None if self.heads is None else list(self.heads)

    @property
    def test_names(self) -> list[str | None]:
        """Name of each test dataloader, in order: the keys of ``test_paths``, or ``[None]`` for
        the random test split (reported as plain ``test/...``), ``[]`` without test data."""
        if self.test_paths is not None:
            return list(self.test_paths)
        self.setup()
        return list(self.test_sets)

    @property
    def named_test_sets(self) -> bool:
        """True when the test sets have names (``test_paths``, or one per head), i.e. the test
        loaders are a list and metrics are ``test/<name>/...``."""
        return self.test_paths is not None or self.heads is not None

    # ------------------------------------------------------------------ datasets
    def setup(self, stage: str | None = None) -> None:
        """Open the files and draw the split (idempotent: Lightning calls it again on fit)."""
        if self.dataset is not None:
            return
        from mlip.data.dataset import SelectionError

        try:
            dataset = self._open(self.paths, subsets=self.subsets, file_heads=self.file_heads)
        except SelectionError as error:
            raise SelectionError(f"data.{error.argument}", error.reason) from None
        if len(dataset) == 0:
            raise ValueError(f"data: no structures in {self.paths} (subsets={self.subsets})")
        val_fraction = 0.0 if self.val_paths is not None else self.val_fraction
        test_fraction = 0.0 if self.test_paths is not None else self.test_fraction
        train_set, val_set, test_set = dataset.split(val_fraction, test_fraction=test_fraction, seed=self.split_seed)
        if self.val_paths is not None:
            val_set = self._open_whole(self.val_paths, "data.val_paths")
        test_sets = {None: test_set} if self.test_paths is None and len(test_set) > 0 else {}
        if self.heads is not None:  # one test set per head
            test_sets = {name: test_set.subset(np.flatnonzero(test_set.heads == index))
                         for index, name in enumerate(self.heads) if (test_set.heads == index).any()}
        for name, files in (self.test_paths or {}).items():
            test_sets[name] = self._open_whole(files, f"data.test_paths[{name}]")
        if len(train_set) == 0 or len(val_set) == 0:
            where = "data.val_paths" if self.val_paths is not None else f"val_fraction={self.val_fraction}"
            raise ValueError(
                f"data: split of {len(dataset)} structures with {where} leaves "
                f"{len(train_set)} training and {len(val_set)} validation structures; both must be > 0"
            )
        for index, name in enumerate(self.heads or {}):
            if not (train_set.heads == index).any():
                raise ValueError(
                    f"data.heads.{name}: no structure of {self.heads[name]['paths']} is in the training split "
                    f"(subsets={self.subsets}); every head needs training data"
                )
        self._statistics_set = train_set  # isolated atoms included: their energies are statistics
        if self.exclude_isolated_atoms:
            train_set, self.isolated_atoms = self._split_off_isolated_atoms(train_set)
        self.train_set, self.val_set, self.test_sets = train_set, val_set, test_sets
        self.test_set = test_set if self.test_paths is None else None  # the random test split, as before
        self.dataset = dataset

    def _open(self, paths: list[str], subsets=None, file_heads=None):
        from mlip.data.dataset import HDF5Dataset

        def open_files(cache_graphs: bool):
            return HDF5Dataset(
                paths,
                cutoff=self.cutoff,
                dtype=self.dtype,
                subsets=subsets,
                min_distance=self.min_distance,
                max_neighbours=self.max_neighbours,
                file_heads=file_heads,
                cache_graphs=cache_graphs,
            )

        dataset = open_files(self.cache_graphs is True)
        if self.cache_graphs == "auto" and int(dataset.n_atoms.sum()) <= CACHE_GRAPHS_MAX_ATOMS:  # metadata only
            dataset.cache_graphs()
        return dataset

    def _open_whole(self, paths: list[str], key: str):
        """All structures of ``paths`` (a validation or test set of its own); empty is an error."""
        dataset = self._open(paths)
        if len(dataset) == 0:
            raise ValueError(f"{key}: no structures in {paths}")
        return dataset

    def statistics(self):
        """`DatasetStatistics` of the training split (computed once, cached on disk)."""
        if self._statistics is None:
            from mlip.data.statistics import compute_statistics

            self.setup()
            self._statistics = compute_statistics(
                self._statistics_set,
                self.cutoff,
                cache=self.statistics_cache,
                exclude_isolated_atoms=self.exclude_isolated_atoms,
            )
        return self._statistics

    def head_statistics(self) -> dict[str, Any] | None:
        """{head: `DatasetStatistics` of that head's training structures} (cached like `statistics`); None: one head."""
        if self.heads is None:
            return None
        if self._head_statistics is None:
            from mlip.data.statistics import compute_statistics

            self.setup()
            heads = self._statistics_set.heads
            self._head_statistics = {
                name: compute_statistics(
                    self._statistics_set.subset(np.flatnonzero(heads == index)),
                    self.cutoff,
                    cache=self.statistics_cache,
                    exclude_isolated_atoms=self.exclude_isolated_atoms,
                )
                for index, name in enumerate(self.heads)
            }
        return self._head_statistics

    def _split_off_isolated_atoms(self, dataset):
        """(dataset without its isolated atoms, the isolated atoms) as views; only single-atom
        structures are read to decide."""
        from mlip.data.statistics import is_isolated_atom

        single = np.flatnonzero(dataset.n_atoms == 1)
        isolated = [int(i) for i in single if is_isolated_atom(dataset.get_structure(int(i)), self.cutoff)]
        keep = np.setdiff1d(np.arange(len(dataset)), np.asarray(isolated, dtype=np.int64))
        return dataset.subset(keep), dataset.subset(isolated)

    def split_sizes(self) -> dict[str, int]:
        self.setup()
        sizes = {
            "train": len(self.train_set),
            "val": len(self.val_set),
            "test": sum(len(dataset) for dataset in self.test_sets.values()),
        }
        sizes.update({f"test/{name}": len(dataset) for name, dataset in self.test_sets.items() if name is not None})
        return sizes

    # ------------------------------------------------------------------ loaders
    def _loader(self, dataset, batch_size: int, shuffle: bool, sampler=None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle if sampler is None else False,
            sampler=sampler,
            collate_fn=Collater(dataset),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_set, self.batch_size, shuffle=True, sampler=self._head_sampler())

    def _head_sampler(self):
        """With head weights: draw structure i of head h with probability ∝ w_h / (structures of h)."""
        if self.heads is None or all(head["weight"] is None for head in self.heads.values()):
            return None
        heads = self.train_set.heads
        weights = np.array([head["weight"] for head in self.heads.values()], dtype=np.float64)
        counts = np.bincount(heads, minlength=len(weights)).astype(np.float64)
        per_structure = weights[heads] / counts[heads]
        return torch.utils.data.WeightedRandomSampler(
            torch.as_tensor(per_structure), num_samples=len(self.train_set), replacement=True
        )

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """One loader for the random test split; with ``test_paths``, a list of one loader per
        test set in the order of `test_names` (``dataloader_idx`` k is ``test_names[k]``)."""
        self.setup()
        if not self.test_sets:
            raise ValueError("data.test_fraction is 0 and data.test_paths is null: there is no test set to evaluate")
        loaders = [self._loader(dataset, self.eval_batch_size, shuffle=False) for dataset in self.test_sets.values()]
        return loaders if self.named_test_sets else loaders[0]


def _resolved(paths, key: str) -> list[str]:
    """Files of a path, a glob or a list of them (``~`` expanded); errors name the config key."""
    from mlip.data.dataset import resolve_paths

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    try:
        return [str(path) for path in resolve_paths([Path(p).expanduser() for p in paths])]
    except (FileNotFoundError, ValueError) as error:
        raise type(error)(f"{key}: {error}") from error


def _head_sets(heads, paths, val_paths, test_paths) -> dict[str, dict[str, Any]] | None:
    """``data.heads`` as ``{name: {"paths": [files], "weight": float | None}}`` (None: one head)."""
    if heads is None:
        return None
    from mlip.models.potential import check_head_names

    if not isinstance(heads, Mapping) or not heads:
        raise ValueError(f"data.heads must be a mapping {{head name: {{paths: ..., weight: ...}}}}, got {heads!r}")
    check_head_names(list(heads), "data.heads")
    if paths:
        raise ValueError(
            "data.paths and data.heads are both set: with heads, each head names its own files "
            "(data.heads.<name>.paths); set data.paths=null"
        )
    for key, value in (("val_paths", val_paths), ("test_paths", test_paths)):
        if value is not None:
            raise ValueError(
                f"data.{key} cannot be combined with data.heads (its files would have no head); use the random "
                "split (val_fraction, test_fraction) and evaluate other files with mlip-eval --head <name>"
            )
    sets, seen = {}, {}
    for name, entry in heads.items():
        if not isinstance(entry, Mapping) or "paths" not in entry:
            raise ValueError(f"data.heads.{name} must be a mapping with `paths` (and optionally `weight`), got {entry!r}")
        unknown = sorted(set(entry) - {"paths", "weight"})
        if unknown:
            raise ValueError(f"data.heads.{name}: unknown key(s) {unknown}; a head takes paths and weight")
        files = _resolved(entry["paths"], f"data.heads.{name}.paths")
        for file in files:
            if file in seen:
                raise ValueError(f"data.heads: {file} is in the files of both {seen[file]!r} and {name!r}")
            seen[file] = name
        weight = entry.get("weight")
        if weight is not None and not (float(weight) > 0):
            raise ValueError(f"data.heads.{name}.weight must be > 0, got {weight}")
        sets[str(name)] = {"paths": files, "weight": None if weight is None else float(weight)}
    weighted = [weight is not None for weight in (entry["weight"] for entry in sets.values())]
    if any(weighted) and not all(weighted):
        raise ValueError("data.heads: give a weight to every head or to none (none: every structure drawn equally often)")
    return sets


def _test_sets(test_paths) -> dict[str, list[str]] | None:
    """``data.test_paths`` as ``{name: [files]}``.

    A list (or one path/glob): one test set per file, named by its stem (a glob can name several);
    a mapping: one test set per key, of its path, glob or list. Names must be unique and must not
    contain "/" (they become part of the metric names ``test/<name>/...``).
    """
    if test_paths is None:
        return None
    if isinstance(test_paths, Mapping):
        sets = {str(name): _resolved(files, f"data.test_paths[{name}]") for name, files in test_paths.items()}
    else:
        files = _resolved(test_paths, "data.test_paths")
        stems = [Path(file).stem for file in files]
        clashes = sorted({stem for stem in stems if stems.count(stem) > 1})
        if clashes:
            raise ValueError(
                f"data.test_paths: several files are named {', '.join(clashes)}; name the test sets with a "
                "mapping instead, e.g. data.test_paths={a: dir1/test.h5, b: dir2/test.h5}"
            )
        sets = {stem: [file] for stem, file in zip(stems, files)}
    if not sets:
        raise ValueError("data.test_paths: no test sets; use null for a random test split (data.test_fraction)")
    for name in sets:
        if not name or "/" in name:
            raise ValueError(f"data.test_paths: test set name {name!r} must be non-empty and without '/'")
    return sets


def _subset_list(subsets: Sequence[str] | str | None) -> list[str] | None:
    """``data.subsets`` as a list: one name (``data.subsets=neutral``) is a list of one name.

    An empty list is refused rather than read as "all subsets" (that is ``null``).
    """
    if subsets is None:
        return None
    names = [subsets] if isinstance(subsets, str) else [str(name) for name in subsets]
    if not names:
        raise ValueError("data.subsets: empty subset list; use null for all subsets")
    return names
