"""`Potential`: the physical wrapper shared by every backbone.

A backbone maps a neighbour graph to per-atom features; `Potential` turns them into energies
(eV), forces (eV/Å) and stress (eV/Å³, ASE sign):

    E   = Σ_i [ scale · readout(h_i) + shift + E_ref(Z_i) + E_pair,i ]
    (multi-head: scale, readout, shift and E_ref are those of the structure's head)
    F_i = -∂E/∂r_i
    σ   = (1/V) ∂E/∂ε     (symmetric strain ε applied to positions and cell, at ε = 0)

Physics only: see docs/models.md for the full description, and `mlip.models.build` for
building one from a config dict plus dataset statistics in a given precision (what model
files and checkpoints use to rebuild a model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from ase.data import chemical_symbols

from mlip.constants import MAX_ATOMIC_NUMBER
from mlip.geometry import edge_vectors
from mlip.models.backbones.base import Backbone, BackboneInputs
from mlip.models.conditioning import ChargeSpinEmbedding
from mlip.nn.mlp import MLP, linear_layer
from mlip.nn.radial import inner_switch
from mlip.nn.zbl import ZBLRepulsion

#: Pair-repulsion priors by config name (`Potential(pair_repulsion=...)`): never an import path.
PAIR_REPULSIONS: dict[str, type[torch.nn.Module]] = {"zbl": ZBLRepulsion}
#: What `atomic_energies` are (`Potential(reference_energies=...)`): see docs/models.md.
REFERENCE_ENERGIES = ("average", "isolated", "explicit")


class UnknownHeadError(ValueError):
    """A head name (or index) that the model does not have; the message lists the known heads."""


def check_head_names(heads: Sequence[str], where: str = "heads") -> list[str]:
    """Head names as a list: non-empty strings without "/" (they name metrics), unique."""
    if isinstance(heads, str) or not isinstance(heads, Sequence):
        raise ValueError(f"{where} must be a list of head names, got {heads!r}")
    names = list(heads)
    if not names:
        raise ValueError(f"{where} is empty; leave it unset (None) for a single-head model")
    for name in names:
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"{where}: head name {name!r} must be a non-empty string without '/'")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{where} has duplicates: {duplicates}")
    return names


class LinearPlusMLPReadout(torch.nn.Module):
    """Per-atom energy (n, 1) from scalar features (n, F): bias-free MLP(h) + w·h.

    The linear term gives every feature (e.g. the first layer's, close to two-body) a direct,
    well-conditioned path to the energy, as MACE's linear readouts of its earlier layers do.
    Bias-free, so zero features still give exactly zero energy."""

    def __init__(self, in_features: int, hidden: Sequence[int], normalized: bool = False):
        super().__init__()
        self.mlp = MLP(in_features, hidden, 1, bias=False, normalized=normalized)
        self.linear = linear_layer(in_features, 1, bias=False, normalized=normalized)

    def forward(self, scalars: torch.Tensor) -> torch.Tensor:
        return self.mlp(scalars) + self.linear(scalars)


def energy_readout(in_features: int, hidden: Sequence[int], linear: bool, normalized: bool = False) -> torch.nn.Module:
    """The readout of one head: the bias-free MLP, or with `linear` `LinearPlusMLPReadout`;
    `normalized`: e3nn's parameterisation of its layers (mlip.nn.mlp)."""
    if linear:
        return LinearPlusMLPReadout(in_features, hidden, normalized)
    return MLP(in_features, hidden, 1, bias=False, normalized=normalized)


class PerHeadReadout(torch.nn.Module):
    """One bias-free readout per head (`energy_readout`): scalar features (n, F) and each atom's head (n,) -> (n,)."""

    def __init__(self, in_features: int, hidden: Sequence[int], num_heads: int, linear: bool = False,
                 normalized: bool = False):
        super().__init__()
        self.heads = torch.nn.ModuleList(energy_readout(in_features, hidden, linear, normalized) for _ in range(num_heads))

    def forward(self, scalars: torch.Tensor, atom_heads: torch.Tensor) -> torch.Tensor:
        every_head = torch.cat([readout(scalars) for readout in self.heads], dim=-1)  # (n, H)
        return every_head.gather(1, atom_heads[:, None]).squeeze(1)  # (n,)


class Potential(torch.nn.Module):
    """Energy, forces and stress from any backbone.

    Args:
        backbone: a `Backbone` built with `num_elements=len(elements)`, the same `cutoff` and
            `condition_dim` (0 when `charge_spin_conditioning` is off).
        elements: atomic numbers Z the model knows; species index = position in this list.
        atomic_energies: reference energies E_ref(Z) in eV, a dict {Z: eV} or a list aligned
            with `elements`.
        scale: eV, multiplies the learned per-atom energy (dataset force RMS or energy std).
        shift: eV/atom, added to every atom (mean per-atom residual energy after references).
        cutoff: Å, must equal the cutoff the graphs were built with.
        charge_spin_conditioning: embed total charge and spin multiplicity into the atoms.
        condition_dim: width of that embedding.
        direct_forces: also predict forces directly from features (`direct_forces` output).
        readout_hidden: hidden widths of the bias-free energy readout MLP.
        readout_normalized: the readout's layers in e3nn's parameterisation (N(0, 1) weights
            divided by sqrt(fan-in), unit-second-moment activation; `mlip.nn.mlp`), as MACE's readouts.
        readout_linear: add a bias-free linear term of the scalar features to the readout MLP
            (`LinearPlusMLPReadout`; per head for a multi-head model).
        max_charge, max_multiplicity: ranges of the learned charge/spin embedding tables.
        pair_repulsion: None, or the name of a fixed short-range pair prior in
            `PAIR_REPULSIONS` (``"zbl"``: `mlip.nn.zbl.ZBLRepulsion`), whose per-atom energy is
            added to ``node_energy``.
        heads: None (one head: the default) or the names of several heads (e.g. levels of
            theory) that share the backbone; each has its own readout MLP, reference energies,
            scale and shift. `atomic_energies` is then one entry per head (a dict {head: energies}
            or a list of them in the order of `heads`), `scale` and `shift` a number (the same
            for every head) or one per head. A batch says each structure's head in `batch.head`
            (G,) as an index into `heads` (`head_index`).
        reference_energies: what `atomic_energies` are: ``"average"`` (least squares over the
            training data), ``"explicit"`` (given by the user) or ``"isolated"`` (DFT energies of
            isolated atoms). With ``"isolated"`` the shift must be 0 and the learned energy of an
            atom without neighbours (no edge within the cutoff) is set to zero, so a lone atom's energy is
            exactly E_ref(Z).
        inner_cutoff: None (the default), a distance in Å for every element pair, or a mapping
            {"C-H": Å, ...} (symbols or atomic numbers, either order; unlisted pairs: none). Below
            a pair's inner cutoff r_in the learned model sees the pair less and less (each edge's
            messages are scaled by `mlip.nn.radial.inner_switch`) and not at all below
            r_in - `inner_cutoff_width`; there only the pair repulsion acts. ``model.inner_cutoff=auto``
            sets r_in to a fraction (0.75) of that pair's shortest distance in the training data, so
            the learned energy is not extrapolated far below the distances it was fitted on, while
            training structures and mildly compressed bonds are untouched. With a pair repulsion, each pair's repulsion reaches
            at least out to its r_in, so no pair is left with neither. Needs a backbone with
            `supports_edge_weights`.
        inner_cutoff_width: Å, width of that switch.
    """

    def __init__(
        self,
        backbone: Backbone,
        elements: Sequence[int],
        atomic_energies: Mapping[int, float] | Sequence[float],
        scale: float = 1.0,
        shift: float = 0.0,
        cutoff: float = 5.0,
        charge_spin_conditioning: bool = True,
        condition_dim: int = 16,
        direct_forces: bool = False,
        readout_hidden: Sequence[int] = (16,),
        max_charge: int = 4,
        max_multiplicity: int = 6,
        pair_repulsion: str | None = None,
        reference_energies: str = "average",
        heads: Sequence[str] | None = None,
        readout_linear: bool = False,
        readout_normalized: bool = False,
        inner_cutoff: Mapping[str, float] | float | None = None,
        inner_cutoff_width: float = 0.25,
    ):
        super().__init__()
        if pair_repulsion is not None and pair_repulsion not in PAIR_REPULSIONS:
            raise ValueError(
                f"Potential: pair_repulsion={pair_repulsion!r} is not one of None, {', '.join(map(repr, PAIR_REPULSIONS))}"
            )
        if reference_energies not in REFERENCE_ENERGIES:
            raise ValueError(
                f"Potential: reference_energies={reference_energies!r} is not one of {', '.join(REFERENCE_ENERGIES)}"
            )
        self.heads = None if heads is None else check_head_names(heads, "Potential: heads")
        self.elements = [int(z) for z in elements]
        self._check_elements(self.elements)
        per_head = self._per_head  # one value per head, or the single value (single-head model)
        atomic_energies = per_head(atomic_energies, "atomic_energies", self._aligned_energies, mapping_is_per_head=True)
        scale, shift = per_head(scale, "scale", float), per_head(shift, "shift", float)
        if reference_energies == "isolated" and any(value != 0.0 for value in self._as_list(shift)):
            raise ValueError(
                f"Potential: shift must be 0 with isolated-atom reference energies (got {shift}): an isolated atom's "
                "energy is then exactly its reference"
            )
        self.cutoff = float(cutoff)
        self.charge_spin_conditioning = bool(charge_spin_conditioning)
        self.condition_dim = int(condition_dim) if charge_spin_conditioning else 0
        self._check_backbone(backbone)
        self.backbone = backbone
        inner_table, inner_cutoff = self._inner_cutoff_table(inner_cutoff, inner_cutoff_width, backbone)
        self.inner_cutoff_width = float(inner_cutoff_width)
        self.config: dict[str, Any] = {
            "backbone": dict(backbone.config),
            "elements": list(self.elements),
            "atomic_energies": atomic_energies,
            "scale": scale,
            "shift": shift,
            "cutoff": self.cutoff,
            "charge_spin_conditioning": self.charge_spin_conditioning,
            "condition_dim": int(condition_dim),
            "direct_forces": bool(direct_forces),
            "readout_hidden": [int(width) for width in readout_hidden],
            "readout_linear": bool(readout_linear),
            "readout_normalized": bool(readout_normalized),
            "max_charge": int(max_charge),
            "max_multiplicity": int(max_multiplicity),
            "pair_repulsion": pair_repulsion,
            "reference_energies": reference_energies,
            "heads": None if self.heads is None else list(self.heads),
            "inner_cutoff": inner_cutoff,
            "inner_cutoff_width": self.inner_cutoff_width,
        }
        self.reference_energies = reference_energies

        species_of_z = torch.full((MAX_ATOMIC_NUMBER + 1,), -1, dtype=torch.long)
        species_of_z[torch.tensor(self.elements)] = torch.arange(len(self.elements))
        self.register_buffer("species_of_z", species_of_z)
        # single head: (num_elements,) eV, () eV, () eV/atom; multi-head: (H, num_elements), (H,), (H,)
        self.register_buffer("atomic_energies", torch.tensor(atomic_energies))
        self.register_buffer("scale", torch.tensor(scale))
        self.register_buffer("shift", torch.tensor(shift))
        # (S, S) Å, r_in of each species pair; derived from the config, so not in the state dict
        self.register_buffer("inner_cutoffs", inner_table, persistent=False)

        self.conditioning = (
            ChargeSpinEmbedding(self.condition_dim, max_charge, max_multiplicity) if self.charge_spin_conditioning else None
        )
        self.readout = (
            energy_readout(backbone.num_scalar_features, readout_hidden, readout_linear, readout_normalized)
            if self.heads is None
            else PerHeadReadout(
                backbone.num_scalar_features, readout_hidden, len(self.heads), readout_linear, readout_normalized
            )
        )
        self.direct_force_head = self._direct_force_head(backbone) if direct_forces else None
        reach = {} if inner_table is None else {"minimum_pair_cutoffs": inner_table}
        self.pair_repulsion = (
            PAIR_REPULSIONS[pair_repulsion](self.elements, self.cutoff, **reach) if pair_repulsion is not None else None
        )

    # ----------------------------------------------------------------------------------- setup
    @staticmethod
    def _check_elements(elements: list[int]) -> None:
        if not elements:
            raise ValueError("Potential: `elements` is empty")
        if len(set(elements)) != len(elements):
            raise ValueError(f"Potential: `elements` has duplicates: {elements}")
        bad = [z for z in elements if not 1 <= z <= MAX_ATOMIC_NUMBER]
        if bad:
            raise ValueError(f"Potential: atomic numbers out of range 1..{MAX_ATOMIC_NUMBER}: {bad}")

    def _check_backbone(self, backbone: Backbone) -> None:
        """The backbone contract (`Backbone`): built for these elements, this cutoff and this condition width."""
        if not isinstance(backbone, Backbone):
            raise TypeError(f"Potential: backbone must be a mlip.models.backbones.Backbone, got {type(backbone).__name__}")
        expected = {"num_elements": len(self.elements), "cutoff": self.cutoff, "condition_dim": self.condition_dim}
        for name, value in expected.items():
            actual = getattr(backbone, name)
            if actual != value:
                hint = " (0 when charge_spin_conditioning is off)" if name == "condition_dim" else ""
                raise ValueError(f"Potential: backbone has {name}={actual} but the potential needs {name}={value}{hint}")

    def _inner_cutoff_table(
        self, inner_cutoff, width, backbone: Backbone
    ) -> tuple[torch.Tensor | None, dict[str, float] | None]:
        """The (S, S) table of inner cutoffs (Å) and its canonical config {"H-C": Å, ...} (pairs in
        the order of atomic number; every pair of the model's elements), or (None, None)."""
        if inner_cutoff is None:
            return None, None
        if not (isinstance(width, (int, float)) and not isinstance(width, bool) and 0 < width < self.cutoff):
            raise ValueError(f"Potential: inner_cutoff_width must be a positive distance below the cutoff (Å), got {width!r}")
        if not getattr(backbone, "supports_edge_weights", False):
            raise ValueError(
                f"Potential: inner_cutoff needs a backbone that supports edge weights; {type(backbone).__name__} does "
                "not declare supports_edge_weights"
            )
        pairs = [(a, b) for a in sorted(self.elements) for b in sorted(self.elements) if a <= b]
        if isinstance(inner_cutoff, Mapping):
            values = {pair: 0.0 for pair in pairs}
            for key, value in inner_cutoff.items():
                values[self._element_pair(key)] = value
        elif isinstance(inner_cutoff, (int, float)) and not isinstance(inner_cutoff, bool):
            values = {pair: inner_cutoff for pair in pairs}
        else:
            raise ValueError(
                f"Potential: inner_cutoff must be None, a distance (Å) or a mapping {{'C-H': Å, ...}}, got {inner_cutoff!r}"
            )
        table = torch.zeros(len(self.elements), len(self.elements))
        canonical = {}
        for (a, b), value in sorted(values.items()):
            name = f"{chemical_symbols[a]}-{chemical_symbols[b]}"
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < self.cutoff:
                raise ValueError(f"Potential: inner_cutoff of {name} must be a distance in [0, cutoff={self.cutoff}) Å, got {value!r}")
            i, j = self.elements.index(a), self.elements.index(b)
            table[i, j] = table[j, i] = float(value)
            canonical[name] = float(value)
        return table, canonical

    def _element_pair(self, key) -> tuple[int, int]:
        """An inner-cutoff key "C-H" / "6-1" (symbols or atomic numbers) -> (Z_a, Z_b), Z_a <= Z_b, both model elements."""
        from mlip.models.build import atomic_number

        parts = key.split("-") if isinstance(key, str) else []
        if len(parts) != 2:
            raise ValueError(f"Potential: inner_cutoff key {key!r} is not an element pair such as 'C-H'")
        pair = sorted(atomic_number(part, f"Potential: inner_cutoff key {key!r}") for part in parts)
        unknown = [chemical_symbols[z] for z in pair if z not in self.elements]
        if unknown:
            known = ", ".join(chemical_symbols[z] for z in self.elements)
            raise ValueError(f"Potential: inner_cutoff key {key!r} names {', '.join(unknown)}, not among the model's elements [{known}]")
        return pair[0], pair[1]

    def _aligned_energies(self, atomic_energies: Mapping[int, float] | Sequence[float]) -> list[float]:
        if isinstance(atomic_energies, Mapping):
            by_z = {int(z): float(e) for z, e in atomic_energies.items()}
            missing = [f"{chemical_symbols[z]} (Z={z})" for z in self.elements if z not in by_z]
            if missing:
                raise ValueError(f"Potential: atomic_energies has no reference energy for {', '.join(missing)}")
            return [by_z[z] for z in self.elements]
        energies = [float(e) for e in atomic_energies]
        if len(energies) != len(self.elements):
            raise ValueError(
                f"Potential: atomic_energies has {len(energies)} values but there are {len(self.elements)} elements"
            )
        return energies

    @staticmethod
    def _as_list(value) -> list:
        return value if isinstance(value, list) else [value]

    def _per_head(self, value, name: str, convert, mapping_is_per_head: bool = False):
        """``value`` converted by ``convert``; for a multi-head model a list with one entry per
        head, from a dict {head: value}, a list in the order of `heads`, or (not for
        `atomic_energies`) one value shared by every head."""
        if self.heads is None:
            return convert(value)
        if isinstance(value, Mapping) and (mapping_is_per_head or set(value) <= set(self.heads)):
            missing = [head for head in self.heads if head not in value]
            unknown = [head for head in value if head not in self.heads]
            if missing or unknown:
                raise ValueError(
                    f"Potential: {name} must have one entry per head {self.heads}; missing {missing}, unknown {unknown}"
                )
            return [convert(value[head]) for head in self.heads]
        if isinstance(value, Sequence) and not isinstance(value, str) and (
            mapping_is_per_head or len(value) == len(self.heads)
        ):
            if len(value) != len(self.heads):
                raise ValueError(f"Potential: {name} has {len(value)} entries but there are {len(self.heads)} heads")
            return [convert(item) for item in value]
        if mapping_is_per_head:
            raise ValueError(f"Potential: {name} of a multi-head model must be one entry per head {self.heads}")
        return [convert(value)] * len(self.heads)

    @property
    def num_heads(self) -> int:
        """1 for a single-head model, else ``len(heads)``."""
        return 1 if self.heads is None else len(self.heads)

    def head_index(self, head: str | int | None) -> int:
        """The index of head ``head`` (a name, or an index) in `heads`; `UnknownHeadError` (listing
        the heads) for a name the model does not have. A single-head model takes only None."""
        if self.heads is None:
            if head is None:
                return 0
            raise UnknownHeadError(f"head {head!r}: this model has a single head (no named heads); leave head unset")
        if head is None:
            raise UnknownHeadError(f"this model has several heads; choose one of {', '.join(self.heads)} (head=...)")
        if isinstance(head, int) and not isinstance(head, bool) and 0 <= head < len(self.heads):
            return head
        if isinstance(head, str) and head in self.heads:
            return self.heads.index(head)
        raise UnknownHeadError(f"head {head!r} is not one of the model's heads: {', '.join(self.heads)}")

    def head_values(self, head: str | int | None = None) -> dict[str, Any]:
        """The reference energies {Z: eV}, scale (eV) and shift (eV/atom) of one head."""
        index = self.head_index(head)
        energies = self.atomic_energies if self.heads is None else self.atomic_energies[index]
        scale = self.scale if self.heads is None else self.scale[index]
        shift = self.shift if self.heads is None else self.shift[index]
        return {
            "atomic_energies": dict(zip(self.elements, energies.tolist())),
            "scale": float(scale),
            "shift": float(shift),
        }

    @staticmethod
    def _direct_force_head(backbone: Backbone) -> torch.nn.Linear:
        """Equivariant (weights over l=1 channels, no bias) when the backbone has vectors, else scalars -> 3."""
        if backbone.num_vector_features > 0:
            return torch.nn.Linear(backbone.num_vector_features, 1, bias=False)
        return torch.nn.Linear(backbone.num_scalar_features, 3)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], dtype=None, trusted: bool = False, where: str = "config") -> Potential:
        """Rebuild from `potential.config`, built in `dtype`: see `mlip.models.build.potential_from_config`."""
        from mlip.models.build import potential_from_config

        return potential_from_config(config, dtype=dtype, trusted=trusted, where=where, potential_class=cls)

    # --------------------------------------------------------------------------------- forward
    def species(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        """Atomic numbers (n,) -> species indices (n,); clear error for an unknown element."""
        z = atomic_numbers.long()
        in_table = (z >= 0) & (z <= MAX_ATOMIC_NUMBER)
        species = torch.where(in_table, self.species_of_z[z.clamp(0, MAX_ATOMIC_NUMBER)], -1)
        if bool((species < 0).any()):
            unknown = sorted({int(v) for v in z[species < 0].tolist()})
            names = [f"{chemical_symbols[v]} (Z={v})" if 0 < v <= MAX_ATOMIC_NUMBER else f"Z={v}" for v in unknown]
            known = ", ".join(chemical_symbols[v] for v in self.elements)
            raise ValueError(f"Potential: element {', '.join(names)} is not in the model's elements [{known}]")
        return species

    def forward(
        self,
        batch,
        compute_forces: bool = True,
        compute_stress: bool = False,
        training: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Predictions for a torch_geometric `Data`/`Batch` with the fields of docs/design.md.

        Returns `energy` (G,) eV, `node_energy` (n,) eV, and on request `forces` (n, 3) eV/Å,
        `stress` (G, 3, 3) eV/Å³ and `virials` (G, 3, 3) eV (= -V σ); stress and virials are NaN
        for graphs without periodicity or with a zero-volume cell. `direct_forces` (n, 3) eV/Å
        when the head is enabled. `training=True` keeps the graph of the derivatives so that
        energy, force and stress losses can be backpropagated; with `training=False` every
        output is detached (no autograd graph is kept after the call).
        """
        dtype = self.atomic_energies.dtype
        pos = batch.pos.to(dtype)  # (n, 3) Å
        cell = batch.cell.to(dtype).reshape(-1, 3, 3)  # (G, 3, 3) Å
        node_batch = getattr(batch, "batch", None)
        if node_batch is None:  # a single `Data`
            node_batch = torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device)
        species = self.species(batch.z)

        with torch.set_grad_enabled(torch.is_grad_enabled() or compute_forces or compute_stress):
            if compute_forces:
                pos = pos.detach().requires_grad_(True)
            strain = torch.zeros_like(cell, requires_grad=True) if compute_stress else None  # (G, 3, 3)
            inputs = self._inputs(batch, species, pos, cell, strain, node_batch)
            if self.inner_cutoffs is not None:
                inputs.edge_weights = self._inner_edge_weights(species, inputs)
            features = self.backbone(inputs)
            atom_heads = self._atom_heads(batch, node_batch, cell.shape[0])  # (n,) or None
            if atom_heads is None:
                learned = self.readout(features.scalars).squeeze(-1)  # (n,)
                scale, shift, references = self.scale, self.shift, self.atomic_energies[species]
            else:
                learned = self.readout(features.scalars, atom_heads)  # (n,)
                scale, shift = self.scale[atom_heads], self.shift[atom_heads]
                references = self.atomic_energies[atom_heads, species]
            if self.reference_energies == "isolated":  # a lone atom is exactly its reference
                within = torch.linalg.norm(inputs.edge_vectors.detach(), dim=-1) < self.cutoff  # (E,)
                has_neighbours = torch.zeros_like(learned, dtype=torch.bool).index_fill(0, inputs.edge_index[1][within], True)
                learned = torch.where(has_neighbours, learned, torch.zeros_like(learned))
            node_energy = scale * learned + shift + references
            if self.pair_repulsion is not None:  # same (strained) edge vectors: forces/stress by autograd
                node_energy = node_energy + self.pair_repulsion(species, inputs.edge_index, inputs.edge_vectors)
            energy = node_energy.new_zeros(cell.shape[0]).index_add(0, node_batch, node_energy)
            outputs = {"energy": energy, "node_energy": node_energy}
            if compute_forces or compute_stress:
                forces_from = pos if compute_forces else None
                outputs.update(self._derivatives(energy, forces_from, strain, cell, batch.pbc, training))
        if self.direct_force_head is not None:
            outputs["direct_forces"] = self._direct_forces(features)
        if not training:  # inference: free the autograd graph
            outputs = {key: value.detach() for key, value in outputs.items()}
        return outputs

    def _inner_edge_weights(self, species: torch.Tensor, inputs: BackboneInputs) -> torch.Tensor | None:
        """(E,) in [0, 1]: how much each edge counts for the learned model (1 at and above its inner
        cutoff); None when every edge is at or above it (the usual training batch), which is the same
        (weight 1 and zero slope) without the work."""
        sender, receiver = inputs.edge_index
        inner = self.inner_cutoffs.to(inputs.edge_vectors.dtype)[species[receiver], species[sender]]  # (E,) Å
        distances = torch.linalg.norm(inputs.edge_vectors, dim=-1)  # (E,) Å
        if not bool((distances.detach() < inner).any()):
            return None
        return inner_switch(distances, inner, self.inner_cutoff_width)

    def _inputs(self, batch, species, pos, cell, strain, node_batch) -> BackboneInputs:
        """The backbone's inputs for the (optionally strained) geometry."""
        if strain is not None:  # displacement trick: r -> r (1 + ε), cell rows a -> a (1 + ε), ε symmetric
            symmetric = 0.5 * (strain + strain.transpose(-1, -2))
            pos = pos + torch.einsum("ni,nij->nj", pos, symmetric[node_batch])
            cell = cell + torch.bmm(cell, symmetric)
        shifts = batch.shifts.to(pos.dtype)
        return BackboneInputs(
            species=species,
            edge_index=batch.edge_index,
            edge_vectors=edge_vectors(pos, cell, batch.edge_index, shifts, node_batch),
            batch=node_batch,
            num_graphs=cell.shape[0],
            node_condition=self._node_condition(batch, node_batch, cell.shape[0]),
            pos=pos,
            cell=cell,
            shifts=shifts,
        )

    def _atom_heads(self, batch, node_batch: torch.Tensor, num_graphs: int) -> torch.Tensor | None:
        """Each atom's head index (n,) from ``batch.head`` (G,) for a multi-head model; None for a single head."""
        if self.heads is None:
            return None
        head = getattr(batch, "head", None)
        if head is None:
            raise UnknownHeadError(
                f"Potential: this model has heads {', '.join(self.heads)} but the batch has no `head` "
                "(one index per structure into the heads)"
            )
        head = head.reshape(-1).to(device=node_batch.device, dtype=torch.long)
        if head.shape[0] != num_graphs:
            raise ValueError(f"Potential: batch.head has {head.shape[0]} entries for {num_graphs} structures")
        if bool(((head < 0) | (head >= len(self.heads))).any()):
            raise UnknownHeadError(
                f"Potential: batch.head {sorted(set(head.tolist()))} outside 0..{len(self.heads) - 1} "
                f"(heads {', '.join(self.heads)})"
            )
        return head[node_batch]

    def _node_condition(self, batch, node_batch: torch.Tensor, num_graphs: int) -> torch.Tensor | None:
        if self.conditioning is None:
            return None
        charge = getattr(batch, "charge", None)
        spin = getattr(batch, "spin", None)
        charge = torch.zeros(num_graphs, dtype=torch.long, device=node_batch.device) if charge is None else charge
        spin = torch.ones(num_graphs, dtype=torch.long, device=node_batch.device) if spin is None else spin
        return self.conditioning(charge, spin)[node_batch]  # (n, condition_dim)

    @staticmethod
    def _derivatives(energy, pos, strain, cell, pbc, training: bool) -> dict[str, torch.Tensor]:
        """forces = -dE/dpos (if pos is given); stress = (1/V) dE/dε, virials = -dE/dε (if strain is)."""
        wrt = [t for t in (pos, strain) if t is not None]
        grads = [None] * len(wrt)
        if energy.requires_grad:  # False only when nothing depends on geometry or parameters
            grads = torch.autograd.grad(energy.sum(), wrt, create_graph=training, allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, wrt)]
        outputs = {}
        if pos is not None:
            outputs["forces"] = -grads[0]
        if strain is not None:
            volume = torch.linalg.det(cell).abs()  # (G,) Å³, unstrained cell
            periodic = pbc.reshape(-1, 3).any(dim=-1).to(volume.device) & (volume > 0)
            dE_dstrain = torch.where(periodic[:, None, None], grads[-1], torch.full_like(grads[-1], float("nan")))
            outputs["virials"] = -dE_dstrain
            outputs["stress"] = dE_dstrain / torch.where(periodic, volume, torch.ones_like(volume))[:, None, None]
        return outputs

    def _direct_forces(self, features) -> torch.Tensor:
        if features.vectors is not None and self.backbone.num_vector_features > 0:
            return self.direct_force_head(features.vectors.transpose(1, 2)).squeeze(-1)  # (n, 3)
        return self.direct_force_head(features.scalars)
