"""Building models: from a config (and dataset statistics) to a `Potential` in a given precision.

`mlip.models.potential` is physics only; everything that turns configs into modules is here:

- `build_potential(config, statistics, dtype=...)`: a new model (training), elements, reference
  energies, scale, shift and avg_num_neighbors filled in from the statistics;
- `potential_from_config(config, dtype=...)` (= `Potential.from_config`): the same architecture
  again from `potential.config` (model files, checkpoints);
- `build_backbone(config, dtype=...)`, `backbone_class(config)`: one backbone, by registry `name`
  or `_target_`, with the trust rules of model files (see `backbone_class`);
- `check_keywords`, `default_dtype`; the registry itself is `mlip.models.backbones.BACKBONES`.

Precision: every builder takes the model's ``dtype`` and *builds* the modules in it (torch's
default dtype is set to it during construction). Building in float32 and converting with
``.to(torch.float64)`` is not the same model: e3nn's Clebsch-Gordan constants and derived
non-persistent buffers (e.g. the MACE-like ``basis_*``) would keep their float32 rounding
(1e-8 to 4e-7), and ``load_state_dict`` never restores non-persistent buffers.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import math
import numbers
from collections.abc import Mapping
from typing import Any

import torch

from mlip.constants import torch_dtype
from mlip.models.backbones import BACKBONES, Backbone, class_path, register_backbone
from mlip.models.potential import Potential

__all__ = [
    "BACKBONES",
    "UnregisteredBackboneError",
    "atomic_number",
    "automatic_inner_cutoffs",
    "backbone_class",
    "build_backbone",
    "build_potential",
    "check_keywords",
    "class_path",
    "default_dtype",
    "potential_from_config",
    "rebuild",
    "register_backbone",
]


class UnregisteredBackboneError(ValueError):
    """A config names a backbone class that it may not: not registered, and not trusted to import."""


def backbone_class(config: Mapping[str, Any], trusted: bool = False, where: str = "backbone") -> type[Backbone]:
    """The backbone class named by `name` (registry key) and/or `_target_` (import path) in `config`.

    Untrusted (the default; model files): only classes of `mlip.models.backbones.BACKBONES` are
    found: `name` must be a registry key, `_target_` must equal a registered class's path
    (``module.QualifiedName``), and when both are given they must name the same class. Nothing
    is imported, so a config cannot make mlip run code. `trusted=True` (the user's own training
    config) also imports a `_target_` outside the registry, which must be a `Backbone` subclass.
    `where`: how `config` is named in error messages (e.g. "model.backbone").
    Raises `UnregisteredBackboneError` (a ValueError) for a class the config may not name.
    """
    registered = {class_path(cls): cls for cls in BACKBONES.values()}
    known = ", ".join(f"{key} ({class_path(cls)})" for key, cls in sorted(BACKBONES.items()))
    target, name = config.get("_target_"), config.get("name")
    if target is None and name is None:
        raise ValueError(f"{where}: needs `name` (a registered backbone: {known}) or `_target_` (an import path)")
    named = None
    if name is not None:
        if not isinstance(name, str) or name not in BACKBONES:
            raise UnregisteredBackboneError(f"{where}.name = {name!r} is not a registered backbone; known: {known}")
        named = BACKBONES[name]
    if target is None:
        return named
    if not isinstance(target, str):
        raise UnregisteredBackboneError(f"{where}._target_ must be a class path string, got {type(target).__name__}")
    cls = registered.get(target)
    if cls is None and trusted:
        cls = _import_backbone(target, where)
    if cls is None:
        raise UnregisteredBackboneError(
            f"{where}._target_ = {target!r} is not a registered mlip backbone (registered: {known}); a model "
            "file may only name one of these and cannot make mlip import code. If this is your own Backbone "
            "subclass, import it and call mlip.models.backbones.register_backbone(name, cls) before loading"
        )
    if named is not None and named is not cls:
        raise UnregisteredBackboneError(
            f"{where}: `name` {name!r} is {class_path(named)} but `_target_` is {target!r}; they must name one class"
        )
    return cls


def _import_backbone(target: str, where: str) -> type[Backbone]:
    """Import the class at ``target`` (trusted configs only); it must subclass `Backbone`."""
    module_name, _, class_name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"{where}._target_ = {target!r} cannot be imported ({error})") from error
    if not (isinstance(cls, type) and issubclass(cls, Backbone)):
        raise ValueError(f"{where}._target_ = {target!r} is not a subclass of mlip.models.backbones.Backbone")
    return cls


def _is_plain(value: Any) -> bool:
    """Numbers, strings, booleans, None, and lists/tuples/string-keyed dicts of them."""
    if value is None or isinstance(value, (str, bool, numbers.Number)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(item) for item in value)
    if isinstance(value, Mapping):
        return all(isinstance(key, (str, int)) and _is_plain(item) for key, item in value.items())
    return False


def check_keywords(function, kwargs: Mapping[str, Any], where: str, plain: bool = True) -> None:
    """Every key of ``kwargs`` must be a keyword of ``function`` (a class: of its ``__init__``);
    with ``plain``, every value must be plain data (see `_is_plain`). ValueError naming the field."""
    parameters = inspect.signature(function).parameters
    any_keyword = any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters.values())
    accepted = [key for key, parameter in parameters.items() if parameter.kind is not parameter.VAR_POSITIONAL]
    for key, value in kwargs.items():
        if not isinstance(key, str) or not (any_keyword or key in accepted):
            raise ValueError(f"{where}.{key} is not a keyword of {function.__name__} (it takes {', '.join(accepted)})")
        if plain and not _is_plain(value):
            raise ValueError(
                f"{where}.{key} must be plain data (numbers, strings, booleans, None, lists, dicts), "
                f"got {type(value).__name__}"
            )


def _statistic(statistics, key: str, default=None):
    if statistics is None:
        return default
    if isinstance(statistics, Mapping):
        return statistics.get(key, default)
    return getattr(statistics, key, default)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype | str):
    """Temporarily set torch's default dtype to ``dtype`` (restored afterwards, also on errors).

    What the builders use to build a model in its precision; use it too when constructing a
    `Potential` or a backbone by hand in float64 (e3nn computes its constants in the default
    dtype at construction)."""
    dtype = torch_dtype(dtype)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield dtype
    finally:
        torch.set_default_dtype(previous)


class _Required:
    """Default of a builder's `dtype`: a sentinel that makes leaving it out an error."""

    def __repr__(self) -> str:
        return "<required>"


