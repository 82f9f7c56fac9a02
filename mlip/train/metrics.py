"""Error metrics accumulated over an epoch, per split and per subset.

Sums of absolute and squared errors and counts are accumulated as float64 tensors, reduced
across DDP ranks, and turned into MAE/RMSE at epoch end.
Reported units: energy meV/atom, forces and direct forces meV/Å, stress meV/Å³.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from mlip.train.losses import labelled_pairs

MILLI = 1000.0
ALL_SUBSETS = ""  # key of the totals; structures without a subset label count only there


class ErrorAccumulator:
    """Running |error| and error² sums per (group, quantity), reduced to MAE and RMSE.

    Groups: all structures, each subset label (``<split>/<subset>/...``) and, for a multi-head
    model (``head_names``), each head (``<split>/heads/<head>/...``, from ``batch.head``).
    """

    def __init__(self, head_names: list[str] | None = None) -> None:
        # key (group, quantity) -> tensor [sum |e|, sum e², count] in float64
        self.sums: dict[tuple[str, str], torch.Tensor] = defaultdict(lambda: torch.zeros(3, dtype=torch.float64))
        self.head_names = list(head_names) if head_names else None

    def reset(self) -> None:
        self.sums.clear()

    def _groups(self, batch) -> tuple[list[str], torch.Tensor]:
        """(group names, (G, len(names)) bool: which graph belongs to which group)."""
        labels = list(getattr(batch, "subset", None) or [""] * batch.num_graphs)
        names = sorted({label for label in labels if label})
        member = torch.tensor([[label == name for name in names] for label in labels], dtype=torch.bool)
        member = member.reshape(batch.num_graphs, len(names))
        heads = getattr(batch, "head", None)
        if self.head_names is not None and heads is not None:
            heads = heads.reshape(-1).cpu()
            names = names + [f"heads/{name}" for name in self.head_names]
            member = torch.cat([member, heads[:, None] == torch.arange(len(self.head_names))[None]], dim=1)
        return names, member

    @torch.no_grad()
    def update(self, predictions: dict, batch) -> None:
        """Add one batch. Structures are grouped by ``batch.subset`` (a list of strings) and ``batch.head``."""
        names, member = self._groups(batch)
        for quantity, (prediction, target) in labelled_pairs(_detached(predictions), batch).items():
            errors = (prediction - target).double().reshape(-1).cpu()
            entry_member = member[_owning_graphs(quantity, batch, batch.batch).cpu()]  # (len(errors), groups)
            self._add(ALL_SUBSETS, quantity, errors)
            for column, name in enumerate(names):
                self._add(name, quantity, errors[entry_member[:, column]])

    def _add(self, subset: str, quantity: str, errors: torch.Tensor) -> None:
        self.sums[(subset, quantity)] += torch.stack(
            [errors.abs().sum(), errors.square().sum(), torch.tensor(float(errors.numel()), dtype=torch.float64)]
        )

    def compute(self, split: str) -> dict[str, float]:
        """``{"<split>/<quantity>_mae": ..., "<split>/<subset>/<quantity>_rmse": ...}`` in meV units.

        Under DDP the sums of all ranks are added first, so every rank reports the same numbers.
        """
        keys, sums = self._synchronised_sums()
        metrics = {}
        for (subset, quantity), (abs_sum, sq_sum, count) in zip(keys, sums.tolist()):
            if count == 0:
                continue
            prefix = f"{split}/" if subset == ALL_SUBSETS else f"{split}/{subset}/"
            metrics[f"{prefix}{quantity}_mae"] = MILLI * abs_sum / count
            metrics[f"{prefix}{quantity}_rmse"] = MILLI * math.sqrt(sq_sum / count)
        return metrics

    def _synchronised_sums(self) -> tuple[list[tuple[str, str]], torch.Tensor]:
        """Union of keys over ranks and the (K, 3) sums added over ranks."""
        keys = sorted(self.sums)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed:
            keys_per_rank = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(keys_per_rank, keys)
            keys = sorted({key for rank_keys in keys_per_rank for key in rank_keys})
        sums = torch.stack([self.sums[key] for key in keys]) if keys else torch.zeros(0, 3, dtype=torch.float64)
        if distributed and keys:
            device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
            sums = sums.to(device)
            torch.distributed.all_reduce(sums)  # sum over ranks
            sums = sums.cpu()
        return keys, sums


def _detached(predictions: dict) -> dict:
    return {key: value.detach() for key, value in predictions.items() if torch.is_tensor(value)}


def _owning_graphs(quantity: str, batch, graph_of_atom: torch.Tensor) -> torch.Tensor:
    """Graph index of every labelled entry that `labelled_pairs` returns for ``quantity``."""
    if quantity in ("forces", "direct_forces"):
        atom_mask = batch.forces_mask.view(-1)[graph_of_atom]
        return graph_of_atom[atom_mask].repeat_interleave(3)
    mask = getattr(batch, f"{quantity}_mask").view(-1)
    graphs = torch.arange(batch.num_graphs, device=mask.device)[mask]
    return graphs.repeat_interleave(9) if quantity == "stress" else graphs
