"""Writing an export folder: the weight file in one pass with bounded memory, then the JSON
and tokenizer files, all in a temporary folder renamed into place at the end.

F32 is copied (linear weights transposed to ``[in, out]``), Q6_K is copied, Q4_0 is re-laid
losslessly into the CPU layout of the chosen ISA and Q4_K into 8-row interleaved blocks after a
2-byte qscheme value. Linear layers whose stored type differs from the folder's are re-encoded
from their values (the plan names them); F16 is written transposed like F32.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from nntrtool.errors import DiskFullError, UsageError
from nntrtool.export.export_plan import ExportPlan, TensorExport
from nntrtool.progress import ProgressLike
from nntrtool.qtypes import Q4_0
from nntrtool.units import human_bytes

#: The Q4_0 layout nntrainer's CPU kernels expect, per instruction set.
ISA_LAYOUTS: dict[str, str] = {"x86": "q4_0_8", "arm": "q4_0_4"}
#: How Q4_K linear layers are written (see ``nntrtool.export.q4_k_x8``).
Q4_K_OUT = "q4_k_x8"
#: Working-set budget per write: bounds memory whatever the tensor size.
DEFAULT_CHUNK_BYTES = 64 << 20


def _write_all(fd: int, data: np.ndarray, offset: int) -> None:
    view = memoryview(np.ascontiguousarray(data)).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


class _BackgroundWriter:
    """Writes on one thread while the caller prepares the next chunk (both release the GIL).

    At most ``depth`` writes are in flight, so memory stays a few chunks whatever the model.
    """

    def __init__(self, fd: int, depth: int = 2):
        from concurrent.futures import ThreadPoolExecutor

        self.fd = fd
        self.depth = depth
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="nntrtool-export-write")
        self._pending: list[Any] = []

    def write(
        self, data: np.ndarray, offset: int, after: Any = None, stride: int | None = None
    ) -> None:
        """Queue ``data`` for ``offset``; ``after()`` runs once it is written."""
        while len(self._pending) >= self.depth:
            self._pending.pop(0).result()
        self._pending.append(self._pool.submit(self._job, data, offset, after, stride))

    def write_rows(self, block: np.ndarray, offset: int, stride: int) -> None:
        """Queue each row ``i`` of ``block`` for ``offset + i * stride``, as one job."""
        self.write(block, offset, stride=stride)

    def _job(self, data: np.ndarray, offset: int, after: Any, stride: int | None) -> None:
        if stride is None:
            _write_all(self.fd, data, offset)
        else:
            for i in range(data.shape[0]):
                _write_all(self.fd, data[i], offset + i * stride)
        if after is not None:
            after()

    def close(self) -> None:
        """Wait for every queued write; re-raises the first failure."""
        try:
            for future in self._pending:
                future.result()
        finally:
            self._pending.clear()
            self._pool.shutdown(wait=True)


def _transpose(a: np.ndarray) -> np.ndarray:
    """``a.T`` made contiguous, in strips of 16 rows: about 8x numpy's one-shot copy, whose
    scattered writes miss the cache (measured 1.1-1.4 GB/s against 0.17 GB/s)."""
    rows, cols = a.shape
    out = np.empty((cols, rows), dtype=a.dtype)
    for r0 in range(0, rows, 16):
        out[:, r0 : r0 + 16] = a[r0 : r0 + 16].T
    return out


def _relayout_backend(plan: ExportPlan) -> str:
    """numpy or numba for the Q4_0 re-layouts: a small model skips numba's compile."""
    from nntrtool.quant.kernel_cost import choose_backend, repack_use

    uses = []
    for t in plan.tensors:
        if t.out_type in ISA_LAYOUTS.values() and not _same_layout(t):
            uses.append(repack_use(t.numel))
            if t.source_layout is not None:
                uses.append(repack_use(t.numel, unpack=True))
    return choose_backend("auto", uses)


def _same_layout(t: TensorExport) -> bool:
    return t.source_layout is not None and t.source_layout.name == t.out_type


