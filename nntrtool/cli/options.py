"""Options several commands share, declared once so their names and help agree everywhere."""

from __future__ import annotations

import typer

from nntrtool.qtypes import TYPES

#: Where a source comes from besides its path or id (convert, verify, imatrix).
REVISION = typer.Option(
    None, "--revision", help="Branch, tag or commit of a Hugging Face id.", show_default=False
)
CONFIG = typer.Option(
    None, "--config", help="config.json for a lone .safetensors file.", show_default=False
)
GGUF_FILE = typer.Option(
    None,
    "--gguf-file",
    metavar="NAME",
    help="The GGUF file to take from a folder or a Hugging Face repo.",
    show_default=False,
)
LORA_SCALE = typer.Option(
    None,
    "--lora-scale",
    metavar="S",
    help="Multiply each --lora's scaling by S (one per --lora, in order; default 1).",
    show_default=False,
)
THREADS = typer.Option(
    None, "--threads", "-t", min=1, help="Threads to use (default: all cores).", show_default=False
)
FORCE = typer.Option(False, "--force", "-f", help="Overwrite an existing output.")
#: Running a model over a text (verify --text, imatrix).
CTX = typer.Option(512, "--ctx", help="Tokens per chunk of the text.")
CHUNKS = typer.Option(
    None, "--chunks", min=1, help="Use at most N chunks of the text (all that fit by default)."
)


def quiet(what: str = "No progress output.") -> typer.models.OptionInfo:
    """``--quiet`` / ``-q`` with the command's own words for what it silences."""
    return typer.Option(False, "--quiet", "-q", help=what)


def default_limits_text() -> str:
    """``q4_0=0.18 q6_k=0.04 ...``: verify's default limits, from the type table."""
    return " ".join(
        f"{t.name}={t.max_rel_err:g}" for t in TYPES if t.quantized and t.plain_name is None
    )
