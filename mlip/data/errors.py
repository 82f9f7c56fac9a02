"""The one error type of the data layer.

Every problem with a dataset file or a structure is reported as `MLIPDataError`, whose message
always names *where* the problem is: the file, the structure (index, and id when known) and the
field. A user reading the message should be able to open the file and find the bad value.
"""

from __future__ import annotations

import os


class MLIPDataError(ValueError):
    """Bad data: a malformed structure, a corrupt file, an unsupported schema version.

    Attributes ``file``, ``index``, ``structure_id``, ``field`` and ``reason`` hold the pieces of
    the message separately, for programs that want to react to them.
    """

    def __init__(
        self,
        reason: str,
        file: str | os.PathLike | None = None,
        *,
        index: int | None = None,
        structure_id: str | None = None,
        field: str | None = None,
    ) -> None:
        self.reason = reason
        self.file = None if file is None else os.fspath(file)
        self.index = None if index is None else int(index)
        self.structure_id = structure_id or None
        self.field = field
        super().__init__(self._compose())

    def _compose(self) -> str:
        if self.file is None and self.index is None and self.structure_id is None and self.field is None:
            return self.reason  # re-raised from a message alone (e.g. by a DataLoader worker)
        where = [f"file {self.file!r}" if self.file is not None else "file <unknown>"]
        if self.index is not None:
            structure = f"structure {self.index}"
            if self.structure_id:
                structure += f" (id {self.structure_id!r})"
            where.append(structure)
        elif self.structure_id:  # e.g. the graph builder, which knows the id but not the index
            where.append(f"structure (id {self.structure_id!r})")
        else:
            where.append("structure -")
        where.append(f"field {self.field!r}" if self.field else "field -")
        return f"{', '.join(where)}: {self.reason}"

    def __reduce__(self):
        # Keep the structured attributes when the error crosses a process boundary.
        keywords = {"index": self.index, "structure_id": self.structure_id, "field": self.field}
        return (_rebuild_error, (self.reason, self.file, keywords))


def _rebuild_error(reason: str, file: str | None, keywords: dict) -> MLIPDataError:
    return MLIPDataError(reason, file, **keywords)
