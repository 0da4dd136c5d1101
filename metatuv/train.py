"""metatuv-train: meta-train a preset on a benchmark and report meta-test performance (Hydra entry point).

Only this module (and the other entry points) read Hydra config objects; the library takes typed arguments.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from metatuv.data import Sinusoid
from metatuv.meta import MetaLearner, evaluate, get_preset, meta_train, mse
from metatuv.metric import mask_fractions
from metatuv.nn import mlp

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # conf/ at the repository root
TEST_SEED_OFFSET = 1_000_003  # meta-test tasks come from a stream disjoint from the training one


def run(cfg: DictConfig, out_dir: Path) -> dict:
    """Meta-train, then evaluate the result and the un-meta-trained initialization on the same test tasks."""
    if cfg.benchmark.name != "sinusoid":
        raise ValueError(f"benchmark={cfg.benchmark.name!r} is not available yet; use benchmark=sinusoid.")
    torch.manual_seed(cfg.seed)
    preset = get_preset(cfg.model.name)
    b = cfg.benchmark
    bench = Sinusoid(b.shots, b.queries, tuple(b.amplitude), tuple(b.phase), tuple(b.x_range))
    model = mlp(list(b.arch.sizes), preset.use_T, preset.use_V, preset.use_mask).to(cfg.device)
    i = cfg.inner

    def make_learner(m: torch.nn.Module) -> MetaLearner:
        return MetaLearner.from_preset(
            m,
            preset,
            mse,
            i.lr,
            i.steps,
            first_order=i.first_order,
            mask_temperature=i.mask_temperature,
            backend=i.backend,
            vectorize=i.vectorize,
            chunk_size=i.chunk_size,
        ).to(cfg.device)

    learner = make_learner(model)
    baseline = copy.deepcopy(learner)

    start = time.perf_counter()
    history = meta_train(
        learner,
        bench.batches(cfg.outer.meta_batch, cfg.seed, cfg.device),
        cfg.outer.steps,
        cfg.outer.lr,
        cfg.outer.clip,
        cfg.progress,
        seed=cfg.seed,
    )
    train_s = time.perf_counter() - start

    def test(tested: MetaLearner) -> tuple[float, float]:
        seed = cfg.seed + TEST_SEED_OFFSET
        stream = bench.batches(cfg.outer.meta_batch, seed, cfg.device)
        return evaluate(tested, stream, cfg.eval.tasks, i.test_steps, mse, cfg.progress, seed)

    results = {"preset": preset.name, "meta_steps": cfg.outer.steps, "train_seconds": round(train_s, 2)}
    results["final_train_loss"] = sum(history[-100:]) / max(1, len(history[-100:]))
    results["test_mse"], results["test_ci95"] = test(learner)
    if cfg.eval.baseline:
        results["baseline_mse"], results["baseline_ci95"] = test(baseline)
    if preset.use_mask:
        results["mask_fractions"] = mask_fractions(model)
    torch.save(learner.state_dict(), out_dir / "model.pt")
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> float:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    print(OmegaConf.to_yaml(cfg), flush=True)
    r = run(cfg, out_dir)
    k, n, steps = cfg.benchmark.shots, cfg.eval.tasks, cfg.inner.test_steps
    print(f"\nmeta-test MSE over {n} tasks ({k}-shot, {steps} inner steps, 95% CI):")
    trained = f"{r['preset']}, meta-trained {r['meta_steps']} steps"
    print(f"  {trained:<36} {r['test_mse']:.4f} ± {r['test_ci95']:.4f}")
    if "baseline_mse" in r:
        print(f"  {'same net, un-meta-trained (baseline)':<36} {r['baseline_mse']:.4f} ± {r['baseline_ci95']:.4f}")
    print(f"outputs in {out_dir}")
    return r["test_mse"]


def main() -> None:
    """Console script ``metatuv-train``; needs the repository checkout (conf/ lives at its root)."""
    if not CONF_DIR.is_dir():
        raise SystemExit(
            f"metatuv-train: config folder {CONF_DIR} not found; install from a clone with "
            "`pip install -r requirements-dev.txt` (editable install) so conf/ sits beside the package."
        )
    _hydra_main()


if __name__ == "__main__":
    main()
