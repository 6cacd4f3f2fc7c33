"""The pipeline's five stages, one module each: `run()` reads its inputs, computes, writes its outputs
atomically and logs one MLflow run; `command()` is its command line (`metaaug <stage>`, or
`python stages/<stage>.py`, the entry dvc.yaml runs).

Shared here: the command-line options that name the stages' directories, and the rule that bad
input is one `error:` line and exit code 2, never a traceback.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import typer

from metaaug.errors import MetaaugError

NAMES = ("prepare", "metatrain", "augment", "train", "evaluate")

PARAMS = typer.Option(Path("params.yaml"), "--params", help="Validated configuration file.")
PREPARED = typer.Option(Path("data/prepared"), help="Output of the prepare stage.")
POLICY = typer.Option(Path("models/policy"), help="Output of the metatrain stage.")
AUGMENTED = typer.Option(Path("data/augmented"), help="Output of the augment stage.")
DOWNSTREAM = typer.Option(Path("models/downstream"), help="Output of the train stage.")


def pipeline_facts(manifest: dict) -> dict:
    """What tells one pipeline from another, from prepare's manifest: target data and classes, shots, splits."""
    target = manifest["target"]
    return {"target.source": target["source"], "target.classes": list(target["classes"]),
            "target.shots": target["shots"], "target.splits": len(manifest["splits"]),
            "meta.source": manifest["meta"]["source"]}


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


def run_command(command, argv: list[str] | None = None) -> None:
    """Run one stage's command as a program (`python stages/<stage>.py ...`)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(one_line_errors(command))
    app(args=sys.argv[1:] if argv is None else argv, prog_name=f"stages/{command.__module__.rsplit('.', 1)[-1]}.py")
