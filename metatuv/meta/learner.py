"""MAML-style outer loop over W = T·U·V models (Finn et al. 2017; Lee & Choi 2018).

Meta-objective: min over (T, V, U₀, b₀) of E_task L_query(adapt(U₀, b₀; support)), optimized with Adam.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call
from tqdm.auto import tqdm

from metatuv.inner import adapt
from metatuv.nn import fast_names

# One meta-batch: x_support (tasks, S, ...), y_support (tasks, S, ...), x_query (tasks, Q, ...), y_query (tasks, Q, ...)
Batch = tuple[Tensor, Tensor, Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


def mse(pred: Tensor, y: Tensor) -> Tensor:
    return torch.mean((pred - y) ** 2)


def accuracy(logits: Tensor, y: Tensor) -> Tensor:
    return (logits.argmax(-1) == y).float().mean()


@dataclass
class MetaLearner:
    """The model with its inner loop: ``steps`` SGD steps of size ``lr`` on the fast parameters.

    Every method takes ``params`` (name → tensor, all parameters and buffers; default: the model's own),
    so the meta-loss is a pure function of the meta parameters (gradcheck, vmap).
    """

    model: nn.Module
    loss: LossFn
    lr: float
    steps: int
    first_order: bool = False

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.steps < 0:
            raise ValueError(f"MetaLearner: inner lr={self.lr} must be > 0 and steps={self.steps} >= 0.")
        self.fast_names = fast_names(self.model)

    def params(self) -> dict[str, Tensor]:
        return {**dict(self.model.named_parameters()), **dict(self.model.named_buffers())}

    def forward(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(self.model, params, (x,))

    def adapt_task(
        self, params: dict[str, Tensor], xs: Tensor, ys: Tensor, steps: int | None = None
    ) -> dict[str, Tensor]:
        """All parameters, with the fast ones adapted on one task's support set (xs, ys)."""
        fast = {n: params[n] for n in self.fast_names}

        def support_loss(f: dict[str, Tensor]) -> Tensor:
            return self.loss(self.forward({**params, **f}, xs), ys)

        steps = self.steps if steps is None else steps
        return {**params, **adapt(support_loss, fast, steps, self.lr, self.first_order)}

    def meta_loss(self, batch: Batch, params: dict[str, Tensor] | None = None) -> Tensor:
        """Mean over tasks of the query loss after adaptation (a per-task loop)."""
        params = self.params() if params is None else params
        xs, ys, xq, yq = batch
        losses = [self.loss(self.forward(self.adapt_task(params, xs[i], ys[i]), xq[i]), yq[i]) for i in range(len(xs))]
        return torch.stack(losses).mean()


def meta_train(
    learner: MetaLearner,
    batches: Iterator[Batch],
    steps: int,
    meta_lr: float = 1e-3,
    clip: float | None = 10.0,
    progress: bool = True,
    log_every: int = 100,
    optimizer: torch.optim.Optimizer | None = None,
) -> list[float]:
    """Adam (or ``optimizer``) on all model parameters (T, V, U₀, b₀) for ``steps`` meta-steps.

    Returns the meta-loss of every step.
    """
    if steps < 0 or meta_lr <= 0:
        raise ValueError(f"meta_train: steps={steps} must be >= 0 and meta_lr={meta_lr} > 0.")
    if optimizer is None:
        optimizer = torch.optim.Adam(learner.model.parameters(), lr=meta_lr)
    history: list[float] = []
    bar = tqdm(range(steps), desc="meta-train", disable=not progress, mininterval=0.5)
    for step in bar:
        loss = learner.meta_loss(next(batches))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(learner.model.parameters(), clip)
        optimizer.step()
        history.append(loss.detach())
        if progress and (step + 1) % log_every == 0:
            bar.set_postfix(loss=f"{torch.stack(history[-log_every:]).mean().item():.4f}")
    return [float(h) for h in history]


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
) -> tuple[float, float]:
    """Adapt on each test task's support set (graph-free, ``steps`` inner steps) and score its query set.

    Returns the mean of ``metric`` over ``tasks`` tasks and its 95% CI half-width.
    """
    if tasks < 2:
        raise ValueError(f"evaluate: tasks={tasks} must be >= 2 for a confidence interval.")
    scores: list[Tensor] = []
    params = learner.params()
    with torch.no_grad(), tqdm(total=tasks, desc="evaluate", disable=not progress, mininterval=0.5) as bar:
        while len(scores) < tasks:
            xs, ys, xq, yq = next(batches)
            for i in range(min(len(xs), tasks - len(scores))):
                adapted = learner.adapt_task(params, xs[i], ys[i], steps)
                scores.append(metric(learner.forward(adapted, xq[i]), yq[i]))
                bar.update(1)
    return mean_ci95(torch.stack(scores))