REQUIRED: Any = _Required()


def _model_dtype(dtype: Any, caller: str) -> torch.dtype:
    """The dtype argument of a builder: required, because the model is *built* in it (never cast)."""
    if dtype is REQUIRED or dtype is None:
        raise TypeError(f"{caller}: pass the model's precision, dtype=torch.float32 or torch.float64 (it is built in it)")
    return torch_dtype(dtype)


def _check_built_in(module: torch.nn.Module, dtype: torch.dtype, what: str) -> None:
    """Every floating parameter of ``module`` must have been created in ``dtype``."""
    for name, parameter in module.named_parameters():
        if parameter.is_floating_point() and parameter.dtype != dtype:
            raise RuntimeError(
                f"{what}: parameter {name} was created in {parameter.dtype}, not in the model's {dtype}; a backbone "
                "must create its tensors in torch's default dtype (the builders set it to the model's dtype)"
            )


def build_backbone(
    config: Mapping[str, Any], dtype: torch.dtype | str = REQUIRED, trusted: bool = False, where: str = "backbone"
) -> Backbone:
    """Instantiate a backbone, in ``dtype``, from a dict with `name` and/or `_target_` plus its keyword arguments.

    `trusted`, `where`: see `backbone_class`; untrusted keyword values must also be plain data.
    """
    dtype = _model_dtype(dtype, "build_backbone")
    cls = backbone_class(config, trusted=trusted, where=where)
    kwargs = {key: value for key, value in config.items() if key not in ("_target_", "name")}
    check_keywords(cls, kwargs, where, plain=not trusted)
    with default_dtype(dtype):
        backbone = cls(**kwargs)
    _check_built_in(backbone, dtype, where)
    return backbone


def potential_from_config(
    config: Mapping[str, Any],
    dtype: torch.dtype | str = REQUIRED,
    trusted: bool = False,
    where: str = "config",
    potential_class: type[Potential] = Potential,
) -> Potential:
    """Rebuild, in ``dtype``, the architecture of `potential.config` (a fully resolved dict, e.g.
    stored in a model file); then `load_state_dict` its weights.

    `trusted`: see `backbone_class`; False (the default, what `mlip.load` uses) accepts only
    registered backbones and plain-data keyword values, and never imports anything.
    `where`: how `config` is named in error messages (e.g. "<file>: potential_config").
    """
    dtype = _model_dtype(dtype, "Potential.from_config")
    if not isinstance(config, Mapping):
        raise ValueError(f"{where} must be a dict, got {type(config).__name__}")
    config = dict(config)
    backbone_config = config.pop("backbone", None)
    if not isinstance(backbone_config, Mapping) or not backbone_config:
        raise ValueError(f"{where}.backbone must be a dict with `name` or `_target_`, got {backbone_config!r}")
    check_keywords(potential_class, config, where, plain=not trusted)
    backbone = build_backbone(backbone_config, dtype=dtype, trusted=trusted, where=f"{where}.backbone")
    with default_dtype(dtype):
        potential = potential_class(backbone=backbone, **config)
    _check_built_in(potential, dtype, where)
    return potential


