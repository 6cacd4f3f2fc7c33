"""The `metaaug` command line: one command per pipeline stage (Typer).

Bad input never shows a traceback: a MetaaugError becomes one line on stderr
and exit code 2.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import typer

from metaaug.config import load_params
from metaaug.errors import MetaaugError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Meta-learn image augmentation policies and prove the gain (DVC + MLflow).")

PARAMS = typer.Option(Path("params.yaml"), "--params", help="Validated configuration file.")
PREPARED = typer.Option(Path("data/prepared"), help="Output of the prepare stage.")
POLICY = typer.Option(Path("models/policy"), help="Output of the metatrain stage.")
AUGMENTED = typer.Option(Path("data/augmented"), help="Output of the augment stage.")
DOWNSTREAM = typer.Option(Path("models/downstream"), help="Output of the train stage.")


def one_line_errors(fn):
    """Turn MetaaugError into `error: <message>` on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MetaaugError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper


@app.command("prepare")
@one_line_errors
def prepare_cmd(params: Path = PARAMS, out: Path = typer.Option(Path("data/prepared"))):
    """Load the data source(s) and write meta-train tasks and target splits."""
    from metaaug.pipeline import prepare_stage

    prepare_stage(load_params(params), out)


@app.command("metatrain")
@one_line_errors
def metatrain_cmd(params: Path = PARAMS, prepared: Path = PREPARED, out: Path = POLICY):
    """Meta-learn the augmentation policy on tasks from the meta-train classes (resumes from its checkpoint)."""
    from metaaug.pipeline import metatrain_stage

    metatrain_stage(load_params(params), prepared, out)


@app.command("augment")
@one_line_errors
def augment_cmd(params: Path = PARAMS, prepared: Path = PREPARED, policy: Path = POLICY, out: Path = AUGMENTED):
    """Apply a policy (any metaaug policy directory: no further search) to the target training images."""
    from metaaug.pipeline import augment_stage

    augment_stage(load_params(params), prepared, policy, out)


@app.command("train")
@one_line_errors
def train_cmd(params: Path = PARAMS, prepared: Path = PREPARED, policy: Path = POLICY, augmented: Path = AUGMENTED,
              out: Path = DOWNSTREAM):
    """Train the downstream learner for every arm on every target split."""
    from metaaug.pipeline import train_stage

    train_stage(load_params(params), prepared, out, policy, augmented)


@app.command("evaluate")
@one_line_errors
def evaluate_cmd(params: Path = PARAMS, prepared: Path = PREPARED, downstream: Path = DOWNSTREAM,
                 policy: Path = POLICY, metrics: Path = typer.Option(Path("metrics.json")),
                 plots: Path = typer.Option(Path("plots")),
                 reports: Path = typer.Option(Path("reports"), help="Where report.md and its PNGs go.")):
    """Test accuracy per arm, paired differences with bootstrap CIs, DVC plots, the report."""
    from metaaug.pipeline import evaluate_stage

    evaluate_stage(load_params(params), prepared, downstream, metrics, plots, policy, reports)


@app.command("results")
@one_line_errors
def results_cmd(metrics: Path = typer.Option(Path("metrics.json"))):
    """Print the results table (markdown) from the latest evaluate output."""
    from metaaug.io import read_json
    from metaaug.pipeline import results_markdown

    if not metrics.is_file():
        raise MetaaugError(f"{metrics}: not found; expected the output of `dvc repro` (evaluate stage)")
    typer.echo(results_markdown(read_json(metrics)))


def main(argv: list[str] | None = None) -> None:
    app(args=sys.argv[1:] if argv is None else argv, prog_name="metaaug")
