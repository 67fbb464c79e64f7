"""Rewriting the Q4_0 tensors of an NNTR file into another CPU layout, without requantizing.

Owns the per-tensor decision (repack, unpack, relayout, copy, or leave plain because the rows do
not divide by the group), the update of the config's record of the layout and per-tensor plan so
that the result is the file ``convert --repack-format`` would have written, and the streaming
copy into an atomically written new file.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nntrtool.errors import NntrError, UsageError
from nntrtool.progress import ProgressFactory, ProgressLike
from nntrtool.qtypes import LAYOUTS, Q4_0, Q4_0_REPACKED, RepackLayout, display_name

#: Bytes per chunk when streaming a tensor into the new file.
CHUNK_BYTES = 16 << 20
#: Row chunks are whole multiples of this many rows, so they hold whole groups of every layout.
_ROW_MULTIPLE = math.lcm(*(layout.rows for layout in LAYOUTS.values()))

#: What happens to a tensor.
COPY = "copy"
REPACK = "repack"
UNPACK = "unpack"
RELAYOUT = "relayout"
LEFT_PLAIN = "left_plain"

#: The ``--format`` choices.
FORMAT_CHOICES: tuple[str, ...] = (*LAYOUTS, "none")


@dataclass(frozen=True)
class TensorMove:
    """What repack does with one tensor: its type and layout before and after, and why."""

    name: str
    shape: tuple[int, ...]
    before: str  # display type: q4_0, q4_0_8, q6_k, ...
    after: str
    action: str  # COPY, REPACK, UNPACK, RELAYOUT or LEFT_PLAIN
    reason: str = ""


@dataclass
class RepackReport:
    """What ``repack`` did: per-tensor moves, sizes and time."""

    source: str
    output: str
    format: str
    moves: list[TensorMove] = field(default_factory=list)
    file_size: int = 0
    seconds: float = 0.0

    def count(self, *actions: str) -> int:
        return sum(m.action in actions for m in self.moves)

    @property
    def left_plain(self) -> list[TensorMove]:
        """Q4_0 tensors that stay plain because their rows do not divide by the group."""
        return [m for m in self.moves if m.action == LEFT_PLAIN]

    @property
    def changed(self) -> list[TensorMove]:
        return [m for m in self.moves if m.action in (REPACK, UNPACK, RELAYOUT)]


def parse_format(fmt: str) -> RepackLayout | None:
    """``q4_0_4|q4_0_8|q4_0_4x4`` -> its layout, ``none`` -> ``None``; ``UsageError`` otherwise."""
    key = str(fmt).strip().lower()
    if key in ("none", ""):
        return None
    if key not in LAYOUTS:
        raise UsageError(
            f"--format {fmt!r} is not known; choose one of {', '.join(FORMAT_CHOICES)}"
        )
    return LAYOUTS[key]


@dataclass(frozen=True)
class _Decision:
    entry: Any  # format.TensorEntry
    layout: RepackLayout | None  # the layout after repack (None: plain)
    move: TensorMove
    record: dict[str, Any] | None  # the new per-tensor plan record, when the config has one


class _StoredTensor:
    """Just enough of a source tensor for the conversion plan to re-decide a stored one."""

    def __init__(self, name: str, dtype: str, shape: tuple[int, ...]):
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.nbytes = 0
        self.rows = math.prod(shape[:-1]) if len(shape) > 1 else 1


def _replan(entry: Any, section: dict[str, Any], target: RepackLayout | None) -> Any:
    """The conversion plan's decision for this Q4_0 tensor under the new repack format.

    Uses the same planning function as ``convert`` so that reasons and records match what a
    direct conversion writes; ``None`` when the stored options cannot be replayed.
    """
    from nntrtool.plan.options import ConvertOptions
    from nntrtool.plan.tensors import plan_tensor

    records = section.get("tensors")
    record = records.get(entry.name) if isinstance(records, dict) else None
    if not isinstance(record, dict) or "source_dtype" not in record:
        return None
    try:
        options = ConvertOptions.from_file_config(section).with_(
            repack_format=target.name if target is not None else None
        )
        planned = plan_tensor(
            _StoredTensor(entry.name, str(record["source_dtype"]), tuple(entry.shape)), options
        )
    except (NntrError, TypeError, ValueError, KeyError):
        return None
    if planned.ttype.plain is not Q4_0:
        return None  # stored Q4_0 for a reason the options do not replay: decide by rows
    return planned


def plan_repack(
    entries: list[Any], config: dict[str, Any], target: RepackLayout | None
) -> tuple[list[_Decision], dict[str, Any]]:
    """Decide every tensor's move and build the new config (``config`` is left unchanged)."""
    new_config = copy.deepcopy(config)
    section = new_config.get("nntrtool")
    if not isinstance(section, dict):
        section = None
    decisions: list[_Decision] = []
    for entry in entries:
        shape = tuple(int(s) for s in entry.shape)
        before = entry.display_type
        if entry.ttype.plain is not Q4_0:
            move = TensorMove(entry.name, shape, before, before, COPY)
            decisions.append(_Decision(entry, entry.layout, move, None))
            continue
        rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
        planned = _replan(entry, section, target) if section is not None else None
        if planned is not None:
            layout = planned.layout
            record = planned.to_config()
            reason = planned.reason
        else:
            layout = target if target is not None and rows % target.rows == 0 else None
            record = None
            reason = ""
        old = entry.layout
        if target is not None and layout is None:
            action = LEFT_PLAIN
            reason = (
                f"{rows} rows are not a multiple of {target.name}'s group of {target.rows}: "
                "stays plain q4_0"
            )
        elif layout == old:
            action = COPY
        elif old is None:
            action = REPACK
        elif layout is None:
            action = UNPACK
        else:
            action = RELAYOUT
        after = display_name(Q4_0_REPACKED if layout is not None else Q4_0, layout)
        move = TensorMove(entry.name, shape, before, after, action, reason)
        decisions.append(_Decision(entry, layout, move, record))

    if section is not None:
        section["repack_format"] = target.name if target is not None else None
        records = section.get("tensors")
        for d in decisions:
            if d.entry.ttype.plain is not Q4_0 or not isinstance(records, dict):
                continue
            if d.record is not None:
                records[d.entry.name] = d.record
            elif isinstance(records.get(d.entry.name), dict):
                records[d.entry.name] = {**records[d.entry.name], "type": d.move.after}
    return decisions, new_config


