"""A model file as every file-backed source reads it: mapped for its header, read with guarded
``pread`` for its tensors.

Opening checks the file can be read and maps it whole (:meth:`MappedFile.buffer` views the
header without copying). Tensor bytes come from :meth:`MappedFile.read_bytes`, through
:class:`~nntrtool.guarded.GuardedFile`: a file truncated, rewritten or replaced while it
is read is one :class:`SourceError` naming it, never a SIGBUS death
(:meth:`MappedFile.check_unchanged` asks the same at any time).
"""

from __future__ import annotations

import contextlib
import mmap
import os
from pathlib import Path

import numpy as np

from nntrtool.errors import SourceError
from nntrtool.guarded import GuardedFile, changed_error


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
                        f"{self.path}: not {self.what} ({self.size} bytes, too short for a "
                        "header); the file is cut short: download or save it again"
                    )
                self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise SourceError(f"cannot open {self.path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise SourceError(f"cannot map {self.path}: {exc}") from None
        self._buf = np.frombuffer(self._map, dtype=np.uint8)
        self._file: GuardedFile | None = GuardedFile(self.path)
        if self._file.size != self.size:
            self.close()
            raise changed_error(self.path, f"it was {self.size} bytes, now {st.st_size}")

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

    def read_bytes(self, lo: int, hi: int) -> np.ndarray:
        """Bytes ``lo:hi`` of the file as a new read-only array, read (not mapped), so a file
        that changes meanwhile is one SourceError instead of a SIGBUS."""
        if self._file is None:
            raise SourceError(f"{self.path} was closed; open the model again to read it")
        out = self._file.read(lo, hi - lo)
        out.flags.writeable = False
        return out

    def check_unchanged(self) -> None:
        """SourceError when the file on disk is no longer the one that was opened."""
        if self._file is not None:
            self._file.check()

    def close(self) -> None:
        """Drop the map. Arrays still viewing it keep it alive until they are gone."""
        self._buf = None
        f, self._file = getattr(self, "_file", None), None
        if f is not None:
            f.close()
        mm, self._map = self._map, None
        if mm is not None:
            # Views handed out earlier may still use the map; it is unmapped when they go.
            with contextlib.suppress(BufferError):
                mm.close()

    def __enter__(self) -> MappedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
