"""tools/golden.py: hashing of outputs and the differences --compare reports."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_SPEC = importlib.util.spec_from_file_location(
    "golden", Path(__file__).resolve().parent.parent / "tools" / "golden.py"
)
golden = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(golden)


def test_hash_tree_names_every_file_of_a_folder(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.bin").write_bytes(b"a")
    (tmp_path / "d" / "sub" / "b.json").write_bytes(b"b")
    tree = golden.hash_tree(tmp_path / "d")
    assert set(tree) == {"a.bin", "sub/b.json"}
    assert tree["a.bin"] == golden.sha256(tmp_path / "d" / "a.bin")
    assert tree["a.bin"] != tree["sub/b.json"]
    assert golden.hash_tree(tmp_path / "d" / "a.bin") == {"a.bin": tree["a.bin"]}


def test_the_scratch_folder_path_does_not_change_a_hash(tmp_path: Path) -> None:
    a, b = tmp_path / "nntrtool-golden-aaaaaaaa", tmp_path / "nntrtool-golden-bbbbbbbb"
    for work in (a, b):
        work.mkdir()
        (work / "f").write_bytes(b'{"path": "' + str(work / "src").encode() + b'"}')
    assert golden.sha256(a / "f", a) == golden.sha256(b / "f", b)
    assert golden.sha256(a / "f") != golden.sha256(b / "f")


def test_compare_lists_changed_missing_and_new() -> None:
    want = {"x": {"f": "0" * 64, "g": "1" * 64}, "gone": {"f": "2" * 64}}
    have = {"x": {"f": "3" * 64, "h": "4" * 64}, "added": {"f": "5" * 64}}
    assert golden.compare(want, have) == [
        "added: new case",
        "gone: missing (expected 1 file(s))",
        "x/f: 000000000000 -> 333333333333",
        "x/g: missing",
        "x/h: new file",
    ]
    assert golden.compare(want, want) == []


def test_baseline_names_every_case() -> None:
    baseline = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
    recorded = golden.json.loads((baseline / "golden-6ee9c13.json").read_text())
    cases = [c for c, _, _ in golden._cases({k: Path(k) for k in golden.SOURCE_NAMES}, Path("o"))]
    assert set(recorded) == {"sources", *cases}
    assert not [c for c, files in recorded.items() if "error" in files]
