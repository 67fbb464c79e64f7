"""A model file mapped read-only, as every file-backed source reads it.

Opening checks the file can be read and maps it whole; :meth:`MappedFile.buffer` hands out a
uint8 view without copying. The file's identity (device, inode, size, modification time) is
kept from the moment it was opened, so a reader can tell that the file was replaced, truncated
or rewritten underneath it (:meth:`MappedFile.check_unchanged`).
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np

from nntrtool.errors import SourceError


class MappedFile:
    """A file mapped read-only; subclasses parse its header in ``__init__`` after this one."""

    #: What the file is, for messages ("a safetensors file", "a GGUF file").
    what = "a model file"
    #: Fewer bytes than this cannot be the format at all.
    min_size = 1

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._map: mmap.mmap | None = None
        self._buf: np.ndarray | None = None
        try:
            with open(self.path, "rb") as fh:
                st = os.fstat(fh.fileno())
                self.size = st.st_size
                if self.size < self.min_size:
                    raise SourceError(
                        f"{self.path}: not {self.what} ({self.size} bytes, too short for a header)"
                    )
                self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise SourceError(f"cannot open {self.path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise SourceError(f"cannot map {self.path}: {exc}") from None
        self._identity = _identity(st)
        self._buf = np.frombuffer(self._map, dtype=np.uint8)

    def buffer(self) -> np.ndarray:
        """The whole file as a read-only uint8 array over the map."""
        if self._buf is None:
            raise SourceError(f"{self.path} was closed; open the model again to read it")
        return self._buf

    def mapping(self) -> mmap.mmap:
        """The read-only map of the whole file."""
        if self._map is None:
            raise SourceError(f"{self.path} was closed; open the model again to read it")
        return self._map

    def check_unchanged(self) -> None:
        """SourceError when the file on disk is no longer the one that was opened."""
        try:
            now = _identity(os.stat(self.path))
        except OSError as exc:
            now = None
            why = exc.strerror or str(exc)
        else:
            why = "it was replaced, truncated or rewritten"
        if now != self._identity:
            raise SourceError(
                f"{self.path} changed while being read ({why}); nothing was written: "
                "run again once the file is complete"
            )

    def close(self) -> None:
        """Drop the map. Arrays still viewing it keep it alive until they are gone."""
        self._buf = None
        mm, self._map = self._map, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                # Views handed out earlier still use the map; it is unmapped when they go.
                pass

    def __enter__(self) -> MappedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