def build_potential(
    config: Mapping[str, Any], statistics=None, dtype: torch.dtype | str = REQUIRED, trusted: bool = False
) -> Potential:
    """Build a `Potential`, in ``dtype``, from a model config and (optionally) dataset statistics.

    `config`: {"backbone": {"name" or "_target_": ..., hyperparameters...}, "cutoff": Å, optional
    "elements", "atomic_energies", "scale", "shift", "charge_spin_conditioning", "condition_dim",
    "direct_forces", "readout_hidden", "pair_repulsion", ...}. `statistics` (a mapping or an object
    with these attributes) fills what the config leaves out: `elements`, `atomic_energies`, `scale`,
    `shift`, `avg_num_neighbors`. A multi-head model (`heads`: a list of names) takes the
    references, scale and shift of each head from ``statistics["heads"][name]`` (the same keys,
    computed on that head's data; see `_per_head_values`). `atomic_energies` may be ``"average"`` (the default: the
    statistics' least squares), ``"isolated"`` (the statistics' `isolated_atom_energies`; shift 0)
    or a mapping {symbol or Z: eV}; the choice is recorded as `reference_energies`. The backbone's `num_elements`, `cutoff` and `condition_dim` always come
    from the potential; `avg_num_neighbors` from statistics unless the backbone config sets it.
    The resolved config is `potential.config`; `potential_from_config` rebuilds the same model.
    `dtype` (torch.float32 / torch.float64 or their names): the precision the model is built in.
    `trusted=True` lets `backbone._target_` import a class outside the registry: for the user's
    own training config (`mlip.train.build.build_model`), never for a file from elsewhere.
    """
    dtype = _model_dtype(dtype, "build_potential")
    config = dict(config)
    backbone_config = dict(config.pop("backbone"))
    if config.pop("isolated_atoms", None) is not None:
        raise ValueError(
            "build_potential: `isolated_atoms` (a file) is read by mlip.train.build.build_model; pass the energies "
            "as statistics['isolated_atom_energies'] instead"
        )
    if config.get("heads"):
        config.update(_per_head_values(config, statistics))
    else:
        config.update(_reference_energies(config, statistics))
    fraction = config.pop("inner_cutoff_fraction", None)
    if config.get("inner_cutoff") == "auto":
        elements = config.get("elements") or _statistic(statistics, "elements")
        config["inner_cutoff"] = automatic_inner_cutoffs(
            elements, statistics, DEFAULT_INNER_CUTOFF_FRACTION if fraction is None else fraction
        )
    for key in ("elements", "atomic_energies", "scale", "shift"):
        if config.get(key) is None:
            value = _statistic(statistics, key)
            if value is None and key in ("elements", "atomic_energies"):
                raise ValueError(f"build_potential: `{key}` is neither in the config nor in the statistics")
            if value is not None:
                config[key] = value
    if "cutoff" not in config:
        raise ValueError("build_potential: config needs `cutoff` (Å)")
    conditioning = config.get("charge_spin_conditioning", True)
    backbone_config["num_elements"] = len(config["elements"])
    backbone_config["cutoff"] = float(config["cutoff"])
    backbone_config["condition_dim"] = int(config.get("condition_dim", 16)) if conditioning else 0
    backbone = backbone_class(backbone_config, trusted=trusted, where="model.backbone")
    accepts_average = "avg_num_neighbors" in inspect.signature(backbone).parameters
    if accepts_average and backbone_config.get("avg_num_neighbors") is None:
        average = _statistic(statistics, "avg_num_neighbors")
        if average is not None and average > 0:  # 0 for a data set of isolated atoms
            backbone_config["avg_num_neighbors"] = float(average)
        else:
            backbone_config.pop("avg_num_neighbors", None)
    built = build_backbone(backbone_config, dtype=dtype, trusted=trusted, where="model.backbone")
    with default_dtype(dtype):
        potential = Potential(backbone=built, **config)
    _check_built_in(potential, dtype, "build_potential")
    return potential


