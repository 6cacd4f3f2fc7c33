"""The `metaaug` command line (Typer): one command per pipeline stage, plus `results`.

Each stage's command lives in its module (metaaug/stages/<stage>.py); this app only
gathers them. Bad input never shows a traceback: a MetaaugError or a file-system error
(OSError) becomes one line on stderr and exit code 2 (metaaug.stages.one_line_errors).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from metaaug import __version__
from metaaug.errors import MetaaugError
from metaaug.stages import augment, evaluate, metatrain, one_line_errors, prepare, train

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Meta-learn image augmentation policies and prove the gain (DVC + MLflow).")
for stage in (prepare, metatrain, augment, train, evaluate):
    app.command(stage.__name__.rsplit(".", 1)[-1])(one_line_errors(stage.command))


@app.command("results")
@one_line_errors
def results_cmd(evaluation: Path = typer.Option(Path("reports/evaluation.json"),
                                                help="The evaluate stage's full comparison."),
                timings: Path = typer.Option(Path("timings"), help="The stages' wall times (timings/*.json).")):
    """Print the verdict and the results tables (markdown) from the latest evaluate output, and the search cost."""
    from metaaug.io import read_json
    from metaaug.report import results_markdown
    from metaaug.timing import search_cost

    expected = "the output of `dvc repro` (evaluate stage)"
    if not evaluation.is_file():
        raise MetaaugError(f"{evaluation}: not found; expected {expected}")
    doc, cost = read_json(evaluation, expected), search_cost(timings)
    try:
        text = results_markdown(doc, cost)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise MetaaugError(f"{evaluation} or {timings}/*.json: does not hold what evaluate and the timed stages write "
                           f"({type(exc).__name__}: {str(exc)[:100]}); expected {expected} (rerun it)") from None
    typer.echo(text)


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"metaaug {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True,
                                              help="Print the version and exit.")):
    """Meta-learn image augmentation policies and prove the gain (DVC + MLflow)."""


def main(argv: list[str] | None = None) -> None:
    app(args=sys.argv[1:] if argv is None else argv, prog_name="metaaug")
