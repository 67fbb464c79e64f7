"""Kernel benchmarks: quantize, dequantize, importance-weighted quantize and Q4_0 repack on
every available backend, beside ggml's C reference and gguf's numpy quantizers."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from nntrtool.bench.options import REF_GGML, REF_GGUF, ROW_MULTIPLE, BenchOptions, Log
from nntrtool.bench.report import BenchReport, make_case, published_for
from nntrtool.bench.timing import measure
from nntrtool.errors import UsageError
from nntrtool.qtypes import Q4_0, get_type

# ------------------------------------------------------------------------------ cases


class References:
    """ggml's C kernels and gguf's numpy quantizers, each loaded once or skipped with a reason."""

    def __init__(self, report: BenchReport, enabled: bool):
        self.ggml: Any = None
        self.gguf: Any = None
        if not enabled:
            report.skipped.append({"what": "references", "reason": "turned off (--no-reference)"})
            return
        from nntrtool import ggml_ref

        try:
            self.ggml = ggml_ref.load()
        except ggml_ref.GgmlUnavailable as err:
            report.skipped.append({"what": "ggml C reference", "reason": str(err)})
        try:
            import gguf.quants

            self.gguf = gguf
        except Exception as err:
            report.skipped.append(
                {"what": "gguf numpy reference", "reason": f"gguf is not installed ({err})"}
            )

    @property
    def gguf_quantizes(self) -> tuple[str, ...]:
        """The types gguf's numpy code can quantize (0.19 has no Q6_K quantizer)."""
        return ("q4_0", "q8_0")

    def gguf_type(self, qtype: str) -> Any:
        return getattr(self.gguf.GGMLQuantizationType, qtype.upper())

    def close(self) -> None:
        if self.ggml is not None:
            self.ggml.close()


def select_backends(options: BenchOptions) -> tuple[list[str], str]:
    """The backends to measure and the one used end to end."""
    from nntrtool.quant import available_backends, resolve_backend

    avail = list(available_backends())
    if options.backends is None:
        return avail, resolve_backend("auto")
    chosen: list[str] = []
    for b in options.backends:
        name = resolve_backend("auto") if b == "auto" else b
        if name not in avail:
            raise UsageError(
                f"--backend {b}: not available on this machine; choose one of {', '.join(avail)}"
            )
        if name not in chosen:
            chosen.append(name)
    return chosen, chosen[0]


def set_threads(threads: int | None) -> None:
    if threads is None or importlib.util.find_spec("numba") is None:
        return
    import numba

    try:
        numba.set_num_threads(int(threads))
    except ValueError:
        raise UsageError(
            f"--threads {threads}: numba allows at most {numba.config.NUMBA_NUM_THREADS} here; "
            "give fewer"
        ) from None


@dataclass
class _Group:
    """One case measured for several implementations: references first, then nntrtool's.
    Every kernel case works on one ``shape = (rows, cols)`` matrix of ``rows * cols`` params."""

    name: str
    op: str
    qtype: str
    shape: tuple[int, int]
    bytes_in: int
    bytes_out: int
    layout: str | None = None

    @property
    def params(self) -> int:
        return self.shape[0] * self.shape[1]


