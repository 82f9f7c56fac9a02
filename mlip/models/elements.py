"""Element expansion: a pretrained `Potential`'s weights in a model that knows more elements.

Fine-tuning on data with elements the pretrained model does not know (`mlip.train.finetune`)
builds a new `Potential` of the same architecture whose element list is the pretrained one
followed by the new elements, then `transfer_weights` copies every weight of the pretrained
model into it:

* tensors whose shape does not depend on the elements are copied unchanged;
* per-element tensors (the shared species embedding table, a backbone's per-element weights;
  `Backbone.element_axes` / `Backbone.expand_element_tensor`) get the pretrained values for the
  known elements, exactly, and keep the new model's fresh initialisation for the new ones;
* the buffers that follow from the new model's own config (`species_of_z`, `atomic_energies`,
  `scale`, `shift`: reference energies in eV, scale in eV, shift in eV/atom) stay the new
  model's; `mlip.train.finetune` builds it with the references and scale/shift it chose.

So a structure of known elements only has the same energy and forces before the first
fine-tuning step, as long as the references, scale and shift are the pretrained ones.
"""

from __future__ import annotations

from mlip.models.potential import Potential

#: `Potential` buffers set from the new model's config, never copied from the pretrained model.
CONFIG_BUFFERS = ("species_of_z", "atomic_energies", "scale", "shift")


def new_elements(known: list[int], wanted: list[int]) -> list[int]:
    """The atomic numbers of ``wanted`` missing from ``known``, sorted."""
    return sorted(set(int(z) for z in wanted) - set(int(z) for z in known))


def expanded_elements(known: list[int], wanted: list[int]) -> list[int]:
    """``known`` in its order (so known species keep their index), then the new elements of ``wanted``."""
    return [int(z) for z in known] + new_elements(known, wanted)


def _readout_name(name: str, heads: list[int | None] | None) -> str:
    """The source tensor of a target readout tensor: ``readout.heads.<k>.rest`` of a multi-head
    target comes from ``readout.rest`` (single-head source, heads[k] None) or
    ``readout.heads.<heads[k]>.rest``; a single-head target's ``readout.rest`` from heads[0]."""
    if heads is None or not name.startswith("readout."):
        return name
    rest = name.removeprefix("readout.")
    if rest.startswith("heads."):
        _, index, rest = rest.split(".", 2)
        origin = heads[int(index)]
    else:
        origin = heads[0]
    return f"readout.{rest}" if origin is None else f"readout.heads.{origin}.{rest}"


def transfer_weights(source: Potential, target: Potential, readout_sources: list[int | None] | None = None) -> list[str]:
    """Load ``source``'s weights into ``target`` (see the module docstring); returns the names of
    the tensors that were expanded for new elements.

    ``readout_sources``: for each head of ``target`` (one entry for a single-head target), the
    head of ``source`` whose readout it starts from (None: ``source`` has a single head). None:
    the readouts correspond one to one (same heads).

    ``target`` must have ``source``'s architecture and ``source.elements`` as the first entries of
    its element list (`expanded_elements`). Raises ValueError otherwise, or for a tensor that
    changed shape and that the backbone does not say how to expand.
    """
    count = len(source.elements)
    if list(target.elements[:count]) != list(source.elements):
        raise ValueError(
            f"transfer_weights: the new model's elements {target.elements} must start with the pretrained "
            f"model's {source.elements} (in that order)"
        )
    if type(target.backbone) is not type(source.backbone):
        raise ValueError(
            f"transfer_weights: backbone {type(target.backbone).__name__} is not the pretrained "
            f"{type(source.backbone).__name__}"
        )
    source_state = source.state_dict()
    state, expanded, used = {}, [], set(CONFIG_BUFFERS)
    for name, initial in target.state_dict().items():
        if name in CONFIG_BUFFERS:
            state[name] = initial
            continue
        origin = _readout_name(name, readout_sources)
        if origin not in source_state:
            raise ValueError(f"transfer_weights: the pretrained model has no tensor {origin}")
        used.add(origin)
        value = source_state[origin].to(initial.dtype)
        if value.shape == initial.shape:
            state[name] = value
        elif name.startswith("backbone."):
            state[name] = target.backbone.expand_element_tensor(
                name.removeprefix("backbone."), value, initial, source.backbone
            )
            expanded.append(name)
        else:
            raise ValueError(
                f"transfer_weights: tensor {name} is {tuple(value.shape)} in the pretrained model and "
                f"{tuple(initial.shape)} in the new one; only backbone tensors may depend on the elements"
            )
    unused = sorted(name for name in set(source_state) - used if not name.startswith("readout.heads."))
    if unused:
        raise ValueError(f"transfer_weights: tensors of the pretrained model with no place in the new one: {unused[:5]}")
    target.load_state_dict(state)
    return expanded

