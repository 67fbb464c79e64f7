"""Declared transforms: how the tensors a checkpoint holds become the tensors nntrtool stores.

Most tensors are stored as they come. Some are not: llama.cpp permutes the rows of a llama
model's attention Q and K, GPT-OSS fuses all experts of a layer into one 3-D tensor (gate and up
interleaved), a published checkpoint packs them in MXFP4. Each such case is declared here as data,
a :class:`Rule` (a name pattern and the small operations that turn the matched tensor into the
stored ones), never as a special case in the plan or the pipeline.

A transformed tensor is a :class:`DerivedTensor`: a :class:`~nntrtool.sources.base.SourceTensor`
like any other, read by row ranges, that computes its rows from its inputs on demand. Plan,
pipeline and verify therefore see the stored names, shapes and values, one chunk at a time, and
memory stays bounded by the chunk (or, for a transpose, by one expert's matrix).

    rules = [Rule(r"(.*)\\.attn_q\\.weight$", unpermute_qk(n_head))]
    tensors = apply_rules(tensors, rules)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from nntrtool.errors import SourceError
from nntrtool.messages import checkpoint_unreadable
from nntrtool.tensors.base import SourceTensor

#: Reads rows ``start:stop`` of a derived tensor from its inputs.
RowReader = Callable[[Sequence[SourceTensor], int, int], np.ndarray]

#: Reads rows ``start:stop`` already encoded as blocks of a quantized type (``(rows, row_bytes)``
#: uint8), or ``None`` when those rows cannot be encoded exactly and must be quantized instead.
EncodedReader = Callable[[Sequence[SourceTensor], int, int], "np.ndarray | None"]

#: The type a tensor is best stored in and why (``("f32", "router: ...")``), or ``None``.
Preference = tuple[str, str] | None


class DerivedTensor(SourceTensor):
    """A stored tensor computed from one or more source tensors by a declared operation.

    ``dtype`` is the dtype of the rows ``reader`` returns (a safetensors name, like any source
    tensor's); ``source_nbytes`` is what the tensor's share of its inputs takes on disk, so that
    summaries compare against the bytes really read. ``note`` says what was done, for plans and
    summaries (``"rows un-permuted (llama.cpp Q/K order)"``).
    """

    def __init__(
        self,
        name: str,
        dtype: str,
        shape: tuple[int, ...],
        inputs: Sequence[SourceTensor],
        reader: RowReader,
        note: str = "",
        source_nbytes: int | None = None,
        prefer: Preference | Callable[[], Preference] = None,
        encoders: dict[str, EncodedReader] | None = None,
    ):
        if not inputs:
            raise ValueError("a derived tensor needs at least one input")
        super().__init__(name, dtype, shape, inputs[0].file)
        self.inputs = tuple(inputs)
        self.reader = reader
        self.note = note
        self._source_nbytes = source_nbytes
        self._prefer = prefer
        #: Readers handing out rows already encoded in a quantized type (by type name), for
        #: sources that hold exactly what that type stores (MXFP4 blocks in Q8_0).
        self.encoders = dict(encoders or {})

    def preferred(self) -> Preference:
        """The type this tensor is stored in unless ``--type``/``--keep-f32`` say otherwise, with
        the reason (``None``: the requested type, like any tensor)."""
        return self._prefer() if callable(self._prefer) else self._prefer

    def encoded_rows(self, type_name: str, start: int, stop: int) -> np.ndarray | None:
        """Rows ``start:stop`` as ``type_name`` blocks straight from the source, or ``None`` when
        this tensor has no exact encoding in that type (then they are quantized as usual)."""
        encode = self.encoders.get(type_name)
        if encode is None:
            return None
        start, stop = self._check_rows(start, stop)
        return encode(self.inputs, start, stop)

    @property
    def source_nbytes(self) -> int:
        """Bytes of the inputs this tensor accounts for (its own size when not given)."""
        return self.nbytes if self._source_nbytes is None else int(self._source_nbytes)

    def _read_rows(self, start: int, stop: int) -> np.ndarray:
        arr = self.reader(self.inputs, start, stop)
        expected = (stop - start, self.row_width)
        if arr.shape != expected:
            raise AssertionError(
                f"transform for {self.name!r} returned rows of shape {arr.shape}, not {expected}"
            )
        return arr

    def __repr__(self) -> str:
        return f"DerivedTensor({self.name!r}, {self.dtype}, {list(self.shape)}, {self.note!r})"


#: What a rule does with one matched tensor: the stored tensors it becomes (in order).
Expand = Callable[[re.Match[str], SourceTensor, "TensorLookup"], list[SourceTensor]]


class TensorLookup:
    """The source tensors by name, for rules that combine several (MXFP4 blocks with scales).

    A rule that reads a second tensor :meth:`take`\\ s it, so that it is not also stored alone.
    """

    def __init__(self, tensors: Sequence[SourceTensor]):
        self._by_name = {t.name: t for t in tensors}
        self.taken: set[str] = set()

    def get(self, name: str) -> SourceTensor | None:
        return self._by_name.get(name)

    def take(self, name: str) -> SourceTensor:
        """The tensor ``name``, marked as consumed; SourceError when the source lacks it."""
        t = self._by_name.get(name)
        if t is None:
            raise SourceError(
                f"the model has no tensor {name!r}, which reading its neighbours needs: the "
                "model's files are incomplete; download them again (all of them)"
            )
        self.taken.add(name)
        return t


@dataclass(frozen=True)
class Rule:
    """Tensors whose name fully matches ``pattern`` are replaced by what ``expand`` makes."""

    pattern: str
    expand: Expand
    description: str = ""
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regex", re.compile(self.pattern))

    def match(self, name: str) -> re.Match[str] | None:
        return self._regex.fullmatch(name)


def apply_rules(tensors: Sequence[SourceTensor], rules: Sequence[Rule]) -> list[SourceTensor]:
    """The stored tensors: each source tensor replaced by the first matching rule's output.

    Order is kept: a tensor's outputs take its place. Tensors a rule consumed as a second input
    are dropped from where they stood.
    """
    if not rules:
        return list(tensors)
    lookup = TensorLookup(tensors)
    out: list[SourceTensor] = []
    for t in tensors:
        if t.name in lookup.taken:
            continue
        for rule in rules:
            m = rule.match(t.name)
            if m is not None:
                out.extend(rule.expand(m, t, lookup))
                break
        else:
            out.append(t)
    taken = lookup.taken
    return [t for t in out if t.name not in taken or isinstance(t, DerivedTensor)]


# ---- operations -------------------------------------------------------------------------


def done_reading(arr: np.ndarray) -> None:
    """Drop the mapped source pages behind ``arr`` once a transform has copied what it needs.

    The pipeline releases the pages of the rows it reads, but a derived tensor's rows are a
    computed copy: the pages of its inputs would otherwise stay resident to the end.
    """
    from nntrtool.memory import release_pages

    release_pages(arr, edges=True)


def prefer_type(base: SourceTensor, type_name: str, reason: str) -> DerivedTensor:
    """``base`` unchanged, stored as ``type_name`` unless the user's ``--type``/``--keep-f32``
    say otherwise (MoE routers stay F32: the runtime computes them in FP32)."""

    def read(inputs: Sequence[SourceTensor], start: int, stop: int) -> np.ndarray:
        return inputs[0].read(start, stop)

    return DerivedTensor(
        base.name,
        base.dtype,
        base.shape,
        [base],
        read,
        reason,
        source_nbytes=base.nbytes,
        prefer=(type_name, reason),
    )


def rows_at(t: SourceTensor, index: np.ndarray) -> np.ndarray:
    """Rows ``index`` of ``t`` (any order), reading only the span they cover."""
    if index.size == 0:
        return t.read(0, 0)
    from nntrtool.memory import release_pages

    lo, hi = int(index.min()), int(index.max()) + 1
    span = t.read(lo, hi)
    rows = np.ascontiguousarray(span[index - lo])
    release_pages(span)  # the rows were copied: keep a mapped source's pages out of RSS
    return rows


def permuted_rows(base: SourceTensor, name: str, order: np.ndarray, note: str) -> DerivedTensor:
    """``base`` with its rows reordered: stored row ``i`` is source row ``order[i]``.

    Works on any row format (floats or quantized blocks), since whole rows move.
    """
    order = np.asarray(order, dtype=np.int64)
    if sorted(order.tolist()) != list(range(base.rows)):
        raise ValueError(f"row order for {name!r} is not a permutation of {base.rows} rows")

    def read(inputs: Sequence[SourceTensor], start: int, stop: int) -> np.ndarray:
        return rows_at(inputs[0], order[start:stop])

    return DerivedTensor(
        name, base.dtype, base.shape, [base], read, note, source_nbytes=base.nbytes
    )


def llama_qk_order(rows: int, n_head: int) -> np.ndarray:
    """The row order that undoes llama.cpp's Q/K permutation for ``n_head`` heads.

    llama.cpp stores each head's rows with the two rotary halves interleaved (row ``2j`` is the
    checkpoint's row ``j``, row ``2j+1`` its row ``j + d/2``); stored row ``i`` of the checkpoint
    layout is therefore GGUF row ``order[i]``.
    """
    if n_head <= 0 or rows % (2 * n_head):
        raise SourceError(
            f"cannot undo the Q/K row permutation: {rows} rows do not split into {n_head} heads "
            "of an even size; the head count and the Q/K tensors disagree: download or convert "
            "the GGUF again, or give the original Hugging Face model instead"
        )
    half = rows // n_head // 2
    # GGUF row index, laid out as (head, j, pair) -> checkpoint layout (head, pair, j).
    gguf = np.arange(rows).reshape(n_head, half, 2)
    return gguf.transpose(0, 2, 1).reshape(rows)


def expert_matrix(
    base: SourceTensor,
    name: str,
    expert: int,
    *,
    columns: slice = slice(None),
    transpose: bool = False,
    note: str = "",
) -> DerivedTensor:
    """One expert's 2-D matrix out of a fused ``[experts, a, b]`` tensor.

    ``columns`` picks along the last axis before any transpose (``slice(0, None, 2)`` takes the
    even columns of GPT-OSS's interleaved gate/up); ``transpose`` stores ``[b, a]`` as ``[out,
    in]``. A transposed matrix is read whole on the first row range asked for and kept while rows
    of it are read, so each source page is read once (the memory is one expert's matrix).
    """
    if base.ndim != 3:
        raise SourceError(
            checkpoint_unreadable(
                base.file.name,
                f"tensor {base.name!r} {list(base.shape)} is not a 3-D expert tensor",
            )
        )
    n_exp, a, b = base.shape
    if not 0 <= expert < n_exp:
        raise ValueError(f"expert {expert} out of range for {base.name!r} ({n_exp} experts)")
    b_sel = len(range(b)[columns])
    shape = (b_sel, a) if transpose else (a, b_sel)
    cache: dict[str, np.ndarray] = {}

    def read(inputs: Sequence[SourceTensor], start: int, stop: int) -> np.ndarray:
        src = inputs[0]
        if not transpose:
            rows = src.read(expert * a + start, expert * a + stop)
            picked = np.ascontiguousarray(rows[:, columns])
            done_reading(rows)
            return picked
        whole = cache.get("m")
        if whole is None:
            rows = src.read(expert * a, (expert + 1) * a)
            whole = np.ascontiguousarray(rows[:, columns].T)
            done_reading(rows)
            cache["m"] = whole
        out = whole[start:stop]
        if stop >= shape[0]:
            cache.clear()  # the last rows were read: drop the matrix
        return out

    share = base.nbytes * b_sel // (n_exp * b)
    return DerivedTensor(name, base.dtype, shape, [base], read, note, source_nbytes=share)


# ---- rules per architecture -------------------------------------------------------------


# ---- the way back: stored tensors into a model's own modules ----------------------------


@dataclass(frozen=True)
class Placement:
    """Where a stored tensor goes in a transformers model's state (the inverse of a rule).

    Stored tensors whose name fully matches ``pattern`` are written into ``target`` (a template
    expanded with the match, ``"{0}.mlp.experts.gate_up_proj"``) at the index ``index(match)``
    returns, transposed first when ``transpose`` is set.
    """

    pattern: str
    target: str
    index: Callable[[re.Match[str]], tuple]
    transpose: bool = False

    def resolve(self, name: str) -> tuple[str, tuple, bool] | None:
        """``(state key, index, transpose)`` for stored tensor ``name``, or ``None``."""
        m = re.fullmatch(self.pattern, name)
        if m is None:
            return None
        return self.target.format(*m.groups()), self.index(m), self.transpose