class _Runner:
    """Measures groups of cases into a report, remembering which kernels were already warm."""

    def __init__(self, report: BenchReport, options: BenchOptions, log: Log):
        self.report = report
        self.options = options
        self.log = log
        self.warm: set[tuple[str, str]] = set()

    def group(
        self,
        g: _Group,
        refs: dict[str, Callable[[], Any]],
        impls: dict[str, tuple[Callable[[], Any], Callable[[], Any]]],
        *,
        check: Callable[[Any, Any], bool] | None = None,
    ) -> dict[str, np.ndarray]:
        """Time every reference and implementation; returns each implementation's output.

        ``impls`` maps a backend to (full-size call, tiny call); the tiny call is made first
        the first time a kernel is seen, to time its JIT compile or cache load apart.
        """
        meta = {"qtype": g.qtype, "layout": g.layout, "shape": list(g.shape)}
        sizes = {"params": g.params, "bytes_in": g.bytes_in, "bytes_out": g.bytes_out}
        same = check or _same_output
        expected: dict[str, Any] = {}
        for ref, fn in refs.items():
            self.log(f"{g.name} [{ref}]")
            t, expected[ref] = measure(
                fn, repeats=self.options.repeats, budget_s=self.options.case_budget_s
            )
            note = "one thread" if ref == REF_GGML else None
            self.report.cases.append(
                make_case(g.name, g.op, ref, t, **sizes, **meta, reference=True, note=note)
            )
        outputs: dict[str, np.ndarray] = {}
        for backend, (fn, tiny) in impls.items():
            self.log(f"{g.name} [{backend}]")
            key = (f"{g.op} {g.layout or g.qtype}", backend)
            first = None if key in self.warm else tiny
            self.warm.add(key)
            t, out = measure(
                fn, repeats=self.options.repeats, budget_s=self.options.case_budget_s, first=first
            )
            out = outputs[backend] = _to_host(out)
            self.report.cases.append(
                make_case(
                    g.name, g.op, backend, t, **sizes, **meta,
                    same_output={r: bool(same(v, out)) for r, v in expected.items()},
                    published=published_for(g.qtype, backend) if g.op == "quantize" else None,
                )
            )  # fmt: skip
        return outputs


def _same_output(expected: Any, got: np.ndarray) -> bool:
    expected = np.asarray(expected)
    return expected.size == got.size and np.array_equal(expected.reshape(got.shape), got)


def kernel_cases(
    report: BenchReport,
    options: BenchOptions,
    backends: Sequence[str],
    refs: References,
    log: Log,
) -> None:
    from nntrtool import quant

    runner = _Runner(report, options, log)
    rng = np.random.default_rng(options.seed)
    for rows, cols in options.sizes:
        size = size_text(rows, cols)
        params = rows * cols
        x = rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(0.02)
        tiny_x = np.ascontiguousarray(x[:ROW_MULTIPLE])
        q4_0_data = None
        for qtype in options.qtypes:
            qbytes = rows * get_type(qtype).row_bytes(cols)
            g = _Group(
                f"quantize {qtype} {size}", "quantize", qtype, (rows, cols), x.nbytes, qbytes
            )
            ref_fns: dict[str, Callable[[], Any]] = {}
            if refs.ggml is not None:
                ref_fns[REF_GGML] = partial(refs.ggml.quantize, x, qtype)
            if refs.gguf is not None and qtype in refs.gguf_quantizes:
                ref_fns[REF_GGUF] = partial(refs.gguf.quants.quantize, x, refs.gguf_type(qtype))
            impls = {
                b: (partial(quant.quantize, x, qtype, backend=b),
                    partial(quant.quantize, tiny_x, qtype, backend=b))
                for b in backends
            }  # fmt: skip
            outputs = runner.group(g, ref_fns, impls)
            del ref_fns
            if options.imatrix and quant.get_kernels(qtype).uses_imatrix:
                _imatrix_case(runner, refs, backends, x, tiny_x, qtype, qbytes, options.seed)
            data = next(iter(outputs.values()), None)
            if data is None:
                continue
            if qtype == Q4_0.name:
                q4_0_data = data
            tiny_data = np.ascontiguousarray(data[:ROW_MULTIPLE])
            g = _Group(f"dequantize {qtype} {size}", "dequantize", qtype, (rows, cols),
                       data.nbytes, params * 4)  # fmt: skip
            ref_fns = {}
            if refs.ggml is not None:
                ref_fns[REF_GGML] = partial(refs.ggml.dequantize, data, qtype, cols)
            if refs.gguf is not None:
                ref_fns[REF_GGUF] = partial(
                    refs.gguf.quants.dequantize, data, refs.gguf_type(qtype)
                )
            impls = {
                b: (partial(quant.dequantize, data, qtype, (rows, cols), backend=b),
                    partial(quant.dequantize, tiny_data, qtype, (ROW_MULTIPLE, cols), backend=b))
                for b in backends
            }  # fmt: skip
            runner.group(g, ref_fns, impls)
            del outputs, ref_fns
        if q4_0_data is not None:
            _repack_cases(runner, refs, backends, q4_0_data, rows, cols)
        del x


