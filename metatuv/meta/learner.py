"""MAML-style meta-learner over W = T·U·V models (Finn et al. 2017; Lee & Choi 2018).

Meta-objective: min over θ = (T, V, U₀, b₀, rule parameters) of E_task L_query(adapt(U₀, b₀; support; θ)).
``query_losses(learner, θ, batch, extras)`` is that loss as one pure function of every meta-parameter, the
model's and the step rule's alike; the eager (``backward``) and compiled (``_compiled_backward``) meta-gradients
both differentiate it. The training loop: meta/loop.py; evaluation: meta/evaluation.py; losses: meta/losses.py.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import grad
from torch.utils._pytree import tree_map

from metatuv.inner import Params, TaskProblem, task_losses
from metatuv.inner.backends import BACKENDS, VECTORIZE, Batch, compiled
from metatuv.meta.batching import INNER_SEED_OFFSET, chunks
from metatuv.meta.evaluation import evaluate, format_score, mean_ci95
from metatuv.meta.loop import MAX_SKIPS, NONFINITE, NonFiniteLoss, build_optimizer, meta_train
from metatuv.meta.losses import LossFn, accuracy, cross_entropy, mse
from metatuv.meta.presets import Preset
from metatuv.meta.rule import InnerRule
from metatuv.nn import fast_names
from metatuv.nn.bounded import BoundedFactors

__all__ = [  # re-exported: their homes are meta/loop.py, meta/evaluation.py, meta/losses.py, meta/batching.py
    "INNER_SEED_OFFSET",
    "MAX_SKIPS",
    "NONFINITE",
    "LossFn",
    "MetaLearner",
    "NonFiniteLoss",
    "accuracy",
    "build_optimizer",
    "cross_entropy",
    "evaluate",
    "format_score",
    "mean_ci95",
    "meta_loss",
    "meta_train",
    "mse",
    "query_losses",
]

MODEL, RULE = "model.", "rule."  # a MetaLearner's children: names of meta-parameters start with one of them


def query_losses(
    learner: MetaLearner, meta: Params, batch: Batch, extras: Params, *, backend: str = "func", compile: bool = False
) -> Tensor:
    """L_i(θ), the query loss of every task i after its inner loop, shape (tasks,): a pure function of all
    meta-parameters θ = ``meta`` by the learner's names (``model.0.U``, ``rule.lrs.0__U``); the step rule reads its
    own from ``meta`` too. ``extras``: the tasks' mask noise (``learner.sample_extras``)."""
    model = {n[len(MODEL) :]: t for n, t in meta.items() if n.startswith(MODEL)}
    return task_losses(learner.problem, model, batch, extras, backend, learner.vectorize, compile, rule_params=meta)


def meta_loss(learner: MetaLearner, meta: Params, batch: Batch, extras: Params) -> Tensor:
    """(1/tasks)·Σ_i L_i(θ): the meta-loss as a pure function of every meta-parameter (see query_losses)."""
    return query_losses(learner, meta, batch, extras).mean()


