"""`PotentialDataModule`: HDF5 files -> reproducible train/val/test split -> batched graphs.

The split is drawn once from ``split_seed`` (independent of the training seed), so every run
and every DDP rank sees the same partition. Statistics (reference energies, scale, average
number of neighbours) are computed on the training split only and cached next to the data.

Loaders are plain ``torch.utils.data.DataLoader`` objects with PyG's ``Collater`` as
``collate_fn``: Lightning recognises them and, under DDP, swaps in a ``DistributedSampler`` so
that every rank draws a disjoint shard of each epoch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader
from torch_geometric.loader.dataloader import Collater

from mlip.constants import torch_dtype
from mlip.data.graph import DEFAULT_MAX_NEIGHBOURS, DEFAULT_MIN_DISTANCE

class PotentialDataModule(pl.LightningDataModule):
    """Datasets and loaders for training a potential.

    Args:
        paths: HDF5 files (schema v1) or glob patterns; all are concatenated before splitting.
        cutoff: neighbour cutoff, Å (the model's).
        batch_size: structures per training batch (per DDP rank).
        eval_batch_size: structures per validation/test batch (default: ``batch_size``).
        val_fraction, test_fraction: fractions of all structures held out.
        split_seed: seed of the split permutation.
        num_workers: loader worker processes (0 = load in the main process).
        subsets: keep only structures whose subset label is in this list, or equal to this one
            name (None = all). An empty list and a name that no file holds are errors.
        dtype: "float32" or "float64" for positions and labels.
        statistics_cache: cache the statistics of the training split next to the data.
        min_distance: refuse structures with atoms closer than this, Å (None or 0: no check);
            see `mlip.data.dataset.HDF5Dataset`.
        max_neighbours: refuse structures with more neighbour edges per atom than this.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
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
    ):
        super().__init__()
        from mlip.data.dataset import resolve_paths

        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        try:  # fail at configuration time, not when training starts
            self.paths = [str(path) for path in resolve_paths([Path(p).expanduser() for p in paths])]
        except (FileNotFoundError, ValueError) as error:
            raise type(error)(f"data.paths: {error}") from error
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
        self.dataset = None
        self.train_set = self.val_set = self.test_set = None
        self._statistics = None

    # ------------------------------------------------------------------ datasets
    def setup(self, stage: str | None = None) -> None:
        """Open the files and draw the split (idempotent: Lightning calls it again on fit)."""
        if self.dataset is not None:
            return
        from mlip.data.dataset import HDF5Dataset, SelectionError

        try:
            self.dataset = HDF5Dataset(
                self.paths,
                cutoff=self.cutoff,
                dtype=self.dtype,
                subsets=self.subsets,
                min_distance=self.min_distance,
                max_neighbours=self.max_neighbours,
            )
        except SelectionError as error:
            raise SelectionError(f"data.{error.argument}", error.reason) from None
        if len(self.dataset) == 0:
            raise ValueError(f"data: no structures in {self.paths} (subsets={self.subsets})")
        parts = self.dataset.split(self.val_fraction, test_fraction=self.test_fraction, seed=self.split_seed)
        self.train_set, self.val_set = parts[0], parts[1]
        self.test_set = parts[2] if len(parts) > 2 else None
        if len(self.train_set) == 0 or len(self.val_set) == 0:
            raise ValueError(
                f"data: split of {len(self.dataset)} structures with val_fraction={self.val_fraction} leaves "
                f"{len(self.train_set)} training and {len(self.val_set)} validation structures; both must be > 0"
            )

    def statistics(self):
        """`DatasetStatistics` of the training split (computed once, cached on disk)."""
        if self._statistics is None:
            from mlip.data.statistics import compute_statistics

            self.setup()
            self._statistics = compute_statistics(self.train_set, self.cutoff, cache=self.statistics_cache)
        return self._statistics

    def split_sizes(self) -> dict[str, int]:
        self.setup()
        return {
            "train": len(self.train_set),
            "val": len(self.val_set),
            "test": len(self.test_set) if self.test_set is not None else 0,
        }

    # ------------------------------------------------------------------ loaders
    def _loader(self, dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=Collater(dataset),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        if self.test_set is None or len(self.test_set) == 0:
            raise ValueError("data.test_fraction is 0: there is no test split to evaluate")
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)


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
