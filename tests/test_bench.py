"""`nntrtool bench`: a real quick run through the CLI, checked for schema, sense and coverage."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest

from nntrtool import bench
from nntrtool.bench import BenchOptions, measure, parse_count, parse_size, run_bench
from nntrtool.cli.app import main
from nntrtool.errors import DiskFullError, NntrError, UsageError
from nntrtool.qtypes import LAYOUTS
from nntrtool.synthetic import synthetic_shape

SIZES = ["64x512", "128x256"]
E2E_PARAMS = 3e6
HAVE_GGML = importlib.util.find_spec("ggml") is not None
HAVE_GGUF = importlib.util.find_spec("gguf") is not None

CASE_KEYS = {
    "name", "op", "backend", "params", "bytes_in", "bytes_out", "repeats", "seconds",
    "seconds_min", "seconds_max", "seconds_q1", "seconds_q3", "params_per_s", "gb_per_s",
    "qtype", "layout", "shape", "reference", "first_call_s", "warmup_s", "ratios",
    "same_output", "published", "peak_rss_bytes", "note",
}  # fmt: skip


@pytest.fixture(scope="module")
def run_json(tmp_path_factory):
    """One quick run of the real command in a fresh process, as a user would start it."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    cmd = [sys.executable, "-m", "nntrtool", "bench", "--quick", "--json", "--repeats", "2",
           "--e2e-params", str(E2E_PARAMS), "-o", str(out)]  # fmt: skip
    for s in SIZES:
        cmd += ["--size", s]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    # progress goes to stderr, one line per measured case, backend included
    assert "quantize q4_0 64x512 [numpy]" in proc.stderr
    doc = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == doc
    return doc


def test_document_schema(run_json):
    doc = run_json
    assert doc["schema"] == bench.SCHEMA
    assert {"nntrtool_version", "created", "seconds", "method", "machine", "options",
            "published", "cases", "skipped", "notes"} <= set(doc)  # fmt: skip
    m = doc["machine"]
    for key in ("cpu_model", "arch", "cores_logical", "cores_available", "cores_used",
                "memory_total_bytes", "os", "python", "versions", "gpu", "load_before"):  # fmt: skip
        assert key in m, key
    assert m["cores_used"] >= 1 and m["memory_total_bytes"] > 2**28
    assert m["versions"]["numpy"] == np.__version__
    assert 0 <= m["load_before"]["cpu_busy_percent"] <= 100
    assert doc["published"]["params_per_s"]["q4_0"]["cpu"] == [50e6, 100e6]
    assert doc["published"]["params_per_s"]["q6_k"]["gpu"] == [150e6, 300e6]
    for case in doc["cases"]:
        assert set(case) == CASE_KEYS, case["name"]


def test_numbers_are_positive_consistent_and_plausible(run_json):
    for c in run_json["cases"]:
        what = f"{c['name']} [{c['backend']}]"
        assert c["repeats"] >= 1, what
        assert 0 < c["seconds_min"] <= c["seconds_q1"] <= c["seconds"] <= c["seconds_q3"], what
        assert c["seconds_q3"] <= c["seconds_max"], what
        assert math.isclose(c["params_per_s"], c["params"] / c["seconds"], rel_tol=1e-9), what
        gb = max(c["bytes_in"], c["bytes_out"]) / c["seconds"] / 1e9
        assert math.isclose(c["gb_per_s"], gb, rel_tol=1e-9), what
        # no CPU converts a thousand billion parameters a second, none takes an hour for these
        assert 1e3 < c["params_per_s"] < 1e12, what
        if c["first_call_s"] is not None:
            assert c["first_call_s"] > 0, what


