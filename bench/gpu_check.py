"""The GPU path on real hardware, in one unattended run of under 5 minutes on one NVIDIA H100: does the
pipeline run on CUDA, does the GPU pick the CPU's policy, how fast is batched augmentation there, and do
the train stage's torchrun modes run on NCCL. Prints one markdown table, a row per check.

* A, the pipeline on CUDA: a fresh project in a temporary directory (bench/_common.py make_project: the
  repo's dvc.yaml, stages/, metaaug/ and params.yaml with `train.device: cuda`; MLflow in the project's
  own SQLite file), then the five stages in dvc.yaml order, each as its dvc.yaml command (`python
  stages/<name>.py ...`) in a process of its own, timed. Subprocesses rather than in-process calls (as
  tests/helpers.py's repro_in_process does): CUDA state (a context, an out-of-memory error, a device-side
  assert) dies with its stage instead of poisoning the checks after it, a hung stage can be killed at its
  time limit, and each stage starts as `dvc repro` would start it. Then the chosen policy (policy.json's
  provenance `baseline_point`, search.json's `theta`) and the evaluation headline (metrics.json: each
  arm's mean test accuracy, `gain` and its interval).
* B, the same policy as on the CPU: metatrain again on A's prepared data with `train.device: cpu`
  (`--params params-cpu.yaml --out models/policy-cpu`), and A's policy.json against it: identical bytes,
  or the same baseline point and theta within 1e-6, or what differs. A difference is reported, not failed:
  where metatrain scores its proxies on train.device, bfloat16 scores can tip a close race. The device
  metatrain's MLflow run reports (any param, metric or tag naming a device) is shown where there is one.
* C, batched augmentation: metaaug.policies.sample_apply with TrivialAugment-Wide and RandAugment on
  random 3x32x32 and 1x8x8 batches, images per second on the device (torch.cuda.synchronize around each
  timing, after a warm-up) against the CPU (torch's default threads), best of 3 each, and their ratio.
* D, the train stage under torchrun: `python -m torch.distributed.run --standalone --nproc_per_node=<GPUs>
  stages/train.py ...` on A's project, with `train.distributed: ddp` and then `shard` (params-ddp.yaml,
  params-shard.yaml; arms `none` and `learned` only, to keep within time), timed; the outputs must load
  (results.json: every arm x split; the .pt state dicts) and their final losses are compared with A's.
  With one GPU both run as one rank, which the rows say.

Every check catches its own failure: its row reads `FAILED: <reason>` (the failing command's last lines
go to stderr) and the run goes on. Every command gets a share of `--time-limit`, so the run ends in time
even when a stage hangs. Exit code 0 only when no row failed; 2 without CUDA (unless `--device cpu`).

    python bench/gpu_check.py [--device cuda|cpu] [--parts ABCD] [--time-limit SECONDS] [--keep DIR]

`--device cpu` is the dry run: every part with the CPU in place of CUDA, on tiny params (a few epochs,
two splits, a small search budget) and smaller batches, so that the script's logic is checked on a machine
without a GPU (tests/test_gpu_check.py), in under 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

NO_CUDA = ("error: no CUDA device (torch.cuda.is_available() is False); expected a GPU machine, "
           "or --device cpu for a dry run")
# Where each part must end, as a fraction of --time-limit from the start: a slow part leaves the later ones
# their share rather than the whole run overrunning (A is the most telling, so it gets the most).
MARKS = {"A": 0.62, "B": 0.72, "C": 0.78, "D ddp": 0.90, "D shard": 1.0}
D_ARMS = ["none", "learned"]  # Part D's arms: the cheapest one and the bank-fed one ...
D_STAGES = ["train@none", "train_learned"]  # ... and the DVC stages that train them


class CheckFailed(Exception):
    """A check's one-line reason for failing."""


