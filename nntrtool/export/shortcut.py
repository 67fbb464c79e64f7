"""``convert --target nntrainer``: convert and export in one go.

The conversion goes to a temporary NNTR file beside the output folder, with the type overrides
the target runtime needs added after the user's own (``--type`` is first-match-wins, so the user's
choices stand); the export then reads it like any other NNTR file, and the temporary file is
removed whatever happens.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nntrtool.export.nntrainer import (
    ExportResult,
    RuntimeOptions,
    check_output,
    check_target,
    conversion_for,
    default_linear_type,
    export_nntr,
    nntrainer_type_overrides,
)


def convert_and_export(
    source_spec: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    options: Any,
    *,
    target: str = "nntrainer",
    isa: str = "x86",
    runtime: RuntimeOptions | None = None,
    progress: Callable[[int, str], Any] | None = None,
    linear_type: str | None = None,
) -> tuple[Any, ExportResult]:
    """Convert ``source_spec`` with ``options`` and export the result to ``out_dir``.

    ``linear_type`` (q4_k, f16) has the export encode the linear layers in that type; the
    conversion then stores them as ``options.quant_type`` says (f32 where it cannot store
    that type itself; see :func:`nntrtool.export.nntrainer.conversion_for`).

    Returns the conversion report and the export result. ``progress`` is a factory
    ``(total, description) -> Progress`` as for :func:`nntrtool.convert.convert`.
    """
    from nntrtool.convert import convert

    check_target(target)
    out = Path(os.path.abspath(os.fspath(out_dir)))
    check_output(out, options.force)
    conv_options, linear_type, root = _nntrainer_conversion(source_spec, options, isa, linear_type)
    conv_options = dataclasses.replace(conv_options, force=True, dry_run=False)
    # A private folder beside the output, so the NNTR file can carry the output's name (the
    # weight file is named after it) without clashing with anything of the user's.
    from nntrtool.outputs import forget, make_temp_dir

    tmp_dir = make_temp_dir(out, ".convert")
    tmp = tmp_dir / f"{out.name}.nntr"
    try:
        report = convert(source_spec, tmp, conv_options, progress=progress)
        # The bar names the output folder, not the temporary file.
        export_progress = (
            (lambda total, _description: progress(total, f"export {out.name}"))
            if progress is not None
            else None
        )
        result = export_nntr(
            tmp,
            out,
            target,
            isa,
            force=options.force,
            progress=export_progress,
            runtime=runtime,
            source_dir=root,
            linear_type=linear_type,
        )
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        forget(tmp_dir)
    return report, result


def nntrainer_conversion(
    source_spec: str | os.PathLike[str],
    options: Any,
    *,
    isa: str = "x86",
    linear_type: str | None = None,
) -> tuple[Any, str | None]:
    """The conversion options ``convert --target nntrainer`` converts with (``--quant-type
    auto`` resolved, the runtime's type overrides added after the user's) and the linear type
    the export then encodes; what ``--dry-run`` shows."""
    conv_options, linear_type, _ = _nntrainer_conversion(source_spec, options, isa, linear_type)
    return conv_options, linear_type


def _nntrainer_conversion(
    source_spec: str | os.PathLike[str], options: Any, isa: str, linear_type: str | None
) -> tuple[Any, str | None, Any]:
    from nntrtool.plan.tensors import default_quant_type

    with options.source(source_spec).without_adapters().open() as src:
        config, root = src.config, src.root
        quant_type = options.quant_type
        if quant_type == "auto":
            quant_type = default_quant_type(src)
            if quant_type == "q4_0" and linear_type is None:
                quant_type = default_linear_type(config, isa)
    # With ``keep`` the blocks stay as they are and export says what it cannot run.
    if linear_type is None:
        quant_type, linear_type = conversion_for(quant_type)
    wanted = linear_type or quant_type
    extra = () if quant_type == "keep" else nntrainer_type_overrides(wanted, config)
    overrides = tuple(options.type_overrides) + extra
    conv_options = dataclasses.replace(options, quant_type=quant_type, type_overrides=overrides)
    return conv_options, linear_type, root
