"""metatuv-eval: evaluate a metatuv-train checkpoint on meta-test episodes with the test-time inner steps.

    metatuv-eval outputs/2026-11-28/12-00-00              # the run folder (or its checkpoint.pt)
    metatuv-eval RUN --tasks 2000 --steps 10 --split val  # more episodes, other step count, validation classes

The network, benchmark and inner loop are rebuilt from the resolved config stored in the checkpoint; prints the
mean ± 95% CI and writes it to ``eval-<split>-<steps>steps-<tasks>tasks.json`` beside the checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from omegaconf import OmegaConf

from metatuv.checkpoint import load_checkpoint, previous
from metatuv.meta import evaluate, format_score
from metatuv.train import CHECKPOINT, REGRESSION, TEST_SEED_OFFSET, build_learner

MIN_TASKS = 600  # the protocol of the papers we compare with; fewer only with --allow-few


def evaluate_checkpoint(
    path: Path,
    tasks: int = MIN_TASKS,
    steps: int | None = None,
    split: str = "test",
    seed: int | None = None,
    data_root: str | None = None,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """Mean ± 95% CI of the checkpoint's model over ``tasks`` episodes of ``split`` after ``steps`` inner steps."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file() and not previous(path).is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; pass a metatuv-train output folder or its {CHECKPOINT}.")
    state, path = load_checkpoint(path)  # weights_only: a file that is not plain data is refused, never run
    cfg = OmegaConf.create(state["config"])
    if data_root is not None:
        cfg.paths.data_root = data_root
    if device is not None:
        cfg.device = device
    if split not in ("test", "val"):
        raise ValueError(f"split={split!r}; choose test or val.")
    if split == "val" and cfg.benchmark.name in REGRESSION:
        raise ValueError(f"split=val: {cfg.benchmark.name} has no class splits; use split=test (fresh tasks).")
    cfg.eval.baseline = False
    setup, _, learner = build_learner(cfg, eval_split=split)
    learner.load_state_dict(state["learner"])
    steps = cfg.inner.test_steps if steps is None else steps
    seed = cfg.seed + TEST_SEED_OFFSET if seed is None else seed
    mean, ci = evaluate(learner, setup.test(), tasks, steps, setup.metric, progress, seed)
    result = {
        "checkpoint": str(path),
        "meta_step": state["step"],
        "benchmark": cfg.benchmark.name,
        "preset": cfg.model.name,
        "split": split,
        "metric": setup.metric_name,
        "tasks": tasks,
        "inner_steps": steps,
        "mean": mean,
        "ci95": ci,
    }
    out = path.with_name(f"eval-{split}-{steps}steps-{tasks}tasks.json")
    out.write_text(json.dumps(result, indent=2))
    result["written"] = str(out)
    return result


def main(argv: list[str] | None = None) -> None:
    """Console script ``metatuv-eval``."""
    p = argparse.ArgumentParser(prog="metatuv-eval", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="a metatuv-train output folder, or its checkpoint.pt")
    p.add_argument("--tasks", type=int, default=MIN_TASKS, help=f"meta-test episodes (default {MIN_TASKS})")
    p.add_argument("--steps", type=int, default=None, help="inner steps (default: the run's inner.test_steps)")
    p.add_argument("--split", default="test", choices=["test", "val"], help="classes to draw episodes from")
    p.add_argument("--seed", type=int, default=None, help="episode seed (default: the run's test stream)")
    p.add_argument("--data-root", default=None, help="override the run's paths.data_root")
    p.add_argument("--device", default=None, help="override the run's device (cpu, cuda)")
    p.add_argument("--allow-few", action="store_true", help=f"allow --tasks below {MIN_TASKS} (smoke tests)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.tasks < MIN_TASKS and not a.allow_few:
        p.error(
            f"--tasks={a.tasks} is below {MIN_TASKS}, too few for a 95% CI to compare with papers; add --allow-few."
        )
    if a.steps is not None and a.steps < 0:
        p.error(f"--steps={a.steps} must be >= 0.")
    try:
        r = evaluate_checkpoint(
            a.checkpoint, a.tasks, a.steps, a.split, a.seed, a.data_root, a.device, progress=not a.no_progress
        )
    except (FileNotFoundError, ValueError) as e:  # CheckpointError is a ValueError
        raise SystemExit(f"metatuv-eval: {e}") from None
    print(
        f"{r['preset']} at meta-step {r['meta_step']}, {r['benchmark']} {r['split']}: {r['metric']} over {r['tasks']} "
        f"tasks, {r['inner_steps']} inner steps: {format_score(r['metric'], r['mean'], r['ci95'])} (95% CI)"
    )
    print(f"written to {r['written']}")


if __name__ == "__main__":
    main()
