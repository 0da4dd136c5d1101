"""Inner-loop backends: the same per-task adaptation computed four ways, with identical meta-gradients.

- ``func``, ``vectorize="loop"``: torch.func (functional_call + grad), one task after another;
- ``func``, ``vectorize="vmap"``: the same task function under ``torch.func.vmap`` over tasks;
- ``func``, ``vectorize="auto"``: vmap for meta-batches of more than one task (it measured faster than the loop
  on GPU and CPU: experiments/backends/README.md), the loop for a single task;
- ``compile=True`` (func only): the loop/vmap computation above, compiled by ``torch.compile`` (inductor): the inner
  gradient is traced into the graph as plain ops, so the outer backward is one compiled first-order backward
  (same meta-gradients; the first call compiles, new shapes recompile: experiments/benchmark/RESULTS.md). Training
  goes one step further: ``MetaLearner.backward`` compiles ``torch.func.grad`` of the whole meta-loss into one graph;
- ``higher``: ``higher.innerloop_ctx`` with an SGD over the fast parameters only;
- ``learn2learn``: ``learn2learn.clone_module`` / ``update_module``, updating only the fast parameters.

Every backend takes Δ from the same step-rule transform (metatuv/inner/transforms.py), so MT-net masks, learned
rates and curvature behave alike.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from metatuv.inner.backtrack import adapt_backtracking
from metatuv.inner.sgd import Params, StepRule, adapt
from metatuv.inner.transforms import Transform

BACKENDS = ("func", "higher", "learn2learn")
VECTORIZE = ("loop", "vmap", "auto")
LossFn = Callable[[Tensor, Tensor], Tensor]
# x_support (tasks, S, ...), y_support (tasks, S, ...), x_query (tasks, Q, ...), y_query (tasks, Q, ...)
Batch = tuple[Tensor, Tensor, Tensor, Tensor]


@dataclass
class TaskProblem:
    """What one task's inner loop needs: the network, the loss, which parameters adapt, the step rule.

    ``rule``: a transform (metatuv.inner.transforms) whose ``init(rule_params, extra)`` sees the task's slice of
    ``extras`` (e.g. the MT-net mask noise) and whose ``update`` gives Δ; ``rule_params`` (default: the model's
    ``params``) are the meta-parameters it reads. ``steps``/``first_order`` as in ``adapt``. ``compiled`` holds
    this problem's own torch.compile'd functions (see ``compiled``).
    """

    model: nn.Module
    loss: LossFn
    fast_names: list[str]
    steps: int
    first_order: bool
    rule: Transform
    compiled: dict = field(default_factory=dict, repr=False, compare=False)

    def forward(self, params: Params, x: Tensor) -> Tensor:
        return functional_call(self.model, params, (x,))

    def step_rule(self, rule_params: Params, extra: Params) -> StepRule:
        """One task's step rule (k, grads) -> Δ: the transform's state is built once, here."""
        state = self.rule.init(rule_params, extra)
        return lambda k, grads: self.rule.update(k, grads, state, rule_params)

    def adapt(
        self,
        params: Params,
        xs: Tensor,
        ys: Tensor,
        extra: Params,
        steps: int | None = None,
        rule_params: Params | None = None,
        backtrack: int = 0,
    ) -> Params:
        """All parameters, with the fast ones adapted on one task's support set (torch.func).

        ``backtrack > 0`` (evaluation only, graph-free): each step's length is backtracked over that many halvings so
        the support loss never rises (metatuv.inner.backtrack).
        """
        fast = {n: params[n] for n in self.fast_names}

        def support_loss(f: Params) -> Tensor:
            return self.loss(self.forward({**params, **f}, xs), ys)

        steps = self.steps if steps is None else steps
        rule = self.step_rule(params if rule_params is None else rule_params, extra)
        if backtrack:
            return {**params, **adapt_backtracking(support_loss, fast, steps, rule, tries=backtrack)}
        return {**params, **adapt(support_loss, fast, steps, rule, self.first_order)}

    def query_loss(
        self, params: Params, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor, extra: Params, rule_params: Params
    ) -> Tensor:
        return self.loss(self.forward(self.adapt(params, xs, ys, extra, rule_params=rule_params), xq), yq)


def _index(extras: Params, i: int) -> Params:
    return torch.utils._pytree.tree_map(lambda t: t[i], extras)


def _func_loop(problem: TaskProblem, params: Params, batch: Batch, extras: Params, rule_params: Params) -> Tensor:
    xs, ys, xq, yq = batch
    return torch.stack(
        [problem.query_loss(params, xs[i], ys[i], xq[i], yq[i], _index(extras, i), rule_params) for i in range(len(xs))]
    )


def _func_vmap(problem: TaskProblem, params: Params, batch: Batch, extras: Params, rule_params: Params) -> Tensor:
    def task(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor, extra: Params) -> Tensor:
        return problem.query_loss(params, xs, ys, xq, yq, extra, rule_params)

    return vmap(task)(*batch, extras)


def _own_params(problem: TaskProblem, params: Params, backend: str) -> None:
    own = dict(problem.model.named_parameters())
    if any(params[n] is not p for n, p in own.items()):
        raise ValueError(
            f"inner backend {backend!r} adapts the model's own parameters; functional params are only "
            "supported by backend='func'."
        )


def _higher(problem: TaskProblem, params: Params, batch: Batch, extras: Params, rule_params: Params) -> Tensor:
    """higher.innerloop_ctx with SGD(lr=1) over the fast parameters; Δ enters through grad_callback.

    First order keeps ``track_higher_grads=True`` and detaches the gradients in the callback: with
    ``track_higher_grads=False`` higher detaches every adapted weight (higher/optim.py, step()), which drops
    the meta-gradient to the initial U and to the rule's parameters instead of only the second-order term.
    """
    import higher

    _own_params(problem, params, "higher")
    model, fast_set = problem.model, set(problem.fast_names)
    names = [n for n, _ in model.named_parameters()]
    losses = []
    for i in range(len(batch[0])):
        xs, ys, xq, yq = (b[i] for b in batch)
        rule = problem.step_rule(rule_params, _index(extras, i))
        opt = torch.optim.SGD([p for n, p in model.named_parameters() if n in fast_set], lr=1.0)
        with higher.innerloop_ctx(model, opt, copy_initial_weights=False, track_higher_grads=True) as (fmodel, diffopt):
            for k in range(problem.steps):

                def callback(all_grads, k=k, rule=rule):
                    g = {n: gi for n, gi in zip(names, all_grads, strict=True) if n in fast_set}
                    if problem.first_order:
                        g = {n: gi.detach() for n, gi in g.items()}
                    delta = rule(k, g)
                    return [delta[n] if n in fast_set else gi for n, gi in zip(names, all_grads, strict=True)]

                diffopt.step(problem.loss(fmodel(xs), ys), grad_callback=callback)
            losses.append(problem.loss(fmodel(xq), yq))
    return torch.stack(losses)


def _import_learn2learn():
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        import learn2learn  # prints a gym notice on import
    return learn2learn


def _learn2learn(problem: TaskProblem, params: Params, batch: Batch, extras: Params, rule_params: Params) -> Tensor:
    """learn2learn.clone_module per task, then update_module with −Δ on the fast parameters only."""
    l2l = _import_learn2learn()
    _own_params(problem, params, "learn2learn")
    fast_names = problem.fast_names
    losses = []
    for i in range(len(batch[0])):
        xs, ys, xq, yq = (b[i] for b in batch)
        rule = problem.step_rule(rule_params, _index(extras, i))
        clone = l2l.clone_module(problem.model)
        names = [n for n, _ in clone.named_parameters()]
        for k in range(problem.steps):
            cparams = dict(clone.named_parameters())
            loss = problem.loss(clone(xs), ys)
            grads = torch.autograd.grad(loss, [cparams[n] for n in fast_names], create_graph=not problem.first_order)
            delta = rule(k, dict(zip(fast_names, grads, strict=True)))
            l2l.update_module(clone, updates=[-delta[n] if n in delta else None for n in names])
        losses.append(problem.loss(clone(xq), yq))
    return torch.stack(losses)


_copies = itertools.count()


def compiled(fn: Callable, cpp_wrapper: bool = False, cache: dict | None = None) -> Callable:
    """torch.compile of a private copy of ``fn``, memoized in ``cache`` (one dict per learner or TaskProblem).

    Dynamo keeps its compiled graphs, and counts recompiles against ``recompile_limit``, per code object; the
    graphs guard on the model they were traced with. One compiled function shared by the whole process therefore
    fell back to eager (with only a warning) after 8 models; each owner's own copy (a new code object) keeps any
    number of models compiled, each recompiling only for its own new shapes.

    ``cpp_wrapper``: inductor calls the graph's kernels from generated C++ instead of generated Python. The
    compiled meta-gradient on CPU uses it: a small network's meta-step is many short kernels, where the Python
    wrapper's per-call cost shows (experiments/benchmark/RESULTS.md has the measured speed-up and compile times).
    """
    key = (fn, cpp_wrapper)
    if cache is not None and key in cache:
        return cache[key]
    code = fn.__code__.replace(co_name=f"{fn.__name__}__compiled{next(_copies)}")
    copy = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    out = torch.compile(copy, options={"cpp_wrapper": True} if cpp_wrapper else None)
    if cache is not None:
        cache[key] = out
    return out


def task_losses(
    problem: TaskProblem,
    params: Params,
    batch: Batch,
    extras: Params,
    backend: str = "func",
    vectorize: str = "auto",
    compile: bool = False,
    rule_params: Params | None = None,
) -> Tensor:
    """Query loss of every task after its inner loop, shape (tasks,), differentiable w.r.t. ``params`` and
    ``rule_params`` (what the step rule reads; default ``params``)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown inner backend {backend!r}; choose one of {list(BACKENDS)} (inner.backend=...).")
    if vectorize not in VECTORIZE:
        raise ValueError(f"unknown vectorize={vectorize!r}; choose one of {list(VECTORIZE)} (inner.vectorize=...).")
    if compile and backend != "func":
        raise ValueError(f"inner.compile=true needs inner.backend=func (got {backend!r}); or set inner.compile=false.")
    rule_params = params if rule_params is None else rule_params
    if backend == "higher":
        return _higher(problem, params, batch, extras, rule_params)
    if backend == "learn2learn":
        return _learn2learn(problem, params, batch, extras, rule_params)
    if vectorize == "auto":  # vmap measured faster on CPU too (experiments/backends/README.md); loop for 1 task
        vectorize = "vmap" if len(batch[0]) > 1 else "loop"
    fn = _func_vmap if vectorize == "vmap" else _func_loop
    return (compiled(fn, cache=problem.compiled) if compile else fn)(problem, params, batch, extras, rule_params)
