"""Outputs that never carry their final name half-written, and the signals that end a run.

Every command that writes (convert, export, repack, imatrix) builds its result under a
temporary name beside the final path and renames it into place only when it is complete.
The temporary name is recognisably ours: ``.<final name>.nntrtool-<pid>-<random><suffix>``.
After a run is killed outright (SIGKILL, power loss) only such a name can remain; the next run
over the same output removes those whose process is gone (:func:`remove_stale`).

``--force`` replaces only an earlier output of nntrtool: an NNTR file (its magic), an export
folder (its ``nntr_config.json``) or an importance matrix (GGUF whose type is ``imatrix``).

SIGTERM and SIGHUP raise :class:`Interrupted` (a ``KeyboardInterrupt``) in the main thread, so
the same clean-up that Ctrl-C runs removes the temporary output; the entry point then prints
one line and exits ``128 + signal``.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from nntrtool import messages
from nntrtool.errors import OutputExistsError, UsageError

#: The part of every temporary name that marks it as nntrtool's.
TEMP_MARK = ".nntrtool-"
#: What the entry point prints when a signal ends a run.
INTERRUPTED_LINE = messages.INTERRUPTED
#: File a folder must hold to be an export of nntrtool.
EXPORT_MARKER = "nntr_config.json"

_NNTR_MAGIC = b"NNTR"
_GGUF_MAGIC = b"GGUF"


class Interrupted(KeyboardInterrupt):
    """A run ended by a signal; ``signum`` gives the exit status ``128 + signum``."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signum)
        self.signum = int(signum)


#: The signal that ended the run, once one has (a library above may swallow the exception).
received: int | None = None


def _raise_interrupted(signum: int, _frame: object) -> None:
    global received
    if received is None:
        received = int(signum)
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    """SIGINT, SIGTERM and SIGHUP end the run alike: clean-up runs, then exit 128 + signal."""
    global received
    received = None
    completed.clear()
    for name, default in (
        ("SIGINT", signal.default_int_handler),
        ("SIGTERM", signal.SIG_DFL),
        ("SIGHUP", signal.SIG_DFL),
    ):
        sig = getattr(signal, name, None)
        if sig is None:
            continue
        try:
            if signal.getsignal(sig) in (default, None):
                signal.signal(sig, _raise_interrupted)
        except (ValueError, OSError):  # not the main thread, or not settable here
            pass
    from nntrtool import lease

    lease.enable()  # mapped sources are leased: a writer makes this run stop (SIGIO), not die
    if sys.unraisablehook is sys.__unraisablehook__:
        sys.unraisablehook = _quiet_while_ending


def _quiet_while_ending(args: Any) -> None:
    """``sys.unraisablehook`` of the command line. An exception a signal handler raises in the
    main thread (an interruption, a source that changes) can land inside ``Thread.start``; the
    worker it was starting then reports an ignored exception. The run is ending and says why in
    one line, so such reports are dropped then; any other is shown as usual."""
    from nntrtool import lease

    if received is not None or lease.breaking():
        return
    sys.__unraisablehook__(args)


def exit_status(err: BaseException | None = None) -> int:
    """The exit status for an interruption: ``128 + signum`` (130 for Ctrl-C)."""
    if isinstance(err, Interrupted):
        return 128 + err.signum
    return 128 + (received if received is not None else int(signal.SIGINT))


# ----------------------------------------------------------------------------------------------
# temporary names


def temp_path(final: str | os.PathLike[str], suffix: str = ".tmp") -> Path:
    """A fresh temporary name for ``final``, in the same folder (so the rename is atomic)."""
    final = Path(final)
    tag = f"{TEMP_MARK}{os.getpid()}-{secrets.token_hex(3)}"
    return final.with_name(f".{final.name}{tag}{suffix}")


def _temp_pattern(final: Path) -> re.Pattern[str]:
    return re.compile(re.escape(f".{final.name}{TEMP_MARK}") + r"(\d+)-[0-9a-f]+\.[a-z.]+")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(final: str | os.PathLike[str]) -> list[Path]:
    """Remove temporary outputs for ``final`` left by runs whose process is gone."""
    final = Path(final)
    folder = final.parent if str(final.parent) else Path(".")
    pattern = _temp_pattern(final)
    removed: list[Path] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = pattern.fullmatch(name)
        if m is None or _alive(int(m.group(1))):
            continue
        path = folder / name
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed


