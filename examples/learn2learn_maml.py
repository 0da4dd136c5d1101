"""Recipe: learn2learn's MAML on a tuvified model, adapting only U and the biases; T and V are meta-learned.

``MAML.adapt`` would step every parameter (T and V too, which is plain MAML on a reparameterized net), and freezing
T and V with ``requires_grad=False`` stops them from being meta-learned. Instead, per task: ``clone()``, take the
gradient with respect to ``fast_parameters(clone)`` only, and hand ``maml_update`` one gradient per parameter with
None for T, V and the MT-net mask logits. Each step is U' = U − α·g_U (W' = W − α·TTᵀ·G·VᵀV); T, V and the mask
logits get their meta-gradients through the clone.

    python examples/learn2learn_maml.py                 # sinusoid 10-shot, W = T·U·V
    python examples/learn2learn_maml.py --mtnet         # MT-net: T·U with a learned mask on U's rows
"""

from __future__ import annotations

import argparse
import contextlib
import io

import torch
from torch import Tensor

from metatuv.data.sinusoid import Sinusoid
from metatuv.meta import mask_noise, mask_sample, mse
from metatuv.nn import fast_names, fast_parameters, mlp

with contextlib.redirect_stdout(io.StringIO()):
    import learn2learn as l2l  # prints a gym notice on import


def masked(learner: torch.nn.Module, grads: dict[str, Tensor], noise: dict[str, Tensor] | None) -> dict[str, Tensor]:
    """MT-net: multiply the rows of each layer's U gradient and its bias gradient by the task's hard mask."""
    if not noise:
        return grads
    params = dict(learner.named_parameters())
    out = dict(grads)
    for logit_name, task_noise in noise.items():
        prefix = logit_name.removesuffix("mask_logit")
        m = mask_sample(params[logit_name], task_noise, 1.0)  # 0/1 per output unit, straight-through gradient
        for k in ("U", "bias"):
            if prefix + k in out:
                out[prefix + k] = m.view(-1, *[1] * (out[prefix + k].dim() - 1)) * out[prefix + k]
    return out


def meta_loss(maml: l2l.algorithms.MAML, batch, lr: float, steps: int, noise=None) -> Tensor:
    """Mean query loss over the tasks after ``steps`` U-only steps each; differentiable in every parameter."""
    xs, ys, xq, yq = batch
    losses = []
    for i in range(len(xs)):
        learner = maml.clone()
        names = fast_names(learner)
        task_noise = {k: v[i] for k, v in noise.items()} if noise else None
        for _ in range(steps):
            grads = torch.autograd.grad(mse(learner(xs[i]), ys[i]), fast_parameters(learner), create_graph=True)
            grads = masked(learner, dict(zip(names, grads, strict=True)), task_noise)
            # one gradient per parameter; None leaves T, V and the mask logits as they are
            l2l.algorithms.maml.maml_update(learner, lr, [grads.get(n) for n, _ in learner.named_parameters()])
        losses.append(mse(learner(xq[i]), yq[i]))
    return torch.stack(losses).mean()


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mtnet", action="store_true", help="T·U with MT-net masks instead of T·U·V")
    ap.add_argument("--steps", type=int, default=2000, help="meta-steps")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = mlp((1, 40, 40, 1), use_T=True, use_V=not args.mtnet, use_mask=args.mtnet)
    maml = l2l.algorithms.MAML(model, lr=0.01)
    opt = torch.optim.Adam(maml.parameters(), lr=1e-3)
    tasks, g = Sinusoid(10, 10).batches(4, seed=0), torch.Generator().manual_seed(1)
    for step in range(args.steps):
        opt.zero_grad()
        loss = meta_loss(maml, next(tasks), lr=0.01, steps=1, noise=mask_noise(maml, 4, g) or None)
        loss.backward()
        opt.step()
        if (step + 1) % max(1, args.steps // 10) == 0:
            print(f"meta-step {step + 1}: query MSE {loss.item():.4f}")
    return loss.item()


if __name__ == "__main__":
    main()
