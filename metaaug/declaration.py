"""What a stage is, declared once: its inputs and outputs with their kinds, the params its output bytes depend
on, the params it reads without depending on them, and whether it writes a wall-time file.

Every module in metaaug/stages/ holds one `DECLARATION`; from it come the stage's command-line options
(`Declaration.option`), its DVC stage (`dvc_stage`: cmd, data deps, params, outs, metrics; tests/test_structure.py
checks dvc.yaml against it and names any mismatch) and what the runner checks, tags and publishes
(metaaug.runner.stage_run). The stage names, in pipeline order, come from these modules (`names`,
`pipeline_order`), so adding a stage is its module plus its dvc.yaml entry.

Light on purpose (no torch, no MLflow): `metaaug --help` lists the stages without importing them.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

from metaaug.errors import MetaaugError

# The params a stage may read without depending on them (DVC then does not rerun it when they change): they
# change how it runs or where it logs, never its output bytes. Execution knobs (processes, ranks) and
# tracking names; nothing else may be declared "read, not a dependency" (tests/test_structure.py).
EXECUTION_KNOBS = ("workers", "distributed")
TRACKING_SECTION = "tracking"


def may_be_no_dependency(key: str) -> bool:
    """Whether params key `key` may be read by a stage without being one of its DVC params."""
    section, _, leaf = key.partition(".")
    return section == TRACKING_SECTION or leaf.rsplit(".", 1)[-1] in EXECUTION_KNOBS


@dataclass(frozen=True)
class Output:
    """One thing a stage writes: a folder (or a JSON file, `file`) at `path`, marked as `kind`. `cache`: a
    DVC-cached output (False: git-tracked); `metric`: listed under DVC's metrics."""

    path: str
    kind: str
    file: bool = False
    cache: bool = True
    metric: bool = False


@dataclass(frozen=True)
class Declaration:
    """One stage. `inputs`: command-line option -> (the stage that writes it, its default path); `outputs`:
    option -> Output; `params`: params.yaml keys or whole sections its outputs depend on (DVC params; a section
    means every key in it but the `reads` ones); `reads`: keys it reads that are no dependency
    (see may_be_no_dependency); `timing`: it writes its wall times to timings/<name>.json (git-ignored, no
    DVC output); `splits`: it logs to the arm x split experiment too; `matrix`: (item, params key of a list):
    one DVC stage per item of that list (DVC's `matrix:`, named `<name>@<item>`), its paths holding `{item}`
    where the item goes (`--<item>` on its command line)."""

    name: str
    inputs: dict[str, tuple[str, str]] = field(default_factory=dict)
    outputs: dict[str, Output] = field(default_factory=dict)
    params: tuple[str, ...] = ()
    reads: tuple[str, ...] = (TRACKING_SECTION + ".experiment",)
    timing: bool = False
    splits: bool = False
    matrix: tuple[str, str] | None = None

    @property
    def main(self) -> str | None:
        """The option of the output marked with the stage's own name (its digest tags the run), if any."""
        return next((opt for opt, out in self.outputs.items() if out.kind == self.name), None)

    @property
    def timing_path(self) -> str | None:
        at = f"@{{{self.matrix[0]}}}" if self.matrix else ""
        return f"timings/{self.name}{at}.json" if self.timing else None

    def for_item(self, path: str | Path | None, item: str) -> Path | None:
        """A declared path with the matrix item in its place (any other path as given)."""
        placeholder = f"{{{self.matrix[0]}}}" if self.matrix else None
        return None if path is None else Path(str(path).replace(placeholder, item) if placeholder else path)

    def _templated(self, text: str) -> str:
        """A path or command as dvc.yaml says it: the matrix placeholder as DVC's `${item.<item>}`."""
        return text.replace(f"{{{self.matrix[0]}}}", f"${{item.{self.matrix[0]}}}") if self.matrix else text

    def option(self, name: str, help: str | None = None):
        """The Typer option of input or output `name`, its default the declared path (paths are named once)."""
        import typer

        if name == "timing":
            return typer.Option(None, help=help or f"Where the wall times go (dvc.yaml: {self.timing_path}).")
        path = self.inputs[name][1] if name in self.inputs else self.outputs[name].path
        what = f"Output of the {self.inputs[name][0]} stage." if name in self.inputs else f"Where {self.name} writes."
        return typer.Option(Path(path), help=help or what)

    def cmd(self) -> str:
        """The command dvc.yaml runs: the stage's entry point with every declared path as an option."""
        options = [f"--{self.matrix[0]} {{{self.matrix[0]}}}"] if self.matrix else []
        options += [f"--{opt} {path}" for opt, (_, path) in self.inputs.items()]
        options += [f"--{opt} {out.path}" for opt, out in self.outputs.items()]
        options += [f"--timing {self.timing_path}"] if self.timing else []
        return self._templated(" ".join([f"python stages/{self.name}.py", *options]))

    def dvc_params(self) -> list[str]:
        """The DVC params: each declared key; a declared section whole, or, where it holds keys the stage reads
        without depending on them or one sub-section per choice of a key (its SELECTOR: metatrain.method), each
        of its other keys (a key added to the section later is then a dependency too, and tests/test_structure.py
        names it until dvc.yaml lists it) and only the chosen sub-section, `<section>.${<section>.<selector>}`,
        which DVC resolves from params.yaml."""
        from metaaug.config import Params

        keys = []
        for key in self.params:
            section = getattr(Params.model_fields.get(key), "annotation", None)
            selector = getattr(section, "SELECTOR", None)  # one sub-section per choice: only the chosen one
            chosen = get_args(section.model_fields[selector].annotation) if selector else ()
            if (chosen or any(read.startswith(key + ".") for read in self.reads)) and hasattr(section, "model_fields"):
                keys += [f"{key}.{leaf}" for leaf in section.model_fields
                         if f"{key}.{leaf}" not in self.reads and leaf not in chosen]
                keys += [f"{key}.${{{key}.{selector}}}"] if chosen else []  # DVC templating: the chosen section
            else:
                keys.append(key)
        return keys

    def dvc_stage(self) -> dict:
        """What dvc.yaml must say of this stage, but the code deps (tests/test_structure.py checks those by the
        imports of its command): cmd, the data deps (its inputs), params, outs and metrics."""
        outs = [{o.path: {"cache": False}} if not o.cache else self._templated(o.path) for o in self.outputs.values()
                if not o.metric]
        matrix = {"matrix": {self.matrix[0]: f"${{{self.matrix[1]}}}"}} if self.matrix else {}
        stage = {**matrix, "cmd": self.cmd(), "deps": [path for _, path in self.inputs.values()],
                 "params": self.dvc_params(), "outs": outs}
        metrics = [{o.path: {"cache": o.cache}} for o in self.outputs.values() if o.metric]
        return {**stage, **({"metrics": metrics} if metrics else {})}