def _write_tensor(
    w: _BackgroundWriter,
    offset: int,
    nf: Any,
    t: TensorExport,
    progress: ProgressLike | None,
    budget: int,
    backend: str = "auto",
) -> None:
    """Queue one tensor for ``offset``; source pages are dropped as soon as they are used."""
    from nntrtool.memory import release_pages

    raw = np.asarray(nf.raw(t.slot.name))
    name = t.slot.name
    if t.requant_from is not None or t.out_type in (Q4_K_OUT, "f16"):
        _write_recoded(w, offset, raw, t, progress, budget)
        return
    if t.transposed:
        rows, cols = t.slot.shape  # source [out, in]; written [in, out]
        src = raw.view(np.float32).reshape(rows, cols)
        # a band of whole source rows at a time: contiguous to read, and its transpose lands
        # as one segment in each output row, so memory stays at a few bands whatever the size
        band = max(1, budget // (cols * 4))
        for r0 in range(0, rows, band):
            part = src[r0 : r0 + band]
            block = _transpose(part)  # [cols, band]
            release_pages(part)
            if part.shape[0] == rows:
                w.write(block, offset)
            else:
                # row c of the block belongs at row c of the output, columns r0 onwards
                w.write_rows(block, offset + r0 * 4, rows * 4)
            if progress is not None:
                progress.advance(part.size, name)
        return
    if t.out_type in ISA_LAYOUTS.values():
        from nntrtool.quant import repack, unpack

        rows, cols = t.slot.shape
        row_bytes = Q4_0.row_bytes(cols)
        src = raw.reshape(rows, row_bytes)
        group = 8  # a multiple of every layout's row group, so chunks never split a group
        step = max(group, budget // row_bytes // group * group)
        same = _same_layout(t)
        for r0 in range(0, rows, step):
            chunk = src[r0 : r0 + step]
            if same:
                w.write(chunk, offset + r0 * row_bytes, after=lambda c=chunk: release_pages(c))
            else:
                plain = (
                    unpack(chunk, t.source_layout, backend=backend) if t.source_layout else chunk
                )
                w.write(repack(plain, t.out_type, backend=backend), offset + r0 * row_bytes)
                release_pages(chunk)
            if progress is not None:
                progress.advance(chunk.shape[0] * cols, name)
        return
    flat = raw.reshape(-1)
    per_byte = t.numel / max(1, t.nbytes)
    for b0 in range(0, flat.size, budget):
        part = flat[b0 : b0 + budget]
        w.write(part, offset + b0, after=lambda p=part: release_pages(p))
        if progress is not None:
            progress.advance(int(round(part.size * per_byte)), name)


def _values(raw: np.ndarray, t: TensorExport, r0: int, r1: int) -> np.ndarray:
    """float32 values of rows ``r0:r1`` of a stored ``[out, in]`` matrix."""
    from nntrtool.quant import dequantize, unpack

    rows, cols = t.slot.shape
    ttype = t.source_type
    if ttype.name in ("f32", "f16"):
        dtype = np.float32 if ttype.name == "f32" else np.float16
        return raw.view(dtype).reshape(rows, cols)[r0:r1].astype(np.float32)
    chunk = raw.reshape(rows, ttype.row_bytes(cols))[r0:r1]
    if t.source_layout is not None:
        chunk, ttype = unpack(chunk, t.source_layout), Q4_0
    return dequantize(chunk, ttype, (r1 - r0, cols))


def _write_recoded(
    w: _BackgroundWriter,
    offset: int,
    raw: np.ndarray,
    t: TensorExport,
    progress: ProgressLike | None,
    budget: int,
) -> None:
    """A linear layer in the folder's type: Q4_K blocks interleaved by 8 rows after the qscheme
    value, F16 transposed, or Q4_0 / F32 from another stored type; in bands of whole groups."""
    from nntrtool.export.q4_k_x8 import QSCHEME_Q4_KX8, quantize_q4_k, to_x8
    from nntrtool.memory import release_pages
    from nntrtool.quant import quantize, repack

    rows, cols = t.slot.shape
    source_row = raw.size // rows
    if t.prefix:
        w.write(np.array([QSCHEME_Q4_KX8], dtype="<u2").view(np.uint8), offset)
        offset += t.prefix
    band = max(8, budget // (cols * 4) // 8 * 8)
    for r0 in range(0, rows, band):
        r1 = min(rows, r0 + band)
        if t.out_type == Q4_K_OUT:
            row_bytes = (t.nbytes - t.prefix) // rows
            if t.requant_from is None:
                blocks = raw.reshape(rows, row_bytes)[r0:r1]
            else:
                blocks = quantize_q4_k(_values(raw, t, r0, r1))
            w.write(to_x8(blocks), offset + r0 * row_bytes)
        elif t.out_type == "f32" and not t.transposed:  # a widened embedding, as is
            w.write(_values(raw, t, r0, r1), offset + r0 * cols * 4)
        elif t.out_type in ISA_LAYOUTS.values():
            blocks = quantize(_values(raw, t, r0, r1), Q4_0)
            w.write(repack(blocks, t.out_type), offset + r0 * Q4_0.row_bytes(cols))
        else:
            dtype = np.dtype("<f2" if t.out_type == "f16" else "<f4")
            vals = _values(raw, t, r0, r1)
            with np.errstate(over="ignore"):
                part = vals.astype(dtype)
            if not np.isfinite(part).all():
                raise UsageError(
                    f"{t.slot.name} holds values beyond float16's range (|x| > 65504); "
                    "export it with --linear-type q4_k or f32"
                )
            block = _transpose(part)  # [cols, r1 - r0]
            if r1 - r0 == rows:
                w.write(block, offset)
            else:
                w.write_rows(block, offset + r0 * dtype.itemsize, rows * dtype.itemsize)
        release_pages(raw[r0 * source_row : r1 * source_row])
        if progress is not None:
            progress.advance((r1 - r0) * cols, t.slot.name)


def _within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except (ValueError, OSError):
        return False
    return True


def check_output(out_dir: Path, force: bool, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse an existing ``out_dir`` without ``force``, anything there that is not an earlier
    export, a missing or unwritable parent, or an ``out_dir`` holding one of the ``inputs``
    (replacing it would delete them)."""
    from nntrtool.outputs import check_output_path

    if (out_dir.exists() or out_dir.is_symlink()) and force:
        for path in inputs:
            if _within(path, out_dir):
                raise UsageError(
                    f"{path} is inside {out_dir}, which --force would replace; export to "
                    "another folder"
                )
    check_output_path(out_dir, force, "export")


def _check_space(parent: Path, need: int) -> None:
    try:
        free = shutil.disk_usage(parent).free
    except OSError:
        return
    if free < need:
        raise DiskFullError(
            f"{parent} has {human_bytes(free)} free but the export needs about "
            f"{human_bytes(need)}; free some space or choose another folder"
        )


def write_export(
    plan: ExportPlan,
    nf: Any,
    out_dir: str | os.PathLike[str],
    *,
    force: bool = False,
    progress: ProgressLike | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> list[str]:
    """Write the planned folder atomically; returns the names of the files written."""
    out_dir = Path(os.path.abspath(os.fspath(out_dir)))
    inputs = tuple(plan.tokenizer_sources) + ((plan.source,) if plan.source else ())
    check_output(out_dir, force, inputs)
    extra = sum(p.stat().st_size for p in plan.tokenizer_sources) + (1 << 20)
    _check_space(out_dir.parent, plan.nbytes + extra)

    from nntrtool.outputs import forget, make_temp_dir, mark_completed, output_error, temp_path

    tmp = make_temp_dir(out_dir)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        files = [plan.model_file_name]
        fd = os.open(tmp / plan.model_file_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            writer = _BackgroundWriter(fd)
            backend = _relayout_backend(plan)
            try:
                offset = 0
                for t in plan.tensors:
                    _write_tensor(
                        writer, offset, nf, t, progress, max(1, int(chunk_bytes)), backend
                    )
                    offset += t.nbytes
            finally:
                writer.close()
        finally:
            os.close(fd)
        check = getattr(nf, "check_unchanged", None)
        if check is not None:  # the source must still be what was read, before any rename
            check()
        written = (tmp / plan.model_file_name).stat().st_size
        if written != plan.nbytes:  # a bug, not a user error: never ship a bad file
            raise RuntimeError(f"wrote {written} bytes, planned {plan.nbytes}")
        for name, obj in (
            ("config.json", plan.config),
            ("generation_config.json", plan.generation_config),
            ("nntr_config.json", plan.nntr_config),
        ):
            (tmp / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", "utf-8")
            files.append(name)
        for src in plan.tokenizer_sources:
            shutil.copyfile(src, tmp / src.name)
            files.append(src.name)
        if out_dir.exists():
            old = temp_path(out_dir, ".old")
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
        forget(tmp)
        mark_completed(out_dir)
        return files
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        forget(tmp)
        check = getattr(nf, "check_unchanged", None)
        if check is not None:  # a source cut short fails the copy (EFAULT): say so instead
            check()
        raise output_error(out_dir, err) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