def test_every_kernel_backend_and_size_is_measured(run_json):
    backends = run_json["options"]["backends"]
    assert "numpy" in backends
    seen = {(c["name"], c["backend"]) for c in run_json["cases"]}
    for size in SIZES:
        rows, cols = (int(v) for v in size.split("x"))
        for q in ("q4_0", "q6_k", "q8_0"):
            for op in ("quantize", "dequantize"):
                for b in backends:
                    assert (f"{op} {q} {size}", b) in seen
                if HAVE_GGML:
                    assert (f"{op} {q} {size}", "ggml-c") in seen
            if HAVE_GGUF:
                assert (f"dequantize {q} {size}", "gguf-numpy") in seen
            # importance-weighted quantization: Q4_0 and Q6_K only (ggml ignores it for Q8_0)
            weighted = [(f"quantize {q} imatrix {size}", b) in seen for b in backends]
            assert all(weighted) if q != "q8_0" else not any(weighted)
            if HAVE_GGML and q != "q8_0":
                assert (f"quantize {q} imatrix {size}", "ggml-c") in seen
        if HAVE_GGUF:
            assert (f"quantize q4_0 {size}", "gguf-numpy") in seen
        for layout in LAYOUTS:
            assert any(n == f"repack {layout} {size}" for n, _ in seen)
            assert any(n == f"unpack {layout} {size}" for n, _ in seen)
        quant = [c for c in run_json["cases"] if c["name"] == f"quantize q4_0 {size}"]
        assert all(c["params"] == rows * cols and c["bytes_in"] == rows * cols * 4 for c in quant)
        assert all(c["bytes_out"] == rows * cols // 32 * 18 for c in quant)


def test_first_call_is_reported_once_per_kernel(run_json):
    firsts: dict[tuple[str, str, str], int] = {}
    for c in run_json["cases"]:
        if c["reference"] or c["op"] == "convert":
            continue
        key = (c["op"], c["layout"] or c["qtype"], c["backend"])
        firsts[key] = firsts.get(key, 0) + (c["first_call_s"] is not None)
    assert firsts and all(n == 1 for n in firsts.values()), firsts


@pytest.mark.skipif(not HAVE_GGML, reason="needs ggml-python")
def test_outputs_match_the_references_and_ratios_are_speed_over_reference(run_json):
    cases = run_json["cases"]
    refs = {(c["name"], c["backend"]): c for c in cases if c["reference"]}
    for c in cases:
        if c["reference"] or c["op"] == "convert":
            continue
        if c["op"] == "unpack":
            assert c["same_output"] == {"q4_0": True}, c["name"]
            continue
        assert c["same_output"] and all(c["same_output"].values()), (c["name"], c["backend"])
        assert set(c["ratios"]) == set(c["same_output"])
        for ref, ratio in c["ratios"].items():
            assert ratio == pytest.approx(
                c["params_per_s"] / refs[(c["name"], ref)]["params_per_s"]
            )


def test_end_to_end_conversions(run_json):
    e2e = [c for c in run_json["cases"] if c["op"] == "convert"]
    assert [c["qtype"] for c in e2e] == ["q4_0", "q6_k"]
    n = synthetic_shape(E2E_PARAMS).n_params
    for c in e2e:
        assert c["params"] == n and c["bytes_in"] == 2 * n
        assert 0 < c["bytes_out"] < c["bytes_in"]
        # a Python process with numpy and numba loaded, and far less than a copy of the model
        # per thread would take
        assert 30 * 2**20 < c["peak_rss_bytes"] < 2 * 2**30
        assert c["first_call_s"] > 0 and c["backend"] == run_json["options"]["e2e_backend"]
        assert c["published"]["params_per_s"] == bench.PUBLISHED[c["qtype"]]["cpu"]


def test_table_fits_a_terminal(run_json, capsys, monkeypatch):
    from nntrtool.cli.cmd_bench import render

    monkeypatch.setenv("COLUMNS", "80")
    render(run_json)
    text = capsys.readouterr().out
    for needle in ("quantize q4_0", "dequantize q6_k", "repack q4_0_8", "End to end", "CPU",
                   "50-100M", "peak RSS"):  # fmt: skip
        assert needle in text
    if HAVE_GGML:
        assert "vs ggml" in text and "x=" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_quiet_json_run_in_process(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--quick", "--quiet", "--json", "--size", "8x256", "--e2e-params", "0",
              "--type", "q8_0", "--backend", "numpy", "--no-reference"])  # fmt: skip
    captured = capsys.readouterr()
    assert exc.value.code == 0 and captured.err == ""
    doc = json.loads(captured.out)
    assert [c["name"] for c in doc["cases"]] == ["quantize q8_0 8x256", "dequantize q8_0 8x256"]
    assert {s["what"] for s in doc["skipped"]} == {"references", "end-to-end conversion"}


# ------------------------------------------------------------------ method and inputs


