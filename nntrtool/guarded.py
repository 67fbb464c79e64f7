"""Reading a source file that may change while it is read, without ever dying of SIGBUS.

A memory-mapped file that another process truncates kills the reader with SIGBUS the moment a
page past the new end is touched; Python cannot turn that into an exception. Tensor data is
therefore read with ``os.preadv`` into fresh buffers: a file that shrank gives a short read,
which becomes one :class:`~nntrtool.errors.SourceError` naming the file. Each read also
compares the file's size and modification time (and the path's inode) with what they were at
open, so a file rewritten or replaced while it is read is refused the same way rather than
mixing old and new bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from nntrtool.errors import SourceError

#: Largest single read: Linux transfers at most about 2 GiB per call anyway.
_MAX_READ = 1 << 30


def changed_error(path: Path, detail: str) -> SourceError:
    """The one line for a source that changed while nntrtool was reading it."""
    from nntrtool.messages import source_changed

    return SourceError(source_changed(path, detail))


class GuardedFile:
    """An open source file read with ``pread``; every read checks the file is unchanged."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        try:
            self._fd: int | None = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise SourceError(f"cannot open {self.path}: {exc.strerror or exc}") from None
        st = os.fstat(self._fd)
        self.size = st.st_size
        self._ident = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise SourceError(f"{self.path} was closed; open the model again to read it")
        return self._fd

    def check(self) -> None:
        """Raise if the file changed since it was opened (size, mtime, or replaced on disk)."""
        st = os.fstat(self.fd)
        if st.st_size != self._ident[0]:
            raise changed_error(self.path, f"it was {self._ident[0]} bytes, now {st.st_size}")
        if st.st_mtime_ns != self._ident[1]:
            raise changed_error(self.path, "it was rewritten")
        try:
            now = os.stat(self.path)
        except OSError:
            raise changed_error(self.path, "it was removed") from None
        if (now.st_ino, now.st_dev) != self._ident[2:]:
            raise changed_error(self.path, "it was replaced by another file")

    def read(self, offset: int, nbytes: int) -> np.ndarray:
        """``nbytes`` bytes from ``offset`` as a new writable uint8 array."""
        out = np.empty(nbytes, dtype=np.uint8)
        self.read_into(out, offset)
        return out

    def read_into(self, out: np.ndarray, offset: int) -> None:
        """Fill the contiguous array ``out`` with the file's bytes from ``offset``."""
        view = memoryview(out.reshape(-1).view(np.uint8))
        fd, got, total = self.fd, 0, view.nbytes
        while got < total:
            try:
                n = os.preadv(fd, [view[got : got + _MAX_READ]], offset + got)
            except OSError as exc:
                raise SourceError(f"cannot read {self.path}: {exc.strerror or exc}") from None
            if n == 0:
                self.check()  # names what changed, if anything did
                raise changed_error(self.path, f"it ends before byte {offset + total}")
            got += n
        self.check()

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
