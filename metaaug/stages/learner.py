"""Stage `learner`: which downstream learner `train.model` means here (`models/learner/learner.json`).

`auto` runs the paired learner trial (metaaug.learners) once; a forced `small_cnn` or `resnet` is recorded
as is. Its own stage, before the search, so that the fixed arms (train@<arm>) read the learner and not the
policy: a new policy leaves them untouched. Its output is a function of the prepared data and its params
alone (byte-identical run to run); the trial's wall times go to the MLflow run's description.
"""

from __future__ import annotations

from pathlib import Path

from metaaug import learners, runner, tracking, workers
from metaaug.config import Params, load_params
from metaaug.declaration import Declaration, Output
from metaaug.stages import PARAMS
from metaaug.tasks import load_prepared
from metaaug.training import RECIPE, pick_device

# The trial trains the downstream recipe (train.*) on meta-train tasks sampled from the seed, scored on
# metatrain.query_per_class query images a class; train.device decides its arithmetic (bfloat16 on CUDA).
DECLARATION = Declaration(
    "learner", inputs={"prepared": ("prepare", "data/prepared")},
    outputs={"out": Output("models/learner", "learner")},
    params=("seed", *(f"train.{key}" for key in sorted(RECIPE)), "train.device", "metatrain.query_per_class"),
    reads=("train.workers", "tracking.experiment"))


def run(params: Params, prepared_dir: Path, out: Path) -> dict:
    cfg = params.train
    device = pick_device(cfg.device)
    logged = {"train": cfg.model_dump(include=RECIPE | {"device"}), "seed": params.seed,
              "metatrain.query_per_class": params.metatrain.query_per_class}
    paths = {"prepared": prepared_dir, "out": out}
    with runner.stage_run(DECLARATION, logged, params.tracking.experiment, paths) as stage:
        choice = learners.choose(load_prepared(prepared_dir), params, device, workers.count(cfg.workers, device))
        learners.save(stage.output(out), choice)
        stage.headline = choice["model"]
        tracking.set_description("\n".join(learners.markdown(choice)))
        tracking.set_tags({"metaaug.learner": choice["model"]})
        tracking.log_metrics({f"learner.seconds.{m}": s for m, s in choice.get("seconds", {}).items()})
        print("learner: " + " ".join(learners.markdown(choice)).replace("**", ""))
    return choice


def command(params: Path = PARAMS, prepared: Path = DECLARATION.option("prepared"),
            out: Path = DECLARATION.option("out")):
    """Choose the downstream learner (train.model: auto runs the paired trial; a forced one is recorded)."""
    run(load_params(params), prepared, out)