def _imatrix_case(
    runner: _Runner, refs: References, backends: Sequence[str], x: np.ndarray,
    tiny_x: np.ndarray, qtype: str, qbytes: int, seed: int,
) -> None:  # fmt: skip
    """Quantization weighted by an importance matrix (one value per column), against ggml's
    ``ggml_quantize_chunk`` given the same matrix."""
    from nntrtool import quant

    rows, cols = x.shape
    qw = np.random.default_rng(seed + 1).exponential(1.0, cols).astype(np.float32)
    g = _Group(f"quantize {qtype} imatrix {size_text(rows, cols)}", "imatrix", qtype,
               (rows, cols), x.nbytes, qbytes)  # fmt: skip
    ref_fns = {REF_GGML: partial(refs.ggml.quantize, x, qtype, qw)} if refs.ggml else {}
    impls = {
        b: (partial(quant.quantize, x, qtype, backend=b, imatrix=qw),
            partial(quant.quantize, tiny_x, qtype, backend=b, imatrix=qw))
        for b in backends
    }  # fmt: skip
    runner.group(g, ref_fns, impls)


def _layout_impls(fn: Any, data: np.ndarray, tiny: np.ndarray, layout: str, cpu: list[str]):
    """``{backend: (fn on data, fn on tiny)}`` for a repack or unpack to ``layout``."""
    return {
        b: (partial(fn, data, layout, backend=b), partial(fn, tiny, layout, backend=b)) for b in cpu
    }


def _repack_cases(
    runner: _Runner, refs: References, backends: Sequence[str], data: np.ndarray,
    rows: int, cols: int,
) -> None:  # fmt: skip
    from nntrtool import quant

    # repacking is a byte shuffle on the CPU: cupy runs the numba kernel, so it is not repeated
    cpu = [b for b in backends if b != "cupy"] or ["numba"]
    tiny = np.ascontiguousarray(data[:ROW_MULTIPLE])
    for layout in runner.options.layouts:
        common = {"qtype": Q4_0.name, "shape": (rows, cols), "bytes_in": data.nbytes,
                  "bytes_out": data.nbytes, "layout": layout}  # fmt: skip
        ref_fns = {REF_GGML: partial(refs.ggml.repack, data, layout)} if refs.ggml else {}
        impls = _layout_impls(quant.repack, data, tiny, layout, cpu)
        g = _Group(f"repack {layout} {size_text(rows, cols)}", "repack", **common)
        packed = next(iter(runner.group(g, ref_fns, impls).values()))
        tiny_packed = np.ascontiguousarray(packed[:ROW_MULTIPLE])
        impls = _layout_impls(quant.unpack, packed, tiny_packed, layout, cpu)
        g = _Group(f"unpack {layout} {size_text(rows, cols)}", "unpack", **common)
        # unpacking has no outside reference: the plain Q4_0 that was packed is its check
        start = len(runner.report.cases)
        outputs = runner.group(g, {}, impls)
        for case, back in zip(runner.report.cases[start:], outputs.values(), strict=True):
            case.same_output["q4_0"] = bool(np.array_equal(back, data))


def _to_host(a: Any) -> np.ndarray:
    """A numpy array from a numpy or cupy result."""
    get = getattr(a, "get", None)
    return get() if callable(get) and not isinstance(a, np.ndarray) else np.asarray(a)


def size_text(rows: int, cols: int) -> str:
    return f"{rows}x{cols}"
