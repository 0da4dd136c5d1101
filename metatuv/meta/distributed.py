"""Data parallelism over tasks: every rank draws the same meta-batch, adapts its share of the tasks, and the
meta-gradients are summed with one explicit all-reduce (torchrun / torch.distributed, gloo on CPU, nccl on CUDA).

Why not DistributedDataParallel: a meta-step is many functional calls (inner loop, vmap, chunks) per backward,
not one module forward; DDP's bucket hooks fire per backward and assume one forward per step, and its
find_unused_parameters machinery adds nothing here. One all-reduce of the flattened gradients after the last chunk
is simpler, has no hidden state, and gives the single-process meta-gradient exactly: each rank's share is already
divided by the full meta-batch size (``MetaLearner.backward(shard=...)``), so the sum over ranks *is* the mean
over the meta-batch. Every rank draws the full meta-batch from the same seeded stream and keeps its slice, so the
union of the ranks' tasks is exactly the single-process meta-batch (sampling costs < 1% of a meta-step).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device: str) -> tuple[int, int]:
    """Join the process group torchrun describes (WORLD_SIZE > 1 in the environment); a no-op otherwise.

    CUDA: each rank takes GPU ``LOCAL_RANK`` and the nccl backend; CPU: gloo.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or (dist.is_available() and dist.is_initialized()):
        return world()
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return world()


def allreduce_(params: Iterable[nn.Parameter], loss: Tensor) -> Tensor:
    """Sum ``.grad`` of ``params`` and ``loss`` over the ranks in place (one flat all-reduce); returns the loss."""
    params = [p for p in params if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads] + [loss.reshape(1).to(grads[0])])
    dist.all_reduce(flat)
    offset = 0
    for p in params:  # a parameter without a gradient keeps none (the optimizer then skips it, as in one process)
        n = p.numel()
        if p.grad is not None:
            p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n
    return flat[-1].to(loss.dtype)
