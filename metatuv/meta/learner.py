"""MAML-style outer loop over W = T·U·V models (Finn et al. 2017; Lee & Choi 2018).

Meta-objective: min over (T, V, U₀, b₀, rule parameters) of E_task L_query(adapt(U₀, b₀; support)), by Adam.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_map
from tqdm.auto import tqdm

from metatuv.inner import Params, TaskProblem, task_losses
from metatuv.inner.backends import BACKENDS, VECTORIZE, Batch, compiled
from metatuv.meta.distributed import allreduce_
from metatuv.meta.presets import Preset
from metatuv.meta.rule import InnerRule
from metatuv.nn import fast_names
from metatuv.nn.bounded import BoundedFactors

LossFn = Callable[[Tensor, Tensor], Tensor]
INNER_SEED_OFFSET = 0x5EED  # the inner loop's randomness (MT-net masks) never shares a seed with the task stream


def _next(batches: Iterator[Batch], done: int) -> Batch:
    try:
        return next(batches)
    except StopIteration:
        raise ValueError(
            f"the task stream ended after {done} meta-batches; pass an endless iterator (e.g. .batches())."
        ) from None


def mse(pred: Tensor, y: Tensor) -> Tensor:
    return torch.mean((pred - y) ** 2)


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    return nn.functional.cross_entropy(logits, y)


def accuracy(logits: Tensor, y: Tensor) -> Tensor:
    return (logits.argmax(-1) == y).to(logits.dtype).mean()


class MetaLearner(nn.Module):
    """The model with its inner loop: ``steps`` steps of the inner rule on the fast parameters.

    Methods take ``params`` (name → tensor, the model's parameters and buffers; default: the model's own), so
    the meta-loss is a pure function of the meta parameters (gradcheck, vmap). The inner-rule parameters
    (learned rates, curvature) live in ``self.rule``; the outer optimizer takes ``self.parameters()``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        lr: float,
        steps: int,
        first_order: bool = False,
        *,
        lr_mode: str = "fixed",
        curvature: bool = False,
        head_only: bool = False,
        mask_temperature: float = 1.0,
        kfo: bool = False,
        backend: str = "func",
        vectorize: str = "auto",
        chunk_size: int | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if lr <= 0 or steps < 0:
            raise ValueError(f"MetaLearner: inner lr={lr} must be > 0 and steps={steps} >= 0.")
        if backend not in BACKENDS or vectorize not in VECTORIZE:
            raise ValueError(
                f"MetaLearner: backend={backend!r} / vectorize={vectorize!r}; choose backend from "
                f"{list(BACKENDS)} and vectorize from {list(VECTORIZE)}."
            )
        if compile and backend != "func":
            raise ValueError(f"MetaLearner: compile=True needs backend='func' (got {backend!r}).")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"MetaLearner: chunk_size={chunk_size} must be >= 1 or None (all tasks at once).")
        self.model = model
        self.fast_names = fast_names(model, head_only=head_only)
        self.rule = InnerRule(model, self.fast_names, lr, steps, lr_mode, curvature, mask_temperature, kfo)
        self.problem = TaskProblem(model, loss, self.fast_names, steps, first_order, self.rule.make_rule)
        self.backend, self.vectorize, self.chunk_size, self.compile = backend, vectorize, chunk_size, compile
        self._compiled: dict = {}  # this learner's own compiled meta-gradient (inner.backends.compiled)

    @classmethod
    def from_preset(cls, model: nn.Module, preset: Preset, loss: LossFn, lr: float, steps: int, **kw) -> MetaLearner:
        """A learner with the preset's rule; ``model`` must already have the preset's factors (and masks, and for a
        bounded preset its bounded layers: ``metatuv.nn.bound_factors``)."""
        if preset.bound != "none" and not any(isinstance(m, BoundedFactors) for m in model.modules()):
            raise ValueError(  # else tuv_bounded would silently run plain TUV
                f"preset {preset.name} needs bounded layers: build the model with "
                f"metatuv.nn.bound_factors(model, {preset.bound!r}, max_step / lr) first (metatuv-train does)."
            )
        kw["first_order"] = kw.get("first_order", False) or preset.first_order
        return cls(
            model,
            loss,
            lr,
            steps,
            lr_mode=preset.lr_mode,
            curvature=preset.curvature,
            head_only=preset.head_only,
            kfo=preset.kfo,
            **kw,
        )

    @property
    def loss(self) -> LossFn:
        return self.problem.loss

    def params(self) -> Params:
        return {**dict(self.model.named_parameters()), **dict(self.model.named_buffers())}

    def sample_extras(self, tasks: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Per-task randomness of the inner loop (MT-net mask noise), drawn outside vmap: {} if none."""
        like = next(self.model.parameters())
        return self.rule.mask_noise(tasks, generator, like)

    def task_losses(
        self, batch: Batch, extras: Any = None, params: Params | None = None, backend: str | None = None
    ) -> Tensor:
        """Query loss of every task after adaptation, shape (tasks,)."""
        params = self.params() if params is None else params
        extras = self.sample_extras(len(batch[0])) if extras is None else extras
        backend = backend or self.backend
        compile = self.compile and backend == "func"
        return task_losses(self.problem, params, batch, extras, backend, self.vectorize, compile)

    def forward(self, batch: Batch, extras: Any) -> Tensor:
        """Query loss of every task after adaptation, shape (tasks,), by the func backend (eager; see task_losses)."""
        return task_losses(self.problem, self.params(), batch, extras, "func", self.vectorize)

    def meta_loss(self, batch: Batch, params: Params | None = None, extras: Any = None) -> Tensor:
        """Mean over tasks of the query loss after adaptation."""
        return self.task_losses(batch, extras, params).mean()

    def backward(
        self, batch: Batch, generator: torch.Generator | None = None, shard: tuple[int, int] | None = None
    ) -> Tensor:
        """Accumulate the meta-gradient of the mean query loss into ``.grad``, one backward per chunk of tasks.

        Returns the (detached) meta-loss. ``shard=(rank, world)``: only this rank's contiguous share of the tasks
        (the extras, e.g. MT-net masks, are still drawn for the whole meta-batch), each still divided by the full
        task count — summing ``.grad`` and the returned loss over the ranks gives the whole meta-batch's values.
        """
        tasks = len(batch[0])
        extras = self.sample_extras(tasks, generator)
        size = self.chunk_size or tasks
        first, last = 0, tasks
        if shard is not None:
            rank, world = shard
            if tasks % world:
                raise ValueError(
                    f"meta-batch of {tasks} tasks does not split over {world} processes; "
                    f"make outer.meta_batch a multiple of {world}."
                )
            first, last = rank * tasks // world, (rank + 1) * tasks // world
            size = min(size, last - first)
        total = torch.zeros((), dtype=batch[0].dtype if batch[0].is_floating_point() else torch.float32)
        for start in range(first, last, size):
            part = slice(start, min(start + size, last))
            chunk, chunk_extras = tuple(b[part] for b in batch), tree_map(lambda t, part=part: t[part], extras)
            if self.compile:  # __init__ allows it with the func backend only
                loss_sum = self._compiled_backward(chunk, chunk_extras, tasks)
            else:
                losses = self.task_losses(chunk, chunk_extras)
                (losses.sum() / tasks).backward()
                loss_sum = losses.detach().sum()
            total = total + loss_sum.to(total.device)
        return total / tasks

    def _compiled_backward(self, batch: Batch, extras: Any, tasks: int) -> Tensor:
        """``.grad += ∂(Σ query losses / tasks)/∂θ`` for every trainable θ, from one compiled torch.func graph.

        The whole meta-gradient (inner steps, query loss, and the backward through both) is ``torch.func.grad``
        of a functional call of this learner, traced once by torch.compile: no autograd graph is recorded and
        the autograd engine is not entered, which leaves far fewer kernel calls on small networks than compiling
        the forward alone (experiments/benchmark/RESULTS.md). Returns Σ query losses (detached).
        """
        named = dict(self.named_parameters())
        meta = {n: p.detach() for n, p in named.items() if p.requires_grad}
        fixed = {n: p.detach() for n, p in named.items() if not p.requires_grad} | dict(self.named_buffers())
        cpp_wrapper = batch[0].device.type == "cpu"  # CUDA keeps inductor's default Python wrapper (not measured)
        grads, loss_sum = compiled(_meta_grads, cpp_wrapper, self._compiled)(self, meta, fixed, batch, extras, tasks)
        for n, g in grads.items():
            p = named[n]
            p.grad = g if p.grad is None else p.grad + g
        return loss_sum

    def adapt_task(self, params: Params, xs: Tensor, ys: Tensor, steps: int | None = None, extra: Any = None) -> Params:
        """All parameters with the fast ones adapted on one support set (torch.func; graph-free under no_grad)."""
        extra = tree_map(lambda t: t[0], self.sample_extras(1)) if extra is None else extra
        return self.problem.adapt(params, xs, ys, extra, steps)


def _meta_grads(
    learner: MetaLearner, meta: Params, fixed: Params, batch: Batch, extras: Any, tasks: int
) -> tuple[Params, Tensor]:
    """(∂/∂meta of Σ_i L_i / tasks, Σ_i L_i) over the tasks i of ``batch``: ``learner`` called functionally."""

    def scaled_loss(meta: Params) -> tuple[Tensor, Tensor]:
        losses = functional_call(learner, {**meta, **fixed}, (batch, extras))  # (tasks in batch,)
        return losses.sum() / tasks, losses.detach().sum()

    return grad(scaled_loss, has_aux=True)(meta)


def build_optimizer(factory: Callable[..., torch.optim.Optimizer], params, lr: float) -> torch.optim.Optimizer:
    """``factory(params, lr=lr)``, plus ``fused=True`` where the optimizer takes it and it was not set.

    The fused kernels update every tensor in one call: Adam on the sinusoid MLP takes 0.24 ms per step instead of
    1.07 ms on 2 CPU cores (experiments/benchmark/RESULTS.md), a tenth of a whole meta-step there.
    """
    params = list(params)
    fn = getattr(factory, "func", factory)  # functools.partial from Hydra's _partial_
    try:
        takes_fused = "fused" in inspect.signature(fn).parameters
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
    bar = tqdm(range(start, steps), desc="meta-train", disable=not progress, mininterval=0.5, initial=start)
    for step in bar:
        if on_step is not None:
            on_step(step)
        optimizer.zero_grad(set_to_none=True)
        loss = learner.backward(_next(batches, step), generator, shard)
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
) -> tuple[float, float] | tuple[float, float, Tensor]:
    """Adapt on each test task's support set (graph-free, ``steps`` inner steps) and score its query set.

    Returns the mean of ``metric`` over ``tasks`` tasks and its 95% CI half-width (``per_task``: and the
    (tasks,) float64 tensor of the task scores, in stream order). Tasks are vmapped in chunks of
    ``learner.chunk_size`` (default: the whole batch) unless ``learner.vectorize == "loop"`` (one task at a time);
    both give the same scores (tests/test_meta.py).
    """
    if tasks < 2:
        raise ValueError(f"evaluate: tasks={tasks} must be >= 2 for a confidence interval.")
    generator = torch.Generator(device=next(learner.parameters()).device).manual_seed(seed + INNER_SEED_OFFSET)
    params = learner.params()

    def score(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor, extra: Any) -> Tensor:
        adapted = learner.adapt_task(params, xs, ys, steps, extra)
        return metric(learner.problem.forward(adapted, xq), yq)

    scores: list[Tensor] = []  # one 1-d tensor of task scores per chunk
    done = 0
    with torch.no_grad(), tqdm(total=tasks, desc="evaluate", disable=not progress, mininterval=0.5) as bar:
        while done < tasks:
            batch = _next(batches, done)
            extras = learner.sample_extras(len(batch[0]), generator)
            n = min(len(batch[0]), tasks - done)
            size = 1 if learner.vectorize == "loop" else (learner.chunk_size or n)
            for start in range(0, n, size):
                part = slice(start, min(start + size, n))
                args = (*(b[part] for b in batch), tree_map(lambda t, part=part: t[part], extras))
                if size == 1:
                    scores.append(score(*tree_map(lambda t: t[0], args)).reshape(1))
                else:
                    scores.append(vmap(score)(*args))
                bar.update(part.stop - part.start)
            done += n
    values = torch.cat(scores)
    return (*mean_ci95(values), values.double().cpu()) if per_task else mean_ci95(values)
