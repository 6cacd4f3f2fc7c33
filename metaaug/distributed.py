"""The train and metatrain stages on several processes started by `torchrun`: the process group, who
trains what, and the data-parallel learner.

metatrain's `metatrain.distributed: shard` shares each rung's populations of proxy trainings among the
ranks (metaaug.search.scoring.Scorer): rank 0 runs the search, broadcasts a rung's work, scores its share
and gathers the rest; the other ranks only score.

`train.distributed` picks the form:

* `shard`: the arm x split trainings are independent, so rank r trains every W-th of them and rank 0
  gathers the weights and curves. Each training is seeded on its own, so the outputs are exactly those of
  one process; this is the form that speeds up the stage's many small learners.
* `ddp`: every learner is one DistributedDataParallel model over all ranks. Each rank takes its slice of
  every batch, batch-norm statistics are those of the whole batch (summed over ranks by
  `CrossRankBatchNorm`: torch's SyncBatchNorm refuses CPU tensors, so gloo could not test it), and the loss
  is scaled so that DDP's averaged gradient is the whole batch's gradient: each step's gradient is one
  process's within float tolerance. A whole training is not always: where a ReLU's input lies within
  rounding of 0, the ranks and one process may gate it differently, and the trainings part from that step
  (docs/scaling.md). It pays when batches are big enough to split.

Rank 0 alone writes outputs and talks to MLflow; the other ranks only train. Before any of it every rank
proves it runs rank 0's job (`same_job`): the same params, inputs and code.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from metaaug.errors import MetaaugError

@dataclass(frozen=True)
class World:
    """This process's place among the ranks; a world of one when not distributed."""

    mode: str = "none"
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, jobs: list) -> list:
        """The jobs this rank runs: every size-th under `shard`, all of them otherwise."""
        return jobs[self.rank::self.size] if self.mode == "shard" else jobs

    def collect(self, done: list, n_jobs: int) -> list | None:
        """Results of every job in job order on rank 0 (gathered under `shard`); None on the other ranks."""
        if self.mode != "shard":
            return done if self.is_main else None
        gathered = [None] * self.size if self.is_main else None
        with peers_alive(self):
            dist.gather_object(done, gathered, dst=0)
        return [gathered[i % self.size][i // self.size] for i in range(n_jobs)] if self.is_main else None

    def broadcast(self, obj=None):
        """Rank 0's `obj` on every rank (the work of the next round, or None: no more work)."""
        box = [obj]
        with peers_alive(self):
            dist.broadcast_object_list(box, src=0)
        return box[0]


@contextlib.contextmanager
def peers_alive(world: World) -> Iterator[None]:
    """A collective that fails because a rank died (its connections closed, or the group timed out) is one
    line naming what happened, not gloo's or NCCL's traceback."""
    try:
        yield
    except RuntimeError as exc:  # gloo and NCCL failures (DistError is one)
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # torchrun's SIGTERM must not cut this report short
        raise MetaaugError(f"rank {world.rank} of {world.size}: another rank stopped ({first[:200]}); expected "
                           "every rank to run to the end (torchrun's report names the rank that failed)") from None


@contextlib.contextmanager
def world(mode: str, device: torch.device, stage: str = "train") -> Iterator[World]:
    """The process group `mode` (`<stage>.distributed`) asks for (none: a world of one), torn down on exit;
    CUDA: one GPU a rank."""
    if mode == "none":
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every rank would write the outputs and log the runs
            raise MetaaugError(f"params.yaml: {stage}.distributed = none, but torchrun started "
                               f"{os.environ['WORLD_SIZE']} processes; expected {stage}.distributed: shard"
                               f"{' or ddp' if stage == 'train' else ''}, or one process")
        yield World(mode, device=device)
        return
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise MetaaugError(f"params.yaml: {stage}.distributed = {mode} needs processes started by torchrun "
                           f"(RANK, WORLD_SIZE unset); expected `torchrun --nproc_per_node=N stages/{stage}.py ...` "
                           f"or {stage}.distributed: none")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    previous = signal.signal(signal.SIGTERM, _stopped_by_torchrun)
    try:
        yield World(mode, dist.get_rank(), dist.get_world_size(), device)
    finally:
        signal.signal(signal.SIGTERM, previous)
        dist.destroy_process_group()


def same_job(world: World, facts: dict[str, object]) -> None:
    """Stop every rank, before any scoring, unless all ranks run the same job: `facts` (flat name -> value: the
    params that shape the output, the inputs' digests) and the code version (code_digest) compared with rank
    0's. Ranks may be started by hand on several machines; one with another seed, proxy budget or metaaug would
    silently score other work. Every rank sees every rank's facts, so all stop with the same line."""
    if world.size == 1:
        return
    mine = {**{k: v if isinstance(v, (str, int, float, bool, type(None))) else repr(v) for k, v in facts.items()},
            "code version (metaaug's source files)": code_digest()}
    everyone: list = [None] * world.size
    with peers_alive(world):
        dist.all_gather_object(everyone, mine)
    for rank, theirs in enumerate(everyone):
        differ = [k for k in sorted(set(theirs) | set(everyone[0])) if theirs.get(k) != everyone[0].get(k)]
        if differ:
            shown = "; ".join(f"{k}: {_short(theirs.get(k))} vs {_short(everyone[0].get(k))}" for k in differ[:3])
            raise MetaaugError(f"rank {rank} of {world.size} runs another job than rank 0 ({shown}"
                               f"{f'; {len(differ) - 3} more' if len(differ) > 3 else ''}); expected every rank "
                               "started with the same params, inputs and metaaug version")


def _short(value: object) -> str:
    text = str(value)
    return text[:12] if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text[:60]


@functools.cache
def code_digest(root: Path = Path(__file__).resolve().parent) -> str:
    """The code version: SHA-256 over the names and bytes of metaaug's Python source files (an installed
    wheel and a checkout of the same commit agree; a local edit does not)."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _stopped_by_torchrun(signum, frame) -> None:
    """torchrun SIGTERMs every rank when one fails: end this one as a failure (temps removed, the MLflow run
    FAILED, one line), within torchrun's 30 s before SIGKILL, instead of vanishing mid-write."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one report, not two
    raise MetaaugError("stopped by SIGTERM: torchrun stops every rank when one fails (or the job was cancelled); "
                       "expected every rank to run to the end (torchrun's report below names the rank that failed)")


class CrossRankBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d that normalises by the statistics of the whole batch, summed over the ranks' slices.

    One all-reduce of (sum, sum of squares, count) per layer; autograd flows through it, so gradients
    are those of the whole batch. Eval mode is plain BatchNorm2d (same state dict keys).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        c, xf = x.shape[1], x.float()
        count = xf.new_tensor([x.numel() / c])
        stats = dist_nn.all_reduce(torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c:2 * c] / n - mean * mean
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.mul_(1 - self.momentum).add_(mean, alpha=self.momentum)
            self.running_var.mul_(1 - self.momentum).add_(var * n / (n - 1), alpha=self.momentum)
        shape = (1, c, 1, 1)
        out = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return (out * self.weight.view(shape) + self.bias.view(shape)).to(x.dtype)


def cross_rank_batchnorm(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm2d under `module` for CrossRankBatchNorm, keeping its parameters and buffers."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            swapped = CrossRankBatchNorm(child.num_features, child.eps, child.momentum).to(child.weight.device)
            swapped.load_state_dict(child.state_dict())
            setattr(module, name, swapped)
        else:
            cross_rank_batchnorm(child)
    return module


def data_parallel(model: nn.Module, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """(the model with cross-rank batch norm, its DDP wrapper): train through the wrapper, keep the model.

    Buffers are not broadcast: the running statistics are already the same on every rank.
    """
    model = cross_rank_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return model, DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def ranks() -> int:
    return dist.get_world_size()


def local_slice(idx: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous part of a batch's indices (sizes differ by at most one)."""
    return idx.tensor_split(dist.get_world_size())[dist.get_rank()]


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(t)
    return t
