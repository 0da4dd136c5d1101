"""Golden float64 meta-gradients of every preset x inner path, for the behaviour-preserving redesign (issue 19).

    python experiments/redesign/golden.py record golden.pt     # on the code before the change
    python experiments/redesign/golden.py check golden.pt      # after: every gradient within 1e-12

Each case composes the run config the way metatuv-train does (``model=P inner.backend=B inner.vectorize=V
inner.compile=C``, sinusoid MLP or Omniglot conv4 without reading data), builds the learner with the entry point's
own builder, moves it to float64, perturbs every meta-parameter by a seeded N(0, 0.1²) (so T, V, rates, curvature
and mask logits are away from their initial values), and records the meta-gradient of one fixed meta-batch
(``MetaLearner.backward``, fixed mask-noise generator): {case: {parameter name: grad}} plus the meta-loss.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

try:  # the builder's home after the redesign, then before
    from metatuv.build import build_learner
except ImportError:
    from metatuv.train import build_learner

PRESETS = ["maml", "fomaml", "metasgd", "lslr", "anil", "metacurvature", "tnet", "mtnet", "tuv", "mtuv"]
PRESETS += ["tuv_bounded", "kfo"]
PATHS = {  # name -> overrides
    "loop": ["inner.backend=func", "inner.vectorize=loop"],
    "vmap": ["inner.backend=func", "inner.vectorize=vmap"],
    "higher": ["inner.backend=higher"],
    "learn2learn": ["inner.backend=learn2learn"],
    "compiled": ["inner.backend=func", "inner.vectorize=vmap", "inner.compile=true"],
}
BENCH = {
    "sinusoid": ["benchmark=sinusoid", "inner.steps=2"],
    "omniglot": ["benchmark=omniglot", "benchmark.arch.hidden=8", "inner.steps=2"],
}


def batch(bench: str, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    if bench == "sinusoid":
        xs, xq = torch.randn(3, 5, 1, generator=g), torch.randn(3, 6, 1, generator=g)
        return xs, torch.sin(2 * xs), xq, torch.sin(2 * xq)
    xs, xq = torch.randn(2, 5, 1, 28, 28, generator=g), torch.randn(2, 10, 1, 28, 28, generator=g)
    ys, yq = torch.arange(5).repeat(2, 1), torch.arange(5).repeat(2, 2)
    return xs.double(), ys, xq.double(), yq


def case(conf: Path, bench: str, preset: str, path: str) -> dict:
    with initialize_config_dir(str(conf), version_base=None):
        cfg = compose("config", [*BENCH[bench], f"model={preset}", *PATHS[path], "device=cpu"])
    _, _, learner = build_learner(cfg, load_data=False)
    learner = learner.double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in sorted(learner.named_parameters()):
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    b = batch(bench, torch.Generator().manual_seed(2))
    b = tuple(t.double() if t.is_floating_point() else t for t in b)
    learner.zero_grad(set_to_none=True)
    loss = learner.backward(b, torch.Generator().manual_seed(3))
    grads = {n: p.grad.detach().clone() for n, p in learner.named_parameters() if p.grad is not None}
    return {"loss": loss.detach().clone(), "grads": grads}


def all_cases(skip_compiled: bool) -> dict:
    conf = REPO / "conf"
    out = {}
    for bench in BENCH:
        for preset in PRESETS:
            for path in PATHS:
                if path == "compiled" and (skip_compiled or bench == "omniglot"):
                    continue
                t = time.perf_counter()
                out[f"{bench}/{preset}/{path}"] = case(conf, bench, preset, path)
                print(f"{bench}/{preset}/{path}: {time.perf_counter() - t:.1f} s", flush=True)
    return out


def main() -> None:
    mode, file = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    cases = all_cases("--no-compiled" in sys.argv)
    if mode == "record":
        torch.save(cases, file)
        print(f"recorded {len(cases)} cases in {file}")
        return
    golden = torch.load(file, weights_only=True)
    worst, failures = 0.0, []
    if "--no-compiled" in sys.argv:  # compare only what was computed
        golden = {k: v for k, v in golden.items() if not k.endswith("/compiled")}
    for key, ref in golden.items():
        if key not in cases:
            failures.append(f"{key}: not computed")
            continue
        got = cases[key]
        if set(got["grads"]) != set(ref["grads"]):
            failures.append(f"{key}: parameters differ {sorted(set(got['grads']) ^ set(ref['grads']))}")
            continue
        diffs = [(got["loss"] - ref["loss"]).abs().item()]
        diffs += [(got["grads"][n] - g).abs().max().item() for n, g in ref["grads"].items() if g.numel()]
        worst = max(worst, *diffs)
        if max(diffs) > 1e-12:
            failures.append(f"{key}: max |diff| {max(diffs):.2e}")
    print(f"{len(golden)} cases, worst |diff| {worst:.2e}")
    for f in failures:
        print("FAIL", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
