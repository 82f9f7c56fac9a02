"""`ZooModel`: one model of the zoo, a named factory of ASE calculators.

A model is either

* an mlip model file (anything `mlip.load` reads; a folder of them or of run folders is expanded
  by `mlip.cli.evaluate.find_models`), wrapped in `mlip.calculator.MLIPCalculator`; or
* any ASE calculator given as ``module:factory`` with keyword arguments, e.g.
  ``tblite.ase:TBLite`` with ``method="GFN2-xTB"``, or another framework's calculator.

Trust rule: a ``module:factory`` imports and calls arbitrary code, so it is accepted only from
the user directly (a command-line argument of `mlip-eval`, or a Python call of
`ZooModel.from_factory`). Nothing read from a file (a model file, a checkpoint, a data set) is
ever turned into an import path: model files name only backbones of mlip's registry
(docs/calculator.md, "What a model file can and cannot do").

A model can be the *reference* for molecules, crystals or both (``reference_for``): the tasks
then compare every other model with it. A reference for one kind only is run on that kind only
(GFN2-xTB labelled the sample molecules, GFN1-xTB the sample crystals).
"""

from __future__ import annotations

import ast
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ase.calculators.calculator import Calculator
from ase.data import chemical_symbols

KINDS = ("molecule", "crystal")


@dataclass
class ZooModel:
    """A named model: ``make_calculator()`` returns a fresh ASE calculator.

    ``elements``: atomic numbers the model knows, or None when unknown (an external calculator;
    then every structure is tried and a calculator error becomes the reason in the table).
    ``reference_for``: kinds ("molecule", "crystal") this model is the reference of.
    ``source``: what the user gave (a path, or ``module:factory`` with its arguments).
    """

    name: str
    make_calculator: Callable[[], Calculator]  # a fresh ASE calculator per call
    elements: frozenset[int] | None = None
    reference_for: tuple[str, ...] = ()
    source: str = ""
    kind: str = "mlip"  # "mlip" (a model file) or "external" (module:factory)
    cutoff: float | None = None  # Å, for mlip models (the dimer curves end there)

    @property
    def is_reference(self) -> bool:
        return bool(self.reference_for)

    def kinds(self) -> tuple[str, ...]:
        """The kinds of structure this model is run on: all, or only those it is the reference for."""
        return self.reference_for or KINDS

    def missing_elements(self, numbers) -> str:
        """'' if the model knows every atomic number in ``numbers``, else e.g. 'Cl (Z=17), Br (Z=35)'."""
        if self.elements is None:
            return ""
        missing = sorted({int(z) for z in numbers} - set(self.elements))
        return ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in missing)

    # ----------------------------------------------------------------------------------------
    # constructors
    # ----------------------------------------------------------------------------------------

    @classmethod
    def from_path(cls, path: str | os.PathLike, name: str | None = None, device: str = "cpu", dtype: str = "float64",
                  reference_for: tuple[str, ...] = (), head: str | None = None) -> ZooModel:
        """An exported mlip model file; the potential is loaded once, each calculator gets its own copy.
        ``head``: the head a multi-head model is evaluated with (ignored by a single-head model)."""
        import torch

        from mlip.calculator import MLIPCalculator, head_for, load_potential, model_elements

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"mlip.zoo: model file {path} does not exist")
        try:
            potential, statistics = load_potential(str(path), {"float64": torch.float64, "float32": torch.float32}[dtype])
        except Exception as error:  # a broken or foreign file: say which
            raise ValueError(f"mlip.zoo: cannot load model file {path}: {error}") from error
        potential.statistics = statistics  # MLIPCalculator reads it from the module (a model trained on ions wants a charge)
        head = head_for(potential, head, where=f"mlip.zoo: {path}")

        def make_calculator():
            return MLIPCalculator(potential, device=device, dtype=dtype, head=head)

        return cls(
            name=name or path.stem, make_calculator=make_calculator, elements=frozenset(model_elements(potential)),
            reference_for=tuple(reference_for), source=str(path), kind="mlip", cutoff=float(potential.cutoff),
        )

    @classmethod
    def from_factory(cls, factory: str, keywords: dict | None = None, name: str | None = None,
                     reference_for: tuple[str, ...] = (), elements=None) -> ZooModel:
        """Any ASE calculator: ``factory`` is ``"module:callable"`` (e.g. ``"tblite.ase:TBLite"``), called
        with ``keywords`` for every calculator. Only for factories the user names directly (see the module
        docstring); the module is imported and the callable looked up here, so a typo fails at once."""
        keywords = dict(keywords or {})
        function = resolve_factory(factory)
        source = factory + "".join(f",{key}={value!r}" for key, value in keywords.items())

        def make_calculator():
            return function(**keywords)

        return cls(
            name=name or factory.rpartition(":")[2], make_calculator=make_calculator,
            elements=None if elements is None else frozenset(int(z) for z in elements),
            reference_for=tuple(reference_for), source=source, kind="external",
        )


def resolve_factory(factory: str):
    """The callable named by ``"module:attribute"`` (the attribute may be dotted: ``module:Class.method``)."""
    module_name, separator, attribute = factory.partition(":")
    if not separator or not module_name or not attribute:
        raise ValueError(f"mlip.zoo: a calculator factory is 'module:callable' (e.g. tblite.ase:TBLite), got {factory!r}")
    try:
        target = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"mlip.zoo: cannot import module {module_name!r} of calculator factory {factory!r}: {error}") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"mlip.zoo: module {module_name!r} has no {attribute!r} (calculator factory {factory!r})")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"mlip.zoo: {factory!r} is not callable")
    return target


def parse_calculator_spec(spec: str) -> tuple[str | None, str, dict]:
    """``[NAME=]module:factory[,key=value,...]`` -> (name or None, factory, keywords).

    Values are Python literals where they parse as one (``1.5``, ``True``, ``(1, 2)``), else
    strings: ``GFN2-xTB=tblite.ase:TBLite,method=GFN2-xTB,verbosity=0``.
    """
    head, *options = [part.strip() for part in split_outside_brackets(spec)]
    name, separator, factory = head.partition("=")
    if not separator:
        name, factory = None, head
    if ":" not in factory:
        raise ValueError(f"mlip-eval: --calculator wants [NAME=]module:factory[,key=value,...], got {spec!r}")
    keywords = {}
    for option in options:
        key, separator, value = option.partition("=")
        if not separator or not key.isidentifier():
            raise ValueError(f"mlip-eval: calculator option {option!r} of {spec!r} is not key=value")
        keywords[key] = literal_or_string(value)
    return name or None, factory, keywords


def split_outside_brackets(text: str) -> list[str]:
    """``text`` split at commas that are not inside (), [] or {} (so tuples survive as values)."""
    parts, depth, current = [], 0, ""
    for character in text:
        depth += character in "([{"
        depth -= character in ")]}"
        if character == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += character
    parts.append(current)
    return parts


def literal_or_string(value: str):
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value