class Report:
    """The table's rows, each (part, check, result, verdict), and whether any failed."""

    def __init__(self):
        self.rows: list[tuple[str, str, str, str]] = []

    def check(self, part: str, what: str, fn):
        """Run fn() -> (result text, value): a `pass` row and the value, or a FAILED row and None."""
        try:
            result, value = fn()
        except Exception as exc:  # every failure is a row: the run goes on to the next check
            reason = str(exc) if isinstance(exc, CheckFailed) else f"{type(exc).__name__}: {exc}"
            self.add(part, what, "", "FAILED: " + one_line(reason))
            print(f"{part} {what}: FAILED: {one_line(reason)}", file=sys.stderr)
            return None
        self.add(part, what, result, "pass")
        print(f"{part} {what}: {result}", file=sys.stderr)
        return value

    def add(self, part: str, what: str, result: str, verdict: str) -> None:
        self.rows.append((part, what, result, verdict))

    @property
    def failed(self) -> bool:
        return any(verdict.startswith("FAILED") for *_, verdict in self.rows)

    def table(self) -> str:
        cell = lambda s: s.replace("|", "\\|")  # noqa: E731
        lines = ["| part | check | result | verdict |", "|---|---|---|---|"]
        return "\n".join(lines + ["| " + " | ".join(map(cell, row)) + " |" for row in self.rows])


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class Clock:
    """Seconds left before each part's mark (a fraction of the time limit)."""

    def __init__(self, limit: float):
        self.start, self.limit = time.monotonic(), limit

    def left(self, mark: str) -> float:
        left = self.start + MARKS[mark] * self.limit - time.monotonic()
        if left < 5:
            raise CheckFailed(f"no time left for it ({left:.0f} s to its mark at {MARKS[mark]:.0%} of "
                              f"--time-limit {self.limit:.0f} s); rerun with --parts or a larger --time-limit")
        return left


# ---------------------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------------------

def dvc_stages(project: Path) -> dict[str, dict]:
    """The project's DVC stages by name, a matrix stage's items each on its own (train@none, ...)."""
    import yaml

    from metaaug.declaration import expanded_stages

    return expanded_stages(yaml.safe_load((project / "dvc.yaml").read_text())["stages"],
                           yaml.safe_load((project / "params.yaml").read_text()))


def stage_argv(project: Path, name: str, **options: str) -> list[str]:
    """The dvc.yaml command of DVC stage `name` (`train@none`: a matrix item's), from its script on
    (`stages/<stage>.py --prepared ...`), with the given options (`out="models/x"` sets --out) replaced or added."""
    cmd = shlex.split(dvc_stages(project)[name]["cmd"])
    script = next(i for i, token in enumerate(cmd) if token.startswith("stages/") and token.endswith(".py"))
    argv = cmd[script:]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    return argv


def run_logged(cmd: list[str], project: Path, env: dict, log: Path, timeout: float) -> float:
    """Run `cmd` in its own process group, output to `log`; its wall seconds, or CheckFailed with the
    reason (its `error:` line or last line; its last lines to stderr) or the time-out (the group killed)."""
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            if proc.poll() is None:  # timed out, or this script was interrupted: end the whole tree
                from _common import kill_group

                kill_group(proc)
    seconds = time.perf_counter() - start
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    if code is None or code != 0:
        print(f"--- last lines of {' '.join(cmd[:2])} ... ({log}) ---", *lines[-25:], "---", sep="\n",
              file=sys.stderr)
    if code is None:
        raise CheckFailed(f"timed out after {timeout:.0f} s (its share of --time-limit), killed")
    if code != 0:
        raise CheckFailed(f"exit {code}: {failure_line(lines)}")
    return seconds


