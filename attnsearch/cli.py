"""attnsearch command line (Typer). Thin: parse, call into search/, print."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from . import __version__

app = typer.Typer(help="Search hybrid attention layouts by measurement.", no_args_is_help=True,
                  rich_markup_mode="rich")


def _version(value: bool):
    if value:
        typer.echo(f"attnsearch {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                         help="Print the version and exit.")] = None):
    """attnsearch: per-layer attention layouts on the quality-throughput Pareto front."""


@app.command()
def version():
    """Print the version."""
    typer.echo(f"attnsearch {__version__}")


from .cli_tune import register as _register_tune; _register_tune(app)  # noqa: E402,E702 - cache list|clear, tune (issue 8)
