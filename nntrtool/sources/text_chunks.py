"""A text cut into chunks of token ids by the source model's own tokenizer.

The chunks are what ``verify --text`` and ``imatrix`` run the model over: ``ctx`` tokens each,
the first one BOS when the tokenizer adds one, and only the second half of each chunk scored
(see :class:`TextChunks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nntrtool.errors import UsageError
from nntrtool.sources.request import SourceRequest
from nntrtool.sources.torch_model import first_line, quiet_transformers

#: Tokens per chunk by default (llama-perplexity's default context for this measurement).
DEFAULT_CTX = 512
#: Smallest chunk that leaves something to score after the first half.
MIN_CTX = 16
#: Files a Hugging Face tokenizer is loaded from (any one is enough to try).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


@dataclass
class TextChunks:
    """A text cut into equal chunks of token ids, ready to run."""

    path: str
    ctx: int
    chunks: list[list[int]]
    text_tokens: int  # tokens in the whole text (the chunks may use fewer)
    bos: int | None  # the BOS id written at the start of each chunk, if the tokenizer adds one

    @property
    def first_scored(self) -> int:
        """Index of the first position whose prediction is scored (the second half)."""
        return self.ctx // 2

    @property
    def scored_per_chunk(self) -> int:
        return self.ctx - 1 - self.first_scored


def read_text(path: str | Path) -> str:
    """The text of ``path`` (UTF-8); ``UsageError`` when it is missing, unreadable or empty."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--text {path}: no such file; give a UTF-8 text file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(
            f"--text {path}: not UTF-8 text (byte {err.start}); convert it to UTF-8 first"
        ) from None
    except OSError as err:
        raise UsageError(f"--text {path}: cannot read it: {err.strerror or err}") from None
    if not text.strip():
        from nntrtool.messages import text_file_empty

        raise UsageError(text_file_empty(path))
    return text


def load_tokenizer(src: Any, transformers: Any) -> Any:
    """The source's Hugging Face tokenizer; ``UsageError`` when the source has none."""
    root = getattr(src, "root", None)
    has_files = root is not None and any((Path(root) / n).is_file() for n in TOKENIZER_FILES)
    if getattr(src, "gguf", None) is not None and not has_files:
        return _gguf_tokenizer(Path(src.files[0]), transformers)
    if not has_files:
        where = f" in {root}" if root is not None else ""
        raise UsageError(
            f"no tokenizer found{where} (tokenizer.json, tokenizer.model or vocab.json); "
            "--text needs the source model's tokenizer: give the model folder that has it"
        )
    with quiet_transformers(transformers):
        try:
            return transformers.AutoTokenizer.from_pretrained(str(root), local_files_only=True)
        except Exception as err:  # transformers raises many kinds; the user needs one line
            raise UsageError(f"cannot load the tokenizer in {root}: {first_line(err)}") from None


def _gguf_tokenizer(path: Path, transformers: Any) -> Any:
    """The GGUF's own tokenizer (its vocabulary, through transformers)."""
    from nntrtool.export.gguf_tokenizer import load_gguf_tokenizer

    with quiet_transformers(transformers):
        try:
            return load_gguf_tokenizer(path)
        except Exception as err:  # transformers raises many kinds; the user needs one line
            raise UsageError(
                f"cannot make a tokenizer from {path.name}'s vocabulary: {first_line(err)}; "
                "give the model folder that has its tokenizer files"
            ) from None


def tokenize_chunks(
    tokenizer: Any, text: str, path: str | Path, ctx: int = DEFAULT_CTX, chunks: int | None = None
) -> TextChunks:
    """Tokenize ``text`` and cut it into ``chunks`` chunks of ``ctx`` tokens (as many as fit
    when ``chunks`` is None); ``UsageError`` when not even one chunk fits."""
    if ctx < MIN_CTX:
        raise UsageError(f"--ctx {ctx}: use at least {MIN_CTX} tokens per chunk")
    if chunks is not None and chunks < 1:
        raise UsageError(f"--chunks {chunks}: give a number >= 1")
    import transformers

    with quiet_transformers(transformers):
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos = getattr(tokenizer, "bos_token_id", None)
    adds_bos = bos is not None and len(probe) > 0 and probe[0] == bos
    available = len(ids) // ctx
    if available == 0:
        raise UsageError(
            f"--text {path}: {len(ids)} tokens, too short for one chunk of --ctx {ctx}; "
            "give a longer text or a smaller --ctx"
        )
    n = available if chunks is None else min(chunks, available)
    out = []
    for i in range(n):
        chunk = ids[i * ctx : (i + 1) * ctx]
        if adds_bos:
            chunk[0] = int(bos)
        out.append([int(t) for t in chunk])
    return TextChunks(
        path=str(path), ctx=ctx, chunks=out, text_tokens=len(ids), bos=bos if adds_bos else None
    )


def load_text_chunks(
    source: SourceRequest | str | Path,
    text_path: str | Path,
    *,
    ctx: int = DEFAULT_CTX,
    chunks: int | None = None,
) -> TextChunks:
    """Read the text, load the source's tokenizer and cut the text into chunks."""
    from nntrtool.sources.torch_model import import_torch

    _, transformers = import_torch()
    text = read_text(text_path)
    with SourceRequest.of(source).without_adapters().open() as src:
        tokenizer = load_tokenizer(src, transformers)
    return tokenize_chunks(tokenizer, text, text_path, ctx=ctx, chunks=chunks)
