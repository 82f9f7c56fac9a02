"""mlip: a framework for training machine-learned interatomic potentials."""

__version__ = "0.1.0"
