"""One training run over several processes (`accelerate launch --num_processes N` or `torchrun`).

Every process holds both models, its own sandbox and the same schedule; per step:

    problems     every process draws the same ones (same seed, same draw state) and rolls out its share,
                 `problems[rank::world_size]` (rollouts and sandbox work run in parallel)
    rollouts     gathered to every process, so the dynamic-sampling state, the chain cache, the metrics and
                 the logged samples are those of the whole step, identical everywhere
    update       each process computes the PPO loss of its own groups (advantages are per problem group, as
                 in one process); the gradients of each minibatch step are averaged, weighted by the response
                 tokens each process had (= the gradient of the token mean over all processes), before
                 clipping and the optimizer step, so every process takes the same step and the weights
                 stay bit-identical
    main process the only one that validates, writes logs, samples, checkpoints (with every process's RNG
                 state, so a resume with as many processes continues exactly) and decides when
                 `max_minutes` is up

One process is `Processes()`: every method is trivial and `accelerate` is never imported.
"""
from __future__ import annotations

import math
from datetime import timedelta
from typing import Any, Sequence

import torch

from training.config import launch_rank_and_size


class Processes:
    """The processes of one run and the few collective operations the trainer needs."""

    def __init__(self, rank: int = 0, world_size: int = 1, device: str | None = None):
        self.rank, self.world_size, self.device = rank, world_size, device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence) -> list:
        """This process's share of `items`: every `world_size`-th one, from its rank."""
        return list(items[self.rank::self.world_size])

    def gather(self, obj: Any) -> list:
        """`obj` of every process, in rank order, on every process (picklable objects)."""
        if not self.distributed:
            return [obj]
        out: list = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """The main process's `obj`, on every process."""
        if not self.distributed:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def average_gradients(self, params: list[torch.Tensor], weight: float) -> float:
        """Replace each parameter's gradient by the weighted mean over processes, Σ_r w_r·g_r / Σ_r w_r
        (a process with weight 0 or no gradient contributes nothing; a parameter no process has a gradient
        for keeps none, as in one process); returns Σ_r w_r. One all-reduce of one flat fp32 buffer. Every
        process must call it the same number of times."""
        if not self.distributed:
            return weight
        device = params[0].device
        has = [p.grad is not None and weight != 0 for p in params]
        parts = [p.grad.detach().float().flatten() * weight if h else torch.zeros(p.numel(), device=device)
                 for p, h in zip(params, has)]
        flat = torch.cat(parts + [torch.tensor([float(h) for h in has] + [float(weight)], device=device)])
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
        total, anyone = float(flat[-1]), flat[-1 - len(params):-1].tolist()
        if not math.isfinite(total):  # a process's loss was not finite: every process skips this step
            for p in params:
                p.grad = torch.full_like(p, math.nan)
            return total
        offset = 0
        for p, count in zip(params, anyone):
            n = p.numel()
            p.grad = (flat[offset:offset + n] / max(total, 1e-12)).view_as(p).to(p.dtype) if count else None
            offset += n
        return total


def launched_processes(device: str = "auto") -> Processes:
    """The run's processes as the launcher set them up (`WORLD_SIZE` > 1 in the environment): accelerate's
    `PartialState` joins the process group (gloo on CPU, nccl on GPUs, one GPU per process). Otherwise one
    process, and accelerate is not imported."""
    if launch_rank_and_size()[1] <= 1:
        return Processes()
    try:
        from accelerate import PartialState
    except ImportError:
        raise ImportError("training on several processes needs accelerate: pip install accelerate") from None
    # the others wait while the main process validates problems or checkpoints (minutes): NCCL's default
    # timeout of 10 minutes would end the run
    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available(), timeout=timedelta(hours=2))
    return Processes(state.process_index, state.num_processes, str(state.device))


def merge_metrics(rows: list[dict], summed: Sequence[str] = ()) -> dict:
    """One metrics dict from every process's (keys of any of them): the keys in `summed` are added up,
    `time/*` keys take the slowest process's value, every other number is the mean of the finite values
    (NaN when none is; the value itself when all agree); anything else is the first process's that has it."""
    out = {}
    for key in dict.fromkeys(k for row in rows for k in row):
        present = [row[key] for row in rows if key in row]
        values = [v for v in present if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(values) != len(present):
            out[key] = present[0]
        elif key in summed:
            out[key] = sum(values)
        elif key.startswith("time/"):
            out[key] = max(values)
        elif all(v == values[0] for v in values):
            out[key] = values[0]
        else:
            finite = [float(v) for v in values if math.isfinite(v)]
            out[key] = sum(finite) / len(finite) if finite else math.nan
    return out