def failure_line(lines: list[str]) -> str:
    """Why a command failed: a stage's own `error:` line; else the first exception a traceback names (a
    torchrun child's, not torchrun's ChildFailedError after it; a CUDA error, not the hints below it); else
    the last line."""
    lines = [re.sub(r"^\[(default|rank)\d+\]:\s*", "", line) for line in lines]  # torchrun's prefix
    errors = [line for line in lines if line.startswith("error:")]
    raised = [line for line in lines if re.match(r"[\w.]+(Error|Exception)(:|$)", line)]
    return (errors[-1:] or raised[:1] or lines[-1:] or ["(no output)"])[0].strip()


# ---------------------------------------------------------------------------------------------------------
# Params
# ---------------------------------------------------------------------------------------------------------

def shrink(params: dict) -> dict:
    """tests/conftest.py's tiny_params applied to `params`: a whole pipeline in seconds on a CPU."""
    params["tasks"]["splits"] = 2
    params["train"]["epochs"] = 4
    params["train"]["arms"] = ["none", "trivialaugment"]  # and the learned arm (stage train_learned)
    params["metatrain"].update(proxy_epochs=2, query_per_class=20, budget=3.0)
    params["metatrain"]["race"].update(tasks=1, step=1, confirm_tasks=2)
    params["metatrain"]["cem"].update(candidates=2, tasks=1, step=1, confirm_tasks=2)
    params["augment"]["copies"] = 2
    return params


def with_train(params: dict, **train) -> dict:
    return {**params, "train": {**params["train"], **train}}


def write_params(project: Path, name: str, params: dict) -> str:
    import yaml

    (project / name).write_text(yaml.safe_dump(params))
    return name


# ---------------------------------------------------------------------------------------------------------
# Part A: the pipeline on the device
# ---------------------------------------------------------------------------------------------------------

