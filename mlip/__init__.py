"""mlip: a framework for training machine-learned interatomic potentials."""

__version__ = "0.1.0"


def load(path, device="cpu", dtype=None):
    """Load a model exported by training (``best_model.pt``) as a `Potential`, built in ``dtype``
    (None: the file's precision); see `mlip.export.load`."""
    from mlip.export import load as _load

    return _load(path, device=device, dtype=dtype)
