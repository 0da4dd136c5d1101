"""Evaluation: adapt on each test task's support set, score its query set; mean ± 95% confidence interval."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.func import vmap
from torch.utils._pytree import tree_map
from tqdm.auto import tqdm

from metatuv.inner import Params
from metatuv.inner.backends import Batch
from metatuv.meta.batching import INNER_SEED_OFFSET, chunks, next_batch
from metatuv.meta.losses import LossFn, mse

if TYPE_CHECKING:
    from metatuv.meta.learner import MetaLearner


def format_score(metric: str, mean: float, ci95: float) -> str:
    """ "0.0213 ± 0.0029" for MSE, "92.7444% ± 0.5348%" for accuracy."""
    pct, unit = (100.0, "%") if metric == "accuracy" else (1.0, "")
    return f"{pct * mean:.4f}{unit} ± {pct * ci95:.4f}{unit}"


def mean_ci95(values: Tensor) -> tuple[float, float]:
    """Mean and half-width of the normal 95% confidence interval, 1.96·s/√n."""
    values = values.double()
    n = values.numel()
    std = values.std(unbiased=True).item() if n > 1 else float("nan")
    return values.mean().item(), 1.96 * std / math.sqrt(n)


def evaluate(
    learner: MetaLearner,
    batches: Iterator[Batch],
    tasks: int = 600,
    steps: int | None = None,
    metric: LossFn = mse,
    progress: bool = True,
    seed: int = 0,
    per_task: bool = False,
    backtrack: int | None = None,
) -> tuple[float, float] | tuple[float, float, Tensor]:
    """Adapt on each test task's support set (graph-free, ``steps`` inner steps) and score its query set.

    Returns the mean of ``metric`` over ``tasks`` tasks and its 95% CI half-width (``per_task``: and the
    (tasks,) float64 tensor of the task scores, in stream order). Tasks are vmapped in chunks of
    ``learner.chunk_size`` (default: the whole batch) unless ``learner.vectorize == "loop"`` (one task at a time);
    both give the same scores (tests/test_meta.py). ``backtrack > 0``: each inner step's length is halved up to that
    many times until the support loss does not rise (metatuv.inner.backtrack; 0 = the plain steps of training;
    None = the learner's own, ``learner.backtrack``, which a preset sets: tuv_bounded 8, the others 0).
    """
    if tasks < 2:
        raise ValueError(f"evaluate: tasks={tasks} must be >= 2 for a confidence interval.")
    backtrack = learner.backtrack if backtrack is None else backtrack
    if backtrack < 0:
        raise ValueError(f"evaluate: backtrack={backtrack} must be >= 0 (0 = plain inner steps).")
    generator = torch.Generator(device=next(learner.parameters()).device).manual_seed(seed + INNER_SEED_OFFSET)
    params = learner.params()

    def score(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor, extra: Params) -> Tensor:
        adapted = learner.adapt_task(params, xs, ys, steps, extra, backtrack)
        return metric(learner.problem.forward(adapted, xq), yq)

    scores: list[Tensor] = []  # one 1-d tensor of task scores per chunk
    done = drawn = 0  # tasks scored, meta-batches drawn
    with torch.no_grad(), tqdm(total=tasks, desc="evaluate", disable=not progress, mininterval=0.5) as bar:
        while done < tasks:
            batch = next_batch(batches, drawn)
            drawn += 1
            extras = learner.sample_extras(len(batch[0]), generator)
            n = min(len(batch[0]), tasks - done)
            size = 1 if learner.vectorize == "loop" else (learner.chunk_size or n)
            for chunk, chunk_extras in chunks(batch, extras, size, last=n):
                args = (*chunk, chunk_extras)
                if size == 1:
                    scores.append(score(*tree_map(lambda t: t[0], args)).reshape(1))
                else:
                    scores.append(vmap(score)(*args))
                bar.update(len(chunk[0]))
            done += n
    values = torch.cat(scores)
    return (*mean_ci95(values), values.double().cpu()) if per_task else mean_ci95(values)
