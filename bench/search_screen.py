"""The screen before the race, measured: what share of a clean learner's class signal each op group leaves.

For each bench task (bench/adaptivity.py's builders): prepare once, sample the meta-train tasks metatrain samples
under each search seed, train the screen's clean learners (the `none` reference's proxies) on the first
`metatrain.race.screen_tasks` of them and score them on query images augmented by each op group alone at caps
1, 1/2, 1/4, 1/8 (metaaug/search/screen.py). Prints per task and seed the share kept per group and cap, and the
limits `screen_keep` gives — the measurement the default `screen_keep` is chosen on.

    python bench/search_screen.py [--task digits-5-9,digits-0-4,intensity,position] [--seeds 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adaptivity import task_params  # noqa: E402

from metaaug.config import load_params  # noqa: E402
from metaaug.ops import OP_NAMES  # noqa: E402
from metaaug.policies import fixed_policy  # noqa: E402
from metaaug.distributed import World  # noqa: E402
from metaaug.search import SearchSpace, meta_train_tasks  # noqa: E402
from metaaug.search import scorer as search_scorer  # noqa: E402
from metaaug.search import screen as screening  # noqa: E402
from metaaug.stages import prepare  # noqa: E402
from metaaug.tasks import load_prepared  # noqa: E402
from metaaug.timing import machine_description  # noqa: E402
from metaaug.training import set_threads  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--task", default="digits-5-9,digits-0-4,intensity,position")
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()
    start = time.perf_counter()
    print("| task | seed | clean | " + " | ".join(f"{g} (caps {', '.join(map(str, screening.LEVELS))})"
                                                   for g in ("geometric", "scale", "colour", "histogram", "cutout"))
          + " | limits |")
    print("|---|---|---|" + "---|" * 6)
    for name in args.task.split(","):
        with tempfile.TemporaryDirectory(prefix="metaaug-screen-") as scratch:
            work = Path(scratch)
            params = task_params(load_params(args.params), name, work, 20)
            prepare.run(params, work / "prepared")
            prepared = load_prepared(work / "prepared")
            space = SearchSpace(tuple(params.metatrain.ops or OP_NAMES), channels=prepared.meta_images.shape[-1])
            set_threads(prepared.meta_images.shape[1])
            cfg = params.metatrain
            proxy = params.train.model_copy(update={"epochs": cfg.proxy_epochs, "width": cfg.proxy_width})
            clean = space.policy(space.project(fixed_policy("none", image_channels=space.channels)))
            for seed in range(args.seeds):
                tasks = meta_train_tasks(prepared, params.tasks.shots, cfg, cfg.race.screen_tasks, seed)
                ids = list(range(cfg.race.screen_tasks))
                with search_scorer(tasks, cfg, proxy, World()) as scorer:  # the stage's workers and populations
                    results = scorer.probe([(clean, t) for t in ids], [p for _, _, p in screening.probes(space)])
                screen = screening.judge(space, [(v, probed) for v, _, probed in results], tasks[0].n_classes,
                                         cfg.race.screen_keep, ids)
                cells = [" / ".join(f"{share:.2f}" for share in screen.kept.get(g, [])) or "—"
                         for g in ("geometric", "scale", "colour", "histogram", "cutout")]
                print(f"| {name} | {seed} | {100 * sum(screen.clean) / len(screen.clean):.1f} % | "
                      + " | ".join(cells) + f" | {screen.describe() or 'none'} |", flush=True)
    print(f"\nscreen_keep = {load_params(args.params).metatrain.race.screen_keep}; measured on: "
          f"{machine_description()}; {time.perf_counter() - start:.0f} s in all.")


if __name__ == "__main__":
    main()
