"""Stage `prepare`: the data source(s) -> meta-train images and the target task's splits (`data/prepared/`)."""

from __future__ import annotations

from pathlib import Path

from metaaug import ownership, runner, tracking
from metaaug.config import Params, load_params
from metaaug.data import check_source
from metaaug.declaration import Declaration, Output
from metaaug.plots import class_grid
from metaaug.stages import PARAMS
from metaaug.tasks import load_prepared, prepare

DECLARATION = Declaration("prepare", outputs={"out": Output("data/prepared", "prepare")},
                          params=("seed", "data", "tasks"))


def run(params: Params, out: Path) -> None:
    logged = {"seed": params.seed, "data": params.data.model_dump(), "tasks": params.tasks.model_dump()}
    sources = [s for s in (params.data.source, params.tasks.target_source) if s is not None]
    for source in sources:  # in a second, before any MLflow store
        check_source(source)
    # the sources' paths are inputs too: no output inside a data set (nor a data set inside the output)
    ownership.check_outputs([(out, "prepare")], [Path(s.partition(":")[2]) for s in sources if s.partition(":")[2]])
    with runner.stage_run(DECLARATION, logged, params.tracking.experiment, {"out": out}) as stage:
        tmp = stage.output(out)
        manifest = prepare(params.data, params.tasks, params.seed, tmp)
        prepared = load_prepared(tmp, verify=False)  # just written, not yet marked
        # a few totals as metrics (the run list's columns); per-class counts, one per class, as an artifact
        tracking.log_dict({part: dict(zip(manifest[part]["classes"], manifest[part]["counts"]))
                           for part in ("meta", "target")}, "class_counts.json")
        tracking.log_metrics({"meta.images": len(prepared.meta_labels), "meta.val_images": manifest["meta"]["val_count"],
                              "target.images": len(prepared.target_labels), "target.test_images": len(manifest["test"])})
        tracking.set_tags({"data.meta_source": manifest["meta"]["source"],
                           "data.target_source": manifest["target"]["source"]})
        tracking.log_figure(class_grid(prepared.target_images, prepared.target_labels, manifest["target"]["classes"]),
                            "target_samples.png")
        tracking.log_figure(class_grid(prepared.meta_images, prepared.meta_labels, manifest["meta"]["classes"]),
                            "meta_samples.png")
        print(f"prepare: {len(prepared.meta_labels)} meta-train images, {len(prepared.target_labels)} target images, "
              f"{len(manifest['splits'])} splits -> {out} (mlflow run {stage.run.info.run_id})")


def command(params: Path = PARAMS, out: Path = DECLARATION.option("out")):
    """Load the data source(s) and write meta-train tasks and target splits."""
    run(load_params(params), out)
