"""The user-facing lines for faults: interruptions, outputs that cannot be written, sources that
change while read, configs that contradict their tensors, values a type cannot hold.

Each function returns one message: what is wrong, where (file, tensor, key, option) and what to
do, in at most three lines. Keeping them here lets one test hold them all to that rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

#: What the entry point prints when a signal ends a run.
INTERRUPTED = "interrupted; nothing written"


def interrupted_after(path: Path) -> str:
    return f"interrupted after {path} was complete; it is kept (remove it if unwanted)"


def disk_full(folder: Path) -> str:
    return (
        f"the disk holding {folder} is full; nothing was written: free some space or write "
        "elsewhere"
    )


def not_writable(folder: Path, why: str = "permission denied") -> str:
    return f"cannot write in the folder {folder}: {why}; choose a folder you can write to"


def folder_missing(final: Path, folder: Path) -> str:
    return f"cannot write {final}: the folder {folder} does not exist; create it first"


def output_is_folder(final: Path) -> str:
    return f"output {final} is a folder: give a file name, e.g. {final / 'model.nntr'}"


def output_exists(final: Path) -> str:
    return f"{final} already exists: pass --force to overwrite it"


def not_ours(final: Path, what: str) -> str:
    return (
        f"{final} is not {what}; --force replaces only nntrtool's own outputs: remove it "
        "yourself or choose another name"
    )


def source_changed(path: Path, detail: str) -> str:
    return (
        f"{path} changed while being read ({detail}); nothing was written: wait until whatever "
        "writes it has finished, then run again"
    )


_FIX_CONFIG = (
    "the config does not describe these weights; fix config.json or give the right one with "
    "--config"
)
_GGUF_AGAIN = "download or convert the GGUF again, or give the original Hugging Face model instead"
_FIX_GGUF = f"the GGUF's metadata does not describe its tensors; {_GGUF_AGAIN}"


def config_mismatch(label: str, value: int, tensor: str, shape: Sequence[int]) -> str:
    return (
        f"config says {label} = {value} but tensor {tensor} has shape {list(shape)}: {_FIX_CONFIG}"
    )


def config_count_mismatch(what: str, value: int, found: str) -> str:
    return f"config says {what} = {value} but the weights hold {found}: {_FIX_CONFIG}"


def out_of_range(tensor: str, value: float, row: int, qtype: str) -> str:
    return (
        f"tensor {tensor!r} holds {value:.6g} (row {row}), too large for {qtype}'s fp16 block "
        "scale (it would decode to inf): scale the weights down, store it as f32 with "
        "--keep-f32, or drop --strict to let nntrtool do so"
    )


def out_of_range_reason(value: float, row: int, qtype: str) -> str:
    return (
        f"values up to {value:.6g} (row {row}) overflow {qtype}'s fp16 block scale: stored as "
        "f32 (--strict refuses instead)"
    )


def no_such_input(path: str | Path, what: str = "file") -> str:
    return f"no such {what}: {path}; check the path"


def input_is_folder(path: str | Path, wanted: str = "an NNTR file") -> str:
    return f"{path} is a folder, not {wanted}; give the file itself"


def not_regular_file(path: str | Path) -> str:
    return f"{path} is not a regular file (a device, a pipe?); give a file on disk"


def damaged_nntr(path: str | Path, problem: str) -> str:
    if "version" in problem or "newer nntrtool" in problem:  # written by another release
        return f"{path}: {problem}: read it with the nntrtool that wrote it, or convert again"
    return (
        f"{path}: {problem}; the file is damaged, cut short or not an NNTR file: convert the "
        "model again"
    )


def option_needs(options: str, needed: str) -> str:
    return f"{options} only apply with {needed}: add {needed}, or drop them"


def bad_pattern(option: str, pattern: str, err: str) -> str:
    return (
        f"{option}: bad regular expression {pattern!r} ({err}); fix the pattern (quote it so "
        "the shell leaves it alone)"
    )


def text_file_empty(path: str | Path) -> str:
    return f"--text {path}: the file is empty; give a file that holds some text"


def adapter_does_not_fit(adapter: str, what: str) -> str:
    return (
        f"adapter {adapter}: {what}; it was made for another model: use it with the model it "
        "was trained on"
    )


def lora_expert_count(adapter: str, where: str, adapter_experts: int, model_experts: int) -> str:
    return (
        f"adapter {adapter} adapts {adapter_experts} experts of {where} but the model has "
        f"{model_experts}: it was made for another model; use it with the model it was "
        "trained on"
    )


def internal_error(err: BaseException) -> str:
    first = (str(err).splitlines() or [""])[0]
    return (
        f"internal error ({type(err).__name__}: {first}); this is a bug in nntrtool: run the "
        "same command with --debug and report its traceback"
    )


def gguf_mismatch(
    path: Path, label: str, value: int, tensor: str, shape: Sequence[int], detail: str = ""
) -> str:
    why = f" ({detail})" if detail else ""
    return (
        f"{path.name}: metadata {label} = {value} but tensor {tensor} has shape {list(shape)}"
        f"{why}: {_FIX_GGUF}"
    )


def gguf_count_mismatch(path: Path, label: str, value: int, found: str) -> str:
    return f"{path.name}: metadata {label} = {value} but the tensors hold {found}: {_FIX_GGUF}"


def gguf_unreadable(path: str | Path, problem: str) -> str:
    damaged = "the GGUF is damaged or not as its architecture expects"
    return f"{Path(path).name}: {problem}; {damaged}: {_GGUF_AGAIN}"


def checkpoint_unreadable(where: str, problem: str) -> str:
    return (
        f"{where}: {problem}; the checkpoint is not the layout its config names: use the "
        "original files, or check config.json's model_type and architectures"
    )
