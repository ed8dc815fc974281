"""The `opcircuits` command line: thin wrappers that parse options and call library functions."""

from __future__ import annotations

import logging
import sys

import typer

from opcircuits.errors import OpcircuitsError

app = typer.Typer(
    help="Do a CODI model's continuous thoughts encode which arithmetic operations a problem needs?",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="GSM8K: download, label by operation, sample.", no_args_is_help=True)
store_app = typer.Typer(help="Thought stores: import and inspect.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(store_app, name="store")


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )


# --- data commands (issue 2) -------------------------------------------------

# --- extract and store commands (issue 3) ------------------------------------

# --- analyze (issue 4) -------------------------------------------------------

# --- run (issue 5) -----------------------------------------------------------

# --- train (issue 6) ---------------------------------------------------------


def main() -> None:
    """Console entry point: user errors become one red line and exit code 2."""
    try:
        app(standalone_mode=False)
    except OpcircuitsError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted; rerun the same command to resume", fg=typer.colors.YELLOW, err=True)
        sys.exit(130)
