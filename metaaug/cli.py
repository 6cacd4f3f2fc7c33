"""The `metaaug` command line (Typer): one command per pipeline stage (each module of metaaug/stages/),
plus `results`.

Each stage's command lives in its module (metaaug/stages/<stage>.py); this app only
gathers them, and imports a stage only to run it: a stage imports torch, MLflow and
Albumentations (seconds), which `metaaug --help` and `--version` never wait for.
Bad input never shows a traceback: a MetaaugError or a file-system error (OSError)
becomes one line on stderr and exit code 2 (metaaug.stages.one_line_errors).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from pathlib import Path

import typer

from metaaug import __version__
from metaaug.errors import MetaaugError
from metaaug.declaration import names
from metaaug.stages import one_line_errors, run_command

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Meta-learn image augmentation policies and prove the gain (DVC + MLflow).")


def command_help(stage: str) -> str:
    """The docstring of a stage's `command()`, read from its source without importing the module."""
    source = Path(importlib.util.find_spec(f"metaaug.stages.{stage}").origin).read_text()
    return next(ast.get_docstring(node) for node in ast.parse(source).body
                if isinstance(node, ast.FunctionDef) and node.name == "command")


def add_stage(stage: str) -> None:
    """`metaaug <stage> ARGS`: the stage's own command with ARGS (its options and its --help)."""

    @app.command(stage, help=command_help(stage), add_help_option=False,
                 context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def forward(context: typer.Context) -> None:
        run_command(importlib.import_module(f"metaaug.stages.{stage}").command, context.args, f"metaaug {stage}")


for name in names():  # every module in metaaug/stages/, found without importing it
    add_stage(name)


@app.command("results")
@one_line_errors
def results_cmd(evaluation: Path = typer.Option(Path("reports/evaluation.json"),
                                                help="The evaluate stage's full comparison."),
                timings: Path = typer.Option(Path("timings"), help="The stages' wall times (timings/*.json).")):
    """Print the verdict and the results tables (markdown) from the latest evaluate output, and the search cost."""
    from metaaug.files import read_json
    from metaaug.report import results_markdown
    from metaaug.timing import search_cost

    expected = "the output of `dvc repro` (evaluate stage)"
    if not evaluation.is_file():
        raise MetaaugError(f"{evaluation}: not found; expected {expected}")
    doc = read_json(evaluation, expected)
    if not isinstance(doc, dict):
        raise MetaaugError(f"{evaluation}: is not the evaluation evaluate writes; expected {expected} (rerun it)")
    cost = search_cost(timings, doc.get("inputs") if isinstance(doc.get("inputs"), dict) else {})
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
