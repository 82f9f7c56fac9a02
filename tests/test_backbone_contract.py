"""The physics contract (mlip.testing) for every registered backbone, in float32 and float64.

Each check runs on a small untrained `Potential` built by registry name in its precision; the
tolerances per backbone and dtype are `mlip.testing.backbone_tolerances`. Architecture-specific
tests stay in each backbone's own test file.
"""

from __future__ import annotations

import pytest
import torch

from mlip import testing
from mlip.models import BACKBONES

DTYPES = {"float32": torch.float32, "float64": torch.float64}
_potentials: dict = {}


def potential_for(name: str, dtype_name: str):
    """One model per (backbone, dtype), built once (the checks do not change it)."""
    key = (name, dtype_name)
    if key not in _potentials:
        _potentials[key] = testing.small_potential(name, dtype=DTYPES[dtype_name])
    return _potentials[key]


@pytest.mark.parametrize("check", testing.CHECKS)
@pytest.mark.parametrize("dtype_name", sorted(DTYPES))
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_contract(name, dtype_name, check):
    potential = potential_for(name, dtype_name)
    assert potential.atomic_energies.dtype == DTYPES[dtype_name]
    assert all(p.dtype == DTYPES[dtype_name] for p in potential.parameters())
    testing.run_check(check, potential, testing.backbone_tolerances(name, dtype_name))


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbones_without_built_in_rotation_symmetry_really_lack_it(name):
    """Where `rotation` is None the measured error must be real, else the tolerance is too loose."""
    tolerances = testing.backbone_tolerances(name, "float64")
    if tolerances.rotation is not None:
        pytest.skip("exactly equivariant backbone")
    errors = testing.check_rotation(potential_for(name, "float64"), testing.molecule(), tolerances)
    assert errors["energy"] > 1e-6 and errors["forces"] > 1e-6


def test_the_checks_can_fail():
    """Forces that are not -dE/dr, and an energy that is not local, are caught."""
    potential = testing.small_potential("mace", dtype=torch.float64)
    tolerances = testing.backbone_tolerances("mace", "float64")
    original = potential.forward

    def wrong_forces(batch, **options):
        outputs = original(batch, **options)
        if "forces" in outputs:
            outputs["forces"] = outputs["forces"] * 1.01
        return outputs

    potential.forward = wrong_forces
    with pytest.raises(AssertionError, match="finite differences"):
        testing.check_forces_match_finite_differences(potential, testing.molecule(), tolerances)
    # TransIP's centred-position features make distant fragments interact (docs/transip.md)
    nonlocal_ = testing.small_potential({"name": "transip", **testing.SMALL_BACKBONES["transip"], "use_positions": True},
                                        dtype=torch.float64)
    with pytest.raises(AssertionError, match="additivity"):
        testing.check_isolated_atoms(nonlocal_, testing.backbone_tolerances("transip", "float64"))
