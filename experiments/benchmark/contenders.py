"""The benchmark's contenders: each builds, for a model and a workload, one meta-gradient step on a batch.

- ``higher``: ``higher.innerloop_ctx`` with SGD over the fast parameters, one task after another;
- ``learn2learn``: ``clone_module`` / ``update_module`` on the fast parameters, one task after another;
- ``func-loop``: naive torch.func, per task ``functional_call`` + ``autograd.grad(create_graph=True)``;
- ``func-vmap``: naive torch.func, the task function (``functional_call`` + ``torch.func.grad``) under ``vmap``;
- ``metatuv``: ``MetaLearner.backward`` with ``vectorize="auto"`` (the library's own path);
  ``metatuv-loop`` / ``metatuv-vmap`` force the vectorization, ``metatuv-higher`` / ``metatuv-learn2learn`` are
  metatuv's wrappers of those libraries, ``metatuv-chunkN`` sets ``chunk_size=N``.

The naive contenders are written here, after peerbench.py (an outside benchmark script, not in this repository:
the GPU check's prepare_gpu.sh copies it in when the machine has it, and run_gpu.sh runs it beside this harness
for reference figures, or skips it), and share no code with metatuv's inner loop (only the network and
``fast_names`` / ``split_params``, which say which parameters adapt).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from workloads import Batch, Workload

from metatuv.inner.backends import _import_learn2learn as import_learn2learn  # silences gym's notice
from metatuv.meta import MetaLearner, get_preset
from metatuv.nn import fast_names, split_params

StepFn = Callable[[Batch], None]  # accumulates the meta-gradient of the mean query loss into .grad

NAIVE = ("higher", "learn2learn", "func-loop", "func-vmap")
METATUV = {  # name -> (backend, vectorize, compile)
    "metatuv": ("func", "auto", False),
    "metatuv-compiled": ("func", "auto", True),
    "metatuv-loop": ("func", "loop", False),
    "metatuv-vmap": ("func", "vmap", False),
    "metatuv-higher": ("higher", "loop", False),
    "metatuv-learn2learn": ("learn2learn", "loop", False),
}
DEFAULT_CONTENDERS = "higher,learn2learn,func-loop,func-vmap,metatuv"
NEEDS = {
    "higher": "higher",
    "metatuv-higher": "higher",
    "learn2learn": "learn2learn",
    "metatuv-learn2learn": "learn2learn",
}
CHUNKS = (8, 4, 2, 1)  # --chunk-sweep: metatuv-chunkN beside metatuv (chunk_size=None)


def known(name: str) -> bool:
    return name in NAIVE or name in METATUV or name.startswith("metatuv-chunk")


def naive_higher(model: nn.Module, wl: Workload, preset: str, loss: Callable) -> StepFn:
    import higher

    params = dict(model.named_parameters())
    inner_opt = torch.optim.SGD([params[n] for n in fast_names(model)], lr=wl.lr)

    def run(batch: Batch) -> None:
        xs, ys, xq, yq = batch
        for i in range(len(xs)):
            with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fnet, diffopt):
                for _ in range(wl.steps):
                    diffopt.step(loss(fnet(xs[i]), ys[i]))
                (loss(fnet(xq[i]), yq[i]) / len(xs)).backward()

    return run


def naive_learn2learn(model: nn.Module, wl: Workload, preset: str, loss: Callable) -> StepFn:
    l2l = import_learn2learn()
    names = fast_names(model)

    def run(batch: Batch) -> None:
        xs, ys, xq, yq = batch
        for i in range(len(xs)):
            clone = l2l.clone_module(model)
            for _ in range(wl.steps):
                ps = dict(clone.named_parameters())
                g = torch.autograd.grad(loss(clone(xs[i]), ys[i]), [ps[n] for n in names], create_graph=True)
                updates = {n: -wl.lr * gi for n, gi in zip(names, g, strict=True)}
                l2l.update_module(clone, updates=[updates.get(n) for n in ps])
            (loss(clone(xq[i]), yq[i]) / len(xs)).backward()

    return run


def naive_func_loop(model: nn.Module, wl: Workload, preset: str, loss: Callable) -> StepFn:
    def run(batch: Batch) -> None:
        fast0, static = split_params(model)
        xs, ys, xq, yq = batch
        total = 0.0
        for i in range(len(xs)):
            fast = dict(fast0)
            for _ in range(wl.steps):
                support = loss(functional_call(model, {**static, **fast}, (xs[i],)), ys[i])
                g = torch.autograd.grad(support, list(fast.values()), create_graph=True)
                fast = {n: p - wl.lr * gi for (n, p), gi in zip(fast.items(), g, strict=True)}
            total = total + loss(functional_call(model, {**static, **fast}, (xq[i],)), yq[i])
        (total / len(xs)).backward()

    return run


def naive_func_vmap(model: nn.Module, wl: Workload, preset: str, loss: Callable) -> StepFn:
    def run(batch: Batch) -> None:
        fast0, static = split_params(model)

        def inner_loss(fast, x, y):
            return loss(functional_call(model, {**static, **fast}, (x,)), y)

        def task(fast, xs, ys, xq, yq):
            for _ in range(wl.steps):
                g = grad(inner_loss)(fast, xs, ys)
                fast = {n: fast[n] - wl.lr * g[n] for n in fast}
            return inner_loss(fast, xq, yq)

        vmap(task, in_dims=(None, 0, 0, 0, 0))(fast0, *batch).mean().backward()

    return run


def metatuv_step(backend: str, vectorize: str, compile: bool = False, chunk_size: int | None = None):
    def make(model: nn.Module, wl: Workload, preset: str, loss: Callable) -> StepFn:
        learner = MetaLearner.from_preset(
            model,
            get_preset(preset),
            loss,
            wl.lr,
            wl.steps,
            backend=backend,
            vectorize=vectorize,
            chunk_size=chunk_size,
            compile=compile,
        )
        return learner.backward  # the generator only draws MT-net masks; none here

    return make


def contender_factory(name: str):
    if name in METATUV:
        return metatuv_step(*METATUV[name])
    if name.startswith("metatuv-chunk"):
        return metatuv_step("func", "auto", chunk_size=int(name.removeprefix("metatuv-chunk")))
    return {
        "higher": naive_higher,
        "learn2learn": naive_learn2learn,
        "func-loop": naive_func_loop,
        "func-vmap": naive_func_vmap,
    }[name]


def import_error(package: str) -> str | None:
    """Why ``package`` does not import (None when it does): the line that says why a contender is skipped."""
    try:
        import_learn2learn() if package == "learn2learn" else __import__(package)
    except Exception as err:  # learn2learn can fail for other reasons than absence (its gym import)
        return f"{type(err).__name__}: {err}"
    return None