def names() -> list[str]:
    """The stage modules in metaaug/stages/, found without importing them."""
    import metaaug.stages

    return sorted(m.name for m in pkgutil.iter_modules(metaaug.stages.__path__) if not m.name.startswith("_"))


def declarations() -> dict[str, Declaration]:
    """Every stage's declaration, in pipeline order (a stage after the stages whose outputs it reads)."""
    found = {name: importlib.import_module(f"metaaug.stages.{name}").DECLARATION for name in names()}
    ordered: dict[str, Declaration] = {}

    def place(name: str, path: tuple[str, ...]) -> None:
        if name in ordered:
            return
        if name in path:
            raise MetaaugError(f"stages read each other's outputs in a cycle: {' -> '.join(path + (name,))}")
        for upstream, _ in found[name].inputs.values():
            place(upstream, path + (name,))
        ordered[name] = found[name]

    for name in found:
        place(name, ())
    return ordered


def expanded_stages(stages: dict, params: dict) -> dict[str, dict]:
    """dvc.yaml's stage entries as DVC runs them: a `matrix:` stage as one entry per item of its list (read from
    `params`, a params.yaml mapping), named `<stage>@<item>`, with `${item.<key>}` filled in. For running the
    stages without DVC (the tests' in-process repro, bench/gpu_check.py)."""
    import yaml

    found = {}
    for name, stage in stages.items():
        if "matrix" not in stage:
            found[name] = stage
            continue
        (key, listed), = stage["matrix"].items()
        items = params
        for part in listed.removeprefix("${").removesuffix("}").split("."):
            items = items[part]
        entry = yaml.safe_dump({k: v for k, v in stage.items() if k != "matrix"})
        found.update({f"{name}@{item}": yaml.safe_load(entry.replace(f"${{item.{key}}}", item)) for item in items})
    return found
