"""The ``nntrtool`` Typer application and its entry point.

Each command lives in its own ``cmd_*`` module and only parses options, calls one library
function and renders the result. Heavy imports (numba, torch, transformers) happen inside the
commands that need them, never here, so ``nntrtool --help`` and ``inspect`` start fast.
Errors a user can cause (:class:`nntrtool.errors.NntrError`) become one line on stderr and an
exit code; Ctrl-C exits 130 and SIGTERM/SIGHUP 128 + the signal, with one line and no
traceback.
"""

from __future__ import annotations

import importlib
import sys
import traceback

import typer

from nntrtool import __version__
from nntrtool.cli import (
    cmd_bench,
    cmd_convert,
    cmd_export,
    cmd_imatrix,
    cmd_inspect,
    cmd_repack,
    cmd_verify,
)
from nntrtool.errors import NntrError

# Typer may carry its own copy of click (``typer._click``) and its own Exit/Abort; the
# exceptions a command line raises come from whichever copy parsed it, so catch them all.
_EXIT: list[type[BaseException]] = [typer.Exit]
_CLICK_ERROR: list[type[BaseException]] = []
_ABORT: list[type[BaseException]] = [typer.Abort]
for _name in ("typer._click.exceptions", "click.exceptions"):
    try:
        _mod = importlib.import_module(_name)
    except ImportError:
        continue
    _CLICK_ERROR.append(_mod.ClickException)
    for _attr, _into in (("Exit", _EXIT), ("Abort", _ABORT)):
        if hasattr(_mod, _attr):
            _into.append(getattr(_mod, _attr))

app = typer.Typer(
    name="nntrtool",
    help="Convert Hugging Face / PyTorch weights into NNTR files quantized in GGML block formats.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nntrtool {__version__}")
        raise typer.Exit()


#: ``--debug``: show the traceback behind an error line.
_DEBUG = {"on": False}


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(
        False, "--debug", help="Show the traceback behind an error (for bug reports)."
    ),
) -> None:
    """Convert Hugging Face / PyTorch weights into NNTR files quantized in GGML block formats."""
    _DEBUG["on"] = bool(debug)


app.command("convert")(cmd_convert.convert_command)
app.command("inspect")(cmd_inspect.inspect_command)
app.command("verify")(cmd_verify.verify_command)
app.command("repack")(cmd_repack.repack_command)
app.command("bench")(cmd_bench.bench_command)
app.command("export")(cmd_export.export_command)
app.command("imatrix")(cmd_imatrix.imatrix_command)


def error_line(message: str) -> None:
    """Print one error line on stderr (``error: ...``)."""
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"[bold red]error:[/] {message}", markup=True
    ) if sys.stderr.isatty() else print(f"error: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    """Run the tool; exits with the command's status (0 ok, 1 failure, 2 bad input, 130 Ctrl-C)."""
    from nntrtool import lease

    try:
        _run(argv)
    finally:  # the run has said what it had to: its sources are free again
        lease.reset()


def _run(argv: list[str] | None) -> None:
    from nntrtool import outputs
    from nntrtool.outputs import exit_status, install_signal_handlers

    install_signal_handlers()
    _DEBUG["on"] = False
    try:
        try:
            rc = app(args=argv, prog_name="nntrtool", standalone_mode=False)
        finally:  # whatever ended the run, no temporary output outlives it
            outputs.remove_leftovers()
    except NntrError as err:
        if _DEBUG["on"]:
            traceback.print_exc()
        lines = str(err).splitlines()[:3]
        error_line("\n".join(lines) if lines else type(err).__name__)
        sys.exit(err.exit_code)
    except tuple(_EXIT) as ex:
        cause = ex.__cause__ or ex.__context__
        if isinstance(cause, KeyboardInterrupt):  # Typer turns Ctrl-C into Exit(130)
            print(outputs.interrupted_line(), file=sys.stderr)
            sys.exit(exit_status(cause))
        sys.exit(ex.exit_code)
    except tuple(_CLICK_ERROR) as ex:
        ex.show()
        sys.exit(ex.exit_code)
    except (*_ABORT, KeyboardInterrupt) as err:
        cause = err if isinstance(err, KeyboardInterrupt) else err.__cause__
        print(outputs.interrupted_line(), file=sys.stderr)
        sys.exit(exit_status(cause or err))
    except BrokenPipeError:
        sys.exit(1)
    except Exception as err:  # a bug: one line, the traceback only with --debug
        if _DEBUG["on"]:
            raise
        from nntrtool.messages import internal_error

        error_line(internal_error(err))
        sys.exit(1)
    if outputs.received is not None:  # Typer returns 130 for a Ctrl-C it caught
        print(outputs.interrupted_line(), file=sys.stderr)
        sys.exit(exit_status())
    sys.exit(rc if isinstance(rc, int) else 0)
