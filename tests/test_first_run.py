"""The first run on a new machine: small jobs skip numba's compile, outputs do not change.

The commands run as a new user's would: in a new process, with numba's cache pointed at an
empty folder. Their outputs are compared with those of the same commands forced onto numba.
How long they take is measured by ``benchmarks/bench_first_run.py``, not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nntrtool.quant import kernel_cost as kc

REPO = Path(__file__).resolve().parent.parent


def _env(cache: Path | None, **extra: str) -> dict[str, str]:
    """This checkout's nntrtool with numba's cache in ``cache`` (``None``: numba's default)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for name in ("NNTRTOOL_BACKEND", "NUMBA_CACHE_DIR"):
        env.pop(name, None)
    if cache is not None:
        env["NUMBA_CACHE_DIR"] = str(cache)
    env.update(extra)
    return env


def _run(args: list[str], env: dict[str, str], ok: int = 0) -> str:
    """The command's standard output; its exit status must be ``ok``."""
    done = subprocess.run(
        [sys.executable, "-m", "nntrtool", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == ok, done.stderr
    return done.stdout


def _example_commands(example: Path, out: Path, env: dict[str, str]) -> dict[str, object]:
    """README's first commands, and repack / export of their outputs; what each produced."""
    out.mkdir()
    q4, q6, mixed = out / "q4_0.nntr", out / "q6_k.nntr", out / "mixed.nntr"
    summary = _run(["convert", str(example), str(q4), "--quant-type", "q4_0"], env)
    _run(["convert", str(example), str(q6), "--quant-type", "q6_k", "--quiet"], env)
    report = json.loads(_run(["verify", str(q6), str(example), "--json", "--quiet"], env))
    for varying in ("seconds", "file"):
        report.pop(varying)
    _run(["repack", str(q4), str(out / "q4_0_8.nntr"), "--format", "q4_0_8", "--quiet"], env)
    _run(["repack", str(out / "q4_0_8.nntr"), str(out / "q4_0_4.nntr"), "-f", "q4_0_4", "-q"], env)
    # nntrainer reads a Q6_K embedding with Q4_0 layers, not an all-Q6_K file
    _run(["export", str(q6), str(out / "refused"), "--target", "nntrainer", "-q"], env, ok=2)
    mixed_args = ["--quant-type", "q4_0", "--type", "embed_tokens=q6_k", "--quiet"]
    _run(["convert", str(example), str(mixed), *mixed_args], env)
    _run(["export", str(mixed), str(out / "export"), "--target", "nntrainer", "--quiet"], env)
    outputs: dict[str, object] = {"verify": report, "backend": summary.split("(backend ")[1][:5]}
    for path in sorted(out.rglob("*")):
        if path.is_file():
            # nntr_config.json names its own folder: the two runs write to different ones
            outputs[str(path.relative_to(out))] = path.read_bytes().replace(bytes(out), b"OUT")
    return outputs


@pytest.mark.slow
def test_example_commands_in_a_fresh_cache_compile_nothing_and_match_numba(tmp_path, example_model):
    fresh_cache = tmp_path / "fresh-cache"
    fresh = _example_commands(example_model, tmp_path / "fresh", _env(fresh_cache))
    # Nothing was compiled: numba wrote no cache index.
    assert not list(fresh_cache.rglob("*.nbi"))
    # The same commands forced onto numba, in its default cache (warm after the first run).
    forced = _example_commands(
        example_model, tmp_path / "numba", _env(None, NNTRTOOL_BACKEND="numba")
    )
    assert (fresh.pop("backend"), forced.pop("backend")) == ("numpy", "numba")
    assert fresh.keys() == forced.keys()
    for name in fresh:
        assert fresh[name] == forced[name], f"{name} differs between numpy and numba"


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """An empty numba cache folder for the markers (numba itself keeps the one it imported)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(cache))
    monkeypatch.delenv("NNTRTOOL_BACKEND", raising=False)
    monkeypatch.setenv("NNTRTOOL_BACKGROUND_COMPILE", "0")
    return cache


def test_auto_takes_numpy_for_small_jobs_and_numba_for_large_ones(empty_cache):
    small = [kc.quantize_use("q6_k", "BF16", 500_000)]
    large = [kc.quantize_use("q6_k", "BF16", 2_000_000_000)]
    assert kc.choose_backend("auto", small) == "numpy"
    assert kc.choose_backend("auto", large) == "numba"
    assert kc.choose_backend(None, []) == "numpy"  # nothing to run: nothing to compile
    # An explicit choice is kept whatever the job.
    assert kc.choose_backend("numba", small) == "numba"
    assert kc.choose_backend("numpy", large) == "numpy"


def test_a_compiled_kernel_lowers_the_threshold(empty_cache):
    # 150 M params of Q4_0: numpy needs about 1 s, less than a compile, more than a load.
    job = [kc.quantize_use("q4_0", "F32", 150_000_000)]
    assert kc.numba_seconds(job) > kc.numpy_seconds(job) > kc.numba_seconds(job, all_cached=True)
    assert kc.choose_backend("auto", job) == "numpy"
    kc.mark_compiled("quantize-q4_0-float32")
    assert kc.is_compiled("quantize-q4_0-float32")
    assert list(empty_cache.glob("nntrtool-kernels/quantize-q4_0-float32.*"))
    assert kc.choose_backend("auto", job) == "numba"
    # f16 and bf16 sources run another specialization, not compiled yet
    assert not kc.is_compiled(kc.quantize_use("q4_0", "BF16", 1).kernel)


def test_the_environment_sets_what_auto_means(empty_cache, monkeypatch):
    from nntrtool.errors import UsageError

    monkeypatch.setenv("NNTRTOOL_BACKEND", "numba")
    assert kc.choose_backend("auto", [kc.repack_use(1)]) == "numba"
    assert kc.choose_backend("numpy", [kc.repack_use(1)]) == "numpy"
    monkeypatch.setenv("NNTRTOOL_BACKEND", "fast")
    with pytest.raises(UsageError, match="NNTRTOOL_BACKEND='fast'"):
        kc.choose_backend("auto", [kc.repack_use(1)])


def test_markers_go_stale_when_a_kernel_source_changes(empty_cache, monkeypatch):
    kc.mark_compiled("dequantize-q8_0")
    assert kc.is_compiled("dequantize-q8_0")
    monkeypatch.setattr(kc, "_stamp", lambda: "another-version")
    assert not kc.is_compiled("dequantize-q8_0")


def test_a_read_only_cache_counts_as_not_compiled(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(blocked))
    kc.mark_compiled("unpack")  # no error
    assert not kc.is_compiled("unpack")
    assert not kc.compile_later(["unpack"])


@pytest.mark.slow
def test_background_compile_fills_the_cache_for_the_next_job(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(cache))
    monkeypatch.delenv("NNTRTOOL_BACKGROUND_COMPILE", raising=False)
    assert kc.compile_later(["repack", "unpack"])
    lock = cache / "nntrtool-kernels" / "compiling.lock"
    assert not kc.compile_later(["repack"])  # one at a time
    deadline = time.monotonic() + 300
    while lock.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not lock.exists()
    assert kc.is_compiled("repack") and kc.is_compiled("unpack")
    assert list(cache.rglob("*.nbi"))


def test_numpy_error_sums_are_the_kernels_bit_for_bit():
    from nntrtool.quant import error_stats as v

    rng = np.random.default_rng(7)
    for n in (1, 5, 4095, 4096, 4097, 70_001):
        a = rng.standard_normal(n).astype(np.float32)
        b = (a + rng.standard_normal(n).astype(np.float32) * np.float32(0.01)).astype(np.float32)
        zeros = np.zeros(n, np.float32)
        for x, y in ((a, b), (a, a.copy()), (zeros, -zeros), (-zeros, zeros), (a * 1e30, b)):
            kernel = v._block_sums_kernel()(x.view(np.uint32), y.view(np.uint32))
            numpy = v._block_sums_numpy(x, y)
            assert np.array_equal(kernel.view(np.uint64), numpy.view(np.uint64)), n
    b = a.copy()
    b[3], b[5000] = np.inf, np.nan
    fast, reference = v.ErrorStats.of_fast(a, b), v.ErrorStats.of_fast(a, b, backend="numpy")
    assert repr(fast) == repr(reference)


def test_the_first_numba_conversion_says_what_it_compiles(empty_cache, hf_model, tmp_path):
    from nntrtool.convert import ConvertOptions, convert

    model = hf_model("llama")
    seen: list[str] = []

    class Progress:
        def __init__(self, total, label):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def advance(self, n, current=None):
            seen.append(current or "")

    options = ConvertOptions(quant_type="q8_0", backend="numba")
    convert(model, tmp_path / "a.nntr", options, progress=Progress)
    assert any(s.startswith("compiling the q8_0 kernel") for s in seen), seen
    seen.clear()
    convert(model, tmp_path / "b.nntr", options, progress=Progress)
    assert any(s.startswith("loading the q8_0 kernel") for s in seen), seen
