"""Writing NNTR v1 files: streaming, checksummed and atomic.

The header and directory are written first (every size follows from the shapes), then each
tensor's data as it is produced, in directory order and in as many chunks as the caller likes,
so memory does not grow with the model. The file is built under a temporary name beside the
target and renamed onto it only when every tensor is complete; any error or Ctrl-C removes it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from nntrtool.errors import DiskFullError, FormatError, NntrError, OutputExistsError, UsageError
from nntrtool.format.binary import TensorSpec, plan_file

_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
_ZEROS = bytes(4096)


def _as_bytes(data: Any) -> memoryview:
    """A flat byte view of ``data`` (bytes-like or numpy array of any dtype) without copying."""
    if isinstance(data, np.ndarray):
        if not data.flags.c_contiguous:
            data = np.ascontiguousarray(data)
        return memoryview(data.reshape(-1).view(np.uint8))
    view = memoryview(data)
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    return view.cast("B") if (view.format != "B" or view.ndim != 1) else view


class NntrWriter:
    """Write an NNTR file: ``with NntrWriter(path, config, specs) as w: w.write(name, data)``.

    ``write`` may be called several times per tensor (row chunks); tensors come in the order of
    ``specs``. An existing ``path`` raises :class:`OutputExistsError` unless ``force``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        config: dict,
        specs: list[TensorSpec],
        force: bool = False,
    ):
        self.path = Path(path)
        self.force = force
        self.specs = list(specs)
        self._plan = plan_file(config, self.specs)
        self.file_size = self._plan.file_size
        self.tmp_path: Path | None = None
        self._index = {spec.name: i for i, spec in enumerate(self.specs)}
        self._file: Any = None
        self._current = -1  # index of the tensor being written
        self._written = 0  # bytes of the current tensor written so far
        self._crcs = [0] * len(self.specs)
        self._done = False
        self._check_target()

    # -- setup --------------------------------------------------------------------------------
    def _check_target(self) -> None:
        from nntrtool.outputs import check_output_path

        check_output_path(self.path, self.force, "nntr")

    def _check_space(self) -> None:
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            return
        if self.path.is_file():
            free += self.path.stat().st_size  # replaced only at the end, but freed then
        if free < self.file_size:
            raise DiskFullError(
                f"not enough disk space for {self.path}: need {self.file_size} bytes, {free} "
                "free; nothing was written: free some space or write elsewhere"
            )

    def __enter__(self) -> NntrWriter:
        self.open()
        return self

    def open(self) -> None:
        """Create the temporary file and write the header and directory (``__enter__`` does this)."""
        if self._file is not None:
            return
        self._check_target()
        self._check_space()
        from nntrtool.outputs import forget, output_error, register, temp_path

        tmp = temp_path(self.path)
        register(tmp)  # before it exists: a signal in between cannot leak it
        self.tmp_path = tmp
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as err:
            forget(tmp)
            self.tmp_path = None
            raise output_error(self.path, err) from None
        self.tmp_path = tmp
        self._file = os.fdopen(fd, "wb", buffering=1 << 20)
        self._io(self._file.write, self._plan.header)
        self._pad_to(self._plan.data_start, len(self._plan.header))

    def _io(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except OSError as err:
            if err.errno in _DISK_FULL:
                raise DiskFullError(
                    f"disk full while writing {self.path} ({self.file_size} bytes needed); "
                    "free some space or write elsewhere"
                ) from None
            raise NntrError(
                f"cannot write {self.path}: {err.strerror or err}; nothing was written: check "
                "the disk that holds it, or write elsewhere"
            ) from None

    def _pad_to(self, target: int, pos: int) -> None:
        while pos < target:
            n = min(target - pos, len(_ZEROS))
            self._io(self._file.write, _ZEROS[:n])
            pos += n

    # -- data ---------------------------------------------------------------------------------
    def _finish_current(self, next_name: str | None) -> None:
        if self._current < 0:
            return
        spec = self.specs[self._current]
        need = self._plan.nbytes[self._current]
        if self._written != need:
            after = f" before '{next_name}' was started" if next_name else ""
            raise FormatError(
                f"tensor '{spec.name}' got {self._written} of its {need} bytes{after}"
            )

    def write(self, name: str, data: Any) -> None:
        """Append ``data`` (bytes-like or numpy array, any dtype) to tensor ``name``'s bytes."""
        if self._file is None:
            raise UsageError("NntrWriter.write called outside its 'with' block")
        if self._current < 0 or name != self.specs[self._current].name:
            index = self._index.get(name)
            if index is None:
                raise FormatError(f"tensor '{name}' is not in this file's directory")
            if index != self._current + 1:
                expected = (
                    self.specs[self._current + 1].name
                    if self._current + 1 < len(self.specs)
                    else None
                )
                raise FormatError(
                    f"tensor '{name}' written out of order: expected "
                    + (f"'{expected}'" if expected else "no more tensors")
                    + " (tensors are written in directory order)"
                )
            self._finish_current(name)
            self._current = index
            self._written = 0
            prev_end = (
                self._plan.offsets[index - 1] + self._plan.nbytes[index - 1]
                if index
                else self._plan.data_start
            )
            self._pad_to(self._plan.offsets[index], prev_end)
        view = _as_bytes(data)
        need = self._plan.nbytes[self._current]
        if self._written + view.nbytes > need:
            raise FormatError(
                f"tensor '{name}' got {self._written + view.nbytes} bytes, more than its {need}"
            )
        self._io(self._file.write, view)
        self._crcs[self._current] = zlib.crc32(view, self._crcs[self._current])
        self._written += view.nbytes

    # -- end ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Check every tensor is complete, patch checksums, sync, and rename onto ``path``."""
        if self._done or self._file is None:
            return
        try:
            self._finish_current(None)
            if self._current + 1 < len(self.specs):
                missing = self.specs[self._current + 1]
                raise FormatError(
                    f"tensor '{missing.name}' was never written "
                    f"({len(self.specs) - self._current - 1} of {len(self.specs)} tensors missing)"
                )
            f = self._file
            for pos, crc in zip(self._plan.crc_positions, self._crcs, strict=True):
                self._io(f.seek, pos)
                self._io(f.write, crc.to_bytes(4, "little"))
            self._io(f.flush)
            self._io(os.fsync, f.fileno())
            self._file = None
            self._io(f.close)
            if self.path.exists() and not self.force:
                raise OutputExistsError(
                    f"output {self.path} appeared while writing; use --force to overwrite it"
                )
            if self.path.exists() or self.path.is_symlink():
                from nntrtool.outputs import is_nntr_file

                if not is_nntr_file(self.path):  # something else took the name meanwhile
                    raise UsageError(
                        f"{self.path} appeared while writing and is not an NNTR file; "
                        "nothing was replaced: move it away or choose another name"
                    )
            self._io(os.replace, self.tmp_path, self.path)
            self._done = True
            _forget(self.tmp_path)
            from nntrtool.outputs import mark_completed

            mark_completed(self.path)
            _fsync_dir(self.path.parent)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop the temporary file; nothing at ``path`` changes."""
        f, self._file = self._file, None
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()
        if self.tmp_path is not None and not self._done:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp_path)
            _forget(self.tmp_path)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        # A writer dropped without close (a bug or an interpreter exit) leaves no temp file.
        try:
            if self._file is not None:
                self.abort()
        except Exception:
            pass


def _forget(path: Path | None) -> None:
    from nntrtool.outputs import forget

    forget(path)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
