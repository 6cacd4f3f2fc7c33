"""The `metaaug` console script: the pipeline's command line (metaaug/cli.py) when the `pipeline` extra is
installed, else one line saying so, not a traceback (a core install has the Python API only)."""

from __future__ import annotations

import sys

PIPELINE_MODULES = ("typer", "click", "mlflow", "dvc", "matplotlib", "sklearn", "PIL")


def main() -> None:
    try:
        from metaaug.cli import main as cli_main
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in PIPELINE_MODULES:
            raise
        print(f"error: the metaaug command runs the pipeline, which needs {exc.name}; expected "
              "`pip install \"metaaug[pipeline]\"` (the core install is the Python API only)", file=sys.stderr)
        raise SystemExit(2) from None
    cli_main()