#: ``inner_cutoff=auto``: the inner cutoff of a pair is this fraction of its shortest distance in the
#: training data (``model.inner_cutoff_fraction``). At 1.0 the switch already acts on bonds a
#: little shorter than any training bond, where the learned model still extrapolates well: on the
#: ethanol normal-mode scans, whose C-C and C-O bonds are 0.11-0.16 Å shorter than any in
#: train.xyz, three trained models' errors grew 5-12x; at 0.75 they are unchanged, and every H-H
#: dimer is still repulsive (docs/training.md, seventh session).
DEFAULT_INNER_CUTOFF_FRACTION = 0.75


def automatic_inner_cutoffs(elements, statistics, fraction: float = DEFAULT_INNER_CUTOFF_FRACTION) -> dict[str, float]:
    """``model.inner_cutoff=auto``: {"H-C": Å, ...} for every pair of ``elements``: ``fraction`` ×
    the shortest distance of that pair in the training data (the statistics' `shortest_distances`);
    a pair the data never has within the cutoff takes the sum of its covalent radii (ASE's) as
    that distance."""
    from ase.data import chemical_symbols, covalent_radii

    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
        raise ValueError(f"model.inner_cutoff_fraction must be in (0, 1], got {fraction!r}")
    if not elements:
        raise ValueError("model.inner_cutoff=auto needs the model's elements (from the config or the statistics)")
    shortest = _statistic(statistics, "shortest_distances")
    if shortest is None:
        raise ValueError("model.inner_cutoff=auto needs dataset statistics with shortest_distances (statistics of the training data)")
    shortest = {tuple(sorted(int(z) for z in key.split("-"))): float(value) for key, value in dict(shortest).items()}
    elements = sorted(int(z) for z in elements)
    cutoffs = {}
    for index, a in enumerate(elements):
        for b in elements[index:]:
            value = fraction * shortest.get((a, b), covalent_radii[a] + covalent_radii[b])
            cutoffs[f"{chemical_symbols[a]}-{chemical_symbols[b]}"] = math.floor(value * 1e4) / 1e4  # rounded down
    return cutoffs


def atomic_number(key: Any, where: str) -> int:
    """A reference-energy key: an atomic number (int or digit string) or a chemical symbol."""
    from ase.data import atomic_numbers

    if isinstance(key, bool):
        raise ValueError(f"{where}: {key!r} is not an element")
    if isinstance(key, numbers.Integral) or (isinstance(key, str) and key.strip().isdigit()):
        return int(key)
    if isinstance(key, str) and key.strip() in atomic_numbers and key.strip() != "X":
        return atomic_numbers[key.strip()]
    raise ValueError(f"{where}: {key!r} is neither a chemical symbol nor an atomic number")


def _reference_energies(config: Mapping[str, Any], statistics) -> dict[str, Any]:
    """`atomic_energies` (and `reference_energies`, `shift`) from what the user set.

    `atomic_energies`: None or ``"average"`` -> the statistics' least-squares energies;
    ``"isolated"`` -> the statistics' `isolated_atom_energies` (with `isolated_atoms_source` to
    name where they came from in errors), shift 0; a mapping {symbol or Z: eV} -> those, as given.
    A list aligned with `elements` (a stored `potential.config`) is kept as it is.
    """
    from ase.data import chemical_symbols

    choice = config.get("atomic_energies")
    mode = config.get("reference_energies")
    if choice is None or choice == "average":
        value = _statistic(statistics, "atomic_energies")
        if value is None:
            raise ValueError("build_potential: `atomic_energies` is neither in the config nor in the statistics")
        return {"atomic_energies": value, "reference_energies": mode or "average"}
    if choice == "isolated":
        energies = _statistic(statistics, "isolated_atom_energies") or {}
        source = _statistic(statistics, "isolated_atoms_source") or "the training data (single-atom structures)"
        elements = config.get("elements") or _statistic(statistics, "elements") or []
        by_z = {atomic_number(key, "isolated_atom_energies"): float(value) for key, value in dict(energies).items()}
        missing = [f"{chemical_symbols[int(z)]} (Z={int(z)})" for z in elements if int(z) not in by_z]
        if missing:
            raise ValueError(
                f"model.atomic_energies=isolated: no isolated-atom energy for {', '.join(missing)} in {source}; add a "
                "single-atom structure with an energy for each element (model.isolated_atoms=<file>), or set "
                "model.atomic_energies to average or to an explicit mapping"
            )
        shift = config.get("shift")
        if shift is not None and float(shift) != 0.0:
            raise ValueError(f"model.shift must be 0 (or unset) with model.atomic_energies=isolated, got {shift}")
        return {"atomic_energies": by_z, "reference_energies": "isolated", "shift": 0.0}
    if isinstance(choice, str):
        raise ValueError(
            f"model.atomic_energies={choice!r}: expected average, isolated, or a mapping {{symbol or Z: eV}}"
        )
    if isinstance(choice, Mapping):
        energies = {atomic_number(key, "model.atomic_energies"): float(value) for key, value in choice.items()}
        return {"atomic_energies": energies, "reference_energies": mode or "explicit"}
    return {"atomic_energies": choice, "reference_energies": mode or "explicit"}