def repack_file(
    path: str | Path,
    out: str | Path,
    fmt: str,
    *,
    force: bool = False,
    progress: ProgressFactory | None = None,
) -> RepackReport:
    """Write ``out``: ``path`` with its Q4_0 tensors in layout ``fmt`` (``none``: plain Q4_0).

    Every other tensor is copied byte for byte; the output is written atomically. Raises
    ``UsageError`` when the file has no Q4_0 tensor or is already in that layout.
    """
    from nntrtool.format import NntrFile, NntrWriter, TensorSpec

    target = parse_format(fmt)
    fmt_name = target.name if target is not None else "none"
    start = time.perf_counter()
    src_path, out_path = Path(path), Path(out)
    with NntrFile(src_path) as nf:
        if not any(e.ttype.plain is Q4_0 for e in nf.tensors):
            raise UsageError(
                f"{src_path} has no Q4_0 tensors: there is nothing to repack; convert with "
                "--quant-type q4_0 to make a file that has some"
            )
        decisions, new_config = plan_repack(nf.tensors, nf.config, target)
        if (
            all(
                d.move.action in (COPY, LEFT_PLAIN) and d.layout == d.entry.layout
                for d in decisions
            )
            and new_config == nf.config
        ):
            raise UsageError(
                f"{src_path} is already in layout {fmt_name}: nothing to do (give another "
                "--format to change it)"
            )
        specs = [
            TensorSpec(
                d.entry.name,
                Q4_0_REPACKED if d.layout is not None else d.entry.ttype.plain,
                tuple(d.entry.shape),
                d.layout,
            )
            for d in decisions
        ]
        writer = NntrWriter(out_path, new_config, specs, force=force)
        total = sum(math.prod(e.shape) for e in nf.tensors)
        bar = progress(total, "repacking") if progress else contextlib.nullcontext(None)
        backend = _relayout_backend(decisions)
        with writer, bar as prog:
            for d in decisions:
                _stream_tensor(nf, d, writer, prog, backend)
            nf.check_unchanged()  # still the file that was read, before the output is named
        file_size = writer.file_size
    return RepackReport(
        source=str(src_path),
        output=str(out_path),
        format=fmt_name,
        moves=[d.move for d in decisions],
        file_size=file_size,
        seconds=time.perf_counter() - start,
    )


def _relayout_backend(decisions: list[_Decision]) -> str:
    """numpy or numba for the unpacks and repacks: a small file skips numba's compile."""
    from nntrtool.quant.kernel_cost import choose_backend, repack_use

    uses = []
    for d in decisions:
        if d.move.action in (COPY, LEFT_PLAIN) and d.layout == d.entry.layout:
            continue
        n = math.prod(d.entry.shape) if d.entry.shape else 1
        if d.entry.layout is not None:
            uses.append(repack_use(n, unpack=True))
        if d.layout is not None:
            uses.append(repack_use(n))
    return choose_backend("auto", uses)


def _stream_tensor(
    nf: Any, d: _Decision, writer: Any, progress: ProgressLike | None, backend: str = "auto"
) -> None:
    from nntrtool.memory import release_pages
    from nntrtool.quant import repack, unpack

    entry = d.entry
    numel = math.prod(entry.shape) if entry.shape else 1
    if d.move.action in (COPY, LEFT_PLAIN) and d.layout == entry.layout:
        raw = nf.raw(entry.name)
        for lo in range(0, raw.size, CHUNK_BYTES):
            chunk = raw[lo : lo + CHUNK_BYTES]
            writer.write(entry.name, chunk)
            release_pages(chunk)  # read once: keep the input's pages out of the resident set
            if progress is not None:
                progress.advance(numel * chunk.size // max(raw.size, 1), current=entry.name)
        if raw.size == 0:
            writer.write(entry.name, raw)
        return
    data = nf.array(entry.name)  # (rows, row_bytes)
    rows, row_bytes = data.shape
    step = max(CHUNK_BYTES // max(row_bytes, 1) // _ROW_MULTIPLE, 1) * _ROW_MULTIPLE
    cols = entry.shape[-1]
    for lo in range(0, rows, step):
        chunk = np.ascontiguousarray(data[lo : lo + step])
        if entry.layout is not None:
            chunk = unpack(chunk, entry.layout.name, backend=backend)
        if d.layout is not None:
            chunk = repack(chunk, d.layout.name, backend=backend)
        writer.write(entry.name, chunk)
        release_pages(data[lo : lo + step])
        if progress is not None:
            progress.advance(chunk.shape[0] * cols, current=entry.name)
