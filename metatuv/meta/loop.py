"""The outer loop: Adam (or any optimizer) on all meta-parameters, with non-finite losses stopped or skipped."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from metatuv.inner.backends import Batch
from metatuv.meta.batching import INNER_SEED_OFFSET, next_batch
from metatuv.meta.distributed import allreduce_

if TYPE_CHECKING:
    from metatuv.meta.learner import MetaLearner


def build_optimizer(factory: Callable[..., torch.optim.Optimizer], params, lr: float) -> torch.optim.Optimizer:
    """``factory(params, lr=lr)``, plus ``fused=True`` where the optimizer takes it and it was not set.

    The fused kernels update every tensor in one call, which matters on small networks
    (experiments/benchmark/RESULTS.md has the measured step times).
    """
    params = list(params)
    try:  # (inspect.signature sees through the functools.partial of Hydra's _partial_)
        takes_fused = "fused" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        takes_fused = False
    kw = {}
    if takes_fused and "fused" not in getattr(factory, "keywords", {}):
        kw["fused"] = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return factory(params, lr=lr, **kw)


NONFINITE = ("stop", "skip")
MAX_SKIPS = 10  # consecutive skipped meta-batches before giving up (nonfinite="skip")


class NonFiniteLoss(FloatingPointError):
    """The meta-loss (or meta-gradient) became NaN/Inf."""


def meta_train(
    learner: MetaLearner,
    batches: Iterator[Batch],
    steps: int,
    meta_lr: float = 1e-3,
    clip: float | None = 10.0,
    progress: bool = True,
    log_every: int = 100,
    optimizer: torch.optim.Optimizer | None = None,
    seed: int = 0,
    on_step: Callable[[int], None] | None = None,
    start: int = 0,
    history: list[float] | None = None,
    generator: torch.Generator | None = None,
    after_step: Callable[[int, Callable[[], list[float]]], None] | None = None,
    nonfinite: str = "stop",
    shard: tuple[int, int] | None = None,
) -> list[float]:
    """Adam (or ``optimizer``) on all meta parameters (T, V, U₀, b₀, rule) for meta-steps ``start … steps − 1``.

    Returns the meta-loss of every step (``history`` first, when resuming). ``generator`` (default: seeded from
    ``seed``) drives the inner loop's own randomness (MT-net masks). ``on_step(step)`` runs before each meta-step
    (e.g. re-estimating T and V from statistics), ``after_step(step, losses)`` after it (e.g. checkpointing;
    ``losses()`` returns the history so far, synchronizing the device only when called).

    A NaN/Inf meta-loss raises NonFiniteLoss naming its step when the losses are next synchronized (every
    ``log_every`` steps, and before ``after_step`` reads them — so no checkpoint holding it is written);
    ``nonfinite="skip"`` instead checks every step (one host sync) and skips meta-batches whose loss or gradient is
    not finite, giving up after MAX_SKIPS in a row. The parameters are checked after every update (max |θ|, read
    with the losses): an update that leaves a NaN/Inf parameter raises NonFiniteLoss naming that step in both
    modes (an applied update cannot be skipped), again before ``after_step`` could checkpoint it.
    ``shard=(rank, world)`` (an initialized process group): this rank adapts its share of every meta-batch and the
    meta-gradients are all-reduced (metatuv.meta.distributed).
    """
    if nonfinite not in NONFINITE:
        raise ValueError(f"meta_train: nonfinite={nonfinite!r}; choose one of {list(NONFINITE)}.")
    if steps < 0 or meta_lr <= 0 or not 0 <= start <= steps:
        raise ValueError(f"meta_train: need 0 <= start={start} <= steps={steps} and meta_lr={meta_lr} > 0.")
    if optimizer is None:
        optimizer = build_optimizer(torch.optim.Adam, learner.parameters(), meta_lr)
    device = next(learner.parameters()).device
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(seed + INNER_SEED_OFFSET)
    losses: list[float] = list(history or [])
    pending: list[Tensor] = []  # (loss, max |θ| after the update) per step, not yet synchronized to floats
    checked = [p for p in learner.parameters() if p.numel()]  # (an empty tensor has no max)

    def flush() -> list[float]:
        if pending:
            pairs = torch.stack(pending).tolist()
            pending.clear()
            new = [loss for loss, _ in pairs]
            never = len(new)
            bad = next((i for i, v in enumerate(new) if not math.isfinite(v)), never)
            if nonfinite == "skip":  # (the steps with a bad loss were not applied)
                bad = never
            bad_params = next((i for i, (_, m) in enumerate(pairs) if not math.isfinite(m)), never)
            if bad < never and bad <= bad_params:
                raise NonFiniteLoss(
                    f"meta-loss is {new[bad]} at meta-step {len(losses) + bad}; stopped (checkpoints before it are "
                    "kept). Lower outer.lr or inner.lr, set outer.clip, or outer.nonfinite=skip to skip such "
                    "meta-batches."
                )
            if bad_params < never:
                raise NonFiniteLoss(
                    f"meta-parameters became {pairs[bad_params][1]} in the update of meta-step "
                    f"{len(losses) + bad_params} (its meta-loss {new[bad_params]} was finite); stopped (checkpoints "
                    "before it are kept). Set outer.clip (e.g. outer.clip=10) or lower outer.lr."
                )
            losses.extend(new)
        return losses

    skipped = 0
    bar = tqdm(
        range(start, steps), desc="meta-train", disable=not progress, mininterval=0.5, initial=start, total=steps
    )  # a resumed run's bar counts from ``start`` to ``steps``
    for step in bar:
        if on_step is not None:
            on_step(step)
        optimizer.zero_grad(set_to_none=True)
        loss = learner.backward(next_batch(batches, step), generator, shard)
        if shard is not None and shard[1] > 1:
            loss = allreduce_(learner.parameters(), loss)
        # max_norm=inf leaves the gradients as they are; the total norm is NaN/Inf if any entry is
        norm = nn.utils.clip_grad_norm_(learner.parameters(), clip if clip is not None else math.inf)
        if nonfinite == "skip" and not torch.isfinite(loss + norm).item():
            skipped += 1  # no update: the bad meta-batch is dropped (its loss stays in the history)
            if skipped > MAX_SKIPS:
                raise NonFiniteLoss(
                    f"{skipped} meta-batches in a row had a non-finite loss or gradient up to meta-step {step}; "
                    "stopped. Lower outer.lr or inner.lr."
                )
        else:
            skipped = 0
            optimizer.step()
        with torch.no_grad():  # max |θ| after the update: NaN if any entry is NaN, Inf if any is infinite
            top = torch.stack(
                [n.double() for n in torch._foreach_norm(checked, math.inf)] + [loss.new_zeros((), dtype=torch.float64)]
            ).amax()
        pending.append(torch.stack([loss.double(), top.to(loss.device)]))
        if nonfinite == "skip":  # synchronizing anyway: a non-finite update stops at its own step
            flush()
        if (step + 1) % log_every == 0:
            recent = flush()[-log_every:]
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
        if after_step is not None:
            after_step(step, flush)
    return flush()