def _per_head_values(config: Mapping[str, Any], statistics) -> dict[str, Any]:
    """Reference energies, scale and shift of every head of a multi-head model, each resolved as
    for a single head (`_reference_energies`) from that head's statistics (``statistics["heads"]
    [name]``). ``atomic_energies`` may be average / isolated (for every head) or a mapping {head:
    choice}; ``scale`` and ``shift`` a number (every head) or {head: value}; unset, each head's own.
    An element that a head's data lacks gets the reference energy 0 eV in that head (nothing to
    fit it to; `DatasetStatistics.elements_without_energy`)."""
    heads = list(config["heads"])
    per_head = _statistic(statistics, "heads") or {}
    missing = [head for head in heads if head not in per_head]
    if missing:
        raise ValueError(f"build_potential: no statistics for head(s) {missing} (statistics['heads'] has {sorted(per_head)})")
    elements = config.get("elements") or _statistic(statistics, "elements")
    choice = config.get("atomic_energies")
    if isinstance(choice, Mapping) and not set(choice) <= set(heads):
        raise ValueError(
            f"model.atomic_energies of a multi-head model: a mapping must be {{head: average | isolated | "
            f"{{symbol or Z: eV}}}} with heads {heads}, got keys {sorted(map(str, choice))}"
        )

    def of_head(value, head):
        return value.get(head) if isinstance(value, Mapping) else value

    energies, scales, shifts, modes = {}, {}, {}, set()
    for head in heads:
        head_statistics = dict(per_head[head])
        head_statistics["elements"] = elements
        if head_statistics.get("atomic_energies") is not None:
            fitted = {int(z): float(e) for z, e in dict(head_statistics["atomic_energies"]).items()}
            head_statistics["atomic_energies"] = {int(z): fitted.get(int(z), 0.0) for z in elements}
        head_config = {"elements": elements, "atomic_energies": of_head(choice, head),
                       "shift": of_head(config.get("shift"), head),
                       "reference_energies": config.get("reference_energies")}
        try:
            resolved = _reference_energies(head_config, head_statistics)
        except ValueError as error:
            raise ValueError(f"head {head!r}: {error}") from error
        energies[head] = resolved["atomic_energies"]
        modes.add(resolved["reference_energies"])
        shift = resolved.get("shift", head_config["shift"])
        shifts[head] = float(shift if shift is not None else head_statistics.get("shift") or 0.0)
        scale = of_head(config.get("scale"), head)
        scales[head] = float(scale if scale is not None else head_statistics.get("scale") or 1.0)
    return {"atomic_energies": energies, "scale": scales, "shift": shifts, "reference_energies": joint_reference_mode(modes)}


def joint_reference_mode(modes) -> str:
    """The `Potential.reference_energies` of heads whose references are of kinds ``modes``: their
    kind when they agree; ``explicit`` when they do not (then no head masks the learned energy of
    a lone atom, which ``isolated`` does)."""
    modes = set(modes)
    return modes.pop() if len(modes) == 1 else "explicit"


def independent_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` that shares nothing with it and has exactly its parameters and buffers.

    A `Potential` is rebuilt from its config in its own dtype (`rebuild`): ``copy.deepcopy``
    goes through pickling, and e3nn's compiled tensor products come back from it with their
    larger constants as extra ``_tensor_constant`` buffers (e.g. a MACE-like model with ``lmax: 3``
    and 16 or more channels), so the copy's ``state_dict`` would not load into a fresh model.
    Any other module is deep-copied."""
    if isinstance(model, Potential):
        parameter = next(model.parameters(), None)
        return rebuild(model, parameter.dtype if parameter is not None else torch.get_default_dtype())
    return copy.deepcopy(model)


def rebuild(potential: Potential, dtype: torch.dtype | str) -> Potential:
    """The same model built anew in ``dtype``, with ``potential``'s weights: what to use instead of
    ``potential.to(dtype)`` (which keeps float32-rounded constants in a float64 model).

    The config is the caller's own in-process model, so its backbone class need not be registered
    (``trusted=True``). Training/eval mode and the device of the weights are kept."""
    parameter = next(potential.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    rebuilt = potential_from_config(potential.config, dtype=dtype, trusted=True, potential_class=type(potential))
    rebuilt.load_state_dict(potential.state_dict())
    return rebuilt.to(device).train(potential.training)