class MetaLearner(nn.Module):
    """The model with its inner loop: ``steps`` steps of the inner rule on the fast parameters.

    Methods take ``params`` (name → tensor, the model's parameters and buffers; default: the model's own); the
    inner-rule parameters (learned rates, curvature) live in ``self.rule`` and enter by ``meta_params()``, so the
    meta-loss is a pure function of all of them (``query_losses``). The outer optimizer takes ``self.parameters()``.
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
        backtrack: int = 0,
    ) -> None:
        super().__init__()
        if backtrack < 0:
            raise ValueError(f"MetaLearner: backtrack={backtrack} must be >= 0 (0 = plain test-time inner steps).")
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
        self.problem = TaskProblem(model, loss, self.fast_names, steps, first_order, self.rule.transform(MODEL, RULE))
        self.backend, self.vectorize, self.chunk_size, self.compile = backend, vectorize, chunk_size, compile
        self.backtrack = backtrack  # evaluate()'s default: halvings of each test-time step (metatuv.inner.backtrack)
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
        kw.setdefault("backtrack", preset.backtrack)
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

    def meta_params(self, params: Params | None = None) -> Params:
        """Every meta-parameter and buffer by the learner's names (model.*, rule.*); ``params``: the model's part."""
        if params is None:
            return {**dict(self.named_parameters()), **dict(self.named_buffers())}
        rule = {RULE + n: p for n, p in self.rule.named_parameters()}
        return {**{MODEL + n: t for n, t in params.items()}, **rule}

    def sample_extras(self, tasks: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Per-task randomness of the inner loop (MT-net mask noise), drawn outside vmap: {} if none."""
        like = next(self.model.parameters())
        return self.rule.mask_noise(tasks, generator, like)

    def task_losses(
        self, batch: Batch, extras: Params | None = None, params: Params | None = None, backend: str | None = None
    ) -> Tensor:
        """Query loss of every task after adaptation, shape (tasks,); ``params``: the model's (default: its own)."""
        extras = self.sample_extras(len(batch[0])) if extras is None else extras
        backend = backend or self.backend
        compile = self.compile and backend == "func"
        return query_losses(self, self.meta_params(params), batch, extras, backend=backend, compile=compile)

    def forward(self, batch: Batch, extras: Params) -> Tensor:
        """Query loss of every task after adaptation, shape (tasks,), by the func backend (eager; see task_losses)."""
        return query_losses(self, self.meta_params(), batch, extras)

    def meta_loss(self, batch: Batch, params: Params | None = None, extras: Params | None = None) -> Tensor:
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
        total = torch.zeros((), device=batch[0].device)  # on the losses' device: no host sync per chunk
        for chunk, chunk_extras in chunks(batch, extras, size, first, last):
            if self.compile:  # __init__ allows it with the func backend only
                loss_sum = self._compiled_backward(chunk, chunk_extras, tasks)
            else:
                losses = self.task_losses(chunk, chunk_extras)
                (losses.sum() / tasks).backward()
                loss_sum = losses.detach().sum()
            total = total + loss_sum  # (a 0-d sum: the result takes its dtype)
        return total / tasks

    def _compiled_backward(self, batch: Batch, extras: Params, tasks: int) -> Tensor:
        """``.grad += ∂(Σ query losses / tasks)/∂θ`` for every trainable θ, from one compiled torch.func graph.

        The whole meta-gradient (inner steps, query loss, and the backward through both) is ``torch.func.grad`` of
        ``query_losses`` (the function the eager path differentiates), traced once by torch.compile: no autograd
        graph is recorded and the autograd engine is not entered, which leaves far fewer kernel calls on small
        networks than compiling the forward alone (experiments/benchmark/RESULTS.md). Returns Σ query losses.
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

    def adapt_task(
        self,
        params: Params,
        xs: Tensor,
        ys: Tensor,
        steps: int | None = None,
        extra: Params | None = None,
        backtrack: int = 0,
    ) -> Params:
        """All parameters with the fast ones adapted on one support set (torch.func; graph-free under no_grad;
        ``backtrack > 0``: step lengths backtracked so the support loss never rises, metatuv.inner.backtrack)."""
        extra = tree_map(lambda t: t[0], self.sample_extras(1)) if extra is None else extra
        return self.problem.adapt(
            params, xs, ys, extra, steps, rule_params=self.meta_params(params), backtrack=backtrack
        )


def _meta_grads(
    learner: MetaLearner, meta: Params, fixed: Params, batch: Batch, extras: Params, tasks: int
) -> tuple[Params, Tensor]:
    """(∂/∂meta of Σ_i L_i / tasks, Σ_i L_i) over the tasks i of ``batch``, L_i from the pure ``query_losses``."""

    def scaled_loss(meta: Params) -> tuple[Tensor, Tensor]:
        losses = query_losses(learner, {**meta, **fixed}, batch, extras)  # (tasks in batch,)
        return losses.sum() / tasks, losses.detach().sum()

    return grad(scaled_loss, has_aux=True)(meta)