def part_a(report: Report, ctx: dict) -> None:
    import yaml

    from _common import REPO, make_project

    def build():
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["train"]["device"] = ctx["device"]
        if ctx["device"] == "cpu":
            shrink(params)
        start = time.perf_counter()
        project = make_project(ctx["root"] / "project", params)
        (project / "logs").mkdir()
        kept = f"; kept in {project} (logs/: each command's output)" if ctx["keep"] else ""
        return f"{time.perf_counter() - start:.1f} s{kept}", (project, params)

    built = report.check("A", "fresh project (git + DVC)", build)
    if built is None:
        return
    project, params = built
    ctx["env"] = {**ctx["env"], "PYTHONPATH": str(project),  # the stages import the project's copy of metaaug
                  "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    stages = list(dvc_stages(project))
    total = 0.0
    for name in stages:
        def stage(name=name):
            argv = [sys.executable, *stage_argv(project, name)]
            seconds = run_logged(argv, project, ctx["env"], project / "logs" / f"{name}.log", ctx["clock"].left("A"))
            return f"{seconds:.1f} s{stage_detail(project, name)}", seconds

        seconds = report.check("A", f"{name} on {ctx['device']}", stage)
        if seconds is None:
            report.add("A", "pipeline", "", f"FAILED: stopped at {name}; the later stages need its output")
            return
        total += seconds
    report.add("A", "pipeline total", f"{total:.1f} s for {len(stages)} stages", "pass")
    ctx["project"], ctx["params"] = project, params
    try:
        ctx["metatrain_runs"] = set(metatrain_runs(project))
    except Exception as exc:  # only Part B's note on the device needs it
        print(f"A: reading the metatrain run from MLflow: {type(exc).__name__}: {exc}", file=sys.stderr)
    report.check("A", "chosen policy", lambda: (describe_policy(project / "models" / "policy"), None))
    report.check("A", "evaluation headline", lambda: (headline(project / "metrics.json"), None))


def stage_detail(project: Path, name: str) -> str:
    """What a stage's timings file adds to its wall time (metatrain's search, train's one training)."""
    try:
        if name == "metatrain":
            t = json.loads((project / "timings" / "metatrain.json").read_text())
            return f" (search {t['search_seconds']:.1f} s, {t['workers']} worker(s))"
        if name.startswith("train"):  # train@<arm>, train_learned
            return f" (one training: {run_seconds(project / 'timings' / f'{name}.json'):.2f} s median)"
    except (OSError, KeyError, ValueError, TypeError):
        pass
    return ""


def run_seconds(path: Path) -> float:
    return float(json.loads(path.read_text())["run_seconds"])


def describe_policy(policy_dir: Path) -> str:
    provenance = json.loads((policy_dir / "policy.json").read_text())["provenance"]
    theta = json.loads((policy_dir / "search.json").read_text())["theta"]
    point = provenance.get("baseline_point")
    return (f"baseline point: {point or 'none (a searched policy)'}; theta [{', '.join(f'{t:.3g}' for t in theta)}]; "
            f"{provenance.get('trainings')} proxy trainings")


def headline(metrics_path: Path) -> str:
    m = json.loads(metrics_path.read_text())
    arms = ", ".join(f"{k} {v:.2f}" for k, v in m.items() if not k.startswith("gain"))
    return f"mean test accuracy (%): {arms}; gain {m['gain']:+.2f} [{m['gain_low']:+.2f}, {m['gain_high']:+.2f}]"


def metatrain_runs(project: Path) -> dict:
    """Run id -> the device named by the run's params, metrics or tags ("" where none names one)."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    found = {}
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], filter_string="tags.`metaaug.stage` = 'metatrain'"):
            named = {**run.data.params, **run.data.metrics, **run.data.tags}
            found[run.info.run_id] = "; ".join(f"{k}={v}" for k, v in sorted(named.items()) if "device" in k.lower())
    return found


# ---------------------------------------------------------------------------------------------------------
# Part B: metatrain on the CPU, the same policy?
# ---------------------------------------------------------------------------------------------------------

def part_b(report: Report, ctx: dict) -> None:
    project = ctx.get("project")

    def cpu_metatrain():
        if project is None:
            raise CheckFailed("needs Part A's project (data/prepared and models/policy), which did not complete")
        name = write_params(project, "params-cpu.yaml", with_train(ctx["params"], device="cpu"))
        argv = [sys.executable, *stage_argv(project, "metatrain", params=name, out="models/policy-cpu",
                                             timing="timings/metatrain-cpu.json")]
        seconds = run_logged(argv, project, ctx["env"], project / "logs" / "metatrain-cpu.log", ctx["clock"].left("B"))
        return f"{seconds:.1f} s", seconds

    if report.check("B", "metatrain on cpu (same prepared data)", cpu_metatrain) is None:
        return

    def compare():
        ours, cpu = project / "models" / "policy", project / "models" / "policy-cpu"
        verdict = compare_policies(ours, cpu)
        try:
            runs = metatrain_runs(project)
            first = [d for r, d in runs.items() if r in ctx.get("metatrain_runs", ())]
            reported = (first[0] if first and first[0] else "no MLflow param, metric or tag names a device")
        except Exception as exc:  # only informative: the comparison stands without it
            reported = f"unknown ({type(exc).__name__})"
        return f"{verdict}; the device its {ctx['device']} run's MLflow run names: {reported}", verdict

    verdict = report.check("B", f"policy.json, {ctx['device']} run vs cpu run", compare)
    if verdict is not None and verdict.startswith("DIFFERENT"):
        report.rows[-1] = (*report.rows[-1][:3], "differs (reported, not failed)")


def compare_policies(a: Path, b: Path) -> str:
    """`identical bytes`, `same baseline point / same theta within 1e-6`, or `DIFFERENT: <what>`."""
    if (a / "policy.json").read_bytes() == (b / "policy.json").read_bytes():
        return "identical bytes"
    points = [json.loads((d / "policy.json").read_text())["provenance"].get("baseline_point") for d in (a, b)]
    thetas = [json.loads((d / "search.json").read_text())["theta"] for d in (a, b)]
    diff = (max(abs(x - y) for x, y in zip(*thetas)) if len(thetas[0]) == len(thetas[1]) else float("inf"))
    if points[0] == points[1] and diff <= 1e-6:
        return f"same baseline point ({points[0] or 'none'}) / same theta within 1e-6 (max |diff| {diff:.1e})"
    what = []
    if points[0] != points[1]:
        what.append(f"baseline point {points[0] or 'none'} vs {points[1] or 'none'}")
    if diff > 1e-6:
        what.append(f"theta max |diff| {diff:.3g}")
    return "DIFFERENT: " + ", ".join(what)


# ---------------------------------------------------------------------------------------------------------
# Part C: batched augmentation, device vs CPU
# ---------------------------------------------------------------------------------------------------------

def part_c(report: Report, ctx: dict) -> None:
    from metaaug.policies import fixed_policy, sample_apply

    device, cpu = torch.device(ctx["device"]), torch.device("cpu")

    def rate(policy, images: torch.Tensor, on: torch.device) -> float:
        x = images.to(on)
        gen = torch.Generator(device=on).manual_seed(0)
        best = float("inf")
        for i in range(4):  # a warm-up (kernel selection, caches), then the best of 3
            if on.type == "cuda":
                torch.cuda.synchronize(on)
            start = time.perf_counter()
            sample_apply(policy, x, gen)
            if on.type == "cuda":
                torch.cuda.synchronize(on)
            if i:
                best = min(best, time.perf_counter() - start)
        return len(images) / best

    for channels, size, batch in ((3, 32, ctx["batch"]), (1, 8, ctx["batch"])):
        for name in ("trivialaugment", "randaugment"):
            def measure(name=name, channels=channels, size=size, batch=batch):
                ctx["clock"].left("C")
                policy = fixed_policy(name, image_channels=channels)
                images = torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(1))
                ours, theirs = rate(policy, images, device), rate(policy, images, cpu)
                return (f"{device.type} {ours:,.0f} img/s; cpu ({torch.get_num_threads()} threads) "
                        f"{theirs:,.0f} img/s; ratio {ours / theirs:.1f}x"), None

            report.check("C", f"{name}, {batch} x {channels}x{size}x{size}", measure)


# ---------------------------------------------------------------------------------------------------------
# Part D: the train stage under torchrun
# ---------------------------------------------------------------------------------------------------------

def part_d(report: Report, ctx: dict) -> None:
    project, ranks = ctx.get("project"), ctx["ranks"]
    one_gpu = ctx["device"] == "cuda" and ranks == 1
    for mode in ("ddp", "shard"):
        note = ("" if not one_gpu else "; 1 GPU: DDP over one rank only" if mode == "ddp" else
                "; 1 GPU: one rank, nothing to share")

        def torchrun(mode=mode, note=note):
            if project is None:
                raise CheckFailed("needs Part A's project (data/prepared, models/policy, data/augmented), "
                                  "which did not complete")
            name = write_params(project, f"params-{mode}.yaml", with_train(ctx["params"], distributed=mode))
            out, seconds, ones = f"models/downstream-{mode}", 0.0, []
            for stage, arm in zip(D_STAGES, D_ARMS):
                timing = f"timings/{stage}-{mode}.json"
                argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                        *stage_argv(project, stage, params=name, out=f"{out}/{arm}", timing=timing)]
                seconds += run_logged(argv, project, ctx["env"], project / "logs" / f"{stage}-{mode}.log",
                                      ctx["clock"].left(f"D {mode}"))
                ones.append(run_seconds(project / timing))
            loaded = check_downstream(project / out, project / "models" / "downstream")
            return (f"{seconds:.1f} s wall; one training {max(ones):.2f} s median (Part A, one process: "
                    f"{run_seconds(project / 'timings' / 'train_learned.json'):.2f} s); {loaded}{note}"), None

        report.check("D", f"train, distributed: {mode}, {ranks} rank(s)", torchrun)


def check_downstream(out: Path, single: Path) -> str:
    """The outputs load: results.json has every arm x split, each arm's .pt as many state dicts; the final
    losses against Part A's single-process run (shard: the same trainings; ddp: within float tolerance)."""
    splits, gap = len(json.loads((single / D_ARMS[0] / "results.json").read_text())["arms"][D_ARMS[0]]), 0.0
    for arm in D_ARMS:
        runs = json.loads((out / arm / "results.json").read_text())["arms"][arm]
        reference = {arm: json.loads((single / arm / "results.json").read_text())["arms"][arm]}
        states = torch.load(out / arm / f"{arm}.pt", weights_only=True)
        if len(runs) != splits or len(states) != splits:
            raise CheckFailed(f"{out}: {arm} has {len(runs)} runs and {len(states)} state dicts; expected {splits}")
        for run, ref in zip(runs, reference[arm]):
            gap = max(gap, abs(run["curves"]["loss"][-1] - ref["curves"]["loss"][-1]))
    return f"outputs load ({len(D_ARMS)} arms x {splits} splits); final loss vs Part A: max |diff| {gap:.2g}"


# ---------------------------------------------------------------------------------------------------------

def code_version(repo: Path) -> str:
    git = lambda *a: subprocess.run(["git", *a], cwd=repo, capture_output=True, text=True).stdout.strip()  # noqa: E731
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "metaaug", "stages", "dvc.yaml", "params.yaml")
    return f"commit {git('rev-parse', '--short', 'HEAD') or '?'}" + (" with uncommitted changes" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: the dry run on tiny params, to check this script without a GPU")
    parser.add_argument("--parts", default="ABCD", help="which parts to run (B and D need A)")
    parser.add_argument("--time-limit", type=float,
                        help="seconds for the whole run (default 280; 600 with --device cpu)")
    parser.add_argument("--keep", type=Path, help="build the project here and keep it (default: a temp dir)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        sys.exit(2)
    if args.keep is not None and args.keep.exists():
        raise SystemExit(f"--keep {args.keep}: already exists; expected a new directory for the project")

    import metaaug  # noqa: F401  (sets NO_ALBUMENTATIONS_UPDATE before albumentations is imported)
    from _common import REPO
    from metaaug.timing import machine_description

    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "METAAUG_PROGRESS": "0",
           "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"}
    cuda = args.device == "cuda"
    limit = args.time_limit or (280 if cuda else 600)  # 280: start-up and clean-up stay inside 5 minutes
    root = args.keep or Path(tempfile.mkdtemp(prefix="metaaug-gpu-check-"))
    root.mkdir(parents=True, exist_ok=True)
    ctx = {"device": args.device, "root": root, "keep": args.keep is not None, "env": env, "clock": Clock(limit),
           "ranks": max(1, torch.cuda.device_count()) if cuda else 1, "batch": 4096 if cuda else 256}
    report = Report()
    start = time.perf_counter()
    try:
        for part, fn in (("A", part_a), ("B", part_b), ("C", part_c), ("D", part_d)):
            if part not in args.parts.upper():
                continue
            try:
                fn(report, ctx)
            except Exception as exc:  # a part's own bookkeeping failed: still one row, and on to the next
                report.add(part, "(part)", "", f"FAILED: {one_line(f'{type(exc).__name__}: {exc}')}")
        print(report.table())
        where = (f"{torch.cuda.device_count()} GPU(s), {os.cpu_count()} CPU cores" if cuda
                 else "dry run: cpu in place of cuda, tiny params")
        print(f"\nMeasured on: {machine_description()}; {where}; "
              f"code: {code_version(REPO)}. Whole run {time.perf_counter() - start:.0f} s "
              f"(--time-limit {limit:.0f} s).")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    sys.exit(1 if report.failed else 0)


if __name__ == "__main__":
    main()