def test_measure_takes_the_median_and_times_the_first_call_apart():
    calls = []

    def work():
        calls.append("full")
        time.sleep(0.02)
        return "result"

    timing, result = measure(work, repeats=3, first=lambda: calls.append("tiny"))
    assert result == "result"
    assert calls == ["tiny", "full", "full", "full", "full"]
    assert len(timing.samples) == 3 and timing.first_call_s is not None
    assert 0.02 <= timing.median < 0.5 and timing.warmup_s >= 0.02


def test_measure_cuts_repeats_to_the_budget_but_keeps_three():
    timing, _ = measure(lambda: time.sleep(0.03), repeats=20, budget_s=0.05)
    assert len(timing.samples) == 3


def test_measure_repeats_tiny_calls_inside_a_sample():
    count = [0]

    def tiny():
        count[0] += 1

    timing, _ = measure(tiny, repeats=2)
    assert count[0] > 3  # the 2 samples were each a loop of calls
    assert 0 < timing.median < 1e-3


@pytest.mark.parametrize(
    "text, expected",
    [("4096x4096", (4096, 4096)), ("11008X4096", (11008, 4096)), ("8*256", (8, 256))],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["4096", "100x100", "64x500", "0x256", "axb", "4x256"])
def test_bad_sizes(text):
    with pytest.raises(UsageError):
        parse_size(text)


@pytest.mark.parametrize(
    "text, expected", [("1e9", 1e9), ("250M", 250e6), ("1.5B", 1.5e9), ("0", 0.0), ("20k", 2e4)]
)
def test_parse_count(text, expected):
    assert parse_count(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "-1", "nan", "inf", "1e9x"])
def test_bad_counts(text):
    with pytest.raises(UsageError):
        parse_count(text)


def _cli_error(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(["bench", *args])
    err = capsys.readouterr().err.strip().splitlines()
    return exc.value.code, err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--size", "100x100"], "--size"),
        (["--e2e-params", "lots"], "--e2e-params"),
        (["--backend", "tpu"], "--backend"),
        (["--type", "q3_k"], "--type"),
        (["--workdir", "/nonexistent/place"], "--workdir"),
        (["-o", "/nonexistent/dir/out.json"], "--output"),
    ],
)
def test_bad_options_give_one_line_and_exit_2(capsys, args, needle):
    code, err = _cli_error(capsys, "--quick", "--size", "64x256", *args)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0]


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="cupy is installed")
def test_unavailable_backend_is_refused(capsys):
    code, err = _cli_error(capsys, "--quick", "--backend", "cupy")
    assert code == 2 and "not available" in err[0]


def test_too_big_a_model_for_the_disk_fails_before_anything_runs(tmp_path):
    options = BenchOptions.quick_defaults(e2e_params=1e15, workdir=str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(DiskFullError, match="--e2e-params"):
        run_bench(options)
    assert time.perf_counter() - start < 30 and not any(tmp_path.iterdir())


def test_without_the_references_they_are_skipped_cleanly(monkeypatch):
    # ggml-python and gguf as if not installed: importing them fails
    for name in ("ggml", "ggml.ggml", "gguf", "gguf.quants"):
        monkeypatch.setitem(sys.modules, name, None)
    options = BenchOptions.quick_defaults(sizes=((8, 256),), e2e_params=0, backends=("numpy",),
                                          qtypes=("q4_0",), layouts=("q4_0_8",))  # fmt: skip
    report = run_bench(options)
    skipped = {s["what"] for s in report.skipped}
    assert {"ggml C reference", "gguf numpy reference", "end-to-end conversion"} <= skipped
    assert report.cases and not any(c.reference or c.ratios for c in report.cases)
    assert {c.name for c in report.cases} == {
        "quantize q4_0 8x256", "quantize q4_0 imatrix 8x256", "dequantize q4_0 8x256",
        "repack q4_0_8 8x256", "unpack q4_0_8 8x256",
    }  # fmt: skip


def test_a_failed_child_conversion_is_one_clear_error(tmp_path):
    spec = {"qtype": "q4_0", "backend": "numpy", "threads": None, "repeats": 1,
            "src": str(tmp_path / "missing"), "out": str(tmp_path / "o.nntr"),
            "warm_src": str(tmp_path / "missing"), "warm_out": str(tmp_path / "w.nntr")}  # fmt: skip
    with pytest.raises(NntrError, match="end-to-end conversion to q4_0 failed") as exc:
        bench.run_child(spec)
    assert "\n" not in str(exc.value) and "Traceback" not in str(exc.value)
