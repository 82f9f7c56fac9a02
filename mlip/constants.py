"""Constants and small validators shared by every layer (no mlip imports, no heavy imports).

Units are ASE's throughout mlip: Å, eV, eV/Å, eV/Å³ (see docs/design.md).
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MAX_ATOMIC_NUMBER = 118  # the heaviest element known (Og); atomic numbers are 1..118

#: DTYPES: dict[str, torch.dtype], {"float32": torch.float32, "float64": torch.float64}. Made on
#: first access (module __getattr__), so that the torch-free data layer (schema, converters,
#: ``mlip-convert --help``) can import the constants without importing torch (~1 s).


def __getattr__(name: str):
    if name == "DTYPES":
        return _dtypes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _dtypes() -> dict[str, torch.dtype]:
    """DTYPES, made (and stored as the module attribute) on first use."""
    if "DTYPES" not in globals():
        import torch

        globals()["DTYPES"] = {"float32": torch.float32, "float64": torch.float64}
    return globals()["DTYPES"]


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"float32"``/``"float64"`` (or a torch dtype of those) -> the torch dtype; ValueError otherwise."""
    import torch

    DTYPES = _dtypes()  # noqa: N806
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
