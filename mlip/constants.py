"""Constants and small validators shared by every layer (no mlip imports, no heavy imports).

Units are ASE's throughout mlip: Å, eV, eV/Å, eV/Å³ (see docs/design.md).
"""

from __future__ import annotations

import numbers

import torch

MAX_ATOMIC_NUMBER = 118  # the heaviest element known (Og); atomic numbers are 1..118

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"float32"``/``"float64"`` (or a torch dtype of those) -> the torch dtype; ValueError otherwise."""
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise ValueError(f"unsupported dtype {name}; expected one of {sorted(DTYPES)}")
        return name
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[name]


def is_integer(value) -> bool:
    """True for Python/NumPy integers and for integral floats (2.0), False for bools and the rest."""
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Integral):
        return True
    return isinstance(value, numbers.Real) and float(value).is_integer()
