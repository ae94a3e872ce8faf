"""The `detcompress` command line. Imports nothing heavy: each command module imports the
library it needs inside its function, so `detcompress --help` answers at once."""

from __future__ import annotations

import warnings
from typing import Annotated

import typer

from detcompress import __version__, console
from detcompress.commands import bench, compress, eval, export, init, resume
from detcompress.commands._common import CFG_OPTIONS_CONTEXT

# mmengine imports pkg_resources, which setuptools deprecates loudly; not our users' concern.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

app = typer.Typer(
    name="detcompress",
    help="Compress MMDetection detectors with NNCF: int8 QAT, sparsity, filter pruning, "
    "export to ONNX/OpenVINO, evaluation and benchmarking.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"detcompress {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_print_version, is_eager=True
        ),
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show mmengine's and NNCF's full output.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Show warnings and results only.")
    ] = False,
) -> None:
    """detcompress: one command per step, from an mmdet config to a shippable int8 IR."""
    console.configure(console.VERBOSE if verbose else console.QUIET if quiet else console.DEFAULT)


app.add_typer(init.app, name="init")
app.command(context_settings=CFG_OPTIONS_CONTEXT)(compress.compress)
app.command()(resume.resume)
app.command(name="eval", context_settings=CFG_OPTIONS_CONTEXT)(eval.evaluate)
app.command()(export.export)
app.command()(bench.bench)


def main() -> None:
    app()