#: Temporary outputs of this process not yet renamed or removed. A name is registered before
#: it is created, so a signal landing between the two cannot leak it: the entry point removes
#: whatever is still here when a run ends in an error or a signal (:func:`remove_leftovers`).
_live: set[Path] = set()


def register(path: Path) -> None:
    _live.add(Path(path))


def forget(path: Path | None) -> None:
    """``path`` was renamed into place or removed: nothing to clean up for it any more."""
    if path is not None:
        _live.discard(Path(path))


#: Outputs this run has renamed into place (complete, synced): a later signal keeps them.
completed: list[Path] = []


def mark_completed(path: Path) -> None:
    completed.append(Path(path))


def interrupted_line() -> str:
    """What to print when a signal ends the run: nothing written, or what was already done."""
    done = [p for p in completed if p.exists()]
    return messages.interrupted_after(done[-1]) if done else INTERRUPTED_LINE


def remove_leftovers() -> None:
    """Remove every temporary output this process still holds (after an error or a signal)."""
    for path in list(_live):
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        except OSError:
            pass
        _live.discard(path)


def make_temp_dir(final: str | os.PathLike[str], suffix: str = ".partial") -> Path:
    """Create a temporary folder for ``final``; a clear error if its folder cannot take it."""
    path = temp_path(final, suffix)
    register(path)
    try:
        os.mkdir(path)
    except OSError as err:
        forget(path)
        raise output_error(Path(final), err) from None
    return path


def output_error(final: Path, err: OSError) -> UsageError:
    """One line for an OSError met while creating or writing ``final``."""
    from nntrtool.errors import DiskFullError

    folder = final.parent if str(final.parent) else Path(".")
    if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG):
        return DiskFullError(messages.disk_full(folder))
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UsageError(messages.not_writable(folder, err.strerror or "permission denied"))
    if err.errno == errno.ENOENT:
        return UsageError(messages.folder_missing(final, folder))
    return UsageError(
        f"cannot write {final}: {err.strerror or err}; nothing was written: check the folder "
        "and the file system, or write the output elsewhere"
    )


# ----------------------------------------------------------------------------------------------
# what --force may replace


def _head(path: Path, n: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def is_nntr_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a regular file that starts with the NNTR magic."""
    p = Path(path)
    return p.is_file() and not p.is_symlink() and _head(p, 4) == _NNTR_MAGIC


def is_imatrix_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an importance matrix: a GGUF whose header says ``imatrix``, or
    llama.cpp's legacy ``.dat`` layout (by its name)."""
    p = Path(path)
    if not p.is_file() or p.is_symlink():
        return False
    head = _head(p, 1 << 16)
    if head[:4] == _GGUF_MAGIC:
        return b"imatrix" in head
    return p.suffix == ".dat"


def is_export_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder that ``nntrtool export`` wrote (it holds the marker)."""
    p = Path(path)
    return p.is_dir() and not p.is_symlink() and (p / EXPORT_MARKER).is_file()


_KINDS = {
    "nntr": (is_nntr_file, "an NNTR file"),
    "imatrix": (is_imatrix_file, "an importance matrix"),
    "export": (is_export_folder, "an export folder (it has no nntr_config.json)"),
}


def check_output_path(final: str | os.PathLike[str], force: bool, kind: str = "nntr") -> Path:
    """Check ``final`` can be written: its folder exists, it is not in the way, and with
    ``force`` it is an earlier output of nntrtool. Stale temporary outputs are removed."""
    final = Path(final)
    folder = final.parent if str(final.parent) else Path(".")
    is_ours, what = _KINDS[kind]
    if kind != "export" and final.is_dir():
        raise UsageError(messages.output_is_folder(final))
    if not folder.is_dir():
        raise UsageError(messages.folder_missing(final, folder))
    if final.exists() or final.is_symlink():
        if not force:
            raise OutputExistsError(messages.output_exists(final))
        if not is_ours(final):
            raise UsageError(messages.not_ours(final, what))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(messages.not_writable(folder))
    remove_stale(final)
    return final
