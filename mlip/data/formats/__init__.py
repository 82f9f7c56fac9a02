"""Readers (and two writers) of foreign dataset formats, one module per format.

Every reader is a generator of `Structure` objects: it never holds more than one structure (or
one MPtrj material) in memory, so converting a dataset larger than memory works.

* ``extxyz`` / ``ase``  any file `ase.io.iread` understands (`read_ase`, `read_extxyz`; ase_files.py)
* ``asedb``             an ASE database, e.g. ``*.db`` (`read_asedb`; asedb.py)
* ``aselmdb``           fairchem's ASE-LMDB shards (OMol25, OMat24, ...), read without fairchem
                        (`read_aselmdb`, `write_aselmdb`; aselmdb.py)
* ``mptrj``             the MPtrj JSON of CHGNet (`read_mptrj`; mptrj.py), without pymatgen
* ``mace-hdf5``         the HDF5 files of MACE's ``preprocess_data.py`` (`read_mace_hdf5`,
                        `write_mace_hdf5`; mace_hdf5.py)
* ``mlip``              an mlip HDF5 file (`read_mlip_hdf5`; mlip_hdf5.py)

The ASE-style readers take a `LabelKeys` (labels.py: which key holds which label, and the one
lookup they share); value parsing and error location are in values.py. Units out are ASE's:
Å, eV, eV/Å, eV/Å³ with ASE's stress sign. A label absent from the input stays ``None``
(masked downstream), never zeros. Bad input raises `MLIPDataError` naming the input file, the
structure index (and id) and the field. Format detection and conversion: `mlip.data.convert`.
"""

from mlip.data.formats.ase_files import read_ase, read_extxyz
from mlip.data.formats.asedb import read_asedb
from mlip.data.formats.aselmdb import ASELMDB_RESERVED_KEYS, read_aselmdb, write_aselmdb
from mlip.data.formats.labels import KEY_OPTIONS, LabelKeys
from mlip.data.formats.mace_hdf5 import read_mace_hdf5, write_mace_hdf5
from mlip.data.formats.mlip_hdf5 import read_mlip_hdf5
from mlip.data.formats.mptrj import KBAR_TO_EV_PER_A3, MPTRJ_ENERGY_LABELS, read_mptrj

__all__ = [
    "ASELMDB_RESERVED_KEYS",
    "KBAR_TO_EV_PER_A3",
    "KEY_OPTIONS",
    "MPTRJ_ENERGY_LABELS",
    "LabelKeys",
    "read_ase",
    "read_asedb",
    "read_aselmdb",
    "read_extxyz",
    "read_mace_hdf5",
    "read_mlip_hdf5",
    "read_mptrj",
    "write_aselmdb",
    "write_mace_hdf5",
]
